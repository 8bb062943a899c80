"""The dataset registry: names → builders → :class:`DatasetSplits`.

A builder is a function ``fn(arg, *, data_dir, download, seed, val_fraction) -> DatasetSplits``
decorated with :func:`register_dataset`. Plain entries (``"digits"``) get ``arg=None``;
prefix entries (``"npz:PATH"``) get the part after the colon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import UserError, unknown_name

DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True)
class DatasetSplits:
    """Deterministic train / val / test splits of one dataset, plus what a model must match.

    Every item of every split is ``(x, y)``: ``x`` a normalized float32 ``C×H×W`` tensor,
    ``y`` an int64 scalar tensor.

    Attributes:
        name: Canonical name, e.g. ``"digits"`` or ``"npz:/path/x.npz"``.
        train: Training split, with light augmentation (random shift, flips where they make sense).
        train_eval: The same samples as ``train`` without augmentation.
        val: Validation split, carved from the training pool by ``seed``; no augmentation.
        test: Test split; no augmentation.
        in_channels: Channels of ``x``.
        image_size: ``(H, W)`` of ``x``.
        num_classes: Number of classes; labels lie in ``[0, num_classes)``.
        mean: Per-channel mean subtracted from ``x`` (in [0, 1] pixel units).
        std: Per-channel standard deviation ``x`` was divided by.
    """

    name: str
    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class DatasetBuilder(Protocol):
    def __call__(
        self, arg: str | None, *, data_dir: Path, download: bool, seed: int, val_fraction: float
    ) -> DatasetSplits: ...


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry."""

    name: str
    builder: DatasetBuilder
    description: str
    prefix: bool

    @property
    def display_name(self) -> str:
        """``"npz:PATH"`` for prefix entries, the name otherwise."""
        return f"{self.name}:PATH" if self.prefix else self.name


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, description: str, prefix: bool = False) -> Callable:
    """Register a dataset builder under ``name``.

    Args:
        name: The registry name (lower case). With ``prefix=True`` users write ``NAME:ARG``.
        description: One line shown by ``autoprune datasets``.
        prefix: Whether the entry takes an argument after a colon (a path).

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Example:
        >>> @register_dataset("tiny", description="A tiny test set.")  # doctest: +SKIP
        ... def build_tiny(arg, *, data_dir, download, seed, val_fraction): ...
    """
    if name != name.lower() or ":" in name:
        raise ValueError(f"dataset names are lower case without ':'; got {name!r}")

    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = DatasetInfo(name, builder, description, prefix)
        return builder

    return decorator


def list_datasets() -> list[str]:
    """Sorted dataset names; prefix entries shown as ``"npz:PATH"``."""
    return sorted(info.display_name for info in _REGISTRY.values())


def describe_datasets() -> dict[str, str]:
    """Map from each name in :func:`list_datasets` to its one-line description."""
    return {info.display_name: info.description for info in sorted(_REGISTRY.values(), key=lambda i: i.name)}


def get_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> DatasetSplits:
    """Build the deterministic splits of a registered dataset.

    The same arguments always give the same samples in every split. ``seed`` chooses
    which part of the training pool becomes the validation split; it is fixed (default 0)
    so validation is the same across runs. The test split never depends on ``seed``.

    Args:
        name: A name from :func:`list_datasets`, e.g. ``"digits"``, ``"cifar10"``,
            ``"npz:my.npz"``, ``"imagefolder:/data/flowers"``. Plain names are case-insensitive.
        data_dir: Where downloadable datasets live (default ``./data``).
        download: Allow downloading a missing dataset. Nothing downloads otherwise.
        seed: Seed of the validation carve.
        val_fraction: Fraction of the training pool held out for validation, in (0, 1).

    Returns:
        The splits and the input/label shapes a model must match.

    Raises:
        UserError: Unknown name, missing files, malformed data, bad ``val_fraction``.

    Example:
        >>> splits = get_dataset("digits")
        >>> splits.in_channels, splits.image_size, splits.num_classes
        (1, (8, 8), 10)
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise UserError(
            f"The 'val_fraction' parameter of get_dataset must be in (0, 1). Got {val_fraction!r} instead."
        )
    key, sep, arg = name.partition(":")
    key = key.strip().lower()
    info = _REGISTRY.get(key)
    if info is None:
        prefixes = ", ".join(f"{i.name}:PATH" for i in _REGISTRY.values() if i.prefix)
        raise unknown_name(
            "dataset",
            name,
            list_datasets(),
            hint=f"Files of your own load through {prefixes}.",
        )
    if info.prefix:
        if not arg.strip():
            raise UserError(f"dataset '{name}' needs a path: write {info.name}:PATH.")
    elif sep:
        raise UserError(f"dataset '{info.name}' takes no argument; got '{name}'.")
    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    return info.builder(
        arg if info.prefix else None,
        data_dir=root,
        download=bool(download),
        seed=int(seed),
        val_fraction=float(val_fraction),
    )


def make_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A single-process DataLoader whose order depends only on ``seed``.

    Shuffling draws from its own ``torch.Generator`` seeded with ``seed``: iterating the
    returned loader again gives the next epoch's order, and a new loader with the same
    seed replays the same sequence of epochs. The loader never draws from torch's global
    RNG (without a generator of its own, every iterator would take a seed from it), so
    evaluating a model does not change what a later training run draws.
    """
    if batch_size < 1:
        raise UserError(f"The 'batch_size' parameter of make_loader must be >= 1. Got {batch_size} instead.")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=0,
        generator=generator,
    )
