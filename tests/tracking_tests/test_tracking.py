"""The MLflow mirror: what a study, its trials and its artifacts look like in MLflow,
idempotency, resume, rebuilding from a record, and tracking that never stops a search."""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from autoprune.study.records import TrialRecord, mark_pareto
from autoprune.tracking import DEFAULT_TRACKING_URI, Connection, Tracker, trial_tags
from autoprune.tracking.keys import trial_run_name

PARENT_ARTIFACTS = {
    "pareto.html",
    "layer_heatmap.html",
    "param_importances.html",
    "report.html",
    "best_config.yaml",
    "dense_baseline.json",
    "study_meta.json",
}


def _runs(client: MlflowClient, name: str) -> tuple[object, dict[int, object]]:
    """The parent run and {trial number: run} of study ``name``."""
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autoprune.role") == "study"]
    assert len(parents) == 1
    trials = {}
    for r in runs:
        if r.data.tags.get("autoprune.role") == "trial":
            number = int(r.data.tags["trial_number"])
            assert number not in trials, f"trial {number} has two runs"
            trials[number] = r
    return parents[0], trials


def _log_study(tracker: Tracker, record, *, study=None, out_dir=None) -> dict[str, Path]:
    tracker.start_study(record.meta, record.storage)
    for t in record.trials:
        tracker.log_trial(record.meta, t, config_yaml=f"# trial {t.number}\nlayers: {{}}\n")
    return tracker.finish_study(record, study=study, best_config_yaml="layers: {}\n", out_dir=out_dir)


def test_study_is_mirrored_as_parent_and_nested_runs(sqlite_uri, record, optuna_study_for, tmp_path):
    warnings: list[str] = []
    tracker = Tracker(sqlite_uri, warn=warnings.append)
    files = _log_study(tracker, record, study=optuna_study_for(record), out_dir=tmp_path / "out")
    assert warnings == [] and tracker.enabled

    client = MlflowClient(tracking_uri=sqlite_uri)
    parent, trials = _runs(client, record.meta.name)
    assert sorted(trials) == [0, 1, 2, 3, 4, 5]
    for n, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # names that say what each trial is and how it ended; '*' marks the chosen one
    assert {n: r.info.run_name for n, r in trials.items()} == {
        0: "t00 1.00x 97.0% | dense",
        1: "* t01 2.00x 96.5% | filter50 features.0 shape70 features.3 2:4 features.6",
        2: "t02 3.33x 90.0% over budget | filter80 features.0,features.3,features.6",
        3: "t03 1.67x 96.2% | filter30 features.0 channel40 features.3",
        4: "t04 stopped | irregular90 features.0",
        5: "t05 failed | filter50 features.0 shape70 features.3 2:4 features.6",
    }
    assert {n: r.data.tags["outcome"] for n, r in trials.items()} == {
        0: "within-budget", 1: "within-budget", 2: "over-budget", 3: "within-budget", 4: "stopped", 5: "failed"}
    assert [n for n, r in trials.items() if r.data.tags["chosen"] == "true"] == [1]
    # a run lasts as long as its trial did (runs are written when a trial ends)
    t1_info = trials[1].info
    assert (t1_info.end_time - t1_info.start_time) / 1000 == pytest.approx(12.5, abs=2.0)
    # the experiment opens as model training and says what was searched and chosen
    exp = client.get_experiment_by_name(record.meta.name)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    note = exp.tags["mlflow.note.content"]
    assert "digits-cnn on digits" in note and "budget: accuracy at most 1.0 points worse" in note and "Chosen: trial 1" in note
    assert tracker.ui_hint(record.meta.name).endswith(
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60autoprune.role%60%20%3D%20%27trial%27&orderByKey=metrics.%60speedup%60&orderByAsc=false")

    # parent: settings, dense baseline, storage, summary
    p = parent.data
    assert p.params["model"] == "digits-cnn" and p.params["budget_mode"] == "absolute"
    assert p.params["admm.iters"] == "4" and p.params["admm.rho_growth"] == "1.3"
    assert {k: p.params[k] for k in ("channels_last", "fold_bn", "channel_multiple")} == {
        "channels_last": str(record.meta.channels_last), "fold_bn": str(record.meta.fold_bn),
        "channel_multiple": str(record.meta.channel_multiple)}
    assert (
        p.params["version.torch"] == "2.13.0" and p.params["device_description"] == "cpu:Test CPU (2 threads)"
    )
    assert float(p.params["dense_accuracy"]) == pytest.approx(0.97)
    assert p.metrics["dense_latency_ms"] == pytest.approx(10.0)
    # the storage as an absolute URL: record.storage is relative to the folder the search ran in
    assert p.tags["optuna.storage"] == f"sqlite:///{Path('runs/optuna.db').resolve()}"
    assert p.tags["optuna.study_name"] == record.meta.name
    assert p.metrics["n_trials"] == 6 and p.metrics["n_complete"] == 4 and p.metrics["n_feasible"] == 3
    assert p.metrics["best_feasible_speedup"] == pytest.approx(2.0)
    assert p.metrics["best_feasible_accuracy"] == pytest.approx(0.965)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == PARENT_ARTIFACTS
    assert set(files) == {
        "pareto",
        "layer_heatmap",
        "param_importances",
        "report",
        "best_config",
        "dense_baseline",
    }
    assert all(path.is_file() and path.parent == tmp_path / "out" for path in files.values())
    assert json.loads(files["dense_baseline"].read_text())["accuracy"] == pytest.approx(0.97)

    # a completed trial: layer targets, Optuna params, metrics, histories, tags, config
    t1 = trials[1]
    assert (
        t1.data.params["layer.features.0.type"] == "filter"
        and t1.data.params["layer.features.0.rate"] == "0.5"
    )
    assert (
        t1.data.params["layer.features.6.type"] == "2:4" and t1.data.params["layer.features.6.rate"] == "0.5"
    )
    assert (
        t1.data.params["layer.classifier.1.type"] == "none"
        and t1.data.params["layer.classifier.1.rate"] == "0.0"
    )
    assert not [k for k in t1.data.params if k.startswith("optuna.")]  # each layer once, as layer.*
    assert t1.data.params["seed"] == "0" and t1.data.params["version.autoprune"] == "0.1.0"
    for key, value in {
        "accuracy": 0.965,
        "accuracy_drop": 0.005,
        "hard_prune_accuracy": 0.80,
        "latency_ms": 5.0,
        "latency_p90_ms": 5.4,
        "speedup": 2.0,
        "macs": 1.1e6,
        "params_count": 0.9e5,
        "sparsity": 0.55,
    }.items():
        assert t1.data.metrics[key] == pytest.approx(value), key
    residual = client.get_metric_history(t1.info.run_id, "admm_residual")
    assert [(m.step, m.value) for m in sorted(residual, key=lambda m: m.step)] == [
        (0, 0.9),
        (1, 0.5),
        (2, 0.2),
        (3, 0.05),
    ]
    assert len(client.get_metric_history(t1.info.run_id, "train_loss")) == 6
    assert t1.data.tags["pareto"] == "true" and t1.data.tags["feasible"] == "true"
    assert t1.data.tags["state"] == "COMPLETE" and t1.data.tags["kernel.features.3"] == "shape-gemm"
    assert t1.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(t1.info.run_id)] == ["config.yaml"]
    local = client.download_artifacts(t1.info.run_id, "config.yaml", str(tmp_path))
    assert Path(local).read_text() == "# trial 1\nlayers: {}\n"

    assert {n for n, r in trials.items() if r.data.tags["pareto"] == "true"} == {0, 1, 2}
    assert trials[2].data.tags["feasible"] == "false"
    assert trials[4].info.status == "KILLED" and trials[4].data.tags["state"] == "PRUNED"
    assert trials[4].data.tags["stop_reason"].startswith("accuracy after the hard prune")
    assert (
        trials[5].info.status == "FAILED"
        and trials[5].data.tags["stop_reason"] == "RuntimeError: <boom> & friends"
    )
    assert "accuracy" not in trials[5].data.metrics


def test_logging_a_trial_again_updates_its_run(sqlite_uri, record):
    tracker = Tracker(sqlite_uri, warn=pytest.fail)
    meta = record.meta
    tracker.start_study(meta, record.storage)
    running = TrialRecord(
        number=1, state="RUNNING", params=record.trials[1].params, targets=record.trials[1].targets
    )
    tracker.log_trial(meta, running)
    tracker.log_trial(meta, record.trials[1], config_yaml="a: 1\n")
    tracker.log_trial(meta, record.trials[1], config_yaml="a: 1\n")

    # a second process resuming the study: same parent, same trial run
    again = Tracker(sqlite_uri, warn=pytest.fail)
    again.start_study(meta, record.storage)
    again.log_trial(meta, record.trials[1])

    client = MlflowClient(tracking_uri=sqlite_uri)
    _, trials = _runs(client, meta.name)  # asserts one parent and one run per trial
    assert list(trials) == [1]
    run = trials[1]
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
    assert len(client.get_metric_history(run.info.run_id, "admm_residual")) == 4
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 1


def test_finish_retags_pareto_membership(sqlite_uri, record_factory):
    record = record_factory(mark=False)  # trials logged before the front was known
    tracker = Tracker(sqlite_uri, warn=pytest.fail)
    tracker.start_study(record.meta, record.storage)
    for t in record.trials:
        tracker.log_trial(record.meta, t)
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert {r.data.tags["pareto"] for r in _runs(client, record.meta.name)[1].values()} == {"false"}

    mark_pareto(record.trials)
    tracker.finish_study(record, figures=False)
    _, trials = _runs(client, record.meta.name)
    assert {n for n, r in trials.items() if r.data.tags["pareto"] == "true"} == {0, 1, 2}


def test_mlflow_limits_are_respected(sqlite_uri, record):
    layers = {f"block{i}.conv": {"type": "filter", "rate": 0.25} for i in range(259)}
    layers["odd|name<>"] = {"type": "filter", "rate": 0.7000000000000001}
    meta = dataclasses.replace(record.meta, device_description="x" * 10_000)
    big = TrialRecord(
        number=7,
        state="COMPLETE",
        targets=layers,
        score=0.9,
        latency_ms=2.0,
        residuals=[1.0 / (i + 1) for i in range(2500)],
    )
    tracker = Tracker(sqlite_uri, warn=pytest.fail)
    tracker.log_trial(meta, big)
    assert tracker.enabled
    client = MlflowClient(tracking_uri=sqlite_uri)
    run = _runs(client, record.meta.name)[1][7]
    assert sum(k.startswith("layer.") for k in run.data.params) == 520
    assert len(run.data.params["device_description"]) == 6000
    assert run.data.params["layer.odd_name__.rate"] == "0.7"
    assert len(client.get_metric_history(run.info.run_id, "admm_residual")) == 2500


def test_sync_study_rebuilds_the_mirror_and_can_repeat(sqlite_uri, record, tmp_path):
    tracker = Tracker(sqlite_uri, warn=pytest.fail)
    files = tracker.sync_study(record, lambda t: f"trial: {t.number}\n", figures=False, out_dir=tmp_path)
    tracker2 = Tracker(sqlite_uri, warn=pytest.fail)
    tracker2.sync_study(record, lambda t: f"trial: {t.number}\n", figures=False)

    client = MlflowClient(tracking_uri=sqlite_uri)
    parent, trials = _runs(client, record.meta.name)
    assert sorted(trials) == [0, 1, 2, 3, 4, 5]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "best_config.yaml",
        "dense_baseline.json",
        "study_meta.json",
    }
    assert files["best_config"].read_text() == "trial: 1\n"  # the fastest feasible trial
    for t in record.trials:  # each trial's residuals, step by step, once (two syncs add nothing)
        history = client.get_metric_history(trials[t.number].info.run_id, "admm_residual")
        assert sorted((m.step, m.value) for m in history) == list(enumerate(t.residuals)), t.number
    assert [len(t.residuals) for t in record.trials] == [0, 4, 2, 2, 2, 0]  # the fixture: some with none


def test_unreachable_server_warns_once_and_the_search_goes_on(
    closed_url, record, optuna_study_for, tmp_path, monkeypatch
):
    import socket

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's choice is kept
    # "seconds, not minutes": count the connections tried to the server and their timeouts
    # (a server that drops packets would cost each of them in full), instead of timing the run
    port = urllib.parse.urlsplit(closed_url).port
    attempts: list[float | None] = []
    real_connect = socket.socket.connect

    def connect(sock, address):  # noqa: ANN001, ANN202
        if isinstance(address, tuple) and address[1] == port:
            attempts.append(sock.gettimeout())
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    warnings: list[str] = []
    tracker = Tracker(closed_url, warn=warnings.append)
    files = _log_study(tracker, record, study=optuna_study_for(record), out_dir=tmp_path / "out")
    tracker.sync_study(record)

    assert len(warnings) == 1, warnings
    assert closed_url in warnings[0] and "unreachable" in warnings[0]
    assert warnings[0].endswith("the search goes on without tracking") and "\n" not in warnings[0]
    assert not tracker.enabled
    assert len(attempts) == 1 and attempts[0] is not None and attempts[0] <= 5, attempts  # one try, bounded
    assert "report" in files and files["report"].is_file()  # the files are still written
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_a_failure_midway_turns_tracking_off_after_one_warning(sqlite_uri, record, monkeypatch):
    warnings: list[str] = []
    tracker = Tracker(sqlite_uri, warn=warnings.append)
    tracker.start_study(record.meta, record.storage)
    tracker.log_trial(record.meta, record.trials[0])
    calls = []

    def down(self, *args, **kwargs):
        calls.append(args)
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(MlflowClient, "log_batch", down)
    for t in record.trials[1:]:
        tracker.log_trial(record.meta, t)
    tracker.finish_study(record, figures=False)
    assert len(calls) == 1
    assert len(warnings) == 1 and "unreachable ([Errno 111] Connection refused)" in warnings[0]
    assert not tracker.enabled


def test_importance_errors_are_skipped_with_a_warning(
    sqlite_uri, record, optuna_study_for, tmp_path, monkeypatch
):
    import optuna.importance

    def broken(*args, **kwargs):
        raise RuntimeError("evaluator exploded")

    monkeypatch.setattr(optuna.importance, "get_param_importances", broken)
    warnings: list[str] = []
    tracker = Tracker(sqlite_uri, warn=warnings.append)
    files = _log_study(tracker, record, study=optuna_study_for(record), out_dir=tmp_path)
    assert len(warnings) == 1 and "importances" in warnings[0] and "evaluator exploded" in warnings[0]
    assert tracker.enabled and "param_importances" not in files and files["report"].is_file()
    client = MlflowClient(tracking_uri=sqlite_uri)
    parent, _ = _runs(client, record.meta.name)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == PARENT_ARTIFACTS - {
        "param_importances.html"
    }


def test_default_uri_is_sqlite_under_runs_in_the_current_folder(tmp_path, monkeypatch, record):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker()
    assert DEFAULT_TRACKING_URI == "sqlite:///runs/mlflow.db"
    assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    assert not (tmp_path / "runs").exists()  # nothing is written before something is logged
    tracker.start_study(record.meta, record.storage)
    assert tracker.enabled and (tmp_path / "runs" / "mlflow.db").is_file()


# ---------------------------------------------------------------- a real tracking server


def _get(url: str, path: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as resp:
        return json.load(resp)


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


@pytest.mark.slow
def test_a_study_logged_to_a_real_mlflow_server(mlflow_server, record, optuna_study_for, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    tracker = Tracker(mlflow_server, warn=pytest.fail)
    _log_study(tracker, record, study=optuna_study_for(record))
    tracker.log_trial(record.meta, record.trials[1])  # idempotent over HTTP too
    assert tracker.enabled

    exp = _get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=record.meta.name)
    exp_id = exp["experiment"]["experiment_id"]
    runs = _post(
        mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100}
    )["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, tg in zip(runs, tags) if tg.get("autoprune.role") == "study"]
    assert len(parents) == 1 and len(runs) == 7
    parent_id = parents[0]["info"]["run_id"]
    trials = {int(tg["trial_number"]): r for r, tg in zip(runs, tags) if tg.get("autoprune.role") == "trial"}
    assert sorted(trials) == [0, 1, 2, 3, 4, 5]
    for r, tg in zip(runs, tags):
        if tg.get("autoprune.role") == "trial":
            assert tg["mlflow.parentRunId"] == parent_id

    t1 = trials[1]
    params = {p["key"]: p["value"] for p in t1["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in t1["data"]["metrics"]}
    t1_tags = {t["key"]: t["value"] for t in t1["data"]["tags"]}
    assert params["layer.features.3.type"] == "shape" and params["layer.features.3.rate"] == "0.7"
    assert metrics["latency_ms"] == pytest.approx(5.0) and metrics["speedup"] == pytest.approx(2.0)
    assert t1_tags["pareto"] == "true" and t1["info"]["status"] == "FINISHED"
    assert trials[5]["info"]["status"] == "FAILED"
    history = _get(
        mlflow_server,
        "/api/2.0/mlflow/metrics/get-history",
        run_id=t1["info"]["run_id"],
        metric_key="admm_residual",
    )["metrics"]
    assert sorted((m.get("step", 0), m["value"]) for m in history) == [
        (0, 0.9),
        (1, 0.5),
        (2, 0.2),
        (3, 0.05),
    ]

    listed = _get(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=t1["info"]["run_id"])
    assert [f["path"] for f in listed["files"]] == ["config.yaml"]
    listed = _get(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=parent_id)
    assert {f["path"] for f in listed["files"]} == PARENT_ARTIFACTS
    parent_metrics = {m["key"]: m["value"] for m in parents[0]["data"]["metrics"]}
    assert parent_metrics["n_trials"] == 6 and parent_metrics["best_feasible_speedup"] == pytest.approx(2.0)


def test_a_tracked_search_ends_with_the_experiments_link_in_the_model_training_view(
        record, tmp_path, monkeypatch, capsys) -> None:
    import autoprune.cli as cli
    from autoprune.study import SearchResult

    def search(settings, *, reporter, callbacks):  # noqa: ANN001, ANN202 - the mirror as a real search drives it
        for c in callbacks:
            c.on_study_start(record.meta, record.storage)
        return SearchResult(record, tmp_path / "study", None)

    monkeypatch.setattr(cli, "run_search", search)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["search", "--budget", "1%", "--runs-dir", "r"]) == 0
    out = capsys.readouterr().out
    exp = MlflowClient(tracking_uri="sqlite:///r/mlflow.db").get_experiment_by_name(record.meta.name)
    last = out.rstrip().splitlines()[-1]
    # the database and its artifacts are named relative to this folder: the command says where to run it
    assert last.startswith(f"MLflow: mlflow ui --backend-store-uri sqlite:///r/mlflow.db (in {Path.cwd()})")
    assert f", then http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&" in last
    assert cli.main(["search", "--budget", "1%", "--runs-dir", "r", "--no-tracking"]) == 0
    assert "MLflow:" not in capsys.readouterr().out


# ---------------------------------------------------------------- a mirror that moves


def test_runs_folder_moves_with_its_artifacts(tmp_path, monkeypatch, record, _mlflow_template_db):
    # a search in project/ with the default URI; then runs/ is copied to elsewhere/ and the original removed
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "runs").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(_mlflow_template_db, project / "runs" / "mlflow.db")
    monkeypatch.chdir(project)
    tracker = Tracker(warn=pytest.fail)
    tracker.sync_study(record, lambda t: f"trial: {t.number}\n", figures=False)
    client = MlflowClient(tracking_uri=DEFAULT_TRACKING_URI)
    parent, trials = _runs(client, record.meta.name)
    assert client.get_experiment_by_name(record.meta.name).artifact_location == "runs/mlartifacts/digits-search"
    assert parent.info.artifact_uri.startswith("runs/mlartifacts/digits-search/")  # nothing names project/
    assert (project / parent.info.artifact_uri / "best_config.yaml").is_file()
    # the folder MLflow's own writers (the deployable model) must resolve the location from
    assert Connection.resolve(DEFAULT_TRACKING_URI).location_base(parent.info.artifact_uri) == project.resolve()
    # the Optuna storage tag names one database, whatever folder it is read from
    assert parent.data.tags["optuna.storage"] == f"sqlite:///{project.resolve()}/runs/optuna.db"

    shutil.copytree(project / "runs", elsewhere / "runs")
    shutil.rmtree(project)
    monkeypatch.chdir(elsewhere)
    moved = MlflowClient(tracking_uri="sqlite:///runs/mlflow.db")  # plain MLflow, beside the copy
    assert {a.path for a in moved.list_artifacts(parent.info.run_id)} == {
        "best_config.yaml", "dense_baseline.json", "study_meta.json"}
    got = moved.download_artifacts(trials[1].info.run_id, "config.yaml", str(tmp_path))
    assert Path(got).read_text() == "trial: 1\n"

    # autoprune writes beside the database even from another folder, through an absolute URI
    monkeypatch.chdir(tmp_path)
    again = Tracker(f"sqlite:///{elsewhere / 'runs' / 'mlflow.db'}", warn=pytest.fail)
    again.log_trial(record.meta, record.trials[2], config_yaml="trial: 2 again\n")
    assert not (tmp_path / "runs").exists()
    t2 = trials[2].info.artifact_uri
    assert (elsewhere / t2 / "config.yaml").read_text() == "trial: 2 again\n"


def test_a_repeated_configuration_is_named_and_tagged_as_a_repeat(record):
    # trial 6 reused trial 1's result, trial 7 repeated the stopped trial 4
    first, stopped = record.trials[1], record.trials[4]
    again = dataclasses.replace(first, number=6, repeat_of=1, pareto=False)
    stopped_again = dataclasses.replace(stopped, number=7, repeat_of=4)
    name = trial_run_name(first)
    head, what = name.split(" | ")
    assert trial_run_name(again) == head.replace("t01", "t06") + " = t01 | " + what
    assert trial_run_name(stopped_again).startswith("t07 stopped = t04 | ")
    tags = trial_tags(again)
    assert tags["outcome"] == "repeat" and tags["repeat_of"] == "1"  # out of `tags.outcome = 'within-budget'`
    assert trial_tags(stopped_again)["outcome"] == "repeat" and trial_tags(first)["outcome"] == "within-budget"
    assert "repeat_of" not in trial_tags(first)


def test_a_trial_run_is_tagged_with_its_worker_and_device(record) -> None:
    import dataclasses

    from autoprune.tracking.keys import trial_tags

    trial = dataclasses.replace(record.trials[1], worker="host-a:1234")
    tags = trial_tags(trial, record.meta)
    assert tags["worker"] == "host-a:1234" and tags["device"] == record.meta.device_description
    assert "worker" not in trial_tags(record.trials[1])  # older studies recorded no worker
