"""The embedded default demo, measured: ``autoprune search --budget 2%`` with nothing else.

Runs the exact command in a fresh folder (so the dense baseline is trained too, and no
latency cache is reused), times it, and writes the figures to
``benchmarks/results/search_demo.{json,md}``:

    .venv/bin/python benchmarks/search_demo.py [--runs 1] [--extra "--trials 20"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="autoprune-demo-") as tmp:
        cmd = [sys.executable, "-m", "autoprune.cli", "search", "--budget", "2%", *extra, "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout)
    best = summary["best_feasible"]
    return {
        "wall_seconds": wall,
        "trials": summary["trials"],
        "dense_val_accuracy": summary["meta"]["dense_accuracy"],
        "dense_latency_ms": summary["meta"]["dense_latency_ms"],
        "latency_batch": summary["meta"]["latency_batch"],
        "device": summary["meta"]["device_description"],
        "best_feasible": None if best is None else {
            "trial": best["number"], "speedup": best["speedup"], "val_accuracy": best["accuracy"],
            "accuracy_drop": best["accuracy_drop"], "latency_ms": best["latency_ms"], "summary": best["summary"],
        },
        "front": [{"trial": t["number"], "accuracy": t["accuracy"], "speedup": t["speedup"], "feasible": t["feasible"],
                   "summary": t["summary"]} for t in summary["front"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--extra", default="", help="extra arguments for autoprune search")
    args = ap.parse_args()
    runs = [one_run(shlex.split(args.extra)) for _ in range(args.runs)]
    out = {"command": "autoprune search --budget 2% " + args.extra, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_demo.json").write_text(json.dumps(out, indent=2))
    lines = [f"# `{out['command'].strip()}` (fresh folder, baseline training included)", "",
             f"{runs[0]['device']}, {out['cpus']} CPUs", "",
             "| run | wall s | trials complete / stopped early / failed | dense val % | latency batch | "
             "best feasible speedup | its val % (drop) |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        b, t = r["best_feasible"], r["trials"]
        best = "none" if b is None else f"{b['speedup']:.2f}x (trial {b['trial']}: {b['summary']})"
        acc = "-" if b is None else f"{100 * b['val_accuracy']:.1f} ({100 * b['accuracy_drop']:+.1f})"
        lines.append(f"| {i + 1} | {r['wall_seconds']:.0f} | {t['complete']} / {t['pruned']} / {t['failed']} | "
                     f"{100 * r['dense_val_accuracy']:.1f} | {r['latency_batch']} | {best} | {acc} |")
    (RESULTS / "search_demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
