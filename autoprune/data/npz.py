"""``npz:PATH``: your own images in one NumPy ``.npz`` file.

Arrays:
    ``x``: images, ``N×H×W`` (one channel) or ``N×C×H×W``; channels-last ``N×H×W×C``
        is accepted when ``C`` is 1, 3 or 4 and the second axis is not. ``uint8`` pixels
        are scaled by 1/255; float pixels are used as they are.
    ``y``: integer labels ``0..K-1``, shape ``N``.
    ``x_test``, ``y_test`` (optional, together): the test split. Without them a fixed
        20% of ``x`` (stratified, independent of ``seed``) becomes the test split.

Validation is ``val_fraction`` of the training pool, carved by ``seed``. Normalization uses
the per-channel mean/std of the training split. ``num_classes`` is the largest label + 1.
Augmentation: random crop with padding ``max(1, H // 8)``, plus a horizontal flip for
3-channel images.

Example:
    >>> np.savez("mine.npz", x=images_uint8, y=labels)  # doctest: +SKIP
    >>> get_dataset("npz:mine.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from autoprune.data.registry import DatasetSplits, register_dataset
from autoprune.data.splits import FIXED_TEST_SEED, TensorSource, build_splits, carve
from autoprune.errors import UserError

TEST_FRACTION = 0.2


def _images(path: str, key: str, x: np.ndarray) -> tuple[torch.Tensor, float]:
    """Check and convert an image array to ``(N, C, H, W)`` and its scale."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(
            f"npz file '{path}': array '{key}' has shape {x.shape}; "
            f"expected N×H×W or N×C×H×W images."
        )
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)), 1 / 255
    if np.issubdtype(x.dtype, np.floating):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise UserError(f"npz file '{path}': array '{key}' contains NaN or infinite values.")
        return torch.from_numpy(x), 1.0
    raise UserError(
        f"npz file '{path}': array '{key}' has dtype {x.dtype}; save images as uint8 (0..255) or float."
    )


def _labels(path: str, key: str, y: np.ndarray, n: int, x_key: str) -> torch.Tensor:
    if y.ndim != 1:
        raise UserError(
            f"npz file '{path}': array '{key}' has shape {y.shape}; expected labels of shape (N,)."
        )
    if len(y) != n:
        raise UserError(
            f"npz file '{path}': array '{key}' has {len(y)} labels but '{x_key}' has {n} images."
        )
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise UserError(
            f"npz file '{path}': array '{key}' has dtype {y.dtype}; labels must be integers "
            f"(save {key}.astype(np.int64))."
        )
    if n and y.min() < 0:
        raise UserError(f"npz file '{path}': array '{key}' has negative labels (min {y.min()}); use 0..K-1.")
    return torch.from_numpy(y.astype(np.int64))


def _load(path: Path) -> dict[str, np.ndarray]:
    shown = str(path)
    if not path.is_file():
        raise UserError(f"npz file '{shown}' not found.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UserError(f"npz file '{shown}' could not be read as a NumPy .npz archive: {exc}") from exc


@register_dataset(
    "npz",
    description="Your own images in a .npz file: x (N×H×W or N×C×H×W), y (labels); optional x_test, y_test.",
    prefix=True,
)
def build_npz(
    arg: str | None, *, data_dir: Path, download: bool, seed: int, val_fraction: float
) -> DatasetSplits:
    assert arg is not None
    path = Path(arg).expanduser()
    arrays = _load(path)
    shown = arg
    found = ", ".join(sorted(arrays)) or "nothing"
    for key, fix in (("x", "save images under 'x'"), ("y", "save labels under 'y'")):
        if key not in arrays:
            raise UserError(f"npz file '{shown}' has no array '{key}' (found: {found}); {fix}.")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise UserError(
            f"npz file '{shown}' has '{have}' but no '{lack}' (found: {found}); save both or neither."
        )

    x, scale = _images(shown, "x", arrays["x"])
    y = _labels(shown, "y", arrays["y"], x.shape[0], "x")
    if x.shape[0] < 2:
        raise UserError(
            f"npz file '{shown}': array 'x' holds {x.shape[0]} image(s); need at least a few per split."
        )
    source = TensorSource(x, y, scale=scale)
    if "x_test" in arrays:
        xt, scale_t = _images(shown, "x_test", arrays["x_test"])
        if tuple(xt.shape[1:]) != tuple(x.shape[1:]):
            raise UserError(
                f"npz file '{shown}': array 'x_test' has images of shape {tuple(xt.shape[1:])} "
                f"but 'x' has {tuple(x.shape[1:])} (C×H×W); they must match."
            )
        if scale_t != scale:
            raise UserError(
                f"npz file '{shown}': 'x' and 'x_test' must have the same dtype kind (uint8 or float)."
            )
        yt = _labels(shown, "y_test", arrays["y_test"], xt.shape[0], "x_test")
        test_source = TensorSource(xt, yt, scale=scale)
        pool, test_rows = np.arange(x.shape[0]), np.arange(xt.shape[0])
    else:
        test_source = source
        pool, test_rows = carve(y.numpy(), np.arange(x.shape[0]), TEST_FRACTION, FIXED_TEST_SEED, what="test")
    num_classes = int(max(int(y.max()), int(test_source.labels.max()) if len(test_source) else 0)) + 1
    c, h, w = (int(s) for s in x.shape[1:])
    return build_splits(
        f"npz:{arg}",
        train_source=source,
        train_pool=pool,
        test_source=test_source,
        test_rows=test_rows,
        seed=seed,
        val_fraction=val_fraction,
        in_channels=c,
        image_size=(h, w),
        num_classes=num_classes,
        stats_source=source,
    )
