"""Physical removal of pruned channel groups with Torch-Pruning's dependency graph.

The groups and the kept channels come from the :class:`~autoprune.projection.Projector`
that produced the hard-prune masks, so exactly the channels ADMM zeroed are removed —
in every coupled layer: BatchNorm, readers, residual adds, concatenations, depthwise
convs, and the flatten→linear boundary.

Grouped (non-depthwise) convolutions are the one place where Torch-Pruning 1.6 does not
remove the channels we chose: its own pruners remove the same offsets from every conv
group, so ``prune_conv_in_channels`` keeps the first group's kept offsets for all groups.
The projection keeps the best channels *of each group* (the same count, at different
offsets), so for a grouped conv's input channels the weight is gathered here, group by
group, and set after Torch-Pruning has updated the rest of the group. Output channels of
a grouped conv are plain rows, which Torch-Pruning removes correctly; both sides are
checked to be balanced first. LayerNorms get their kept scales and shifts set again after
Torch-Pruning's pruner, which keeps them out of order (:func:`_kept_layernorm_params`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.groups import is_grouped_conv, out_channels_fn, trace_dependencies
from autoprune.norms import unmask_statistics
from autoprune.projection import Projector


def _balanced_keep(n: int, groups: int, pruned: list[int], what: str) -> list[torch.Tensor]:
    """Kept offsets inside each of the ``groups`` parts of ``n`` channels; all parts keep as many."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.as_tensor(pruned, dtype=torch.long)] = False
    per_group = keep.view(groups, n // groups)
    counts = per_group.sum(1)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise RuntimeError(f"{what}: the channels to remove leave its {groups} groups unbalanced "
                           f"(kept per group: {counts.tolist()}); the projection should have balanced them")
    return [torch.nonzero(row).flatten() for row in per_group]


def _grouped_in_weight(conv: nn.Conv2d, pruned: list[int], name: str) -> torch.Tensor:
    """The grouped conv's weight without the pruned input channels, each group keeping its own offsets."""
    g = conv.groups
    kept = _balanced_keep(conv.in_channels, g, pruned, f"grouped convolution '{name}' (inputs)")
    w = conv.weight.detach()
    rows = w.view(g, w.shape[0] // g, *w.shape[1:])  # conv group i: output rows i*O/g .. (i+1)*O/g
    return torch.cat([rows[i][:, kept[i].to(w.device)] for i in range(g)], 0)


def _kept_layernorm_params(group) -> dict[nn.LayerNorm, dict[str, torch.Tensor]]:  # noqa: ANN001
    """The weight and bias each LayerNorm of a Torch-Pruning group must have once its channels
    are removed: the kept entries, in their order.

    Torch-Pruning 1.6's LayerNorm pruner keeps the right entries in the wrong order (it
    builds them from a set and sorts a tensor out of place), which permutes the kept
    channels' scales and shifts whenever a few of many are kept (ConvNeXt's stem LayerNorm,
    8 of 40 kept: outputs off by 1.4); they are set again after it has pruned.
    """
    out: dict[nn.LayerNorm, dict[str, torch.Tensor]] = {}
    for dep, idxs in group:
        norm = dep.target.module
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm in out:
            continue
        keep = torch.ones(norm.weight.shape[-1], dtype=torch.bool)
        keep[torch.as_tensor([int(i) for i in idxs], dtype=torch.long)] = False
        out[norm] = {name: p.detach()[..., keep.to(p.device)].clone()
                     for name in ("weight", "bias") if (p := getattr(norm, name, None)) is not None}
    return out


def remove_channels(model: nn.Module, projector: Projector, example_input: torch.Tensor) -> nn.Module:
    """A copy of the (masked) model with every pruned channel group physically removed.

    ``projector.hard_masks()`` must have been called on this model's weights; the channels
    it chose (``projector.kept_channels_``) are the ones removed.
    """
    compact = copy.deepcopy(model).eval()
    unmask_statistics(compact)  # its norms over channels become plain norms over the kept channels below
    if not projector.kept_channels_:
        return compact
    per_channel = [m for m in compact.modules() if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels]
    names = dict(compact.named_modules())
    module_names = {m: n for n, m in names.items()}
    dg = trace_dependencies(compact, example_input)
    for gi, keep in projector.kept_channels_.items():
        root = names[projector.graph.groups[gi].root]
        pruned = torch.nonzero(~keep.cpu()).flatten().tolist()
        if not pruned:
            continue
        group = dg.get_pruning_group(root, out_channels_fn(root), idxs=pruned)
        outs: dict[nn.Conv2d, list[int]] = {}
        ins: dict[nn.Conv2d, list[int]] = {}
        for dep, idxs in group:
            if is_grouped_conv(dep.target.module):
                side = outs if dg.is_out_channel_pruning_fn(dep.handler) else ins
                side.setdefault(dep.target.module, []).extend(int(i) for i in idxs)
        for conv, idxs in outs.items():
            _balanced_keep(conv.out_channels, conv.groups, idxs,
                           f"grouped convolution '{module_names[conv]}' (outputs)")
        gathered = {conv: _grouped_in_weight(conv, idxs, module_names[conv]) for conv, idxs in ins.items()}
        layernorms = _kept_layernorm_params(group)
        for conv, weight in gathered.items():
            if conv in outs:  # its outputs are in the same group too (e.g. a residual around it)
                rows = torch.ones(conv.out_channels, dtype=torch.bool)
                rows[torch.as_tensor(outs[conv], dtype=torch.long)] = False
                gathered[conv] = weight[rows.to(weight.device)]
        group.prune()
        for conv, weight in gathered.items():
            if conv.weight.shape != weight.shape:
                raise RuntimeError(f"grouped convolution '{module_names[conv]}': expected a weight of shape "
                                   f"{tuple(weight.shape)} after pruning, Torch-Pruning left "
                                   f"{tuple(conv.weight.shape)}")
            conv.weight = nn.Parameter(weight.clone(), requires_grad=conv.weight.requires_grad)
        for norm, kept in layernorms.items():
            for pname, value in kept.items():
                setattr(norm, pname, nn.Parameter(value, requires_grad=getattr(norm, pname).requires_grad))
    for norm in per_channel:  # one channel per group stays so (Torch-Pruning keeps num_groups)
        norm.num_groups = norm.num_channels
    return compact
