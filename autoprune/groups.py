"""Which channels are coupled: a thin, typed view over Torch-Pruning's dependency graph.

Removing output channel ``j`` of a conv also removes input channel ``j`` of every layer
that reads it, the matching BatchNorm entries, and, through residual adds, depthwise
convs and concatenations, channels of *other* producers. Torch-Pruning's
``DependencyGraph`` traces the model and groups these couplings; here each group
becomes a :class:`ChannelGroup` whose members carry their own channel indices and the
root channel each one maps to (a flatten→linear boundary maps one channel to H·W
features, a concatenation shifts indices).

ADMM projects a coupled group as one unit, and compaction removes exactly the group's
channels, so the two agree by construction.

Two kinds of coupling need more than Torch-Pruning's groups:

* **Grouped convolutions** (ResNeXt, RegNet). A conv with ``groups=G`` can only lose
  channels so that each of its G groups keeps the same number. A channel group that
  passes through grouped convs therefore carries *cells*: the common refinement of those
  convs' groups, all of one size. The projection keeps the same count in every cell
  (see :attr:`ChannelGroup.cells`), so every grouped conv stays balanced.
* **Channel permutations** (ShuffleNet's ``channel_shuffle``). Torch-Pruning 1.6 cannot
  trace torchvision's shuffle (a view/transpose/view chain; its reshape inference divides
  by zero) nor infer ``chunk`` sizes under torch 2.x. Known blocks are traced through an
  equivalent forward (:data:`TRACE_ADAPTERS`) that uses ``F.channel_shuffle`` and channel
  slices, which Torch-Pruning does handle; groups that pass through a permutation are
  then marked not prunable, while the channels inside a branch stay prunable.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import UserError
from autoprune.norms import channel_norm, groupnorm_cells, plain_statistics, why_not_exact

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)

# member roles
OUT = "out"  # conv / linear output channels: weight dim 0 (and bias)
IN = "in"  # conv / linear input channels: weight dim 1
DEPTHWISE = "depthwise"  # depthwise conv: its channels are both read and written (weight dim 0)
NORM = "norm"  # BatchNorm-like per-channel parameters (dim 0)


@dataclass(frozen=True)
class GroupMember:
    """One module's share of a channel group."""

    module: str
    role: str
    idxs: torch.Tensor  # the module's own channel indices (long)
    root_idxs: torch.Tensor  # for each entry of idxs, the group's root channel


@dataclass
class ChannelGroup:
    """A set of channels that must be kept or removed together across modules."""

    index: int
    root: str
    size: int
    members: list[GroupMember]
    prunable: bool = True
    reason: str = ""
    # Balance constraint of grouped convs: the root channels fall into ``cells`` cells of
    # equal size (``cell_of[r]`` is root channel r's cell) and every cell must keep the same
    # number of channels. One cell (``cell_of`` None) means no constraint.
    cells: int = 1
    cell_of: torch.Tensor | None = None
    grouped: list[str] = field(default_factory=list)  # the grouped convs that set the cells

    @property
    def producers(self) -> list[GroupMember]:
        """Conv/linear members whose *outputs* are these channels (incl. depthwise)."""
        return [m for m in self.members if m.role in (OUT, DEPTHWISE)]

    @property
    def consumers(self) -> list[GroupMember]:
        """Conv/linear members that *read* these channels (incl. depthwise)."""
        return [m for m in self.members if m.role in (IN, DEPTHWISE)]

    def layer_names(self, role: str | None = None) -> list[str]:
        mems = self.members if role is None else [m for m in self.members if m.role == role]
        return sorted({m.module for m in mems if m.role != NORM})


@dataclass
class LayerInfo:
    """A prunable layer (conv or linear) as ``autoprune layers`` lists it."""

    name: str
    kind: str  # "conv" | "linear"
    weight_shape: tuple[int, ...]
    macs: int  # multiply-accumulates per sample of the dense layer
    out_group: int | None = None
    in_group: int | None = None
    coupled: list[str] = field(default_factory=list)  # other producers of the same output channels
    is_output: bool = False
    reads_input: bool = False


def _trace(model: nn.Module, example_input: torch.Tensor,
           names: dict[nn.Module, str]) -> tuple[Any, list[str], dict[str, int]]:
    """Torch-Pruning's dependency graph of ``model``, its prunable layers in call order and
    each one's MACs on ``example_input`` (the model is left in the mode it was in)."""
    order: list[str] = []
    macs: dict[str, int] = {}

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        n = names[mod]
        if n not in macs:
            order.append(n)
            positions = out[0].numel() // out.shape[1] if isinstance(mod, nn.Conv2d) else out[0].numel() // out.shape[-1]
            macs[n] = int(positions * mod.weight.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(example_input)
        _check_adapters(model, example_input, reference)
        dg = trace_dependencies(model, example_input)
    except UserError:
        raise
    except Exception as exc:  # a model tp cannot trace
        raise UserError(f"cannot trace the model's channel dependencies: {type(exc).__name__}: {exc}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return dg, order, macs


class ChannelGraph:
    """The prunable layers of a model and their coupled channel groups.

    Args:
        model: The model (not modified; it is traced once in eval mode).
        example_input: A batch the model accepts, e.g. ``torch.zeros(1, C, H, W)``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model = model
        names = {mod: n for n, mod in model.named_modules()}
        self.layers: dict[str, LayerInfo] = {}
        dg, order, macs = _trace(model, example_input, names)
        self._dg = dg
        for n in order:
            mod = model.get_submodule(n)
            self.layers[n] = LayerInfo(
                name=n,
                kind="conv" if isinstance(mod, nn.Conv2d) else "linear",
                weight_shape=tuple(mod.weight.shape),
                macs=macs[n],
            )
        self.output_layer = order[-1] if order else None
        if self.output_layer:
            self.layers[self.output_layer].is_output = True

        self.groups: list[ChannelGroup] = []
        for grp in dg.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
            members, rearranging = _group_members(grp, names, dg)
            root_mod = grp[0].dep.target.module
            rerooted = _generator_root(members, model, _channels(root_mod))
            if rerooted is not None:  # see _generator_root: map the channels onto their generator instead
                every = list(range(_channels(rerooted)))
                regrouped = dg.get_pruning_group(rerooted, out_channels_fn(rerooted), idxs=every)
                again, rearranging_again = _group_members(regrouped, names, dg)
                if _coverage(again) == _coverage(members):
                    members, rearranging, root_mod = again, rearranging_again, rerooted
            g = ChannelGroup(index=len(self.groups), root=names.get(root_mod, "?"), size=_channels(root_mod),
                             members=members)
            why = self._not_prunable(g, rearranging, root_mod)
            if why:
                g.prunable, g.reason = False, why
            self.groups.append(g)
            for m in members:
                if m.module not in self.layers:
                    continue
                if m.role in (OUT, DEPTHWISE):
                    self.layers[m.module].out_group = g.index
                if m.role in (IN, DEPTHWISE):
                    self.layers[m.module].in_group = g.index
        for info in self.layers.values():
            if info.in_group is None:
                info.reads_input = True
            if info.out_group is not None:
                grp_ = self.groups[info.out_group]
                info.coupled = [n for n in grp_.layer_names() if n != info.name and n in self.layers
                                and any(m.module == n and m.role in (OUT, DEPTHWISE) for m in grp_.members)]

    def _not_prunable(self, g: ChannelGroup, rearranging: set[str] | list[str], root_mod: nn.Module) -> str | None:
        """Why the group's channels cannot be pruned (None: they can; its cells are then set)."""
        model, members = self.model, g.members
        if any(m.role == OUT and m.module == self.output_layer for m in members):
            return f"it holds the outputs of '{self.output_layer}', the model's output layer"
        if _may_tie(members) and (tied := _tied_channels(self._dg, root_mod)):
            return (f"its channels {tied} are tied to one another (a channel computed from another channel of the "
                    "same group), which autoprune cannot map one to one")
        unknown = [m.module for m in members if m.role == NORM and not _is_simple_norm(model.get_submodule(m.module))]
        inexact = [(m.module, why) for m in members if m.role == NORM
                   and (why := why_not_exact(model.get_submodule(m.module)))]
        inexact += [(m.module, "a convolution that standardises its weights over its input channels, so "
                     "zeroed inputs would change the weights of the kept ones") for m in members
                    if m.role == IN and _standardises_weights(model.get_submodule(m.module))]
        if inexact:
            return f"it passes through '{inexact[0][0]}', {inexact[0][1]}"
        if unknown:
            return f"it passes through '{unknown[0]}', a module autoprune cannot mask"
        if rearranging:
            return (f"it passes through {' and '.join(sorted(rearranging))}; pruning through them would change "
                    "which channels meet after them")
        return _set_cells(g, model) or None

    def out_group(self, layer: str) -> ChannelGroup | None:
        """The group holding this layer's output channels."""
        idx = self.layers[layer].out_group
        return None if idx is None else self.groups[idx]

    def in_group(self, layer: str) -> ChannelGroup | None:
        """The group holding this layer's input channels (None when it reads the model input)."""
        idx = self.layers[layer].in_group
        return None if idx is None else self.groups[idx]

    @property
    def dependency_graph(self):  # noqa: ANN201 - torch_pruning type
        """The underlying Torch-Pruning ``DependencyGraph`` (for compaction)."""
        return self._dg


def _group_members(grp, names: dict[nn.Module, str], dg) -> tuple[list[GroupMember], list[str]]:  # noqa: ANN001
    """The members of a Torch-Pruning group with parameters, and the channel-moving ops it passes through."""
    members = []
    rearranging: list[str] = []  # ops in the group that move channels around
    for i, (dep, idxs) in enumerate(grp):
        mod = dep.target.module
        op = _rearranging_op(dep.target)
        if op and op not in rearranging:
            rearranging.append(op)
        if not isinstance(mod, nn.Module) or mod not in names:
            continue  # functional ops (add, cat, flatten) carry no parameters
        role = _role_of(mod, dep.handler, dg)
        if role is None:
            continue
        members.append(
            GroupMember(
                module=names[mod],
                role=role,
                idxs=torch.as_tensor([int(j) for j in idxs], dtype=torch.long),
                root_idxs=torch.as_tensor([int(j) for j in grp[i].root_idxs], dtype=torch.long),
            )
        )
    return members, rearranging


def _coverage(members: list[GroupMember]) -> set[tuple[str, str, int]]:
    return {(m.module, m.role, int(j)) for m in members for j in m.idxs}


def _generator_root(members: list[GroupMember], model: nn.Module, size: int) -> nn.Module | None:
    """The plain (not depthwise) conv or linear of the group with the fewest output channels,
    where it has fewer than the group's root: the group's channels are then computed from
    its channels, and must be mapped onto them.

    GhostNet's module concatenates a conv's output ``x1`` with a depthwise conv of it:
    ``cat([x1, dw(x1)])``. Rooted at a later depthwise conv over the 2n concatenated
    channels, Torch-Pruning maps channel ``i`` and ``n + i`` to different root channels,
    though removing one removes the other (they are computed from the same channel of
    ``x1``), so a projection that kept one and not the other would mask what compaction
    cannot remove. Rooted at the conv that makes ``x1``, each root channel carries both.
    """
    best: tuple[int, nn.Module] | None = None
    for m in members:
        mod = model.get_submodule(m.module)
        if m.role != OUT or not isinstance(mod, PRUNABLE_TYPES):
            continue
        n = _channels(mod)
        if n < size and (best is None or n < best[0]):
            best = (n, mod)
    return None if best is None else best[1]


def _may_tie(members: list[GroupMember]) -> bool:
    """Whether a group's channels can be computed from one another: only through a layer
    that maps a channel to a channel (a depthwise conv) or where one of a module's channels
    stands for several of the group's (a concatenation of a tensor with itself)."""
    return any(m.role == DEPTHWISE or m.root_idxs.unique().numel() < m.root_idxs.numel() for m in members)


def _tied_channels(dg, root: nn.Module) -> list[int] | None:  # noqa: ANN001
    """Root channels that Torch-Pruning removes together with root channel 0 (None: only it).

    Probes one channel: a group whose channels are computed from one another (and not
    re-rooted by :func:`_generator_root`) shows it there.
    """
    group = dg.get_pruning_group(root, out_channels_fn(root), idxs=[0])
    closure = sorted({int(j) for j in group[0][1]})
    return closure if len(closure) > 1 else None


def out_channels_fn(module: nn.Module):  # noqa: ANN202
    """Torch-Pruning's function that removes ``module``'s output channels."""
    import torch_pruning as tp

    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels:
        return tp.prune_depthwise_conv_out_channels
    return tp.prune_conv_out_channels


def _shufflenet_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ShuffleNet V2 ``InvertedResidual.forward`` in ops Torch-Pruning traces.

    ``x.chunk(2)`` becomes two channel slices (``chunk``'s sizes: the first part takes the
    odd channel), whose bounds Torch-Pruning reads from the autograd graph, where it
    guesses ``chunk``'s sizes wrong under torch 2.x (its split-size attributes were
    renamed); the view/transpose/view shuffle becomes ``F.channel_shuffle``, the same
    permutation as one op.
    """
    if self.stride == 1:
        half = (x.shape[1] + 1) // 2
        out = torch.cat((x[:, :half], self.branch2(x[:, half:])), dim=1)
    else:
        out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
    return F.channel_shuffle(out, 2)


def _torchvision_class(module: str, name: str) -> type | None:
    mod = sys.modules.get(module)  # only models built from it can contain its blocks
    return getattr(mod, name, None)


# (block class, if its module is loaded; the equivalent forward used while tracing)
TRACE_ADAPTERS: list[tuple[Callable[[], type | None], Callable[..., torch.Tensor]]] = [
    (lambda: _torchvision_class("torchvision.models.shufflenetv2", "InvertedResidual"),
     _shufflenet_block_forward),
]


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, known blocks of ``model`` run their traceable forward (:data:`TRACE_ADAPTERS`).

    Only instances of exactly the adapted classes are changed, by an instance attribute
    that is removed on exit; the model's code and other models are untouched. Yields
    the adapted blocks.
    """
    patched: list[nn.Module] = []
    try:
        for cls_of, forward in TRACE_ADAPTERS:
            cls = cls_of()
            if cls is None:
                continue
            for m in model.modules():
                if type(m) is cls and "forward" not in m.__dict__:
                    m.forward = types.MethodType(forward, m)
                    patched.append(m)
        yield patched
    finally:
        for m in patched:
            del m.forward


def trace_dependencies(model: nn.Module, example_input: torch.Tensor):  # noqa: ANN201 - torch_pruning type
    """Torch-Pruning's ``DependencyGraph`` of ``model``, traced with the adapters of :func:`traceable`."""
    import torch_pruning as tp

    with traceable(model), plain_statistics(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _check_adapters(model: nn.Module, example_input: torch.Tensor, reference: object) -> None:
    """Refuse to trace through an adapter that no longer computes what the block computes."""
    with traceable(model) as adapted:
        if not adapted:
            return
        kinds = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in adapted})
        with torch.no_grad():
            out = model(example_input)
    same = (isinstance(out, torch.Tensor) and isinstance(reference, torch.Tensor) and out.shape == reference.shape
            and torch.allclose(out, reference, rtol=1e-5, atol=1e-6))
    if same:
        return
    raise UserError(f"cannot trace the model's channel dependencies: autoprune traces {', '.join(kinds)} blocks "
                    "through an equivalent forward, which no longer computes what they compute (a newer "
                    "torchvision?); please report this.")


def _rearranging_op(node) -> str | None:  # noqa: ANN001 - torch_pruning Node
    """A description of ``node`` if it is an op that moves channels to other positions.

    Splits and slices along the channel dimension count too: their sizes are fixed in the
    model's code (``x.chunk(2, 1)``, ``x[:, :64]``), so after pruning they would cut the
    channels in the wrong places.
    """
    fn = getattr(node, "grad_fn", None)
    name = fn.name() if fn is not None and hasattr(fn, "name") else ""
    if name.startswith("ChannelShuffleBackward"):
        return "a channel shuffle"
    if name.startswith(("PixelShuffleBackward", "PixelUnshuffleBackward")):
        return "a pixel (un)shuffle"
    if name.startswith(("Split", "SliceBackward")) and getattr(fn, "_saved_dim", None) == 1:
        return "a split of its channels (chunk, split or x[:, a:b], with sizes fixed in the code)"
    return None


def _set_cells(g: ChannelGroup, model: nn.Module) -> str | None:
    """Set the group's balance cells from the grouped convs it passes through (None), or say why it cannot be.

    A grouped conv splits its own channels into ``groups`` contiguous parts; mapped to the
    group's root channels, each such conv labels every root channel with its part. The
    cells are the distinct label combinations over all the group's grouped convs; when
    they are all of one size, keeping the same count in every cell keeps every part of
    every grouped conv the same size.
    """
    labels: list[torch.Tensor] = []
    grouped: list[str] = []
    described: list[str] = []
    for m in g.members:
        mod = model.get_submodule(m.module)
        if m.role in (OUT, IN) and is_grouped_conv(mod):
            n, parts = (mod.out_channels if m.role == OUT else mod.in_channels), mod.groups
            what = f"{'output' if m.role == OUT else 'input'} channels of the grouped convolution '{m.module}'"
        elif m.role == NORM and groupnorm_cells(mod) > 1:
            n, parts = mod.num_channels, mod.num_groups
            what = f"channels of the GroupNorm '{m.module}'"
        else:
            continue
        if sorted(m.idxs.tolist()) != list(range(n)) or int(m.root_idxs.max()) >= g.size:
            return (f"only part of the {what} are in it "
                    "(the rest belong to other channel groups, so its groups cannot be kept balanced)")
        part = m.idxs // (n // parts)
        label = torch.full((g.size,), -1, dtype=torch.long)
        label[m.root_idxs] = part
        if (label < 0).any() or m.root_idxs.unique().numel() != n:
            return (f"its channels do not map one to one onto the {what}, so its groups cannot be kept balanced")
        labels.append(label)
        grouped.append(m.module)
        described.append(f"'{m.module}' ({parts} groups)")
    if not labels:
        return None
    _, cell_of = torch.unique(torch.stack(labels, 1), dim=0, return_inverse=True)
    sizes = torch.bincount(cell_of)
    if bool((sizes != sizes[0]).any()):
        return (f"the grouped convolutions and GroupNorms {', '.join(described)} divide its {g.size} channels into parts of "
                "unequal size, so no kept count balances them all")
    g.cells, g.cell_of, g.grouped = int(sizes.numel()), cell_of, sorted(set(grouped))
    return None


def _channels(mod: nn.Module) -> int:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    return int(getattr(mod, "num_features", 0))


def is_grouped_conv(mod: nn.Module) -> bool:
    """A conv with groups that is not depthwise (ResNeXt, RegNet): its groups must stay balanced."""
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels)


def _standardises_weights(mod: nn.Module) -> bool:
    """A weight-standardised conv (timm's ``StdConv2d``, ``ScaledStdConv2d``: BiT, NFNets)."""
    return isinstance(mod, nn.Conv2d) and type(mod).__module__ == "timm.layers.std_conv"


def _is_simple_norm(mod: nn.Module) -> bool:
    """A per-channel module autoprune masks (BatchNorm, InstanceNorm, PReLU), or a norm over
    channels it masks exactly (:mod:`autoprune.norms`)."""
    return isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.InstanceNorm2d))


def _role_of(mod: nn.Module, handler, dg) -> str | None:  # noqa: ANN001
    if isinstance(mod, nn.Conv2d):
        if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
            return DEPTHWISE
        return OUT if dg.is_out_channel_pruning_fn(handler) else IN
    if isinstance(mod, nn.Linear):
        return OUT if dg.is_out_channel_pruning_fn(handler) else IN
    if (any(True for _ in mod.parameters(recurse=False)) or isinstance(mod, nn.modules.batchnorm._BatchNorm)
            or channel_norm(mod)):  # a norm over channels without parameters still mixes them
        return NORM
    return None
