"""Shared fixtures: quiet MLflow, a trained digits baseline cached for the session; every test
runs in its own temporary folder, and the session fails if the checkout changed while it ran."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# latency measurements spend 0.02 s each instead of 0.5 s (autoprune.latency.default_min_seconds):
# the suite's searches time tiny models many times and assert nothing that needs the precision;
# subprocesses (the CLI, workers, the GPU check's dry run) inherit it
os.environ.setdefault("AUTOPRUNE_TIMING_SECONDS", "0.02")
# pytest -n 2 (pytest-xdist, pyproject's addopts): two workers share the machine's cores, so each
# one's torch (and every process it starts) uses one thread, not all of them twice over
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2  # torch threads of the suite's own training

ROOT = Path(__file__).resolve().parents[1]
# what running the suite may create or change in the checkout: interpreter and tool caches
_NOT_WATCHED_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                     ".hypothesis", ".tox", ".nox"}


def _not_watched(name: str) -> bool:
    return name in _NOT_WATCHED_DIRS or name.endswith(".egg-info")


def checkout_snapshot(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """Every file of the checkout (git-ignored ones included, such as ``runs/``) as
    ``relative path -> (size, mtime in ns)``, and every folder as ``path/ -> (-1, 0)``;
    caches (``.venv``, ``__pycache__``, ``.pytest_cache``, ``*.egg-info``, ...) left out."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _not_watched(d))
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out[rel + "/"] = (-1, 0)
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # removed while we walked: it is not there
                continue
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def checkout_changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """``"added PATH"``, ``"removed PATH"``, ``"changed PATH"`` for each difference, sorted by path."""
    out = []
    for path in sorted(set(before) | set(after)):
        if path not in before:
            out.append(f"added {path}")
        elif path not in after:
            out.append(f"removed {path}")
        elif before[path] != after[path]:
            out.append(f"changed {path}")
    return out


def pytest_sessionstart(session) -> None:  # noqa: ANN001
    session.config.stash[_SNAPSHOT] = checkout_snapshot()


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    before = session.config.stash.get(_SNAPSHOT, None)
    if before is None:
        return
    changes = checkout_changes(before, checkout_snapshot())
    session.config.stash[_CHANGES] = changes
    if changes and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    changes = config.stash.get(_CHANGES, [])
    if changes:
        shown = changes[:50] + ([f"... and {len(changes) - 50} more"] if len(changes) > 50 else [])
        terminalreporter.section("the checkout changed during the test run", sep="=", red=True, bold=True)
        for line in shown:
            terminalreporter.line(f"  {line}", red=True)
        terminalreporter.line("FAILED: tests must write only into their temporary folders (tmp_path).", red=True,
                              bold=True)


_SNAPSHOT = pytest.StashKey[dict]()
_LONGEST = {"test_examples.py", "test_gpu_check.py", "test_cli_flow.py", "test_outage.py", "test_search_vs_uniform.py"}
_CHANGES = pytest.StashKey[list]()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):  # noqa: ANN001, ANN202
    """Each test starts in its own temporary folder, so that whatever a command writes
    relative to the current folder (``runs/``, MLflow's database, caches) stays out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    import torch

    # the slow tests first, the longest (about 20-90 s each) before them, so that two workers
    # do not end on one long test each
    def rank(item) -> int:  # noqa: ANN001
        if "slow" not in item.keywords:
            return 2
        return 0 if item.path.name in _LONGEST else 1

    items[:] = sorted(items, key=rank)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory):  # noqa: ANN001, ANN201
    """A digits-cnn trained on digits once per test session (path to its checkpoint)."""
    import torch

    from autoprune.pipeline import train_baseline

    torch.set_num_threads(THREADS)
    path = tmp_path_factory.mktemp("baseline") / "digits-cnn-digits.pt"
    ckpt, path = train_baseline("digits-cnn", "digits", device=torch.device("cpu"), seed=0, out=path)
    return path, ckpt


def _randomize_bn(model) -> None:  # noqa: ANN001
    """Give every BatchNorm non-trivial statistics and affine parameters (seeded), so that
    equivalence tests notice a channel whose BN shift was not removed with it."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.2
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5


@pytest.fixture
def randomize_bn():  # noqa: ANN201
    return _randomize_bn
