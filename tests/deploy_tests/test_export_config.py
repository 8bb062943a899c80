"""Picking a trial from a study and writing it as a prune config (``autoprune export``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml

from autoprune.config import PruneConfig, Schedule
from autoprune.errors import UserError
from autoprune.pick import feasible_front, pick_trial, write_trial_config
from autoprune.study.records import (
    REASON_ATTR,
    STUDY_ATTR,
    TARGETS_ATTR,
    TRIAL_ATTR,
    StudyMeta,
    StudyRecord,
    TrialRecord,
    mark_pareto,
)

DENSE_ACC = 0.97
BUDGET = 0.1  # absolute: feasible when accuracy >= 0.87
FILTER = {"features.3": {"type": "filter", "rate": 0.5}, "features.7": {"type": "filter", "rate": 0.5}}


def _meta(name: str = "s") -> StudyMeta:
    return StudyMeta(
        name=name, model="digits-cnn", dataset="digits", checkpoint="runs/baselines/digits-cnn-digits.pt",
        device="cpu", device_description="cpu:test", budget=BUDGET, budget_mode="absolute", latency_batch=32,
        dtype="fp32", space="auto", space_spec={}, sampler="tpe", seed=0,
        admm=dict(Schedule(iters=2, epochs=0.5, rho=1.0).__dict__), dense_accuracy=DENSE_ACC,
        dense_test_accuracy=0.98, dense_latency_ms=10.0, dense_latency_p90_ms=11.0, dense_macs=4.8e6,
        dense_params=3e5,
    )


def _trial(number: int, acc: float | None, lat: float | None, *, state: str = "COMPLETE", dense: bool = False,
           reason: str | None = None, rate: float = 0.5) -> TrialRecord:
    drop = None if acc is None else DENSE_ACC - acc
    targets = {} if dense else {k: {**v, "rate": rate} for k, v in FILTER.items()}
    return TrialRecord(
        number=number, state=state, targets=targets, is_dense=dense, score=acc, score_drop=drop,
        latency_ms=lat, latency_p90_ms=None if lat is None else lat * 1.1,
        speedup=None if lat is None else 10.0 / lat, feasible=None if drop is None else drop <= BUDGET + 1e-12,
        stop_reason=reason,
    )


# The front of the pruned feasible trials: latency 1, 2, 4, 8 ms at 0.90, 0.955, 0.96, 0.965.
# Normalised: u = log2(latency)/3 = 0, 1/3, 2/3, 1; v = 0, 0.846, 0.923, 1; v - u is largest
# (0.51) at 2 ms: the knee.
def _trials() -> list[TrialRecord]:
    return [
        _trial(0, DENSE_ACC, 10.0, dense=True),
        _trial(1, 0.90, 1.0, rate=0.9),
        _trial(2, 0.955, 2.0, rate=0.7),
        _trial(3, 0.96, 4.0, rate=0.5),
        _trial(4, 0.965, 8.0, rate=0.3),
        _trial(5, 0.50, 0.5, rate=0.95),  # fastest of all, far over budget
        _trial(6, 0.93, 6.0, rate=0.4),  # feasible, dominated
        _trial(7, None, None, state="PRUNED", reason="not faster than dense (0.98x < 1.00x)"),
        _trial(8, None, None, state="FAIL", reason="RuntimeError: out of memory"),
    ]


def _record(trials: list[TrialRecord], name: str = "s") -> StudyRecord:
    trials = [dataclasses.replace(t) for t in trials]
    mark_pareto(trials)
    return StudyRecord(_meta(name), "sqlite:///x.db", trials)


# -- pick_trial on records -------------------------------------------------------------------


def test_picks() -> None:
    rec = _record(_trials())
    assert [t.number for t in feasible_front(rec)] == [1, 2, 3, 4]
    assert pick_trial(rec).number == 1  # fastest within budget, not the over-budget trial 5
    assert pick_trial(rec, pick="fastest").number == rec.best_feasible().number == 1
    assert pick_trial(rec, pick="most-accurate").number == 4  # not the dense trial 0
    assert pick_trial(rec, pick="knee").number == 2
    assert pick_trial(rec, trial=6).number == 6
    assert pick_trial(rec, trial=5, pick="knee").number == 5  # an explicit trial may be over budget


def test_most_accurate_ties_go_to_the_faster() -> None:
    rec = _record([_trial(0, DENSE_ACC, 10.0, dense=True), _trial(1, 0.95, 3.0), _trial(2, 0.95, 2.0)])
    assert pick_trial(rec, pick="most-accurate").number == 2


def test_knee_falls_back_to_fastest() -> None:
    two = _record([_trial(0, DENSE_ACC, 10.0, dense=True), _trial(1, 0.90, 1.0), _trial(2, 0.95, 4.0)])
    assert pick_trial(two, pick="knee").number == 1  # two front points: no bend to find
    # a front that bends the other way (all points on or below the line between the ends)
    concave = _record([_trial(1, 0.90, 1.0), _trial(2, 0.91, 2.0), _trial(3, 0.96, 4.0)])
    assert pick_trial(concave, pick="knee").number == 1


def test_no_pruned_trial_within_budget_names_the_most_accurate_pruned_one() -> None:
    rec = _record([_trial(0, DENSE_ACC, 10.0, dense=True), _trial(1, 0.60, 2.0), _trial(2, 0.80, 3.0),
                   _trial(3, 0.70, 1.0)])
    assert rec.best_feasible().is_dense  # the study's own best is the dense model
    for pick in ("fastest", "most-accurate", "knee"):
        with pytest.raises(UserError) as err:
            pick_trial(rec, pick=pick)
        msg = str(err.value)
        assert "no pruned trial of study 's' is within the budget" in msg
        assert "trial is 2 (80.0%, drop 17.0 points" in msg and "--trial 2" in msg and "larger --budget" in msg
        assert "\n" not in msg


def test_no_completed_pruned_trial() -> None:
    rec = _record([_trial(0, DENSE_ACC, 10.0, dense=True),
                   _trial(1, None, None, state="PRUNED", reason="not faster than dense")])
    with pytest.raises(UserError, match="has no completed pruned trial yet .*1 pruned trial"):
        pick_trial(rec)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"trial": 42}, r"study 's' has no trial 42 \(it has trials 0–8\)"),
        ({"trial": 7}, r"trial 7 of study 's' is PRUNED \(not faster than dense \(0.98x < 1.00x\)\), not COMPLETE"),
        ({"trial": 8}, r"trial 8 of study 's' is FAIL \(RuntimeError: out of memory\)"),
        ({"trial": 0}, r"trial 0 of study 's' is the dense model \(nothing to prune\)"),
        ({"pick": "best"}, r"unknown --pick 'best'; use one of: fastest, most-accurate, knee"),
    ],
)
def test_errors(kwargs, pattern) -> None:
    with pytest.raises(UserError, match=pattern):
        pick_trial(_record(_trials()), **kwargs)


# -- write_trial_config on a storage --------------------------------------------------------------


def _measured(t: TrialRecord) -> dict:
    keep = ("is_dense", "accuracy_drop", "latency_p90_ms", "speedup", "feasible")
    return {k: getattr(t, k) for k in keep}


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    """A study written the way ``autoprune search`` writes one (user attributes), plus a second study."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'optuna.db'}"
    for name in ("s", "other"):
        study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
        study.set_user_attr(STUDY_ATTR, _meta(name).to_dict())
        for t in _trials():
            attrs = {TRIAL_ATTR: _measured(t), TARGETS_ATTR: t.targets}
            if t.stop_reason:
                attrs[REASON_ATTR] = t.stop_reason
            state = TrialState[t.state]
            values = [t.accuracy, t.latency_ms] if state == TrialState.COMPLETE else None
            dist = CategoricalDistribution(["dense", "filter"])
            study.add_trial(create_trial(state=state, values=values, user_attrs=attrs,
                                         params={"layer.features.3.type": "dense" if t.is_dense else "filter"},
                                         distributions={"layer.features.3.type": dist}))
    return url


@pytest.mark.parametrize(("pick", "number"), [("fastest", 1), ("most-accurate", 4), ("knee", 2)])
def test_export_writes_a_config_prune_reads(storage, tmp_path, pick, number) -> None:
    out = tmp_path / "sub" / "best.yaml"
    summary = write_trial_config("s", storage, pick=pick, out=out)
    assert summary["trial"] == number and summary["study"] == "s" and summary["out"] == str(out)
    assert summary["metrics"]["latency_ms"] == _trials()[number].latency_ms
    config = PruneConfig.from_yaml(out)  # read unchanged
    assert config.model == "digits-cnn" and config.dataset == "digits"
    assert config.checkpoint == "runs/baselines/digits-cnn-digits.pt"
    assert {k: v.to_dict() for k, v in config.layers.items()} == _trials()[number].targets
    assert config.admm.iters == 2 and config.admm.rho == 1.0
    assert config.origin["study"] == "s" and config.origin["trial"] == number
    assert config.origin["metrics"]["val_accuracy"] == pytest.approx(_trials()[number].accuracy)
    assert [p.name for p in out.parent.iterdir()] == ["best.yaml"]  # no temporary file left


def test_export_one_trial_by_number(storage, tmp_path) -> None:
    summary = write_trial_config("s", storage, trial=6, out=tmp_path / "t6.yaml")
    assert summary["trial"] == 6 and summary["pick"] == "trial"
    assert yaml.safe_load((tmp_path / "t6.yaml").read_text())["origin"]["trial"] == 6


@pytest.mark.parametrize(
    ("study", "kwargs", "pattern"),
    [
        ("nope", {}, r"no study named 'nope' in sqlite:///.* \(studies there: other, s\)"),
        ("s", {"trial": 99}, r"has no trial 99"),
        ("s", {"trial": 7}, r"is PRUNED \(not faster than dense"),
        ("s", {"trial": 0}, r"dense model \(nothing to prune\)"),
        ("s", {"pick": "fast"}, r"unknown --pick 'fast'"),
    ],
)
def test_export_errors(storage, tmp_path, study, kwargs, pattern) -> None:
    out = tmp_path / "x.yaml"
    with pytest.raises(UserError, match=pattern):
        write_trial_config(study, storage, out=out, **kwargs)
    assert not out.exists()


def test_export_from_a_missing_storage_file_creates_nothing(tmp_path) -> None:
    db = tmp_path / "missing.db"
    with pytest.raises(UserError, match="no Optuna storage at"):
        write_trial_config("s", f"sqlite:///{db}", out=tmp_path / "x.yaml")
    assert not db.exists()


# -- the real thing --------------------------------------------------------------------------


@pytest.mark.slow
def test_export_from_a_real_search(digits_baseline, tmp_path) -> None:
    from autoprune.study import SearchSettings, run_search

    url = f"sqlite:///{tmp_path / 'o.db'}"
    # the outcome is arranged: no dense choice in the space, no early stop, a budget no trial
    # misses: every trial is a feasible pruned one (none within the budget: test_no_pruned_trial_within_...)
    space = tmp_path / "space.yaml"
    space.write_text("types: [filter, shape]\nrate: {low: 0.3, high: 0.7, step: 0.2}\n")
    settings = SearchSettings(checkpoint=str(digits_baseline[0]), runs_dir=str(tmp_path / "runs"), trials=5,
                              latency_batch=32, admm=Schedule(iters=1, epochs=0.25, rho=1.0, retrain_epochs=0.25),
                              study_name="e", storage=url, space=str(space), budget=0.99, min_speedup=0.01,
                              rungs=False)  # every trial trained fully: a rung may stop one beaten by a faster trial
    record = run_search(settings).record
    pruned_feasible = [t for t in record.feasible if not t.is_dense]
    assert len(pruned_feasible) == 5
    for pick in ("fastest", "most-accurate", "knee"):
        out = tmp_path / f"{pick}.yaml"
        summary = write_trial_config("e", url, pick=pick, out=out)
        chosen = next(t for t in record.trials if t.number == summary["trial"])
        assert chosen in pruned_feasible
        config = PruneConfig.from_yaml(out)
        assert config.checkpoint == str(digits_baseline[0]) and config.origin["trial"] == chosen.number
        assert {k: v.to_dict() for k, v in config.layers.items()} == chosen.targets
    fastest = write_trial_config("e", url, out=tmp_path / "f.yaml")["trial"]
    # the fastest by the end-of-search re-measurement (the search times its fastest ones again)
    again = [t for t in pruned_feasible if t.remeasured]
    assert len(again) >= 3
    assert fastest == max(again, key=lambda t: (t.remeasured["speedup"], t.accuracy)).number
    assert fastest == record.best_feasible().number
    assert Path(tmp_path / "f.yaml").read_text() == Path(tmp_path / "fastest.yaml").read_text()
