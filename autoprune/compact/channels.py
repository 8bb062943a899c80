"""Physical removal of pruned channel groups with Torch-Pruning's dependency graph.

The groups and the kept channels come from the :class:`~autoprune.projection.Projector`
that produced the hard-prune masks, so exactly the channels ADMM zeroed are removed —
in every coupled layer: BatchNorm, readers, residual adds, concatenations, depthwise
convs, and the flatten→linear boundary.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.projection import Projector


def _out_fn(module: nn.Module):  # noqa: ANN202
    import torch_pruning as tp

    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels:
        return tp.prune_depthwise_conv_out_channels
    return tp.prune_conv_out_channels


def remove_channels(model: nn.Module, projector: Projector, example_input: torch.Tensor) -> nn.Module:
    """A copy of the (masked) model with every pruned channel group physically removed.

    ``projector.hard_masks()`` must have been called on this model's weights; the channels
    it chose (``projector.kept_channels_``) are the ones removed.
    """
    import torch_pruning as tp

    compact = copy.deepcopy(model).eval()
    if not projector.kept_channels_:
        return compact
    names = dict(compact.named_modules())
    dg = tp.DependencyGraph().build_dependency(compact, example_inputs=example_input, verbose=False)
    for gi, keep in projector.kept_channels_.items():
        root = names[projector.graph.groups[gi].root]
        pruned = torch.nonzero(~keep.cpu()).flatten().tolist()
        if pruned:
            dg.get_pruning_group(root, _out_fn(root), idxs=pruned).prune()
    return compact
