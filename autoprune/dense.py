"""The dense model a command starts from: its input, its data, its trained checkpoint.

* :func:`model_input`: what a command feeds a model: the dataset's images when a dataset
  is named, else the model's native input (a torchvision model's 3×224×224), else the
  embedded ``digits`` (1×8×8) that autoprune's own small models are tried on.
* :func:`train_baseline` trains the dense model and writes its checkpoint;
  :func:`checkpoint_for` finds the checkpoint a prune config names, or trains it once and
  caches it under ``runs/baselines/``.

The search and the prune pipeline both start here; neither imports the other.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import check_writable
from autoprune.checkpoint import Checkpoint, WeightsFor, default_checkpoint_path, load_checkpoint
from autoprune.config import PruneConfig
from autoprune.data import DatasetSplits, get_dataset
from autoprune.errors import UserError, first_line
from autoprune.models import check_model_input, create_model, native_input
from autoprune.progress import Reporter
from autoprune.train import TrainSettings, evaluate, seed_everything, train_model

DEFAULT_DATASET = "digits"


# -- inputs ----------------------------------------------------------------------
def load_dataset(name: str, *, data_dir: str | None = None, download: bool = False) -> DatasetSplits:
    """The dataset's splits; validation is always carved with the same fixed seed (0)."""
    return get_dataset(name, data_dir=data_dir, download=download)


def build_model(name: str, splits: DatasetSplits) -> nn.Module:
    """The untrained model for the dataset's inputs and classes, checked to take them."""
    model = create_model(name, in_channels=splits.in_channels, num_classes=splits.num_classes,
                         image_size=tuple(splits.image_size))
    check_model_input(model, splits.in_channels, tuple(splits.image_size), name=name)
    return model


def example_input(splits: DatasetSplits, batch: int = 1) -> torch.Tensor:
    """A zero batch shaped like the dataset's images."""
    return torch.zeros(batch, splits.in_channels, *splits.image_size)


@dataclass(frozen=True)
class ModelInput:
    """What a command feeds a model, and where that came from.

    Attributes:
        in_channels, image_size, num_classes: The input ``C×H×W`` and the classifier's outputs.
        source: ``dataset digits``, ``tv:alexnet's native input``, ...
        splits: The dataset, when the input is a dataset's.
    """

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    source: str
    splits: DatasetSplits | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)

    def __str__(self) -> str:
        return f"{'×'.join(map(str, self.shape))} ({self.source})"


def input_label(model_name: str, dataset: str | None) -> str:
    """How a command names the input it will use, without loading anything: the dataset, or
    ``3×224×224 native`` for a model with a native input, else the default dataset."""
    if dataset is not None:
        return dataset
    native = native_input(model_name)
    return DEFAULT_DATASET if native is None else f"{native} native"


def model_input(model_name: str, dataset: str | None = None, *, data_dir: str | None = None) -> ModelInput:
    """The input for ``model_name``: the dataset's when one is named, else the model's native
    input (see :func:`autoprune.models.native_input`), else the default dataset's (digits).

    Example:
        >>> str(model_input("tv:alexnet"))
        "3×224×224 (tv:alexnet's native input)"
    """
    if dataset is None:
        native = native_input(model_name)
        if native is not None:
            return ModelInput(native.in_channels, native.image_size, native.num_classes,
                              f"{model_name}'s native input")
        dataset = DEFAULT_DATASET
    splits = load_dataset(dataset, data_dir=data_dir)
    return ModelInput(splits.in_channels, tuple(splits.image_size), splits.num_classes, f"dataset {splits.name}",
                      splits)


# -- the trained dense model ----------------------------------------------------------
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
    """Train the dense baseline and write its checkpoint; returns it and where it went.

    Everything that can be refused (the names, the settings, where the checkpoint goes) is
    checked before the data is downloaded or the training starts."""
    settings = TrainSettings()
    changes = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    if changes:
        settings = dataclasses.replace(settings, **changes)
    if settings.epochs < 1:
        raise UserError(f"--epochs must be at least 1. Got {settings.epochs} instead.")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1. Got {settings.batch_size} instead.")
    if not settings.lr > 0:
        raise UserError(f"--lr must be > 0. Got {settings.lr} instead.")
    if out is not None:
        check_writable(out, what="--out")
    splits = load_dataset(dataset_name, data_dir=data_dir, download=download)
    seed_everything(seed)
    model = build_model(model_name, splits)
    path = Path(out) if out is not None else default_checkpoint_path(model_name, splits.name)
    check_writable(path, what="the checkpoint")
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
    try:
        ckpt.save(path)
    except OSError as exc:  # the disk filled up, the folder went away while training
        raise UserError(f"cannot write the checkpoint '{path}': {exc.strerror or first_line(exc)}.") from None
    return ckpt, path


def weights_for(model_name: str, splits: DatasetSplits) -> WeightsFor:
    """What a plain state dict given as the checkpoint is read as: ``model_name`` built for the data."""
    return WeightsFor(model_name, splits.name, splits.in_channels, splits.num_classes, tuple(splits.image_size))


def existing_checkpoint(config: PruneConfig, dataset_name: str, *, runs_dir: str | os.PathLike = "runs",
                        splits: DatasetSplits | None = None) -> tuple[Checkpoint, Path] | None:
    """The config's dense baseline where one exists, read and checked, writing nothing: its
    ``checkpoint``, or the one cached under ``<runs_dir>/baselines/``; None when it must be
    trained first (see :func:`checkpoint_for`).

    Raises:
        UserError: a given checkpoint that is missing, unreadable, or of another model or dataset.
    """
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
    else:
        path = default_checkpoint_path(config.model, config.dataset, root=runs_dir)
        if not path.is_file():
            return None
    ckpt = load_checkpoint(path, weights_for=None if splits is None else weights_for(config.model, splits))
    if ckpt.model != config.model or ckpt.dataset != dataset_name:
        raise UserError(
            f"checkpoint '{path}' holds model '{ckpt.model}' on dataset '{ckpt.dataset}', but the config asks for "
            f"'{config.model}' on '{config.dataset}'; point 'checkpoint' at a matching file."
        )
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
    found = existing_checkpoint(config, dataset_name, runs_dir=runs_dir)
    if found is not None:
        return (*found, False)
    path = default_checkpoint_path(config.model, config.dataset, root=runs_dir)
    (reporter or Reporter()).log(f"no checkpoint given: training the dense baseline into {path}")
    ckpt, path = train_baseline(config.model, config.dataset, device=device, seed=config.seed,
                                data_dir=config.data_dir, reporter=reporter, out=path)
    return ckpt, path, True
