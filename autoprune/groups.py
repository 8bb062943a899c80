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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.errors import UserError

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


class ChannelGraph:
    """The prunable layers of a model and their coupled channel groups.

    Args:
        model: The model (not modified; it is traced once in eval mode).
        example_input: A batch the model accepts, e.g. ``torch.zeros(1, C, H, W)``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        import torch_pruning as tp

        self.model = model
        names = {mod: n for n, mod in model.named_modules()}
        self.layers: dict[str, LayerInfo] = {}
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
                model(example_input)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        except Exception as exc:  # a model tp cannot trace
            raise UserError(f"cannot trace the model's channel dependencies: {type(exc).__name__}: {exc}") from None
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
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
            members = []
            for i, (dep, idxs) in enumerate(grp):
                mod = dep.target.module
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
            root_mod = grp[0].dep.target.module
            root = names.get(root_mod, "?")
            size = _channels(root_mod)
            g = ChannelGroup(index=len(self.groups), root=root, size=size, members=members)
            if any(m.role == OUT and m.module == self.output_layer for m in members):
                g.prunable, g.reason = False, f"it holds the outputs of '{self.output_layer}', the model's output layer"
            else:
                unknown = [m.module for m in members if m.role == NORM and not _is_simple_norm(model.get_submodule(m.module))]
                grouped = [m.module for m in members if _is_grouped(model.get_submodule(m.module))]
                if unknown:
                    g.prunable, g.reason = False, f"it passes through '{unknown[0]}', a module autoprune cannot mask"
                elif grouped:
                    g.prunable, g.reason = False, (
                        f"it feeds the grouped convolution '{grouped[0]}' (removing single channels would unbalance "
                        "its groups; not supported yet)")
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


def _channels(mod: nn.Module) -> int:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    return int(getattr(mod, "num_features", 0))


def _is_grouped(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels)


def _is_simple_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.InstanceNorm2d))


def _role_of(mod: nn.Module, handler, dg) -> str | None:  # noqa: ANN001
    if isinstance(mod, nn.Conv2d):
        if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels:
            return DEPTHWISE
        return OUT if dg.is_out_channel_pruning_fn(handler) else IN
    if isinstance(mod, nn.Linear):
        return OUT if dg.is_out_channel_pruning_fn(handler) else IN
    if any(True for _ in mod.parameters(recurse=False)) or isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return NORM
    return None
