"""Counts beside the latency: parameters, MACs and achieved sparsity of (masked) models.

MACs are the multiply-accumulates of conv and linear layers per sample. For a masked
model the *effective* count skips zero weights (what a kernel that exploits the
sparsity would do); the dense count is given beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from autoprune.groups import ChannelGraph


@dataclass(frozen=True)
class LayerStats:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    type: str  # sparsity type or "dense"
    rate: float | None  # the asked rate
    sparsity: float  # achieved fraction of zero weights
    macs_dense: int
    macs: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        return d


def layer_stats(model: nn.Module, graph: ChannelGraph, targets: dict | None = None) -> list[LayerStats]:
    """Per-layer achieved sparsity and MACs of ``model`` (its zeros are what counts)."""
    targets = targets or {}
    out = []
    for name, info in graph.layers.items():
        w = model.get_submodule(name).weight.detach()
        nnz = int(torch.count_nonzero(w))
        tgt = targets.get(name)
        out.append(
            LayerStats(
                name=name,
                kind=info.kind,
                weight_shape=tuple(w.shape),
                type=tgt.type if tgt else "dense",
                rate=tgt.rate if tgt else None,
                sparsity=1.0 - nnz / w.numel(),
                macs_dense=info.macs,
                macs=int(round(info.macs * nnz / w.numel())),
            )
        )
    return out


def model_counts(model: nn.Module, stats: list[LayerStats]) -> dict[str, float]:
    """Totals: parameters (all, and non-zero) and MACs (dense and effective)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    macs_dense = sum(s.macs_dense for s in stats)
    macs = sum(s.macs for s in stats)
    return {
        "params": params,
        "params_nonzero": nonzero,
        "macs_dense": macs_dense,
        "macs": macs,
        "mac_reduction": macs_dense / max(macs, 1),
    }
