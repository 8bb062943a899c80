"""Dense-baseline checkpoints: what ``autoprune train`` writes and every other command reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune._version import __version__
from autoprune.atomic import save_torch_atomic
from autoprune.errors import UserError, first_line
from autoprune.models import create_model
from autoprune.safeload import load_tensors

FORMAT_KEY = "autoprune_checkpoint"


class ForeignCheckpointError(UserError):
    """A checkpoint file that autoprune did not write (and that was not read as a state dict)."""

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A trained model with what is needed to rebuild it and judge it."""

    model: str
    dataset: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    epochs: int = 0

    def build(self) -> nn.Module:
        """Recreate the model and load the weights."""
        model = create_model(self.model, in_channels=self.in_channels, num_classes=self.num_classes,
                             image_size=self.image_size)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise UserError(f"checkpoint weights do not fit model '{self.model}': {first_line(exc)}") from None
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a half-written checkpoint never appears under ``path``)."""
        payload: dict[str, Any] = {
            FORMAT_KEY: FORMAT_VERSION,
            "model": self.model,
            "dataset": self.dataset,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "metrics": dict(self.metrics),
            "seed": self.seed,
            "epochs": self.epochs,
            "versions": {"autoprune": __version__, "torch": str(torch.__version__)},
        }
        return save_torch_atomic(payload, path)


@dataclass(frozen=True)
class WeightsFor:
    """What a plain state dict is the weights of: the model by name, built for this input.

    A checkpoint file that is not autoprune's (``torch.save(model.state_dict(), path)``, or
    a dict holding it under ``state_dict`` or ``model``, as training scripts write) is read
    as the weights of this model (see :func:`load_checkpoint`).
    """

    model: str
    dataset: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]


def _plain_state_dict(raw: Any) -> dict[str, torch.Tensor] | None:  # noqa: ANN401 - what torch.load gave
    """The state dict in a plain weights file, or None when it holds none."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if isinstance(raw, dict) and raw and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        return raw
    return None


def _misfits(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own`` ("" when nothing)."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of other shapes ({k}: {tuple(state[k].shape)} for {tuple(own[k].shape)}"
                     f"{', ...' if len(shapes) > 1 else ''})")
    if missing:
        parts.append(f"{len(missing)} missing ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    return "; ".join(parts)


def load_checkpoint(path: str | os.PathLike, *, weights_for: WeightsFor | None = None) -> Checkpoint:
    """Read a checkpoint written by ``autoprune train``, or, given ``weights_for``, a plain state
    dict of that model (e.g. a timm model fine-tuned by your own script: ``torch.save(
    model.state_dict(), path)``), checked to fit it. Both are read with ``weights_only=True``.

    Raises:
        UserError: when the file is missing, unreadable, not an autoprune checkpoint (nor, with
            ``weights_for``, a state dict), or its weights do not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; train one with 'autoprune train --model M --dataset D'.")
    raw = load_tensors(path, what="checkpoint", not_one="is not an autoprune checkpoint",
                       fix="make one with 'autoprune train --model M --dataset D'")
    if (not isinstance(raw, dict) or FORMAT_KEY not in raw) and weights_for is not None:
        state = _plain_state_dict(raw)
        w = weights_for
        own = create_model(w.model, in_channels=w.in_channels, num_classes=w.num_classes,
                           image_size=tuple(w.image_size)).state_dict()  # type: ignore[arg-type]
        if state is not None and set(state) & set(own):  # a state dict of this model (else: foreign, below)
            misfits = _misfits(state, own)
            if misfits:
                raise UserError(f"checkpoint '{path}' holds weights that do not fit '{w.model}' built for "
                                f"{w.in_channels}×{w.image_size[0]}×{w.image_size[1]} inputs and {w.num_classes} "
                                f"classes: {misfits}.")
            return Checkpoint(model=w.model, dataset=w.dataset, in_channels=w.in_channels, num_classes=w.num_classes,
                              image_size=tuple(w.image_size), state_dict=state)  # type: ignore[arg-type]
    if not isinstance(raw, dict) or FORMAT_KEY not in raw:
        raise ForeignCheckpointError(
            f"checkpoint '{path}' was not written by 'autoprune train' (no '{FORMAT_KEY}' entry) and is not a state "
            "dict of the model; train a baseline with 'autoprune train' or pass the right file."
        )
    if raw[FORMAT_KEY] > FORMAT_VERSION:
        raise UserError(f"checkpoint '{path}' has format {raw[FORMAT_KEY]}, newer than this autoprune reads; upgrade.")
    return Checkpoint(
        model=raw["model"],
        dataset=raw["dataset"],
        in_channels=int(raw["in_channels"]),
        num_classes=int(raw["num_classes"]),
        image_size=tuple(raw["image_size"]),  # type: ignore[arg-type]
        state_dict=raw["state_dict"],
        metrics=dict(raw.get("metrics", {})),
        seed=int(raw.get("seed", 0)),
        epochs=int(raw.get("epochs", 0)),
    )


def default_checkpoint_path(model: str, dataset: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/baselines/<model>-<dataset>.pt`` with path-unfriendly characters replaced."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}-{dataset}")
    return Path(root) / "baselines" / f"{safe}.pt"
