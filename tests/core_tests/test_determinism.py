"""The same seed, config and device give the same masks, weights and accuracy on the CPU,
in two separate processes (issue 15, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_prune_twice_in_two_processes_gives_the_same_masks_and_result(tmp_path: Path, digits_baseline) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: digits-cnn\ndataset: digits\ncheckpoint: {digits_baseline[0]}\nseed: 3\n"
                   "layers:\n  \"features.*\": {type: filter, rate: 0.5}\n"
                   "admm: {iters: 2, epochs: 0.5, retrain_epochs: 1}\n")
    # what `autoprune prune` runs before it builds the deployable folder (whose timings differ by nature)
    code = ("import sys, torch; from autoprune.config import PruneConfig;"
            "from autoprune.pipeline import run_prune, write_prune_outputs;"
            "c = PruneConfig.from_yaml(sys.argv[1]);"
            "write_prune_outputs(run_prune(c, device=torch.device('cpu')), c, sys.argv[2])")
    for out in ("a", "b"):
        r = subprocess.run([sys.executable, "-c", code, str(cfg), out], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (torch.load(tmp_path / out / "masked_model.pt", weights_only=False) for out in ("a", "b"))
    assert a["masks"].keys() == b["masks"].keys() and a["masks"]
    for name, mask in a["masks"].items():
        assert torch.equal(mask, b["masks"][name]), name
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    ra, rb = (json.loads((tmp_path / out / "result.json").read_text()) for out in ("a", "b"))
    for r in (ra, rb):  # what may differ between two runs: the wall time and the folder
        del r["seconds"], r["out_dir"]
    assert ra == rb
    assert ra["pruned"]["val_acc"] > 0.5  # a real run, not two empty ones
