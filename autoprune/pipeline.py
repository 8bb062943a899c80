"""Library entry points behind the CLI: train a baseline, list layers, prune from a config.

Each function does the whole job and returns data the CLI only prints (dicts of numbers
and names; a prune, the typed :class:`PruneSummary`, whose ``to_dict`` is its
``result.json``), and tests call these directly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune import admm
from autoprune.admm import AdmmIteration
from autoprune.checkpoint import Checkpoint, default_checkpoint_path, load_checkpoint
from autoprune.config import AdmmSettings, PruneConfig, resolve_layer_targets
from autoprune.data import DatasetSplits
from autoprune.errors import UserError
from autoprune.groups import ChannelGraph
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.stats import LayerStats, layer_stats, model_counts
from autoprune.train import TrainSettings, evaluate, seed_everything, train_model

if TYPE_CHECKING:
    from autoprune.deploy import DeployReport


def load_dataset(name: str, *, data_dir: str | None = None, download: bool = False):  # noqa: ANN201
    """The dataset's splits; validation is always carved with the same fixed seed (0)."""
    from autoprune.data import get_dataset

    return get_dataset(name, data_dir=data_dir, download=download)


def build_model(name: str, splits) -> nn.Module:  # noqa: ANN001
    from autoprune.models import check_model_input, create_model

    model = create_model(name, in_channels=splits.in_channels, num_classes=splits.num_classes,
                         image_size=tuple(splits.image_size))
    check_model_input(model, splits.in_channels, tuple(splits.image_size), name=name)
    return model


def example_input(splits, batch: int = 1) -> torch.Tensor:  # noqa: ANN001
    return torch.zeros(batch, splits.in_channels, *splits.image_size)


# -- train -----------------------------------------------------------------------
def train_baseline(
    model_name: str,
    dataset_name: str,
    *,
    epochs: int | None = None,
    device: torch.device,
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = False,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    reporter: Reporter | None = None,
) -> tuple[Checkpoint, Path]:
    """Train the dense baseline and write its checkpoint; returns it and where it went."""
    splits = load_dataset(dataset_name, data_dir=data_dir, download=download)
    seed_everything(seed)
    model = build_model(model_name, splits)
    settings = TrainSettings()
    changes = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    if changes:
        from dataclasses import replace

        settings = replace(settings, **changes)
    if settings.epochs < 1:
        raise UserError(f"--epochs must be at least 1. Got {settings.epochs} instead.")
    result = train_model(model, splits.train, splits.val, device=device, settings=settings, seed=seed,
                         reporter=reporter)
    test_acc = evaluate(model, splits.test, device=device)
    ckpt = Checkpoint(
        model=model_name,
        dataset=splits.name,
        in_channels=splits.in_channels,
        num_classes=splits.num_classes,
        image_size=tuple(splits.image_size),
        state_dict=model.state_dict(),
        metrics={"val_acc": result["val_acc"], "test_acc": test_acc, "train_loss": result["train_loss"]},
        seed=seed,
        epochs=settings.epochs,
    )
    path = Path(out) if out is not None else default_checkpoint_path(model_name, splits.name)
    ckpt.save(path)
    return ckpt, path


def checkpoint_for(
    config: PruneConfig, dataset_name: str, *, device: torch.device, reporter: Reporter | None = None,
    runs_dir: str | os.PathLike = "runs",
) -> tuple[Checkpoint, Path, bool]:
    """The config's dense baseline: loaded from ``checkpoint``, or trained and cached under
    ``<runs_dir>/baselines/`` when absent.

    Returns:
        (checkpoint, path, trained_now)
    """
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        ckpt = load_checkpoint(path)
        trained = False
    else:
        path = default_checkpoint_path(config.model, config.dataset, root=runs_dir)
        if path.is_file():
            ckpt, trained = load_checkpoint(path), False
        else:
            (reporter or Reporter()).log(f"no checkpoint given: training the dense baseline into {path}")
            ckpt, path = train_baseline(config.model, config.dataset, device=device, seed=config.seed,
                                        data_dir=config.data_dir, reporter=reporter, out=path)
            trained = True
    if ckpt.model != config.model or ckpt.dataset != dataset_name:
        raise UserError(
            f"checkpoint '{path}' holds model '{ckpt.model}' on dataset '{ckpt.dataset}', but the config asks for "
            f"'{config.model}' on '{config.dataset}'; point 'checkpoint' at a matching file."
        )
    return ckpt, path, trained


# -- layers ----------------------------------------------------------------------
def list_layers(model_name: str, dataset_name: str = "digits", *, data_dir: str | None = None) -> list[dict[str, Any]]:
    """The prunable layers of a model, as ``autoprune layers`` prints them."""
    splits = load_dataset(dataset_name, data_dir=data_dir)
    model = build_model(model_name, splits)
    graph = ChannelGraph(model, example_input(splits))
    rows = []
    for info in graph.layers.values():
        rows.append({
            "name": info.name,
            "kind": info.kind,
            "weight_shape": list(info.weight_shape),
            "macs": info.macs,
            "coupled": info.coupled,
            "out_group": info.out_group,
            "in_group": info.in_group,
            "filters_prunable": info.out_group is not None and graph.groups[info.out_group].prunable,
            "channels_prunable": info.in_group is not None and graph.groups[info.in_group].prunable,
        })
    return rows


# -- prune -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelScores:
    """Accuracy and size of one model (the dense baseline, or the masked pruned model).

    ``params_nonzero`` and ``macs`` count what remains once zero weights are skipped;
    ``macs_dense`` is the count without skipping them (:func:`autoprune.stats.model_counts`).
    """

    val_acc: float
    test_acc: float
    params: int
    params_nonzero: int
    macs_dense: int
    macs: int
    mac_reduction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneSummary:
    """What a prune run measured: the typed form of ``result.json`` (:meth:`to_dict`).

    ``out_dir`` is set once the outputs are written (:func:`write_prune_outputs`),
    ``deploy`` once a deployable folder is built from it, ``mlflow_run_id`` (with
    ``tracked``) once the deployable was offered to MLflow; each appears in
    :meth:`to_dict` only from then on.
    """

    model: str
    dataset: str
    checkpoint: str
    method: str
    device: str
    admm: AdmmSettings
    channel_multiple: int
    dense: ModelScores
    pruned: ModelScores
    layers: list[LayerStats]
    residuals: list[AdmmIteration]  # one per ADMM iteration
    retrain_losses: list[float]
    hard_prune_val_acc: float | None  # right after the hard prune, before retraining
    notes: list[str]
    seconds: float
    out_dir: str | None = None
    deploy: DeployReport | None = None
    mlflow_run_id: str | None = None
    tracked: bool = False  # the model upload was tried (its run id is None where it failed)

    @property
    def val_drop(self) -> float:
        """Validation accuracy lost to pruning (points as a fraction: 0.02 is 2 points)."""
        return self.dense.val_acc - self.pruned.val_acc

    @property
    def test_drop(self) -> float:
        return self.dense.test_acc - self.pruned.test_acc

    def to_dict(self) -> dict[str, Any]:
        """``result.json``: the summary as plain data (the keys of autoprune 0.1)."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "method": self.method,
            "device": self.device,
            "admm": dict(self.admm.__dict__),
            "channel_multiple": self.channel_multiple,
            "dense": self.dense.to_dict(),
            "pruned": self.pruned.to_dict(),
            "accuracy_drop": {"val": self.val_drop, "test": self.test_drop},
            "layers": [s.to_dict() for s in self.layers],
            "residuals": [asdict(it) for it in self.residuals],
            "retrain_losses": list(self.retrain_losses),
            "hard_prune_val_acc": self.hard_prune_val_acc,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }
        if self.out_dir is not None:
            out["out_dir"] = self.out_dir
        if self.deploy is not None:
            out["deploy"] = self.deploy.to_dict(with_out_dir=True)
        if self.tracked:
            out["mlflow_run_id"] = self.mlflow_run_id
        return out


@dataclass
class PruneOutcome:
    """Everything a prune run gives back (``to_dict`` is what ``--json`` prints)."""

    summary: PruneSummary
    model: nn.Module
    masks: dict[str, torch.Tensor]
    projector: Projector | None = None  # whose hard masks were applied (its kept channels drive compaction)
    splits: DatasetSplits | None = None  # the dataset splits used

    def to_dict(self) -> dict[str, Any]:
        return self.summary.to_dict()


def run_prune(
    config: PruneConfig,
    *,
    method: str = "admm",
    device: torch.device,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
) -> PruneOutcome:
    """Prune the config's model with ADMM (or magnitude) and masked retraining, then evaluate it.

    Args:
        overrides: ADMM settings that replace the config's (None values are ignored).
        out_dir: When given, ``result.json``, ``config.yaml`` and ``masked_model.pt`` are written there.
    """
    reporter = reporter or Reporter()
    if method not in admm.METHODS:
        raise UserError(f"unknown method '{method}'; use one of: {', '.join(admm.METHODS)}.")
    settings: AdmmSettings = config.admm.replace(**(overrides or {}))
    splits = load_dataset(config.dataset, data_dir=config.data_dir)
    ckpt, ckpt_path, _ = checkpoint_for(config, splits.name, device=device, reporter=reporter)
    model = ckpt.build()
    graph = ChannelGraph(model, example_input(splits))
    targets = resolve_layer_targets(config.layers, list(graph.layers), where="config 'layers'")
    if not targets:
        raise UserError("the config prunes no layer (every match is 'none').")
    projector = Projector(model, graph, targets, channel_multiple=config.channel_multiple)
    for note in projector.notes:
        reporter.log(f"note: {note}")
    model.to(device)
    dense_val = evaluate(model, splits.val, device=device)
    dense_test = evaluate(model, splits.test, device=device)
    dense_counts = model_counts(model, layer_stats(model, graph))
    seed_everything(config.seed)
    t0 = time.perf_counter()
    masks, history = admm.prune(model, projector, splits.train, settings, method=method, device=device,
                                seed=config.seed, reporter=reporter, val_set=splits.val)
    seconds = time.perf_counter() - t0
    val_acc = evaluate(model, splits.val, device=device)
    test_acc = evaluate(model, splits.test, device=device)
    stats = layer_stats(model, graph, targets)
    counts = model_counts(model, stats)
    summary = PruneSummary(
        model=config.model,
        dataset=config.dataset,
        checkpoint=str(ckpt_path),
        method=method,
        device=str(device),
        admm=settings,
        channel_multiple=config.channel_multiple,
        dense=ModelScores(val_acc=dense_val, test_acc=dense_test, **dense_counts),
        pruned=ModelScores(val_acc=val_acc, test_acc=test_acc, **counts),
        layers=stats,
        residuals=history.iterations,
        retrain_losses=history.retrain_losses,
        hard_prune_val_acc=history.hard_prune_val_acc,
        notes=history.notes,
        seconds=seconds,
    )
    outcome = PruneOutcome(summary, model, masks, projector, splits)
    if out_dir is not None:
        write_prune_outputs(outcome, config, out_dir)
    return outcome


def write_prune_outputs(outcome: PruneOutcome, config: PruneConfig, out_dir: str | os.PathLike) -> Path:
    """``config.yaml``, ``masked_model.pt`` and ``result.json`` of a prune run, into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml())
    torch.save({"state_dict": {k: v.cpu() for k, v in outcome.model.state_dict().items()},
                "masks": {k: v.cpu() for k, v in outcome.masks.items()}, "summary": outcome.summary.to_dict()},
               out / "masked_model.pt")
    outcome.summary.out_dir = str(out)
    (out / "result.json").write_text(json.dumps(outcome.summary.to_dict(), indent=2))
    return out
