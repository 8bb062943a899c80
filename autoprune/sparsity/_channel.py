"""Channel sparsity: whole input channels."""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.sparsity._base import GroupSparsity, register_sparsity, squares


@register_sparsity
class ChannelSparsity(GroupSparsity):
    """Keep the ``keep_count(C, rate)`` input channels of largest L2 norm.

    Group ``c`` is ``W[:, c, ...]`` (all filters, all kernel positions), with
    ``C = W.shape[1]``. For a linear layer that is input feature ``c`` (a GEMM
    column). For a grouped conv, ``W.shape[1] = in_channels / groups`` and ``c`` is
    the index *within* a group: pruning it removes input channel ``g * C + c`` of
    every group ``g`` at once (a depthwise conv has ``C = 1``, so nothing is pruned;
    its channels are pruned through the layer that feeds it).
    """

    name = "channel"
    description = "whole input channels (W[:, c]); for grouped convs, index within each group"
    structured = "in"

    def group_scores(self, weight: Tensor) -> Tensor:
        sq = squares(weight)
        return sq.reshape(sq.shape[0], sq.shape[1], -1).sum((0, 2))

    def expand_group_mask(self, group_mask: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        o, c = shape[0], shape[1]
        rest = 1
        for d in shape[2:]:
            rest *= d
        return group_mask.reshape(1, c, 1).expand(o, c, rest).reshape(shape)
