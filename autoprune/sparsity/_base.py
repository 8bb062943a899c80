"""The sparsity-type contract, the registry, and the two selection helpers.

A sparsity type answers one question for ADMM's Z-step: given a weight and a
pruning rate, what is the closest weight (in Euclidean distance) that lies in the
type's constraint set? For every type here that is "keep the groups of largest L2
norm", so a type is mostly a definition of its groups.

Weights are conv weights ``[O, I/groups, kh, kw]`` (any number of spatial dims) or
linear weights ``[O, I]``. The GEMM view is ``W.reshape(O, -1)``: row ``o`` is filter
``o``, and the ``K = I/groups * kh * kw`` columns are in im2col order ``(c, kh, kw)``,
the same order as :func:`torch.nn.functional.unfold`.
"""

from __future__ import annotations

import abc
import itertools
import math
import re
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from autoprune.errors import UserError, unknown_name

__all__ = [
    "GroupSparsity",
    "SparsityType",
    "describe_sparsity_types",
    "get_sparsity",
    "keep_count",
    "list_sparsity_types",
    "register_sparsity",
    "topk_mask",
]

#: Upper bound on the number of masks :meth:`SparsityType.feasible_masks` builds.
FEASIBLE_LIMIT = 100_000


# --------------------------------------------------------------------------- helpers


def keep_count(n_groups: int, rate: float) -> int:
    """Number of groups kept when pruning ``rate`` of ``n_groups``.

    ``n - floor(n * rate + 1e-9)``, never below 1, so a layer is never emptied.
    The ``1e-9`` makes ``keep_count(10, 0.3) == 7`` despite floating point.

    Args:
        n_groups: Number of groups (at least 1).
        rate: Fraction to prune, in ``[0, 1)``.

    Returns:
        The number of groups to keep, in ``[1, n_groups]``.

    Example:
        >>> keep_count(10, 0.3), keep_count(3, 0.5), keep_count(4, 0.99)
        (7, 2, 1)
    """
    if n_groups < 1:
        raise ValueError(f"keep_count needs at least one group, got n_groups={n_groups}")
    return max(1, min(n_groups, n_groups - math.floor(n_groups * rate + 1e-9)))


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D score tensor.

    Deterministic on every device: among equal scores the lower index wins. NaN
    scores count as smallest. Linear time: the k-th largest value is found with
    ``topk`` (on long inputs, first narrowed to a band around it estimated from a
    strided sample, which only affects speed, never the result), then ties at that
    value are settled by a cumulative sum.

    Args:
        scores: 1-D tensor of scores.
        k: How many entries to keep, ``0 <= k <= scores.numel()``.

    Returns:
        A bool tensor shaped like ``scores`` with exactly ``k`` True entries.

    Example:
        >>> topk_mask(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2).tolist()
        [False, True, True, False]
        >>> topk_mask(torch.tensor([2.0, 2.0, 2.0]), 2).tolist()
        [True, True, False]
    """
    if scores.dim() != 1:
        raise ValueError(f"topk_mask needs a 1-D tensor, got shape {tuple(scores.shape)}")
    n = scores.numel()
    if not 0 <= k <= n:
        raise ValueError(f"topk_mask: k must be in [0, {n}], got {k}")
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    s = scores.detach()
    if s.is_floating_point():
        s = torch.nan_to_num(s, nan=-math.inf)
    thr = _kth_largest_banded(s, k) if n >= _BAND_MIN else None
    if thr is None:
        thr = _kth_largest(s, k)
    above = s > thr
    tied = s == thr
    need = k - int(above.sum())
    if int(tied.sum()) == need:  # the usual case: no tie at the threshold to settle
        return above | tied
    return above | (tied & (torch.cumsum(tied, 0) <= need))


_BAND_MIN = 1 << 18  # below this many scores a plain topk is fast enough
_BAND_SAMPLE = 1 << 16


def _kth_largest(s: Tensor, k: int) -> Tensor:
    """The k-th largest value (1-based), from whichever end is shorter."""
    n = s.numel()
    if k <= n - k + 1:
        return torch.topk(s, k, largest=True, sorted=False).values.min()
    return torch.topk(s, n - k + 1, largest=False, sorted=False).values.max()


def _kth_largest_banded(s: Tensor, k: int) -> Tensor | None:
    """The k-th largest value, searched only among scores in a band around it.

    The band comes from a strided sample (about ±8 binomial standard deviations
    around the sample's matching rank). Returns ``None`` when the band turns out not
    to contain the k-th value, and the caller falls back to a full ``topk``.
    """
    n = s.numel()
    sample = s[:: n // _BAND_SAMPLE]
    ns = sample.numel()
    pos = k / n * ns
    margin = 4.0 * math.sqrt(ns) + 8
    hi_rank = math.floor(pos - margin)  # the hi_rank-th largest of the sample bounds the band from above
    lo_rank = math.ceil(pos + margin)
    inside = torch.ones_like(s, dtype=torch.bool)
    n_above = 0
    if hi_rank >= 1:
        hi = torch.kthvalue(sample, ns - hi_rank + 1).values
        above = s > hi
        n_above = int(above.sum())
        inside = ~above
    if lo_rank <= ns:
        lo = torch.kthvalue(sample, ns - lo_rank + 1).values
        inside &= s >= lo
    band = s[inside]
    need = k - n_above
    if not 1 <= need <= band.numel():
        return None
    return _kth_largest(band, need)


def gemm_view(weight: Tensor) -> Tensor:
    """``weight.reshape(O, -1)``: rows are filters, columns im2col ``(c, kh, kw)`` positions."""
    return weight.reshape(weight.shape[0], -1)


def squares(weight: Tensor) -> Tensor:
    """Squared entries in float32 (float64 stays float64), detached."""
    w = weight.detach()
    if w.dtype != torch.float64:
        w = w.float()
    return w * w


# --------------------------------------------------------------------------- contract


class SparsityType(abc.ABC):
    """One kind of sparsity: its groups, its Euclidean projection, and its mask.

    Subclasses set the class variables, implement :meth:`group_scores` and
    :meth:`mask`, and are registered with :func:`register_sparsity`. Most types
    should subclass :class:`GroupSparsity` instead, which needs only the groups.

    Class variables:
        name: Registry name (``"filter"``); lookups are case-insensitive.
        description: One line for ``--help`` and reports.
        structured: ``"out"`` when whole output channels (GEMM rows) are removed,
            ``"in"`` when whole input channels are, ``None`` otherwise.
        examples: Names that :func:`get_sparsity` accepts for this type and that the
            shared test suite runs; defaults to ``(name,)``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    structured: ClassVar[str | None] = None
    examples: ClassVar[tuple[str, ...]] = ()

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str) -> SparsityType | None:
        """Instance for a (lower-cased, stripped) name, or ``None`` if it is not ours.

        Parametrised types (``"2:4"``) override this to parse their name.
        """
        return cls() if name == cls.name else None

    @property
    def label(self) -> str:
        """The name this instance is spelled with (``"filter"``, ``"2:4"``)."""
        return self.name

    @property
    def implied_rate(self) -> float | None:
        """The rate the type fixes by itself (n:m), or ``None`` when the user picks it."""
        return None

    def __repr__(self) -> str:
        return f"get_sparsity({self.label!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.label == other.label  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.label))

    # -- validation -----------------------------------------------------------------

    def check_rate(self, rate: float | None, *, where: str = "") -> float:
        """Validate a pruning rate and return it as a float.

        Args:
            rate: Fraction of groups to prune, in ``[0, 1)``. Types with an
                :attr:`implied_rate` accept ``None`` (or that same value).
            where: Context appended to the message, e.g. ``"layer features.0"``.

        Returns:
            The rate as a float.

        Raises:
            UserError: "The 'rate' parameter of filter sparsity must be in [0, 1).
                Got 1.2 instead."
        """
        implied = self.implied_rate
        suffix = f" ({where})" if where else ""
        if implied is not None:
            if rate is None:
                return implied
            if _is_real(rate) and abs(float(rate) - implied) <= 1e-6:
                return implied
            raise UserError(
                f"The 'rate' parameter of {self.label} sparsity is implied by the pattern "
                f"({implied:g}); leave it out. Got {rate!r} instead{suffix}."
            )
        if not _is_real(rate) or not 0.0 <= float(rate) < 1.0:
            raise UserError(
                f"The 'rate' parameter of {self.label} sparsity must be in [0, 1). Got {rate!r} instead{suffix}."
            )
        return float(rate)

    def applies_to(self, weight: Tensor) -> str | None:
        """``None`` if this type can prune ``weight``, else a short reason why not."""
        if weight.dim() < 2:
            return f"{self.label} sparsity needs a conv or linear weight (2-D or more), got shape {tuple(weight.shape)}"
        return None

    def _prepare(self, weight: Tensor, rate: float | None) -> float:
        """Shared checks at the top of :meth:`mask`."""
        reason = self.applies_to(weight)
        if reason is not None:
            raise UserError(reason)
        return self.check_rate(rate)

    # -- the projection ---------------------------------------------------------------

    @abc.abstractmethod
    def group_scores(self, weight: Tensor) -> Tensor:
        """Squared L2 norm of each group, 1-D, float32 (float64 for float64 weights)."""

    @abc.abstractmethod
    def mask(self, weight: Tensor, rate: float) -> Tensor:
        """Bool tensor shaped like ``weight``: the support of :meth:`project`."""

    def project(self, weight: Tensor, rate: float) -> Tensor:
        """Euclidean projection of ``weight`` onto the set: ``weight * mask(weight, rate)``.

        Same dtype and device as ``weight``; zeros outside the mask even if the
        weight holds inf/NaN there.
        """
        return weight.masked_fill(~self.mask(weight, rate), 0)

    def kept_weights(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> int:
        """How many weights the mask keeps for a weight of ``shape`` (what ``mask().sum()`` is)."""
        raise NotImplementedError(f"{type(self).__name__} does not define kept_weights")

    def feasible_masks(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> Tensor:
        """Every mask the type allows for ``shape`` at ``rate``, stacked ``[N, *shape]``.

        A reference definition of the constraint set for tiny shapes: the shared
        tests check :meth:`project` against it by brute force. Raises ``ValueError``
        when there would be more than 100 000 masks.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define feasible_masks")


def _is_real(x: object) -> bool:
    if isinstance(x, bool):
        return False
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(v)


class GroupSparsity(SparsityType):
    """A type whose groups partition the weight: keep the ``keep_count(G, rate)`` groups
    of largest L2 norm, zero the rest.

    Subclasses implement :meth:`group_scores` (``G`` squared norms) and
    :meth:`expand_group_mask` (a ``[G]`` bool mask → a mask shaped like the weight);
    mask, projection and the reference constraint set follow.
    """

    @abc.abstractmethod
    def expand_group_mask(self, group_mask: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Bool mask over the weight that keeps exactly the weights of the kept groups."""

    def n_groups(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Number of groups of a weight of ``shape``."""
        return int(self.group_scores(torch.zeros(tuple(shape), device="meta")).numel())

    def mask(self, weight: Tensor, rate: float) -> Tensor:
        rate = self._prepare(weight, rate)
        with torch.no_grad():
            scores = self.group_scores(weight)
            keep = topk_mask(scores, keep_count(scores.numel(), rate))
            return self.expand_group_mask(keep, weight.shape)

    def kept_weights(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> int:
        """Kept groups times the group size (groups of equal size; override otherwise)."""
        rate = self.check_rate(rate)
        g = self.n_groups(shape)
        return keep_count(g, rate) * (math.prod(shape) // g)

    def group_members(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``[G, *shape]`` bool: row ``g`` marks the weights of group ``g`` (small shapes only)."""
        g = self.n_groups(shape)
        eye = torch.eye(g, dtype=torch.bool)
        return torch.stack([self.expand_group_mask(eye[i], shape) for i in range(g)])

    def feasible_masks(self, shape: tuple[int, ...] | torch.Size, rate: float | None) -> Tensor:
        rate = self.check_rate(rate)
        members = self.group_members(shape).reshape(-1, math.prod(shape)).float()
        g = members.shape[0]
        combos = combinations(g, keep_count(g, rate))
        chosen = torch.zeros(len(combos), g)
        chosen.scatter_(1, combos, 1.0)
        return (chosen @ members > 0).reshape(-1, *shape)


def combinations(n: int, k: int, limit: int = FEASIBLE_LIMIT) -> Tensor:
    """``[C(n, k), k]`` long tensor of index subsets in lexicographic order."""
    count = math.comb(n, k)
    if count > limit:
        raise ValueError(f"C({n}, {k}) = {count} subsets is more than the limit of {limit}")
    return torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(count, k)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[SparsityType]] = {}
_NAME_RE = re.compile(r"^[a-z0-9_+:\-]+$")

T = TypeVar("T", bound=type[SparsityType])


def register_sparsity(cls: T) -> T:
    """Class decorator: add a :class:`SparsityType` subclass to the registry.

    The shared test suite (``tests/sparsity_tests``) parametrises over the registry,
    so a registered type is tested from the day it is added.

    Example:
        >>> @register_sparsity
        ... class Block(GroupSparsity):          # doctest: +SKIP
        ...     name = "block"
        ...     description = "4x4 blocks of the GEMM matrix"
    """
    if not (isinstance(cls, type) and issubclass(cls, SparsityType)):
        raise TypeError(f"register_sparsity expects a SparsityType subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{cls.__name__}.name must be a lower-case name, got {name!r}")
    if not isinstance(getattr(cls, "description", None), str):
        raise TypeError(f"{cls.__name__} needs a 'description' string")
    if cls.structured not in (None, "out", "in"):
        raise ValueError(f"{cls.__name__}.structured must be 'out', 'in' or None, got {cls.structured!r}")
    old = _REGISTRY.get(name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"sparsity type '{name}' is already registered by {old.__qualname__}")
    if not cls.examples:
        cls.examples = (name,)
    _REGISTRY[name] = cls
    return cls


def unregister_sparsity(name: str) -> None:
    """Remove a registry entry (for tests that register throw-away types)."""
    _REGISTRY.pop(name, None)


def get_sparsity(name: str) -> SparsityType:
    """Instance of the sparsity type called ``name``.

    Args:
        name: ``"irregular"``, ``"filter"``, ``"channel"``, ``"shape"``,
            ``"filter+shape"``, or an N:M pattern such as ``"2:4"``. Case and
            surrounding spaces are ignored.

    Raises:
        UserError: for an unknown name (or a malformed N:M pattern).

    Example:
        >>> get_sparsity("2:4").implied_rate
        0.5
    """
    if not isinstance(name, str):
        raise UserError(f"A sparsity type name must be a string. Got {name!r} instead.")
    key = name.strip().lower()
    for cls in _REGISTRY.values():
        inst = cls.from_name(key)
        if inst is not None:
            return inst
    raise unknown_name(
        "sparsity type",
        name,
        list_sparsity_types(),
        hint="N:M patterns are written with numbers, e.g. '2:4'.",
    )


def list_sparsity_types() -> list[str]:
    """Registry names in registration order."""
    return list(_REGISTRY)


def describe_sparsity_types() -> dict[str, str]:
    """``{name: description}`` for every registered type."""
    return {name: cls.description for name, cls in _REGISTRY.items()}


def registered_class(name: str) -> type[SparsityType]:
    """The class registered under ``name`` (exact registry name)."""
    return _REGISTRY[name]
