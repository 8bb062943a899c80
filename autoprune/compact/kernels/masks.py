"""What a weight mask allows: which im2col columns it keeps, whether it is 2:4, its shape checked."""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.sparsity import gemm_view


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


def check_mask(mask: Tensor, weight: Tensor, what: str) -> Tensor:
    """``mask`` as a bool tensor on the weight's device.

    Raises:
        ValueError: if its shape is not the weight's.
    """
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(
            f"The {what} must have the weight's shape {tuple(weight.shape)}. Got {tuple(mask.shape)} instead."
        )
    return mask.detach().to(device=weight.device).bool()
