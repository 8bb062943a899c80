"""Filter + shape sparsity: a sub-matrix of the GEMM matrix (rows and columns at once)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from autoprune.sparsity._base import (
    SparsityType,
    combinations,
    gemm_view,
    keep_count,
    register_sparsity,
    squares,
    topk_mask,
)


@register_sparsity
class FilterShapeSparsity(SparsityType):
    """Keep ``k_r = keep_count(O, rate)`` GEMM rows *and* ``k_c = keep_count(K, rate)``
    GEMM columns: what survives is the dense sub-matrix ``W[R][:, C]``.

    One rate applies to both rows and columns (so about ``(1 - rate)^2`` of the
    weights survive). The Euclidean projection maximises ``||W[R, C]||^2`` over row
    sets ``R`` and column sets ``C``; for a given ``R`` the best ``C`` is simply the
    ``k_c`` columns of largest ``||W[R, col]||^2`` (and vice versa). The joint
    problem is combinatorial, so:

    * **Exact** when ``min(C(O, k_r), C(K, k_c)) <= exact_limit`` (20 000): enumerate
      every subset of the side with fewer subsets and take the best response on the
      other side. Scores are summed in float64; among equal optima the first subset
      in lexicographic order wins.
    * **Otherwise alternating maximisation** (not guaranteed globally optimal):
      starting from the rows of largest norm, take the best columns for the rows,
      then the best rows for the columns, and so on; a side changes only when that
      strictly increases ``||W[R, C]||^2``, so it stops at a support where neither
      the rows nor the columns can be improved alone (a safety cap of ``max_rounds``
      rounds, never reached in practice, would leave the columns best for the rows
      only). It is run from both starts (rows first, columns first) and the better
      result is kept. On random small Gaussian weights this matches the exact
      projection in most cases (see ``tests/sparsity_tests``).

    ``group_scores`` is not defined: there are two kinds of groups. Use
    ``get_sparsity("filter").group_scores`` / ``get_sparsity("shape").group_scores``.
    """

    name = "filter+shape"
    description = (
        "filters and im2col columns at once (a dense sub-matrix of the GEMM matrix), one rate for both"
    )
    structured = "out"

    exact_limit: ClassVar[int] = 20_000
    max_rounds: ClassVar[int] = 50

    def group_scores(self, weight: Tensor) -> Tensor:
        raise NotImplementedError(
            "filter+shape has two kinds of groups (rows and columns); use the 'filter' and 'shape' group_scores"
        )

    def kept_counts(self, shape: tuple[int, ...] | torch.Size, rate: float) -> tuple[int, int]:
        """``(k_r, k_c)``: rows and columns kept for a weight of ``shape``."""
        rows = shape[0]
        cols = math.prod(shape[1:])
        return keep_count(rows, rate), keep_count(cols, rate)

    def kept_weights(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> int:
        k_r, k_c = self.kept_counts(shape, self.check_rate(rate))
        return k_r * k_c

    def mask(self, weight: Tensor, rate: float) -> Tensor:
        rate = self._prepare(weight, rate)
        with torch.no_grad():
            s = gemm_view(squares(weight)).double()
            rows, cols = self.select(s, *self.kept_counts(weight.shape, rate))
            return (rows[:, None] & cols[None, :]).reshape(weight.shape)

    def select(self, scores: Tensor, k_r: int, k_c: int) -> tuple[Tensor, Tensor]:
        """Kept rows and columns (1-D bool) for a matrix of squared weights ``[O, K]``."""
        o, k = scores.shape
        n_row_sets = math.comb(o, k_r)
        n_col_sets = math.comb(k, k_c)
        if min(n_row_sets, n_col_sets) <= self.exact_limit:
            if n_row_sets <= n_col_sets:
                return _enumerate(scores, k_r, k_c, n_row_sets)
            cols, rows = _enumerate(scores.t(), k_c, k_r, n_col_sets)
            return rows, cols
        return self._alternate(scores, k_r, k_c)

    def _alternate(self, s: Tensor, k_r: int, k_c: int) -> tuple[Tensor, Tensor]:
        first = _climb(s, topk_mask(s.sum(1), k_r), k_r, k_c, self.max_rounds)
        cols, rows = _climb(s.t(), topk_mask(s.sum(0), k_c), k_c, k_r, self.max_rounds)
        if _value(s, rows, cols) > _value(s, *first):
            return rows, cols
        return first

    def feasible_masks(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> Tensor:
        rate = self.check_rate(rate)
        o, k = shape[0], math.prod(shape[1:])
        k_r, k_c = self.kept_counts(shape, rate)
        rows = torch.zeros(math.comb(o, k_r), o, dtype=torch.bool).scatter_(1, combinations(o, k_r), True)
        cols = torch.zeros(math.comb(k, k_c), k, dtype=torch.bool).scatter_(1, combinations(k, k_c), True)
        if rows.shape[0] * cols.shape[0] > 100_000:
            raise ValueError("too many filter+shape masks to enumerate")
        both = rows[:, None, :, None] & cols[None, :, None, :]
        return both.reshape(-1, *shape)


def _value(s: Tensor, rows: Tensor, cols: Tensor) -> float:
    return float(rows.to(s.dtype) @ s @ cols.to(s.dtype))


def _enumerate(s: Tensor, k_r: int, k_c: int, n_sets: int) -> tuple[Tensor, Tensor]:
    """Exact: try every row subset (``n_sets`` of them), each with its best columns."""
    o, k = s.shape
    combos = combinations(o, k_r, limit=n_sets).to(s.device)
    batch = max(1, (1 << 22) // k)
    best_value, best_index, best_sums = None, 0, None
    for start in range(0, combos.shape[0], batch):
        part = combos[start : start + batch]
        chosen = torch.zeros(part.shape[0], o, dtype=s.dtype, device=s.device).scatter_(1, part, 1.0)
        col_sums = chosen @ s
        values = torch.topk(col_sums, k_c, dim=1).values.sum(1)
        i = int(torch.argmax(values))
        v = float(values[i])
        if best_value is None or v > best_value:
            best_value, best_index, best_sums = v, start + i, col_sums[i]
    rows = torch.zeros(o, dtype=torch.bool, device=s.device)
    rows[combos[best_index]] = True
    return rows, topk_mask(best_sums, k_c)


def _climb(s: Tensor, rows: Tensor, k_r: int, k_c: int, max_rounds: int) -> tuple[Tensor, Tensor]:
    """Alternating best responses from ``rows``; a side changes only on strict improvement."""
    cols = topk_mask(rows.to(s.dtype) @ s, k_c)
    for _ in range(max_rounds):
        row_sums = s @ cols.to(s.dtype)
        new_rows = topk_mask(row_sums, k_r)
        if not float(row_sums[new_rows].sum()) > float(row_sums[rows].sum()):
            break  # rows are already a best response to cols, and cols to rows
        rows = new_rows
        col_sums = rows.to(s.dtype) @ s
        new_cols = topk_mask(col_sums, k_c)
        if not float(col_sums[new_cols].sum()) > float(col_sums[cols].sum()):
            break
        cols = new_cols
    return rows, cols
