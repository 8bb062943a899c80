"""``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: the classic benchmark sets.

Files are read from ``data_dir`` (default ``./data``) in torchvision's layout:
``MNIST/raw/*-ubyte``, ``FashionMNIST/raw/*-ubyte``, ``cifar-10-batches-py/``,
``cifar-100-python/``. The four MNIST-style IDX files may also lie directly in ``data_dir``,
and each may be gzipped (``*-ubyte.gz``, read as it is). With no ``data_dir`` given,
``fashion-mnist`` is also looked for where Debian's package ``dataset-fashion-mnist`` puts it
(``/usr/share/datasets/fashion-mnist/``). Nothing downloads unless ``download=True``, which
goes through torchvision's own downloader (and its checksums).

MNIST-style IDX files are read here (:func:`read_idx`, plain or gzipped). CIFAR batches are read here,
in exactly the pickled format torchvision reads, without torchvision's md5 check of every
batch on every load (the download still verifies them); shapes and labels are checked
instead. All pixels stay in memory as uint8.

Splits: the official test set is the test split; validation is ``val_fraction`` of the
official training set, carved (stratified) by ``seed``. Normalization uses the usual
published per-channel mean/std. Augmentation: random crop with padding 2 (28×28 sets) or
padding 4 plus horizontal flip (CIFAR).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.data.registry import DEFAULT_DATA_DIR, DatasetSplits, register_dataset
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


#: Where a system package installs a dataset's files (used when no ``data_dir`` is given), and
#: the command that installs it. Debian's ``dataset-fashion-mnist`` ships the four IDX files gzipped.
SYSTEM_DIRS: dict[str, tuple[Path, str]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"), "apt-get install -y dataset-fashion-mnist"),
}


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (the plain file first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _folders(spec: _Spec, data_dir: Path, explicit: bool) -> list[Path]:
    """Where ``spec``'s files may lie, in the order they are looked for."""
    out = [data_dir / spec.folder]
    if spec.tv_class != "CIFAR10" and spec.tv_class != "CIFAR100":
        out.append(data_dir)  # the four IDX files straight in the folder (as a system package ships them)
        if not explicit and spec.name in SYSTEM_DIRS:
            out.append(SYSTEM_DIRS[spec.name][0])
    return out


def _missing(spec: _Spec, folder: Path) -> list[str]:
    if spec.tv_class.startswith("CIFAR"):
        return [f for f in spec.files if not (folder / f).is_file()]
    return [f for f in spec.files if _idx_file(folder, f) is None]


def find_files(spec: _Spec, data_dir: Path, *, explicit: bool = True) -> Path | None:
    """The first folder holding all of ``spec``'s files (plain or gzipped IDX), or None."""
    return next((f for f in _folders(spec, data_dir, explicit) if not _missing(spec, f)), None)


def _ensure_files(spec: _Spec, data_dir: Path, download: bool, explicit: bool = True) -> Path:
    found = find_files(spec, data_dir, explicit=explicit)
    if found is not None:
        return found
    where = data_dir / spec.folder
    missing = _missing(spec, where)
    if not download:
        looked = " or ".join(f"'{f}'" for f in _folders(spec, data_dir, explicit))
        install = ""
        if spec.name in SYSTEM_DIRS:
            install = f"install them with `{SYSTEM_DIRS[spec.name][1]}` (Debian), "
        raise UserError(
            f"{spec.name} files not found in {looked} (missing: {', '.join(missing)}); "
            f"{install}pass --data-dir with a folder that has them, or --download to fetch them."
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
    missing = _missing(spec, where)
    if missing:
        raise UserError(f"{spec.name} download finished but '{where}' still lacks {', '.join(missing)}.")
    return where


_IDX_TYPES = {0x08: np.uint8}  # the only element type the MNIST-style files use


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic ``0 0 type ndim``, ``ndim`` sizes, then the
    data), plain or gzipped (``.gz``), as a NumPy array.

    Raises:
        UserError: the file cannot be read, is not IDX, or is shorter than its header says.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"could not read '{path}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or not 1 <= raw[3] <= 4:
        raise UserError(f"'{path}' is not an IDX file (the MNIST format): its first bytes are {raw[:4].hex() or 'empty'}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"'{path}' is cut short: its IDX header is incomplete.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise UserError(f"'{path}' holds {len(raw) - header} data bytes where its header {shape} says {count}.")
    return np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=header).reshape(shape)


def _read_mnist(spec: _Spec, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    stem = "train" if train else "t10k"
    images = read_idx(_idx_file(folder, f"{stem}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{stem}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{spec.name} files in '{folder}' do not match: images {images.shape}, labels {labels.shape} "
                        f"(expected N×{spec.size}×{spec.size} images and N labels).")
    if images.shape[1:] != (spec.size, spec.size):
        raise UserError(f"{spec.name} images in '{folder}' are {images.shape[1]}×{images.shape[2]}, not "
                        f"{spec.size}×{spec.size}.")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_cifar(spec: _Spec, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    names = spec.files[:-1] if train else spec.files[-1:]
    images, labels = [], []
    for fname in names:
        path = folder / fname
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


def _build(spec: _Spec, data_dir: Path, download: bool, seed: int, val_fraction: float,
           explicit: bool = True) -> DatasetSplits:
    folder = _ensure_files(spec, data_dir, download, explicit)
    read = _read_cifar if spec.tv_class.startswith("CIFAR") else _read_mnist
    train_x, train_y = read(spec, folder, True)
    test_x, test_y = read(spec, folder, False)
    for y in (train_y, test_y):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise UserError(
                f"{spec.name} files in '{folder}' have labels "
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
        # the system folder is a fallback for the default ./data only: a folder the user named wins
        return _build(spec, data_dir, download, seed, val_fraction, explicit=Path(data_dir) != DEFAULT_DATA_DIR)

    build.__name__ = f"build_{spec.name.replace('-', '_')}"


_register(SPECS["mnist"], "MNIST handwritten digits, 28×28 grey, 10 classes (files in --data-dir).")
_register(
    SPECS["fashion-mnist"],
    "Fashion-MNIST clothing, 28×28 grey, 10 classes (Debian's dataset-fashion-mnist, or files in --data-dir).",
)
_register(SPECS["cifar10"], "CIFAR-10, 32×32 colour, 10 classes (files in --data-dir).")
_register(SPECS["cifar100"], "CIFAR-100, 32×32 colour, 100 fine classes (files in --data-dir).")
