"""What a user sees: a small real search opened in the MLflow UI (a real ``mlflow server``) and
in optuna-dashboard, rendered by headless Chromium (Debian's ``chromium``; the fixture installs
it when missing, or the tests skip with the reason). The DOM after the pages' scripts ran is
read as text, so a check fails when the page shows something else."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from autoprune.config import Schedule
from autoprune.study import SearchSettings, run_search
from autoprune.study.records import SIGNATURE_ATTR, StudyRecord
from autoprune.tracking import Tracker
from autoprune.tracking.keys import trial_run_name

FAST = Schedule(iters=1, epochs=0.25, rho=1.0, retrain_epochs=0.25)
RENDER_BUDGET_MS = 15000  # Chromium's virtual time for the page's scripts and requests
INSTALL_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless-capable Chromium, installed with apt-get when missing (as root)."""
    found = _find_chromium()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True,
                           timeout=INSTALL_TIMEOUT_S, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = _find_chromium()
    if found is None:
        pytest.skip("no chromium: install Debian's 'chromium' package (apt-get install chromium) to run the UI checks")
    return found


def page_text(chromium: str, url: str) -> list[str]:
    """The text of ``url`` once its scripts ran, one visible string per item."""
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                        f"--virtual-time-budget={RENDER_BUDGET_MS}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.sub(r"<(script|style)\b.*?</\1>", "", r.stdout, flags=re.S)
    return [s for s in (html.unescape(p).strip() for p in re.split(r"<[^>]+>", body)) if s]


def _serve(cmd: list[str], health: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{Path(cmd[0]).name} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2):
                return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{health} did not answer within 60 s")


@pytest.fixture(scope="module")
def small_search(tmp_path_factory, digits_baseline, mlflow_server) -> Iterator[tuple[StudyRecord, Tracker, str]]:
    """Three trials over two configurations (one is repeated), mirrored to the real server."""
    tmp = tmp_path_factory.mktemp("ui-search")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"include": ["features.3"], "types": ["filter"],
                                     "rate": {"low": 0.5, "high": 0.9, "step": 0.4}}))
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    settings = SearchSettings(checkpoint=str(digits_baseline[0]), runs_dir=str(tmp / "runs"), trials=3,
                              latency_batch=32, admm=FAST, study_name="ui-shots", space=str(space), budget=0.99,
                              min_speedup=0.01, storage=storage)
    tracker = Tracker(mlflow_server, warn=pytest.fail)
    record = run_search(settings, tracker=tracker).record
    yield record, tracker, storage


@pytest.mark.slow
def test_mlflow_ui_shows_the_trial_runs_on_the_printed_link(chromium, small_search) -> None:
    record, tracker, _ = small_search
    hint = tracker.ui_hint(record.meta.name)
    url = hint.split("MLflow: ", 1)[1]
    assert "workflowType=machine_learning" in url
    text = page_text(chromium, url)
    assert "Run Name" in text, text[:80]  # the runs table, not the GenAI overview ("No data available")
    best = record.best_feasible()
    for t in record.trials:  # every trial on the first page, flat (not folded under the study's run)
        name = trial_run_name(t, chosen=best is not None and t.number == best.number)
        assert name in text, (name, [s for s in text if " | " in s])
        assert f"{t.final_speedup:.2f}x {100 * t.accuracy:.1f}%" in name  # the measured speedup and accuracy
    runs_shown = [s for s in text if re.match(r"^\*? ?t\d\d ", s)]
    assert len(runs_shown) == len(record.trials)  # the study's own run is filtered out


@pytest.mark.slow
def test_optuna_dashboard_names_the_objectives_and_lists_a_configuration_once(chromium, small_search,
                                                                               tmp_path) -> None:
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    if importlib.util.find_spec("optuna_dashboard") is None or not dashboard.is_file():
        pytest.skip("optuna-dashboard is not installed (it is not a dependency of autoprune)")
    record, _, storage = small_search
    import optuna

    study = optuna.load_study(study_name=record.meta.name, storage=storage)
    repeats = [t.number for t in record.trials if t.repeat_of is not None]
    assert repeats, "the search was meant to repeat a configuration"
    port = free_port()
    cmd = [str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    proc = _serve(cmd, f"http://127.0.0.1:{port}/api/studies", tmp_path / "dashboard.log")
    try:
        study_id = study._study_id
        text = page_text(chromium, f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    # the Pareto front's axes carry the objectives' names (were "0" and "1")
    axes = text.index("Objective X:")
    assert text[axes + 1] == "accuracy" and "latency_ms" in text[axes + 2:axes + 5]
    # the front's card: "Best Trials" then "Trial N" per member, or "Best Trial (number=N)" for a front of one
    one = [int(m.group(1)) for s in text if (m := re.fullmatch(r"Best Trial \(number=(\d+)\)", s))]
    assert one or "Best Trials" in text, text[axes:]
    listed = one or [int(m.group(1)) for s in text[text.index("Best Trials"):] if (m := re.fullmatch(r"Trial (\d+)", s))]
    assert listed and not set(listed) & set(repeats)  # a repeat is not a best trial of its own
    signatures = [study.trials[n].user_attrs[SIGNATURE_ATTR] for n in listed]
    assert len(signatures) == len(set(signatures))  # each configuration once
