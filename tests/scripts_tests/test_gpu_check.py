"""scripts/gpu_check.sh: the CUDA check's dry run (every step on the CPU) and its summary."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
BENCHES = [f"bench-resnet18-b{b}-{d}" for b in (32, 256) for d in ("fp32", "fp16", "bf16")]
STEPS = ["install", "environment", "cuda-tests", *BENCHES, "bench-alexnet-shape80", "bench-2of4",
         "train-digits-cnn", "search-digits-cnn", "search-digits-cnn-onnxruntime", "train-resnet20", "search-resnet20"]
# what a dry run skips on purpose: fp16 (CUDA only), the batch-256 repeats of the batch-32 command,
# and resnet20's train and search (the same two commands as digits-cnn's)
DRY_SKIPS = {"bench-resnet18-b32-fp16", "bench-resnet18-b256-fp32", "bench-resnet18-b256-fp16",
             "bench-resnet18-b256-bf16", "search-digits-cnn-onnxruntime", "train-resnet20", "search-resnet20"}


def _check(tmp_path: Path, *args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(SCRIPT), *args], check=False, env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return r, out


@pytest.mark.slow
def test_dry_run_passes_and_its_summary_has_every_step_and_figure(tmp_path: Path) -> None:
    import torch

    r, out = _check(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "steps.log"]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["overall"] == "pass" and data["mode"] == "dry-run"
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == STEPS
    for name, s in steps.items():
        if name in DRY_SKIPS:
            assert s["status"] == "skip" and s["reason"], name
        else:
            assert s["status"] == "pass", (name, s["reason"], s["notes"])
            assert s["seconds"] is not None and s["seconds"] > 0

    install = steps["install"]["figures"]
    assert install["modules_ok"] == install["modules"] >= 10
    assert data["environment"]["torch"] == torch.__version__
    tests = steps["cuda-tests"]["figures"]
    assert tests["collected"] > 0 and tests["failed"] == tests["errors"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["collected"]  # as in CI: every CUDA test skips cleanly

    for name in ("bench-resnet18-b32-fp32", "bench-resnet18-b32-bf16", "bench-alexnet-shape80", "bench-2of4"):
        f, raw = steps[name]["figures"], data["outputs"][name]  # the summary's figures, the bench's output
        dense, compacted = raw["dense"]["latency"], raw["compacted"]["latency"]
        assert (f["dense_ms"], f["compacted_ms"]) == (dense["median_ms"], compacted["median_ms"]), name
        assert f["dense_ms"] > 0 and f["compacted_ms"] > 0, name
        # the speedup reported is the bench's: dense/compacted paired round by round (1.0: nothing changed)
        assert f["measured_speedup"] == pytest.approx(statistics.median(
            d / c for d, c in zip(dense["rounds_ms"], compacted["rounds_ms"]))), name
        assert f["speedup"] == (1.0 if raw["unchanged"] else f["measured_speedup"]), name
        assert sum(f["kernels"].values()) > 0 and f["device"].startswith("cpu"), name
        assert data["outputs"][name]["settings"]["dtype"] == steps[name]["info"]["dtype"]
    assert steps["bench-resnet18-b32-fp32"]["figures"]["mac_ratio"] > 2  # filter 50% removed channels
    assert steps["bench-2of4"]["figures"]["mac_ratio"] > 1  # 2:4 halves the 1x1 convs' weights

    for model in ("digits-cnn",):
        train, search = steps[f"train-{model}"], steps[f"search-{model}"]
        # a trained model: one epoch of digits (seeded) reaches about 74%, far above chance (10 classes)
        assert train["figures"]["epochs"] == 1
        assert 0.5 < train["figures"]["val_acc"] <= 1
        assert "--checkpoint" in search["cmd"] and "--no-tracking" in search["cmd"]
        f = search["figures"]
        assert f["trials"] == search["info"]["trials"] == 2 and f["complete"] >= 1 and f["failed"] == 0
        assert f["search_s"] > 0 and f["s_per_trial"] == pytest.approx(f["search_s"] / f["trials"])
        assert f["trial_s_median"] is not None and f["trial_s_median"] > 0  # read from the Optuna storage
        assert f["dense_val_acc"] == pytest.approx(train["figures"]["val_acc"])

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# autoprune CUDA check: PASS\n") and "dry run on the CPU" in md
    assert "## Latency: `autoprune bench`" in md and "## Search:" in md and "\n## Failures\n\nNone.\n" in md
    for s in data["steps"]:
        assert f"| {s['title']} | {s['status']} |" in md
    assert md.count("| tv:resnet18 | filter 50% (uniform) |") == 2  # the latency table: one row per bench run
    log = (out / "steps.log").read_text()
    assert "===== search-digits-cnn: pass" in log and "$ " in log


def test_steps_past_the_deadline_are_recorded_as_not_run_and_fail_the_check(tmp_path: Path) -> None:
    r, out = _check(tmp_path, "--dry-run", "--deadline", "1", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["overall"] == "fail"
    ran = {s["name"]: s for s in data["steps"]}
    assert list(ran) == STEPS
    assert all(s["status"] == "not run" and "deadline" in s["reason"] for n, s in ran.items() if n not in DRY_SKIPS)
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# autoprune CUDA check: FAIL\n")
    assert "- install the carried wheels and autoprune: not started: the check's deadline" in md


def _load_check_module():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_script", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_the_onnxruntime_search_step_says_why_it_skips_without_the_cuda_provider(tmp_path: Path) -> None:
    import argparse
    import shutil

    import onnxruntime

    gc = _load_check_module()
    check = gc.Check(argparse.Namespace(dry_run=False, deadline=None, out=str(tmp_path / "out"), wheels=None,
                                        keep=False))
    try:
        check.plan()
        step = next(s for s in check.steps if s.name == "search-digits-cnn-onnxruntime")
        assert step.status == "not run" and step.cmd[-2:] == ["--runtime", "onnxruntime"]
        assert "--device" in step.cmd and step.cmd[step.cmd.index("--device") + 1] == "cuda"
        assert step.cmd[step.cmd.index("--runs-dir") + 1].endswith("digits-cnn-onnxruntime")  # its own study
        check.onnxruntime_search(step)
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # a GPU build: the search runs
            assert step.status == "not run" and any("no baseline from the train step" in n for n in step.notes)
        else:  # this machine's CPU build: a skip that names what it has
            assert step.status == "skip"
            assert "no CUDAExecutionProvider (it has " in step.reason and "CPUExecutionProvider)" in step.reason
        missing = next(s for s in check.steps if s.name == "search-digits-cnn-onnxruntime")
        missing.status, check.py = "not run", str(tmp_path / "no-python")
        (tmp_path / "no-python").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "no-python").chmod(0o755)
        check.onnxruntime_search(missing)
        assert missing.status == "skip" and "onnxruntime is not installed here" in missing.reason
    finally:
        shutil.rmtree(check.work, ignore_errors=True)
