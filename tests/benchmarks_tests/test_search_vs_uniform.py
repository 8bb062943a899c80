"""The script that makes the project's headline table (search against uniform pruning) runs,
in its tiny mode, from the checkout, and writes a table and JSON that say what was compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_mode_writes_the_comparison(tmp_path, digits_baseline) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_vs_uniform.py"), "--tiny", "--out", str(out),
         "--checkpoint", str(digits_baseline[0]), "--keep", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "search_vs_uniform.json").read_text())
    assert data["mode"]["name"] == "tiny" and data["sweep_epochs"] == 2.0  # two rates, one epoch each
    (row,) = data["rows"]
    assert row["model"] == "digits-cnn" and row["budget"] == pytest.approx(0.10)
    assert [p["label"] for p in row["sweep"]["magnitude"]] == ["filter 30%", "filter 60%"]
    assert [p["label"] for p in row["sweep"]["torch_pruning"]] == ["filter 30%", "filter 60%"]
    # the search trained no more than one sweep, every rung counted, and says so
    assert 0 < row["epochs"]["search"] <= row["epochs"]["budget"] == row["epochs"]["magnitude"] == 2.0
    # a winner on each side is timed again beside dense, with its test accuracy
    for side in ("magnitude", "torch_pruning"):
        if row[side] is not None:
            assert row[side]["final"]["speedup"] > 0 and 0 <= row[side]["test"] <= 1
    table = (out / "search_vs_uniform.md").read_text()
    assert "| digits-cnn | 10% | 0 |" in table and "Spearman" in table
