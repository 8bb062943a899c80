"""``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes).

Ships with scikit-learn, so it needs no files and no network: the dataset the test
suite and quick searches train on. Everything lives in memory as float tensors.

Splits: a fixed stratified 20% test split (``random_state=0``, independent of ``seed``);
validation is ``val_fraction`` of the remaining 80%, carved (stratified) by ``seed``.
Pixels (0..16) are scaled to [0, 1], then normalized with the training split's mean/std.
Augmentation: random translation by up to one pixel.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from autoprune.data.registry import DatasetSplits, register_dataset
from autoprune.data.splits import FIXED_TEST_SEED, TensorSource, build_splits
from autoprune.data.transforms import Compose, RandomShift

TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _load() -> tuple[TensorSource, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    pool, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=FIXED_TEST_SEED, stratify=bunch.target
    )
    return TensorSource(images, labels), np.sort(pool), np.sort(test)


@register_dataset(
    "digits", description="scikit-learn's 8×8 handwritten digits (1797 images, 10 classes); no download."
)
def build_digits(
    arg: str | None, *, data_dir: Path, download: bool, seed: int, val_fraction: float
) -> DatasetSplits:
    source, pool, test = _load()
    return build_splits(
        "digits",
        train_source=source,
        train_pool=pool,
        test_source=source,
        test_rows=test,
        seed=seed,
        val_fraction=val_fraction,
        in_channels=1,
        image_size=(8, 8),
        num_classes=10,
        stats_source=source,
        augment=Compose([RandomShift(1)]),
    )
