"""The dataset registry: every entry on tiny local files, determinism, and the errors users see."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from autoprune.data import DatasetSplits, describe_datasets, get_dataset, list_datasets, make_loader
from autoprune.errors import UserError

# ---------------------------------------------------------------------------------------
# Tiny fake data in the real on-disk formats. Pixel statistics follow each dataset's
# published normalization constants, so "normalized train data is roughly zero-mean"
# holds for every entry.
# ---------------------------------------------------------------------------------------


def _pixels(rng: np.random.Generator, shape: tuple[int, ...], mean, std, channel_axis: int) -> np.ndarray:
    """uint8 pixels whose per-channel mean/std (in [0, 1] units) are about ``mean``/``std``."""
    bshape = [1] * len(shape)
    bshape[channel_axis] = len(mean)
    m = np.asarray(mean).reshape(bshape)
    s = np.asarray(std).reshape(bshape)
    values = rng.normal(m, s, size=shape)
    return (np.clip(values, 0, 1) * 255).round().astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian idx-ubyte format of the MNIST files."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str, mean: float, std: float) -> None:
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 120), ("t10k", 30)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", _pixels(rng, (n, 28, 28), [mean], [std], 0))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def _cifar_batch(path: Path, n: int, num_classes: int, label_key: str, rng, mean, std) -> None:
    data = _pixels(rng, (n, 3, 32, 32), mean, std, 1).reshape(n, 3072)
    labels = [int(v) for v in np.arange(n) % num_classes]
    with open(path, "wb") as f:
        pickle.dump({"data": data, label_key: labels, "batch_label": path.name}, f)


def _fake_cifar10(root: Path) -> None:
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 20, 10, "labels", rng, *stats)
    _cifar_batch(folder / "test_batch", 20, 10, "labels", rng, *stats)


def _fake_cifar100(root: Path) -> None:
    rng = np.random.default_rng(3)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    _cifar_batch(folder / "train", 200, 100, "fine_labels", rng, *stats)
    _cifar_batch(folder / "test", 40, 100, "fine_labels", rng, *stats)


def _fake_image_folder(root: Path, *, split_folders: bool) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    layout = {"train": 8, "test": 3} if split_folders else {".": 12}
    for split, per_class in layout.items():
        for c, cls in enumerate(["cat", "dog", "owl"]):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = _pixels(rng, (20, 24, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 2)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _fake_npz(path: Path) -> None:
    rng = np.random.default_rng(5)
    np.savez(path, x=rng.integers(0, 256, size=(100, 12, 12), dtype=np.uint8), y=np.arange(100) % 4)


def _make_digits(tmp: Path) -> tuple[str, Path | None]:
    return "digits", None


def _make_mnist(tmp: Path) -> tuple[str, Path]:
    _fake_mnist(tmp, "MNIST", 0.1307, 0.3081)
    return "mnist", tmp


def _make_fashion(tmp: Path) -> tuple[str, Path]:
    _fake_mnist(tmp, "FashionMNIST", 0.2860, 0.3530)
    return "fashion-mnist", tmp


def _make_cifar10(tmp: Path) -> tuple[str, Path]:
    _fake_cifar10(tmp)
    return "cifar10", tmp


def _make_cifar100(tmp: Path) -> tuple[str, Path]:
    _fake_cifar100(tmp)
    return "cifar100", tmp


def _make_imagefolder(tmp: Path) -> tuple[str, None]:
    _fake_image_folder(tmp / "pets", split_folders=False)
    return f"imagefolder:{tmp / 'pets'}", None


def _make_npz(tmp: Path) -> tuple[str, None]:
    _fake_npz(tmp / "tiny.npz")
    return f"npz:{tmp / 'tiny.npz'}", None


# registry entry -> (maker, in_channels, image_size, num_classes)
ENTRIES: dict[str, tuple[Callable[[Path], tuple[str, Path | None]], int, tuple[int, int], int]] = {
    "digits": (_make_digits, 1, (8, 8), 10),
    "mnist": (_make_mnist, 1, (28, 28), 10),
    "fashion-mnist": (_make_fashion, 1, (28, 28), 10),
    "cifar10": (_make_cifar10, 3, (32, 32), 10),
    "cifar100": (_make_cifar100, 3, (32, 32), 100),
    "imagefolder:PATH": (_make_imagefolder, 3, (32, 32), 3),
    "npz:PATH": (_make_npz, 1, (12, 12), 4),
}


def test_every_registry_entry_has_test_data() -> None:
    assert sorted(ENTRIES) == list_datasets()
    assert set(describe_datasets()) == set(list_datasets())
    assert all(describe_datasets().values())


@pytest.fixture(params=list_datasets())
def built(request, tmp_path: Path) -> tuple[str, DatasetSplits, Path | None]:
    maker, *_ = ENTRIES[request.param]
    name, data_dir = maker(tmp_path)
    return request.param, get_dataset(name, data_dir=data_dir), data_dir


def test_entry_shapes_and_metadata(built) -> None:
    entry, splits, _ = built
    _, channels, size, num_classes = ENTRIES[entry]
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (channels, size, num_classes)
    assert len(splits.mean) == len(splits.std) == channels
    for split in (splits.train, splits.train_eval, splits.val, splits.test):
        assert len(split) > 0
        x, y = split[0]
        assert x.dtype == torch.float32 and tuple(x.shape) == (channels, *size)
        assert int(y) in range(num_classes)
    loader = make_loader(splits.train, batch_size=8, shuffle=True, seed=0)
    xb, yb = next(iter(loader))
    assert tuple(xb.shape) == (8, channels, *size) and yb.dtype == torch.int64


def test_entry_splits_are_disjoint(built) -> None:
    _, splits, _ = built
    train, val = set(splits.train.indices.tolist()), set(splits.val.indices.tolist())
    assert train.isdisjoint(val)
    assert splits.train_eval.indices.tolist() == splits.train.indices.tolist()
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.05
    if splits.test.source is splits.train.source:  # test carved from the same pool
        assert set(splits.test.indices.tolist()).isdisjoint(train | val)


def test_entry_is_deterministic(built) -> None:
    entry, first, data_dir = built
    second = get_dataset(first.name, data_dir=data_dir)
    for a, b in ((first.train_eval, second.train_eval), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.indices, b.indices)
        xa, ya = a.tensors()
        xb, yb = b.tensors()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = get_dataset(first.name, data_dir=data_dir, seed=1)
    assert not torch.equal(first.val.indices, other.val.indices)
    assert torch.equal(first.test.indices, other.test.indices)


def test_entry_train_data_is_normalized(built) -> None:
    _, splits, _ = built
    x, _ = splits.train_eval.tensors()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.25, mean
    assert ((std > 0.6) & (std < 1.4)).all(), std


def test_train_split_is_augmented_and_eval_splits_are_not() -> None:
    splits = get_dataset("digits")
    torch.manual_seed(0)
    x1, _ = splits.train.tensors()
    x2, _ = splits.train.tensors()
    clean, _ = splits.train_eval.tensors()
    assert not torch.equal(x1, x2)
    assert not torch.equal(x1, clean)
    assert torch.equal(splits.val.tensors()[0], splits.val.tensors()[0])


def test_augmentation_follows_torch_seed() -> None:
    splits = get_dataset("digits")
    torch.manual_seed(3)
    a = splits.train.tensors()[0]
    torch.manual_seed(3)
    b = splits.train.tensors()[0]
    assert torch.equal(a, b)


def test_make_loader_order_depends_only_on_seed() -> None:
    splits = get_dataset("digits")

    def labels(seed: int) -> list[int]:
        loader = make_loader(splits.val, batch_size=32, shuffle=True, seed=seed)
        return torch.cat([y for _, y in loader]).tolist()

    assert labels(0) == labels(0)
    assert labels(0) != labels(1)
    unshuffled = make_loader(splits.val, batch_size=32, shuffle=False)
    assert torch.cat([y for _, y in unshuffled]).tolist() == splits.val.labels.tolist()
    dropped = make_loader(splits.val, batch_size=32, shuffle=False, drop_last=True)
    assert len(dropped) == len(splits.val) // 32


def test_digits_test_split_is_fixed_and_stratified() -> None:
    a, b = get_dataset("digits", seed=0), get_dataset("digits", seed=5, val_fraction=0.2)
    assert torch.equal(a.test.indices, b.test.indices)
    assert len(a.test) == 360
    assert torch.bincount(a.test.labels, minlength=10).min() >= 35
    assert len(b.val) == round(0.2 * (1797 - 360))


def test_imagefolder_with_train_and_test_folders(tmp_path: Path) -> None:
    _fake_image_folder(tmp_path / "pets", split_folders=True)
    splits = get_dataset(f"imagefolder:{tmp_path / 'pets'}")
    assert splits.num_classes == 3
    assert len(splits.test) == 9 and len(splits.train) + len(splits.val) == 24
    assert splits.test.source is not splits.train.source


def test_npz_with_own_test_split_and_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "rgb.npz"
    np.savez(
        path,
        x=rng.random((60, 3, 10, 10), dtype=np.float32),
        y=np.arange(60) % 5,
        x_test=rng.random((10, 3, 10, 10), dtype=np.float32),
        y_test=np.arange(10) % 6,
    )
    splits = get_dataset(f"npz:{path}")
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (3, (10, 10), 6)
    assert len(splits.test) == 10 and len(splits.train) + len(splits.val) == 60


def test_npz_channels_last_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "hwc.npz"
    np.savez(path, x=np.zeros((40, 16, 16, 3), dtype=np.uint8), y=np.arange(40) % 2)
    splits = get_dataset(f"npz:{path}")
    assert (splits.in_channels, splits.image_size) == (3, (16, 16))


BAD_NPZ = {
    "no-y": (dict(x=np.zeros((10, 8, 8)), labels=np.zeros(10, int)), ["'y'", "found: labels, x"]),
    "no-x": (dict(images=np.zeros((10, 8, 8)), y=np.zeros(10, int)), ["'x'", "found: images, y"]),
    "x-2d": (dict(x=np.zeros((10, 64)), y=np.zeros(10, int)), ["'x'", "(10, 64)"]),
    "x-5d": (dict(x=np.zeros((10, 1, 1, 8, 8)), y=np.zeros(10, int)), ["'x'", "(10, 1, 1, 8, 8)"]),
    "y-2d": (dict(x=np.zeros((10, 8, 8)), y=np.zeros((10, 1), int)), ["'y'", "(10, 1)"]),
    "length": (dict(x=np.zeros((10, 8, 8)), y=np.zeros(9, int)), ["'y'", "9 labels", "10 images"]),
    "float-y": (dict(x=np.zeros((10, 8, 8)), y=np.zeros(10)), ["'y'", "float64", "integers"]),
    "negative-y": (dict(x=np.zeros((10, 8, 8)), y=-np.ones(10, int)), ["'y'", "negative"]),
    "test-half": (
        dict(x=np.zeros((10, 8, 8)), y=np.zeros(10, int), x_test=np.zeros((2, 8, 8))),
        ["'y_test'"],
    ),
    "test-shape": (
        dict(
            x=np.zeros((10, 8, 8)), y=np.zeros(10, int), x_test=np.zeros((2, 9, 9)), y_test=np.zeros(2, int)
        ),
        ["'x_test'", "(1, 9, 9)"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_names_the_file_and_the_problem(case: str, tmp_path: Path) -> None:
    arrays, expected = BAD_NPZ[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError) as info:
        get_dataset(f"npz:{path}")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for part in expected:
        assert part in message


def test_missing_or_corrupt_npz_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        get_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.npz"):
        get_dataset(f"npz:{tmp_path / 'junk.npz'}")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_files_without_download_say_where_and_how(name: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        get_dataset(name, data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--download" in message and "--data-dir" in message


def test_unknown_and_incomplete_names() -> None:
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*digits"):
        get_dataset("imagenet")
    with pytest.raises(UserError, match="npz:PATH"):
        get_dataset("npz:")
    with pytest.raises(UserError, match="imagefolder:PATH"):
        get_dataset("imagefolder")
    with pytest.raises(UserError, match="takes no argument"):
        get_dataset("digits:extra")


def test_plain_names_are_case_insensitive() -> None:
    assert get_dataset("Digits").name == "digits"


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(UserError, match="'val_fraction'"):
        get_dataset("digits", val_fraction=fraction)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        get_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="class"):
        get_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no test/"):
        get_dataset(f"imagefolder:{tmp_path / 'half'}")


def test_data_package_does_not_import_torchvision() -> None:
    import subprocess
    import sys

    code = (
        "import sys, autoprune.data; autoprune.data.get_dataset('digits'); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Fashion-MNIST as Debian's dataset-fashion-mnist ships it ------------------------------
def _debian_fashion(folder: Path, *, n_train: int = 120, label_offset: int = 0) -> None:
    """The four IDX files gzipped, straight in ``folder`` (as /usr/share/datasets/fashion-mnist/)."""
    import gzip

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", 30)):
        for kind, array in (("images-idx3", _pixels(rng, (n, 28, 28), [0.286], [0.353], 0)),
                            ("labels-idx1", (np.arange(n) + label_offset) % 10)):
            plain = folder / f"{prefix}-{kind}-ubyte"
            _write_idx(plain, array)
            with gzip.open(f"{plain}.gz", "wb") as f:
                f.write(plain.read_bytes())
            plain.unlink()


def test_fashion_mnist_reads_the_system_package_files_when_no_data_dir_is_given(tmp_path, monkeypatch) -> None:
    from autoprune.data import torchvision_sets

    system = tmp_path / "usr-share-datasets" / "fashion-mnist"
    _debian_fashion(system, n_train=150)
    monkeypatch.setitem(torchvision_sets.SYSTEM_DIRS, "fashion-mnist", (system, "apt-get install -y dataset-fashion-mnist"))
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    splits = get_dataset("fashion-mnist")
    assert len(splits.train) + len(splits.val) == 150 and len(splits.test) == 30
    assert splits.image_size == (28, 28) and splits.in_channels == 1
    assert sorted(int(y) for _, y in (splits.test[i] for i in range(30))) == sorted(list(range(10)) * 3)


def test_read_idx_gives_the_same_array_plain_and_gzipped(tmp_path) -> None:
    import gzip

    from autoprune.data.torchvision_sets import read_idx

    array = np.random.default_rng(3).integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "x-idx3-ubyte", array)
    with gzip.open(tmp_path / "y-idx3-ubyte.gz", "wb") as f:
        f.write((tmp_path / "x-idx3-ubyte").read_bytes())
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), array)
    assert np.array_equal(read_idx(tmp_path / "y-idx3-ubyte.gz"), array)


def test_fashion_mnist_data_dir_wins_over_the_system_package(tmp_path, monkeypatch) -> None:
    from autoprune.data import torchvision_sets

    system = tmp_path / "system"
    _debian_fashion(system, n_train=150)
    monkeypatch.setitem(torchvision_sets.SYSTEM_DIRS, "fashion-mnist", (system, "apt-get install -y dataset-fashion-mnist"))
    mine = tmp_path / "mine"
    _debian_fashion(mine, n_train=200)  # gzipped files straight in the folder named
    assert len(get_dataset("fashion-mnist", data_dir=mine).train) + len(get_dataset("fashion-mnist", data_dir=mine).val) == 200
    # a folder the user names that lacks the files is an error, not a silent fallback
    with pytest.raises(UserError) as info:
        get_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    assert str(system) not in str(info.value)


def test_fashion_mnist_missing_says_how_to_install_it_in_one_line(tmp_path, monkeypatch) -> None:
    from autoprune.data import torchvision_sets

    monkeypatch.setitem(torchvision_sets.SYSTEM_DIRS, "fashion-mnist",
                        (tmp_path / "nowhere", "apt-get install -y dataset-fashion-mnist"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        get_dataset("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install -y dataset-fashion-mnist" in message and str(tmp_path / "nowhere") in message


def test_corrupt_idx_file_is_named(tmp_path) -> None:
    import gzip

    _debian_fashion(tmp_path / "f")
    bad = tmp_path / "f" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x1e" + bytes(10))  # says 30 labels, holds 10
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*10 data bytes"):
        get_dataset("fashion-mnist", data_dir=tmp_path / "f")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        get_dataset("fashion-mnist", data_dir=tmp_path / "f")
