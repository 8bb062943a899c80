"""Search a timm model through the CLI: ConvNeXt, whose LayerNorms over channels autoprune keeps exact.

The data is scikit-learn's shipped ``digits`` (1,797 images) upscaled to 32×32 and written
as an ``npz:`` dataset; the model ``timm:convnext_atto``, untrained (no weights are ever
downloaded), adapted to one channel and ten classes. The commands are what a user types:

    autoprune train  --model timm:convnext_atto --dataset npz:digits32.npz --epochs 8
    autoprune search --model timm:convnext_atto --dataset npz:digits32.npz --budget 3% --trials 8 --json
    autoprune export --study STUDY --out best.yaml
    autoprune prune  --config best.yaml --out runs/deploy/convnext   # the deployable folder

    python examples/timm_cli.py --small    # a quick run (what the test suite runs)

Needs timm (``pip install -e ".[timm]"``). It prints one JSON line: the dense and pruned
accuracy, the measured speedup and where the deployable model went.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

MODEL = "timm:convnext_atto"


def write_data(path: Path, size: int = 32) -> None:
    """digits, 8×8 → ``size``×``size`` grey, as uint8 (the ``npz:`` loader scales by 1/255)."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    np.savez(path, x=(x.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy(), y=digits.target)


def autoprune(*args: str) -> dict:
    """Run one ``autoprune`` command as a user does (its ``--json`` output, parsed)."""
    cmd = [sys.executable, "-m", "autoprune.cli", *args]
    print("$ autoprune " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"autoprune {args[0]} failed (exit {done.returncode})")
    return json.loads(done.stdout) if "--json" in args else {}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quick run: fewer epochs and trials")
    ap.add_argument("--runs-dir", default="runs", help="where the baseline, study, MLflow runs and model go")
    args = ap.parse_args(argv)
    small, runs = args.small, Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    data = runs / "digits32.npz"
    write_data(data)
    dataset = f"npz:{data}"
    baseline = runs / "baselines" / "convnext_atto-digits32.pt"
    trained = autoprune("train", "--model", MODEL, "--dataset", dataset, "--epochs", "4" if small else "12",
                        "--device", "cpu", "--out", str(baseline), "--json")
    study = "timm-convnext-small" if small else "timm-convnext"
    # --small trains each trial for half an epoch: a pruned ConvNeXt is then 4-5 points behind, not 3
    search = ["search", "--model", MODEL, "--dataset", dataset, "--checkpoint", str(baseline),
              "--budget", "8%" if small else "3%",
              "--trials", "3" if small else "12", "--study-name", study, "--runs-dir", str(runs), "--device", "cpu",
              "--json"]
    if small:  # one short schedule per trial, and a study budget of about two such trials
        search += ["--admm-iters", "1", "--admm-epochs", "0.2", "--retrain-epochs", "0.5", "--epoch-budget", "1.5"]
    found = autoprune(*search)
    out: dict = {"dense_test_accuracy": trained["test_acc"], "trials": found["trials"]["complete"],
                 "best_trial": None if found["best_feasible"] is None else found["best_feasible"]["number"]}
    best = found["best_feasible"]
    if best is not None and best.get("summary") != "dense":
        config = runs / "best.yaml"
        storage = f"sqlite:///{runs / 'optuna.db'}"
        autoprune("export", "--study", study, "--storage", storage, "--out", str(config))
        folder = runs / "deploy" / "convnext"
        pruned = autoprune("prune", "--config", str(config), "--out", str(folder), "--force", "--no-tracking",
                           "--device", "cpu", "--json", *(["--retrain-epochs", "1"] if small else []))
        deploy = pruned["deploy"]
        out.update(best=best["summary"], pruned_test_accuracy=pruned["pruned"]["test_acc"],
                   speedup=deploy["speedup"], folder=str(folder),
                   masked_max_abs_diff=deploy["checks"]["masked_max_abs_diff"])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
