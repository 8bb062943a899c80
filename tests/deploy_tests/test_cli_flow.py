"""The user's path on the command line: search, export, prune --out, reload the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.slow
def test_search_export_prune_and_reload(tmp_path, digits_baseline) -> None:
    # the search's outcome is arranged: no dense choice in the space (so no dense trial), no
    # early stop and a budget no trial misses, so there is a pruned trial to export
    (tmp_path / "space.yaml").write_text("types: [filter, shape]\nrate: {low: 0.3, high: 0.7, step: 0.2}\n")
    r = _run(["search", "--budget", "99%", "--trials", "3", "--checkpoint", str(digits_baseline[0]), "--study-name",
              "flow", "--space", "space.yaml", "--min-speedup", "0.01", "--admm-iters", "1", "--admm-epochs", "0.25",
              "--retrain-epochs", "0.5", "--latency-batch", "64", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    best = summary["best_feasible"]
    assert best is not None and not best["is_dense"] and summary["trials"]["feasible"] == 3
    assert (tmp_path / "runs" / "mlflow.db").is_file()

    r = _run(["report", "--study", "flow", "--out", "flow.html"], tmp_path)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "flow.html").read_text()
    assert "Pareto" in html and "<script src=" not in html and "plotly" in html.lower()

    r = _run(["export", "--study", "flow", "--out", "best.yaml", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["trial"] == best["number"]

    r = _run(["prune", "--config", "best.yaml", "--admm-iters", "2", "--admm-epochs", "0.5", "--retrain-epochs", "1",
              "--out", "deploy", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    report = json.loads((tmp_path / "deploy" / "report.json").read_text())
    assert s["deploy"]["pruned"]["test_acc"] == report["pruned"]["test_acc"]
    assert report["batch_size"] == 64  # the search's latency batch travels with the config
    assert s["mlflow_run_id"]
    for name in ("model.pt", "architecture.json", "model.pt2", "model.onnx", "report.md", "result.json", "config.yaml"):
        assert (tmp_path / "deploy" / name).is_file(), name

    # a fresh process: the public loader alone gives the reported test accuracy
    check = (
        "import json, sys, torch; import autoprune; from autoprune.pipeline import load_dataset;"
        "from autoprune.train import evaluate;"
        "m = autoprune.load_pruned('deploy'); s = load_dataset('digits');"
        "print(json.dumps({'acc': evaluate(m, s.test, device=torch.device('cpu')),"
        " 'search': [k for k in sys.modules if k.startswith(('autoprune.study', 'optuna'))]}))"
    )
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["acc"] == report["pruned"]["test_acc"]

    # the ONNX file gives the torch outputs (onnxruntime is a test dependency)
    import numpy as np
    import onnxruntime as ort
    import torch

    import autoprune

    model = autoprune.load_pruned(tmp_path / "deploy")
    x = torch.randn(8, 1, 8, 8)
    with torch.inference_mode():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "deploy" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # the same --out again is refused unless --force
    r = _run(["prune", "--config", "best.yaml", "--out", "deploy", "--no-tracking"], tmp_path)
    assert r.returncode == 2 and "exists and is not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_export_errors_are_one_line(tmp_path) -> None:
    r = _run(["export", "--study", "x"], tmp_path)
    assert r.returncode == 2 and "no Optuna storage" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run(["export", "--study", "x", "--pick", "slowest"], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
