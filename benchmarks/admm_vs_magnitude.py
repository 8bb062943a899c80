"""ADMM vs one-shot magnitude vs Torch-Pruning at equal training epochs (issue 12).

For each model on the embedded ``digits`` dataset, each sparsity target (filter, shape and
irregular at 50/70/90% on every prunable layer: every conv including the first, every
linear layer but the output layer; filter pruning on the layers whose output channels
form a prunable group) and each seed, the dense baseline is trained with autoprune's
defaults (``TrainSettings``, seeded) and then pruned by every method with the same total
number of training epochs:

* ``admm``: :func:`autoprune.admm.prune` (ADMM iterations, hard prune, masked retraining);
* ``magnitude``: one-shot magnitude hard prune, then masked retraining for all the epochs;
* ``torch-pruning`` (filter only): Torch-Pruning's ``MagnitudePruner`` with group L2
  importance (``GroupMagnitudeImportance(p=2)``), the same uniform ratio, the output
  layer ignored, then plain fine-tuning with :func:`autoprune.train.run_epochs`.

Each method runs under two schedules: the one the search used up to now (``old``: lr
0.01, 6 ADMM iterations of a tenth of the budget each, the rest retraining) and the best
ADMM schedule found (``new``: lr 0.05, 6 ADMM iterations of a twentieth of the budget at
rho 3, the rest retraining). Within a schedule every method gets the same learning rate,
batch size and total epochs. ADMM also runs the old split at lr 0.05
(``old-split-lr0.05``), to separate what the learning rate and the split each do.

Reported per (model, budget, target, method): validation and test accuracy (mean ± sample
standard deviation over the seeds), the validation accuracy right after the hard prune,
and wall seconds per run. Everything is seeded; on CPU the accuracies repeat exactly.

    .venv/bin/python benchmarks/admm_vs_magnitude.py --small   # digits-cnn, lenet5; 5 epochs; old, new
    .venv/bin/python benchmarks/admm_vs_magnitude.py           # + resnet20; 5 and 10 epochs

Writes ``benchmarks/results/admm_vs_magnitude{,_small}.{md,json}`` (and the runs, one JSON
line each as they end, to ``....runs.jsonl``; ``--resume`` reuses them). On a 2-core CPU
at one thread a ``resnet20`` run takes about 30 s per 5 epochs (digits-cnn 3-5 s, lenet5
under 1 s), so the full mode with ``resnet20`` takes hours there: choose ``--models``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from autoprune import admm
from autoprune.config import AdmmSettings, LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.pipeline import build_model, example_input, load_dataset
from autoprune.projection import Projector
from autoprune.train import TrainSettings, evaluate, run_epochs, seed_everything, train_model

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = torch.device("cpu")
KINDS = ("filter", "shape", "irregular")
RATES = (0.5, 0.7, 0.9)


def old_schedule(budget: float) -> AdmmSettings:
    """The search's trial schedule before this benchmark, scaled to ``budget`` epochs.

    At 5 epochs it is the search's ``SEARCH_ADMM``: 6 ADMM iterations of 0.5 epoch at rho 1
    growing x1.3, then 2 retraining epochs, lr 0.01.
    """
    return AdmmSettings(iters=6, epochs=budget / 10, rho=1.0, rho_growth=1.3, retrain_epochs=budget * 0.4, lr=0.01)


def new_schedule(budget: float) -> AdmmSettings:
    """The best schedule found for ADMM at equal epochs (``AdmmSettings.for_budget``); lr 0.05 for every method.

    At 5 epochs: 6 ADMM iterations of 0.25 epoch at rho 3 growing x1.3, then 3.5 retraining
    epochs. Shorter W-steps leave more of the budget to masked retraining, and rho 3 makes up
    for the fewer SGD steps per W-step; lr 0.05 (the dense training's) helped every method.
    """
    return AdmmSettings.for_budget(budget)


def lr_only_schedule(budget: float) -> AdmmSettings:
    """The old split at the new learning rate: what the learning rate alone does to ADMM."""
    return old_schedule(budget).replace(lr=0.05)


METHODS = ("admm", "magnitude", "torch-pruning")
SCHEDULES = {"old": old_schedule, "old-split-lr0.05": lr_only_schedule, "new": new_schedule}
# magnitude and Torch-Pruning depend only on the total epochs and the learning rate, which
# the lr-only schedule shares with ``new``: they run under ``old`` and ``new`` only
SCHEDULE_METHODS = {"old": METHODS, "old-split-lr0.05": ("admm",), "new": METHODS}


# -- set-up ------------------------------------------------------------------------
def dense_baseline(model_name: str, seed: int, splits, cache: dict) -> dict:  # noqa: ANN001
    """The seeded dense model (trained once per model and seed) and its accuracies."""
    key = (model_name, seed)
    if key not in cache:
        seed_everything(seed)
        model = build_model(model_name, splits)
        t0 = time.perf_counter()
        train_model(model, splits.train, splits.val, device=DEVICE, settings=TrainSettings(), seed=seed)
        cache[key] = {
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "val_acc": evaluate(model, splits.val, device=DEVICE),
            "test_acc": evaluate(model, splits.test, device=DEVICE),
            "seconds": time.perf_counter() - t0,
        }
    return cache[key]


def fresh_model(model_name: str, seed: int, splits, cache: dict) -> torch.nn.Module:  # noqa: ANN001
    base = dense_baseline(model_name, seed, splits, cache)
    model = build_model(model_name, splits)
    model.load_state_dict(base["state"])
    return model.to(DEVICE)


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


def output_layer(model: torch.nn.Module, graph: ChannelGraph) -> torch.nn.Module:
    return model.get_submodule(list(graph.layers)[-1])


# -- methods ---------------------------------------------------------------------
def run_autoprune(method: str, model, splits, targets, settings: AdmmSettings, seed: int) -> dict:  # noqa: ANN001
    graph = ChannelGraph(model, example_input(splits))
    projector = Projector(model, graph, targets)
    seed_everything(seed)
    _, history = admm.prune(model, projector, splits.train, settings, method=method, device=DEVICE, seed=seed,
                            val_set=splits.val)
    worst = None
    if history.iterations:
        worst = max(history.iterations[-1].residual.values(), default=None)
    kept = None
    if all(t.type == "filter" for t in targets.values()):  # output channels left, per pruned layer
        kept = {name: int(model.get_submodule(name).weight.detach().flatten(1).abs().sum(1).gt(0).sum())
                for name in targets}
    return {"hard_val_acc": history.hard_prune_val_acc, "final_residual": worst, "kept_channels": kept}


def run_torch_pruning(model, splits, rate: float, settings: AdmmSettings, epochs: float, seed: int) -> dict:  # noqa: ANN001
    import torch_pruning as tp

    graph = ChannelGraph(model, example_input(splits))
    pruner = tp.pruner.MagnitudePruner(
        model, example_input(splits), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=rate, ignored_layers=[output_layer(model, graph)],
    )
    pruner.step()
    # Torch-Pruning rounds a uniform ratio its own way (and may leave a group whole), so its
    # architecture can differ from autoprune's at the same rate: recorded for the report
    kept = {name: int(model.get_submodule(name).weight.shape[0]) for name in list(graph.layers)[:-1]}
    hard = evaluate(model, splits.val, device=DEVICE)
    seed_everything(seed)
    run_epochs(model, splits.train, device=DEVICE, epochs=epochs, lr=settings.lr, momentum=settings.momentum,
               weight_decay=settings.weight_decay, batch_size=settings.batch_size, seed=seed + 5000,
               description="Torch-Pruning fine-tuning")
    return {"hard_val_acc": hard, "final_residual": None, "kept_channels": kept}


def total_epochs(s: AdmmSettings) -> float:
    return s.iters * s.epochs + s.retrain_epochs


def one_run(model_name: str, kind: str, rate: float, method: str, schedule: str, budget: float, seed: int,
            splits, cache: dict) -> dict:  # noqa: ANN001
    settings = SCHEDULES[schedule](budget)
    assert abs(total_epochs(settings) - budget) < 1e-9, (settings, budget)
    model = fresh_model(model_name, seed, splits, cache)
    graph = ChannelGraph(model, example_input(splits))
    targets = uniform_targets(graph, kind, rate)
    t0 = time.perf_counter()
    if method == "torch-pruning":
        extra = run_torch_pruning(model, splits, rate, settings, budget, seed)
    else:
        extra = run_autoprune(method, model, splits, targets, settings, seed)
    seconds = time.perf_counter() - t0
    return {
        "model": model_name, "kind": kind, "rate": rate, "method": method, "schedule": schedule, "budget": budget,
        "seed": seed, "val_acc": evaluate(model, splits.val, device=DEVICE),
        "test_acc": evaluate(model, splits.test, device=DEVICE), "seconds": seconds, "layers": sorted(targets), **extra,
    }


# -- report ----------------------------------------------------------------------
def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pct(xs: list[float]) -> str:
    m, s = _mean_sd(xs)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (model, budget, kind, rate, schedule, method) with mean and spread over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["budget"], r["kind"], r["rate"], r["schedule"], r["method"]), []).append(r)
    rows = []
    for (model, budget, kind, rate, schedule, method), rs in groups.items():
        val, test = [r["val_acc"] for r in rs], [r["test_acc"] for r in rs]
        hard = [r["hard_val_acc"] for r in rs if r["hard_val_acc"] is not None]
        rows.append({
            "model": model, "budget": budget, "kind": kind, "rate": rate, "schedule": schedule, "method": method,
            "seeds": [r["seed"] for r in rs],
            "val_mean": _mean_sd(val)[0], "val_sd": _mean_sd(val)[1], "test_mean": _mean_sd(test)[0],
            "test_sd": _mean_sd(test)[1], "hard_val_mean": statistics.fmean(hard) if hard else None,
            "val_min": min(val), "val_max": max(val), "test_min": min(test), "test_max": max(test),
            "seconds_mean": statistics.fmean(r["seconds"] for r in rs),
        })
    return rows


def markdown(out: dict) -> str:
    rows = out["summary"]
    lines = [f"# ADMM vs magnitude vs Torch-Pruning at equal epochs ({out['mode']} mode)", "",
             f"Made by `{out['command']}` in {out['wall_seconds'] / 60:.1f} min ({out['resumed_runs']} of "
             f"{len(out['runs'])} runs reused from an interrupted invocation; the runs' own time adds up to "
             f"{out['run_seconds_total'] / 60:.1f} min) on {out['machine']['cpu']} "
             f"({out['machine']['threads']} thread), torch {out['versions']['torch']}, Torch-Pruning "
             f"{out['versions']['torch_pruning']}, autoprune commit {out['versions']['commit']}. Dataset `digits` "
             f"(train {out['dataset']['train']}, val {out['dataset']['val']}, test {out['dataset']['test']} images); "
             f"seeds {out['seeds']}; accuracies in %, mean ± sample sd over the seeds; `hard` is the validation "
             "accuracy right after the hard prune (Torch-Pruning: right after its pruning step), before retraining.",
             ""]
    lines += ["Schedules (every method of a schedule gets the same epochs, learning rate, momentum, weight decay "
              "and batch):", ""]
    for b in out["budgets"]:
        for name, s in out["schedules"][str(b)].items():
            others = ("; magnitude and Torch-Pruning " + f"{b:g} epochs of (masked) retraining"
                      if "magnitude" in SCHEDULE_METHODS[name] else " (ADMM only)")
            lines.append(f"- {b:g} epochs, `{name}`: ADMM {s['iters']} x {s['epochs']:g} epoch at rho {s['rho']:g} "
                         f"(x{s['rho_growth']:g} per iteration) + {s['retrain_epochs']:g} retraining{others}; "
                         f"lr {s['lr']:g} (cosine, restarting each phase), momentum {s['momentum']:g}, weight decay "
                         f"{s['weight_decay']:g}, batch {s['batch_size']}.")
    lines.append("")
    lines += _overview(out)
    for model in out["models"]:
        d = out["dense"][model]
        lines += ["", f"## {model} (dense: val {_pct(d['val'])}, test {_pct(d['test'])})", ""]
        lines += _architectures(out, model)
        for b in out["budgets"]:
            lines += [f"### {b:g} epochs", "",
                      "| target | schedule | method | val % | test % | hard % | s/run |", "|---|---|---|---|---|---|---|"]
            for kind in KINDS:
                for rate in RATES:
                    for sched in out["schedule_names"]:
                        for method in METHODS:
                            r = _find(rows, model, b, kind, rate, sched, method)
                            if r is None:
                                continue
                            hard = "-" if r["hard_val_mean"] is None else f"{100 * r['hard_val_mean']:.0f}"
                            lines.append(f"| {kind} {100 * rate:.0f}% | {sched} | {method} | "
                                         f"{100 * r['val_mean']:.1f} ± {100 * r['val_sd']:.1f} | "
                                         f"{100 * r['test_mean']:.1f} ± {100 * r['test_sd']:.1f} | {hard} | "
                                         f"{r['seconds_mean']:.1f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def autoprune_filter_channels(model_name: str, rate: float, splits) -> dict[str, int]:  # noqa: ANN001
    """Output channels autoprune's filter target at ``rate`` leaves in each pruned layer."""
    model = build_model(model_name, splits)
    graph = ChannelGraph(model, example_input(splits))
    targets = uniform_targets(graph, "filter", rate)
    masks = Projector(model, graph, targets).hard_masks()
    return {name: int(masks[f"{name}.weight"].flatten(1).any(1).sum()) for name in targets}


def _architectures(out: dict, model: str) -> list[str]:
    """Output channels each filter target leaves per layer: autoprune's methods vs Torch-Pruning."""
    lines = ["Filter targets, output channels left per pruned layer (autoprune: `n - floor(n * rate)`, at least "
             "1; Torch-Pruning 1.6 rounds the same `pruning_ratio` its own way, so its architectures differ):", ""]
    for rate in RATES:
        ours = out["filter_channels"][model].get(str(rate))
        tps = {tuple(r["kept_channels"].items()) for r in out["runs"]
               if (r["model"], r["kind"], r["rate"], r["method"]) == (model, "filter", rate, "torch-pruning")
               and r.get("kept_channels")}
        if ours is None:
            continue
        line = f"- {100 * rate:.0f}% ({', '.join(ours)}): autoprune {', '.join(map(str, ours.values()))}"
        for kept in sorted(tps):
            line += f"; Torch-Pruning {', '.join(str(v) for _, v in kept)}"
        lines.append(line)
    return lines + [""]


def _find(rows, model, budget, kind, rate, schedule, method):  # noqa: ANN001, ANN202
    for r in rows:
        if (r["model"], r["budget"], r["kind"], r["rate"], r["schedule"], r["method"]) == (
                model, budget, kind, rate, schedule, method):
            return r
    return None


def _overview(out: dict) -> list[str]:
    """Mean accuracy of ADMM and magnitude over the 9 targets, their paired differences, and the filter rows."""
    rows = out["summary"]
    lines = ["## Overview", "",
             "ADMM and magnitude: mean over the 9 targets and the seeds; `admm - magnitude` is the mean paired "
             "difference (same target, same seed; positive: ADMM ahead), with how many of the target x seed pairs "
             "ADMM won / tied / lost on test accuracy. The last column compares all three methods on the 3 filter "
             "targets (Torch-Pruning prunes filters only).", "",
             "| model | epochs | schedule | admm val / test % | magnitude val / test % | admm - magnitude val / test "
             "(pt) | ADMM won/tied/lost (test) | filter only: admm / magnitude / Torch-Pruning test % |",
             "|---|---|---|---|---|---|---|---|"]
    runs = out["runs"]
    for model in out["models"]:
        for b in out["budgets"]:
            for sched in out["schedule_names"]:
                acc = {}
                if "magnitude" not in SCHEDULE_METHODS[sched]:  # ADMM only
                    sel = [r for r in rows if (r["model"], r["budget"], r["schedule"], r["method"]) ==
                           (model, b, sched, "admm")]
                    filt = [r["test_mean"] for r in sel if r["kind"] == "filter"]
                    lines.append(f"| {model} | {b:g} | {sched} | {100 * statistics.fmean(r['val_mean'] for r in sel):.1f}"
                                 f" / {100 * statistics.fmean(r['test_mean'] for r in sel):.1f} | - | - | - | "
                                 f"{100 * statistics.fmean(filt):.1f} / - / - |")
                    continue
                for method in ("admm", "magnitude"):
                    sel = [r for r in rows if (r["model"], r["budget"], r["schedule"], r["method"]) ==
                           (model, b, sched, method)]
                    acc[method] = (statistics.fmean(r["val_mean"] for r in sel),
                                   statistics.fmean(r["test_mean"] for r in sel))
                pairs = {}
                for r in runs:
                    if (r["model"], r["budget"], r["schedule"]) == (model, b, sched) and r["method"] != "torch-pruning":
                        pairs.setdefault((r["kind"], r["rate"], r["seed"]), {})[r["method"]] = r
                dv = [p["admm"]["val_acc"] - p["magnitude"]["val_acc"] for p in pairs.values()]
                dt = [p["admm"]["test_acc"] - p["magnitude"]["test_acc"] for p in pairs.values()]
                filt = []
                for method in METHODS:
                    sel = [r["test_mean"] for r in rows if (r["model"], r["budget"], r["schedule"], r["method"],
                                                            r["kind"]) == (model, b, sched, method, "filter")]
                    filt.append(f"{100 * statistics.fmean(sel):.1f}" if sel else "-")
                won = sum(d > 1e-12 for d in dt)
                lost = sum(d < -1e-12 for d in dt)
                lines.append(f"| {model} | {b:g} | {sched} | {100 * acc['admm'][0]:.1f} / {100 * acc['admm'][1]:.1f} | "
                             f"{100 * acc['magnitude'][0]:.1f} / {100 * acc['magnitude'][1]:.1f} | "
                             f"{100 * statistics.fmean(dv):+.2f} / {100 * statistics.fmean(dt):+.2f} | "
                             f"{won}/{len(dt) - won - lost}/{lost} | {' / '.join(filt)} |")
    return lines


# -- main ------------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="digits-cnn and lenet5 at 5 epochs only (minutes on 2 cores)")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--budgets", nargs="+", type=float, default=None, help="total training epochs per run")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--schedules", nargs="+", default=None, choices=list(SCHEDULES),
                    help="default: all (--small: old and new; the lr-only ADMM schedule is a diagnostic)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results path stem (default: benchmarks/results/admm_vs_magnitude[_small])")
    ap.add_argument("--log", default=None,
                    help="where each run is appended as it ends (default: <stem>.runs.jsonl; give a path outside the "
                         "checkout while others run the test suite, which fails on files changing in it)")
    ap.add_argument("--resume", action="store_true", help="reuse the runs already in the --log file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models or (["digits-cnn", "lenet5"] if args.small else ["digits-cnn", "lenet5", "resnet20"])
    budgets = args.budgets or ([5.0] if args.small else [5.0, 10.0])
    args.schedules = args.schedules or (["old", "new"] if args.small else list(SCHEDULES))
    stem = Path(args.out) if args.out else RESULTS / ("admm_vs_magnitude_small" if args.small else "admm_vs_magnitude")
    splits = load_dataset("digits")
    import torch_pruning as tp

    t0 = time.perf_counter()
    cache: dict = {}
    runs: list[dict] = []
    plan = [(m, b, k, r, s, meth, seed) for m in models for b in budgets for k in KINDS for r in RATES
            for s in args.schedules for meth in SCHEDULE_METHODS[s] for seed in args.seeds
            if meth != "torch-pruning" or k == "filter"]
    log = Path(args.log) if args.log else stem.parent / (stem.name + ".runs.jsonl")
    done: dict[tuple, dict] = {}
    if args.resume and log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["model"], r["budget"], r["kind"], r["rate"], r["schedule"], r["method"], r["seed"])] = r
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    for i, (m, b, k, r, s, meth, seed) in enumerate(plan):
        if (m, b, k, r, s, meth, seed) in done:
            runs.append(done[(m, b, k, r, s, meth, seed)])
            continue
        run = one_run(m, k, r, meth, s, b, seed, splits, cache)
        runs.append(run)
        with log.open("a") as f:
            f.write(json.dumps(run) + "\n")
        print(f"[{i + 1}/{len(plan)}] {m} {b:g}ep {k} {r:.0%} {s} {meth} seed {seed}: val {run['val_acc']:.3f} "
              f"test {run['test_acc']:.3f} hard {run['hard_val_acc'] if run['hard_val_acc'] is None else round(run['hard_val_acc'], 3)} "
              f"({run['seconds']:.1f} s)", flush=True)
    for m in models:
        for sd in args.seeds:
            dense_baseline(m, sd, splits, cache)
    dense = {m: {"val": [cache[(m, sd)]["val_acc"] for sd in args.seeds],
                 "test": [cache[(m, sd)]["test_acc"] for sd in args.seeds],
                 "train_seconds": [cache[(m, sd)]["seconds"] for sd in args.seeds]} for m in models}
    out = {
        "mode": "small" if args.small else "full",
        "command": "python benchmarks/admm_vs_magnitude.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_seconds": time.perf_counter() - t0,  # this invocation (with --resume: only the runs it made)
        "run_seconds_total": sum(r["seconds"] for r in runs),  # pruning + retraining, every run
        "resumed_runs": sum(1 for key in plan if key in done),
        "machine": {"cpu": _cpu(), "cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "torch_pruning": tp.__version__, "commit": _commit()},
        "dataset": {"name": "digits", "train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "dense_train_settings": asdict(TrainSettings()),
        "models": models, "budgets": budgets, "seeds": args.seeds, "schedule_names": args.schedules,
        "schedules": {str(b): {s: asdict(SCHEDULES[s](b)) for s in args.schedules} for b in budgets},
        "dense": dense, "summary": summarize(runs), "runs": runs,
        "filter_channels": {m: {str(r): autoprune_filter_channels(m, r, splits) for r in RATES} for m in models},
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    text = markdown(out)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
