"""``shape-gemm``: a conv that computes only the kept im2col columns (shape-wise sparsity).

Why the shape-wise kernel is built the way it is (2-core AMD EPYC, torch 2.13, AlexNet
conv2-conv5 at batch 8; ``benchmarks/bench_kernels.py`` has the numbers):

* ``F.unfold`` + ``index_select`` materialises every im2col row before dropping most of
  them and is slower than the dense conv even with 80% of the columns removed.
* A strided *view* of the padded input ``[N, P, H_out, W_out]`` in which position
  ``p = c*Hp*Wp + kh*dil_h*Wp + kw*dil_w`` is the im2col row of column ``(c, kh, kw)``
  lets one advanced-indexing call gather exactly the kept rows, already in the NCHW layout
  a 1x1 convolution reads (faster than per-offset slices + ``cat``, and than a flat
  ``index_select``, which runs on one thread).
* The GEMM is run as a 1x1 ``conv2d`` (oneDNN on CPU, bias fused, NCHW out): on this CPU
  MKL's ``sgemm`` reached about half of oneDNN's throughput for the same product.
* On CPU the gathered matrix (up to ~10x the input) goes into a buffer kept between calls:
  allocated afresh, glibc returned it to the OS and faulted it back in at every call.
* Result (medians over three runs on a shared machine, +-15%): 2.3-3.2x over the masked
  dense conv at 80% of the columns removed, 4.4-5.7x at 93%, 1.0-1.6x at 50%.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    >>> mask = torch.zeros(4 * 3 * 3, dtype=torch.bool)
    >>> mask[::3] = True                      # keep every third im2col column
    >>> fast = ShapeSparseConv2d.from_conv(conv, mask)
    >>> x = torch.randn(2, 4, 10, 10)
    >>> masked = conv.weight * mask.reshape(1, 4, 3, 3)
    >>> ref = torch.nn.functional.conv2d(x, masked, conv.bias, padding=1)
    >>> bool(torch.allclose(fast(x), ref, atol=1e-5))
    True
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.compact.kernels.base import GatherConv2d, bias_copy, exporting, im2col_span, split_columns
from autoprune.sparsity import gemm_view


class ShapeSparseConv2d(GatherConv2d):
    """Conv that computes only the kept im2col columns ``(c, kh, kw)``: shape-wise sparsity.

    Equal to ``conv2d(x, W * column_mask, b)`` for the conv it was built from. The input
    is zero-padded once; a strided view of it holds every im2col row, the kept rows are
    gathered with one indexing call into ``[N, K_kept, H_out, W_out]``, and a 1x1
    convolution with the compacted weight ``[O, K_kept]`` (bias fused) gives the output.
    A channels-last input is gathered as ``[N, H_out, W_out, K_kept]`` instead (no layout
    conversion) and gives a channels-last output, as the dense conv would; anything else
    gives NCHW. Output channels are kept as they are. Under tracing, ``torch.export`` and
    ONNX export the gather is one ``index_select`` over the flattened input instead.

    Build it with :meth:`from_conv`. Weight and bias are parameters (``requires_grad``
    False); the kept columns are buffers ``col_c``, ``col_kh``, ``col_kw``.

    Args:
        weight: Compacted weight ``[O, K_kept]``, columns in the order of the index buffers.
        bias: ``[O]`` or ``None``.
        col_c, col_kh, col_kw: Input channel and kernel offsets of each kept column (int64).
        in_channels: Input channels of the original conv.
        kernel_size, stride, dilation: As in :class:`~torch.nn.Conv2d` (pairs).
        pad: Zero padding ``(left, right, top, bottom)``.
        gemm: ``"conv1x1"`` (default: oneDNN / cuDNN) or ``"mm"`` (``torch.matmul``).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        col_c: Tensor,
        col_kh: Tensor,
        col_kw: Tensor,
        *,
        in_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        pad: tuple[int, int, int, int],
        gemm: str = "conv1x1",
    ) -> None:
        if gemm not in ("conv1x1", "mm"):
            raise ValueError(
                f"The 'gemm' parameter of ShapeSparseConv2d must be 'conv1x1' or 'mm'. Got {gemm!r} instead."
            )
        super().__init__(in_channels=in_channels, out_channels=weight.shape[0], kernel_size=kernel_size,
                         stride=stride, dilation=dilation, pad=pad)
        self.gemm = gemm
        weight = weight.reshape(weight.shape[0], -1, 1, 1).contiguous()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self._set_columns(bias, col_c, col_kh, col_kw)
        self._base_key: tuple | None = None
        self._base: Tensor | None = None
        self._workspace: dict[int, Tensor] = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, column_mask: Tensor, *, gemm: str = "conv1x1") -> ShapeSparseConv2d:
        """The shape-wise form of ``conv`` keeping the im2col columns in ``column_mask``.

        Args:
            conv: A ``groups=1`` :class:`~torch.nn.Conv2d` with zero padding.
            column_mask: Bool ``[C_in * kh * kw]`` in im2col order ``(c, kh, kw)``, i.e. the
                columns of ``conv.weight.reshape(O, -1)``; True = kept.
            gemm: See the class docstring.

        Raises:
            ValueError: for grouped convs, non-zero padding modes, or a mask of the wrong size.
        """
        cls._check_conv(conv)
        w2 = gemm_view(conv.weight.detach())
        k = w2.shape[1]
        if column_mask.dim() != 1 or column_mask.numel() != k:
            raise ValueError(
                f"The column mask of ShapeSparseConv2d must be 1-D with C_in*kh*kw = {k} entries. "
                f"Got shape {tuple(column_mask.shape)} instead."
            )
        kept = torch.nonzero(column_mask.detach().to(w2.device).bool()).flatten()
        return cls(w2.index_select(1, kept).clone(), bias_copy(conv), *split_columns(kept, conv.kernel_size),
                   **cls.geometry(conv), gemm=gemm)

    @property
    def kept_columns(self) -> int:
        """Number of im2col columns computed."""
        return int(self.col_c.numel())

    def weight2d(self) -> Tensor:
        """The compacted weight ``[O, K_kept]``."""
        return self.weight.detach().reshape(self.out_channels, -1)

    def spec(self) -> dict:
        """The constructor arguments as plain data (JSON); the weights, bias and kept column
        indices come back through the state dict (see :meth:`from_spec`)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kept_columns": self.kept_columns,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "pad": list(self.pad),
            "bias": self.bias is not None,
            "gemm": self.gemm,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> ShapeSparseConv2d:
        """An uninitialised module of the shape :meth:`spec` describes; load a state dict into it."""
        o, k = int(spec["out_channels"]), int(spec["kept_columns"])
        idx = torch.zeros(k, dtype=torch.long)
        return cls(
            torch.zeros(o, k),
            torch.zeros(o) if spec["bias"] else None,
            idx,
            idx.clone(),
            idx.clone(),
            in_channels=int(spec["in_channels"]),
            kernel_size=tuple(spec["kernel_size"]),
            stride=tuple(spec["stride"]),
            dilation=tuple(spec["dilation"]),
            pad=tuple(spec["pad"]),
            gemm=spec.get("gemm", "conv1x1"),
        )

    def extra_repr(self) -> str:
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, columns={self.kept_columns}/{k}, "
            f"bias={self.bias is not None}, gemm={self.gemm!r}"
        )

    def _row_offsets(self, hp: int, wp: int, channels_last: bool, device: torch.device) -> Tensor:
        """Flat offset of each kept column's im2col row in a padded sample (cached per shape).

        NCHW sample ``[C, hp, wp]``: ``c*hp*wp + kh*dh*wp + kw*dw``; channels-last sample
        ``[hp, wp, C]``: ``(kh*dh*wp + kw*dw)*C + c``.
        """
        key = (hp, wp, channels_last, device, self.col_c.data_ptr())
        if self._base_key != key or self._base is None:
            dh, dw = self.dilation
            with torch.inference_mode(False):  # a normal tensor: usable by autograd later
                spatial = self.col_kh * (dh * wp) + self.col_kw * dw
                if channels_last:
                    self._base = spatial * self.in_channels + self.col_c
                else:
                    self._base = self.col_c * (hp * wp) + spatial
            self._base_key = key
        return self._base

    def _gather_nchw(self, xp: Tensor, ho: int, wo: int) -> Tensor:
        """``[N, K_kept, ho, wo]`` (contiguous): kept im2col rows of a padded NCHW-contiguous input.

        Row ``p`` of the strided view ``[N, span, ho, wo]`` is the output-sized window that
        starts at flat position ``p`` of a sample, so one index call over ``p`` gathers them.
        """
        n, c, hp, wp = xp.shape
        sh, sw = self.stride
        if exporting():
            # Exportable form (one Gather over the flattened input); same values, slower.
            dh, dw = self.dilation
            base = self.col_c * (hp * wp) + self.col_kh * (dh * wp) + self.col_kw * dw
            pos = (torch.arange(ho, device=xp.device) * (sh * wp))[:, None] + torch.arange(
                wo, device=xp.device
            ) * sw
            idx = (base[:, None] + pos.reshape(1, -1)).reshape(-1)
            return xp.reshape(n, -1).index_select(1, idx).reshape(n, -1, ho, wo)
        base = self._row_offsets(hp, wp, False, xp.device)
        view = xp.as_strided((n, im2col_span(c, hp, wp, ho, wo, sh, sw), ho, wo), (c * hp * wp, 1, sh * wp, sw))
        out = self._workspace_for((n, base.numel(), ho, wo), xp)
        if out is None:
            return view[:, base]
        return torch.ops.aten.index.Tensor_out(view, [None, base], out=out)

    def _gather_nhwc(self, xp: Tensor, ho: int, wo: int) -> Tensor:
        """``[N, ho, wo, K_kept]`` (contiguous): the same rows from a channels-last padded input."""
        n, c, hp, wp = xp.shape
        sh, sw = self.stride
        base = self._row_offsets(hp, wp, True, xp.device)
        span = c * (hp * wp - (ho - 1) * sh * wp - (wo - 1) * sw)
        view = xp.as_strided((n, ho, wo, span), (hp * wp * c, sh * wp * c, sw * c, 1))
        out = self._workspace_for((n, ho, wo, base.numel()), xp)
        if out is None:
            return view[..., base]
        return torch.ops.aten.index.Tensor_out(view, [None, None, None, base], out=out)

    def _workspace_for(self, shape: tuple[int, ...], x: Tensor) -> Tensor | None:
        """A reused buffer for the gathered columns on CPU (one per thread), else ``None``.

        The gathered matrix is several times the input (conv2 of AlexNet at 50%: 19 MB at
        batch 8). Allocated afresh at every call, glibc hands such blocks back to the OS and
        faults them in again (measured: ~10k page faults and 2x the time per call), so on
        CPU it is written into a buffer kept between calls. Never used where autograd has
        to see the gather, nor on CUDA (its caching allocator has no such cost). The
        buffer never escapes: the GEMM writes a new output.
        """
        if x.device.type != "cpu" or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return None
        key = threading.get_ident()
        ws = self._workspace.get(key)
        if ws is None or tuple(ws.shape) != shape or ws.dtype != x.dtype:
            with torch.inference_mode(False):  # usable in and out of inference mode
                ws = torch.empty(shape, dtype=x.dtype)
            self._workspace[key] = ws
        return ws

    def release_workspace(self) -> None:
        """Free the buffers kept between calls (they come back at the next call)."""
        self._workspace = {}

    def _reset_caches(self) -> None:
        self._workspace = {}
        self._base = None
        self._base_key = None

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202  (.to(), .cuda(), .half(), ...)
        self._reset_caches()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._reset_caches()
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # caches are rebuilt, not saved or copied
        state.update(_workspace={}, _base=None, _base_key=None)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_workspace", {})
        state.setdefault("_base", None)
        state.setdefault("_base_key", None)
        super().__setstate__(state)

    def forward(self, x: Tensor) -> Tensor:
        """Output in the input's memory format (NCHW, or channels-last for a channels-last input)."""
        x, unbatched = self._batched(x)
        channels_last = (
            not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and not exporting()
        )
        xp = F.pad(x, self.pad) if any(self.pad) else x
        xp = xp.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        n, _, hp, wp = xp.shape
        ho, wo = self._output_hw(x, hp, wp)
        o = self.out_channels
        if self.kept_columns == 0:
            out = self._bias_only(xp, n, ho, wo)
            if channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
        elif self.gemm == "conv1x1":
            if channels_last:
                cols = self._gather_nhwc(xp, ho, wo).permute(0, 3, 1, 2)
            else:
                cols = self._gather_nchw(xp, ho, wo)
            out = F.conv2d(cols, self.weight, self.bias)
        else:
            w2 = self.weight.view(o, -1)
            if channels_last:
                out = torch.matmul(self._gather_nhwc(xp, ho, wo).view(n, ho * wo, -1), w2.t())
                if self.bias is not None:
                    out += self.bias
                out = out.view(n, ho, wo, o).permute(0, 3, 1, 2)
            else:
                out = torch.matmul(w2, self._gather_nchw(xp, ho, wo).view(n, -1, ho * wo))
                if self.bias is not None:
                    out += self.bias.view(1, -1, 1)
                out = out.view(n, o, ho, wo)
        return out.squeeze(0) if unbatched else out
