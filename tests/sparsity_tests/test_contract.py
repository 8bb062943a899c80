"""The contract every registered sparsity type must keep.

Parametrised over ``list_sparsity_types()`` at collection time (each type's
``examples``: ``"n:m"`` runs as ``"2:4"`` and ``"1:4"``), so a type added with
``@register_sparsity`` joins this suite without editing it. A new type must define
``kept_weights`` and ``feasible_masks`` (or subclass ``GroupSparsity``, which
derives both from its groups); the brute-force test checks ``project`` against
``feasible_masks`` on tiny weights.
"""

from __future__ import annotations

import functools

import pytest
import torch

from autoprune.errors import UserError
from autoprune.sparsity import (
    FilterShapeSparsity,
    GroupSparsity,
    NMSparsity,
    SparsityType,
    get_sparsity,
    keep_count,
    list_sparsity_types,
)
from autoprune.sparsity._base import registered_class

RATES = (0.0, 0.3, 0.5, 0.75)
SEEDS = (0, 1, 2)
# conv [O, I/groups, kh, kw] and linear [O, I]
SHAPES = ((4, 3, 2, 2), (6, 2, 3, 3), (4, 4, 3, 3), (5, 8))
# small enough to enumerate every feasible mask (irregular on 16 weights: <= C(16, 8) = 12870)
TINY_SHAPES = ((2, 2, 1, 1), (2, 1, 2, 2), (2, 2, 2, 2), (3, 4), (4, 4), (2, 8))

EXAMPLES = [ex for name in list_sparsity_types() for ex in registered_class(name).examples]


def _rates(sp: SparsityType) -> tuple[float, ...]:
    return (sp.implied_rate,) if sp.implied_rate is not None else RATES


def _cases(shapes: tuple[tuple[int, ...], ...]) -> list:
    """(example, shape, rate) for every combination the type applies to."""
    out = []
    for ex in EXAMPLES:
        sp = get_sparsity(ex)
        for shape in shapes:
            if sp.applies_to(torch.empty(shape)) is not None:
                continue
            for rate in _rates(sp):
                out.append(pytest.param(ex, shape, rate, id=f"{ex}-{'x'.join(map(str, shape))}-r{rate:g}"))
    return out


def _weight(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


@functools.cache
def _feasible(example: str, shape: tuple[int, ...], rate: float) -> torch.Tensor:
    return get_sparsity(example).feasible_masks(shape, rate)


# --------------------------------------------------------------------- 1. exact counts


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(SHAPES))
def test_kept_count_is_exact(example: str, shape: tuple[int, ...], rate: float, seed: int) -> None:
    sp = get_sparsity(example)
    mask = sp.mask(_weight(shape, seed), rate)
    assert int(mask.sum()) == sp.kept_weights(shape, rate)

    if isinstance(sp, GroupSparsity):
        members = sp.group_members(shape)
        kept = [bool(mask[g].all()) for g in members]
        dropped = [not bool(mask[g].any()) for g in members]
        assert all(k or d for k, d in zip(kept, dropped)), "a group is only partly kept"
        assert sum(kept) == keep_count(len(members), rate)
    elif isinstance(sp, FilterShapeSparsity):
        m2 = mask.reshape(shape[0], -1)
        rows, cols = m2.any(1), m2.any(0)
        assert (m2 == (rows[:, None] & cols[None, :])).all(), "support is not a sub-matrix"
        assert (int(rows.sum()), int(cols.sum())) == sp.kept_counts(shape, rate)
    elif isinstance(sp, NMSparsity):
        runs = mask.reshape(shape[0], -1).reshape(-1, sp.m)
        assert (runs.sum(1) == sp.n).all()


# --------------------------------------------------------------------- 2. idempotence


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(SHAPES))
def test_projection_is_idempotent(example: str, shape: tuple[int, ...], rate: float, seed: int) -> None:
    sp = get_sparsity(example)
    once = sp.project(_weight(shape, seed), rate)
    assert torch.equal(sp.project(once, rate), once)


# --------------------------------------------------------------------- 3. optimality


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(TINY_SHAPES))
def test_projection_is_closest_feasible_point(
    example: str, shape: tuple[int, ...], rate: float, seed: int
) -> None:
    sp = get_sparsity(example)
    w = _weight(shape, seed).double()
    masks = _feasible(example, shape, rate)
    mask = sp.mask(w, rate)
    assert (masks == mask).flatten(1).all(1).any(), "the mask is not in the constraint set"

    best_other = float(((w * w) * ~masks).flatten(1).sum(1).min())
    dist = float(((w - sp.project(w, rate)) ** 2).sum())
    assert dist <= best_other + 1e-6 * (1 + best_other)


# --------------------------------------------------------------------- 4. mask == support


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(SHAPES))
def test_mask_is_the_support_of_the_projection(
    example: str, shape: tuple[int, ...], rate: float, seed: int
) -> None:
    sp = get_sparsity(example)
    w = _weight(shape, seed)
    w = w + torch.where(w >= 0, 0.1, -0.1)  # no zero weight, by construction: support == kept
    mask = sp.mask(w, rate)
    projected = sp.project(w, rate)
    assert torch.equal(projected, w * mask)
    assert torch.equal(projected != 0, mask)
    assert int(mask.sum()) == sp.kept_weights(shape, rate)  # and as many as the type keeps


# --------------------------------------------------------------------- 5. types and errors


@pytest.mark.parametrize(("example", "shape", "rate"), _cases(SHAPES))
def test_mask_is_bool_and_shaped_like_weight(example: str, shape: tuple[int, ...], rate: float) -> None:
    sp = get_sparsity(example)
    w = _weight(shape, 0)
    mask = sp.mask(w, rate)
    assert mask.dtype == torch.bool
    assert mask.shape == w.shape
    assert mask.device == w.device
    p = sp.project(w, rate)
    assert p.dtype == w.dtype and p.shape == w.shape


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("bad", (-0.1, 1.0, 1.2, float("nan"), float("inf"), "half", True))
def test_rates_outside_unit_interval_are_user_errors(example: str, bad: object) -> None:
    sp = get_sparsity(example)
    w = _weight((4, 4, 1, 1), 0)
    with pytest.raises(UserError, match="'rate' parameter"):
        sp.check_rate(bad)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="'rate' parameter"):
        sp.mask(w, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("example", EXAMPLES)
def test_rate_check_names_the_place(example: str) -> None:
    with pytest.raises(UserError, match=r"\(layer features\.0\)"):
        get_sparsity(example).check_rate(1.2, where="layer features.0")


def test_rate_message_shape() -> None:
    with pytest.raises(UserError) as info:
        get_sparsity("filter").check_rate(1.2)
    assert str(info.value) == "The 'rate' parameter of filter sparsity must be in [0, 1). Got 1.2 instead."
    with pytest.raises(UserError) as info:
        get_sparsity("filter").check_rate(1.2, where="layer features.0")
    assert str(info.value) == (
        "The 'rate' parameter of filter sparsity must be in [0, 1). Got 1.2 instead (layer features.0)."
    )


@pytest.mark.parametrize("name", ("blocky", "2:", "n:m", "", "filter shape"))
def test_unknown_name_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="unknown sparsity type"):
        get_sparsity(name)


@pytest.mark.parametrize("name", ("0:4", "5:4"))
def test_bad_nm_pattern_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="1 <= N <= M"):
        get_sparsity(name)


@pytest.mark.parametrize("example", [ex for ex in EXAMPLES if isinstance(get_sparsity(ex), NMSparsity)])
def test_nm_needs_row_length_divisible_by_m(example: str) -> None:
    sp = get_sparsity(example)
    w = _weight((6, 2, 3, 3), 0)  # K = 18
    reason = sp.applies_to(w)
    assert reason is not None and "K=18" in reason and str(sp.m) in reason
    with pytest.raises(UserError, match="K=18"):
        sp.mask(w, None)


@pytest.mark.parametrize("example", [ex for ex in EXAMPLES if get_sparsity(ex).implied_rate is not None])
def test_implied_rate(example: str) -> None:
    sp = get_sparsity(example)
    assert sp.check_rate(None) == sp.implied_rate
    assert sp.check_rate(sp.implied_rate) == sp.implied_rate
    with pytest.raises(UserError, match="implied"):
        sp.check_rate(sp.implied_rate / 2 + 0.01)


@pytest.mark.parametrize("example", [ex for ex in EXAMPLES if get_sparsity(ex).implied_rate is None])
def test_rate_is_required(example: str) -> None:
    with pytest.raises(UserError, match="'rate' parameter"):
        get_sparsity(example).check_rate(None)


# --------------------------------------------------------------------- dtypes, devices, ties


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float64))
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(((4, 4, 3, 3), (5, 8))))
def test_low_precision_weights(example: str, shape: tuple[int, ...], rate: float, dtype: torch.dtype) -> None:
    sp = get_sparsity(example)
    w = _weight(shape, 0).to(dtype)
    assert torch.equal(sp.mask(w, rate), sp.mask(w.float(), rate))
    p = sp.project(w, rate)
    assert p.dtype == dtype
    assert torch.equal(p, w * sp.mask(w, rate))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize(("example", "shape", "rate"), _cases(((4, 4, 3, 3), (5, 8))))
def test_cuda_matches_cpu(example: str, shape: tuple[int, ...], rate: float, dtype: torch.dtype) -> None:
    sp = get_sparsity(example)
    w = _weight(shape, 0).to(dtype)
    mask = sp.mask(w.cuda(), rate)
    assert mask.device.type == "cuda"
    assert torch.equal(mask.cpu(), sp.mask(w, rate))
    # ties must break the same way on both devices
    ones = torch.ones(shape, dtype=dtype)
    assert torch.equal(sp.mask(ones.cuda(), rate).cpu(), sp.mask(ones, rate))


@pytest.mark.parametrize(("example", "shape", "rate"), _cases(SHAPES))
def test_ties_are_deterministic(example: str, shape: tuple[int, ...], rate: float) -> None:
    """Equal weights: every call gives the same mask, and it keeps the earliest weights."""
    sp = get_sparsity(example)
    ones = torch.ones(shape)
    mask = sp.mask(ones, rate)
    assert torch.equal(mask, sp.mask(ones.clone(), rate))
    assert int(mask.sum()) == sp.kept_weights(shape, rate)
    # lower index wins: the first weight is always kept
    assert bool(mask.reshape(-1)[0])


def test_registry_lists_the_shipped_types() -> None:
    assert list_sparsity_types()[:6] == ["irregular", "filter", "channel", "shape", "filter+shape", "n:m"]


@pytest.mark.parametrize("name", list_sparsity_types())
def test_registered_types_are_complete(name: str) -> None:
    cls = registered_class(name)
    assert cls.description and cls.structured in (None, "out", "in")
    assert cls.examples
    for ex in cls.examples:
        sp = get_sparsity(ex)
        assert isinstance(sp, cls)
        assert get_sparsity(ex.upper()) == sp
        # kept_weights and feasible_masks are part of the contract
        shape = next(s for s in TINY_SHAPES if sp.applies_to(torch.empty(s)) is None)
        rate = _rates(sp)[-1]
        masks = sp.feasible_masks(shape, rate)
        assert masks.dtype == torch.bool and masks.shape[1:] == shape
        assert (masks.flatten(1).sum(1) == sp.kept_weights(shape, rate)).all()
