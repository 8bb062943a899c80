"""A study written before the renovation (issue 14) loads after it: its record, its summary,
the config exported from it, and a resumed search on it.

The fixture ``tests/fixtures/pre_reno_study/`` was made with autoprune at commit 0a467df:
``autoprune search --model digits-cnn --budget 50% --trials 3 --study-name pre-reno --storage
sqlite:///pre_reno_study.db --runs-dir runs --admm-iters 1 --admm-epochs 0.25 --retrain-epochs
0.25 --latency-batch 32 --min-speedup 0.01 --no-tracking``; ``summary.json`` and
``best_config.yaml`` are the files that run wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoprune.cli import main
from autoprune.config import PruneConfig
from autoprune.study import SearchResult, SearchSettings, best_config_yaml, run_search, study_record
from autoprune.study.records import FORMER_SCORE_KEYS
from autoprune.study.storage import load_autoprune_study

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_reno_study"
STORED_URL = "sqlite:///pre_reno_study.db"  # the storage URL the study was made with (its configs name it)
NAME = "pre-reno"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A copy of the fixture's storage (the checkout's copy is never written)."""
    db = tmp_path / "study.db"
    shutil.copy(FIXTURE / "study.db", db)
    return f"sqlite:///{db}"


def test_the_record_and_summary_of_an_old_study_are_what_it_wrote(url: str) -> None:
    summary = json.loads((FIXTURE / "summary.json").read_text())
    record = study_record(load_autoprune_study(NAME, url), STORED_URL)
    meta = record.meta.to_dict()
    # fields added since take their defaults: an old study searched top-1 accuracy, maximized
    assert (meta.pop("metric"), meta.pop("direction")) == ("accuracy", "maximize")
    # ... and it climbed no rungs (issue 22): no fidelity recorded, the validation set's size unknown
    assert (meta.pop("fidelity"), meta.pop("val_size")) == (None, None)
    assert meta.pop("runtime") == "torch"  # ... and measured in torch eager (issue 24)
    assert meta == summary["meta"]
    assert [t.state for t in record.trials] == ["COMPLETE"] * 3 and record.trials[0].is_dense
    best = record.best_feasible()
    assert best is not None and best.remeasured  # the end-of-search re-measurement is read back
    result = SearchResult(record, Path(summary["study_dir"]), Path(summary["best_config"]), summary["trials"]["ran_here"],
                          summary["interrupted"], summary["seconds"], notes=summary["notes"])
    now = json.loads(json.dumps(result.to_dict(), default=str))
    assert (now["meta"].pop("metric"), now["meta"].pop("direction")) == ("accuracy", "maximize")
    assert (now["meta"].pop("fidelity"), now["meta"].pop("val_size")) == (None, None)
    assert now["meta"].pop("runtime") == "torch"
    for trial in [*now["front"], now["best_feasible"], now["best_uniform"]]:
        if trial is not None:
            assert trial.pop("worker") is None  # an old study recorded no worker
            # no rungs climbed, no epochs counted (the study is older than both)
            assert (trial.pop("rungs"), trial.pop("epochs"), trial.pop("stopped_at")) == ([], None, None)
            assert trial.pop("method") is None  # nor how each trial pruned (the study's trial method then)
    # the summary's effort: nothing counted, no rung to correlate
    assert now.pop("epochs") == {"budget": None, "per_full_trial": None, "spent": 0.0}
    assert now.pop("rung_correlation") == {"pairs": 0, "screen": None, "short": None}
    # the trial record's scores are named for what they are since (score, score_drop,
    # hard_prune_score: the study's metric, whatever it is); the old summary's values, renamed
    for trial in [*summary["front"], summary["best_feasible"], summary["best_uniform"]]:
        if trial is not None:
            for former, name in FORMER_SCORE_KEYS.items():
                trial[name] = trial.pop(former)
    assert now == summary


def test_the_config_of_an_old_study_is_the_same_plus_its_method_and_metric(url: str) -> None:
    record = study_record(load_autoprune_study(NAME, url), STORED_URL)
    text = best_config_yaml(record, record.best_feasible())
    # the two lines configs record since the Python API (how trials pruned, the metric's name) ...
    added = "  trial_method: magnitude\n  metric: accuracy\n"
    assert added in text
    # ... and otherwise byte for byte what the old study wrote
    assert text.replace(added, "") == (FIXTURE / "best_config.yaml").read_text()


def test_export_reads_an_old_study(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "best.yaml"
    assert main(["export", "--study", NAME, "--storage", url, "--out", str(out)]) == 0
    assert "trial 2 of study pre-reno" in capsys.readouterr().out
    exported, stored = PruneConfig.from_yaml(out), PruneConfig.from_yaml(FIXTURE / "best_config.yaml")
    assert exported.layers == stored.layers and exported.admm == stored.admm
    assert exported.origin["metrics"] == stored.origin["metrics"]


@pytest.mark.slow
def test_an_old_study_resumes(url: str, tmp_path: Path, digits_baseline) -> None:  # noqa: ANN001
    # the study's own settings (its fast ADMM schedule, its budget) apply: none is asked here
    s = SearchSettings(study_name=NAME, storage=url, checkpoint=str(digits_baseline[0]), trials=4,
                       runs_dir=str(tmp_path / "runs"), min_speedup=0.01)
    result = run_search(s)
    assert result.ran == [3]
    assert [t.state for t in result.record.trials][:3] == ["COMPLETE"] * 3
    assert result.record.trials[3].state in ("COMPLETE", "PRUNED")
    assert result.record.meta.budget == 0.5 and result.record.meta.admm["iters"] == 1
