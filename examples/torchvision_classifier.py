"""Prune a torchvision classifier that your own loop fine-tunes: AdamW, label smoothing,
a step-based schedule, bfloat16 autocast with ``--bf16`` — none of it changed for autoprune.

bf16 autocast is off by default: on an Intel Xeon (Sapphire Rapids, torch 2.13 CPU) this
loop's losses turned NaN within the first steps under CPU bf16 autocast, on the dense
ResNet-18 before autoprune touched it, and not in fp32.

The data is scikit-learn's shipped ``digits`` (upscaled to 32x32, or 16x16 with ``--small``,
three channels), the
model torchvision's ResNet-18 (no weights are downloaded: it is trained here first). The
search's budget is on top-1 accuracy; the train function counts in optimizer steps, so
the schedule does too.

    python examples/torchvision_classifier.py --small    # a quick run (what the test suite runs)

It prints one JSON line with the dense and pruned accuracy and the measured speedup.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import autoprune

try:
    import torchvision
except RuntimeError:  # the registry's CUDA torchvision wheel beside a CPU torch (README: Setup)
    from autoprune._torchvision import import_torchvision

    torchvision = import_torchvision()


def make_data(size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, va = order[:1300], order[1300:]
    return {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va]}


def make_train(x: torch.Tensor, y: torch.Tensor, batch: int = 64, bf16: bool = False):  # noqa: ANN201
    """The user's loop, in optimizer steps: AdamW, a one-cycle lr, label smoothing, bf16 autocast
    when asked."""

    def train(model: nn.Module, steps: float) -> float:
        steps = max(1, int(steps))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        g = torch.Generator().manual_seed(steps)
        model.train()
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return float(loss.detach())

    return train


def make_accuracy(x: torch.Tensor, y: torch.Tensor):  # noqa: ANN201
    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        model.eval()
        return float((model(x).argmax(1) == y).float().mean())

    return accuracy


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a quick run: fewer trials and steps")
    ap.add_argument("--runs-dir", default="runs", help="where the study, MLflow runs and latency cache go")
    ap.add_argument("--budget", default=None, help="accuracy drop allowed, e.g. 2%% or 0.02 (default: 2%%, 3%% with "
                    "--small, whose short fine-tuning leaves less margin)")
    ap.add_argument("--bf16", action="store_true", help="train under CPU bfloat16 autocast (see the module's docstring)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    small = args.small
    d = make_data(size=16 if small else 32)
    train = make_train(d["train_x"], d["train_y"], bf16=args.bf16)
    accuracy = make_accuracy(d["val_x"], d["val_y"])
    model = torchvision.models.resnet18(num_classes=10)
    train(model, 40 if small else 300)  # the user's trained model
    schedule = autoprune.Schedule.for_loop(iters=2, admm_amount=10, retrain_amount=10 if small else 80)  # in steps
    result = autoprune.search(model, d["val_x"][:1], train=train, evaluate=accuracy, metric="accuracy",
                              budget=args.budget or ("3%" if small else "2%"), trials=2 if small else 30,
                              schedule=schedule,
                              runs_dir=args.runs_dir, study_name="torchvision-classifier-small" if small else None,
                              reporter=autoprune.LogReporter())
    best = result.best
    out: dict = {"dense_accuracy": result.record.meta.dense_accuracy, "trials": len(result.record.trials),
                 "best_trial": None if best is None else best.number}
    if best is not None and not best.is_dense:
        pruned = autoprune.prune(model, result.best_config, train=train, example_inputs=d["val_x"][:1],
                                 evaluate=accuracy)
        deployable = autoprune.make_deployable(pruned, d["val_x"][:32])
        out.update(best=best.sparsity_summary(), pruned_accuracy=pruned.score, speedup=deployable.speedup,
                   latency_ms=deployable.latency_ms)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
