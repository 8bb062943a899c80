"""The ``autoprune`` command: parse, call the library, print. Nothing else lives here.

Errors the user can fix print one line (``autoprune: error: ...``) and exit with status 2.

The library is imported here at the top; only the MLflow and plotly layers
(``autoprune.tracking``, ``autoprune.report``) are imported where a command uses them, so a
command that does not track or draw never loads either.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autoprune._version import __version__
from autoprune.api import mirror_callbacks
from autoprune.atomic import check_writable
from autoprune.bench import run_bench
from autoprune.config import PruneConfig
from autoprune.data import describe_datasets
from autoprune.dense import input_label
from autoprune.device import AUTO, resolve_device
from autoprune.errors import UserError
from autoprune.latency import LatencySettings
from autoprune.models import describe_models, list_torchvision_models
from autoprune.pick import write_trial_config
from autoprune.pipeline import PruneSummary, list_layers, prune_to_folder, train_baseline
from autoprune.progress import Reporter, RichReporter
from autoprune.runtimes import get_runtime, list_runtimes
from autoprune.sparsity import describe_sparsity_types
from autoprune.study import (
    SEARCH_ADMM,
    SearchSettings,
    parse_budget,
    print_summary,
    run_search,
)
from autoprune.study.configs import best_config_yaml, trial_config_yaml
from autoprune.study.records import study_record
from autoprune.study.storage import default_storage, load_autoprune_study

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 1  # the reader of stdout went away (`| head`): Python's and rich's status for it


def _add_common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="folder with dataset files (default: ./data)")
    p.add_argument("--download", action="store_true", help="allow downloading torchvision datasets into --data-dir")


def _device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (default: %(default)s)")


def _runtime_arg(p: argparse.ArgumentParser, default: str | None = "torch", what: str = "torch, eager") -> None:
    p.add_argument("--runtime", default=default, metavar="NAME",
                   help=f"where latency is measured: {', '.join(list_runtimes())} (default: {what})")


def _layout_args(p: argparse.ArgumentParser) -> None:
    """How latency is measured: the deployed form by default (see autoprune.latency)."""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="time image models in channels-last memory format (default: on)")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="time models with BatchNorm folded into the preceding conv, as deployed (default: on)")
    p.add_argument("--steady-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU: time with an allocator that keeps freed memory, so activations are not page-faulted "
                        "in again on every call, as deployed runtimes do (default: on; glibc only)")


def _on(flag: bool | None) -> bool:
    """A --x/--no-x flag that defaults to on."""
    return True if flag is None else flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Find the per-layer pruning rates and sparsity types that make a CNN fastest on a device "
        "within an accuracy budget (StructADMM + Optuna + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train the dense baseline and write a checkpoint")
    p.add_argument("--model", required=True, help="model name (see 'autoprune list models')")
    p.add_argument("--dataset", default="digits", help="dataset name (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint path (default: runs/baselines/<model>-<dataset>.pt)")
    p.add_argument("--json", action="store_true", help="print the resulting metrics as JSON")
    _device_arg(p)
    _add_common_data(p)

    p = sub.add_parser("layers", help="list the prunable layers of a model and their channel couplings")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None, help="sets input channels, size and classes (default: the model's native "
                                                   "input, 3×224×224 for a torchvision model, else digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("prune", help="prune a model with ADMM (or magnitude) from a YAML config")
    p.add_argument("--config", required=True, help="YAML config (model, dataset, checkpoint, layers, admm)")
    p.add_argument("--method", default="admm", help="admm or magnitude (default: %(default)s)")
    p.add_argument("--admm-iters", type=int, default=None)
    p.add_argument("--admm-epochs", type=float, default=None)
    p.add_argument("--admm-steps", type=int, default=None, help="optimizer steps per ADMM iteration instead of epochs")
    p.add_argument("--retrain-epochs", type=float, default=None)
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--out", default=None, help="output folder (default: runs/prune/<config name>)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    p.add_argument("--latency-batch", type=int, default=None,
                   help="batch for kernel choice and the latency report (default: the search's, else 32)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 (CUDA) or bf16 (default: the search's, else fp32)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for the model (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the model to MLflow")
    p.add_argument("--json", action="store_true")
    _runtime_arg(p, None, "the config's, from the search, else torch")
    _device_arg(p)

    p = sub.add_parser("bench", help="measure dense vs compacted latency of a pruning config on a device")
    p.add_argument("--model", default=None, help="model name (taken from --config when given)")
    p.add_argument("--dataset", default=None, help="sets input shape and classes (default: the model's native input, "
                                                   "3×224×224 for a torchvision model, else digits)")
    p.add_argument("--checkpoint", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", default=None, help="YAML config whose 'layers' give the targets")
    g.add_argument("--uniform", default=None, metavar="TYPE:RATE",
                   help="one target on every conv but the first, e.g. filter:0.5, shape:0.8, 2:4")
    p.add_argument("--input-shape", default=None, metavar="C,H,W", help="override the dataset's input shape")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 (CUDA) or bf16")
    _layout_args(p)
    p.add_argument("--channel-multiple", default=None, metavar="N|auto",
                   help="round each pruned group's kept channels to a multiple of N; auto: the device's channel "
                        "block, 16 on AVX-512 CPUs (default: the config's with --config, else auto; 1: exact rates)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the measurement")
    p.add_argument("--repeats", type=int, default=30)
    _runtime_arg(p)
    p.add_argument("--json", action="store_true")
    _device_arg(p)

    p = sub.add_parser("search", help="search per-layer sparsity for the fastest model within an accuracy budget",
                       description="Optuna search over per-layer sparsity types and rates: each trial measures the "
                                   "compacted model's latency on the device, prunes with ADMM, and scores validation "
                                   "accuracy. Workers sharing --storage and --study-name share one study.")
    p.add_argument("--budget", default=None, help="accuracy drop allowed: 2%% or 0.02 (default: 2%%)")
    p.add_argument("--budget-mode", default=None, choices=["absolute", "relative"],
                   help="absolute points (default) or a fraction of the dense accuracy")
    p.add_argument("--model", default=None, help="model name (default: digits-cnn)")
    p.add_argument("--dataset", default=None, help="dataset name (default: digits)")
    p.add_argument("--checkpoint", default=None, help="dense baseline (default: trained once, cached under runs/)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--space", default=None,
                   help="search space YAML, or 'auto' (default: search_spaces/<model>.yaml if shipped, else auto)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials the study should have in all (default: 30, or the study's own target)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or auto (default: cpu, or the study's own device)")
    p.add_argument("--latency-batch", type=int, default=None,
                   help="batch size latency is measured at (default: smallest from 32 where dense takes >= 10 ms)")
    p.add_argument("--dtype", default=None, help="fp32 (default), fp16 (CUDA) or bf16")
    _layout_args(p)
    p.add_argument("--channel-multiple", default=None, metavar="N|auto",
                   help="round each pruned group's kept channels to a multiple of N; auto (default): the device's "
                        "channel block, 16 on AVX-512 CPUs, 8 on CUDA; 1: the exact rates")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for latency measurement")
    _runtime_arg(p, None, "torch, or the study's own runtime")
    p.add_argument("--sampler", default=None, help="tpe (default), nsga2 or random")
    p.add_argument("--seed", type=int, default=None, help="sampler and training seed (default: 0)")
    p.add_argument("--study-name", default=None,
                   help="default: <model>-<dataset>-<device>[-<runtime>]; an existing name resumes")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL: sqlite:///FILE.db (default: sqlite:///runs/optuna.db), "
                        "postgresql://USER@HOST/DB, journal:///FILE.log")
    p.add_argument("--resume", action="store_true", help="continue an existing study with its own settings")
    p.add_argument("--admm-iters", type=int, default=None,
                   help="ADMM iterations per trial (default: 6; with --trial-method magnitude their epochs are "
                        "spent on retraining)")
    p.add_argument("--admm-epochs", type=float, default=None, help="epochs per ADMM iteration (default: 0.25)")
    p.add_argument("--retrain-epochs", type=float, default=None, help="masked retraining epochs per trial (default: 3.5)")
    p.add_argument("--rho", type=float, default=None, help="initial ADMM penalty (default: 3 for short schedules)")
    p.add_argument("--trial-method", default=None, choices=["admm", "magnitude"],
                   help="how each trial prunes: magnitude (one-shot, then all its epochs masked retraining; the "
                        "default: level or ahead of ADMM at equal epochs) or admm (ADMM, hard prune, retraining)")
    p.add_argument("--rungs", action=argparse.BooleanOptionalAction, default=None,
                   help="score each configuration at a screen (hard prune + BatchNorm recalibration, no training) "
                        "and a short retraining before its full schedule, training only those predicted to reach "
                        "the front within the budget (default: on; --no-rungs trains every configuration fully)")
    p.add_argument("--short-rung", type=float, default=None,
                   help="the short rung's training, a fraction of a trial's (default: 0.2; 0: none)")
    p.add_argument("--epoch-budget", default=None, metavar="EPOCHS|auto|none",
                   help="training the whole study may spend, every rung counted (default: auto = nine full trials, "
                        "what a uniform sweep of nine rates trains; a study given a larger one goes on)")
    p.add_argument("--min-speedup", type=float, default=1.0,
                   help="stop a trial early unless its measured speedup reaches this (default: %(default)s)")
    p.add_argument("--abandon-drop", default=None,
                   help="stop a trial before retraining if the hard prune drops validation accuracy more than this "
                        "(2%% style or fraction; default: never, see the README)")
    p.add_argument("--runs-dir", default="runs", help="output folder (default: %(default)s)")
    p.add_argument("--stale-after", type=float, default=600.0,
                   help="seconds without a heartbeat after which another worker's running trial counts as lost "
                        "and is replaced (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not mirror the study to MLflow")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")

    p = sub.add_parser("export", help="write the chosen config of a search study as YAML for 'autoprune prune --config'")
    p.add_argument("--study", required=True, help="the study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--trial", type=int, default=None, help="export this trial")
    g.add_argument("--pick", default="fastest", help="fastest (default: fastest within the budget), knee, most-accurate")
    p.add_argument("--out", default="best.yaml", help="YAML file to write (default: %(default)s)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="write one self-contained HTML report of a search study")
    p.add_argument("--study", required=True, help="the study name (see runs/<study>/ or optuna-dashboard)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    p.add_argument("--out", default=None, help="HTML file (default: <runs-dir>/<study>/report.html)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")

    p = sub.add_parser("sync", help="bring MLflow level with a study's Optuna storage (after a tracking outage)")
    p.add_argument("--study", required=True, help="the study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    p.add_argument("--no-figures", action="store_true", help="skip the study's figures and report")

    p = sub.add_parser("list", help="list registered models, datasets, sparsity types or runtimes")
    p.add_argument("what", choices=["models", "datasets", "sparsity", "tv-models", "runtimes"])
    return parser


# -- commands ----------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    reporter = _reporter(args)
    ckpt, path = train_baseline(args.model, args.dataset, epochs=args.epochs, device=device, seed=args.seed,
                                data_dir=args.data_dir, download=args.download, out=args.out,
                                batch_size=args.batch_size, lr=args.lr, reporter=reporter)
    result = {"checkpoint": str(path), "model": ckpt.model, "dataset": ckpt.dataset, "epochs": ckpt.epochs,
              "device": str(device), **ckpt.metrics}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"trained {ckpt.model} on {ckpt.dataset} for {ckpt.epochs} epochs ({device})")
        print(f"  validation accuracy {ckpt.metrics['val_acc']:.2%}   test accuracy {ckpt.metrics['test_acc']:.2%}")
        print(f"  checkpoint: {path}")
        print(f"next: autoprune layers --model {ckpt.model} --dataset {ckpt.dataset}   (then write a prune config)")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    rows = list_layers(args.model, args.dataset, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    table = Table(title=f"prunable layers of {args.model} ({input_label(args.model, args.dataset)} inputs)")
    for col in ("name", "kind", "weight shape", "MACs", "filters", "channels", "coupled with"):
        table.add_column(col, justify="right" if col == "MACs" else "left", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], "×".join(map(str, r["weight_shape"])), f"{r['macs']:,}",
                      "yes" if r["filters_prunable"] else "no", "yes" if r["channels_prunable"] else "no",
                      ", ".join(r["coupled"]) or "-")
    Console().print(table)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from autoprune.tracking import DEFAULT_TRACKING_URI

    overrides = {"iters": args.admm_iters, "epochs": args.admm_epochs, "steps": args.admm_steps,
                 "retrain_epochs": args.retrain_epochs, "rho": args.rho, "lr": args.lr}
    summary = prune_to_folder(
        PruneConfig.from_yaml(args.config), args.out or Path("runs") / "prune" / Path(args.config).stem,
        method=args.method, device=resolve_device(args.device), overrides=overrides, latency_batch=args.latency_batch,
        dtype=args.dtype, runtime=args.runtime, force=args.force,
        tracking_uri=None if args.no_tracking else args.tracking_uri or DEFAULT_TRACKING_URI, reporter=_reporter(args))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
        return 0
    _print_prune_summary(summary)
    return 0


def _print_prune_summary(s: PruneSummary) -> None:
    console = Console()
    d, p = s.dense, s.pruned
    console.print(f"[bold]{s.method}[/bold] pruning of {s.model} on {s.dataset} ({s.device}, {s.seconds:.1f} s)")
    console.print(f"  accuracy   dense val {d.val_acc:.2%} / test {d.test_acc:.2%}   ->   "
                  f"pruned val {p.val_acc:.2%} / test {p.test_acc:.2%}   "
                  f"(drop {s.val_drop*100:+.2f} / {s.test_drop*100:+.2f} points)")
    console.print(f"  params     {d.params_nonzero:,} -> {p.params_nonzero:,} non-zero")
    console.print(f"  MACs       {d.macs:,} -> {p.macs:,} effective ({p.mac_reduction:.2f}x fewer)")
    table = Table()
    for col in ("layer", "shape", "type", "rate", "achieved sparsity", "MACs"):
        table.add_column(col, overflow="fold")
    for layer in s.layers:
        table.add_row(layer.name, "×".join(map(str, layer.weight_shape)), layer.type,
                      "-" if layer.rate is None else f"{layer.rate:.2f}", f"{layer.sparsity:.1%}",
                      f"{layer.macs:,} / {layer.macs_dense:,}")
    console.print(table)
    if s.residuals:
        last = s.residuals[-1].residual
        console.print(f"  ADMM residual ||W-Z||/||W|| after the last iteration: max {max(last.values()):.3g}")
    for note in s.notes:
        console.print(f"  note: {note}")
    r = s.deploy
    if r is not None:
        console.print(f"  deployable model: {r.speedup:.2f}x faster than dense ({r.pruned.latency_ms:.3g} ms vs "
                      f"{r.dense.latency_ms:.3g} ms, batch {r.batch_size} {r.dtype}, "
                      f"{r.device_description}), test accuracy {r.pruned.test_acc:.2%} after reloading")
        for name, info in r.exports.items():
            if info.file is None:
                console.print(f"  note: {name} export skipped: {info.skipped}")
    if s.out_dir is not None:
        console.print(f"  written: {s.out_dir}/ model.pt + architecture.json (autoprune.load_pruned), model.pt2, "
                      f"model.onnx, report.json, report.md, result.json, masked_model.pt, config.yaml")
    if s.mlflow_run_id:
        console.print(f"  MLflow model: runs:/{s.mlflow_run_id}/model")


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        for name, desc in describe_models().items():
            print(f"{name:14s} {desc}")
        print("tv:NAME        any torchvision classification model ('autoprune list tv-models')")
        print("timm:NAME      any timm model, untrained (pip install -e '.[timm]'; names: timm.list_models('convnext*'))")
        print("pkg.mod:fn     your own model: a callable returning an nn.Module")
    elif args.what == "tv-models":
        print("\n".join(list_torchvision_models()))
    elif args.what == "datasets":
        for name, desc in describe_datasets().items():
            print(f"{name:16s} {desc}")
    elif args.what == "runtimes":
        for name in list_runtimes():
            runtime = get_runtime(name)
            why = runtime.missing()
            print(f"{name:14s} {runtime.description}" + (f" [not usable here: {why}]" if why else ""))
    else:
        for name, desc in describe_sparsity_types().items():
            print(f"{name:14s} {desc}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.config is None and args.uniform is None:
        raise UserError("give --config FILE or --uniform TYPE:RATE (e.g. --uniform filter:0.5).")
    config = PruneConfig.from_yaml(args.config) if args.config else None
    if config is None and not args.model:
        raise UserError("--model is required with --uniform.")
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) <= 0:
            raise UserError(f"--input-shape '{args.input_shape}' is not C,H,W (e.g. 3,224,224).")
    if config is not None and args.model and args.model != config.model:
        raise UserError(f"--model {args.model} differs from the config's model '{config.model}'; drop --model "
                        f"(the config names the model) or use a config for {args.model}.")
    device = resolve_device(args.device)
    latency = LatencySettings(batch_size=args.batch_size, dtype=args.dtype, channels_last=_on(args.channels_last),
                              fold_bn=_on(args.fold_bn), steady_memory=_on(args.steady_memory), threads=args.threads,
                              repeats=args.repeats, runtime=args.runtime)
    r = run_bench(args.model or config.model, dataset=args.dataset, checkpoint=args.checkpoint, config=config,
                  uniform=args.uniform, device=device, latency=latency, input_shape=shape,
                  num_classes=args.num_classes, channel_multiple=args.channel_multiple)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0

    console = Console()
    d, c = r["dense"], r["compacted"]
    how = r["settings"]
    torch_layout = get_runtime(latency.runtime).torch_layout  # ONNX Runtime picks its own layout
    layout = "channels-last, " if how["channels_last"] else "NCHW, " if torch_layout else ""
    layout += "BatchNorm folded, " if how["fold_bn"] else ""
    layout += "steady memory, " if how["steady_memory"] else ""
    multiple = how["channel_multiple"]
    rounding = f"kept channels in multiples of {multiple}" if multiple > 1 else "exact rates"
    console.print(f"[bold]{r['model']}[/bold] input {'x'.join(map(str, r['input_shape']))} ({r['input_from']}), "
                  f"batch {latency.batch_size}, "
                  f"{latency.dtype}, {layout}{rounding}, {d['latency']['device']}, {how['runtime_detail']}")
    for label, lat, macs, params in (("dense    ", d["latency"], d["macs_dense"], d["params"]),
                                     ("compacted", c["latency"], c["macs"], c["params_compact"])):
        console.print(f"  {label}  {lat['median_ms']:.3f} ms (p90 {lat['p90_ms']:.3f}, spread {lat['spread']:.0%})   "
                      f"MACs {macs:,}   params {params:,}")
    console.print(f"  speedup {r['speedup']:.2f}x   MAC ratio {r['mac_ratio']:.2f}x   param ratio {r['param_ratio']:.2f}x   "
                  f"outputs equal the pruned model's (max difference {r['max_abs_diff']:.2g})")
    if r["unchanged"]:
        console.print(f"  no layer changed form (no channel removed, every kernel measured fastest as dense): the "
                      f"deployed model is the dense one; the {r['measured_speedup']:.2f}x measured is noise")
    if r["slower_than_dense"]:
        console.print("  [red]the compacted model is slower than dense on this device: do not deploy this config[/red]")
    table = Table()
    for col in ("layer", "type", "rate", "sparsity", "shape before", "shape after", "kernel", "MACs"):
        table.add_column(col, overflow="fold")
    for layer in r["layers"]:
        table.add_row(layer["name"], layer["type"], "-" if layer["rate"] is None else f"{layer['rate']:.2f}",
                      f"{layer['sparsity']:.2f}",
                      "×".join(map(str, layer["weight_shape"])), "×".join(map(str, layer["weight_shape_after"])),
                      layer["kernel"], f"{layer['macs']:,}")
    console.print(table)
    for note in r["notes"]:
        console.print(f"  note: {note}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    given = {k for k in ("model", "dataset", "budget", "budget_mode", "latency_batch", "dtype", "sampler", "seed",
                         "space", "device", "trials", "channel_multiple", "channels_last", "fold_bn", "steady_memory",
                         "trial_method", "rungs", "short_rung", "epoch_budget")
             if getattr(args, k) is not None}
    if any(v is not None for v in (args.admm_iters, args.admm_epochs, args.retrain_epochs, args.rho)):
        given.add("admm")
    admm = SEARCH_ADMM.replace(iters=args.admm_iters, epochs=args.admm_epochs, retrain_epochs=args.retrain_epochs,
                               rho=args.rho)
    if args.runtime is not None:
        given.add("runtime")
    settings = SearchSettings(
        budget=parse_budget(args.budget) if args.budget is not None else 0.02, trials=args.trials, device=args.device,
        latency_batch=args.latency_batch, channels_last=_on(args.channels_last), fold_bn=_on(args.fold_bn),
        steady_memory=_on(args.steady_memory),
        channel_multiple=args.channel_multiple or AUTO, threads=args.threads,
        study_name=args.study_name, storage=args.storage, resume=args.resume, space=args.space, admm=admm,
        min_speedup=args.min_speedup, runs_dir=args.runs_dir, stale_after=args.stale_after,
        checkpoint=args.checkpoint, data_dir=args.data_dir,
        abandon_drop=parse_budget(args.abandon_drop) if args.abandon_drop is not None else None, given=given,
    )
    settings = replace(settings, **{k: getattr(args, k) for k in ("model", "dataset", "budget_mode", "dtype", "sampler",
                                                                   "seed", "trial_method", "rungs", "short_rung",
                                                                   "epoch_budget", "runtime")
                                    if getattr(args, k) is not None})
    reporter = _reporter(args)
    callbacks = _search_callbacks(args, reporter)

    def _stop(signum, frame):  # noqa: ANN001, ANN202 - SIGTERM/SIGHUP end the trial as Ctrl-C does
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    result = run_search(settings, reporter=reporter, callbacks=callbacks)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_summary(result)
        for c in callbacks:  # the MLflow mirror says how to look at the runs
            ui_hint = getattr(c, "tracker", None) and getattr(c.tracker, "ui_hint", None)
            hint = ui_hint(result.record.meta.name) if ui_hint else None
            if hint:
                print(hint)
    return 130 if result.interrupted else 0


def _search_callbacks(args: argparse.Namespace, reporter: Any) -> list[Any]:  # noqa: ANN401
    """The search's side effects: the MLflow mirror (which writes the study's figures and
    report too), or with --no-tracking the figures and report alone."""
    return mirror_callbacks(tracking=not args.no_tracking, tracking_uri=args.tracking_uri, runs_dir=args.runs_dir,
                            reporter=reporter)


def cmd_report(args: argparse.Namespace) -> int:
    from autoprune.report import write_report

    url = args.storage or default_storage(args.runs_dir)
    study = load_autoprune_study(args.study, url)
    record = study_record(study, url)
    best = record.best_feasible()
    chosen_yaml = best_config_yaml(record, best) if best is not None and not best.is_dense else None
    out = Path(args.out) if args.out else Path(args.runs_dir) / args.study.replace("/", "-") / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    path = write_report(record, out, study=study, chosen=best, chosen_yaml=chosen_yaml)
    print(f"report: {path}  ({len(record.trials)} trials, {len(record.front)} on the Pareto front)")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Mirror every trial of a study from its Optuna storage into MLflow: runs that are missing
    are made, runs already there are brought up to date (never duplicated)."""
    from autoprune.tracking import Tracker

    url = args.storage or default_storage(args.runs_dir)
    study = load_autoprune_study(args.study, url)
    record = study_record(study, url)
    problems: list[str] = []
    tracker = Tracker(args.tracking_uri or f"sqlite:///{args.runs_dir}/mlflow.db", warn=problems.append)
    folder = Path(args.runs_dir) / record.meta.name.replace("/", "-")
    tracker.sync_study(record, lambda t: trial_config_yaml(record, t), study=study, figures=not args.no_figures,
                       out_dir=folder if not args.no_figures else None)
    if problems:
        raise UserError(f"could not bring MLflow level with study '{args.study}': {problems[0].split(';')[0]}; "
                        f"check that the tracking server is up, then run autoprune sync again.")
    print(f"synced study {record.meta.name}: {len(record.trials)} trials in MLflow at {tracker.tracking_uri}")
    hint = tracker.ui_hint(record.meta.name)
    if hint:
        print(hint)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    check_writable(args.out, what="--out")
    r = write_trial_config(args.study, args.storage or default_storage(args.runs_dir), trial=args.trial,
                           pick=args.pick, out=args.out)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    m = r.get("metrics") or {}
    speed = f", {m['speedup']:.2f}x faster" if m.get("speedup") else ""
    acc = f", validation {100 * m['val_accuracy']:.1f}%" if m.get("val_accuracy") is not None else ""
    print(f"trial {r['trial']} of study {r['study']} ({r['pick']}{speed}{acc}) -> {r['out']}")
    print(f"next: autoprune prune --config {r['out']} --admm-epochs 2 --retrain-epochs 10 --out runs/deploy/{r['study']}")
    return 0


COMMANDS = {"train": cmd_train, "layers": cmd_layers, "prune": cmd_prune, "bench": cmd_bench, "search": cmd_search, "export": cmd_export, "report": cmd_report,
            "sync": cmd_sync,
            "list": cmd_list}


def _reporter(args: argparse.Namespace):  # noqa: ANN202

    return Reporter() if getattr(args, "json", False) and not sys.stderr.isatty() else RichReporter()


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, of the parser and its commands, that takes one value."""
    out: set[str] = set()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                out |= _value_options(sub)
        elif action.option_strings and action.nargs is None and action.const is None:
            out.update(action.option_strings)
    return out


def _join_negative_values(argv: list[str], value_options: set[str]) -> list[str]:
    """``--budget -1%`` as ``--budget=-1%``: argparse takes a value that starts with '-' (and is
    not a plain number) for an option and answers with its usage; joined, it reaches the
    option's own check and its one-line message."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in value_options and nxt is not None and nxt.startswith("-") and len(nxt) > 1 \
                and not nxt.startswith("--") and nxt not in value_options:
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_values(argv, _value_options(parser)))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `autoprune layers --json | head`: the reader is gone; end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
