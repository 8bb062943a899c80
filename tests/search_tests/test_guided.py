"""The guided ladder: each variable's pruning to the top rate measured once without training
(latency beside the base, screen score), the variables ordered by time saved per point of
screen score lost, and the longest prefix within the budget found by bisection.

A synthetic problem with a known answer (as in test_sampler): five layers of different time
cost and sensitivity, each worth pruning (so the effective ladder is the uniform one). From
uniform 30% (the highest uniform rate within the budget), pushing ``conv3`` (the most
expensive robust layer) to 90% keeps the budget and pushing a second one breaks it; the
order is conv3, conv2, conv1, fc (robust, by time saved), then conv0 (sensitive)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.config import LayerTarget
from autoprune.study.records import CONSTRAINT, PROPOSAL_ATTR, SAMPLER_EPOCHS_ATTR, SIGNATURE_ATTR, TRIAL_ATTR
from autoprune.study.sampler import GUIDE_ATTR, GUIDED, UNIFORM, PruningSampler
from autoprune.study.space import RateRange, SearchSpace, Variable

LAYERS = ["conv0", "conv1", "conv2", "conv3", "fc"]
COST = {"conv0": 3.0, "conv1": 4.0, "conv2": 5.0, "conv3": 6.0, "fc": 3.0}
SENSITIVITY = {"conv0": 0.30, "conv1": 0.02, "conv2": 0.02, "conv3": 0.02, "fc": 0.02}
BUDGET = 0.05
SCREEN_COST = 0.01  # epochs one screen costs


def _rate(t: LayerTarget | None) -> float:
    return 0.0 if t is None or t.type == "none" else t.rate


def latency(targets: dict[str, LayerTarget]) -> float:
    return 1.0 + sum(COST[n] * (1.0 - _rate(targets.get(n))) for n in LAYERS)


def drop(targets: dict[str, LayerTarget]) -> float:
    return sum(SENSITIVITY[n] * _rate(targets.get(n)) ** 2 for n in LAYERS)


@dataclass
class _Ratio:
    median: float


class ScreeningProbe:
    """Exact signatures and latency; a screen score that falls three times as fast as the trained one."""

    screener = True

    def __init__(self) -> None:
        self.screened: list[dict[str, LayerTarget]] = []

    def signature(self, targets: dict[str, LayerTarget]) -> str:
        return "|".join(f"{n}:{t.type}:{t.rate}" for n, t in sorted(targets.items())) or "dense"

    def macs(self, targets: dict[str, LayerTarget]) -> float:
        return latency(targets)

    def compare(self, configs, *, rounds=None):  # noqa: ANN001, ANN201
        base = latency(configs[0])
        return [_Ratio(latency(c) / base) for c in configs]

    def screen(self, targets: dict[str, LayerTarget]) -> tuple[float, float]:
        self.screened.append(targets)
        return 1.0 - 3 * drop(targets), SCREEN_COST


def _run(trials: int) -> tuple[optuna.Study, SearchSpace, ScreeningProbe]:
    space = SearchSpace("test", [Variable(f"layer.{n}", [n], ["none", "filter"], RateRange(0.1, 0.9, 0.1))
                                 for n in LAYERS])
    probe = ScreeningProbe()
    sampler = PruningSampler(space, probe, base=optuna.samplers.RandomSampler(seed=0), seed=0, ascent=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def run(trial: optuna.Trial) -> tuple[float, float]:
        targets = space.suggest(trial)
        d, lat = drop(targets), latency(targets)
        trial.set_user_attr(SIGNATURE_ATTR, probe.signature(targets))
        trial.set_user_attr(TRIAL_ATTR, {"feasible": d <= BUDGET, "latency_ms": lat})
        trial.set_constraint(CONSTRAINT, d - BUDGET)
        return 1.0 - d, lat

    study.optimize(run, n_trials=trials)
    return study, space, probe


def test_the_guided_ladder_pushes_the_cheapest_layers_first_and_stops_at_the_budget() -> None:
    study, space, probe = _run(10)
    by = {p: [t for t in study.trials if t.user_attrs.get(PROPOSAL_ATTR) == p] for p in (UNIFORM, GUIDED)}
    assert by[UNIFORM] and by[GUIDED]
    assert min(t.number for t in by[GUIDED]) > max(t.number for t in by[UNIFORM])  # after the ladder
    guide = study.user_attrs[GUIDE_ATTR]
    base = space.choices_of(guide["params"])
    assert all(rate == pytest.approx(0.3) for _, rate in base.values())  # the best uniform configuration
    # measured once per variable from the base: gain and damage as the model says
    v = guide["variables"]
    assert v["layer.conv3"]["gain"] == pytest.approx(6 * 0.6 / latency(space.targets_from_params(guide["params"])))
    assert v["layer.conv0"]["drop"] == pytest.approx(3 * 0.30 * (0.81 - 0.09))
    assert len(probe.screened) == 1 + len(LAYERS)  # the base and each variable, once
    assert study.user_attrs[SAMPLER_EPOCHS_ATTR] == pytest.approx((1 + len(LAYERS)) * SCREEN_COST)
    # the best guided trial: conv3 at the top rate, the rest as the base; feasible and faster than uniform
    ok = [t for t in by[GUIDED] if t.state == TrialState.COMPLETE and t.user_attrs[TRIAL_ATTR]["feasible"]]
    best = min(ok, key=lambda t: t.values[1])
    choices = space.choices_of(best.params)
    assert choices["layer.conv3"] == ("filter", pytest.approx(0.9))
    assert all(choices[n][1] == pytest.approx(0.3) for n in ("layer.conv0", "layer.conv1", "layer.conv2", "layer.fc"))
    best_uniform = min((t for t in by[UNIFORM] if t.user_attrs[TRIAL_ATTR]["feasible"]), key=lambda t: t.values[1])
    assert best.values[1] < best_uniform.values[1] - 3.0
    order = sorted(v, key=lambda n: -v[n]["gain"] / max(v[n]["drop"], 1e-3))
    assert order == ["layer.conv3", "layer.conv2", "layer.conv1", "layer.fc", "layer.conv0"]
    # bisection over the prefixes 1..5: 3 (over), 2 (over), 1 (within); 4 and 5 are never tried
    lengths = [sum(1 for n in LAYERS if space.choices_of(t.params)[f"layer.{n}"][1] == pytest.approx(0.9))
               for t in by[GUIDED]]
    assert lengths == [3, 2, 1]


def test_no_guided_ladder_without_a_screen() -> None:
    class NoScreen(ScreeningProbe):
        screener = None

    space = SearchSpace("test", [Variable(f"layer.{n}", [n], ["none", "filter"], RateRange(0.1, 0.9, 0.1))
                                 for n in LAYERS])
    sampler = PruningSampler(space, NoScreen(), base=optuna.samplers.RandomSampler(seed=0), seed=0)
    assert sampler.use_guided is False
