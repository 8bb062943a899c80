"""Is the search worth running? ``autoprune search`` against uniform pruning, side by side, at
no more training than one uniform sweep.

For each model, seed and budget, on one machine and in one process:

1. the dense baseline (trained once per model and kept in the work folder);
2. the **uniform sweep**: filter pruning of every prunable layer (the first conv included,
   the output layer kept) at 10%, 20%, ... 90%, by autoprune's magnitude projection +
   masked retraining and by Torch-Pruning's group-L2 pruner + fine-tuning, ``E`` epochs each
   (``--epochs``): ``9 E`` epochs per sweep;
3. ``autoprune search`` at the budget, trials of the same ``E`` epochs, with its rungs
   (screen, short, full) and an epoch budget of ``9 E``: **no more training than one sweep**,
   every rung counted;
4. every configuration timed beside dense by autoprune's side-by-side timer, and at the end
   the winners (best uniform of each kind, the search's best) timed again together.

Reported: the best speedup within the budget for each side (validation accuracy decides
feasibility, as in the search; the test accuracy of each winner is shown beside it), the
ratio search / best uniform, the training epochs each side spent, the Spearman rank
correlation of the search's cheap scores (screen, short rung) with the fully trained score,
and wall times. Results: ``benchmarks/results/<name>.{md,json}``.

    .venv/bin/python benchmarks/search_vs_uniform.py --small --models resnet56      # Fashion-MNIST, 2 cores
    .venv/bin/python benchmarks/search_vs_uniform.py --device cuda                    # full mode, on a GPU
    .venv/bin/python benchmarks/search_vs_uniform.py --tiny --out /tmp/svu            # the suite's smoke run

``--small`` trains on a stratified subset of the training images (``--train-subset``, the same
for every side) for ``--epochs`` epochs per point and judges on a stratified subset of the
validation images (``--val-subset``); the full mode uses the whole sets.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from autoprune.config import LayerTarget, Schedule  # noqa: E402
from autoprune.data import DatasetSplits  # noqa: E402
from autoprune.dense import build_model, example_input, load_dataset  # noqa: E402
from autoprune.device import resolve_channel_multiple, resolve_device  # noqa: E402
from autoprune.groups import ChannelGraph  # noqa: E402
from autoprune.latency import device_description  # noqa: E402
from autoprune.study import SearchSettings, run_search  # noqa: E402
from autoprune.study.baseline import choose_latency_batch, latency_settings  # noqa: E402
from autoprune.study.probe import ConfigProbe  # noqa: E402
from autoprune.study.rungs import rank_correlation  # noqa: E402
from autoprune.study.settings import AUTO_BUDGET_TRIALS  # noqa: E402
from autoprune.task import ClassifierTask  # noqa: E402
from autoprune.train import TrainSettings, evaluate, run_epochs, seed_everything, train_model  # noqa: E402

RESULTS = ROOT / "results"
RATES = tuple(round(0.1 * i, 1) for i in range(1, 10))
FINAL_ROUNDS = 30


@dataclass(frozen=True)
class Mode:
    """What one run measures."""

    name: str
    models: str
    dataset: str
    train_subset: int | None  # training images (stratified), None: all
    val_subset: int | None  # validation images (stratified), None: all
    epochs: float  # per uniform point and per search trial
    dense_epochs: int
    trials: int
    rates: tuple[float, ...] = RATES
    short_rung: float = 0.2
    lr: float = 0.05  # of every fine-tuning (uniform points and search trials alike)
    dense_on_subset: bool = True  # False: the dense model trains on every training image (pruning uses the subset)


MODES = {
    # the dense model trained on all 54,000 images; pruning fine-tunes on a 3,000-image subset (1 epoch = 46 steps,
    # at lr 0.01: at the dense training's 0.05 one epoch did more harm than good, benchmarks/results/search_vs_uniform.md)
    "small": Mode("small", "resnet56,vgg16-bn-half", "fashion-mnist", 3000, 2000, 1.0, 5, 30, lr=0.01,
                  dense_on_subset=False),
    "full": Mode("full", "resnet56,vgg16-bn-half", "fashion-mnist", None, None, 5.0, 30, 60),
    # the suite's smoke run: one small model on the embedded digits, two rates, rungs without the short one
    "tiny": Mode("tiny", "digits-cnn", "digits", None, None, 1.0, 3, 4, rates=(0.3, 0.6), short_rung=0.0),
}


# -- data ----------------------------------------------------------------------------
def _stratified(ds, n: int | None, seed: int):  # noqa: ANN001, ANN202
    """The rows of a split view ``ds`` with ``n`` of them drawn per class in proportion."""
    if n is None or n >= len(ds):
        return None
    labels = ds.source.labels[ds.indices].numpy()
    rng = np.random.RandomState(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep.extend(rng.choice(rows, max(1, round(n * len(rows) / len(labels))), replace=False).tolist())
    return torch.as_tensor(sorted(keep))


def _view(ds, rows):  # noqa: ANN001, ANN202
    out = copy.copy(ds)
    out.indices = ds.indices[rows]
    return out


def subset_splits(splits: DatasetSplits, n_train: int | None, n_val: int | None, seed: int = 0) -> DatasetSplits:
    """``splits`` with ``n_train`` training and ``n_val`` validation images drawn per class in
    proportion (the same for every side of the comparison); the test split stays whole."""
    changes = {}
    rows = _stratified(splits.train, n_train, seed)
    if rows is not None:
        changes.update(train=_view(splits.train, rows), train_eval=_view(splits.train_eval, rows))
    rows = _stratified(splits.val, n_val, seed + 1)
    if rows is not None:
        changes["val"] = _view(splits.val, rows)
    return dataclasses.replace(splits, **changes) if changes else splits


def dense_baseline(model: str, splits: DatasetSplits, mode: Mode, device: torch.device, work: Path,
                   log) -> tuple[Checkpoint, Path, float]:  # noqa: ANN001
    """The dense model, trained once per model (seed 0) on the mode's training set and kept in ``work``."""
    path = work / f"dense-{model}-{splits.name}-{len(splits.train)}-{mode.dense_epochs}.pt".replace(":", "-")
    if path.is_file():
        return load_checkpoint(path), path, 0.0
    t0 = time.perf_counter()
    seed_everything(0)
    net = build_model(model, splits)
    settings = TrainSettings(epochs=mode.dense_epochs)
    result = train_model(net, splits.train, splits.val, device=device, settings=settings, seed=0)
    ckpt = Checkpoint(model=model, dataset=splits.name, in_channels=splits.in_channels, num_classes=splits.num_classes,
                      image_size=tuple(splits.image_size), state_dict=net.state_dict(),
                      metrics={"val_acc": result["val_acc"]}, seed=0, epochs=mode.dense_epochs)
    ckpt.save(path)
    seconds = time.perf_counter() - t0
    log(f"{model}: dense trained {mode.dense_epochs} epochs on {len(splits.train)} images in {seconds:.0f} s, "
        f"{100 * result['val_acc']:.2f}% val")
    return ckpt, path, seconds


# -- the uniform sweep ------------------------------------------------------------
def uniform_targets(graph: ChannelGraph, rate: float) -> dict[str, LayerTarget]:
    """Filter pruning at ``rate`` on every layer whose output channels can be removed (the first
    conv included), the output layer kept."""
    return {n: LayerTarget("filter", rate) for n, info in graph.layers.items()
            if not info.is_output and graph.out_group(n) is not None and graph.out_group(n).prunable}


@dataclass
class Point:
    """One pruned configuration: what it scored and how fast it ran."""

    side: str  # "magnitude", "torch-pruning", "search"
    label: str
    val: float
    ratio: float  # latency / dense latency (side by side)
    epochs: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio


def magnitude_sweep(task: ClassifierTask, graph, probe: ConfigProbe, admm: Schedule, seed: int,  # noqa: ANN001
                    rates: tuple[float, ...]) -> tuple[list[Point], list[torch.nn.Module]]:
    """autoprune's magnitude projection + masked retraining of every uniform rate."""
    out, configs, models = [], [], []
    for rate in rates:
        targets = uniform_targets(graph, rate)
        model = task.dense()
        task.prune(model, probe.projector(targets, model), admm, method="magnitude", seed=seed, device=probe.device)
        model.cpu().eval()
        out.append(Point("magnitude", f"filter {round(100 * rate)}%", task.score(model, probe.device), 1.0,
                         admm.iters * admm.epochs + admm.retrain_epochs,
                         {"rate": rate, "signature": probe.signature(targets)}))
        configs.append(targets)
        models.append(model)
    stats = probe.compare([{}] + configs)
    for p, st in zip(out, stats[1:]):
        p.ratio = st.median
    return out, models


def torch_pruning_model(task: ClassifierTask, graph, rate: float) -> torch.nn.Module:  # noqa: ANN001
    """Torch-Pruning's group-L2 magnitude pruner, one shot at ``rate`` on every prunable layer
    (``ignored_layers``: the output layer), as its README shows it."""
    import torch_pruning as tp

    model = task.dense()
    pruner = tp.pruner.MagnitudePruner(
        model, task.example(), importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=rate,
        ignored_layers=[model.get_submodule(graph.output_layer)])
    pruner.step()
    return model


def torch_pruning_sweep(task: ClassifierTask, graph, probe: ConfigProbe, admm: Schedule, seed: int,  # noqa: ANN001
                        rates: tuple[float, ...]) -> tuple[list[Point], list[torch.nn.Module]]:
    """Torch-Pruning at every uniform rate, fine-tuned for the epochs of one trial."""
    out, models = [], []
    epochs = admm.iters * admm.epochs + admm.retrain_epochs
    for rate in rates:
        model = torch_pruning_model(task, graph, rate)
        seed_everything(seed)
        run_epochs(model, task.splits.train, device=probe.device, epochs=epochs, lr=admm.lr, momentum=admm.momentum,
                   weight_decay=admm.weight_decay, batch_size=admm.batch_size, seed=seed)
        model.cpu().eval()
        out.append(Point("torch-pruning", f"filter {round(100 * rate)}%", task.score(model, probe.device), 1.0,
                         epochs, {"rate": rate}))
        models.append(model)
    stats = probe.compare_models([task.dense()] + models)
    for p, st in zip(out, stats[1:]):
        p.ratio = st.median
    return out, models


# -- the search ---------------------------------------------------------------------
def search(task: ClassifierTask, model: str, dataset: str, budget: float, seed: int, mode: Mode, batch: int,
           work: Path, device: str, method: str, admm: Schedule, epoch_budget: float | None) -> dict[str, Any]:
    settings = SearchSettings(
        model=model, dataset=dataset, budget=budget, trials=mode.trials, device=device, latency_batch=batch,
        seed=seed, study_name=f"{model}-{budget}-{seed}".replace(":", "-"), storage=f"sqlite:///{work / 'optuna.db'}",
        runs_dir=str(work), trial_method=method, admm=admm, task=task, short_rung=mode.short_rung,
        epoch_budget=epoch_budget,
    )
    t0 = time.perf_counter()
    result = run_search(settings)
    return {"record": result.record, "seconds": time.perf_counter() - t0}


# -- figures ------------------------------------------------------------------------
def best_within(points: list[Point], dense_val: float, budget: float) -> Point | None:
    ok = [p for p in points if dense_val - p.val <= budget + 1e-12]
    return min(ok, key=lambda p: (p.ratio, -p.val)) if ok else None


def run_model(model: str, mode: Mode, seeds: list[int], budgets: list[float], device: torch.device, method: str,
              work: Path, data_dir: str | None, log, ceiling: bool,  # noqa: ANN001
              checkpoint: str | None = None, on_row=None,  # noqa: ANN001
              cells: set[tuple[int, float]] | None = None) -> list[dict[str, Any]]:
    """The rows of one model: per seed, both uniform sweeps, then per budget a search and the final
    side-by-side timing. ``cells`` keeps only those (seed, budget) rows (a seed none of them names is
    skipped, sweeps included)."""
    t_model = time.perf_counter()
    whole = load_dataset(mode.dataset, data_dir=data_dir)
    splits = subset_splits(whole, mode.train_subset, mode.val_subset)
    if checkpoint is not None:
        ckpt, dense_seconds = load_checkpoint(checkpoint), 0.0
    else:
        dense_splits = splits if mode.dense_on_subset else subset_splits(whole, None, mode.val_subset)
        ckpt, _, dense_seconds = dense_baseline(model, dense_splits, mode, device, work, log)
    task = ClassifierTask(splits, ckpt)
    dense_model = ckpt.build()
    graph = ChannelGraph(dense_model, example_input(splits))
    shape = (splits.in_channels, *splits.image_size)
    base = SearchSettings(model=model, dataset=mode.dataset)
    batch = choose_latency_batch(ckpt.build(), shape, device, base)
    cm = resolve_channel_multiple("auto", device, "fp32")
    probe = ConfigProbe(ckpt.build, graph, channel_multiple=cm, device=device,
                        latency=latency_settings(batch, base), input_shape=shape)
    dense_val = task.score(dense_model, device)
    dense_test = task.test_score(dense_model, device)
    admm = Schedule.for_budget(mode.epochs, lr=mode.lr)
    sweep_epochs = len(mode.rates) * mode.epochs
    log(f"{model}: dense {100 * dense_val:.2f}% val, {100 * dense_test:.2f}% test, {len(splits.train)} training and "
        f"{len(splits.val)} validation images, latency batch {batch}, channel multiple {cm}")

    rows = []
    for seed in seeds:
        seed_budgets = [b for b in budgets if cells is None or (seed, b) in cells]
        if not seed_budgets:
            continue
        t_seed = time.perf_counter()
        t0 = time.perf_counter()
        mag, mag_models = magnitude_sweep(task, graph, probe, admm, seed, mode.rates)
        mag_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tp_points, tp_models = torch_pruning_sweep(task, graph, probe, admm, seed, mode.rates)
        tp_s = time.perf_counter() - t0
        for p in mag + tp_points:
            log(f"  seed {seed} uniform {p.side} {p.label}: {100 * p.val:.2f}% val, {p.speedup:.2f}x")
        for budget in seed_budgets:
            wdir = work / f"{model}-{seed}-{budget}".replace(":", "-")
            wdir.mkdir(parents=True, exist_ok=True)
            found = search(task, model, mode.dataset, budget, seed, mode, batch, wdir, str(device), method, admm,
                           sweep_epochs)
            rec = found["record"]
            best = rec.best_feasible()
            m_best, t_best = best_within(mag, dense_val, budget), best_within(tp_points, dense_val, budget)
            # the winners, timed again side by side with dense; their test accuracy beside validation
            final_models, names, tests = [ckpt.build()], ["dense"], {}
            if m_best is not None:
                i = mode.rates.index(m_best.extra["rate"])
                final_models.append(probe.compacted(uniform_targets(graph, m_best.extra["rate"])))
                names.append("magnitude")
                tests["magnitude"] = evaluate(mag_models[i], splits.test, device=device)
            if t_best is not None:
                i = mode.rates.index(t_best.extra["rate"])
                final_models.append(copy.deepcopy(tp_models[i]))
                names.append("torch-pruning")
                tests["torch-pruning"] = evaluate(tp_models[i], splits.test, device=device)
            if best is not None and not best.is_dense:
                targets = {k: LayerTarget(v["type"], v.get("rate")) for k, v in best.targets.items()}
                final_models.append(probe.compacted(targets))
                names.append("search")
                tests["search"] = retrain_test(task, probe, targets, admm, method, seed, mode)
            top = ceiling_search(task, model, budget, seed, mode, batch, work, str(device), method, admm, probe,
                                 graph, log) if ceiling else None
            if top is not None and top.get("targets"):  # timed in the same rounds as the winners
                final_models.append(probe.compacted({k: LayerTarget(v["type"], v.get("rate"))
                                                     for k, v in top["targets"].items()}))
                names.append("ceiling")
            stats = dict(zip(names, probe.compare_models(final_models, rounds=FINAL_ROUNDS)))

            def final(name: str) -> dict[str, float] | None:
                st = stats.get(name)
                return None if st is None else {"speedup": 1 / st.median, "p10": 1 / st.p90, "p90": 1 / st.p10}

            row = {
                "model": model, "dataset": splits.name, "seed": seed, "budget": budget, "batch": batch,
                "dense": {"val": dense_val, "test": dense_test},
                "magnitude": _side(m_best, final("magnitude"), tests.get("magnitude")),
                "torch_pruning": _side(t_best, final("torch-pruning"), tests.get("torch-pruning")),
                "search": None if best is None or best.is_dense else {
                    "trial": best.number, "summary": best.sparsity_summary(), "targets": best.targets,
                    "val": best.score, "test": tests.get("search"), "in_search_speedup": best.speedup,
                    "remeasured": best.remeasured, "final": final("search"), "proposal": best.proposal},
                "search_best_uniform": _uniform(rec),
                "epochs": {"search": rec.epochs_spent(), "magnitude": sum(p.epochs for p in mag),
                           "torch_pruning": sum(p.epochs for p in tp_points), "budget": sweep_epochs},
                "trials": _trial_counts(rec),
                "rung_correlation": rec.rung_correlations(),
                "rung_pairs": _rung_pairs(rec),
                "seconds": {"search": found["seconds"], "magnitude_sweep": mag_s, "torch_pruning_sweep": tp_s,
                            "dense_training": dense_seconds},
                "sweep": {"magnitude": [asdict(p) for p in mag], "torch_pruning": [asdict(p) for p in tp_points]},
            }
            for side in ("magnitude", "torch_pruning"):
                s_, u = row["search"], row[side]
                row[f"ratio_vs_{side}"] = (s_["final"]["speedup"] / u["final"]["speedup"]
                                           if s_ and u and s_["final"] and u["final"] else None)
            if top is not None:
                row["ceiling"] = {**top, "final": final("ceiling")}
                u = row["magnitude"]
                row["ceiling_vs_magnitude"] = (top and row["ceiling"]["final"] and u and u["final"]
                                               and row["ceiling"]["final"]["speedup"] / u["final"]["speedup"]) or None
            log(f"  seed {seed} budget {100 * budget:g}%: search {_fmt_side(row['search'])}, magnitude "
                f"{_fmt_side(row['magnitude'])}, torch-pruning {_fmt_side(row['torch_pruning'])}; ratios "
                f"{_fmt_ratio(row['ratio_vs_magnitude'])}, {_fmt_ratio(row['ratio_vs_torch_pruning'])}; epochs "
                f"search {row['epochs']['search']:.3g} / sweep {sweep_epochs:g} ({found['seconds']:.0f} s search)")
            rows.append(row)
            if on_row is not None:
                on_row(rows)
        log(f"{model} seed {seed} done in {time.perf_counter() - t_seed:.0f} s")
    log(f"{model} done in {time.perf_counter() - t_model:.0f} s")
    return rows


def ceiling_search(task, model, budget, seed, mode, batch, work, device, method, admm, probe, graph,  # noqa: ANN001, ANN201
                   log):  # noqa: ANN001
    """The fastest configuration within the budget the search finds at any cost: no epoch budget,
    every configuration trained fully (no rungs), twice the trials."""
    wdir = work / f"ceiling-{model}-{seed}-{budget}".replace(":", "-")
    wdir.mkdir(parents=True, exist_ok=True)
    settings = SearchSettings(
        model=model, dataset=mode.dataset, budget=budget, trials=2 * mode.trials, device=device, latency_batch=batch,
        seed=seed, study_name="ceiling", storage=f"sqlite:///{wdir / 'optuna.db'}", runs_dir=str(wdir),
        trial_method=method, admm=admm, task=task, rungs=False, epoch_budget=None)
    rec = run_search(settings).record
    best = rec.best_feasible()
    out = {"epochs": rec.epochs_spent(), "trials": len([t for t in rec.trials if t.state != "WAITING"])}
    if best is not None and not best.is_dense:
        out.update({"trial": best.number, "summary": best.sparsity_summary(), "val": best.score,
                    "speedup": best.final_speedup, "targets": best.targets})
    log(f"  ceiling: {out}")
    return out


def retrain_test(task: ClassifierTask, probe: ConfigProbe, targets, admm: Schedule, method: str, seed: int,  # noqa: ANN001
                 mode: Mode) -> float:
    """The search's best configuration pruned again as a full trial does (the hard prune, then the
    trial's whole schedule), scored on the test split (the search records validation accuracy only)."""
    model = task.dense()
    task.prune(model, probe.projector(targets, model), admm, method=method, seed=seed, device=probe.device)
    return evaluate(model, task.splits.test, device=probe.device)


def _side(p: Point | None, fin: dict[str, float] | None, test: float | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"label": p.label, "val": p.val, "test": test, "sweep_speedup": p.speedup, "final": fin}


def _uniform(rec) -> dict[str, Any] | None:  # noqa: ANN001
    u = rec.best_uniform()
    return None if u is None else {"trial": u.number, "summary": u.sparsity_summary(), "val": u.score,
                                   "speedup": u.final_speedup}


def _trial_counts(rec) -> dict[str, Any]:  # noqa: ANN001
    trials = [t for t in rec.trials if t.state != "WAITING"]
    by_proposal: dict[str, int] = {}
    for t in trials:
        key = t.proposal or ("dense" if t.is_dense else "enqueued")
        by_proposal[key] = by_proposal.get(key, 0) + 1
    return {"total": len(trials),
            "trained_fully": len([t for t in trials if t.state == "COMPLETE" and t.repeat_of is None and not t.is_dense]),
            "stopped_at_screen": len([t for t in trials if t.stopped_at == "screen"]),
            "stopped_at_short": len([t for t in trials if t.stopped_at == "short"]),
            "stopped_other": len([t for t in trials if t.state == "PRUNED" and t.stopped_at is None]),
            "repeats": len([t for t in trials if t.repeat_of is not None]),
            "by_proposal": by_proposal}


def _rung_pairs(rec) -> list[dict[str, float]]:  # noqa: ANN001
    """(screen, short, full) scores of every fully trained configuration, for pooled correlations."""
    out = []
    for t in rec.completed:
        if t.rungs and t.repeat_of is None and not t.is_dense:
            out.append({r["rung"]: r["score"] for r in t.rungs})
    return out


def _fmt_side(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none within budget"
    return f"{s['final']['speedup']:.2f}x at {100 * s['val']:.2f}%"


def _fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


# -- report -------------------------------------------------------------------------
def pooled_correlations(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    pairs = [p for r in rows if r["model"] == model for p in r["rung_pairs"]]
    out: dict[str, Any] = {"pairs": len(pairs)}
    for rung in ("screen", "short"):
        have = [p for p in pairs if rung in p and "full" in p]
        out[rung] = rank_correlation([p[rung] for p in have], [p["full"] for p in have])
    return out


def markdown(out: dict[str, Any]) -> str:
    rows = out["rows"]
    mode = out["mode"]
    train_images = ("all training images" if mode["train_subset"] is None else
                    f"{mode['train_subset']} training images") + \
                   ("" if mode["val_subset"] is None else f" and {mode['val_subset']} validation images")
    lines = [
        "# Search against uniform pruning, side by side, at no more training than one uniform sweep",
        "",
        f"{out['machine']['device']}, {out['machine']['threads']} threads; torch {out['versions']['torch']}, optuna "
        f"{out['versions']['optuna']}, torch-pruning {out['versions']['torch_pruning']}; autoprune commit "
        f"{out['versions']['commit']}. Mode `{mode['name']}`: {mode['dataset']}, "
        f"{train_images} (the same for every side), dense trained {mode['dense_epochs']} epochs once per model "
        f"({'on the same subset' if mode.get('dense_on_subset', True) else 'on every training image'}), "
        f"{mode['epochs']:g} epochs of fine-tuning at lr {mode.get('lr', 0.05):g} per uniform point and per search "
        f"trial, {mode['trials']} search trials with "
        f"rungs (short rung {mode['short_rung']:g} of a trial) and an epoch budget of one sweep; trial method "
        f"`{out['method']}`; wall time {out['seconds'] / 60:.1f} min. Command: `{out['command']}`.",
        *([""] + [f"Rows merged from an earlier run (commit {e['commit']}, {e['seconds'] / 60:.1f} min, "
                  f"{e['rows']} rows): `{e['command']}`." for e in out.get("earlier", [])]),
        "",
        "Uniform: filter pruning at one rate on every prunable layer, the first conv included, the output layer "
        "kept; *magnitude* is autoprune's magnitude projection + masked retraining (kept channels rounded to the "
        "device's channel block, as the search does), *TP* is Torch-Pruning's group-L2 pruner + fine-tuning. "
        "Feasible: validation accuracy within the budget of the dense model's. Speedups are from one final "
        f"side-by-side timing of dense and the winners ({FINAL_ROUNDS} rounds; p10–p90 of the per-round ratios in "
        "brackets). Each winner's validation / test accuracy beside it. Epochs: what each side trained, every rung "
        "of every search trial counted (the screen's BatchNorm passes included).",
        *(["", f"**Partial: {len(rows)} of the {out['rows_planned']} rows planned** (the run was cut short; "
           f"every row written is complete)."] if len(rows) < out.get("rows_planned", len(rows)) else []),
        "",
        "| model | budget | seed | dense val/test % | magnitude best | TP best | search best | search / magnitude | "
        "search / TP | epochs search / mag / TP | trials: full / short / screen |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["trials"]
        lines.append(
            f"| {r['model']} | {100 * r['budget']:g}% | {r['seed']} | {100 * r['dense']['val']:.2f} / "
            f"{100 * r['dense']['test']:.2f} | {_cell(r['magnitude'])} | {_cell(r['torch_pruning'])} | "
            f"{_cell_search(r['search'])} | {_ratio(r['ratio_vs_magnitude'])} | {_ratio(r['ratio_vs_torch_pruning'])} | "
            f"{r['epochs']['search']:.3g} / {r['epochs']['magnitude']:g} / {r['epochs']['torch_pruning']:g} | "
            f"{t['trained_fully']} / {t['stopped_at_short']} / {t['stopped_at_screen']} |")
    lines += ["", "## Per model and budget, over seeds", "",
              "| model | budget | search / magnitude (min, mean) | search / TP (min, mean) | seeds at ≥ 1.3× both |",
              "|---|---|---|---|---|"]
    for key in sorted({(r["model"], r["budget"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["budget"]) == key]
        rm = [r["ratio_vs_magnitude"] for r in sel if r["ratio_vs_magnitude"] is not None]
        rt = [r["ratio_vs_torch_pruning"] for r in sel if r["ratio_vs_torch_pruning"] is not None]
        wins = sum(1 for r in sel if (r["ratio_vs_magnitude"] or 0) >= 1.3 and (r["ratio_vs_torch_pruning"] or 0) >= 1.3)
        lines.append(f"| {key[0]} | {100 * key[1]:g}% | {_mm(rm)} | {_mm(rt)} | {wins} of {len(sel)} |")
    lines += ["", "## The cheap scores against the trained score", "",
              "Spearman rank correlation of the screen score (hard prune + BatchNorm recalibration, validation subset, "
              "no training) and of the short rung's score with the fully trained validation score, over every "
              "configuration the searches of a model trained fully.", "",
              "| model | configurations | screen | short rung |", "|---|---|---|---|"]
    for model in sorted({r["model"] for r in rows}):
        c = pooled_correlations(rows, model)
        lines.append(f"| {model} | {c['pairs']} | {_corr(c['screen'])} | {_corr(c['short'])} |")
    ceilings = [r for r in rows if r.get("ceiling")]
    if ceilings:
        lines += ["", "## The space's ceiling", "",
                  "The fastest configuration within the budget a search found at any cost (every configuration "
                  "trained fully, no epoch budget, twice the trials).", "",
                  "The ceiling's speedup is from the row's final side-by-side timing with dense and the uniform "
                  "winners (its speedup in its own search in brackets).", "",
                  "| model | budget | seed | ceiling | ceiling / magnitude | epochs |", "|---|---|---|---|---|---|"]
        for r in ceilings:
            c = r["ceiling"]
            fin = c.get("final")
            shown = f"**{fin['speedup']:.2f}×** (search {c['speedup']:.2f}×)" if fin else f"{c.get('speedup', 0):.2f}×"
            cell = "none" if "speedup" not in c else (f"trial {c['trial']} ({c['summary']}): {shown}, "
                                                      f"{100 * c['val']:.2f}%")
            lines.append(f"| {r['model']} | {100 * r['budget']:g}% | {r['seed']} | {cell} | "
                         f"{_fmt_ratio(r.get('ceiling_vs_magnitude'))} | {c['epochs']:.3g} |")
    lines += ["", "## Search trials by proposal (summed over rows)", ""]
    counts: dict[str, int] = {}
    for r in rows:
        for k, v in r["trials"]["by_proposal"].items():
            counts[k] = counts.get(k, 0) + v
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    winners: dict[str, int] = {}
    for r in rows:
        if r["search"]:
            winners[r["search"]["proposal"] or "?"] = winners.get(r["search"]["proposal"] or "?", 0) + 1
    lines.append("")
    lines.append("The search's best came from: " + (", ".join(f"{k} {v}" for k, v in sorted(winners.items())) or "–")
                 + ".")
    return "\n".join(lines) + "\n"


def _cell(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none"
    f = s["final"]
    test = "–" if s.get("test") is None else f"{100 * s['test']:.2f}"
    return (f"{s['label']}: **{f['speedup']:.2f}×** ({f['p10']:.2f}–{f['p90']:.2f}), "
            f"{100 * s['val']:.2f}/{test}%")


def _cell_search(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none"
    f = s["final"]
    test = "–" if s["test"] is None else f"{100 * s['test']:.2f}"
    return (f"trial {s['trial']} ({s['summary']}): **{f['speedup']:.2f}×** ({f['p10']:.2f}–{f['p90']:.2f}), "
            f"{100 * s['val']:.2f}/{test}%")


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _corr(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _mm(xs: list[float]) -> str:
    return "–" if not xs else f"{min(xs):.2f}×, {statistics.mean(xs):.2f}×"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--small", action="store_true", help="the CPU mode: a training subset, 1 epoch per point")
    g.add_argument("--tiny", action="store_true", help="a smoke run of a few minutes (the test suite runs it)")
    ap.add_argument("--models", default=None, help="comma-separated (default: the mode's)")
    ap.add_argument("--dataset", default=None, help="any registered dataset (default: the mode's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-subset", type=int, default=None, help="training images (default: the mode's)")
    ap.add_argument("--val-subset", type=int, default=None, help="validation images (default: the mode's)")
    ap.add_argument("--epochs", type=float, default=None, help="epochs per uniform point and search trial")
    ap.add_argument("--dense-epochs", type=int, default=None)
    ap.add_argument("--checkpoint", default=None, help="a trained dense checkpoint to start from (one model only)")
    ap.add_argument("--budgets", default=None, help="default: 0.5%%,1%% (tiny: 10%%)")
    ap.add_argument("--seeds", default=None, help="default: 0,1,2 (tiny: 0)")
    ap.add_argument("--trials", type=int, default=None, help="search trials (default: the mode's)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also run each search without rungs or epoch budget, twice the trials (the space's ceiling)")
    ap.add_argument("--trial-method", default="magnitude", choices=["admm", "magnitude"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS), help="folder for <name>.{md,json}")
    ap.add_argument("--name", default="search_vs_uniform", help="file name stem of the results")
    ap.add_argument("--keep", default=None, help="keep the work folders (dense models, studies) here")
    ap.add_argument("--cells", default=None,
                    help="only these rows, SEED:BUDGET comma-separated (e.g. 1:1%%,2:0.5%%): finish a run cut short")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON",
                    help="an earlier run's results (same mode): its rows come first in this run's files")
    args = ap.parse_args(argv)
    from autoprune.study.settings import parse_budget

    mode = MODES["tiny" if args.tiny else "small" if args.small else "full"]
    mode = dataclasses.replace(mode, **{k: v for k, v in {
        "models": args.models, "dataset": args.dataset, "train_subset": args.train_subset,
        "val_subset": args.val_subset, "epochs": args.epochs,
        "dense_epochs": args.dense_epochs, "trials": args.trials}.items() if v is not None})
    if args.checkpoint is not None and "," in mode.models:
        ap.error("--checkpoint takes one model (--models NAME)")
    if args.checkpoint is not None:  # the header says how the given dense model was trained
        mode = dataclasses.replace(mode, dense_epochs=int(load_checkpoint(args.checkpoint).epochs))
    budgets = [parse_budget(b) for b in (args.budgets or ("10%" if args.tiny else "0.5%,1%")).split(",")]
    seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2")).split(",")]
    cells = None
    if args.cells:
        try:
            cells = {(int(c.split(":")[0]), parse_budget(c.split(":")[1])) for c in args.cells.split(",")}
        except (IndexError, ValueError) as exc:
            ap.error(f"--cells {args.cells!r}: expected SEED:BUDGET pairs such as 1:1%,2:0.5% ({exc})")
        seeds = sorted({c[0] for c in cells})
        budgets = sorted({c[1] for c in cells})
    earlier = [json.loads(Path(f).read_text()) for f in args.merge]
    for e in earlier:
        if e["mode"] != json.loads(json.dumps(asdict(mode))) or e["method"] != args.trial_method:
            ap.error(f"--merge: {e['command']!r} ran another mode or trial method; its rows cannot join this table")
    prior_rows = [r for e in earlier for r in e["rows"]]
    device = resolve_device(args.device)
    import optuna
    import torch_pruning as tp

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    rows = []

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    planned = len(prior_rows) + len(mode.models.split(",")) * (
        len(cells) if cells is not None else len(seeds) * len(budgets))
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)

    def write(done: list[dict[str, Any]]) -> dict[str, Any]:
        """The results so far (every finished row is written at once: a run cut short keeps them)."""
        out = {
            "command": "python benchmarks/search_vs_uniform.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "mode": asdict(mode), "method": args.trial_method, "seconds": time.perf_counter() - t0,
            "sweep_epochs": len(mode.rates) * mode.epochs, "budget_trials": AUTO_BUDGET_TRIALS,
            "machine": {"device": device_description(device), "platform": platform.platform(),
                        "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
            "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "torch_pruning": tp.__version__,
                         "commit": _commit()},
            "correlations": {m: pooled_correlations(prior_rows + done, m)
                             for m in sorted({r["model"] for r in prior_rows + done})},
            "rows": prior_rows + done, "rows_planned": planned,
            "earlier": [{"command": e["command"], "seconds": e["seconds"], "commit": e["versions"]["commit"],
                         "rows": len(e["rows"])} for e in earlier],
        }
        (dest / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
        (dest / f"{args.name}.md").write_text(markdown(out))
        return out

    with tempfile.TemporaryDirectory(prefix="autoprune-svu-") as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        for model in mode.models.split(","):
            rows += run_model(model, mode, seeds, budgets, device, args.trial_method, work / model.replace(":", "-"),
                              args.data_dir, log, args.ceiling, args.checkpoint,
                              on_row=lambda model_rows: write(rows + model_rows), cells=cells)
    print(markdown(write(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
