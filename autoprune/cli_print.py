"""What the ``autoprune`` command prints for ``prune`` and ``bench`` (rich tables and lines)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from autoprune import PruneResult
from autoprune.runtimes import LatencySettings, get_runtime

__all__ = ["print_bench", "print_prune_summary"]


def print_prune_summary(s: PruneResult) -> None:
    """``autoprune prune``'s summary (of what :func:`autoprune.prune_to_folder` returned)."""
    console = Console()
    d, p = s.dense_scores, s.pruned_scores
    console.print(f"[bold]{s.method}[/bold] pruning of {s.model_name} on {s.dataset} ({s.device}, {s.seconds:.1f} s)")
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
    if s.history.iterations:
        last = s.history.iterations[-1].residual
        console.print(f"  ADMM residual ||W-Z||/||W|| after the last iteration: max {max(last.values()):.3g}")
    for note in s.history.notes:
        console.print(f"  note: {note}")
    r = s.deploy.report if s.deploy is not None else None
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


def print_bench(r: dict[str, Any], latency: LatencySettings) -> None:
    """``autoprune bench``'s table (``r``: what :func:`autoprune.bench.run_bench` returned)."""
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
