"""Does the runtime a search measures in change what it picks? (issue 24)

The same search (``autoprune search --budget 2%`` on the embedded digits default, with the
same cached baseline) is run twice, measuring latency in ``torch`` and in ``onnxruntime``
(``--runtime``); each pick is exported (``autoprune export``) and both picks are then timed
beside dense in both runtimes (``autoprune bench --config``, ``--rounds`` times each, the
runtimes alternating), so each runtime's figure for each pick comes from one process and
one machine state. Writes ``benchmarks/results/runtime_picks.{json,md}``::

    .venv/bin/python benchmarks/runtime_picks.py [--model digits-cnn] [--rounds 3] [--runtimes torch onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def autoprune(cwd: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "autoprune.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout) if "--json" in args else {}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--rounds", type=int, default=3, help="bench runs per pick and runtime")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="digits-cnn", help="a model of the digits default (digits-cnn, lenet5, ...)")
    ap.add_argument("--out", default=None, help="results path stem (default: results/runtime_picks_MODEL)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out: dict = {"model": args.model, "runtimes": args.runtimes, "searches": {}, "benches": {}, "batch": args.batch,
                 "machine": {"cpu": _cpu(), "cpus": len(os.sched_getaffinity(0)),
                             "threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory(prefix="autoprune-runtime-picks-") as tmp:
        cwd = Path(tmp)
        for rt in args.runtimes:
            s0 = time.perf_counter()
            found = autoprune(cwd, "search", "--model", args.model, "--budget", "2%", "--runtime", rt, "--latency-batch", str(args.batch),
                              "--no-tracking", "--json")
            best = found["best_feasible"]
            if best is None or best.get("summary") == "dense":
                out["searches"][rt] = {"best": None, "seconds": time.perf_counter() - s0}
                continue
            config = cwd / f"{rt}.yaml"
            autoprune(cwd, "export", "--study", found["meta"]["name"], "--out", str(config))
            out["searches"][rt] = {"study": found["meta"]["name"], "best_trial": best["number"],
                                   "summary": best["summary"], "accuracy": best["score"],
                                   "search_speedup": (best.get("remeasured") or {}).get("speedup") or best["speedup"],
                                   "targets": best["targets"], "seconds": time.perf_counter() - s0,
                                   "config": config.read_text()}
        picks = [rt for rt in args.runtimes if out["searches"][rt].get("best_trial") is not None]
        for _ in range(args.rounds):
            for pick in picks:
                for rt in args.runtimes:
                    r = autoprune(cwd, "bench", "--config", str(cwd / f"{pick}.yaml"), "--runtime", rt,
                                  "--batch-size", str(args.batch), "--device", "cpu", "--json")
                    out["benches"].setdefault(f"{pick}|{rt}", []).append(
                        {"speedup": r["speedup"], "dense_ms": r["dense"]["latency"]["median_ms"],
                         "compacted_ms": r["compacted"]["latency"]["median_ms"], "mac_ratio": r["mac_ratio"],
                         "kernels": sorted({layer["kernel"] for layer in r["layers"]}),
                         "runtime_detail": r["settings"]["runtime_detail"]})
    out["wall_seconds"] = time.perf_counter() - t0
    out["same_pick"] = len({json.dumps(out["searches"][p]["targets"], sort_keys=True) for p in picks}) == 1
    stem = Path(args.out or RESULTS / f"runtime_picks_{args.model}")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    return out


def markdown(out: dict) -> str:
    rts = out["runtimes"]
    lines = [f"# The pick of a search per measurement runtime ({out['model']}, `autoprune search --budget 2%`)", "",
             f"Machine: {out['machine']}. Batch {out['batch']}; {out['wall_seconds'] / 60:.1f} min in all. Each "
             "pick timed beside dense by `autoprune bench --config` in each runtime, "
             f"{len(next(iter(out['benches'].values()), []))} runs each (median of the runs; min-max in brackets).", "",
             "| searched in | its pick | val. accuracy | search's speedup | " + " | ".join(
                 f"speedup in {rt}" for rt in rts) + " |", "|---|---|---|---|" + "---|" * len(rts)]
    for pick, s in out["searches"].items():
        if s.get("best_trial") is None:
            lines.append(f"| {pick} | none within the budget | | |" + " |" * len(rts))
            continue
        cells = []
        for rt in rts:
            xs = [b["speedup"] for b in out["benches"].get(f"{pick}|{rt}", [])]
            cells.append(f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})" if xs else "-")
        lines.append(f"| {pick} | trial {s['best_trial']}: {s['summary']} | {100 * s['accuracy']:.1f}% | "
                     f"{s['search_speedup']:.2f}x | " + " | ".join(cells) + " |")
    picks = [s for s in out["searches"].values() if s.get("best_trial") is not None]
    lines += ["", f"The {len(picks)} searches picked " + ("the same configuration." if out["same_pick"] else
                                                           "different configurations."), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
