"""Dataset registry: names → deterministic train / val / test splits.

Example:
    >>> from autoprune.data import get_dataset, make_loader
    >>> splits = get_dataset("digits")
    >>> loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)
    >>> x, y = next(iter(loader))
    >>> tuple(x.shape), y.dtype
    ((64, 1, 8, 8), torch.int64)

Entries: ``digits`` (bundled with scikit-learn), ``mnist``, ``fashion-mnist``, ``cifar10``,
``cifar100`` (files in ``data_dir``), ``npz:PATH`` and ``imagefolder:PATH`` (your own data).
A new entry is one module here with a builder decorated by :func:`register_dataset`,
imported below; the shared tests pick it up from :func:`list_datasets`.
torchvision is imported only when an entry that needs it is built.
"""

from __future__ import annotations

from autoprune.data.registry import (
    DatasetInfo,
    DatasetSplits,
    describe_datasets,
    get_dataset,
    list_datasets,
    make_loader,
    register_dataset,
)
from autoprune.data.splits import SplitDataset

# Importing an entry's module registers it.
from autoprune.data import digits, imagefolder, npz, torchvision_sets  # noqa: E402,F401  isort: skip

__all__ = [
    "DatasetInfo",
    "DatasetSplits",
    "SplitDataset",
    "describe_datasets",
    "get_dataset",
    "list_datasets",
    "make_loader",
    "register_dataset",
]
