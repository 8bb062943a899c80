"""N:M fine-grained structured sparsity (e.g. 2:4, as sparse tensor cores run it)."""

from __future__ import annotations

import itertools
import math
import re

import torch
from torch import Tensor

from autoprune.errors import UserError
from autoprune.sparsity._base import (
    FEASIBLE_LIMIT,
    SparsityType,
    combinations,
    gemm_view,
    register_sparsity,
    squares,
)

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_PAIRWISE_MAX_M = 16  # up to here m(m-1)/2 comparisons beat a sort of every run


def _keep_by_rank(runs: Tensor, n: int) -> Tensor:
    """``[R, m]`` scores -> bool mask of the ``n`` largest per row; ties to the lower index.

    The rank of entry ``i`` is the number of entries that beat it: ``j`` beats ``i``
    when it is larger, or equal with a lower index.
    """
    m = runs.shape[1]
    cols = runs.t().contiguous()  # [m, R]: each comparison reads two contiguous rows
    rank = torch.zeros(cols.shape, dtype=torch.uint8, device=runs.device)
    for i in range(m):
        for j in range(i + 1, m):
            j_wins = cols[j] > cols[i]
            rank[i] += j_wins
            rank[j] += ~j_wins
    return (rank < n).t()


@register_sparsity
class NMSparsity(SparsityType):
    """In every run of ``m`` consecutive weights of a GEMM row keep the ``n`` largest.

    Runs are along the reduction dimension: ``W.reshape(O, -1)`` rows cut into
    chunks of ``m`` in im2col order ``(c, kh, kw)``, so ``K`` must be divisible by
    ``m``. Ties go to the lower index. The rate is fixed by the pattern
    (``1 - n/m``); :meth:`check_rate` accepts ``None`` or that value.

    Registered as ``"n:m"``; ask for a pattern: ``get_sparsity("2:4")``.

    Args:
        n: Weights kept per run, ``1 <= n <= m``.
        m: Run length.

    Example:
        >>> w = torch.tensor([[1.0, -4.0, 3.0, 2.0]])
        >>> NMSparsity(2, 4).project(w, None).tolist()
        [[0.0, -4.0, 3.0, 0.0]]
    """

    name = "n:m"
    description = (
        "N:M: in each run of M consecutive weights along the input dimension keep the N largest (e.g. 2:4)"
    )
    structured = None
    examples = ("2:4", "1:4")

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if not (isinstance(n, int) and isinstance(m, int)) or not 1 <= n <= m:
            raise UserError(
                f"An N:M sparsity pattern needs whole numbers with 1 <= N <= M. Got {n}:{m} instead."
            )
        self.n = n
        self.m = m

    @classmethod
    def from_name(cls, name: str) -> NMSparsity | None:
        match = _PATTERN.match(name)
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def implied_rate(self) -> float:
        return 1.0 - self.n / self.m

    def applies_to(self, weight: Tensor) -> str | None:
        reason = super().applies_to(weight)
        if reason is not None:
            return reason
        k = math.prod(weight.shape[1:])
        if k % self.m:
            return (
                f"{self.label} sparsity needs the GEMM row length K (in_channels/groups * kernel size) "
                f"to be divisible by {self.m}; this weight has K={k}"
            )
        return None

    def group_scores(self, weight: Tensor) -> Tensor:
        """Squared magnitude of every weight (flattened): each run keeps its ``n`` largest."""
        return squares(weight).reshape(-1)

    def mask(self, weight: Tensor, rate: float | None = None) -> Tensor:
        self._prepare(weight, rate)
        if self.n == self.m:
            return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        with torch.no_grad():
            runs = torch.nan_to_num(gemm_view(squares(weight)).reshape(-1, self.m), nan=-math.inf)
            if self.m <= _PAIRWISE_MAX_M:
                keep = _keep_by_rank(runs, self.n)
            else:
                order = torch.sort(runs, dim=1, descending=True, stable=True).indices
                keep = torch.zeros(runs.shape, dtype=torch.bool, device=weight.device)
                keep.scatter_(1, order[:, : self.n], True)
            return keep.reshape(weight.shape)

    def project(self, weight: Tensor, rate: float | None = None) -> Tensor:
        return weight.masked_fill(~self.mask(weight, rate), 0)

    def kept_weights(self, shape: tuple[int, ...] | torch.Size, rate: float | None = None) -> int:
        self.check_rate(rate)
        return math.prod(shape) // self.m * self.n

    def feasible_masks(self, shape: tuple[int, ...] | torch.Size, rate: float | None = None) -> Tensor:
        self.check_rate(rate)
        runs = math.prod(shape) // self.m
        per_run = combinations(self.m, self.n)
        choices = torch.zeros(per_run.shape[0], self.m, dtype=torch.bool)
        choices.scatter_(1, per_run, True)
        count = choices.shape[0] ** runs
        if count > FEASIBLE_LIMIT:
            raise ValueError(f"{count} {self.label} masks is more than the limit of {FEASIBLE_LIMIT}")
        picks = torch.tensor(list(itertools.product(range(choices.shape[0]), repeat=runs)), dtype=torch.long)
        return choices[picks.reshape(count, runs)].reshape(count, *shape)
