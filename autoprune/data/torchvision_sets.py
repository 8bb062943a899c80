"""``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: the classic benchmark sets.

Files are read from ``data_dir`` (default ``./data``) in torchvision's layout:
``MNIST/raw/*-ubyte``, ``FashionMNIST/raw/*-ubyte``, ``cifar-10-batches-py/``,
``cifar-100-python/``. Nothing downloads unless ``download=True``, which goes through
torchvision's own downloader (and its checksums).

MNIST-style files are read by torchvision's ``MNIST`` class. CIFAR batches are read here,
in exactly the pickled format torchvision reads, without torchvision's md5 check of every
batch on every load (the download still verifies them); shapes and labels are checked
instead. All pixels stay in memory as uint8.

Splits: the official test set is the test split; validation is ``val_fraction`` of the
official training set, carved (stratified) by ``seed``. Normalization uses the usual
published per-channel mean/std. Augmentation: random crop with padding 2 (28×28 sets) or
padding 4 plus horizontal flip (CIFAR).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.data.registry import DatasetSplits, register_dataset
from autoprune.data.splits import TensorSource, build_splits
from autoprune.data.transforms import Compose, RandomHorizontalFlip, RandomShift
from autoprune.errors import UserError


@dataclass(frozen=True)
class _Spec:
    name: str
    tv_class: str  # torchvision.datasets class name
    folder: str  # folder under data_dir that holds the files
    files: tuple[str, ...]  # files that must exist inside `folder`
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SPECS = {
    "mnist": _Spec("mnist", "MNIST", "MNIST/raw", _MNIST_FILES, 1, 28, 10, (0.1307,), (0.3081,), 2, False),
    "fashion-mnist": _Spec(
        "fashion-mnist",
        "FashionMNIST",
        "FashionMNIST/raw",
        _MNIST_FILES,
        1,
        28,
        10,
        (0.2860,),
        (0.3530,),
        2,
        False,
    ),
    "cifar10": _Spec(
        "cifar10",
        "CIFAR10",
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        4,
        True,
    ),
    "cifar100": _Spec(
        "cifar100",
        "CIFAR100",
        "cifar-100-python",
        ("train", "test"),
        3,
        32,
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        4,
        True,
    ),
}


def _missing(spec: _Spec, data_dir: Path) -> list[str]:
    return [f for f in spec.files if not (data_dir / spec.folder / f).is_file()]


def _ensure_files(spec: _Spec, data_dir: Path, download: bool) -> None:
    missing = _missing(spec, data_dir)
    if not missing:
        return
    where = data_dir / spec.folder
    if not download:
        raise UserError(
            f"{spec.name} files not found in '{where}' (missing: {', '.join(missing)}). "
            "Pass --download (download=True) to fetch them, "
            "or --data-dir to point at a folder that has them."
        )
    from autoprune._torchvision import import_torchvision

    tv = import_torchvision()
    cls = getattr(tv.datasets, spec.tv_class)
    try:
        cls(root=str(data_dir), train=True, download=True)
        cls(root=str(data_dir), train=False, download=True)
    except Exception as exc:  # network and checksum failures come in many types
        reason = str(exc).replace("\n", " ")
        raise UserError(f"could not download {spec.name} into '{data_dir}': {reason}") from exc
    missing = _missing(spec, data_dir)
    if missing:
        raise UserError(f"{spec.name} download finished but '{where}' still lacks {', '.join(missing)}.")


def _read_mnist(spec: _Spec, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from autoprune._torchvision import import_torchvision

    tv = import_torchvision()
    cls = getattr(tv.datasets, spec.tv_class)
    try:
        ds = cls(root=str(data_dir), train=train, download=False)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise UserError(f"could not read {spec.name} files in '{data_dir / spec.folder}': {exc}") from exc
    return ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _read_cifar(spec: _Spec, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    names = spec.files[:-1] if train else spec.files[-1:]
    images, labels = [], []
    for fname in names:
        path = data_dir / spec.folder / fname
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            key = "labels" if "labels" in entry else "fine_labels"
            targets = np.asarray(entry[key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"could not read {spec.name} batch '{path}': {exc}") from exc
        if len(targets) != len(data):
            raise UserError(
                f"{spec.name} batch '{path}' is corrupted: {len(targets)} labels, {len(data)} images."
            )
        images.append(data)
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _build(spec: _Spec, data_dir: Path, download: bool, seed: int, val_fraction: float) -> DatasetSplits:
    _ensure_files(spec, data_dir, download)
    read = _read_cifar if spec.tv_class.startswith("CIFAR") else _read_mnist
    train_x, train_y = read(spec, data_dir, True)
    test_x, test_y = read(spec, data_dir, False)
    for y in (train_y, test_y):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise UserError(
                f"{spec.name} files in '{data_dir / spec.folder}' have labels "
                f"outside 0..{spec.num_classes - 1}."
            )
    train = TensorSource(train_x, train_y, scale=1 / 255)
    test = TensorSource(test_x, test_y, scale=1 / 255)
    steps = [RandomShift(spec.pad)] + ([RandomHorizontalFlip()] if spec.flip else [])
    return build_splits(
        spec.name,
        train_source=train,
        train_pool=np.arange(len(train)),
        test_source=test,
        test_rows=np.arange(len(test)),
        seed=seed,
        val_fraction=val_fraction,
        in_channels=spec.channels,
        image_size=(spec.size, spec.size),
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        augment=Compose(steps),
    )


def _register(spec: _Spec, description: str) -> None:
    @register_dataset(spec.name, description=description)
    def build(
        arg: str | None, *, data_dir: Path, download: bool, seed: int, val_fraction: float
    ) -> DatasetSplits:
        return _build(spec, data_dir, download, seed, val_fraction)

    build.__name__ = f"build_{spec.name.replace('-', '_')}"


_register(SPECS["mnist"], "MNIST handwritten digits, 28×28 grey, 10 classes (files in --data-dir).")
_register(
    SPECS["fashion-mnist"], "Fashion-MNIST clothing, 28×28 grey, 10 classes (files in --data-dir)."
)
_register(SPECS["cifar10"], "CIFAR-10, 32×32 colour, 10 classes (files in --data-dir).")
_register(SPECS["cifar100"], "CIFAR-100, 32×32 colour, 100 fine classes (files in --data-dir).")
