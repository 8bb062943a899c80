"""Is the search worth running? ``autoprune search`` against uniform pruning, side by side.

For each model, seed and budget, on one machine and in one process:

1. the dense baseline, trained with the seed;
2. the **uniform sweep**: filter pruning of every prunable layer (the first conv included,
   the output layer kept) at 10%, 20%, ... 90%, by autoprune's magnitude projection +
   masked retraining and by Torch-Pruning's group-L2 pruner + fine-tuning, each with the
   epochs one search trial gets;
3. ``autoprune search`` at the budget, with the same per-trial epochs;
4. every configuration timed beside dense by autoprune's side-by-side timer, and at the end
   the winners (best uniform of each kind, the search's best) timed again together.

Reported: the best speedup within the budget for each side (validation accuracy decides
feasibility, as in the search; the test accuracy of each winner is shown beside it), the
ratio search / best uniform, the hypervolume of each side's accuracy-latency points
(reference: the dense latency and the budget's accuracy floor), the training epochs each
side spent, and wall times. Results: ``benchmarks/results/search_vs_uniform.{md,json}``.

    .venv/bin/python benchmarks/search_vs_uniform.py --small          # minutes on 2 cores
    .venv/bin/python benchmarks/search_vs_uniform.py --device cuda     # full mode, on a GPU
    .venv/bin/python benchmarks/search_vs_uniform.py --small --models lenet5 --dataset npz:my.npz
"""

from __future__ import annotations

import argparse
import copy
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

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.admm import prune as autoprune_prune  # noqa: E402
from autoprune.config import AdmmSettings, LayerTarget  # noqa: E402
from autoprune.device import resolve_channel_multiple, resolve_device  # noqa: E402
from autoprune.groups import ChannelGraph  # noqa: E402
from autoprune.latency import device_description  # noqa: E402
from autoprune.pipeline import example_input, load_dataset, train_baseline  # noqa: E402
from autoprune.search import SEARCH_ADMM, SearchSettings, run_search  # noqa: E402
from autoprune.search.probe import ConfigProbe  # noqa: E402
from autoprune.search.baseline import choose_latency_batch, latency_settings  # noqa: E402
from autoprune.train import evaluate, run_epochs, seed_everything  # noqa: E402

RESULTS = ROOT / "results"
RATES = tuple(round(0.1 * i, 1) for i in range(1, 10))
FINAL_ROUNDS = 30


# -- the uniform sweep ------------------------------------------------------------
def uniform_targets(graph: ChannelGraph, rate: float) -> dict[str, LayerTarget]:
    """Filter pruning at ``rate`` on every layer whose output channels can be removed (the first
    conv included), the output layer kept."""
    return {n: LayerTarget("filter", rate) for n, info in graph.layers.items()
            if not info.is_output and graph.out_group(n) is not None and graph.out_group(n).prunable}


def trial_epochs(admm: AdmmSettings) -> float:
    """The epochs one search trial trains: ADMM iterations x epochs + retraining."""
    return admm.iters * admm.epochs + admm.retrain_epochs


@dataclass
class Point:
    """One pruned configuration: what it scored and how fast it ran."""

    side: str  # "magnitude", "torch-pruning", "search"
    label: str
    val: float
    test: float
    ratio: float  # latency / dense latency (side by side)
    epochs: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio


def magnitude_sweep(ckpt, splits, graph, probe: ConfigProbe, admm: AdmmSettings, seed: int) -> list[Point]:  # noqa: ANN001
    """autoprune's magnitude projection + masked retraining of every uniform rate."""
    out, configs = [], []
    for rate in RATES:
        targets = uniform_targets(graph, rate)
        model = ckpt.build()
        seed_everything(seed)
        autoprune_prune(model, probe.projector(targets, model), splits.train, admm, method="magnitude",
                        device=probe.device, seed=seed)
        out.append(Point("magnitude", f"filter {round(100 * rate)}%", evaluate(model, splits.val, device=probe.device),
                         evaluate(model, splits.test, device=probe.device), 1.0, trial_epochs(admm),
                         {"rate": rate, "signature": probe.signature(targets)}))
        configs.append(targets)
    stats = probe.compare([{}] + configs)
    for p, st in zip(out, stats[1:]):
        p.ratio = st.median
    return out


def torch_pruning_model(ckpt, splits, graph, rate: float) -> torch.nn.Module:  # noqa: ANN001
    """Torch-Pruning's group-L2 magnitude pruner, one shot at ``rate`` on every prunable layer
    (``ignored_layers``: the output layer), as its README shows it."""
    import torch_pruning as tp

    model = ckpt.build()
    pruner = tp.pruner.MagnitudePruner(
        model, example_input(splits), importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=rate,
        ignored_layers=[model.get_submodule(graph.output_layer)])
    pruner.step()
    return model


def torch_pruning_sweep(ckpt, splits, graph, probe: ConfigProbe, admm: AdmmSettings, seed: int) -> list[Point]:  # noqa: ANN001
    """Torch-Pruning at every uniform rate, fine-tuned for the epochs of one trial."""
    out, models = [], []
    for rate in RATES:
        model = torch_pruning_model(ckpt, splits, graph, rate)
        seed_everything(seed)
        run_epochs(model, splits.train, device=probe.device, epochs=trial_epochs(admm), lr=admm.lr,
                   momentum=admm.momentum, weight_decay=admm.weight_decay, batch_size=admm.batch_size, seed=seed)
        model.cpu().eval()
        out.append(Point("torch-pruning", f"filter {round(100 * rate)}%", evaluate(model, splits.val, device=probe.device),
                         evaluate(model, splits.test, device=probe.device), 1.0, trial_epochs(admm), {"rate": rate}))
        models.append(model)
    stats = probe.compare_models([ckpt.build()] + models)
    for p, st in zip(out, stats[1:]):
        p.ratio = st.median
    return out, models


# -- the search ---------------------------------------------------------------------
def search(ckpt_path: Path, model: str, dataset: str, budget: float, seed: int, trials: int, batch: int,
           work: Path, device: str, method: str, data_dir: str | None) -> dict[str, Any]:
    settings = SearchSettings(
        model=model, dataset=dataset, checkpoint=str(ckpt_path), data_dir=data_dir, budget=budget, trials=trials,
        device=device, latency_batch=batch, seed=seed, study_name=f"{model}-{budget}-{seed}".replace(":", "-"),
        storage=f"sqlite:///{work / 'optuna.db'}", runs_dir=str(work), trial_method=method,
    )
    t0 = time.perf_counter()
    result = run_search(settings)
    return {"record": result.record, "seconds": time.perf_counter() - t0}


# -- figures ------------------------------------------------------------------------
def hypervolume(points: list[tuple[float, float]], floor: float) -> float:
    """Area dominated by ``(accuracy, latency ratio)`` points above the accuracy ``floor`` and
    below the dense latency (ratio 1), in accuracy points x fraction of dense time: at each
    latency x, the best accuracy of the points at most that slow."""
    pts = sorted((r, a) for a, r in points if a > floor and r < 1.0)
    area, best = 0.0, floor
    for i, (r, a) in enumerate(pts):
        best = max(best, a)
        right = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        area += (right - r) * (best - floor)
    return 100 * area


def best_within(points: list[Point], dense_val: float, budget: float) -> Point | None:
    ok = [p for p in points if dense_val - p.val <= budget + 1e-12]
    return min(ok, key=lambda p: (p.ratio, -p.val)) if ok else None


def run_model(model: str, dataset: str, seed: int, budgets: list[float], trials: int, device: torch.device,
              method: str, work: Path, data_dir: str | None, log) -> list[dict[str, Any]]:  # noqa: ANN001
    t_model = time.perf_counter()
    ckpt, ckpt_path = train_baseline(model, dataset, device=device, seed=seed, data_dir=data_dir,
                                     out=work / f"{model}-{seed}.pt".replace(":", "-"))
    splits = load_dataset(dataset, data_dir=data_dir)
    dense_model = ckpt.build()
    graph = ChannelGraph(dense_model, example_input(splits))
    shape = (splits.in_channels, *splits.image_size)
    base = SearchSettings(model=model, dataset=dataset)
    batch = choose_latency_batch(ckpt.build(), shape, device, base)
    cm = resolve_channel_multiple("auto", device, "fp32")
    probe = ConfigProbe(ckpt.build, graph, channel_multiple=cm, device=device,
                        latency=latency_settings(batch, base), input_shape=shape)
    dense_val = evaluate(dense_model, splits.val, device=device)
    dense_test = evaluate(dense_model, splits.test, device=device)
    admm = SEARCH_ADMM
    log(f"{model} seed {seed}: dense {100 * dense_val:.1f}% val, {100 * dense_test:.1f}% test, batch {batch}")

    t0 = time.perf_counter()
    mag = magnitude_sweep(ckpt, splits, graph, probe, admm, seed)
    mag_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tp_points, tp_models = torch_pruning_sweep(ckpt, splits, graph, probe, admm, seed)
    tp_s = time.perf_counter() - t0
    for p in mag + tp_points:
        log(f"  uniform {p.side} {p.label}: {100 * p.val:.1f}% val, {p.speedup:.2f}x")

    rows = []
    for budget in budgets:
        found = search(ckpt_path, model, dataset, budget, seed, trials, batch, work, str(device), method, data_dir)
        rec = found["record"]
        best = rec.best_feasible()
        trained = [t for t in rec.trials if t.state == "COMPLETE" and t.repeat_of is None and not t.is_dense]
        search_points = [(t.accuracy, t.latency_ms / rec.meta.dense_latency_ms) for t in rec.completed
                         if t.repeat_of is None]
        floor = dense_val - budget
        m_best, t_best = best_within(mag, dense_val, budget), best_within(tp_points, dense_val, budget)
        # the winners, timed again side by side with dense
        final_models, names = [ckpt.build()], ["dense"]
        if m_best is not None:
            final_models.append(probe.compacted(uniform_targets(graph, m_best.extra["rate"])))
            names.append("magnitude")
        if t_best is not None:
            final_models.append(copy.deepcopy(tp_models[RATES.index(t_best.extra["rate"])]))
            names.append("torch-pruning")
        search_test = None
        if best is not None and not best.is_dense:
            targets = {k: LayerTarget(v["type"], v.get("rate")) for k, v in best.targets.items()}
            final_models.append(probe.compacted(targets))
            names.append("search")
            search_test = retrain_test(ckpt, splits, probe, targets, admm, method, seed)
        stats = dict(zip(names, probe.compare_models(final_models, rounds=FINAL_ROUNDS)))

        def final(name: str) -> dict[str, float] | None:
            st = stats.get(name)
            return None if st is None else {"speedup": 1 / st.median, "p10": 1 / st.p90, "p90": 1 / st.p10}

        row = {
            "model": model, "dataset": splits.name, "seed": seed, "budget": budget, "batch": batch,
            "dense": {"val": dense_val, "test": dense_test},
            "magnitude": _side(m_best, final("magnitude")), "torch_pruning": _side(t_best, final("torch-pruning")),
            "search": None if best is None or best.is_dense else {
                "trial": best.number, "summary": best.sparsity_summary(), "targets": best.targets,
                "val": best.accuracy, "test": search_test, "in_search_speedup": best.speedup,
                "remeasured": best.remeasured, "final": final("search"), "proposal": best.proposal},
            "search_best_uniform": _uniform(rec),
            "hypervolume": {"search": hypervolume(search_points, floor),
                            "magnitude": hypervolume([(p.val, p.ratio) for p in mag], floor),
                            "torch_pruning": hypervolume([(p.val, p.ratio) for p in tp_points], floor)},
            "epochs": {"search": trial_epochs(admm) * len(trained), "magnitude": trial_epochs(admm) * len(mag),
                       "torch_pruning": trial_epochs(admm) * len(tp_points)},
            "trials": {"total": len([t for t in rec.trials if t.state != "WAITING"]), "trained": len(trained),
                       "stopped": len([t for t in rec.trials if t.state == "PRUNED"]),
                       "repeats": len([t for t in rec.trials if t.repeat_of is not None]),
                       "by_proposal": _by_proposal(rec)},
            "seconds": {"search": found["seconds"], "magnitude_sweep": mag_s, "torch_pruning_sweep": tp_s},
            "sweep": {"magnitude": [asdict(p) for p in mag], "torch_pruning": [asdict(p) for p in tp_points]},
        }
        for side in ("magnitude", "torch_pruning"):
            s, u = row["search"], row[side]
            row[f"ratio_vs_{side}"] = (s["final"]["speedup"] / u["final"]["speedup"]
                                       if s and u and s["final"] and u["final"] else None)
        log(f"  budget {100 * budget:g}%: search {_fmt_side(row['search'])}, magnitude {_fmt_side(row['magnitude'])}, "
            f"torch-pruning {_fmt_side(row['torch_pruning'])}; ratios {row['ratio_vs_magnitude']}, "
            f"{row['ratio_vs_torch_pruning']} ({found['seconds']:.0f} s search)")
        rows.append(row)
    log(f"{model} seed {seed} done in {time.perf_counter() - t_model:.0f} s")
    return rows


def retrain_test(ckpt, splits, probe: ConfigProbe, targets, admm: AdmmSettings, method: str, seed: int) -> float:  # noqa: ANN001
    """The search's best configuration pruned again as its trial did, scored on the test split
    (the search records validation accuracy only)."""
    model = ckpt.build()
    seed_everything(seed)
    autoprune_prune(model, probe.projector(targets, model), splits.train, admm, method=method, device=probe.device,
                    seed=seed)
    return evaluate(model, splits.test, device=probe.device)


def _side(p: Point | None, fin: dict[str, float] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"label": p.label, "val": p.val, "test": p.test, "sweep_speedup": p.speedup, "final": fin}


def _uniform(rec) -> dict[str, Any] | None:  # noqa: ANN001
    u = rec.best_uniform()
    return None if u is None else {"trial": u.number, "summary": u.sparsity_summary(), "val": u.accuracy,
                                   "speedup": u.final_speedup}


def _by_proposal(rec) -> dict[str, int]:  # noqa: ANN001
    out: dict[str, int] = {}
    for t in rec.trials:
        if t.state != "WAITING":
            key = t.proposal or ("dense" if t.is_dense else "enqueued")
            out[key] = out.get(key, 0) + 1
    return out


def _fmt_side(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none within budget"
    return f"{s['final']['speedup']:.2f}x at {100 * s['val']:.1f}%"


# -- report -------------------------------------------------------------------------
def markdown(out: dict[str, Any]) -> str:
    rows = out["rows"]
    lines = [
        "# Search against uniform pruning, side by side",
        "",
        f"{out['machine']['device']}; torch {out['versions']['torch']}, optuna {out['versions']['optuna']}, "
        f"torch-pruning {out['versions']['torch_pruning']}; autoprune commit {out['versions']['commit']}. "
        f"Mode `{out['mode']}`: {out['trials']} search trials, trial method `{out['method']}`, "
        f"{out['trial_epochs']:g} training epochs per trial and per uniform point; wall time "
        f"{out['seconds'] / 60:.1f} min. Command: `{out['command']}`.",
        "",
        "Uniform: filter pruning at one rate (10–90%) on every prunable layer, the first conv included, the output "
        "layer kept; *magnitude* is autoprune's magnitude projection + masked retraining (kept channels rounded to "
        "the device's channel block, as the search does), *TP* is Torch-Pruning's group-L2 pruner + fine-tuning. "
        "Feasible: validation accuracy within the budget of the dense model's. Speedups are from one final "
        f"side-by-side timing of dense and the winners ({FINAL_ROUNDS} rounds; p10–p90 of the per-round ratios in "
        "brackets). Test accuracy of each winner beside its validation accuracy. HV: hypervolume of each side's "
        "(accuracy, latency) points above the budget's accuracy floor and below the dense latency (accuracy points "
        "× fraction of dense time).",
        "",
        "| model | budget | seed | dense val/test % | magnitude best | TP best | search best | search / magnitude | "
        "search / TP | HV search / mag / TP | epochs search / mag / TP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {100 * r['budget']:g}% | {r['seed']} | {100 * r['dense']['val']:.1f} / "
            f"{100 * r['dense']['test']:.1f} | {_cell(r['magnitude'])} | {_cell(r['torch_pruning'])} | "
            f"{_cell_search(r['search'])} | {_ratio(r['ratio_vs_magnitude'])} | {_ratio(r['ratio_vs_torch_pruning'])} | "
            f"{r['hypervolume']['search']:.2f} / {r['hypervolume']['magnitude']:.2f} / "
            f"{r['hypervolume']['torch_pruning']:.2f} | {r['epochs']['search']:g} / {r['epochs']['magnitude']:g} / "
            f"{r['epochs']['torch_pruning']:g} |")
    lines += ["", "## Per model and budget, over seeds", "",
              "| model | budget | search / magnitude (min, mean) | search / TP (min, mean) | seeds at ≥ 1.2× both |",
              "|---|---|---|---|---|"]
    for key in sorted({(r["model"], r["budget"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["budget"]) == key]
        rm = [r["ratio_vs_magnitude"] for r in sel if r["ratio_vs_magnitude"] is not None]
        rt = [r["ratio_vs_torch_pruning"] for r in sel if r["ratio_vs_torch_pruning"] is not None]
        wins = sum(1 for r in sel if (r["ratio_vs_magnitude"] or 0) >= 1.2 and (r["ratio_vs_torch_pruning"] or 0) >= 1.2)
        lines.append(f"| {key[0]} | {100 * key[1]:g}% | {_mm(rm)} | {_mm(rt)} | {wins} of {len(sel)} |")
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
    lines.append("The search's best came from: " + ", ".join(f"{k} {v}" for k, v in sorted(winners.items())) + ".")
    return "\n".join(lines) + "\n"


def _cell(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none"
    f = s["final"]
    return (f"{s['label']}: **{f['speedup']:.2f}×** ({f['p10']:.2f}–{f['p90']:.2f}), "
            f"{100 * s['val']:.1f}/{100 * s['test']:.1f}%")


def _cell_search(s: dict[str, Any] | None) -> str:
    if not s or not s.get("final"):
        return "none"
    f = s["final"]
    test = "–" if s["test"] is None else f"{100 * s['test']:.1f}"
    return (f"trial {s['trial']} ({s['summary']}): **{f['speedup']:.2f}×** ({f['p10']:.2f}–{f['p90']:.2f}), "
            f"{100 * s['val']:.1f}/{test}%")


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


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
    ap.add_argument("--small", action="store_true", help="the CPU mode: 3 models on digits, 30 trials")
    ap.add_argument("--models", default="digits-cnn,lenet5,resnet20")
    ap.add_argument("--dataset", default="digits", help="any registered dataset, npz:PATH or imagefolder:PATH")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--budgets", default="1%,2%")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=None, help="search trials (default: 30 small, 60 full)")
    ap.add_argument("--trial-method", default="magnitude", choices=["admm", "magnitude"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS), help="folder for search_vs_uniform.{md,json}")
    ap.add_argument("--name", default="search_vs_uniform", help="file name stem of the results")
    ap.add_argument("--keep", default=None, help="keep the work folders (baselines, studies) here instead of a "
                                                  "temporary folder")
    args = ap.parse_args(argv)
    from autoprune.search.settings import parse_budget

    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    trials = args.trials or (30 if args.small else 60)
    device = resolve_device(args.device)
    import optuna
    import torch_pruning as tp

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    rows = []

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="autoprune-svu-") as scratch:
        tmp = args.keep or scratch
        for model in args.models.split(","):
            for seed in seeds:
                work = Path(tmp) / f"{model}-{seed}".replace(":", "-")
                work.mkdir(parents=True)
                rows += run_model(model, args.dataset, seed, budgets, trials, device, args.trial_method, work,
                                  args.data_dir, log)
    out = {
        "command": "python benchmarks/search_vs_uniform.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "small" if args.small else "full", "trials": trials, "method": args.trial_method,
        "trial_epochs": trial_epochs(SEARCH_ADMM), "seconds": time.perf_counter() - t0,
        "machine": {"device": device_description(device), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "torch_pruning": tp.__version__,
                     "commit": _commit()},
        "rows": rows,
    }
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    (dest / f"{args.name}.md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
