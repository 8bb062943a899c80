"""The list of correct forms of a masked layer, for the caller to time on the device.

Every form computes what the masked dense layer computes (up to floating-point summation
order); which is fastest depends on the sparsity, the layer's shape, the device and the
dtype, so measurement decides (:func:`autoprune.compact.compact_model`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from autoprune.compact.kernels.base import why_not_gather_conv
from autoprune.compact.kernels.csr import CSRConv2d, CSRLinear
from autoprune.compact.kernels.masks import check_mask, column_structure, is_semi_structured
from autoprune.compact.kernels.semi_structured import (
    SEMI_STRUCTURED_DTYPES,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    SemiStructuredUnsupported,
    semi_structured_conv_ok,
)
from autoprune.compact.kernels.shape_gemm import ShapeSparseConv2d

#: Least fraction of zero weights at which a CSR form is offered.
CSR_MIN_SPARSITY = 0.5


def _finish(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    module = module.to(device=device, dtype=dtype)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def candidate_forms(
    module: nn.Module, weight_mask: Tensor, *, device: torch.device, dtype: torch.dtype
) -> dict[str, nn.Module]:
    """All correct forms of a masked layer for this device and dtype.

    Every form computes what ``module`` computes with ``weight_mask`` applied to its
    weight (up to floating-point summation order), so the caller can time them on the
    device and keep the fastest.

    * ``"dense"``: always; a copy of ``module`` with the mask applied to its weight.
    * ``"shape-gemm"``: :class:`ShapeSparseConv2d`, for ``groups=1`` zero-padded
      :class:`~torch.nn.Conv2d` whose mask is column-structured (see
      :func:`column_structure`) with at least one column removed.
    * ``"csr"``: :class:`CSRLinear` / :class:`CSRConv2d`, for masks that are not
      column-structured (irregular, N:M) with at least 50% zeros, on CPU in float32.
    * ``"semi-structured"``: :class:`SemiStructuredLinear` / :class:`SemiStructuredConv2d`
      (1x1 convs), for 2:4 masks on CUDA in float16/bfloat16, where the GPU and shape allow.

    The module itself is not changed. Forms are returned on ``device`` in ``dtype``, in
    eval mode, with ``requires_grad`` off (they are for inference).

    Args:
        module: An ``nn.Conv2d`` or ``nn.Linear`` (other modules get only ``"dense"``).
        weight_mask: Bool tensor shaped like ``module.weight``; True = kept.
        device: Where the forms will run.
        dtype: Floating dtype they will run in.

    Returns:
        ``{form name: module}``, ``"dense"`` first.

    Raises:
        ValueError: if ``module`` has no weight or the mask's shape differs from it.

    Example:
        >>> conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> from autoprune.sparsity import get_sparsity
        >>> mask = get_sparsity("shape").mask(conv.weight, 0.8)
        >>> sorted(candidate_forms(conv, mask, device=torch.device("cpu"), dtype=torch.float32))
        ['dense', 'shape-gemm']
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"candidate_forms needs a module with a weight, got {type(module).__name__}")
    device = torch.device(device)
    mask = check_mask(weight_mask, weight, "weight mask")

    dense = copy.deepcopy(module)
    with torch.no_grad():
        dense.weight.mul_(mask.to(dense.weight.dtype))
    forms: dict[str, nn.Module] = {"dense": _finish(dense, device, dtype)}

    is_conv = isinstance(module, nn.Conv2d) and weight.dim() == 4
    is_linear = isinstance(module, nn.Linear) and weight.dim() == 2
    if not (is_conv or is_linear):
        return forms
    gatherable = is_conv and why_not_gather_conv(module) is None
    cols, structured = column_structure(mask)

    if gatherable and structured and not bool(cols.all()):
        src = copy.deepcopy(module)
        with torch.no_grad():
            src.weight.copy_(weight.detach() * mask)
        forms["shape-gemm"] = _finish(ShapeSparseConv2d.from_conv(src, cols), device, dtype)

    sparsity = 1.0 - float(mask.sum()) / max(1, mask.numel())
    if (
        not structured
        and sparsity >= CSR_MIN_SPARSITY
        and device.type == "cpu"
        and dtype == torch.float32
        and (is_linear or gatherable)
    ):
        cpu_src = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
        cpu_mask = mask.cpu()
        form = (
            CSRLinear.from_linear(cpu_src, cpu_mask)
            if is_linear
            else CSRConv2d.from_conv(cpu_src, cpu_mask)
        )
        forms["csr"] = _finish(form, device, dtype)

    if (
        device.type == "cuda"
        and dtype in SEMI_STRUCTURED_DTYPES
        and is_semi_structured(mask)
        and (is_linear or semi_structured_conv_ok(module))
    ):
        # Built from the dense form, already on the device in the dtype; not moved after.
        try:
            if is_linear:
                forms["semi-structured"] = SemiStructuredLinear.from_linear(forms["dense"], mask).eval()
            else:
                forms["semi-structured"] = SemiStructuredConv2d.from_conv(forms["dense"], mask).eval()
        except SemiStructuredUnsupported:
            pass  # this GPU or its 2:4 kernels cannot take this weight: not a candidate
    return forms
