"""``csr``: linears and convs with a CSR weight, for irregular masks (MKL sparse x dense on CPU).

:func:`~autoprune.compact.kernels.candidate_forms` offers them for masks that are not
column-structured with at least half the weights zero, on CPU in float32; they win only
at very high sparsity, and measurement decides.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.compact.kernels.base import (
    GatherConv2d,
    bias_copy,
    dense_linear,
    frozen_param,
    im2col_span,
    split_columns,
)
from autoprune.compact.kernels.masks import check_mask
from autoprune.sparsity import gemm_view


def _to_csr(dense: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        csr = dense.to_sparse_csr()
    return csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone()


class CSRWeight(nn.Module):
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
    def placeholder(cls, shape2d: tuple[int, int], nnz: int) -> CSRWeight:
        """Buffers of the right sizes for ``nnz`` stored weights (filled by ``load_state_dict``)."""
        w = cls(torch.zeros(int(shape2d[0]), int(shape2d[1])))
        w.crow_indices = torch.zeros(int(shape2d[0]) + 1, dtype=torch.long)
        w.col_indices = torch.zeros(int(nnz), dtype=torch.long)
        w.values = torch.zeros(int(nnz))
        return w

    @property
    def nnz(self) -> int:
        """Weights stored (the nonzeros of the masked weight)."""
        return int(self.values.numel())

    def csr(self) -> Tensor:
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, self.shape2d)

    def to_dense(self) -> Tensor:
        """The weight as a dense ``[O, K]`` tensor (zeros where nothing is stored)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Sparse invariant checks are implicitly disabled"
            return self.csr().to_dense()

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
        self.sparse_weight = CSRWeight(weight.detach())
        self.bias = frozen_param(bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_mask: Tensor) -> CSRLinear:
        """The CSR form of ``linear`` with ``weight_mask`` (bool, shaped like its weight) applied."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"CSRLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        mask = check_mask(weight_mask, w, "weight mask")
        return cls(w * mask, bias_copy(linear))

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
        module.sparse_weight = CSRWeight.placeholder((o, i), int(spec["nnz"]))
        return module

    def to_dense(self) -> nn.Module:
        """The masked dense ``nn.Linear`` this kernel computes, on its device and in its dtype."""
        return dense_linear(self.sparse_weight.to_dense(), self.bias, training=self.training)

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


class CSRConv2d(GatherConv2d):
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
        super().__init__(in_channels=in_channels, out_channels=int(weight2d.shape[0]), kernel_size=kernel_size,
                         stride=stride, dilation=dilation, pad=pad)
        self.sparse_weight = CSRWeight(weight2d)
        self._set_columns(bias, col_c, col_kh, col_kw)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight_mask: Tensor) -> CSRConv2d:
        """The CSR form of ``conv`` with ``weight_mask`` (bool, shaped like its weight) applied.

        Raises:
            ValueError: for grouped convs, non-zero padding modes, or a mask of the wrong shape.
        """
        cls._check_conv(conv)
        w = conv.weight.detach()
        mask = check_mask(weight_mask, w, "weight mask")
        w2 = gemm_view(w * mask)
        used = torch.nonzero(gemm_view(mask).any(0)).flatten()
        return cls(w2.index_select(1, used), bias_copy(conv), *split_columns(used, conv.kernel_size),
                   **cls.geometry(conv))

    def weight2d(self) -> Tensor:
        """The CSR weight as a dense ``[O, K_used]`` tensor."""
        return self.sparse_weight.to_dense()

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
        module.sparse_weight = CSRWeight.placeholder((o, k), int(spec["nnz"]))
        return module

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, nnz={self.sparse_weight.nnz}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        x, unbatched = self._batched(x)
        xp = F.pad(x, self.pad) if any(self.pad) else x
        n, c, hp, wp = xp.shape
        (sh, sw), (dh, dw) = self.stride, self.dilation
        ho, wo = self._output_hw(x, hp, wp)
        k_used = int(self.col_c.numel())
        if k_used == 0:
            out = self._bias_only(xp, n, ho, wo)
            return out.squeeze(0) if unbatched else out
        xt = xp.reshape(n, c * hp * wp).t().contiguous()  # [C*Hp*Wp, N]
        base = self.col_c * (hp * wp) + self.col_kh * (dh * wp) + self.col_kw * dw
        span = im2col_span(c, hp, wp, ho, wo, sh, sw)
        cols = xt.as_strided((span, ho, wo, n), (n, sh * wp * n, sw * n, 1))[base]  # [K, ho, wo, N]
        out = self.sparse_weight.matmul(cols.reshape(k_used, ho * wo * n), self.bias)  # [O, ho*wo*N]
        out = out.view(self.out_channels, ho, wo, n).permute(3, 0, 1, 2).contiguous()
        return out.squeeze(0) if unbatched else out
