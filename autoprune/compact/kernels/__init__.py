"""Inference kernels that run a *masked* conv / linear faster, and the list of correct forms.

A pruned layer is still a dense layer whose weight has zeros in it. Which way of running
it is fastest depends on the sparsity, the layer's shape, the device and the dtype, so
:func:`candidate_forms` lists every form that computes exactly what the masked dense layer
computes, and the caller times them on the target device and keeps the fastest:

* ``dense``: a copy of the layer with the mask applied to its weight (always offered).
* ``shape-gemm`` (:class:`ShapeSparseConv2d`): for convs whose mask removes whole im2col
  columns ``(c, kh, kw)``. Only the kept rows of the unfolded input are gathered, straight
  from the (padded) input through one strided view, and one GEMM with the compacted
  weight does the rest.
* ``csr`` (:class:`CSRLinear`, :class:`CSRConv2d`): irregular masks with at least half the
  weights zero, CPU float32 (MKL sparse x dense).
* ``semi-structured`` (:class:`SemiStructuredLinear`, :class:`SemiStructuredConv2d`): 2:4
  masks on CUDA float16 / bfloat16 linears and 1x1 convs (sparse tensor cores).

Modules: :mod:`~autoprune.compact.kernels.masks` (what a mask allows),
:mod:`~autoprune.compact.kernels.base` (shared pieces and :class:`GatherConv2d`, the base of
the two gather convs), :mod:`~autoprune.compact.kernels.shape_gemm`,
:mod:`~autoprune.compact.kernels.csr`, :mod:`~autoprune.compact.kernels.semi_structured`
(one per form) and :mod:`~autoprune.compact.kernels.forms` (:func:`candidate_forms`).
Every kernel class has ``to_dense()``: the plain masked ``nn.Linear`` / ``nn.Conv2d`` it
computes, for exporters and runtimes that cannot take the sparse form.
"""

from autoprune.compact.kernels.base import GatherConv2d
from autoprune.compact.kernels.csr import CSRConv2d, CSRLinear, CSRWeight
from autoprune.compact.kernels.forms import CSR_MIN_SPARSITY, candidate_forms
from autoprune.compact.kernels.masks import column_structure, is_semi_structured
from autoprune.compact.kernels.semi_structured import (
    SEMI_STRUCTURED_DTYPES,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    SemiStructuredUnsupported,
)
from autoprune.compact.kernels.shape_gemm import ShapeSparseConv2d

# the name autoprune.deploy imports today; CSRWeight is the public one (drop this with that import)
_CSRWeight = CSRWeight

__all__ = [
    "CSRConv2d",
    "CSRLinear",
    "CSRWeight",
    "CSR_MIN_SPARSITY",
    "GatherConv2d",
    "SEMI_STRUCTURED_DTYPES",
    "SemiStructuredConv2d",
    "SemiStructuredLinear",
    "SemiStructuredUnsupported",
    "ShapeSparseConv2d",
    "candidate_forms",
    "column_structure",
    "is_semi_structured",
]
