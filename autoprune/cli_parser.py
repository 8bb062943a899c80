"""The ``autoprune`` command's parser: every command and option (:func:`build_parser`), and the
argv fix that lets an option take a negative value (:func:`prepare_argv`)."""

from __future__ import annotations

import argparse

from autoprune import __version__
from autoprune.runtimes import list_runtimes

__all__ = ["build_parser", "prepare_argv"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Find the per-layer pruning rates and sparsity types that make a CNN fastest on a device "
        "within an accuracy budget (StructADMM + Optuna + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_train_command, _layers_command, _prune_command, _bench_command, _search_command, _export_command,
                _report_command, _sync_command, _list_command):
        add(sub)
    return parser


def _train_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
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


def _layers_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("layers", help="list the prunable layers of a model and their channel couplings")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None, help="sets input channels, size and classes (default: the model's native "
                                                   "input, 3×224×224 for a torchvision model, else digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true")


def _prune_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("prune", help="prune a model with ADMM (or magnitude) from a YAML config")
    p.add_argument("--config", required=True, help="YAML config (model, dataset, checkpoint, layers, admm)")
    p.add_argument("--method", default="auto", choices=["auto", "admm", "magnitude", "gmp"],
                   help="admm, magnitude (one-shot) or gmp (gradual magnitude pruning); auto: the one "
                        "benchmarks/results/admm_vs_magnitude_fmnist.md shows best for the config's type, rate and "
                        "epochs (default: %(default)s)")
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


def _bench_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
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


def _search_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
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
    p.add_argument("--trial-method", default=None, choices=["magnitude", "admm", "gmp", "auto"],
                   help="how each trial prunes: auto (the default: per trial, the one "
                        "benchmarks/results/admm_vs_magnitude_fmnist.md shows best for its targets and schedule), "
                        "magnitude (one-shot, then all its epochs masked retraining), admm (ADMM, hard prune, "
                        "retraining) or gmp (gradual magnitude pruning)")
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


def _export_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("export", help="write the chosen config of a search study as YAML for 'autoprune prune --config'")
    p.add_argument("--study", required=True, help="the study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--trial", type=int, default=None, help="export this trial")
    g.add_argument("--pick", default="fastest", help="fastest (default: fastest within the budget), knee, most-accurate")
    p.add_argument("--out", default="best.yaml", help="YAML file to write (default: %(default)s)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")
    p.add_argument("--json", action="store_true")


def _report_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("report", help="write one self-contained HTML report of a search study")
    p.add_argument("--study", required=True, help="the study name (see runs/<study>/ or optuna-dashboard)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    p.add_argument("--out", default=None, help="HTML file (default: <runs-dir>/<study>/report.html)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")


def _sync_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("sync", help="bring MLflow level with a study's Optuna storage (after a tracking outage)")
    p.add_argument("--study", required=True, help="the study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///runs/optuna.db)")
    p.add_argument("--runs-dir", default="runs", help="where the default storage is (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    p.add_argument("--no-figures", action="store_true", help="skip the study's figures and report")


def _list_command(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - what add_subparsers returns
    p = sub.add_parser("list", help="list registered models, datasets, sparsity types or runtimes")
    p.add_argument("what", choices=["models", "datasets", "sparsity", "tv-models", "runtimes"])


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


def prepare_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with each negative option value joined to its option (``--budget=-1%``)."""
    return _join_negative_values(argv, _value_options(parser))
