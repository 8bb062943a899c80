"""Irregular (element-wise) sparsity: every weight is its own group."""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.sparsity._base import GroupSparsity, register_sparsity, squares


@register_sparsity
class IrregularSparsity(GroupSparsity):
    """Keep the ``keep_count(numel, rate)`` weights of largest magnitude.

    Works on a weight of any shape (biases included). Compresses storage but gives
    no dense speed-up by itself.

    Example:
        >>> w = torch.tensor([[1.0, -4.0], [3.0, 2.0]])
        >>> IrregularSparsity().project(w, 0.5).tolist()
        [[0.0, -4.0], [3.0, 0.0]]
    """

    name = "irregular"
    description = "single weights of smallest magnitude are zeroed (no dense speed-up)"
    structured = None

    def applies_to(self, weight: Tensor) -> str | None:
        if weight.numel() == 0:
            return "irregular sparsity needs a non-empty weight"
        return None

    def group_scores(self, weight: Tensor) -> Tensor:
        return squares(weight).reshape(-1)

    def expand_group_mask(self, group_mask: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        return group_mask.reshape(shape)
