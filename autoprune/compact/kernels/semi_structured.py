"""``semi-structured``: 2:4 linears and 1x1 convs on CUDA float16 / bfloat16 (sparse tensor cores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.compact.kernels.base import bias_copy, conv_pad, dense_linear, frozen_param
from autoprune.compact.kernels.masks import check_mask, is_semi_structured
from autoprune.sparsity import gemm_view

#: The dtypes the 2:4 kernels take.
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


class SemiStructuredUnsupported(ValueError):
    """This GPU (compute capability) or the 2:4 kernels cannot take the weight: a right
    request that this machine cannot serve, as opposed to a wrong one (device, dtype, mask)."""


def _on_cuda(t: Tensor) -> bool:
    return t.device.type == "cuda"


def _semi_structured_weight(weight: Tensor, mask: Tensor, who: str) -> Tensor:
    """``to_sparse_semi_structured(weight * mask)``, or ValueError with the reason it cannot be
    (:class:`SemiStructuredUnsupported` where the GPU or its kernels are the reason)."""
    if not _on_cuda(weight):
        raise ValueError(f"{who} needs a CUDA weight; this one is on {weight.device}.")
    if weight.dtype not in SEMI_STRUCTURED_DTYPES:
        raise ValueError(f"{who} needs a float16 or bfloat16 weight; this one is {weight.dtype}.")
    if not is_semi_structured(mask):
        raise ValueError(f"{who} needs a 2:4 mask (at most 2 kept in every 4 consecutive input weights).")
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        raise SemiStructuredUnsupported(
            f"{who} needs a GPU of compute capability 8.0 or newer (sparse tensor cores)."
        )
    try:
        from torch.sparse import to_sparse_semi_structured  # looked up per call (the tests fake it)

        sparse = to_sparse_semi_structured((weight * mask).contiguous())
        # Run it once: a GPU or shape the kernels cannot handle fails here, not in the caller's timing.
        F.linear(torch.zeros(8, weight.shape[1], device=weight.device, dtype=weight.dtype), sparse)
        return sparse
    except (RuntimeError, ValueError, AssertionError, NotImplementedError, TypeError) as exc:
        raise SemiStructuredUnsupported(f"{who}: this weight cannot be made semi-structured here: {exc}") from exc


def semi_structured_conv_ok(conv: nn.Conv2d) -> bool:
    """A conv that :class:`SemiStructuredConv2d` can run: 1x1, ``groups=1``, no padding."""
    return tuple(conv.kernel_size) == (1, 1) and conv.groups == 1 and conv_pad(conv) == (0, 0, 0, 0)


class SemiStructuredLinear(nn.Module):
    """Linear with a 2:4 semi-structured weight (sparse tensor cores; CUDA fp16/bf16 only).

    Raises ``ValueError`` from :meth:`from_linear` when the linear is not on CUDA, not
    float16/bfloat16, the mask is not 2:4, or the GPU / shape is not supported.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = frozen_param(bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
        """The 2:4 form of ``linear`` (on CUDA in float16/bfloat16) with ``mask`` applied."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"SemiStructuredLinear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        m = check_mask(mask, w, "mask")
        sw = _semi_structured_weight(w, m, "SemiStructuredLinear")
        return cls(sw, bias_copy(linear), linear.in_features, linear.out_features)

    def to_dense(self) -> nn.Module:
        """The masked dense ``nn.Linear`` this kernel computes, on its device and in its dtype
        (the 2:4 weight given back as a plain tensor)."""
        return dense_linear(self.weight.detach().to_dense(), self.bias, training=self.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        out = F.linear(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)
        return out.reshape(*lead, self.out_features)


class SemiStructuredConv2d(nn.Module):
    """A 1x1 conv (``groups=1``, no padding) run as a 2:4 semi-structured linear over
    channels-last pixels (CUDA fp16/bf16 only). Strides are applied by slicing first.
    """

    def __init__(self, linear: SemiStructuredLinear, stride: tuple[int, int]) -> None:
        super().__init__()
        self.linear = linear
        self.stride = tuple(stride)
        self.in_channels = linear.in_features
        self.out_channels = linear.out_features

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: Tensor) -> SemiStructuredConv2d:
        """The 2:4 form of a 1x1 ``conv`` (on CUDA in float16/bfloat16) with ``mask`` applied."""
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"SemiStructuredConv2d needs an nn.Conv2d, got {type(conv).__name__}")
        if not semi_structured_conv_ok(conv):
            raise ValueError("SemiStructuredConv2d needs a 1x1 conv with groups=1 and no padding.")
        w = conv.weight.detach()
        m = check_mask(mask, w, "mask")
        sw = _semi_structured_weight(gemm_view(w), gemm_view(m), "SemiStructuredConv2d")
        lin = SemiStructuredLinear(sw, bias_copy(conv), conv.in_channels, conv.out_channels)
        return cls(lin, tuple(conv.stride))

    def to_dense(self) -> nn.Module:
        """The masked dense 1x1 ``nn.Conv2d`` this kernel computes, on its device and in its dtype."""
        lin = self.linear.to_dense()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 1, stride=self.stride, bias=lin.bias is not None,
                         device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(lin.weight.reshape(conv.weight.shape))
            if lin.bias is not None:
                conv.bias.copy_(lin.bias)
        return conv.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        sh, sw = self.stride
        if (sh, sw) != (1, 1):
            x = x[:, :, ::sh, ::sw]
        n, c, h, w = x.shape
        y = self.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c))
        out = y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2).contiguous()
        return out.squeeze(0) if unbatched else out
