"""Batched tensor augmentations and normalization.

They work on float batches ``(N, C, H, W)`` with pixels in [0, 1] (before normalization)
and draw randomness from torch's global RNG, which the training code seeds. Working
on whole batches keeps augmentation cheap for small in-memory datasets that are
trained on many times.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class RandomShift:
    """Pad by ``pad`` pixels, then crop back to the original size at a random offset.

    The same as torchvision's ``RandomCrop(size, padding=pad)``: a random translation by
    up to ``pad`` pixels, the uncovered border filled with ``fill``.
    """

    def __init__(self, pad: int, fill: float = 0.0) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad = int(pad)
        self.fill = float(fill)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p == 0:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, (p, p, p, p), value=self.fill)
        dy = torch.randint(0, 2 * p + 1, (n,))
        dx = torch.randint(0, 2 * p + 1, (n,))
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        batch = torch.arange(n)[:, None, None, None]
        chan = torch.arange(c)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0]) < self.p
        if not bool(flip.any()):
            return x
        x = x.clone()
        x[flip] = x[flip].flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply batch transforms in order."""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def standard_augmentation(image_size: tuple[int, int], channels: int, *, pad: int | None = None) -> Compose:
    """The light augmentation autoprune uses: random shift, plus a flip for colour images.

    Args:
        image_size: ``(H, W)``; the default shift is ``max(1, H // 8)`` pixels.
        channels: Flips are added only for 3-channel (natural) images; digits and
            letters change meaning when mirrored.
        pad: Override the shift.
    """
    shift = RandomShift(max(1, image_size[0] // 8) if pad is None else pad)
    return Compose([shift, RandomHorizontalFlip()] if channels == 3 else [shift])


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``mean``/``std`` have shape ``(C,)``."""
    return (x - mean[:, None, None]) / std[:, None, None]


def channel_stats(
    x: torch.Tensor, *, scale: float = 1.0, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x * scale`` for a batch ``(N, C, H, W)``, in float64.

    Processes ``chunk`` images at a time so uint8 sources need not be converted whole.
    A constant channel gets std 1.0 so normalization never divides by zero.
    """
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float64) * scale
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = total / max(count, 1)
    var = (total_sq / max(count, 1) - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
