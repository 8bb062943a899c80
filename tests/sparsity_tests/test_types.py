"""What each shipped type's groups are, plus the selection helpers and the registry."""

from __future__ import annotations

import itertools
import math
import pathlib
import textwrap

import pytest
import torch
import torch.nn.functional as F

from autoprune.errors import UserError
from autoprune.sparsity import (
    FilterShapeSparsity,
    GroupSparsity,
    get_sparsity,
    keep_count,
    list_sparsity_types,
    register_sparsity,
    topk_mask,
    unregister_sparsity,
)

pytest_plugins = ["pytester"]


# --------------------------------------------------------------------- keep_count / topk_mask


@pytest.mark.parametrize(
    ("n", "rate", "expected"),
    [(10, 0.0, 10), (10, 0.3, 7), (100, 0.29, 71), (3, 0.5, 2), (4, 0.75, 1), (1, 0.9, 1), (7, 0.999, 1)],
)
def test_keep_count(n: int, rate: float, expected: int) -> None:
    assert keep_count(n, rate) == expected


def test_keep_count_needs_a_group() -> None:
    with pytest.raises(ValueError):
        keep_count(0, 0.5)


def _reference_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[order[:k]] = True
    return out


@pytest.mark.parametrize("seed", range(5))
def test_topk_mask_matches_a_stable_sort_with_many_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (37,), generator=g).float()
    for k in range(scores.numel() + 1):
        mask = topk_mask(scores, k)
        assert int(mask.sum()) == k
        assert torch.equal(mask, _reference_topk(scores, k))


@pytest.mark.parametrize("kind", ("ties", "gauss", "sorted", "constant", "nan"))
def test_topk_mask_on_long_inputs(kind: str) -> None:
    """Long inputs take the sampled-band path; the result must not depend on it."""
    n = 300_000
    g = torch.Generator().manual_seed(1)
    scores = {
        "ties": lambda: torch.randint(0, 50, (n,), generator=g).float(),
        "gauss": lambda: torch.randn(n, generator=g),
        "sorted": lambda: torch.arange(n, dtype=torch.float32),
        "constant": lambda: torch.ones(n),
        "nan": lambda: torch.randn(n, generator=g).masked_fill(
            torch.rand(n, generator=g) < 0.3, float("nan")
        ),
    }[kind]()
    order = torch.sort(torch.nan_to_num(scores, nan=-math.inf), descending=True, stable=True).indices
    for k in (1, 7, n // 100, n // 3, n // 2, n - 5000, n - 1):
        mask = topk_mask(scores, k)
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(mask, expected)


def test_topk_mask_ties_go_to_the_lower_index() -> None:
    assert topk_mask(torch.tensor([2.0, 2.0, 2.0, 2.0]), 2).tolist() == [True, True, False, False]
    assert topk_mask(torch.tensor([1.0, 3.0, 3.0, 2.0]), 1).tolist() == [False, True, False, False]


def test_topk_mask_treats_nan_as_smallest() -> None:
    assert topk_mask(torch.tensor([float("nan"), 1.0, 0.5]), 2).tolist() == [False, True, True]


def test_topk_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        topk_mask(torch.ones(2, 2), 1)
    with pytest.raises(ValueError):
        topk_mask(torch.ones(3), 4)


# --------------------------------------------------------------------- what the groups are


def test_filter_groups_are_gemm_rows() -> None:
    w = torch.randn(6, 3, 3, 3)
    sp = get_sparsity("filter")
    assert torch.allclose(sp.group_scores(w), (w.reshape(6, -1) ** 2).sum(1))
    w[2] *= 10
    w[4] *= 10
    kept = sp.mask(w, 0.7).reshape(6, -1).all(1)  # keep_count(6, 0.7) == 2
    assert kept.tolist() == [False, False, True, False, True, False]


def test_channel_groups_are_input_channels() -> None:
    w = torch.randn(4, 5, 3, 3)
    w[:, 1] *= 10
    w[:, 3] *= 10
    sp = get_sparsity("channel")
    assert torch.allclose(sp.group_scores(w), (w**2).sum((0, 2, 3)))
    mask = sp.mask(w, 0.6)
    assert mask[:, [1, 3]].all() and not mask[:, [0, 2, 4]].any()


def test_channel_on_grouped_conv_prunes_the_same_index_in_every_group() -> None:
    """W.shape[1] = in_channels / groups: channel c is input c of every group."""
    conv = torch.nn.Conv2d(8, 6, 3, groups=2, bias=False)
    w = conv.weight.detach()  # [6, 4, 3, 3]
    mask = get_sparsity("channel").mask(w, 0.5)
    kept_local = mask.any(dim=(0, 2, 3)).nonzero().flatten().tolist()
    assert len(kept_local) == 2
    x = torch.randn(1, 8, 7, 7)
    for c in range(4):
        if c in kept_local:
            continue
        for g in range(2):  # input channel g*4 + c no longer matters
            x2 = x.clone()
            x2[:, g * 4 + c] = 0
            assert torch.allclose(F.conv2d(x, w * mask, groups=2), F.conv2d(x2, w * mask, groups=2))


def test_shape_columns_are_unfold_rows() -> None:
    """A shape-pruned conv is a GEMM over only the kept rows of F.unfold(x)."""
    w = torch.randn(5, 3, 3, 2)
    sp = get_sparsity("shape")
    assert torch.allclose(sp.group_scores(w), (w.reshape(5, -1) ** 2).sum(0))
    mask = sp.mask(w, 0.5)
    cols = mask.reshape(5, -1)[0]
    assert (mask.reshape(5, -1) == cols).all()
    x = torch.randn(2, 3, 6, 6)
    unfolded = F.unfold(x, (3, 2))  # [N, C*kh*kw, L]
    gemm = w.reshape(5, -1)[:, cols] @ unfolded[:, cols]
    assert torch.allclose(F.conv2d(x, w * mask).flatten(2), gemm, atol=1e-5)


def test_shape_on_linear_equals_channel() -> None:
    w = torch.randn(7, 9)
    assert torch.equal(get_sparsity("shape").mask(w, 0.4), get_sparsity("channel").mask(w, 0.4))


def test_irregular_works_on_any_shape() -> None:
    bias = torch.tensor([0.1, -3.0, 2.0, 0.5])
    assert get_sparsity("irregular").mask(bias, 0.5).tolist() == [False, True, True, False]
    assert get_sparsity("filter").applies_to(bias) is not None


def test_nm_runs_follow_the_gemm_row() -> None:
    w = torch.tensor([[1.0, 5.0, 2.0, 4.0, 9.0, 0.0, 0.0, 8.0]])
    assert get_sparsity("2:4").mask(w, None).int().tolist() == [[0, 1, 0, 1, 1, 0, 0, 1]]
    assert get_sparsity("1:4").mask(w, None).int().tolist() == [[0, 1, 0, 0, 1, 0, 0, 0]]
    # conv: runs are consecutive im2col positions (c, kh, kw)
    conv = torch.arange(16.0).reshape(1, 4, 2, 2).flip(-1)
    mask = get_sparsity("2:4").mask(conv, None).reshape(4, 4)
    assert (mask.sum(1) == 2).all()


@pytest.mark.parametrize("pattern", ("2:4", "3:8", "5:16", "8:32"))
def test_nm_ties_go_to_the_lower_index(pattern: str) -> None:
    """m <= 16 ranks by pairwise comparison, larger m sorts; both must match a stable sort."""
    sp = get_sparsity(pattern)
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-3, 4, (16, 2 * sp.m), generator=g).float()  # many equal magnitudes
    runs = w.abs().reshape(-1, sp.m)
    order = torch.sort(runs, dim=1, descending=True, stable=True).indices
    expected = torch.zeros(runs.shape, dtype=torch.bool).scatter_(1, order[:, : sp.n], True)
    assert torch.equal(sp.mask(w, None), expected.reshape(w.shape))


def test_nm_name_parsing() -> None:
    sp = get_sparsity(" 4:8 ")
    assert (sp.n, sp.m, sp.label, sp.implied_rate) == (4, 8, "4:8", 0.5)
    assert get_sparsity("4:4").mask(torch.randn(2, 8), None).all()


def test_filter_shape_keeps_a_sub_matrix_with_one_rate() -> None:
    w = torch.randn(8, 3, 2, 2)
    sp = get_sparsity("filter+shape")
    m = sp.mask(w, 0.5).reshape(8, -1)
    assert int(m.any(1).sum()) == 4 and int(m.any(0).sum()) == 6
    with pytest.raises(NotImplementedError):
        sp.group_scores(w)


# --------------------------------------------------------------------- filter+shape search


def _is_local_optimum(w: torch.Tensor, mask: torch.Tensor) -> bool:
    s = w.reshape(w.shape[0], -1).double() ** 2
    m = mask.reshape(s.shape)
    rows, cols = m.any(1), m.any(0)
    value = float(s[rows][:, cols].sum())
    best_cols = float(torch.topk(s[rows].sum(0), int(cols.sum())).values.sum())
    best_rows = float(torch.topk(s[:, cols].sum(1), int(rows.sum())).values.sum())
    tol = 1e-9 * (1 + value)
    return value >= best_cols - tol and value >= best_rows - tol


def test_filter_shape_alternating_is_locally_optimal_and_mostly_exact() -> None:
    """Force the alternating path (exact_limit=0) and compare with exact enumeration.

    Over 6000 random Gaussian cases of these shapes and rates (400 seeds) the
    alternating result equalled the exact projection in 85.8% of them (worst case
    kept 67% of the optimal ||W[R, C]||^2). Here (20 seeds, 240 cases) 90% agree and the
    worst keeps 79%: asserted, at least 85% agree and none keeps under 60%. (With only one
    of its two starts, rows first, 81% agree: 85% tells the two apart.)
    """
    exact = FilterShapeSparsity()
    alternating = FilterShapeSparsity()
    alternating.exact_limit = 0  # type: ignore[misc]
    same = total = 0
    worst = 1.0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        for shape in ((6, 5), (8, 3, 2, 2), (5, 4, 1, 3), (10, 7)):
            for rate in (0.3, 0.5, 0.75):
                w = torch.randn(shape, generator=g)
                a, b = alternating.mask(w, rate), exact.mask(w, rate)
                assert _is_local_optimum(w, a)
                assert _is_local_optimum(w, b)
                s = w.double() ** 2
                kept_a, kept_b = float((s * a).sum()), float((s * b).sum())
                assert kept_a <= kept_b + 1e-9
                worst = min(worst, kept_a / kept_b)
                same += torch.equal(a, b)
                total += 1
    assert same >= 0.85 * total, f"the alternating search found the exact projection in {same} of {total} cases"
    assert worst >= 0.6, worst


def test_filter_shape_alternating_on_a_real_layer_size() -> None:
    w = torch.randn(128, 64, 3, 3)
    sp = get_sparsity("filter+shape")
    for rate in (0.3, 0.7):
        mask = sp.mask(w, rate)
        assert _is_local_optimum(w, mask)
        assert int(mask.sum()) == sp.kept_weights(w.shape, rate)


def test_filter_shape_exact_enumerates_the_smaller_side() -> None:
    """4 rows x 600 columns: C(4, 2) row sets are enumerated; C(600, 300) never is."""
    w = torch.randn(4, 600)
    mask = get_sparsity("filter+shape").mask(w, 0.5).reshape(4, -1)
    s = w.double() ** 2
    best = max(
        float(torch.topk(s[list(rows)].sum(0), 300).values.sum())
        for rows in itertools.combinations(range(4), 2)
    )
    assert math.isclose(float((s * mask).sum()), best, rel_tol=1e-12)


# --------------------------------------------------------------------- registry


def test_registered_type_is_usable_and_described() -> None:
    @register_sparsity
    class EveryOtherRow(GroupSparsity):
        name = "test-row-pairs"
        description = "pairs of rows (test only)"

        def group_scores(self, weight: torch.Tensor) -> torch.Tensor:
            s = (weight.detach().float() ** 2).reshape(weight.shape[0] // 2, -1)
            return s.sum(1)

        def expand_group_mask(self, group_mask, shape):  # type: ignore[no-untyped-def]
            o = shape[0]
            return (
                group_mask.repeat_interleave(2).reshape(o, 1).expand(o, math.prod(shape[1:])).reshape(shape)
            )

    try:
        assert "test-row-pairs" in list_sparsity_types()
        sp = get_sparsity("TEST-ROW-PAIRS")
        assert isinstance(sp, EveryOtherRow)
        assert sp.mask(torch.randn(4, 3), 0.5).sum() == 6
        with pytest.raises(ValueError, match="already registered"):

            @register_sparsity
            class Clash(GroupSparsity):
                name = "test-row-pairs"
                description = "clash"
    finally:
        unregister_sparsity("test-row-pairs")
    with pytest.raises(UserError):
        get_sparsity("test-row-pairs")


@pytest.mark.slow
def test_a_new_type_joins_the_contract_suite(pytester: pytest.Pytester) -> None:
    """A plugin registers a type before collection; the contract tests run it and it passes."""
    here = pathlib.Path(__file__).parent
    pytester.makepyfile(
        extra_type=textwrap.dedent(
            """
            import math
            from autoprune.sparsity import GroupSparsity, register_sparsity, gemm_view

            @register_sparsity
            class Halves(GroupSparsity):
                name = "halves"
                description = "left and right half of every GEMM row (test only)"

                def applies_to(self, weight):
                    if weight.dim() < 2 or math.prod(weight.shape[1:]) % 2:
                        return "needs an even GEMM row length"
                    return None

                def group_scores(self, weight):
                    s = gemm_view(weight.detach().float() ** 2)
                    return s.reshape(s.shape[0] * 2, -1).sum(1)

                def expand_group_mask(self, group_mask, shape):
                    k = math.prod(shape[1:])
                    return group_mask.reshape(-1, 1).expand(-1, k // 2).reshape(shape)
            """
        )
    )
    (pytester.path / "sparsity_tests").mkdir()
    for name in ("__init__.py", "test_contract.py"):
        (pytester.path / "sparsity_tests" / name).write_text((here / name).read_text())
    result = pytester.runpytest_subprocess(
        "-p", "extra_type", "-q", "-k", "halves", "sparsity_tests/test_contract.py", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0
    assert outcomes.get("passed", 0) > 50
