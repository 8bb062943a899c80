"""Filter sparsity: whole output channels (rows of the GEMM matrix)."""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.sparsity._base import GroupSparsity, gemm_view, register_sparsity, squares


@register_sparsity
class FilterSparsity(GroupSparsity):
    """Keep the ``keep_count(O, rate)`` filters (GEMM rows ``W[o]``) of largest L2 norm.

    For a linear layer the groups are output features. Compaction removes the
    output channels, and with them the matching inputs of the next layer.
    """

    name = "filter"
    description = "whole filters (output channels, rows of the GEMM matrix)"
    structured = "out"

    def group_scores(self, weight: Tensor) -> Tensor:
        return gemm_view(squares(weight)).sum(1)

    def expand_group_mask(self, group_mask: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        rows = shape[0]
        cols = 1
        for d in shape[1:]:
            cols *= d
        return group_mask.reshape(rows, 1).expand(rows, cols).reshape(shape)
