"""Search, prune, compact and export a small segmentation network with your own loop and metric.

The data is made from scikit-learn's shipped ``digits``: each 8x8 digit is upscaled to
16x16 and buried in noise, and the network predicts the digit's pixel mask. The metric is
the mean IoU of the predicted masks on held-out images (higher is better); the budget is
an IoU drop. Nothing is downloaded.

    python examples/segment_digits.py            # the full run (a few minutes on 2 CPU cores)
    python examples/segment_digits.py --small    # a quick run (what the test suite runs)

It prints one JSON line: the dense and pruned IoU, the search's best trial, the measured
speedup of the compacted model beside dense, and the ONNX check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import autoprune


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    """Noisy 16x16 digits (inputs) and their clean masks (targets): train / validation / test."""
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    masks = (images > 0.35).float()
    g = torch.Generator().manual_seed(seed)
    noisy = (images + 0.45 * torch.randn(images.shape, generator=g)).clamp(-1, 2)
    order = torch.randperm(len(images), generator=g)
    parts = {"train": order[:1200], "val": order[1200:1500], "test": order[1500:]}
    return {f"{k}_{n}": t[idx] for k, idx in parts.items() for n, t in (("x", noisy), ("y", masks))}


class SegNet(nn.Module):
    """A small U-Net: two encoder stages, one decoder stage with a skip connection."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        return self.head(self.dec(torch.cat([e1, self.up(e2)], dim=1)))


def make_train(x: torch.Tensor, y: torch.Tensor, batch: int = 64):  # noqa: ANN201
    """The user's own loop: Adam, BCE with logits, bfloat16 autocast; ``amount`` is in epochs."""

    def train(model: nn.Module, epochs: float) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        steps = max(1, round(epochs * len(x) / batch))
        g = torch.Generator().manual_seed(steps)
        model.train()
        total = 0.0
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x[idx])
            loss = F.binary_cross_entropy_with_logits(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total / steps

    return train


def make_iou(x: torch.Tensor, y: torch.Tensor):  # noqa: ANN201
    """Mean IoU of the predicted foreground masks (the user's metric)."""

    @torch.no_grad()
    def iou(model: nn.Module) -> float:
        model.eval()
        pred = model(x) > 0
        truth = y > 0.5
        inter = (pred & truth).flatten(1).sum(1).float()
        union = (pred | truth).flatten(1).sum(1).float().clamp_min(1)
        return float((inter / union).mean())

    return iou


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quick run: fewer trials and epochs")
    ap.add_argument("--runs-dir", default="runs", help="where the study, MLflow runs and latency cache go")
    ap.add_argument("--out", default="segment_digits_model", help="the deployable folder to write")
    ap.add_argument("--budget", default="2%", help="IoU drop allowed (absolute), e.g. 2%% or 0.02")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    d = make_data()
    train, iou = make_train(d["train_x"], d["train_y"]), make_iou(d["val_x"], d["val_y"])
    model = SegNet(width=16 if args.small else 32)
    train(model, 3 if args.small else 10)  # the "trained model" a user starts from
    example = d["val_x"][:1]
    schedule = autoprune.Schedule.for_loop(iters=2, admm_amount=0.25, retrain_amount=1.0 if args.small else 2.5)
    result = autoprune.search(model, example, train=train, evaluate=iou, metric="IoU", direction="maximize",
                              budget=args.budget, trials=4 if args.small else 24, schedule=schedule,
                              runs_dir=args.runs_dir, study_name="segment-digits-small" if args.small else None,
                              test=make_iou(d["test_x"], d["test_y"]), reporter=autoprune.LogReporter())
    best = result.best
    out: dict = {"dense_iou": result.record.meta.dense_accuracy, "trials": len(result.record.trials),
                 "best_trial": None if best is None else best.number}
    if best is None or best.is_dense:
        out["note"] = "no pruned configuration within the budget was faster than dense"
        print(json.dumps(out))
        return out
    out.update(best_iou=best.score, best_speedup_in_search=best.final_speedup, best=best.sparsity_summary())
    pruned = autoprune.prune(model, result.best_config, train=train, example_inputs=example, evaluate=iou,
                             metric="IoU")
    deployable = autoprune.make_deployable(pruned, d["val_x"][:64])
    folder = autoprune.save_pruned(deployable, args.out)
    report = json.loads((Path(folder) / "report.json").read_text())
    # no pickle in the folder: rebuilt from our own class, or the torch.export program without it
    reloaded = autoprune.load_pruned(folder, model=SegNet(width=16 if args.small else 32))
    program = autoprune.load_pruned(folder)
    out.update(pruned_iou=pruned.score, reloaded_iou=iou(reloaded), program_iou=iou(program),
               speedup=deployable.speedup,
               latency_ms=deployable.latency_ms, kernels=deployable.kernels,
               onnx_max_abs_diff=report["checks"].get("onnx_max_abs_diff"), folder=str(folder))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
