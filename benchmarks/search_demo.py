"""The embedded default demo, measured: ``autoprune search --budget 2%`` with nothing else.

Runs the exact command in a fresh folder (so the dense baseline is trained too, and no
latency cache is reused), times it, and writes the figures to
``benchmarks/results/search_demo.{json,md}``:

    .venv/bin/python benchmarks/search_demo.py [--runs 1] [--extra "--trials 20"]
        [--versus "--trial-method auto"] [--name search_demo]

``--versus ARGS`` adds a second side: each run is the plain command, then the command with
ARGS added, alternating (the same machine state for both), and the table gives each side's
runs and medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
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
            "trial": best["number"], "speedup": _final(best), "search_speedup": best["speedup"], "val_accuracy": best["score"],
            "accuracy_drop": best["score_drop"], "latency_ms": best["latency_ms"], "summary": best["summary"],
        },
        "best_uniform": None if summary.get("best_uniform") is None else {
            "trial": summary["best_uniform"]["number"], "speedup": _final(summary["best_uniform"]),
            "val_accuracy": summary["best_uniform"]["score"], "summary": summary["best_uniform"]["summary"]},
        "epochs": summary.get("epochs"),
        "front": [{"trial": t["number"], "accuracy": t["score"], "speedup": t["speedup"], "feasible": t["feasible"],
                   "summary": t["summary"]} for t in summary["front"]],
    }


def _final(trial: dict) -> float:
    """The speedup the summary reports: the end-of-search side-by-side re-measurement where made."""
    return (trial.get("remeasured") or {}).get("speedup") or trial["speedup"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--extra", default="", help="extra arguments for autoprune search")
    ap.add_argument("--versus", default=None, help="a second side: these arguments added (runs alternate)")
    ap.add_argument("--name", default="search_demo", help="results file stem")
    args = ap.parse_args()
    sides = [args.extra] + ([f"{args.extra} {args.versus}".strip()] if args.versus is not None else [])
    runs = []
    for i in range(args.runs):
        for side in sides:
            runs.append({**one_run(shlex.split(side)), "side": side})
            print(f"run {i + 1}, side '{side}': {runs[-1]['wall_seconds']:.0f} s", flush=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"command": "autoprune search --budget 2% " + args.extra, "sides": sides,
           "machine": platform.processor() or platform.machine(),
           "cpus": cpus, "threads": os.environ.get("OMP_NUM_THREADS"), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    lines = [f"# `{out['command'].strip()}` (fresh folder, baseline training included)", "",
             f"{runs[0]['device']}, {out['cpus']} CPU(s) usable" +
             (f", OMP_NUM_THREADS={out['threads']}" if out["threads"] else ""), "",
             "Speedups are the end-of-search side-by-side re-measurements; *best uniform* is the fastest of the "
             "search's own uniform ladder within the budget; epochs count every rung of every trial."
             + (" The sides alternate run by run." if len(sides) > 1 else ""), "",
             "| run | " + ("arguments | " if len(sides) > 1 else "") + "wall s | trials complete / stopped early / "
             "failed | dense val % | latency batch | best feasible speedup | its val % (drop) | best uniform | "
             "best / uniform | epochs spent / budget |",
             "|---|" + ("---|" if len(sides) > 1 else "") + "---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        b, t = r["best_feasible"], r["trials"]
        best = "none" if b is None else f"{b['speedup']:.2f}x (trial {b['trial']}: {b['summary']})"
        acc = "-" if b is None else f"{100 * b['val_accuracy']:.1f} ({100 * b['accuracy_drop']:+.1f})"
        u, ep = r["best_uniform"], r["epochs"] or {}
        uni = "none" if u is None else f"{u['speedup']:.2f}x ({u['summary']})"
        ratio = "-" if b is None or u is None else f"{b['speedup'] / u['speedup']:.2f}"
        spent = "-" if ep.get("spent") is None else f"{ep['spent']:.1f} / {ep.get('budget')}"
        side = f"`{r['side'] or '(none)'}` | " if len(sides) > 1 else ""
        lines.append(f"| {i // len(sides) + 1} | {side}{r['wall_seconds']:.0f} | {t['complete']} / {t['pruned']} / "
                     f"{t['failed']} | {100 * r['dense_val_accuracy']:.1f} | {r['latency_batch']} | {best} | {acc} | "
                     f"{uni} | {ratio} | {spent} |")
    if len(sides) > 1:
        lines += ["", "| arguments | runs | median wall s | median best speedup | median best / uniform |",
                  "|---|---|---|---|---|"]
        for side in sides:
            rs = [r for r in runs if r["side"] == side]
            best = [r["best_feasible"]["speedup"] for r in rs if r["best_feasible"]]
            ratio = [r["best_feasible"]["speedup"] / r["best_uniform"]["speedup"] for r in rs
                     if r["best_feasible"] and r["best_uniform"]]
            med = (lambda xs: f"{statistics.median(xs):.2f}" if xs else "-")  # noqa: E731
            lines.append(f"| `{side or '(none)'}` | {len(rs)} | {statistics.median(r['wall_seconds'] for r in rs):.0f}"
                         f" | {med(best)}x | {med(ratio)} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
