"""Declared parameter checks (autoprune.params): one message shape for every setting."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autoprune.config import Schedule
from autoprune.errors import ConfigError, UserError
from autoprune.params import Interval, NonEmpty, Options, Param, check_param, validate_params
from autoprune.study import SearchSettings


@pytest.mark.parametrize(
    ("constraint", "good", "bad", "words"),
    [
        (Interval(int, 1, None), [1, 7, 3.0], [0, -1, 2.5, True, "3", None, float("nan")], "at least 1"),
        (Interval(float, 0, None, closed="neither"), [1e-9, 2], [0, -0.5, "x"], "> 0"),
        (Interval(float, 0, 1, closed="left"), [0, 0.5], [1, -0.1], "in [0, 1)"),
        (Interval(float, 0, 1, closed="right"), [1, 0.5], [0, 1.5], "in (0, 1]"),
        (Interval(float, None, 5), [-3, 5], [6], "at most 5"),
        (Options(("tpe", "random")), ["tpe"], ["TPE", "grid", None], "one of: tpe, random"),
        (NonEmpty(), ["x", " a "], ["", "  ", None, 3], "a non-empty name"),
    ],
)
def test_constraints(constraint, good, bad, words) -> None:  # noqa: ANN001
    assert str(constraint) == words
    assert all(constraint.holds(v) for v in good)
    assert not any(constraint.holds(v) for v in bad)


def test_one_message_shape_per_kind() -> None:
    with pytest.raises(UserError, match=r"^--trials must be at least 1\. Got 0 instead\.$"):
        check_param(Param("--trials", Interval(int, 1, None)), 0)
    with pytest.raises(UserError, match=r"^unknown sampler 'grid'; use one of: tpe, random\.$"):
        check_param(Param("sampler", Options(("tpe", "random"))), "grid")
    check_param(Param("--threads", Interval(int, 1, None), optional=True), None)  # not given: fine
    with pytest.raises(UserError, match="--threads must be at least 1"):
        check_param(Param("--threads", Interval(int, 1, None)), None)


def test_validate_params_checks_in_declared_order_with_the_callers_error() -> None:
    @dataclass
    class Run:
        repeats: int = 30
        rate: float = 0.5

    checks = {"repeats": Param("--repeats", Interval(int, 1, None)),
              "rate": Param("The 'rate' setting", Interval(float, 0, 1, closed="left"))}
    validate_params(Run(), checks)
    with pytest.raises(ConfigError, match="--repeats must be"):
        validate_params(Run(repeats=0, rate=2), checks, error=ConfigError)
    with pytest.raises(UserError, match=r"The 'rate' setting must be in \[0, 1\)\. Got 2 instead\."):
        validate_params(Run(rate=2), checks)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trials": 0}, "--trials must be at least 1. Got 0 instead."),
        ({"sampler": "annealing"}, "unknown sampler 'annealing'; use one of: tpe, nsga2, random."),
        ({"trial_method": "lottery"}, "unknown --trial-method 'lottery'; use one of: admm, magnitude, gmp, auto."),
        ({"budget": 1.5}, "--budget must be in (0, 1). Got 1.5 instead."),
        ({"abandon_drop": 0}, "--abandon-drop must be in (0, 1]. Got 0 instead."),
        ({"stale_after": 0}, "--stale-after must be > 0. Got 0 instead."),
        ({"study_name": " "}, "--study-name must be a non-empty name. Got ' ' instead."),
        ({"channel_multiple": 0}, "--channel-multiple must be a positive integer or 'auto'"),
    ],
)
def test_search_settings_are_checked_before_any_work(changes, message) -> None:  # noqa: ANN001
    with pytest.raises(UserError) as info:
        SearchSettings(**changes).validate()
    assert str(info.value).startswith(message)


def test_admm_settings_name_the_setting_and_the_range() -> None:
    with pytest.raises(ConfigError, match=r"^The 'momentum' ADMM setting must be in \[0, 1\)\. Got 1 instead\.$"):
        Schedule(momentum=1)
    with pytest.raises(ConfigError, match=r"'rho_max' ADMM setting must be >= rho \(3\)"):
        Schedule(rho=3.0, rho_max=2.0)
    assert Schedule(iters=2.0, batch_size=32).iters == 2.0  # YAML's 2.0 is a whole number, as before


def test_search_settings_are_frozen() -> None:
    import dataclasses

    s = SearchSettings(given={"budget"})
    assert s.given == frozenset({"budget"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.budget = 0.05  # type: ignore[misc]
