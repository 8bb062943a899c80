"""No configuration is trained twice in one study: a trial whose configuration an earlier
trial ran (the same signature: the same channels and weights kept per layer) takes the
earlier result, is marked as a repeat, and counts once on the front: autoprune's and
Optuna's (a repeat is stored as stopped, so ``study.best_trials`` and optuna-dashboard list
each configuration once)."""

from __future__ import annotations

from pathlib import Path

import yaml

import autoprune.admm
from autoprune.config import LayerTarget, Schedule
from autoprune.groups import ChannelGraph
from autoprune.pipeline import build_model, example_input, load_dataset
from autoprune.projection import Projector
from autoprune.study import SearchSettings, run_search
from autoprune.study.records import REASON_ATTR, SIGNATURE_ATTR

FAST = Schedule(iters=1, epochs=0.25, rho=1.0, retrain_epochs=0.25)


def test_rates_that_round_to_one_channel_block_share_a_signature() -> None:
    splits = load_dataset("digits")
    model = build_model("digits-cnn", splits)
    graph = ChannelGraph(model, example_input(splits))

    def sig(targets: dict[str, LayerTarget], multiple: int = 16) -> str:
        return Projector(model, graph, targets, channel_multiple=multiple).signature()

    # features.3 has 64 channels: 80% keeps 13 and 90% keeps 7, both rounded to one block of 16
    assert sig({"features.3": LayerTarget("filter", 0.8)}) == sig({"features.3": LayerTarget("filter", 0.9)})
    assert sig({"features.3": LayerTarget("filter", 0.8)}, 1) != sig({"features.3": LayerTarget("filter", 0.9)}, 1)
    # how a target is written does not matter, what it keeps does
    assert sig({"features.3": LayerTarget("filter", 0.5), "features.7": LayerTarget("shape", 0.5)}) != sig(
        {"features.3": LayerTarget("filter", 0.5)})
    assert sig({}) == "dense"


def test_a_repeated_configuration_is_not_trained_again(tmp_path: Path, digits_baseline, monkeypatch) -> None:
    # one searched layer whose two rates build the same model: the second trial must repeat the first
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"include": ["features.3"], "types": ["filter"],
                                     "rate": {"low": 0.8, "high": 0.9, "step": 0.1}}))
    calls = []
    real = autoprune.admm.prune

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(autoprune.admm, "prune", counting)
    settings = SearchSettings(checkpoint=str(digits_baseline[0]), runs_dir=str(tmp_path / "runs"), trials=3,
                              latency_batch=32, admm=FAST, study_name="rep", space=str(space), budget=0.99,
                              channel_multiple=16, min_speedup=0.01, storage=f"sqlite:///{tmp_path / 'o.db'}",
                              rungs=False)  # one admm.prune call per trained trial (the rungs' case: test_rungs)
    rec = run_search(settings).record
    done = [t for t in rec.trials if t.state == "COMPLETE"]
    assert len(done) == 3
    first, *repeats = done
    assert first.repeat_of is None and len(calls) == 1  # trained once, whatever the rates asked
    for t in repeats:
        assert t.repeat_of == first.number
        assert (t.accuracy, t.latency_ms) == (first.accuracy, first.latency_ms)
    assert [t.number for t in rec.front] == [first.number]  # counted once
    assert rec.best_feasible().number == first.number
    # the repeats carry the first trial's constraint, so Optuna's samplers and front agree
    import optuna

    study = optuna.load_study(study_name="rep", storage=settings.storage)
    # in Optuna a repeat is stopped with its reason, so its best trials hold each configuration once
    assert len(study.trials) == 3  # still exactly --trials finished trials
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert {t.user_attrs[REASON_ATTR] for t in study.trials[1:]} == {
        f"same configuration as trial {first.number}: its result, counted once"}
    best = study.best_trials
    signatures = [t.user_attrs[SIGNATURE_ATTR] for t in best]
    assert len(signatures) == len(set(signatures)) and [t.number for t in best] == [first.number]
    constraints = [{k: v for k, v in t.system_attrs.items() if k.startswith("constraints")} for t in study.trials]
    assert constraints[0] and all(c == constraints[0] for c in constraints)
