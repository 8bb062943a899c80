"""Fixtures for the tracking and report tests: a synthetic study, a fresh SQLite tracking
database per test, an in-memory Optuna study mirroring the synthetic one, and a real
``mlflow server`` on 127.0.0.1 for the session (``mlflow_server``, reusable by any test)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoprune.study.records import StudyMeta, StudyRecord, TrialRecord, mark_pareto

LAYERS = ("features.0", "features.3", "features.6", "classifier.1")
SERVER_START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_meta(name: str = "digits-search") -> StudyMeta:
    return StudyMeta(
        name=name,
        model="digits-cnn",
        dataset="digits",
        checkpoint="runs/baselines/digits-cnn-digits.pt",
        device="cpu",
        device_description="cpu:Test CPU (2 threads)",
        budget=0.01,
        budget_mode="absolute",
        latency_batch=32,
        dtype="fp32",
        space="search_spaces/digits-cnn.yaml",
        space_spec={"variables": {"features.*.type": ["filter", "shape", "none"]}},
        sampler="tpe",
        seed=0,
        admm={"iters": 4, "epochs": 0.5, "rho": 1.0, "rho_growth": 1.3, "retrain_epochs": 2},
        dense_accuracy=0.97,
        dense_test_accuracy=0.965,
        dense_latency_ms=10.0,
        dense_latency_p90_ms=10.8,
        dense_macs=2.5e6,
        dense_params=2.1e5,
        versions={"torch": "2.13.0", "autoprune": "0.1.0"},
    )


def _targets(*specs: dict) -> dict[str, dict]:
    return dict(zip(LAYERS, specs))


def _params(targets: dict[str, dict]) -> dict:
    out: dict = {}
    for name, t in targets.items():
        out[f"layer.{name}.type"] = t["type"]
        if t.get("rate") is not None:
            out[f"layer.{name}.rate"] = t["rate"]
    return out


def make_record(
    name: str = "digits-search", storage: str = "sqlite:///runs/optuna.db", *, mark: bool = True
) -> StudyRecord:
    """Six trials: dense; feasible and on the front; infeasible but fastest (on the front);
    feasible but dominated; stopped early (PRUNED); failed (with markup in its reason)."""
    none = {"type": "none"}
    t1 = _targets({"type": "filter", "rate": 0.5}, {"type": "shape", "rate": 0.7}, {"type": "2:4"}, none)
    t2 = _targets(
        {"type": "filter", "rate": 0.8},
        {"type": "filter", "rate": 0.8},
        {"type": "filter", "rate": 0.8},
        none,
    )
    t3 = _targets({"type": "filter", "rate": 0.3}, {"type": "channel", "rate": 0.4}, none, none)
    t4 = _targets({"type": "irregular", "rate": 0.9}, none, none, none)
    dense_t = _targets(none, none, none, none)
    trials = [
        TrialRecord(
            number=0,
            state="COMPLETE",
            params=_params(dense_t),
            targets=dense_t,
            is_dense=True,
            score=0.97,
            score_drop=0.0,
            hard_prune_score=0.97,
            latency_ms=10.0,
            latency_p90_ms=10.8,
            speedup=1.0,
            macs=2.5e6,
            params_count=2.1e5,
            sparsity=0.0,
            feasible=True,
            seconds=1.0,
        ),
        TrialRecord(
            number=1,
            state="COMPLETE",
            params=_params(t1),
            targets=t1,
            score=0.965,
            score_drop=0.005,
            hard_prune_score=0.80,
            latency_ms=5.0,
            latency_p90_ms=5.4,
            speedup=2.0,
            macs=1.1e6,
            params_count=0.9e5,
            sparsity=0.55,
            kernels={"features.3": "shape-gemm"},
            feasible=True,
            residuals=[0.9, 0.5, 0.2, 0.05],
            train_losses=[1.2, 0.8, 0.5, 0.4, 0.3, 0.25],
            seconds=12.5,
        ),
        TrialRecord(
            number=2,
            state="COMPLETE",
            params=_params(t2),
            targets=t2,
            score=0.90,
            score_drop=0.07,
            hard_prune_score=0.30,
            latency_ms=3.0,
            latency_p90_ms=3.3,
            speedup=10.0 / 3.0,
            macs=0.4e6,
            params_count=0.3e5,
            sparsity=0.8,
            feasible=False,
            residuals=[1.1, 0.7],
            train_losses=[2.0, 1.0],
            seconds=11.0,
        ),
        TrialRecord(
            number=3,
            state="COMPLETE",
            params=_params(t3),
            targets=t3,
            score=0.962,
            score_drop=0.008,
            hard_prune_score=0.9,
            latency_ms=6.0,
            latency_p90_ms=6.5,
            speedup=10.0 / 6.0,
            macs=1.5e6,
            params_count=1.4e5,
            sparsity=0.3,
            feasible=True,
            residuals=[0.5, 0.1],
            train_losses=[0.9, 0.5],
            seconds=10.0,
        ),
        TrialRecord(
            number=4,
            state="PRUNED",
            params=_params(t4),
            targets=t4,
            hard_prune_score=0.41,
            stop_reason="accuracy after the hard prune 41.0% is below 95.0%",
            residuals=[1.3, 1.2],
        ),
        TrialRecord(
            number=5,
            state="FAIL",
            params=_params(t1),
            targets=t1,
            stop_reason="RuntimeError: <boom> & friends",
        ),
    ]
    if mark:
        mark_pareto(trials)
    return StudyRecord(make_meta(name), storage, trials)


def make_optuna_study(record: StudyRecord):
    """An in-memory two-objective Optuna study holding the record's completed trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], study_name=record.meta.name)
    types = CategoricalDistribution(["none", "filter", "channel", "shape", "irregular", "2:4"])
    for t in record.completed:
        dists = {k: (types if k.endswith(".type") else FloatDistribution(0.0, 0.95)) for k in t.params}
        study.add_trial(
            optuna.trial.create_trial(params=t.params, distributions=dists, values=[t.accuracy, t.latency_ms])
        )
    return study


@pytest.fixture
def record() -> StudyRecord:
    return make_record()


@pytest.fixture
def record_factory() -> Callable[..., StudyRecord]:
    return make_record


@pytest.fixture
def optuna_study_for() -> Callable[[StudyRecord], object]:
    return make_optuna_study


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database; copying it saves ~1 s of migrations per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(tmp_path, _mlflow_template_db) -> str:
    """A fresh SQLite tracking URI (its own database) for one test."""
    db = tmp_path / "tracking" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_mlflow_template_db, db)
    return f"sqlite:///{db}"


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it spawned (its own process group)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    else:  # the server is gone; its children may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """Start ``mlflow server`` on 127.0.0.1:``port`` with its store in ``root`` (SQLite backend,
    proxied artifacts) and wait until it is healthy; stop it with :func:`stop_server`."""
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    # MLflow 3.x also starts a job runner with a dozen huey worker processes; not needed here.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"mlflow server exited with status {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S:.0f} s:\n{tail}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts) for the
    session; yields its URL, e.g. ``http://127.0.0.1:54321``."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start_mlflow_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@pytest.fixture
def closed_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def server_control() -> Iterator[SimpleNamespace]:
    """For a test that starts, stops and restarts its own ``mlflow server``:
    ``start(root, port) -> process``, ``stop(process)``, ``free_port()``; every server it
    started is stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(root: Path, port: int) -> subprocess.Popen:
        proc = start_mlflow_server(root, port)
        started.append(proc)
        return proc

    yield SimpleNamespace(start=start, stop=stop_server, free_port=free_port)
    for proc in started:
        stop_server(proc)
