"""Normalisations over channels (LayerNorm, GroupNorm): exact while masked, plain once compacted.

A BatchNorm normalises each channel on its own, so zeroing a channel and removing it
are the same. A LayerNorm over channels (ConvNeXt's ``LayerNorm2d``) or a GroupNorm
normalises a channel with the mean and variance of *other* channels: in a masked model
the zeroed channels would count in those statistics, and removing them would change the
function (measured: ConvNeXt-atto, filter 30%, outputs off by 0.16).

So while a model is masked, each such norm with pruned channels normalises over its
kept channels only (:func:`mask_statistics`, called by :func:`autoprune.admm.apply_masks`
for every hard prune): a forward hook recomputes its output from the kept channels, with
the norm's own weight, bias and eps, and writes zeros where the channels were pruned.
That is exactly what the compacted norm computes: a plain LayerNorm over the kept
channels, or a GroupNorm with the same groups over the kept channels, once
:func:`unmask_statistics` has removed the hooks (compaction does, before it removes the
channels). The kept channels live in a non-persistent buffer, so state dicts are those
of the plain model.

A GroupNorm keeps the same number of channels in each of its groups (the projection
balances them, as for grouped convolutions: :mod:`autoprune.groups`), so that its groups
stay groups after compaction. A GroupNorm with one channel per group normalises each
channel alone, like a BatchNorm, and needs neither.

Only the norms whose computation autoprune knows are made exact (:data:`KNOWN_NORMS`:
torch's, timm's and torchvision's LayerNorm and GroupNorm classes); a channel group
through any other normalisation over channels is not pruned (:func:`why_not_exact`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KNOWN_NORMS", "NormKind", "channel_norm", "groupnorm_cells", "mask_statistics", "plain_statistics",
           "unmask_statistics", "why_not_exact"]

KEPT = "autoprune_kept_channels"  # the buffer holding a masked norm's kept channels (bool, non-persistent)


@dataclass(frozen=True)
class NormKind:
    """How a norm class normalises: ``layer`` (over its channels) or ``group`` (over groups of
    them), which dimension of its input holds the channels (1: NCHW, -1: channels last), and
    whether it then applies its own ``drop`` and ``act`` modules (timm's ``*Act`` norms)."""

    kind: str
    channel_dim: int
    then_act: bool = False


#: The normalisations over channels autoprune masks exactly, by class (module.qualname):
#: their forward is known to be ``F.layer_norm`` over the channel dimension or ``F.group_norm``.
KNOWN_NORMS: dict[str, NormKind] = {
    "torch.nn.modules.normalization.LayerNorm": NormKind("layer", -1),
    "torch.nn.modules.normalization.GroupNorm": NormKind("group", 1),
    "timm.layers.norm.LayerNorm": NormKind("layer", -1),
    "timm.layers.norm.LayerNormFp32": NormKind("layer", -1),
    "timm.layers.norm.LayerNorm2d": NormKind("layer", 1),
    "timm.layers.norm.LayerNorm2dFp32": NormKind("layer", 1),
    "timm.layers.norm.GroupNorm": NormKind("group", 1),
    "timm.layers.norm.GroupNorm1": NormKind("group", 1),
    "timm.layers.norm_act.LayerNormAct": NormKind("layer", -1, then_act=True),
    "timm.layers.norm_act.LayerNormActFp32": NormKind("layer", -1, then_act=True),
    "timm.layers.norm_act.LayerNormAct2d": NormKind("layer", 1, then_act=True),
    "timm.layers.norm_act.LayerNormAct2dFp32": NormKind("layer", 1, then_act=True),
    "timm.layers.norm_act.GroupNormAct": NormKind("group", 1, then_act=True),
    "timm.layers.norm_act.GroupNorm1Act": NormKind("group", 1, then_act=True),
    "torchvision.models.convnext.LayerNorm2d": NormKind("layer", 1),
}


def _qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def channel_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a LayerNorm or GroupNorm that mixes channels: one whose statistics
    span more than one channel (a GroupNorm with one channel per group does not)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels // module.num_groups > 1
    return isinstance(module, nn.LayerNorm)


def why_not_exact(module: nn.Module) -> str | None:
    """Why pruning the channels of this norm over channels could not be exact (None: it can be)."""
    if not channel_norm(module):
        return None
    kind = KNOWN_NORMS.get(_qualname(module))
    if kind is None:
        return f"a normalisation over channels ({type(module).__name__}) whose computation autoprune does not know"
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return f"a LayerNorm over {tuple(module.normalized_shape)}, not over channels alone"
        if module.weight is None:
            return "a LayerNorm over channels without affine parameters"
    elif not module.affine:
        return "a GroupNorm without affine parameters"
    return None


def groupnorm_cells(module: nn.Module) -> int:
    """The groups a GroupNorm's channels must stay balanced over (1: no constraint)."""
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1 and module.num_channels // module.num_groups > 1:
        return module.num_groups
    return 1


# -- while masked ---------------------------------------------------------------------------


def _exact_statistics(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the norm's output with statistics over its kept channels only."""
    kept = getattr(module, KEPT, None)
    if kept is None:
        return output
    x = args[0]
    kind = KNOWN_NORMS[_qualname(module)]
    dim = kind.channel_dim % x.ndim
    idx = kept.nonzero().flatten()
    xk = x.index_select(dim, idx)
    weight = module.weight.index_select(0, idx) if module.weight is not None else None
    bias = module.bias.index_select(0, idx) if module.bias is not None else None
    if kind.kind == "layer":
        yk = F.layer_norm(xk.movedim(dim, -1), (idx.numel(),), weight, bias, module.eps).movedim(-1, dim)
    else:
        yk = F.group_norm(xk, module.num_groups, weight, bias, module.eps)
    out = torch.zeros_like(x).index_copy(dim, idx, yk.to(x.dtype))
    return module.act(module.drop(out)) if kind.then_act else out


def _our_hooks(module: nn.Module) -> list[int]:
    return [k for k, fn in module._forward_hooks.items() if fn is _exact_statistics]  # noqa: SLF001


def _install(module: nn.Module, kept: torch.Tensor) -> None:
    if not _our_hooks(module):
        module.register_forward_hook(_exact_statistics)
    module.register_buffer(KEPT, kept.to(module.weight.device, torch.bool).clone(), persistent=False)


def _uninstall(module: nn.Module) -> None:
    for key in _our_hooks(module):
        del module._forward_hooks[key]  # noqa: SLF001
    if KEPT in module._buffers:  # noqa: SLF001
        del module._buffers[KEPT]  # noqa: SLF001


@torch.no_grad()
def mask_statistics(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Make every norm over channels with pruned channels (its weight's mask in ``masks``)
    normalise over its kept channels only; a norm whose mask keeps everything is made plain
    again. Norms whose weight is not in ``masks`` are left as they are.

    Returns:
        The names of the norms that now normalise over their kept channels.
    """
    masked = []
    for name, module in model.named_modules():
        if not channel_norm(module) or why_not_exact(module) is not None:
            continue
        mask = masks.get(f"{name}.weight" if name else "weight")
        if mask is None:
            continue
        kept = mask.reshape(-1).bool()
        if bool(kept.all()):
            _uninstall(module)
            continue
        if groupnorm_cells(module) > 1:
            per_group = kept.view(module.num_groups, -1).sum(1)
            if bool((per_group != per_group[0]).any()):
                raise RuntimeError(f"GroupNorm '{name}': the kept channels leave its groups unbalanced "
                                   f"({per_group.tolist()}); the projection should have balanced them")
        _install(module, kept)
        masked.append(name)
    return masked


def unmask_statistics(model: nn.Module) -> list[str]:
    """Remove what :func:`mask_statistics` installed (in place); returns the names of the norms."""
    names = []
    for name, module in model.named_modules():
        if _our_hooks(module) or KEPT in module._buffers:  # noqa: SLF001
            _uninstall(module)
            names.append(name)
    return names


@contextlib.contextmanager
def plain_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, the masked norms of ``model`` run their plain forward (for tracing the
    model's channel dependencies, which follow the norm modules' own operations)."""
    saved: list[tuple[nn.Module, dict]] = []
    for module in model.modules():
        keys = _our_hooks(module)
        if keys:
            saved.append((module, {k: module._forward_hooks.pop(k) for k in keys}))  # noqa: SLF001
    try:
        yield
    finally:
        for module, hooks in saved:
            module._forward_hooks.update(hooks)  # noqa: SLF001
