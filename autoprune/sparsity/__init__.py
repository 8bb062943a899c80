"""Sparsity types: each one owns its groups, its Euclidean projection and its mask.

ADMM's Z-step calls :meth:`SparsityType.project`; hard pruning and compaction use
:meth:`SparsityType.mask`, so what ADMM drives toward is exactly what gets removed.

Example:
    >>> import torch
    >>> from autoprune.sparsity import get_sparsity
    >>> w = torch.randn(8, 4, 3, 3)
    >>> m = get_sparsity("filter").mask(w, 0.5)
    >>> int(m.any(dim=(1, 2, 3)).sum())
    4

Registered names: ``irregular``, ``filter``, ``channel``, ``shape``,
``filter+shape`` and ``n:m`` (asked for as a pattern, e.g. ``"2:4"``). A new type is
one module with a class decorated by :func:`register_sparsity`, imported below.
"""

from __future__ import annotations

from autoprune.sparsity._base import (
    GroupSparsity,
    SparsityType,
    describe_sparsity_types,
    gemm_view,
    get_sparsity,
    keep_count,
    list_sparsity_types,
    register_sparsity,
    topk_mask,
    unregister_sparsity,
)

# Import order is registry order.
from autoprune.sparsity._irregular import IrregularSparsity  # isort: skip
from autoprune.sparsity._filter import FilterSparsity  # isort: skip
from autoprune.sparsity._channel import ChannelSparsity  # isort: skip
from autoprune.sparsity._shape import ShapeSparsity  # isort: skip
from autoprune.sparsity._filter_shape import FilterShapeSparsity  # isort: skip
from autoprune.sparsity._nm import NMSparsity  # isort: skip

__all__ = [
    "ChannelSparsity",
    "FilterShapeSparsity",
    "FilterSparsity",
    "GroupSparsity",
    "IrregularSparsity",
    "NMSparsity",
    "ShapeSparsity",
    "SparsityType",
    "describe_sparsity_types",
    "gemm_view",
    "get_sparsity",
    "keep_count",
    "list_sparsity_types",
    "register_sparsity",
    "topk_mask",
    "unregister_sparsity",
]
