"""The constraint sets of one pruning job and the Euclidean projection onto them.

A :class:`Projector` is built from a model's :class:`~autoprune.groups.ChannelGraph` and
the resolved per-layer targets ``{layer: LayerTarget}``. It splits every target into

* a *group* part — ``filter`` (a layer's output channels) and ``channel`` (its input
  channels) act on the coupled :class:`~autoprune.groups.ChannelGroup` as one unit: the
  score of a channel is the summed squared L2 norm of its slices over every coupled
  weight, and the top ``keep_count`` channels are kept in all of them (for a group that
  passes through grouped convs, the same number in every balance cell, so that each
  grouped conv keeps equal groups: :func:`balanced_topk_mask`);
* a *per-layer* part — ``irregular``, ``shape``, ``n:m`` (and the column half of
  ``filter+shape``) act on the layer's own weight, after the group part. ``filter+shape``
  thus picks rows first (over the coupled group, BatchNorm included) and then the best
  columns given those rows; the sparsity type's own joint projection is used where a
  layer is projected alone (``SparsityType.project``).

``project`` gives ADMM's Z-step, ``hard_masks`` the masks of the hard prune, which also
cover BatchNorm entries, biases and the readers of removed channels, so that the masked
model is exactly what compaction will build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.config import LayerTarget
from autoprune.errors import ConfigError
from autoprune.groups import DEPTHWISE, NORM, OUT, ChannelGraph, ChannelGroup, GroupMember
from autoprune.sparsity import SparsityType, get_sparsity, keep_count, topk_mask

FILTER_SHAPE = "filter+shape"


@dataclass
class GroupTarget:
    """The structured constraint on one channel group."""

    group: ChannelGroup
    rate: float
    by_out: set[str] = field(default_factory=set)  # layers that asked for filter pruning
    by_in: set[str] = field(default_factory=set)  # layers that asked for channel pruning
    notes: list[str] = field(default_factory=list)

    @property
    def scored(self) -> list[GroupMember]:
        """The members whose parameters are constrained (and scored) by ADMM.

        Filter pruning constrains every producer of the channels *and* the per-channel
        norm parameters (BatchNorm's scale and shift): a conv followed by BatchNorm is
        invariant to the scale of its filters, so only driving the BN entries to zero
        as well makes a channel really vanish before the hard prune.
        """
        out = []
        if self.by_out:
            out += [m for m in self.group.members if m.role in (OUT, DEPTHWISE, NORM)]
        if self.by_in:
            out += [m for m in self.group.consumers if m not in out]
        return out


class Projector:
    """Projection onto the sparsity sets of a model's layer targets.

    Args:
        model: The model whose parameters are projected (names must not change).
        graph: Its channel graph.
        targets: Resolved targets per layer name (``none`` already dropped).
        channel_multiple: Round the number of channels each pruned group keeps to a
            multiple of this (see :func:`rounded_keep`); 1 keeps the exact rates.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, targets: dict[str, LayerTarget], *,
                 channel_multiple: int = 1) -> None:
        if int(channel_multiple) < 1:
            raise ConfigError(f"channel_multiple must be a positive integer, got {channel_multiple!r}.")
        self.channel_multiple = int(channel_multiple)
        self.model = model
        self.graph = graph
        self.targets = dict(targets)
        self.group_targets: dict[int, GroupTarget] = {}
        self.layer_types: dict[str, tuple[SparsityType, float]] = {}
        self.notes: list[str] = []
        self.kept_channels_: dict[int, torch.Tensor] = {}  # group index -> kept root channels (set by hard_masks)
        for name, tgt in targets.items():
            if name not in graph.layers:
                raise ConfigError(f"layer '{name}' is not a prunable layer of this model.")
            stype = get_sparsity(tgt.type)
            rate = stype.check_rate(tgt.rate, where=f"layer {name}")
            weight = model.get_submodule(name).weight
            why = stype.applies_to(weight)
            if why:
                raise ConfigError(f"layer '{name}': {tgt.type} sparsity does not apply ({why}).")
            if stype.name in ("filter", FILTER_SHAPE):
                self._add_group(name, rate, "out")
            elif stype.name == "channel":
                self._add_group(name, rate, "in")
            if stype.name == FILTER_SHAPE:
                self.layer_types[name] = (get_sparsity("shape"), rate)
            elif stype.structured is None:
                self.layer_types[name] = (stype, rate)
        for gt in self.group_targets.values():
            self.notes += gt.notes

    # -- construction -------------------------------------------------------
    def _add_group(self, name: str, rate: float, side: str) -> None:
        group = self.graph.out_group(name) if side == "out" else self.graph.in_group(name)
        if group is None:
            raise ConfigError(
                f"layer '{name}' reads the model input; its input channels cannot be pruned "
                f"(use filter pruning on it, or channel pruning on a later layer)."
            )
        if not group.prunable:
            kind = "filters" if side == "out" else "input channels"
            raise ConfigError(f"layer '{name}': its {kind} cannot be pruned because {group.reason}.")
        gt = self.group_targets.get(group.index)
        if gt is None:
            gt = self.group_targets[group.index] = GroupTarget(group, rate)
        elif rate != gt.rate:
            gt.notes.append(
                f"layers {sorted(gt.by_out | gt.by_in | {name})} share coupled channels; "
                f"they are pruned together at the highest rate asked ({max(rate, gt.rate):g})."
            )
            gt.rate = max(rate, gt.rate)
        (gt.by_out if side == "out" else gt.by_in).add(name)

    # -- what ADMM constrains ------------------------------------------------
    def _member_params(self, m: GroupMember, side: str | None) -> list[str]:
        """Parameter names of a member that carry the group's channels (``side`` None: all)."""
        mod = self.model.get_submodule(m.module)
        if m.role == NORM:
            return [f"{m.module}.{pn}" for pn, p in mod.named_parameters(recurse=False) if p.ndim == 1]
        names = [f"{m.module}.weight"]
        if m.role in (OUT, DEPTHWISE) and side != "in" and getattr(mod, "bias", None) is not None:
            names.append(f"{m.module}.bias")
        return names

    @property
    def constrained_params(self) -> list[str]:
        """Parameter names that carry an ADMM constraint (Z and U variables), in model order."""
        names = {f"{n}.weight" for n in self.layer_types}
        for gt in self.group_targets.values():
            for m in gt.scored:
                names |= set(self._member_params(m, None if gt.by_out else "in"))
        return [n for n, _ in self.model.named_parameters() if n in names]

    def _param(self, name: str) -> torch.Tensor:
        return self.model.get_parameter(name).detach()

    def group_keep(self, gt: GroupTarget, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Boolean mask over the group's root channels: the channels that stay."""
        device = self.model.get_submodule(gt.group.root).weight.device
        scores = torch.zeros(gt.group.size, dtype=torch.float32, device=device)
        for m in gt.scored:
            mod = self.model.get_submodule(m.module)
            for pname in self._member_params(m, None if gt.by_out else "in"):
                p = params[pname] if pname in params else self._param(pname)
                if p.ndim == 1:
                    norms = p.detach().float().pow(2)
                else:
                    norms = _slice_norms_sq(mod, m.role, p)
                scores.index_add_(0, m.root_idxs.to(device), norms[m.idxs.to(norms.device)].to(device))
        return balanced_topk_mask(scores, self.group_keep_count(gt), gt.group.cell_of, gt.group.cells)

    def group_keep_count(self, gt: GroupTarget) -> int:
        """How many of the group's channels stay.

        The rate, rounded to a multiple of ``channel_multiple`` and, for a group that passes
        through grouped convs, of its number of cells (see :func:`rounded_keep`).
        """
        return rounded_keep(gt.group.size, gt.rate, self.channel_multiple, cells=gt.group.cells)

    def signature(self) -> str:
        """What the targets amount to, independently of how they were written.

        Two target sets with one signature prune the same model identically: every channel
        group keeps the same number of channels (rates that round to one channel block,
        layers that share coupled channels) and every layer keeps the same number of weights
        of the same sparsity type. Given the same dense weights and seed, the masks, the
        compacted architecture and the training run are then the same, so a search can
        reuse a result instead of training the configuration again.
        """
        parts = []
        for gt in sorted(self.group_targets.values(), key=lambda g: g.group.root):
            sides = ("out" if gt.by_out else "") + ("in" if gt.by_in else "")
            parts.append(f"g:{gt.group.root}:{sides}:{self.group_keep_count(gt)}/{gt.group.size}")
        for name in sorted(self.layer_types):
            stype, rate = self.layer_types[name]
            shape = tuple(self.model.get_submodule(name).weight.shape)
            parts.append(f"l:{name}:{stype.name}:{stype.kept_weights(shape, rate)}")
        return "|".join(parts) or "dense"

    def _group_param_masks(self, gt: GroupTarget, keep: torch.Tensor, members: list[GroupMember],
                           side: str | None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m in members:
            mod = self.model.get_submodule(m.module)
            for pname in self._member_params(m, side):
                p = self.model.get_parameter(pname)
                if p.ndim == 1:
                    mask = _dim0_mask(p.shape, m, keep, p.device)
                else:
                    mask = _member_mask(mod, m, keep, tuple(p.shape), p.device)
                out[pname] = out[pname] & mask if pname in out else mask
        return out

    def masks(self, params: dict[str, torch.Tensor],
              keeps: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Support of the projection of ``params`` (param name -> bool mask) for the constrained parameters.

        ``keeps`` may give each group's kept channels when the caller has them already.
        """
        out: dict[str, torch.Tensor] = {}
        for gt in self.group_targets.values():
            keep = keeps[gt.group.index] if keeps is not None else self.group_keep(gt, params)
            for pname, mask in self._group_param_masks(gt, keep, gt.scored, None if gt.by_out else "in").items():
                out[pname] = out[pname] & mask if pname in out else mask
        for name, (stype, rate) in self.layer_types.items():
            pname = f"{name}.weight"
            w = params[pname] if pname in params else self._param(pname)
            base = out.get(pname)
            inner = stype.mask(w if base is None else w * base, rate)
            out[pname] = inner if base is None else base & inner
        return out

    def project(self, params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Z = Π(params): returns (projected parameters, masks) for every constrained parameter."""
        masks = self.masks(params)
        return {n: params[n] * masks[n] for n in masks if n in params}, masks

    # -- the hard prune -------------------------------------------------------
    @torch.no_grad()
    def hard_masks(self) -> dict[str, torch.Tensor]:
        """Masks for every parameter touched by the prune (param name -> bool mask).

        Computed from the model's current parameters. Beyond the constrained ones they
        cover biases and norm parameters of removed channels and the input slices of the
        layers that read them, so that the masked model computes exactly what the
        compacted model will.
        """
        current = {n: self._param(n) for n in self.constrained_params}
        self.kept_channels_ = {gi: self.group_keep(gt, current) for gi, gt in self.group_targets.items()}
        params = self.masks(current, self.kept_channels_)
        for gi, gt in self.group_targets.items():
            keep = self.kept_channels_[gi]
            for pname, mask in self._group_param_masks(gt, keep, gt.group.members, None).items():
                params[pname] = params[pname] & mask if pname in params else mask
        return params


def rounded_keep(n: int, rate: float, multiple: int, *, cells: int = 1) -> int:
    """Channels kept when pruning ``rate`` of ``n``, rounded to the nearest multiple of ``multiple``.

    For kernels that work on channel blocks (oneDNN's vector registers, tensor cores): a
    conv pays for every block it touches, so on this project's AVX-512 CPU a 3x3 conv with
    20 channels took 2.5x as long as one with 16, and 44 channels as long as 48
    (``benchmarks/results/channel_steps.md``). ``--channel-multiple auto`` picks the
    device's block (:func:`autoprune.device.channel_block`). Never below ``multiple``
    (nor below 1) and never above ``n``; ``multiple`` 1 gives
    :func:`~autoprune.sparsity.keep_count` exactly, and so does a block coarser than a
    quarter of the channels (32 channels in blocks of 16 would allow only 50% or 0%: the
    rate wins over the block).

    ``cells`` > 1 (a group through grouped convs, ``n`` a multiple of ``cells``): every
    cell keeps the same count, so the result is always a multiple of ``cells``, at least
    one channel per cell. It is rounded to a multiple of ``lcm(cells, multiple)`` where
    that is at most ``n / 4``, else of ``cells`` alone: balance is a must, the block size
    a preference (RegNetY's 208 channels in 26 groups: lcm(26, 8) = 104 would turn a 30%
    rate into 50%).
    """
    k = keep_count(n, rate)
    if cells > 1:
        if n % cells:
            raise ValueError(f"{n} channels cannot form {cells} cells of one size")
        unit = math.lcm(cells, multiple)
        multiple = unit if 4 * unit <= n else cells
    elif multiple <= 1 or 4 * multiple > n:
        return k
    return min(n, max(multiple, int(k / multiple + 0.5) * multiple))


def balanced_topk_mask(scores: torch.Tensor, k: int, cell_of: torch.Tensor | None,
                       cells: int) -> torch.Tensor:
    """The ``k`` best channels by ``scores``, the same number (``k / cells``) from every cell.

    This is the Euclidean projection onto "equal count per cell": the cost of removing a
    channel is its score, independently of the others, so the best choice is the top
    ``k / cells`` of each cell. One cell (``cell_of`` None) is plain :func:`topk_mask`.
    """
    if cell_of is None or cells <= 1:
        return topk_mask(scores, k)
    if k % cells:
        raise ValueError(f"cannot keep {k} channels evenly in {cells} cells")
    per_cell = k // cells
    cell_of = cell_of.to(scores.device)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    order = torch.argsort(cell_of, stable=True)  # channels of each cell together, in index order
    by_cell = scores[order].view(cells, -1)
    # topk_mask on each row: lower index wins ties, as for ungrouped channels
    rows = torch.stack([topk_mask(row, per_cell) for row in by_cell])
    keep[order] = rows.flatten()
    return keep


def _slice_norms_sq(mod: nn.Module, role: str, w: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each channel slice of ``w`` along the member's dimension."""
    w = w.detach().float()
    if role in (OUT, DEPTHWISE):
        return w.reshape(w.shape[0], -1).pow(2).sum(1)
    if isinstance(mod, nn.Conv2d) and mod.groups > 1:
        g = mod.groups
        o, ig = w.shape[0], w.shape[1]
        v = w.reshape(g, o // g, ig, -1).permute(0, 2, 1, 3).reshape(g * ig, -1)
        return v.pow(2).sum(1)
    return w.transpose(0, 1).reshape(w.shape[1], -1).pow(2).sum(1)


def _pruned_own_idxs(m: GroupMember, keep: torch.Tensor) -> torch.Tensor:
    gone = ~keep[m.root_idxs.to(keep.device)]
    return m.idxs.to(keep.device)[gone]


def _dim0_mask(shape: tuple[int, ...] | torch.Size, m: GroupMember, keep: torch.Tensor, device) -> torch.Tensor:  # noqa: ANN001
    mask = torch.ones(tuple(shape), dtype=torch.bool, device=device)
    mask[_pruned_own_idxs(m, keep).to(device)] = False
    return mask


def _member_mask(mod: nn.Module, m: GroupMember, keep: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:  # noqa: ANN001
    """Mask of ``mod``'s weight that removes the group's pruned channels on the member's side."""
    if m.role in (OUT, DEPTHWISE):
        return _dim0_mask(shape, m, keep, device)
    gone = _pruned_own_idxs(m, keep).to(device)
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    if isinstance(mod, nn.Conv2d) and mod.groups > 1:
        g = mod.groups
        o, ig = shape[0], shape[1]
        view = mask.view(g, o // g, ig, *shape[2:])
        view[gone // ig, :, gone % ig] = False
        return mask
    mask[:, gone] = False
    return mask
