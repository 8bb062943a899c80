"""What the kernel forms share: frozen parameters, conv padding, and the gather-conv base.

:class:`GatherConv2d` is the base of the convs that compute from a subset of the im2col
rows of a zero-padded input (:class:`~autoprune.compact.kernels.ShapeSparseConv2d`,
:class:`~autoprune.compact.kernels.CSRConv2d`): it holds the conv's geometry and the kept
columns ``(c, kh, kw)`` (buffers ``col_c``, ``col_kh``, ``col_kw``), checks inputs, sizes
the output, and turns the compacted weight back into a plain masked ``nn.Conv2d``.
A subclass supplies its weight (:meth:`GatherConv2d.weight2d`) and its forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def frozen_param(t: Tensor | None) -> nn.Parameter | None:
    """``t`` as a parameter that takes no gradient (kernels are for inference)."""
    return None if t is None else nn.Parameter(t, requires_grad=False)


def bias_copy(module: nn.Module) -> Tensor | None:
    """A detached copy of the module's bias, or None."""
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().clone()


def dense_linear(weight: Tensor, bias: Tensor | None, *, training: bool) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``weight`` (``[out, in]``, dense) and ``bias``, on the
    weight's device and in its dtype: what a sparse linear kernel gives back in ``to_dense()``."""
    out_features, in_features = weight.shape
    lin = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias.detach())
    return lin.train(training)


def exporting() -> bool:
    """True under tracing, ``torch.export`` / ``torch.compile`` and ONNX export."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def conv_pad(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Zero padding of a conv as ``F.pad`` wants it: ``(left, right, top, bottom)``."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        # 'same' (stride 1): total d*(k-1) per dimension, the extra one at the end, as torch does.
        th = conv.dilation[0] * (conv.kernel_size[0] - 1)
        tw = conv.dilation[1] * (conv.kernel_size[1] - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def why_not_gather_conv(conv: nn.Module) -> str | None:
    """``None`` if a gather-based kernel can stand in for ``conv``, else why not."""
    if not isinstance(conv, nn.Conv2d):
        return f"needs an nn.Conv2d, got {type(conv).__name__}"
    if conv.groups != 1:
        return f"grouped convolutions (groups={conv.groups}) are not supported"
    if conv.padding_mode != "zeros" and conv_pad(conv) != (0, 0, 0, 0):
        return f"padding_mode={conv.padding_mode!r} is not supported (only zero padding)"
    return None


def out_size(size: int, k: int, s: int, d: int) -> int:
    """Output length of a convolution along one dimension (no padding: it is already applied)."""
    return (size - d * (k - 1) - 1) // s + 1


def im2col_span(c: int, hp: int, wp: int, ho: int, wo: int, sh: int, sw: int) -> int:
    """Rows of the strided im2col view of a padded ``[c, hp, wp]`` sample: row ``p`` holds
    the output-sized window starting at flat position ``p``. Every im2col row starts below
    this bound, and the last window still ends inside the sample."""
    return c * hp * wp - (ho - 1) * sh * wp - (wo - 1) * sw


def split_columns(columns: Tensor, kernel_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Flat im2col column indices ``c*kh*kw + i*kw + j`` as ``(c, i, j)``."""
    kh, kw = kernel_size
    return columns // (kh * kw), (columns // kw) % kh, columns % kw


class GatherConv2d(nn.Module):
    """Base of the convs that compute from the kept im2col columns of a zero-padded input.

    Subclasses call :meth:`_set_columns` after registering their weight (so that the
    state dict lists weight, bias, then ``col_c``, ``col_kh``, ``col_kw``), and implement
    :meth:`weight2d` and ``forward``.

    Args:
        in_channels: Input channels of the original conv.
        out_channels: Its output channels.
        kernel_size, stride, dilation: As in :class:`~torch.nn.Conv2d` (pairs).
        pad: Zero padding ``(left, right, top, bottom)``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        pad: tuple[int, int, int, int],
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.pad = tuple(pad)

    def _set_columns(self, bias: Tensor | None, col_c: Tensor, col_kh: Tensor, col_kw: Tensor) -> None:
        self.bias = frozen_param(bias)
        self.register_buffer("col_c", col_c.to(torch.long).contiguous())
        self.register_buffer("col_kh", col_kh.to(torch.long).contiguous())
        self.register_buffer("col_kw", col_kw.to(torch.long).contiguous())

    @staticmethod
    def geometry(conv: nn.Conv2d) -> dict:
        """The keyword arguments describing ``conv`` (all but ``out_channels``)."""
        return {"in_channels": conv.in_channels, "kernel_size": tuple(conv.kernel_size),
                "stride": tuple(conv.stride), "dilation": tuple(conv.dilation), "pad": conv_pad(conv)}

    @classmethod
    def _check_conv(cls, conv: nn.Module) -> None:
        reason = why_not_gather_conv(conv)
        if reason is not None:
            raise ValueError(f"{cls.__name__}: {reason}")

    def weight2d(self) -> Tensor:
        """The weight over the kept columns as a dense ``[O, K_kept]`` tensor."""
        raise NotImplementedError

    def column_index(self) -> Tensor:
        """Flat im2col index ``c*kh*kw + i*kw + j`` of each kept column."""
        kh, kw = self.kernel_size
        return self.col_c * (kh * kw) + self.col_kh * kw + self.col_kw

    def to_dense(self) -> nn.Module:
        """The masked dense conv this kernel computes: an ``nn.Conv2d`` whose weight is zero
        outside the kept columns (behind an ``nn.ZeroPad2d`` where the padding is uneven),
        on this kernel's device and in its dtype."""
        w2 = self.weight2d()
        kh, kw = self.kernel_size
        full = torch.zeros(self.out_channels, self.in_channels * kh * kw, dtype=w2.dtype, device=w2.device)
        full[:, self.column_index()] = w2
        left, right, top, bottom = self.pad
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(self.in_channels, self.out_channels, (kh, kw), stride=self.stride,
                         padding=(top, left) if symmetric else 0, dilation=self.dilation,
                         bias=self.bias is not None, device=w2.device, dtype=w2.dtype)
        with torch.no_grad():
            conv.weight.copy_(full.reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach())
        dense = conv if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        return dense.train(self.training)

    def _batched(self, x: Tensor) -> tuple[Tensor, bool]:
        """``x`` as ``[N, C, H, W]`` and whether it came without the batch dimension."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [N, {self.in_channels}, H, W]. Got {tuple(x.shape)} instead."
            )
        return x, unbatched

    def _output_hw(self, x: Tensor, hp: int, wp: int) -> tuple[int, int]:
        """Output height and width for a padded input of ``hp x wp`` (``x``: for the message)."""
        ho = out_size(hp, self.kernel_size[0], self.stride[0], self.dilation[0])
        wo = out_size(wp, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ho <= 0 or wo <= 0:
            raise ValueError(f"{type(self).__name__}: input {tuple(x.shape)} is smaller than the kernel.")
        return ho, wo

    def _bias_only(self, xp: Tensor, n: int, ho: int, wo: int) -> Tensor:
        """The output when no column is kept: the bias everywhere (zeros without one)."""
        out = xp.new_zeros(n, self.out_channels, ho, wo)
        if self.bias is not None:
            out += self.bias.view(1, -1, 1, 1)
        return out
