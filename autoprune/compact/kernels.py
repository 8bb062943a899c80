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

import copy
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.sparsity import gemm_view

__all__ = [
    "CSRConv2d",
    "CSRLinear",
    "SemiStructuredConv2d",
    "SemiStructuredLinear",
    "ShapeSparseConv2d",
    "candidate_forms",
    "column_structure",
    "is_semi_structured",
]

#: Least fraction of zero weights at which a CSR form is offered.
CSR_MIN_SPARSITY = 0.5

_SEMI_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- mask analysis


def column_structure(mask: Tensor) -> tuple[Tensor, bool]:
    """The kept im2col columns of a weight mask, and whether the mask is column-structured.

    A mask is column-structured when it is the product of a row mask (whole filters) and
    a column mask (whole ``(c, kh, kw)`` positions) in the GEMM view ``W.reshape(O, -1)``:
    what filter, channel, shape and filter+shape sparsity produce. Irregular and N:M
    masks are not (unless they happen to be).

    Args:
        mask: Bool mask shaped like the weight (conv ``[O, I/g, kh, kw]`` or linear ``[O, I]``).

    Returns:
        ``(kept_columns, structured)``: a bool ``[K]`` tensor, True for columns with any
        kept weight, and True when the mask equals ``rows x kept_columns``.

    Example:
        >>> m = torch.ones(3, 2, 2, 2, dtype=torch.bool)
        >>> m[:, 1] = False                      # input channel 1 removed
        >>> cols, structured = column_structure(m)
        >>> cols.tolist(), structured
        ([True, True, True, True, False, False, False, False], True)
    """
    m2 = gemm_view(mask.detach().bool())
    rows = m2.any(1)
    cols = m2.any(0)
    structured = bool(torch.equal(m2, rows[:, None] & cols[None, :]))
    return cols, structured


def is_semi_structured(mask: Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every run of ``m`` consecutive GEMM-row weights keeps at most ``n``.

    Runs are along the reduction dimension in im2col order, as
    :class:`~autoprune.sparsity.NMSparsity` makes them (``K`` must be divisible by ``m``).

    Example:
        >>> is_semi_structured(torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]]).bool())
        True
        >>> is_semi_structured(torch.tensor([[1, 1, 1, 0]]).bool())
        False
    """
    m2 = gemm_view(mask.detach().bool())
    if m2.shape[1] % m:
        return False
    return bool((m2.reshape(-1, m).sum(1) <= n).all())


def _check_mask(mask: Tensor, weight: Tensor, what: str) -> Tensor:
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(
            f"The {what} must have the weight's shape {tuple(weight.shape)}. Got {tuple(mask.shape)} instead."
        )
    return mask.detach().to(device=weight.device).bool()


def _conv_pad(conv: nn.Conv2d) -> tuple[int, int, int, int]:
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


def _why_not_gather_conv(conv: nn.Module) -> str | None:
    """``None`` if a gather-based kernel can stand in for ``conv``, else why not."""
    if not isinstance(conv, nn.Conv2d):
        return f"needs an nn.Conv2d, got {type(conv).__name__}"
    if conv.groups != 1:
        return f"grouped convolutions (groups={conv.groups}) are not supported"
    if conv.padding_mode != "zeros" and _conv_pad(conv) != (0, 0, 0, 0):
        return f"padding_mode={conv.padding_mode!r} is not supported (only zero padding)"
    return None


def _bias(module: nn.Module) -> Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().clone()


def _as_param(t: Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


def _exporting() -> bool:
    """True under tracing, ``torch.export`` / ``torch.compile`` and ONNX export."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _out_size(size: int, k: int, s: int, d: int) -> int:
    return (size - d * (k - 1) - 1) // s + 1


def _span(c: int, hp: int, wp: int, ho: int, wo: int, sh: int, sw: int) -> int:
    """Rows of the strided im2col view of a padded ``[c, hp, wp]`` sample: row ``p`` holds
    the output-sized window starting at flat position ``p``. Every im2col row starts below
    this bound, and the last window still ends inside the sample."""
    return c * hp * wp - (ho - 1) * sh * wp - (wo - 1) * sw


# --------------------------------------------------------------------------- shape-wise


class ShapeSparseConv2d(nn.Module):
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
        super().__init__()
        if gemm not in ("conv1x1", "mm"):
            raise ValueError(
                f"The 'gemm' parameter of ShapeSparseConv2d must be 'conv1x1' or 'mm'. Got {gemm!r} instead."
            )
        self.in_channels = in_channels
        self.out_channels = weight.shape[0]
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.pad = tuple(pad)
        self.gemm = gemm
        weight = weight.reshape(weight.shape[0], -1, 1, 1).contiguous()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = _as_param(bias)
        self.register_buffer("col_c", col_c.to(torch.long).contiguous())
        self.register_buffer("col_kh", col_kh.to(torch.long).contiguous())
        self.register_buffer("col_kw", col_kw.to(torch.long).contiguous())
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
        reason = _why_not_gather_conv(conv)
        if reason is not None:
            raise ValueError(f"ShapeSparseConv2d: {reason}")
        w2 = gemm_view(conv.weight.detach())
        k = w2.shape[1]
        if column_mask.dim() != 1 or column_mask.numel() != k:
            raise ValueError(
                f"The column mask of ShapeSparseConv2d must be 1-D with C_in*kh*kw = {k} entries. "
                f"Got shape {tuple(column_mask.shape)} instead."
            )
        kept = torch.nonzero(column_mask.detach().to(w2.device).bool()).flatten()
        kh, kw = conv.kernel_size
        return cls(
            w2.index_select(1, kept).clone(),
            _bias(conv),
            kept // (kh * kw),
            (kept // kw) % kh,
            kept % kw,
            in_channels=conv.in_channels,
            kernel_size=(kh, kw),
            stride=tuple(conv.stride),
            dilation=tuple(conv.dilation),
            pad=_conv_pad(conv),
            gemm=gemm,
        )

    @property
    def kept_columns(self) -> int:
        """Number of im2col columns computed."""
        return int(self.col_c.numel())

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
        if _exporting():
            # Exportable form (one Gather over the flattened input); same values, slower.
            dh, dw = self.dilation
            base = self.col_c * (hp * wp) + self.col_kh * (dh * wp) + self.col_kw * dw
            pos = (torch.arange(ho, device=xp.device) * (sh * wp))[:, None] + torch.arange(
                wo, device=xp.device
            ) * sw
            idx = (base[:, None] + pos.reshape(1, -1)).reshape(-1)
            return xp.reshape(n, -1).index_select(1, idx).reshape(n, -1, ho, wo)
        base = self._row_offsets(hp, wp, False, xp.device)
        view = xp.as_strided((n, _span(c, hp, wp, ho, wo, sh, sw), ho, wo), (c * hp * wp, 1, sh * wp, sw))
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
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ShapeSparseConv2d expects input [N, {self.in_channels}, H, W]. "
                f"Got {tuple(x.shape)} instead."
            )
        channels_last = (
            not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and not _exporting()
        )
        xp = F.pad(x, self.pad) if any(self.pad) else x
        xp = xp.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        n, _, hp, wp = xp.shape
        ho = _out_size(hp, self.kernel_size[0], self.stride[0], self.dilation[0])
        wo = _out_size(wp, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ho <= 0 or wo <= 0:
            raise ValueError(f"ShapeSparseConv2d: input {tuple(x.shape)} is smaller than the kernel.")
        o = self.out_channels
        if self.kept_columns == 0:
            out = xp.new_zeros(n, o, ho, wo)
            if self.bias is not None:
                out += self.bias.view(1, -1, 1, 1)
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


# --------------------------------------------------------------------------- CSR


def _to_csr(dense: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        csr = dense.to_sparse_csr()
    return csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone()


class _CSRWeight(nn.Module):
    """A CSR weight kept as three dense buffers (so ``state_dict``, ``.to()`` and pickling
    work as for any module) and assembled into a sparse tensor at each call."""

    def __init__(self, weight2d: Tensor) -> None:
        super().__init__()
        crow, col, values = _to_csr(weight2d)
        self.shape2d = (int(weight2d.shape[0]), int(weight2d.shape[1]))
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", values)

    @classmethod
    def placeholder(cls, shape2d: tuple[int, int], nnz: int) -> _CSRWeight:
        """Buffers of the right sizes for ``nnz`` stored weights (filled by ``load_state_dict``)."""
        w = cls(torch.zeros(int(shape2d[0]), int(shape2d[1])))
        w.crow_indices = torch.zeros(int(shape2d[0]) + 1, dtype=torch.long)
        w.col_indices = torch.zeros(int(nnz), dtype=torch.long)
        w.values = torch.zeros(int(nnz))
        return w

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def csr(self) -> Tensor:
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, self.shape2d)

    def matmul(self, dense: Tensor, bias: Tensor | None) -> Tensor:
        """``W @ dense (+ bias[:, None])`` with ``W`` sparse: ``[O, M]``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = self.csr()
            if bias is None:
                return torch.sparse.mm(w, dense)
            return torch.addmm(bias[:, None], w, dense)


class CSRLinear(nn.Module):
    """Linear layer with a CSR weight: ``y = x W^T + b`` as ``(W_csr @ x^T)^T``.

    Equal to ``F.linear(x, W * mask, b)``. Fast on CPU (MKL) for small batches and high
    sparsity; :func:`candidate_forms` offers it for CPU float32 at >= 50% sparsity.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.sparse_weight = _CSRWeight(weight.detach())
        self.bias = _as_param(bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_mask: Tensor) -> CSRLinear:
        """The CSR form of ``linear`` with ``weight_mask`` (bool, shaped like its weight) applied."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"CSRLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        mask = _check_mask(weight_mask, w, "weight mask")
        return cls(w * mask, _bias(linear))

    def spec(self) -> dict:
        """The constructor arguments as plain data (JSON); the CSR buffers and bias come back
        through the state dict (see :meth:`from_spec`)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "nnz": self.sparse_weight.nnz,
            "bias": self.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> CSRLinear:
        """An uninitialised module of the shape :meth:`spec` describes; load a state dict into it."""
        o, i = int(spec["out_features"]), int(spec["in_features"])
        module = cls(torch.zeros(o, i), torch.zeros(o) if spec["bias"] else None)
        module.sparse_weight = _CSRWeight.placeholder((o, i), int(spec["nnz"]))
        return module

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.sparse_weight.nnz}, bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = self.sparse_weight.matmul(x2.t().contiguous(), self.bias)  # [O, M]
        return out.t().contiguous().reshape(*lead, self.out_features)


class CSRConv2d(nn.Module):
    """Conv with a CSR weight over the im2col matrix of the columns that keep any weight.

    The padded input is laid out ``[C*Hp*Wp, N]``, the used im2col rows are gathered into
    ``[K_used, H_out*W_out*N]`` through a strided view, multiplied by the CSR weight
    ``[O, K_used]`` (MKL on CPU), and permuted back to NCHW. Equal to the masked conv; it
    wins only at very high sparsity, and measurement decides.
    """

    def __init__(
        self,
        weight2d: Tensor,
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
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = int(weight2d.shape[0])
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.pad = tuple(pad)
        self.sparse_weight = _CSRWeight(weight2d)
        self.bias = _as_param(bias)
        self.register_buffer("col_c", col_c.to(torch.long).contiguous())
        self.register_buffer("col_kh", col_kh.to(torch.long).contiguous())
        self.register_buffer("col_kw", col_kw.to(torch.long).contiguous())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight_mask: Tensor) -> CSRConv2d:
        """The CSR form of ``conv`` with ``weight_mask`` (bool, shaped like its weight) applied.

        Raises:
            ValueError: for grouped convs, non-zero padding modes, or a mask of the wrong shape.
        """
        reason = _why_not_gather_conv(conv)
        if reason is not None:
            raise ValueError(f"CSRConv2d: {reason}")
        w = conv.weight.detach()
        mask = _check_mask(weight_mask, w, "weight mask")
        w2 = gemm_view(w * mask)
        used = torch.nonzero(gemm_view(mask).any(0)).flatten()
        kh, kw = conv.kernel_size
        return cls(
            w2.index_select(1, used),
            _bias(conv),
            used // (kh * kw),
            (used // kw) % kh,
            used % kw,
            in_channels=conv.in_channels,
            kernel_size=(kh, kw),
            stride=tuple(conv.stride),
            dilation=tuple(conv.dilation),
            pad=_conv_pad(conv),
        )

    def spec(self) -> dict:
        """The constructor arguments as plain data (JSON); the CSR buffers, used column
        indices and bias come back through the state dict (see :meth:`from_spec`)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "used_columns": int(self.col_c.numel()),
            "nnz": self.sparse_weight.nnz,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "pad": list(self.pad),
            "bias": self.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> CSRConv2d:
        """An uninitialised module of the shape :meth:`spec` describes; load a state dict into it."""
        o, k = int(spec["out_channels"]), int(spec["used_columns"])
        idx = torch.zeros(k, dtype=torch.long)
        module = cls(
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
        )
        module.sparse_weight = _CSRWeight.placeholder((o, k), int(spec["nnz"]))
        return module

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, nnz={self.sparse_weight.nnz}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CSRConv2d expects input [N, {self.in_channels}, H, W]. Got {tuple(x.shape)} instead."
            )
        xp = F.pad(x, self.pad) if any(self.pad) else x
        n, c, hp, wp = xp.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho, wo = _out_size(hp, kh, sh, dh), _out_size(wp, kw, sw, dw)
        if ho <= 0 or wo <= 0:
            raise ValueError(f"CSRConv2d: input {tuple(x.shape)} is smaller than the kernel.")
        k_used = int(self.col_c.numel())
        if k_used == 0:
            out = xp.new_zeros(n, self.out_channels, ho, wo)
            if self.bias is not None:
                out += self.bias.view(1, -1, 1, 1)
            return out.squeeze(0) if unbatched else out
        xt = xp.reshape(n, c * hp * wp).t().contiguous()  # [C*Hp*Wp, N]
        base = self.col_c * (hp * wp) + self.col_kh * (dh * wp) + self.col_kw * dw
        span = _span(c, hp, wp, ho, wo, sh, sw)
        cols = xt.as_strided((span, ho, wo, n), (n, sh * wp * n, sw * n, 1))[base]  # [K, ho, wo, N]
        out = self.sparse_weight.matmul(cols.reshape(k_used, ho * wo * n), self.bias)  # [O, ho*wo*N]
        out = out.view(self.out_channels, ho, wo, n).permute(3, 0, 1, 2).contiguous()
        return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- 2:4 on CUDA


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
    if weight.dtype not in _SEMI_DTYPES:
        raise ValueError(f"{who} needs a float16 or bfloat16 weight; this one is {weight.dtype}.")
    if not is_semi_structured(mask):
        raise ValueError(f"{who} needs a 2:4 mask (at most 2 kept in every 4 consecutive input weights).")
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        raise SemiStructuredUnsupported(
            f"{who} needs a GPU of compute capability 8.0 or newer (sparse tensor cores)."
        )
    try:
        from torch.sparse import to_sparse_semi_structured

        sparse = to_sparse_semi_structured((weight * mask).contiguous())
        # Run it once: a GPU or shape the kernels cannot handle fails here, not in the caller's timing.
        F.linear(torch.zeros(8, weight.shape[1], device=weight.device, dtype=weight.dtype), sparse)
        return sparse
    except (RuntimeError, ValueError, AssertionError, NotImplementedError, TypeError) as exc:
        raise SemiStructuredUnsupported(f"{who}: this weight cannot be made semi-structured here: {exc}") from exc


def _semi_structured_conv_ok(conv: nn.Conv2d) -> bool:
    """A conv that :class:`SemiStructuredConv2d` can run: 1x1, ``groups=1``, no padding."""
    return tuple(conv.kernel_size) == (1, 1) and conv.groups == 1 and _conv_pad(conv) == (0, 0, 0, 0)


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
        self.bias = _as_param(bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> SemiStructuredLinear:
        """The 2:4 form of ``linear`` (on CUDA in float16/bfloat16) with ``mask`` applied."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"SemiStructuredLinear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        m = _check_mask(mask, w, "mask")
        sw = _semi_structured_weight(w, m, "SemiStructuredLinear")
        return cls(sw, _bias(linear), linear.in_features, linear.out_features)

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
        if not _semi_structured_conv_ok(conv):
            raise ValueError("SemiStructuredConv2d needs a 1x1 conv with groups=1 and no padding.")
        w = conv.weight.detach()
        m = _check_mask(mask, w, "mask")
        sw = _semi_structured_weight(gemm_view(w), gemm_view(m), "SemiStructuredConv2d")
        lin = SemiStructuredLinear(sw, _bias(conv), conv.in_channels, conv.out_channels)
        return cls(lin, tuple(conv.stride))

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


# --------------------------------------------------------------------------- the list


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
    mask = _check_mask(weight_mask, weight, "weight mask")

    dense = copy.deepcopy(module)
    with torch.no_grad():
        dense.weight.mul_(mask.to(dense.weight.dtype))
    forms: dict[str, nn.Module] = {"dense": _finish(dense, device, dtype)}

    is_conv = isinstance(module, nn.Conv2d) and weight.dim() == 4
    is_linear = isinstance(module, nn.Linear) and weight.dim() == 2
    if not (is_conv or is_linear):
        return forms
    gatherable = is_conv and _why_not_gather_conv(module) is None
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
        and dtype in _SEMI_DTYPES
        and is_semi_structured(mask)
        and (is_linear or _semi_structured_conv_ok(module))
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
