"""Benchmark suite: measured speedup against MAC reduction for uniform pruning configs.

Writes benchmarks/results/suite.md and suite.json (with the machine described). Not a
test: timings are noisy and machine-specific. Run:

    .venv/bin/python benchmarks/suite.py [--device cpu|cuda] [--quick] [--models tv:resnet18,...]
        [--runtimes torch onnxruntime openvino torch-compile] [--configs filter:0.5,shape:0.8]

Each row: a model pruned uniformly (every conv but the first and the output layer) to a
sparsity type and rate by magnitude projection, compacted by autoprune (channel removal
plus the per-layer kernel choice), and timed against the dense model in interleaved
rounds. Both are timed as deployed (autoprune's defaults): channels-last, BatchNorm
folded into the convs, and on CPU an allocator that keeps freed memory. Filter rows run twice: with the exact rate (``--channel-multiple
1``), and with the kept channels rounded to the device's channel block
(``--channel-multiple auto``, the default of ``bench --uniform`` and ``search``: 16 on an
AVX-512 CPU, see ``benchmarks/results/channel_steps.md``); the MAC ratio is always that of
the model actually built. A second table takes
``tv:resnet18`` apart: the same filter configs timed in NCHW without folding (the
previous default), then with each change added.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.bench import run_bench  # noqa: E402
from autoprune.device import resolve_device  # noqa: E402
from autoprune.latency import LatencySettings, device_description  # noqa: E402

MODELS = [  # name, input shape, batch size
    ("tv:resnet18", (3, 224, 224), 32),
    ("tv:alexnet", (3, 224, 224), 32),
    ("tv:mobilenet_v2", (3, 224, 224), 32),
    ("tv:vgg16", (3, 224, 224), 8),
    ("resnet56", (3, 32, 32), 32),
]
# (uniform target, channel multiple)
CONFIGS = [("filter:0.3", 1), ("filter:0.3", "auto"), ("filter:0.5", 1), ("filter:0.5", "auto"), ("filter:0.7", 1),
           ("filter:0.7", "auto"), ("shape:0.5", 1), ("shape:0.8", 1), ("shape:0.93", 1)]
# tv:resnet18 taken apart: (label, channels_last, fold_bn, channel multiple, steady memory). The
# steady allocator cannot be undone in a process, so these rows run first, in this order.
ABLATION = [("NCHW, BN unfolded, exact rate, glibc's default allocator", False, False, 1, False),
            ("+ channels-last", True, False, 1, False),
            ("+ BN folded", True, True, 1, False),
            ("+ channel block (auto)", True, True, "auto", False),
            ("+ steady memory (all defaults)", True, True, "auto", True)]


def _row(name: str, shape: tuple, batch: int, spec: str, multiple: int | str, lat, device, cache) -> dict:  # noqa: ANN001
    t0 = time.time()
    t0_runtime = lat.runtime
    r = run_bench(name, uniform=spec, device=device, latency=lat, input_shape=shape,
                  num_classes=1000 if name.startswith("tv:") else 10, cache_path=cache, channel_multiple=multiple)
    kernels = sorted({row["kernel"] for row in r["layers"] if row["type"] != "dense"})
    multiple = r["settings"]["channel_multiple"]  # "auto" resolved
    kept = {row["name"]: row["weight_shape_after"][0] for row in r["layers"] if row["type"] != "dense"}
    row = {
        "model": name, "runtime": t0_runtime, "runtime_detail": r["settings"]["runtime_detail"], "config": spec,
        "channel_multiple": multiple, "kept_out_channels": kept, "batch": batch,
        "input": "x".join(map(str, shape)),
        "channels_last": lat.channels_last, "fold_bn": lat.fold_bn, "steady_memory": r["settings"]["steady_memory"],
        "dense_ms": r["dense"]["latency"]["median_ms"], "compact_ms": r["compacted"]["latency"]["median_ms"],
        "dense_spread": r["dense"]["latency"]["spread"], "compact_spread": r["compacted"]["latency"]["spread"],
        "speedup": r["speedup"], "measured_speedup": r["measured_speedup"], "unchanged": r["unchanged"],
        "mac_ratio": r["mac_ratio"], "param_ratio": r["param_ratio"],
        "speedup_over_mac_ratio": r["speedup"] / r["mac_ratio"], "kernels": kernels,
        "slower_than_dense": r["slower_than_dense"],
    }
    print(f"{name:16s} {t0_runtime:13s} {spec:11s} x{multiple} cl={int(lat.channels_last)} fold={int(lat.fold_bn)} "
          f"steady={int(row['steady_memory'])} "
          f"dense {row['dense_ms']:9.2f} ms  compact {row['compact_ms']:9.2f} ms  speedup {r['speedup']:5.2f}x  "
          f"MACs {r['mac_ratio']:5.2f}x  ratio {row['speedup_over_mac_ratio']:.2f}  kernels {kernels}  "
          f"({time.time() - t0:.0f}s)", flush=True)
    return row


def _speedup_cell(r: dict) -> str:
    if r["unchanged"]:
        return f"1.00x (unchanged; measured {r['measured_speedup']:.2f}x)"
    return f"{r['speedup']:.2f}x{' (SLOWER)' if r['slower_than_dense'] else ''}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--models", default=None, help="comma-separated subset")
    ap.add_argument("--no-ablation", action="store_true", help="skip the tv:resnet18 ablation table")
    ap.add_argument("--runtimes", nargs="+", default=["torch"],
                    help="where to time each config (autoprune.runtimes); the ablation table is torch's")
    ap.add_argument("--configs", default=None, help="comma-separated subset of the uniform targets, e.g. filter:0.5")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--out", default=str(ROOT / "results" / "suite"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    threads = (args.threads or os.cpu_count()) if device.type == "cpu" else None
    configs = [c for c in CONFIGS if args.configs is None or c[0] in args.configs.split(",")]
    models = [m for m in MODELS if args.models is None or m[0] in args.models.split(",")]
    cache = None  # every row measured afresh
    t_start = time.time()

    def settings(name: str, batch: int, runtime: str = "torch") -> LatencySettings:
        return LatencySettings(batch_size=batch, threads=threads, warmup=1 if args.quick else 3,
                               repeats=3 if args.quick else (6 if "vgg" in name else 12), min_seconds=0.0,
                               runtime=runtime)

    ablation = []
    if not args.no_ablation and (args.models is None or "tv:resnet18" in args.models.split(",")):
        name, shape, batch = MODELS[0]
        for label, cl, fold, multiple, steady in ABLATION:
            for spec in ("filter:0.3", "filter:0.5", "filter:0.7"):
                lat = dataclasses.replace(settings(name, batch), channels_last=cl, fold_bn=fold, steady_memory=steady)
                row = _row(name, shape, batch, spec, multiple, lat, device, cache)
                if device.type == "cpu" and row["steady_memory"] != steady:
                    raise SystemExit(f"ablation row '{label}' was measured with steady memory {row['steady_memory']}")
                ablation.append({"variant": label, **row})
    rows = [_row(name, shape, batch, spec, multiple, settings(name, batch, rt), device, cache)
            for name, shape, batch in models for spec, multiple in configs for rt in args.runtimes]
    machine = {
        "device": device_description(device), "cores": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": time.strftime("%Y-%m-%d"), "load_average_end": list(os.getloadavg()),
        "minutes": round((time.time() - t_start) / 60, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows, "ablation": ablation}, indent=2))
    lines = [f"# Benchmark: measured speedup vs MAC reduction ({machine['device']})", "",
             f"{machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}, {machine['date']}, "
             f"{machine['minutes']} minutes (load average at the end: "
             f"{', '.join(f'{v:.2f}' for v in machine['load_average_end'])}). Written by `benchmarks/suite.py`.", "",
             "Uniform pruning of every conv but the first and the output layer; magnitude projection; fp32, inference "
             "mode; dense and compacted timed side by side in interleaved rounds (the speedup is the median of "
             "the per-round ratios), both in channels-last with BatchNorm folded and, on CPU, with an allocator "
             "that keeps freed memory (the deployed form; `autoprune.latency.steady_allocator`). `xN`: kept channels rounded to multiples of N, the device's channel block "
             f"(`--channel-multiple auto`; CPU capability {machine['cpu_capability']}), where a layer has at least "
             "4N channels. The MAC ratio is the built "
             "model's. `unchanged`: nothing was removed and every kernel measured fastest as dense, so the deployed "
             "model is the dense one.", "",
             "Runtimes: " + "; ".join(sorted({f"`{r['runtime']}`: {r['runtime_detail']}" for r in rows})) + ".", "",
             "| model | config | runtime | batch | dense ms | compacted ms | speedup | MAC ratio | speedup / MAC ratio "
             "| kernels |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = r["config"] + (f" x{r['channel_multiple']}" if r["channel_multiple"] != 1 else "")
        lines.append(f"| {r['model']} | {cfg} | {r['runtime']} | {r['batch']} | {r['dense_ms']:.2f} | "
                     f"{r['compact_ms']:.2f} | "
                     f"{_speedup_cell(r)} | {r['mac_ratio']:.2f}x | {r['speedup_over_mac_ratio']:.2f} | "
                     f"{', '.join(r['kernels'])} |")
    if ablation:
        lines += ["", "## tv:resnet18, batch 32: what each change does", "",
                  "Measured first in the run, each change added in turn to the previous row's (the steady "
                  "allocator cannot be switched off once on in a process).", "",
                  "| config | measured as | dense ms | compacted ms | speedup | MAC ratio | speedup / MAC ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in ablation:
            lines.append(f"| {r['config']} | {r['variant']} | {r['dense_ms']:.2f} | {r['compact_ms']:.2f} | "
                         f"{_speedup_cell(r)} | {r['mac_ratio']:.2f}x | {r['speedup_over_mac_ratio']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
