"""The ``autoprune`` command: parse, call the library, print. Nothing else lives here.

Errors the user can fix print one line (``autoprune: error: ...``) and exit with status 2.

It imports only the public API (``autoprune``'s ``__all__`` and its public subpackages'; see
``autoprune/__init__.py``) and its own parser and printing (``cli_parser``, ``cli_print``):
``tests/core_tests/test_cli_imports.py`` checks it. The library is imported here at the top; only the MLflow and plotly layers
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

from autoprune import (
    PruneConfig,
    input_label,
    list_layers,
    mirror_callbacks,
    prune_to_folder,
    resolve_device,
    run_bench,
    train_baseline,
    write_trial_config,
)
from autoprune.cli_parser import build_parser, prepare_argv
from autoprune.cli_print import print_bench, print_prune_summary
from autoprune.data import describe_datasets
from autoprune.errors import UserError
from autoprune.models import describe_models, list_torchvision_models
from autoprune.progress import Reporter, RichReporter
from autoprune.runtimes import LatencySettings, get_runtime, list_runtimes
from autoprune.sparsity import describe_sparsity_types
from autoprune.study import (
    SEARCH_ADMM,
    SearchSettings,
    best_config_yaml,
    default_storage,
    load_autoprune_study,
    parse_budget,
    print_summary,
    run_search,
    study_record,
    trial_config_yaml,
)

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 1  # the reader of stdout went away (`| head`): Python's and rich's status for it

def _on(flag: bool | None) -> bool:
    """A --x/--no-x flag that defaults to on."""
    return True if flag is None else flag

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
    print_prune_summary(summary)
    return 0

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

    print_bench(r, latency)
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
        channel_multiple=args.channel_multiple or "auto", threads=args.threads,
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

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(prepare_argv(parser, argv))
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
