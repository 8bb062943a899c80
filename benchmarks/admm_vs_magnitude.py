"""StructADMM against the strongest simple baselines at equal total training epochs (issues 12, 23).

Each model is trained dense once per seed on a fixed stratified subset of a dataset's
training split (by default 1000 Fashion-MNIST images, 100 per class), then pruned by every
method with the **same total number of training epochs** on that subset, the same SGD
(momentum 0.9, weight decay 5e-4, batch 32, lr 0.05 with a cosine schedule that restarts at
each phase), on every prunable layer but the output layer (filter targets: the layers whose
output channels form a prunable group), and scored on a fixed stratified part of the test
split. Types and rates where methods part ways: filter 50/75/90%, shape 75/90/95%,
irregular 90/95/98%.

Methods (``METHODS``):

* ``admm``: StructADMM as :func:`autoprune.admm.prune_with` runs it (W-step: SGD on the loss
  plus the ADMM penalty; Z-step: projection; U-step; ρ growing x1.3), hard prune, masked
  retraining; autoprune's schedule for the length (:meth:`Schedule.for_budget`: 6 W-steps
  over 30% of the epochs at ρ 3, then 70% masked retraining).
* ``admm-progressive``: progressive ADMM as the authors' code runs it (arXiv 1810.07378): three
  stages whose targets rise geometrically (kept fraction ``(1 - rate)^(s/3)``), each an ADMM
  run of a third of the epochs (the ``admm`` split) starting from the previous stage's pruned
  model, whose pruned weights stay at zero.
* ``magnitude``: one-shot magnitude hard prune, then masked fine-tuning for all the epochs.
* ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017, arXiv 1710.01878): the rate rises as
  ``rate · (1 - (1 - t/T)^3)`` over the first half of the steps, 16 mask updates (the
  projection's top groups by L2 norm at the current rate; pruned weights, their gradients and
  momentum held at zero), then masked training to the end, one cosine schedule throughout.
* ``torch-pruning`` (filter only): Torch-Pruning's ``MagnitudePruner`` with group L2
  importance, the same uniform ratio, the output layer ignored, then plain fine-tuning.

ADMM attempts (item 2 of issue 23; ``ATTEMPTS``), each ``admm`` with one change:
``admm-split15`` / ``admm-split50`` (15% or 50% of the epochs in the W-steps instead of 30%),
``admm-rho-matched`` (ρ₀ = 2 / (mean lr x SGD steps per W-step), so that every W-step can
contract W toward Z by about e^-2 whatever its length), ``admm-retrain-lr0.01`` (the
retraining after the hard prune at lr 0.01 instead of restarting at 0.05: a gentler
hand-over from ADMM's already-good start), ``admm-kd`` (the W-steps' loss is half
cross-entropy, half distillation from the dense model at temperature 4).

Runs are appended to a log (one JSON line each, as they end) and every invocation to an
invocations log, so that several invocations (each under about 90 minutes on a shared core)
make one table; ``--report`` rebuilds the table from the logs alone::

    python benchmarks/admm_vs_magnitude.py --models resnet20 --lengths 4            # every method, every rate
    python benchmarks/admm_vs_magnitude.py --models resnet20 --lengths 4 --extreme --methods admm-split15 ...
    python benchmarks/admm_vs_magnitude.py --models resnet20 --lengths 20 40 --extreme --methods admm gmp
    python benchmarks/admm_vs_magnitude.py --report

Writes ``benchmarks/results/admm_vs_magnitude_fmnist.{md,json}`` (the log files beside them).
The earlier digits results (``admm_vs_magnitude{,_small}.md``) were made by this script as
of commit 568feb9 (``git show 568feb9:benchmarks/admm_vs_magnitude.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoprune import admm
from autoprune.config import LayerTarget, Schedule
from autoprune.data import make_loader
from autoprune.groups import ChannelGraph
from autoprune.pipeline import build_model, example_input, load_dataset
from autoprune.projection import Projector
from autoprune.steering import hold_masks
from autoprune.train import ClassifierTrainer, evaluate, make_sgd, run_epochs, seed_everything, steps_for

RESULTS = Path(__file__).resolve().parent / "results"
STEM = RESULTS / "admm_vs_magnitude_fmnist"
DEVICE = torch.device("cpu")
KINDS = ("filter", "shape", "irregular")
RATES = {"filter": (0.5, 0.75, 0.9), "shape": (0.75, 0.9, 0.95), "irregular": (0.9, 0.95, 0.98)}
WITHIN = 0.01  # "keeps accuracy": mean test accuracy at most 1 point below dense


@dataclass(frozen=True)
class Bench:
    """What every run of one table shares (recorded in the JSON)."""

    dataset: str = "fashion-mnist"
    train_size: int = 1000  # stratified subset of the training split
    test_size: int = 5000  # stratified subset of the test split (the reported accuracy)
    val_size: int = 1000  # stratified subset of the validation split (hard-prune accuracy only)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dense_epochs: int = 30

    def settings(self, **changes: object) -> Schedule:
        return Schedule(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                            batch_size=self.batch_size).replace(**changes)


# -- data and dense models ------------------------------------------------------------
def stratified(dataset: torch.utils.data.Dataset, size: int, seed: int = 0) -> torch.utils.data.Dataset:
    """A fixed stratified subset of ``size`` items (the whole set when it is not larger)."""
    from sklearn.model_selection import train_test_split

    if size <= 0 or size >= len(dataset):
        return dataset
    labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else [int(y) for _, y in dataset])
    rows, _ = train_test_split(np.arange(len(labels)), train_size=size, random_state=seed, stratify=labels)
    return torch.utils.data.Subset(dataset, sorted(int(r) for r in rows))


@dataclass
class Context:
    bench: Bench
    splits: object
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    cache_dir: Path
    dense_info: dict = field(default_factory=dict)

    @property
    def per_epoch(self) -> int:
        return len(make_loader(self.train, batch_size=self.bench.batch_size, shuffle=False,
                               drop_last=len(self.train) > self.bench.batch_size))

    def example(self) -> torch.Tensor:
        return example_input(self.splits)

    def dense(self, model_name: str, seed: int) -> nn.Module:
        """The seeded dense model, trained once and cached on disk (several invocations share it)."""
        path = self.cache_dir / f"dense-{model_name}-{self.bench.dataset}-{self.bench.train_size}-seed{seed}.pt"
        model = build_model(model_name, self.splits)
        if path.is_file():
            blob = torch.load(path, weights_only=True)
            model.load_state_dict(blob["state"])
            info = blob["info"]
            if info.get("test_size") != len(self.test):  # scored on another test subset: score again
                info = {**info, "test_acc": evaluate(model, self.test, device=DEVICE), "test_size": len(self.test)}
            self.dense_info[(model_name, seed)] = info
            return model.to(DEVICE)
        seed_everything(seed)
        b = self.bench
        t0 = time.perf_counter()
        run_epochs(model, self.train, device=DEVICE, epochs=b.dense_epochs, lr=b.lr, momentum=b.momentum,
                   weight_decay=b.weight_decay, batch_size=b.batch_size, seed=seed, description="dense")
        info = {"seconds": time.perf_counter() - t0, "test_acc": evaluate(model, self.test, device=DEVICE),
                "val_acc": evaluate(model, self.val, device=DEVICE), "epochs": b.dense_epochs,
                "test_size": len(self.test)}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "info": info}, path)
        self.dense_info[(model_name, seed)] = info
        print(f"dense {model_name} seed {seed}: test {info['test_acc']:.4f} ({info['seconds']:.0f} s)", flush=True)
        return model


def uniform_targets(graph: ChannelGraph, kind: str, rate: float) -> dict[str, LayerTarget]:
    """Every prunable layer at ``rate``: all but the output layer (filter: prunable output groups only)."""
    names = list(graph.layers)
    out: dict[str, LayerTarget] = {}
    for name, info in graph.layers.items():
        filters_ok = info.out_group is not None and graph.groups[info.out_group].prunable
        if kind == "filter" and not filters_ok:
            continue
        if kind != "filter" and name == names[-1]:  # the output layer (its filters are never prunable)
            continue
        out[name] = LayerTarget(kind, rate)
    return out


# -- methods ---------------------------------------------------------------------------
@dataclass
class Job:
    """One run: a fresh copy of the dense model and what to do to it."""

    ctx: Context
    model_name: str
    model: nn.Module
    dense: nn.Module
    kind: str
    rate: float
    length: float
    seed: int

    @property
    def graph(self) -> ChannelGraph:
        return ChannelGraph(self.model, self.ctx.example())

    def targets(self, rate: float | None = None) -> dict[str, LayerTarget]:
        return uniform_targets(self.graph, self.kind, self.rate if rate is None else rate)

    def trainer(self, settings: Schedule, seed: int, what: str) -> ClassifierTrainer:
        return ClassifierTrainer(self.ctx.train, settings, device=DEVICE, seed=seed, description=what)

    def val_acc(self, model: nn.Module) -> float:
        return evaluate(model, self.ctx.val, device=DEVICE)


def _admm_run(job: Job, settings: Schedule, *, retrain_settings: Schedule | None = None,
              w_step: admm.TrainFn | None = None, rate: float | None = None,
              hold: dict[str, torch.Tensor] | None = None, seed_offset: int = 0) -> dict:
    """One ADMM run (W/Z/U, hard prune, masked retraining) through :func:`admm.prune_with`."""
    graph = job.graph
    projector = Projector(job.model, graph, uniform_targets(graph, job.kind, job.rate if rate is None else rate))
    schedule = settings.in_epochs(job.ctx.per_epoch)
    train = w_step or job.trainer(settings, job.seed + 1000 + seed_offset, "ADMM W-step")
    retrain = job.trainer(retrain_settings or settings, job.seed + 5000 + seed_offset, "masked retraining")
    if hold is not None:  # earlier stages' pruned weights stay at zero through the W-steps
        train = _holding(train, job.model, hold)
    seed_everything(job.seed + seed_offset)
    masks, history = admm.prune_with(job.model, projector, schedule, train=train, retrain=retrain,
                                     evaluate=job.val_acc, method="admm")
    last = history.iterations[-1].residual if history.iterations else {}
    return {"hard_val_acc": history.hard_prune_val_acc, "final_residual": max(last.values(), default=None),
            "masks": masks, "schedule": asdict(schedule)}


def _holding(train: admm.TrainFn, model: nn.Module, masks: dict[str, torch.Tensor]) -> admm.TrainFn:
    named = dict(model.named_parameters())

    def run(m: nn.Module, amount: float) -> object:
        with hold_masks({n: named[n] for n in masks}, masks):
            return train(m, amount)

    return run


def m_admm(job: Job) -> dict:
    return _admm_run(job, Schedule.for_budget(job.length, **_common(job)))


def _common(job: Job) -> dict:
    b = job.ctx.bench
    return {"lr": b.lr, "momentum": b.momentum, "weight_decay": b.weight_decay, "batch_size": b.batch_size}


def _split(fraction: float) -> Callable[[Job], dict]:
    def run(job: Job) -> dict:
        iters = 6
        step = fraction * job.length / iters
        s = job.ctx.bench.settings(iters=iters, epochs=step, rho=3.0, rho_growth=1.3,
                                   retrain_epochs=job.length - iters * step)
        return _admm_run(job, s)

    return run


def m_admm_rho_matched(job: Job) -> dict:
    base = Schedule.for_budget(job.length, **_common(job))
    steps = steps_for(base.epochs, job.ctx.per_epoch)
    rho = 2.0 / (0.5 * base.lr * steps)  # the cosine schedule's mean lr is half its peak
    return _admm_run(job, base.replace(rho=rho, rho_max=max(base.rho_max, rho)))


def m_admm_retrain_lr(job: Job) -> dict:
    base = Schedule.for_budget(job.length, **_common(job))
    return _admm_run(job, base, retrain_settings=base.replace(lr=0.01))


def m_admm_kd(job: Job) -> dict:
    base = Schedule.for_budget(job.length, **_common(job))
    teacher = job.dense.eval()
    w_step = KDTrainer(job.ctx.train, base, teacher, seed=job.seed + 1000)
    return _admm_run(job, base, w_step=w_step)


def m_admm_progressive(job: Job, stages: int = 3) -> dict:
    held: dict[str, torch.Tensor] | None = None
    out: dict = {"stages": []}
    for s in range(1, stages + 1):
        rate = 1 - (1 - job.rate) ** (s / stages) if s < stages else job.rate
        settings = Schedule.for_budget(job.length / stages, **_common(job))
        res = _admm_run(job, settings, rate=rate, hold=held, seed_offset=100 * s)
        held = res.pop("masks")
        out["stages"].append({"rate": rate, "hard_val_acc": res["hard_val_acc"], "final_residual": res["final_residual"]})
        out.update(res)
    out["masks"] = held  # hard_val_acc and final_residual: the last stage's (at the target rate)
    return out


def m_magnitude(job: Job) -> dict:
    graph = job.graph
    projector = Projector(job.model, graph, job.targets())
    settings = Schedule.for_budget(job.length, **_common(job))
    schedule = settings.in_epochs(job.ctx.per_epoch)
    retrain = job.trainer(settings, job.seed + 5000, "masked retraining")
    seed_everything(job.seed)
    masks, history = admm.prune_with(job.model, projector, schedule, train=retrain, evaluate=job.val_acc,
                                     method="magnitude")
    return {"hard_val_acc": history.hard_prune_val_acc, "masks": masks}


def m_gmp(job: Job, updates: int = 16, ramp: float = 0.5) -> dict:
    """Zhu & Gupta's gradual pruning within one cosine run of ``job.length`` epochs."""
    b = job.ctx.bench
    graph = job.graph
    total = steps_for(job.length, job.ctx.per_epoch)
    end = max(1, round(ramp * total))
    every = max(1, end // updates)
    named = dict(job.model.named_parameters())
    state: dict = {"masks": None, "step": 0, "rates": []}

    def grad_hook() -> None:
        if state["masks"] is not None:
            for n, m in state["masks"].items():
                if named[n].grad is not None:
                    named[n].grad.mul_(m)

    @torch.no_grad()
    def after_step(opt: torch.optim.Optimizer) -> None:
        state["step"] += 1
        t = state["step"]
        if t % every == 0 and t <= end or t == end:
            rate = job.rate * (1 - (1 - min(t, end) / end) ** 3)
            if rate > 0 and (not state["rates"] or rate > state["rates"][-1]):
                state["masks"] = {n: m.to(named[n].dtype) for n, m in
                                  Projector(job.model, graph, uniform_targets(graph, job.kind, rate)).hard_masks().items()}
                state["rates"].append(rate)
        if state["masks"] is not None:
            for n, m in state["masks"].items():
                named[n].mul_(m)
                for v in opt.state.get(named[n], {}).values():
                    if torch.is_tensor(v) and v.shape == m.shape:
                        v.mul_(m)

    seed_everything(job.seed)
    run_epochs(job.model, job.ctx.train, device=DEVICE, epochs=job.length, lr=b.lr, momentum=b.momentum,
               weight_decay=b.weight_decay, batch_size=b.batch_size, seed=job.seed + 5000, grad_hook=grad_hook,
               after_step=after_step, description="gradual magnitude pruning")
    assert state["rates"] and abs(state["rates"][-1] - job.rate) < 1e-9, state["rates"]
    masks = {n: m.bool() for n, m in state["masks"].items()}
    return {"hard_val_acc": None, "masks": masks, "mask_updates": len(state["rates"])}


def m_torch_pruning(job: Job) -> dict:
    import torch_pruning as tp

    b = job.ctx.bench
    graph = job.graph
    names = list(job.targets())
    before = _target_weights(job.model, names)
    pruner = tp.pruner.MagnitudePruner(
        job.model, job.ctx.example(), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=job.rate, ignored_layers=[job.model.get_submodule(list(graph.layers)[-1])],
    )
    pruner.step()
    kept = {name: int(job.model.get_submodule(name).weight.shape[0]) for name in list(graph.layers)[:-1]}
    after = _target_weights(job.model, names)
    hard = job.val_acc(job.model)
    seed_everything(job.seed)
    run_epochs(job.model, job.ctx.train, device=DEVICE, epochs=job.length, lr=b.lr, momentum=b.momentum,
               weight_decay=b.weight_decay, batch_size=b.batch_size, seed=job.seed + 5000,
               description="Torch-Pruning fine-tuning")
    return {"hard_val_acc": hard, "kept_channels": kept, "compression": before / max(after, 1)}


class KDTrainer:
    """``train(model, epochs)`` like :class:`ClassifierTrainer`, with the loss half cross-entropy,
    half distillation from ``teacher`` (KL at temperature 4, scaled by T²)."""

    def __init__(self, dataset: torch.utils.data.Dataset, settings: Schedule, teacher: nn.Module, *,
                 seed: int, alpha: float = 0.5, temperature: float = 4.0) -> None:
        self.dataset, self.s, self.teacher, self.seed = dataset, settings, teacher, seed
        self.alpha, self.t = alpha, temperature
        self.calls = 0

    def __call__(self, model: nn.Module, epochs: float) -> float:
        s, seed = self.s, self.seed + self.calls
        self.calls += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = make_loader(self.dataset, batch_size=s.batch_size, shuffle=True, seed=seed,
                                 drop_last=len(self.dataset) > s.batch_size)
            total = steps_for(epochs, len(loader))
            opt = make_sgd(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
            model.train()
            step, running = 0, 0.0
            while step < total:
                for x, y in loader:
                    opt.zero_grad(set_to_none=True)
                    logits = model(x)
                    with torch.no_grad():
                        soft = F.softmax(self.teacher(x) / self.t, dim=1)
                    kd = F.kl_div(F.log_softmax(logits / self.t, dim=1), soft, reduction="batchmean") * self.t ** 2
                    loss = (1 - self.alpha) * F.cross_entropy(logits, y) + self.alpha * kd
                    loss.backward()
                    opt.step()
                    sched.step()
                    running += float(loss.detach())
                    step += 1
                    if step >= total:
                        break
        return running / max(step, 1)


@dataclass(frozen=True)
class Method:
    run: Callable[[Job], dict]
    description: str
    kinds: tuple[str, ...] = KINDS
    admm: bool = False  # an ADMM variant (for the "best ADMM variant" column)
    attempt: bool = False  # an item-2 attempt at improving ADMM


def m_gmp_library(job: Job) -> dict:
    """``gmp`` as autoprune runs it (:mod:`autoprune.gradual` through :func:`admm.prune_with`): the
    same schedule as :func:`m_gmp`, to show the library's method is the one the table measured."""
    settings = Schedule.for_budget(job.length, **_common(job))
    projector = Projector(job.model, job.graph, job.targets())
    schedule = settings.in_epochs(job.ctx.per_epoch)
    retrain = job.trainer(settings, job.seed + 5000, "gradual magnitude pruning")
    seed_everything(job.seed)
    masks, _ = admm.prune_with(job.model, projector, schedule, train=retrain, method="gmp",
                               steps_per_unit=job.ctx.per_epoch)
    return {"hard_val_acc": None, "masks": masks}


METHODS: dict[str, Method] = {
    "admm": Method(m_admm, "StructADMM, autoprune's schedule (6 W-steps over 30% of the epochs, ρ 3 x1.3; 70% "
                           "masked retraining)", admm=True),
    "admm-progressive": Method(m_admm_progressive, "progressive ADMM: 3 stages with rising targets, each an admm "
                                                   "run of a third of the epochs", admm=True),
    "magnitude": Method(m_magnitude, "one-shot magnitude prune + masked fine-tuning"),
    "gmp": Method(m_gmp, "gradual magnitude pruning (Zhu & Gupta, cubic over the first half; 16 mask updates)"),
    "gmp-library": Method(m_gmp_library, "gmp as `autoprune prune --method gmp` runs it (autoprune.gradual), "
                                         "the same schedule"),
    "torch-pruning": Method(m_torch_pruning, "Torch-Pruning group-L2 + fine-tuning", kinds=("filter",)),
}
ATTEMPTS: dict[str, Method] = {
    "admm-split15": Method(_split(0.15), "admm with 15% of the epochs in the W-steps", admm=True, attempt=True),
    "admm-split50": Method(_split(0.50), "admm with 50% of the epochs in the W-steps", admm=True, attempt=True),
    "admm-rho-matched": Method(m_admm_rho_matched, "admm with ρ₀ = 2 / (mean lr x steps per W-step)", admm=True,
                               attempt=True),
    "admm-retrain-lr0.01": Method(m_admm_retrain_lr, "admm, retraining at lr 0.01 instead of 0.05", admm=True,
                                  attempt=True),
    "admm-kd": Method(m_admm_kd, "admm, W-steps with distillation from the dense model (α 0.5, T 4)", admm=True,
                      attempt=True),
}
ALL = {**METHODS, **ATTEMPTS}


def _target_weights(model: nn.Module, targets: dict[str, LayerTarget] | list[str]) -> int:
    return sum(model.get_submodule(n).weight.numel() for n in targets)


def one_run(ctx: Context, model_name: str, kind: str, rate: float, method: str, length: float, seed: int) -> dict:
    dense = ctx.dense(model_name, seed)
    model = build_model(model_name, ctx.splits)
    model.load_state_dict(dense.state_dict())
    job = Job(ctx, model_name, model, dense, kind, rate, length, seed)
    targets = job.targets()
    total_weights = _target_weights(model, targets)
    t0 = time.perf_counter()
    extra = ALL[method].run(job)
    seconds = time.perf_counter() - t0
    masks = extra.pop("masks", None)
    if masks is not None:
        kept = sum(int(masks[f"{n}.weight"].sum()) if f"{n}.weight" in masks else model.get_submodule(n).weight.numel()
                   for n in targets)
        extra["compression"] = total_weights / max(kept, 1)
        # the model really is at the masks
        for n in targets:
            w = model.get_submodule(n).weight.detach()
            assert not w[~masks[f"{n}.weight"]].any(), (method, n)
    return {"model": model_name, "kind": kind, "rate": rate, "method": method, "length": length, "seed": seed,
            "test_acc": evaluate(model, ctx.test, device=DEVICE), "seconds": seconds,
            "epochs": length, "layers": len(targets), **extra}


# -- report ----------------------------------------------------------------------------
def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["length"], r["kind"], r["rate"], r["method"]), []).append(r)
    rows = []
    for (model, length, kind, rate, method), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        test = [r["test_acc"] for r in rs]
        hard = [r["hard_val_acc"] for r in rs if r.get("hard_val_acc") is not None]
        comp = [r["compression"] for r in rs if r.get("compression")]
        rows.append({"model": model, "length": length, "kind": kind, "rate": rate, "method": method,
                     "seeds": sorted(r["seed"] for r in rs), "test_mean": _mean_sd(test)[0], "test_sd": _mean_sd(test)[1],
                     "hard_val_mean": statistics.fmean(hard) if hard else None,
                     "compression": statistics.fmean(comp) if comp else None,
                     "seconds_mean": statistics.fmean(r["seconds"] for r in rs)})
    return rows


def dense_summary(dense: dict, model: str) -> tuple[float, float, list[int]]:
    seeds = sorted(int(k.rsplit(":", 1)[1]) for k in dense if k.startswith(model + ":"))
    accs = [dense[f"{model}:{s}"]["test_acc"] for s in seeds]
    return statistics.fmean(accs), (statistics.stdev(accs) if len(accs) > 1 else 0.0), seeds


def kept_within(rows: list[dict], dense: dict, model: str, length: float, kind: str, method: str) -> dict:
    """The highest rate of ``kind`` ``method`` ran at ``length`` whose mean test accuracy is within
    a point of dense (None: none of those it ran), with what it ran."""
    ref, _, _ = dense_summary(dense, model)
    ran = sorted((r for r in rows if (r["model"], r["length"], r["kind"], r["method"]) == (model, length, kind, method)),
                 key=lambda r: r["rate"])
    ok = [r for r in ran if r["test_mean"] >= ref - WITHIN - 1e-12]
    best = ok[-1] if ok else None
    return {"rate": best["rate"] if best else None, "compression": best["compression"] if best else None,
            "rates_run": [r["rate"] for r in ran]}


def markdown(out: dict) -> str:
    rows, dense, b = out["summary"], out["dense"], out["bench"]
    lines = ["# StructADMM against simple baselines at equal epochs (Fashion-MNIST)", "",
             f"Dataset `{b['dataset']}`: a stratified subset of {b['train_size']} training images (the same for "
             f"every method and seed), test accuracy on a stratified {b['test_size']} of the 10,000 test images "
             f"(hard-prune accuracy on {b['val_size']} validation images). Dense models: {b['dense_epochs']} epochs "
             f"per seed. Every method: SGD momentum {b['momentum']}, weight decay {b['weight_decay']}, batch "
             f"{b['batch_size']}, lr {b['lr']} with a cosine schedule restarting at each phase, and the same total "
             f"epochs on the subset (`epochs` below; {out['steps_per_epoch']} steps per epoch). Pruned: every prunable "
             "layer but the output layer. Accuracies in %, mean ± sample sd over the seeds; `hard` is the validation "
             "accuracy right after the (first) hard prune; `x` the measured compression of the pruned layers' weights "
             "(weights / nonzero weights, filter pruning counting the input channels it removes downstream).", "",
             "Made by these invocations (the runs' log keeps each run's own seconds):", ""]
    for inv in out["invocations"]:
        lines.append(f"- `{inv['command']}`: {inv['wall_seconds'] / 60:.1f} min, {inv['runs']} runs, commit "
                     f"{inv['versions']['commit']}, {inv['machine']['cpu']} ({inv['machine']['threads']} thread, "
                     f"{inv['machine'].get('note', '')}), torch {inv['versions']['torch']}, Torch-Pruning "
                     f"{inv['versions']['torch_pruning']}")
    lines += ["", "Methods:", ""]
    for name, desc in out["methods"].items():
        lines.append(f"- `{name}`: {desc}")
    lines += ["", "## Headline: the highest rate each method keeps within 1 point of dense", "",
              "Mean test accuracy over the seeds at least dense's mean minus 1 point; `-`: none of the rates it ran "
              "(at 20 and 40 epochs only the extreme rate of each type ran, so `-` there means below it).", ""]
    methods = [m for m in out["method_order"] if any(r["method"] == m for r in rows)]
    for model in out["models"]:
        ref, sd, seeds = dense_summary(dense, model)
        lines += [f"### {model} (dense test {100 * ref:.1f} ± {100 * sd:.1f}, seeds {seeds})", "",
                  "| epochs | type | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for length in out["lengths"]:
            for kind in KINDS:
                cells = []
                any_run = False
                for m in methods:
                    k = kept_within(rows, dense, model, length, kind, m)
                    if not k["rates_run"]:
                        cells.append(" ")
                        continue
                    any_run = True
                    cells.append("-" if k["rate"] is None else f"{100 * k['rate']:.0f}% ({k['compression']:.1f}x)")
                if any_run:
                    lines.append(f"| {length:g} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    for model in out["models"]:
        ref, sd, _ = dense_summary(dense, model)
        lines += [f"## {model}: test accuracy per cell (dense {100 * ref:.1f} ± {100 * sd:.1f})", ""]
        for length in out["lengths"]:
            sel = [r for r in rows if r["model"] == model and r["length"] == length]
            if not sel:
                continue
            ms = [m for m in methods if any(r["method"] == m for r in sel)]
            lines += [f"### {length:g} epochs", "", "| target | " + " | ".join(ms) + " |", "|---|" + "---|" * len(ms)]
            for kind in KINDS:
                for rate in RATES[kind]:
                    cells, seen = [], False
                    for m in ms:
                        r = next((r for r in sel if (r["kind"], r["rate"], r["method"]) == (kind, rate, m)), None)
                        if r is None:
                            cells.append(" ")
                            continue
                        seen = True
                        hard = "" if r["hard_val_mean"] is None else f", hard {100 * r['hard_val_mean']:.0f}"
                        comp = "" if r["compression"] is None else f", {r['compression']:.1f}x"
                        mark = "**" if r["test_mean"] >= ref - WITHIN - 1e-12 else ""
                        cells.append(f"{mark}{100 * r['test_mean']:.1f} ± {100 * r['test_sd']:.1f}{mark}{hard}{comp}")
                    if seen:
                        lines.append(f"| {kind} {100 * rate:.0f}% | " + " | ".join(cells) + " |")
            lines += ["", "Bold: within 1 point of dense. Seconds per run (mean): " + ", ".join(
                f"{m} {statistics.fmean(r['seconds_mean'] for r in sel if r['method'] == m):.0f}" for m in ms), ""]
    lines += _attempts(out)
    return "\n".join(lines) + "\n"


def _attempts(out: dict) -> list[str]:
    """Each ADMM attempt against ``admm`` on the same cells and seeds (paired)."""
    runs = out["runs"]
    by = {(r["model"], r["length"], r["kind"], r["rate"], r["method"], r["seed"]): r for r in runs}
    lines = ["## ADMM attempts (issue 23, item 2): each against `admm` on the same cells and seeds", "",
             "Paired difference of test accuracy (points; positive: the attempt is ahead), mean over the cells x seeds "
             "both ran, with how many it won / lost; also against the best non-ADMM method of each cell.", "",
             "| model | epochs | attempt | cells x seeds | vs admm (pt) | won / lost | vs best non-ADMM (pt) |",
             "|---|---|---|---|---|---|---|"]
    others = [m for m, meth in METHODS.items() if not meth.admm]
    for model in out["models"]:
        for length in out["lengths"]:
            for name in [*ATTEMPTS, "admm-progressive"]:
                diffs, vs_best = [], []
                for (mo, le, kind, rate, meth, seed), r in by.items():
                    if (mo, le, meth) != (model, length, name):
                        continue
                    base = by.get((mo, le, kind, rate, "admm", seed))
                    if base is None:
                        continue
                    diffs.append(r["test_acc"] - base["test_acc"])
                    best = [by[(mo, le, kind, rate, o, seed)]["test_acc"] for o in others if (mo, le, kind, rate, o, seed) in by]
                    if best:
                        vs_best.append(r["test_acc"] - max(best))
                if not diffs:
                    continue
                won, lost = sum(d > 1e-12 for d in diffs), sum(d < -1e-12 for d in diffs)
                lines.append(f"| {model} | {length:g} | {name} | {len(diffs)} | {100 * statistics.fmean(diffs):+.2f} | "
                             f"{won} / {lost} | " + (f"{100 * statistics.fmean(vs_best):+.2f}" if vs_best else "-") + " |")
    return lines + [""]


# -- main ------------------------------------------------------------------------------
def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def report(stem: Path) -> dict:
    """The table from the logs beside ``stem`` (runs, invocations, dense models)."""
    runs = _read_jsonl(stem.with_name(stem.name + ".runs.jsonl"))
    invocations = _read_jsonl(stem.with_name(stem.name + ".invocations.jsonl"))
    dense = {}
    for inv in invocations:
        dense.update(inv.get("dense", {}))
    bench = invocations[0]["bench"] if invocations else asdict(Bench())
    order = list(ALL)
    out = {
        "bench": bench, "steps_per_epoch": invocations[0]["steps_per_epoch"] if invocations else None,
        "invocations": invocations, "wall_seconds_total": sum(i["wall_seconds"] for i in invocations),
        "run_seconds_total": sum(r["seconds"] for r in runs),
        "models": sorted({r["model"] for r in runs}, key=lambda m: (m != "resnet20", m)),
        "lengths": sorted({r["length"] for r in runs}), "seeds": sorted({r["seed"] for r in runs}),
        "methods": {m: ALL[m].description for m in order if any(r["method"] == m for r in runs)},
        "method_order": order, "rates": RATES, "dense": dense, "summary": summarize(runs), "runs": runs,
    }
    out["kept_within_1pt"] = {
        f"{model}|{length:g}|{kind}|{m}": kept_within(out["summary"], dense, model, length, kind, m)
        for model in out["models"] for length in out["lengths"] for kind in KINDS for m in out["methods"]
        if any((r["model"], r["length"], r["kind"], r["method"]) == (model, length, kind, m) for r in runs)}
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(markdown(out))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20"])
    ap.add_argument("--lengths", nargs="+", type=float, default=[4.0], help="total training epochs per run")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--extreme", action="store_true", help="only the highest rate of each type")
    ap.add_argument("--rates", nargs="+", type=float, default=None, help="only these rates (of the types' own)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--train-size", type=int, default=Bench.train_size)
    ap.add_argument("--test-size", type=int, default=Bench.test_size)
    ap.add_argument("--dense-epochs", type=int, default=Bench.dense_epochs)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="a word on the machine's load, recorded with the invocation")
    ap.add_argument("--out", default=str(STEM), help="results path stem (the logs go beside it)")
    ap.add_argument("--cache", default="runs/bench-dense", help="where the dense models are kept between invocations")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from the logs")
    ap.add_argument("--dry-run", action="store_true", help="print the plan")
    args = ap.parse_args(argv)
    stem = Path(args.out)
    if args.report:
        print(markdown(report(stem)))
        return
    torch.set_num_threads(args.threads)
    bench = Bench(train_size=args.train_size, test_size=args.test_size, dense_epochs=args.dense_epochs)
    plan = []
    for m in args.models:
        for length in args.lengths:
            for kind in args.kinds:
                rates = RATES[kind][-1:] if args.extreme else RATES[kind]
                for rate in rates:
                    if args.rates and not any(abs(rate - r) < 1e-9 for r in args.rates):
                        continue
                    for meth in args.methods:
                        if kind not in ALL[meth].kinds:
                            continue
                        for seed in args.seeds:
                            plan.append((m, length, kind, rate, meth, seed))
    log = stem.with_name(stem.name + ".runs.jsonl")
    done = {(r["model"], r["length"], r["kind"], r["rate"], r["method"], r["seed"]) for r in _read_jsonl(log)}
    todo = [p for p in plan if p not in done]
    print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {log}", flush=True)
    if args.dry_run:
        for p in todo:
            print(p)
        return
    import torch_pruning as tp

    t0 = time.perf_counter()
    splits = load_dataset(bench.dataset)
    ctx = Context(bench, splits, stratified(splits.train, bench.train_size), stratified(splits.val, bench.val_size),
                  stratified(splits.test, bench.test_size), Path(args.cache))
    inv_id = uuid.uuid4().hex[:8]
    n = 0
    for i, (m, length, kind, rate, meth, seed) in enumerate(todo):
        run = one_run(ctx, m, kind, rate, meth, length, seed)
        run["invocation"] = inv_id
        n += 1
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(json.dumps(run) + "\n")
        hard = run.get("hard_val_acc")
        print(f"[{i + 1}/{len(todo)}] {m} {length:g}ep {kind} {rate:.0%} {meth} seed {seed}: test {run['test_acc']:.4f}"
              f" hard {'-' if hard is None else f'{hard:.3f}'} x{run.get('compression') or 0:.1f} ({run['seconds']:.0f} s,"
              f" {(time.perf_counter() - t0) / 60:.1f} min in)", flush=True)
    for m in args.models:
        for seed in args.seeds:
            ctx.dense(m, seed)
    inv = {
        "id": inv_id, "command": "python benchmarks/admm_vs_magnitude.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_seconds": time.perf_counter() - t0, "runs": n,
        "machine": {"cpu": _cpu(), "cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version(), "note": args.note},
        "versions": {"torch": torch.__version__, "torch_pruning": tp.__version__, "numpy": np.__version__,
                     "commit": _commit()},
        "bench": asdict(bench), "steps_per_epoch": ctx.per_epoch,
        "dense": {f"{k[0]}:{k[1]}": v for k, v in ctx.dense_info.items()},
    }
    with stem.with_name(stem.name + ".invocations.jsonl").open("a") as f:
        f.write(json.dumps(inv) + "\n")
    out = report(stem)
    print(markdown(out))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
