"""A tracking outage mid-search: the search warns once and goes on; ``autoprune sync`` then
brings MLflow level with the Optuna storage (runs, params, metrics, tags, artifacts), once."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from autoprune.cli import main
from autoprune.config import Schedule
from autoprune.study import SearchCallback, SearchSettings, TrackerCallback, run_search
from autoprune.tracking import Tracker

TRIALS = 4


def _trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`autoprune.role` = 'trial'", max_results=100)


def _expected_outcome(t) -> tuple[str, str]:  # noqa: ANN001 - a TrialRecord
    """The MLflow run status and ``outcome`` tag of a trial as the Optuna storage holds it."""
    if t.repeat_of is not None:
        return ("FINISHED" if t.state == "COMPLETE" else "KILLED"), "repeat"
    if t.state == "COMPLETE":
        return "FINISHED", ("within-budget" if t.feasible else "over-budget")
    return {"PRUNED": ("KILLED", "stopped"), "FAIL": ("FAILED", "failed")}[t.state]


@pytest.mark.slow
def test_an_outage_is_survived_and_backfilled_by_autoprune_sync(tmp_path, digits_baseline, server_control, capsys):
    root = tmp_path / "server"
    root.mkdir()
    port = server_control.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = server_control.start(root, port)
    warnings: list[str] = []

    class ServerGoesAway(SearchCallback):
        def on_trial_end(self, record, trial) -> None:  # noqa: ANN001 - after the mirror logged trial 1
            if trial.number == 1:
                server_control.stop(proc)

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = SearchSettings(budget=0.5, trials=TRIALS, checkpoint=str(digits_baseline[0]), study_name="outage",
                       storage=storage, runs_dir=str(tmp_path / "runs"), latency_batch=32, min_speedup=0.01,
                       admm=Schedule(iters=1, epochs=0.25, retrain_epochs=0.25))
    result = run_search(s, callbacks=[TrackerCallback(Tracker(url, warn=warnings.append)), ServerGoesAway()])
    # the search went on to the end without MLflow, and said so once
    assert sum(1 for t in result.record.trials if t.state in ("COMPLETE", "PRUNED")) == TRIALS
    assert len(warnings) == 1 and url in warnings[0], warnings

    # while the server is down, sync says so in one line and exits 2
    capsys.readouterr()
    assert main(["sync", "--study", "outage", "--storage", storage, "--tracking-uri", url,
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not bring MLflow level with study 'outage'" in err[0], err

    server_control.start(root, port)  # the same store, back
    client = MlflowClient(tracking_uri=url)
    before = _trial_runs(client, "outage")
    assert len(before) == 2  # trials 0 and 1 reached MLflow before the outage
    for _ in range(2):  # a second sync changes nothing
        assert main(["sync", "--study", "outage", "--storage", storage, "--tracking-uri", url,
                     "--runs-dir", str(tmp_path / "runs")]) == 0
        assert f"synced study outage: {TRIALS} trials" in capsys.readouterr().out
        runs = _trial_runs(client, "outage")
        numbers = sorted(int(r.data.tags["trial_number"]) for r in runs)
        assert numbers == list(range(TRIALS))  # every trial once: none missing, none duplicated
        assert {r.info.run_id for r in before} <= {r.info.run_id for r in runs}  # the earlier runs were kept
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    outcomes = []
    for t in result.record.trials:
        run = by_number[t.number]
        # what became of the trial in the storage, in MLflow's run status and the outcome tag
        assert (run.info.status, run.data.tags["outcome"]) == _expected_outcome(t), t.number
        assert run.data.tags["state"] == t.state
        outcomes.append(run.data.tags["outcome"])
        if t.state == "COMPLETE":
            assert run.data.metrics["accuracy"] == pytest.approx(t.accuracy)
            assert run.data.metrics["latency_ms"] == pytest.approx(t.latency_ms)
        if t.targets:  # a pruned trial's config travels as an artifact
            assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
            assert any(k.startswith("layer.") for k in run.data.params)
    # both sides are there: dense and filter 50% within the 50-point budget, filter 80% (about 70 points) over
    assert {"within-budget", "over-budget"} <= set(outcomes), outcomes
    parent = client.search_runs([client.get_experiment_by_name("outage").experiment_id],
                                "tags.`autoprune.role` = 'study'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"


def test_sync_of_a_missing_storage_or_study_is_one_line_and_exit_2(tmp_path, capsys):
    import optuna

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["sync", "--study", "nope", "--storage", storage, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "there is no Optuna storage" in err[0], err
    optuna.create_study(study_name="other", storage=storage)
    assert main(["sync", "--study", "nope", "--storage", storage, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0], err
