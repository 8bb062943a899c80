"""``imagefolder:PATH``: a folder of images, one subfolder per class (torchvision ImageFolder).

Layouts:
    ``PATH/train/<class>/*.png`` and ``PATH/test/<class>/...`` (optionally ``PATH/val/...``):
        the given splits are used; without ``val/``, validation is ``val_fraction`` of
        ``train/`` carved by ``seed``. Classes come from ``train/``.
    ``PATH/<class>/*.png``: one pool; a fixed 10% (stratified, independent of ``seed``)
        becomes the test split and validation is ``val_fraction`` of the rest, by ``seed``
        (81/9/10 with the default ``val_fraction=0.1``).

Every image is converted to RGB and resized to 32×32 (bilinear), so ``in_channels=3`` and
``image_size=(32, 32)`` whatever the files are. Decoded images are cached in memory after
first use (up to :data:`CACHE_BYTES`). Normalization uses the ImageNet mean/std;
augmentation is a random crop with padding 4 plus a horizontal flip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoprune.data.registry import DatasetSplits, register_dataset
from autoprune.data.splits import FIXED_TEST_SEED, build_splits, carve
from autoprune.errors import UserError

IMAGE_SIZE = (32, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_FRACTION = 0.1
CACHE_BYTES = 1 << 30


class ImageFileSource:
    """Image files decoded on demand to uint8 ``3×H×W`` (RGB, resized), cached in memory."""

    def __init__(self, paths: list[str], labels: list[int], *, size: tuple[int, int] = IMAGE_SIZE) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.size = size
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_limit = CACHE_BYTES // (3 * size[0] * size[1])

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, row: int) -> torch.Tensor:
        cached = self._cache.get(row)
        if cached is not None:
            return cached
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[row]) as img:
                img = img.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"could not read image '{self.paths[row]}': {exc}") from exc
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        if len(self._cache) < self._cache_limit:
            self._cache[row] = t
        return t

    def fetch(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._decode(int(r)) for r in rows]).to(torch.float32) / 255.0


def _scan(
    folder: Path, class_to_idx: dict[str, int] | None, shown: str
) -> tuple[list[str], list[int], list[str]]:
    """Sample paths, labels and class names of one ImageFolder-style folder."""
    from autoprune._torchvision import import_torchvision

    import_torchvision()  # makes the plain import below safe on CPU-only torch
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    given = class_to_idx is not None
    try:
        classes = find_classes(str(folder))[0]
        if not given:
            class_to_idx = {c: i for i, c in enumerate(classes)}
        else:
            extra = sorted(set(classes) - set(class_to_idx))
            if extra:
                raise UserError(
                    f"imagefolder '{shown}': '{folder.name}/' has classes not in 'train/': "
                    f"{', '.join(extra)}."
                )
        samples = make_dataset(
            str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=given
        )
    except FileNotFoundError as exc:
        raise UserError(f"imagefolder '{shown}': {exc} Expected one subfolder of images per class.") from exc
    if not samples:
        raise UserError(f"imagefolder '{shown}': no images found in '{folder}'.")
    names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    return [p for p, _ in samples], [c for _, c in samples], names


@register_dataset(
    "imagefolder",
    description="A folder of images, one subfolder per class (optionally under train/ val/ test/); "
    "resized to 32×32 RGB.",
    prefix=True,
)
def build_imagefolder(
    arg: str | None, *, data_dir: Path, download: bool, seed: int, val_fraction: float
) -> DatasetSplits:
    assert arg is not None
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise UserError(f"imagefolder '{arg}' is not a directory.")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    common = dict(
        seed=seed,
        val_fraction=val_fraction,
        in_channels=3,
        image_size=IMAGE_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    if has_train != has_test:
        have, lack = ("train", "test") if has_train else ("test", "train")
        raise UserError(
            f"imagefolder '{arg}' has {have}/ but no {lack}/; "
            f"add {lack}/ or put the class folders directly in it."
        )
    if has_train:
        paths, labels, classes = _scan(root / "train", None, arg)
        class_to_idx = {c: i for i, c in enumerate(classes)}
        train = ImageFileSource(paths, labels)
        tp, tl, _ = _scan(root / "test", class_to_idx, arg)
        test = ImageFileSource(tp, tl)
        val_kwargs = {}
        if (root / "val").is_dir():
            vp, vl, _ = _scan(root / "val", class_to_idx, arg)
            val_kwargs = dict(val_source=ImageFileSource(vp, vl), val_rows=np.arange(len(vp)))
        return build_splits(
            f"imagefolder:{arg}",
            train_source=train,
            train_pool=np.arange(len(train)),
            test_source=test,
            test_rows=np.arange(len(test)),
            num_classes=len(classes),
            **common,
            **val_kwargs,
        )
    paths, labels, classes = _scan(root, None, arg)
    source = ImageFileSource(paths, labels)
    pool, test_rows = carve(
        np.asarray(labels), np.arange(len(paths)), TEST_FRACTION, FIXED_TEST_SEED, what="test"
    )
    return build_splits(
        f"imagefolder:{arg}",
        train_source=source,
        train_pool=pool,
        test_source=source,
        test_rows=test_rows,
        num_classes=len(classes),
        **common,
    )
