"""The search's sampler on a synthetic problem: uniform bisection, the latency ascent,
no repeated configuration, and workers that share a study.

The problem is arranged so that the answer is known: five layers whose latency costs and
accuracy sensitivities differ. The first layer is cheap in time but sensitive; the others
are expensive and robust. Pruning every layer at one rate therefore stops early (the
sensitive layer breaks the budget), while a per-layer configuration that spares the
first layer and prunes the others harder is both feasible and faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.config import LayerTarget
from autoprune.study.records import CONSTRAINT, PROPOSAL_ATTR, SIGNATURE_ATTR, TRIAL_ATTR
from autoprune.study.sampler import ASCENT, EFFECTIVE, LOCAL, MIN_GAIN, UNIFORM, PruningSampler
from autoprune.study.space import RateRange, SearchSpace, Variable

LAYERS = ["conv0", "conv1", "conv2", "conv3", "fc"]
COST = {"conv0": 1.0, "conv1": 4.0, "conv2": 4.0, "conv3": 6.0, "fc": 1.0}  # time share of each layer
SENSITIVITY = {"conv0": 0.30, "conv1": 0.02, "conv2": 0.02, "conv3": 0.02, "fc": 0.01}
BUDGET = 0.05
FIXED = 1.0  # time of everything that pruning does not touch
TIMED_ATTR = "test.timed_before"  # trial user attr: how many side-by-side timings preceded its proposal


def _space() -> SearchSpace:
    variables = [Variable(f"layer.{n}", [n], ["none", "filter", "shape"], RateRange(0.1, 0.9, 0.1)) for n in LAYERS]
    return SearchSpace("test", variables)


def _rate(t: LayerTarget | None) -> float:
    if t is None or t.type == "none":
        return 0.0
    return t.rate * (1.0 if t.type == "filter" else 0.5)  # shape removes less time than filter at a rate


def latency(targets: dict[str, LayerTarget]) -> float:
    return FIXED + sum(COST[n] * (1.0 - _rate(targets.get(n))) for n in LAYERS)


def drop(targets: dict[str, LayerTarget]) -> float:
    return sum(SENSITIVITY[n] * _rate(targets.get(n)) ** 2 for n in LAYERS)


@dataclass
class _Ratio:
    median: float


class FakeProbe:
    """Exact signatures, MACs proportional to the modelled time, and the modelled latency.

    ``timings`` keeps every side-by-side timing the sampler asked for, in order: per call,
    ``(signature, latency relative to the first configuration)`` of each configuration."""

    def __init__(self) -> None:
        self.timings: list[list[tuple[str, float]]] = []

    def signature(self, targets: dict[str, LayerTarget]) -> str:
        return "|".join(f"{n}:{t.type}:{t.rate}" for n, t in sorted(targets.items())) or "dense"

    def macs(self, targets: dict[str, LayerTarget]) -> float:
        return latency(targets)

    def compare(self, configs: list[dict[str, LayerTarget]], *, rounds: int | None = None) -> list[_Ratio]:
        base = latency(configs[0])
        self.timings.append([(self.signature(c), latency(c) / base) for c in configs])
        return [_Ratio(latency(c) / base) for c in configs]


def objective(space: SearchSpace, probe: FakeProbe):  # noqa: ANN201
    """A trial as the search records it: signature, measured values, feasibility, constraint."""

    def run(trial: optuna.Trial) -> tuple[float, float]:
        targets = space.suggest(trial)  # the sampler proposes the configuration here
        trial.set_user_attr(TIMED_ATTR, len(probe.timings))  # the timings made up to the proposal
        d, lat = drop(targets), latency(targets)
        trial.set_user_attr(SIGNATURE_ATTR, probe.signature(targets))
        trial.set_user_attr(TRIAL_ATTR, {"feasible": d <= BUDGET, "latency_ms": lat})
        trial.set_constraint(CONSTRAINT, d - BUDGET)
        return 1.0 - d, lat

    return run


def _study(space: SearchSpace, probe: FakeProbe, **kw) -> optuna.Study:  # noqa: ANN003
    sampler = PruningSampler(space, probe, base=optuna.samplers.TPESampler(seed=0, multivariate=True), seed=0, **kw)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def _best(study: optuna.Study, origins: set[str] | None = None) -> optuna.trial.FrozenTrial:
    ok = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs[TRIAL_ATTR]["feasible"]
          and (origins is None or t.user_attrs.get(PROPOSAL_ATTR) in origins)]
    return min(ok, key=lambda t: t.values[1])


def test_ladder_finds_the_highest_uniform_rate_within_the_budget_by_bisection() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe, ascent=False)
    study.optimize(objective(space, probe), n_trials=5)
    ladder = [t for t in study.trials if t.user_attrs.get(PROPOSAL_ATTR) == UNIFORM]
    rates = [space.choices_of(t.params)["layer.conv1"][1] for t in ladder]
    # uniform drop is 0.37 r^2: within 0.05 up to r = 0.36, so 0.3 is the highest rung that holds;
    # bisection over 0.1 ... 0.9: the middle (0.5, over), halfway below (0.3, within), then the
    # one rung left between them (0.4, over)
    assert rates == pytest.approx([0.5, 0.3, 0.4])
    assert [t.user_attrs[TRIAL_ATTR]["feasible"] for t in ladder] == [False, True, False]
    for t, r in zip(ladder, rates):  # every rung is one type and one rate on every variable
        assert space.choices_of(t.params) == {f"layer.{n}": ("filter", r) for n in LAYERS}


def test_ascent_goes_past_the_best_uniform_configuration() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe)
    study.optimize(objective(space, probe), n_trials=20)
    uniform, best = _best(study, {UNIFORM}), _best(study, {ASCENT})
    # the sensitive first layer is spared and the expensive robust ones pruned harder than uniform
    choices = space.choices_of(best.params)
    assert _rate(LayerTarget(*choices["layer.conv3"])) > _rate(LayerTarget(*choices["layer.conv0"]))
    assert _rate(LayerTarget(*choices["layer.conv0"])) < _rate(LayerTarget(*space.choices_of(uniform.params)["layer.conv0"]))
    assert uniform.values[1] / best.values[1] >= 1.5
    # each ascent step was timed beside the configuration it moved from (a feasible trial run
    # before it) before it was proposed, and measured at least MIN_GAIN faster in that timing
    ascent = [t for t in study.trials if t.user_attrs.get(PROPOSAL_ATTR) == ASCENT]
    assert ascent
    for t in ascent:
        sig = t.user_attrs[SIGNATURE_ATTR]
        beside = [call for call in probe.timings[:t.user_attrs[TIMED_ATTR]] if sig in dict(call[1:])]
        assert beside, f"trial {t.number} was proposed without being timed"
        feasible = {p.user_attrs[SIGNATURE_ATTR] for p in study.trials[:t.number]
                    if p.user_attrs[TRIAL_ATTR]["feasible"]}
        assert all(call[0][0] in feasible for call in beside), (t.number, [call[0][0] for call in beside])
        assert min(dict(call)[sig] for call in beside) <= 1 - MIN_GAIN


def test_no_configuration_is_proposed_twice() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe)
    study.optimize(objective(space, probe), n_trials=30)
    sigs = [t.user_attrs[SIGNATURE_ATTR] for t in study.trials]
    assert len(sigs) == len(set(sigs)) == 30


def test_a_second_worker_does_not_take_the_rung_that_is_running() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe)
    first = study.ask()
    space.suggest(first)  # the middle rung, now RUNNING
    second = study.ask()
    space.suggest(second)
    a, b = study.get_trials(states=(TrialState.RUNNING,))
    assert a.user_attrs[PROPOSAL_ATTR] == b.user_attrs[PROPOSAL_ATTR] == UNIFORM
    assert a.user_attrs[SIGNATURE_ATTR] != b.user_attrs[SIGNATURE_ATTR]
    # optimistic about the running rung: the second worker goes higher up the ladder
    assert space.choices_of(second.params)["layer.conv1"][1] > space.choices_of(first.params)["layer.conv1"][1]


def test_local_steps_propose_neighbours_measured_faster_than_the_incumbent() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe)
    study.optimize(objective(space, probe), n_trials=20)
    trials = study.trials
    local = [t for t in trials if t.user_attrs.get(PROPOSAL_ATTR) == LOCAL]
    assert local, [t.user_attrs.get(PROPOSAL_ATTR) for t in trials]
    moved = []
    for t in local:
        before = [b for b in trials[:t.number] if b.user_attrs[TRIAL_ATTR]["feasible"]]
        incumbent = min(before, key=lambda b: b.values[1])
        assert t.values[1] <= incumbent.values[1] * (1 - 0.02)  # measured faster before it was proposed
        a, b = space.choices_of(t.params), space.choices_of(incumbent.params)
        moved.append(sum(a[v] != b[v] for v in a))
    assert all(m >= 1 for m in moved) and max(moved) >= 2  # neighbours, several layers at once


def test_effective_ladder_leaves_the_layers_whose_pruning_saves_no_time_dense() -> None:
    space, probe = _space(), FakeProbe()
    study = _study(space, probe, ascent=False)
    study.optimize(objective(space, probe), n_trials=8)
    gains = study.user_attrs["autoprune.latency_gains"]  # measured once, stored for every worker
    assert gains["layer.conv3"] == pytest.approx(COST["conv3"] * 0.9 / latency({}))
    effective = [t for t in study.trials if t.user_attrs.get(PROPOSAL_ATTR) == EFFECTIVE]
    assert effective
    for t in effective:  # conv0 and fc save under a fifth of conv3's gain: left dense
        c = space.choices_of(t.params)
        assert c["layer.conv0"][0] == c["layer.fc"][0] == "none"
        assert len({c[v] for v in ("layer.conv1", "layer.conv2", "layer.conv3")}) == 1
    assert _best(study, {EFFECTIVE}).values[1] < _best(study, {UNIFORM}).values[1] / 2


def test_a_space_without_dense_choices_takes_the_lightest_choice_for_the_layers_left_alone() -> None:
    # no variable offers "none": the effective ladder and the latency gains must not ask for it
    # (they did, and every trial after the uniform ladder failed with "does not offer type 'none'")
    variables = [Variable(f"layer.{n}", [n], ["filter"], RateRange(0.3, 0.7, 0.2)) for n in LAYERS]
    space, probe = SearchSpace("no-dense", variables), FakeProbe()
    study = _study(space, probe)
    study.optimize(objective(space, probe), n_trials=8)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    gains = study.user_attrs["autoprune.latency_gains"]
    lightest = {n: LayerTarget("filter", 0.3) for n in LAYERS}
    # each gain is measured against every layer at the lowest rate, not against dense
    alone = {**lightest, "conv3": LayerTarget("filter", 0.7)}
    assert gains["layer.conv3"] == pytest.approx(1 - latency(alone) / latency(lightest))
    for t in study.trials:
        assert {k for k, v in t.params.items() if k.endswith(".type")} == {f"layer.{n}.type" for n in LAYERS}
        assert set(space.choices_of(t.params).values()) <= {("filter", r) for r in (0.3, 0.5, 0.7)}
