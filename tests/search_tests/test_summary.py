"""The end-of-search table: the chosen trial and the figures it was chosen by are in it, the
epochs spent are beside a uniform sweep's, the validation size is stated."""

from __future__ import annotations

from pathlib import Path

from autoprune.study.records import StudyMeta, StudyRecord, TrialRecord, mark_pareto
from autoprune.study.rungs import Fidelity
from autoprune.study.summary import SearchResult, print_summary


def _meta() -> StudyMeta:
    return StudyMeta(name="s", model="m", dataset="d", checkpoint="c", device="cpu", device_description="cpu:x",
                     budget=0.02, budget_mode="absolute", latency_batch=32, dtype="fp32", space="auto", space_spec={},
                     sampler="tpe", seed=0, admm={}, dense_accuracy=0.90, dense_test_accuracy=0.9,
                     dense_latency_ms=10.0, dense_latency_p90_ms=10.5, dense_macs=1e6, dense_params=1e4,
                     fidelity=Fidelity(epoch_budget=45.0).to_dict(), val_size=6000)


def _trial(n: int, acc: float, ms: float, *, proposal: str = "ascent", remeasured: float | None = None,
           epochs: float = 5.0) -> TrialRecord:
    t = TrialRecord(number=n, state="COMPLETE", targets={"conv": {"type": "filter", "rate": 0.5}}, score=acc,
                    score_drop=0.90 - acc, latency_ms=ms, speedup=10.0 / ms, feasible=0.90 - acc <= 0.02,
                    proposal=proposal, epochs=epochs,
                    rungs=[{"rung": "screen", "score": acc - 0.3, "epochs": 0.02},
                           {"rung": "short", "score": acc - 0.05, "epochs": 1.02},
                           {"rung": "full", "score": acc, "epochs": epochs}])
    if remeasured is not None:
        t.remeasured = {"speedup": remeasured, "speedup_p10": remeasured - 0.1, "speedup_p90": remeasured + 0.1,
                        "rounds": 30}
    return t


def test_the_chosen_trial_is_in_the_table_even_off_the_search_time_front(capsys) -> None:
    trials = [
        _trial(1, 0.895, 5.0, proposal="uniform", remeasured=1.9),
        _trial(2, 0.889, 4.0, remeasured=2.6),  # re-measured fastest: the chosen one
        _trial(3, 0.890, 3.9, remeasured=2.4),  # fastest during the search: on the front, trial 2 is not
        TrialRecord(number=4, state="PRUNED", stopped_at="screen", epochs=0.02,
                    rungs=[{"rung": "screen", "score": 0.2, "epochs": 0.02}]),
    ]
    mark_pareto(trials)
    assert not trials[1].pareto and trials[2].pareto
    rec = StudyRecord(_meta(), "sqlite:///x.db", trials, sampler_epochs=0.5)
    print_summary(SearchResult(rec, Path("runs/s"), None))
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "2 *" in rows and "2.60x" in rows["2 *"]  # the chosen row, with its re-measured speedup
    assert "2.40x" in rows["3"]
    text = " ".join(out.split())  # rich wraps long lines
    assert "not on the search-time front" in text
    assert "best within budget: trial 2" in text
    # 5 + 5 + 5 + 0.02 epochs of trials and 0.5 of the sampler's screens, beside a sweep of nine at 5
    assert "trained 15.5 in all" in text and "9 rates at 5 epochs each trains 45" in text
    assert "validation: 6,000 images (one image is 0.017 points)" in text
