"""Benchmark suite: measured speedup against MAC reduction for uniform pruning configs.

Writes benchmarks/results/suite.md and suite.json (with the machine described). Not a
test: timings are noisy and machine-specific. Run:

    .venv/bin/python benchmarks/suite.py [--device cpu|cuda] [--quick]

Each row: a model pruned uniformly (every conv but the first and the output layer) to a
sparsity type and rate by magnitude projection, compacted by autoprune (channel removal
plus the per-layer kernel choice), and timed against the dense model.
"""

from __future__ import annotations

import argparse
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
CONFIGS = ["filter:0.3", "filter:0.5", "filter:0.7", "shape:0.5", "shape:0.8", "shape:0.93"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--models", default=None, help="comma-separated subset")
    ap.add_argument("--out", default=str(ROOT / "results" / "suite"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    threads = os.cpu_count() if device.type == "cpu" else None
    rows = []
    models = [m for m in MODELS if args.models is None or m[0] in args.models.split(",")]
    cache = ROOT / "results" / f"latency_cache_{device.type}.json"
    for name, shape, batch in models:
        for spec in CONFIGS:
            lat = LatencySettings(batch_size=batch, threads=threads, warmup=1 if args.quick else 3,
                                  repeats=3 if args.quick else (5 if "vgg" in name else 10), min_seconds=0.0)
            t0 = time.time()
            r = run_bench(name, uniform=spec, device=device, latency=lat, input_shape=shape, num_classes=1000
                          if name.startswith("tv:") else 10, cache_path=cache)
            kernels = sorted({row["kernel"] for row in r["layers"] if row["type"] != "dense"})
            rows.append({
                "model": name, "config": spec, "batch": batch, "input": "x".join(map(str, shape)),
                "dense_ms": r["dense"]["latency"]["median_ms"], "compact_ms": r["compacted"]["latency"]["median_ms"],
                "speedup": r["speedup"], "mac_ratio": r["mac_ratio"], "param_ratio": r["param_ratio"],
                "speedup_over_mac_ratio": r["speedup"] / r["mac_ratio"], "kernels": kernels,
                "slower_than_dense": r["slower_than_dense"],
            })
            print(f"{name:16s} {spec:11s} dense {rows[-1]['dense_ms']:9.2f} ms  compact {rows[-1]['compact_ms']:9.2f} ms  "
                  f"speedup {r['speedup']:5.2f}x  MACs {r['mac_ratio']:5.2f}x  kernels {kernels}  ({time.time()-t0:.0f}s)",
                  flush=True)
    machine = {
        "device": device_description(device), "cores": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [f"# Benchmark: measured speedup vs MAC reduction ({machine['device']})", "",
             f"{machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}, {machine['date']}. "
             "Uniform pruning of every conv but the first and the output layer; magnitude projection; "
             "latency = median of repeats, fp32, inference mode.", "",
             "| model | config | batch | dense ms | compacted ms | speedup | MAC ratio | speedup / MAC ratio | kernels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['config']} | {r['batch']} | {r['dense_ms']:.2f} | {r['compact_ms']:.2f} | "
                     f"{r['speedup']:.2f}x{' (SLOWER)' if r['slower_than_dense'] else ''} | {r['mac_ratio']:.2f}x | "
                     f"{r['speedup_over_mac_ratio']:.2f} | {', '.join(r['kernels'])} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
