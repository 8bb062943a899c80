"""A real search mirrored to a real ``mlflow server`` on 127.0.0.1, read back over REST."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest


def _get(base: str, path: str, **params) -> dict:  # noqa: ANN003
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_autoprune_search_mirrors_to_a_real_mlflow_server(mlflow_server, digits_baseline, tmp_path) -> None:
    cmd = [sys.executable, "-m", "autoprune.cli", "search", "--budget", "2%", "--trials", "4", "--checkpoint",
           str(digits_baseline[0]), "--study-name", "mirrored", "--runs-dir", str(tmp_path / "runs"),
           "--tracking-uri", mlflow_server, "--admm-iters", "2", "--admm-epochs", "0.25", "--retrain-epochs", "0.5",
           "--latency-batch", "32", "--min-speedup", "0.01", "--trial-method", "admm", "--json"]  # ADMM: residuals
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stderr.lower(), r.stderr[-2000:]
    summary = json.loads(r.stdout)

    exp = _get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="mirrored")
    runs = _post(mlflow_server, "/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, tg in zip(runs, tags) if tg.get("autoprune.role") == "study"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    trials = {int(tg["trial_number"]): run for run, tg in zip(runs, tags) if tg.get("autoprune.role") == "trial"}
    assert sorted(trials) == [0, 1, 2, 3]
    for run in trials.values():
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["mlflow.parentRunId"] == parent_id

    parent_params = {p["key"]: p["value"] for p in parents[0]["data"]["params"]}
    assert parent_params["model"] == "digits-cnn" and parent_params["budget"] == "0.02"
    assert "torch" in " ".join(parent_params) and "seed" in parent_params

    # trial 1 is the enqueued uniform filter-50% config: every layer's type and rate, and what it measured
    t1 = trials[1]
    params = {p["key"]: p["value"] for p in t1["data"]["params"]}
    assert params["layer.features.3.type"] == "filter" and float(params["layer.features.3.rate"]) == 0.5
    metrics = {m["key"]: m["value"] for m in t1["data"]["metrics"]}
    for key in ("accuracy", "accuracy_drop", "latency_ms", "latency_p90_ms", "speedup", "macs", "params_count",
                "sparsity"):
        assert key in metrics, key
    # the mirror holds what the Optuna storage (the source of truth) holds
    from autoprune.study import study_record
    from autoprune.study.storage import load_autoprune_study

    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    stored = study_record(load_autoprune_study("mirrored", url), url).trials[1]
    assert metrics["speedup"] == pytest.approx(stored.speedup) and metrics["accuracy"] == pytest.approx(stored.accuracy)
    assert summary["study"] == "mirrored"
    history = _get(mlflow_server, "/api/2.0/mlflow/metrics/get-history", run_id=t1["info"]["run_id"],
                   metric_key="admm_residual")["metrics"]
    assert sorted(m.get("step", 0) for m in history) == [0, 1]  # two ADMM iterations
    losses = _get(mlflow_server, "/api/2.0/mlflow/metrics/get-history", run_id=t1["info"]["run_id"],
                  metric_key="train_loss")["metrics"]
    assert len(losses) >= 3
    t1_tags = {t["key"]: t["value"] for t in t1["data"]["tags"]}
    assert t1_tags["state"] == "COMPLETE"

    # what the runs table shows: names that say what each trial is, its outcome, the chosen one,
    # how long it took; the experiment's view and description
    record = study_record(load_autoprune_study("mirrored", url), url)
    best = record.best_feasible()
    outcomes = {"COMPLETE": ("within-budget", "over-budget"), "PRUNED": ("stopped",), "FAIL": ("failed",)}
    # the accuracy-latency front of the completed trials, from the values the Optuna storage holds
    done = {t.number: (t.accuracy, t.latency_ms) for t in record.trials
            if t.state == "COMPLETE" and t.repeat_of is None}
    front = {n for n, (acc, ms) in done.items()
             if not any(a >= acc and m <= ms and (a, m) != (acc, ms) for a, m in done.values())}
    assert front
    for t in record.trials:
        run = trials[t.number]
        tg = {x["key"]: x["value"] for x in run["data"]["tags"]}
        name = run["info"]["run_name"]
        chosen = best is not None and t.number == best.number
        assert name.startswith(f"{'* ' if chosen else ''}t{t.number:02d} "), name
        assert tg["chosen"] == ("true" if chosen else "false") and tg["outcome"] in outcomes[t.state]
        assert tg["pareto"] == ("true" if t.number in front else "false"), (t.number, sorted(front))
        if t.state == "COMPLETE":
            # the result first, where MLflow's runs table does not cut it off
            assert name.split(" | ")[0].endswith(f"{t.final_speedup:.2f}x {100 * t.accuracy:.1f}%" +
                                                 (" over budget" if t.feasible is False else "") +
                                                 (f" = t{t.repeat_of:02d}" if t.repeat_of is not None else ""))
            assert run["info"]["status"] == "FINISHED"
        elif t.state == "PRUNED":
            assert name.endswith("| stopped") and run["info"]["status"] == "KILLED"
        if t.seconds:  # the run lasts as long as the trial did, give or take the logging
            lasted = (int(run["info"]["end_time"]) - int(run["info"]["start_time"])) / 1000
            assert lasted == pytest.approx(t.seconds, abs=1.5), (t.number, lasted, t.seconds)
    # (starred where nothing pruned kept the budget: dense is then the chosen one)
    star = "* " if best is not None and best.is_dense else ""
    dense = record.trials[0]
    assert dense.is_dense
    assert trials[0]["info"]["run_name"] == f"{star}t00 {dense.final_speedup:.2f}x {100 * dense.accuracy:.1f}% | dense"
    exp = _get(mlflow_server, "/api/2.0/mlflow/experiments/get", experiment_id=exp["experiment"]["experiment_id"])
    exp_tags = {t["key"]: t["value"] for t in exp["experiment"]["tags"]}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    assert "digits-cnn on digits" in exp_tags["mlflow.note.content"]
    import optuna

    assert optuna.load_study(study_name="mirrored", storage=url).metric_names == ["accuracy", "latency_ms"]

    listed = _get(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=t1["info"]["run_id"])
    assert "config.yaml" in [f["path"] for f in listed["files"]]
    listed = _get(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=parent_id)
    names = {f["path"] for f in listed["files"]}
    assert {"pareto.html", "layer_heatmap.html", "dense_baseline.json", "report.html"} <= names
