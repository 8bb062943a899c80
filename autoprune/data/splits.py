"""Split datasets over shared sources, and the deterministic index carving.

A *source* holds every sample of one pool (e.g. an official train set) and fetches
batches of them as float tensors in [0, 1]. A :class:`SplitDataset` is a view of
some rows of a source with an optional augmentation and a normalization, so
``train``, ``train_eval`` and ``val`` share one copy of the pixels.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.data.registry import DatasetSplits
from autoprune.data.transforms import BatchTransform, channel_stats, normalize, standard_augmentation
from autoprune.errors import UserError

#: Seed of every carve that must never move (test splits carved from a single pool).
FIXED_TEST_SEED = 0


class ImageSource(Protocol):
    labels: torch.Tensor  # (N,) int64

    def fetch(self, rows: torch.Tensor) -> torch.Tensor:
        """Images ``rows`` as float32 ``(n, C, H, W)`` in [0, 1]."""
        ...


class TensorSource:
    """Images held in memory: ``images`` ``(N, C, H, W)`` (uint8 or float) times ``scale``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, scale: float = 1.0) -> None:
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"bad source shapes {tuple(images.shape)} / {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.scale = float(scale)

    def fetch(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.images[rows].to(torch.float32)
        return x * self.scale if self.scale != 1.0 else x

    def __len__(self) -> int:
        return self.images.shape[0]


class SplitDataset(Dataset):
    """Rows ``indices`` of a source, augmented (optionally) then normalized.

    Items are ``(x, y)``: ``x`` float32 ``(C, H, W)``, ``y`` an int64 scalar tensor.
    ``__getitems__`` lets a DataLoader fetch and augment a whole batch at once.

    Attributes:
        source: The pool the rows come from.
        indices: int64 tensor of the rows of ``source`` in this split (sorted).
        augment: Batch transform applied before normalization, or ``None``.
    """

    def __init__(
        self,
        source: ImageSource,
        indices: torch.Tensor | Sequence[int] | np.ndarray,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchTransform | None = None,
    ) -> None:
        self.source = source
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.augment = augment

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """Labels of this split, in order."""
        return self.source.labels[self.indices]

    def _batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[positions]
        x = self.source.fetch(rows)
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std), self.source.labels[rows]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a split of {n} samples")
        x, y = self._batch(torch.tensor([i % n]))
        return x[0], y[0]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self._batch(torch.as_tensor(positions, dtype=torch.int64))
        return list(zip(x.unbind(0), y.unbind(0)))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(x, y)`` tensors (augmented if this split augments)."""
        return self._batch(torch.arange(len(self)))

    def __repr__(self) -> str:
        return f"SplitDataset(n={len(self)}, augment={self.augment!r})"


def carve(
    labels: np.ndarray | torch.Tensor, pool: np.ndarray, fraction: float, seed: int, *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` (row indices) into ``(kept, held_out)`` with ``fraction`` held out.

    Stratified by label when every class in the pool has at least two samples and the
    held-out part can hold one of each; otherwise a plain random split. Deterministic in
    ``seed``; both parts come back sorted.
    """
    from sklearn.model_selection import train_test_split

    pool = np.asarray(pool, dtype=np.int64)
    y = np.asarray(labels)[pool]
    n_out = int(round(fraction * len(pool)))
    if n_out < 1 or n_out >= len(pool):
        raise UserError(
            f"cannot carve a {what} split of {fraction:.0%} from {len(pool)} samples: "
            f"it would leave an empty split. Use more data or another fraction."
        )
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and n_out >= len(counts) and len(pool) - n_out >= len(counts) else None
    kept, held = train_test_split(pool, test_size=n_out, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(held)


def build_splits(
    name: str,
    *,
    train_source: ImageSource,
    train_pool: np.ndarray,
    test_source: ImageSource,
    test_rows: np.ndarray,
    seed: int,
    val_fraction: float,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stats_source: TensorSource | None = None,
    augment: BatchTransform | None = None,
    val_source: ImageSource | None = None,
    val_rows: np.ndarray | None = None,
) -> DatasetSplits:
    """Carve validation from the training pool and assemble :class:`DatasetSplits`.

    Args:
        train_pool: Rows of ``train_source`` available for training and validation.
        test_rows: Rows of ``test_source`` forming the test split.
        mean, std: Fixed normalization; when omitted, computed from the final training
            split of ``stats_source`` (which must then be given).
        augment: Training augmentation; default :func:`standard_augmentation`.
        val_source, val_rows: An explicit validation split (no carving).
    """
    if val_source is None:
        train_rows, val_rows = carve(train_source.labels, train_pool, val_fraction, seed, what="validation")
        val_source = train_source
    else:
        train_rows = np.sort(np.asarray(train_pool, dtype=np.int64))
    if mean is None or std is None:
        if stats_source is None:
            raise ValueError("mean/std or stats_source is required")

        mean, std = channel_stats(stats_source.images[torch.as_tensor(train_rows)], scale=stats_source.scale)
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if augment is None:
        augment = standard_augmentation(image_size, in_channels)
    return DatasetSplits(
        name=name,
        train=SplitDataset(train_source, train_rows, mean=mean, std=std, augment=augment),
        train_eval=SplitDataset(train_source, train_rows, mean=mean, std=std),
        val=SplitDataset(val_source, val_rows, mean=mean, std=std),
        test=SplitDataset(test_source, np.sort(np.asarray(test_rows, dtype=np.int64)), mean=mean, std=std),
        in_channels=in_channels,
        image_size=(int(image_size[0]), int(image_size[1])),
        num_classes=int(num_classes),
        mean=mean,
        std=std,
    )

