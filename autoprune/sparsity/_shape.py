"""Shape sparsity (StructADMM's "filter shape"): whole im2col columns."""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.sparsity._base import GroupSparsity, gemm_view, register_sparsity, squares


@register_sparsity
class ShapeSparsity(GroupSparsity):
    """Keep the ``keep_count(K, rate)`` GEMM columns of largest L2 norm.

    Column ``j`` of ``W.reshape(O, -1)`` is one ``(c, kh, kw)`` position (im2col
    order, as :func:`torch.nn.functional.unfold`) taken across all filters; removing
    it removes one row of the unfolded input. For a linear weight a column is an
    input feature, so shape sparsity equals channel sparsity there; it is allowed.
    """

    name = "shape"
    description = "whole im2col columns: one (c, kh, kw) position across all filters"
    structured = None

    def group_scores(self, weight: Tensor) -> Tensor:
        return gemm_view(squares(weight)).sum(0)

    def expand_group_mask(self, group_mask: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        rows = shape[0]
        cols = group_mask.numel()
        return group_mask.reshape(1, cols).expand(rows, cols).reshape(shape)
