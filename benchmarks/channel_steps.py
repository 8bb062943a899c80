"""Channel-count benchmark: how a conv's time steps with its channel count on a device.

The evidence behind ``--channel-multiple auto`` (:func:`autoprune.device.channel_block`):
oneDNN's CPU convs work on blocks of channels the width of a vector register (16 fp32
lanes with AVX-512, 8 with AVX2), so a conv with 17 channels costs about as much as one
with 32. Writes benchmarks/results/channel_steps.md and .json (with the machine
described). Not a test: timings are noisy and machine-specific. Run:

    .venv/bin/python benchmarks/channel_steps.py [--device cpu|cuda] [--dtype fp32 bf16]
        [--batch 32] [--hw 56] [--low 8] [--high 80] [--step 4] [--repeats 15]

Each row is one 3x3 conv, C in and C out channels at HxW, batch B, timed by
:func:`autoprune.latency.measure_latency` as models are (channels-last, inference mode,
steady memory on CPU): the median of ``--repeats`` calls after warm-up, and the MAC
throughput.

``--runtimes torch onnxruntime openvino torch-compile`` instead measures every runtime as
``--channel-multiple auto`` does for it (:func:`autoprune.runtimes.blocks.measure_block`: the
same conv at 8..68 channels, all side by side in the runtime, 28x28 and batch 8 unless
``--hw`` / ``--batch`` say otherwise) and writes ``channel_steps_runtimes.md`` / ``.json``:
the times and the block read off them, beside torch's assumed block.
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
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.device import channel_block, resolve_device  # noqa: E402
from autoprune.latency import DTYPES, LatencySettings, check_dtype, device_description, measure_latency  # noqa: E402


def time_conv(c: int, *, hw: int, device: torch.device, settings: LatencySettings) -> float:
    """Median ms of one C-to-C 3x3 conv, timed as autoprune times models (channels-last, steady memory)."""
    return measure_latency(nn.Conv2d(c, c, 3, padding=1), (c, hw, hw), device=device, settings=settings).median_ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hw", type=int, default=56)
    ap.add_argument("--low", type=int, default=8)
    ap.add_argument("--high", type=int, default=80)
    ap.add_argument("--step", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="results stem (default: results/channel_steps[_runtimes])")
    ap.add_argument("--runtimes", nargs="+", default=None, help="measure these runtimes' blocks instead")
    args = ap.parse_args()
    if args.runtimes:
        return runtimes_main(args)
    args.out = args.out or str(ROOT / "results" / "channel_steps")
    device = resolve_device(args.device)
    channels = list(range(args.low, args.high + 1, args.step))
    tables = {}
    for name in args.dtype:
        check_dtype(name, device)
        settings = LatencySettings(batch_size=args.batch, dtype=name, fold_bn=False, threads=args.threads,
                                   warmup=args.warmup, repeats=args.repeats, min_seconds=0.0)
        rows = []
        for c in channels:
            ms = time_conv(c, hw=args.hw, device=device, settings=settings)
            gmacs = args.batch * args.hw * args.hw * c * c * 9 / 1e9
            rows.append({"channels": c, "median_ms": ms, "gmac_per_s": gmacs / ms * 1e3})
            print(f"{name} C={c:3d}: {ms:8.3f} ms  {gmacs / ms * 1e3:7.1f} GMAC/s", flush=True)
        tables[name] = {"block": channel_block(device, name), "rows": rows}
    machine = {
        "device": device_description(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(), "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_end": os.getloadavg(),
    }
    settings = {"batch": args.batch, "hw": args.hw, "kernel": 3, "memory_format": "channels_last",
                "warmup": args.warmup, "repeats": args.repeats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "settings": settings, "tables": tables},
                                                   indent=2))
    lines = [f"# Channel steps: one 3x3 conv's time against its channel count ({machine['device']})", "",
             f"{machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}, CPU capability "
             f"{machine['cpu_capability']}, {machine['date']}. Written by `benchmarks/channel_steps.py`.", "",
             f"C in and C out channels, {args.hw}x{args.hw}, batch {args.batch}, channels-last, inference mode, "
             "timed by `autoprune.latency.measure_latency`; "
             f"median of {args.repeats} calls. `--channel-multiple auto` rounds kept channels to the block "
             f"given under each dtype (`autoprune.device.channel_block`).", ""]
    names = list(tables)
    lines.append("| channels | " + " | ".join(f"{n} ms | {n} GMAC/s" for n in names) + " |")
    lines.append("|---|" + "---|---|" * len(names))
    for i, c in enumerate(channels):
        cells = []
        for n in names:
            r = tables[n]["rows"][i]
            cells += [f"{r['median_ms']:.2f}", f"{r['gmac_per_s']:.0f}"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Block used by `auto`: " + ", ".join(f"{n}: {tables[n]['block']}" for n in names) + ".")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def runtimes_main(args: argparse.Namespace) -> int:
    """Every runtime's block, measured as ``--channel-multiple auto`` measures it."""
    from autoprune.runtimes import get_runtime
    from autoprune.runtimes.blocks import COUNTS, block_from_times, measure_block

    device = resolve_device(args.device)
    hw = args.hw if args.hw != 56 else 28  # the rule's own shape unless asked
    batch = args.batch if args.batch != 32 else 8
    counts = tuple(range(args.low, args.high + 1, args.step)) if (args.low, args.high) != (8, 80) else COUNTS
    t0 = time.perf_counter()
    found = {}
    for name in args.runtimes:
        rt = get_runtime(name)
        why = rt.missing() or rt.unsupported(device, "fp32")
        if why:
            print(f"{name}: skipped ({why})", flush=True)
            continue
        t = time.perf_counter()
        m = measure_block(name, device, LatencySettings(threads=args.threads), counts, side=hw, batch=batch)
        found[name] = {"block": m.block, "times_ms": m.times_ms, "detail": rt.describe(device, LatencySettings(
            threads=args.threads)), "seconds": time.perf_counter() - t}
        print(f"{name}: block {m.block} ({time.perf_counter() - t:.0f} s) "
              + " ".join(f"{c}:{v:.3f}" for c, v in m.times_ms.items()), flush=True)
    machine = {"device": device_description(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cores": os.cpu_count(), "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_end": os.getloadavg(),
               "seconds": time.perf_counter() - t0}
    out = Path(args.out or ROOT / "results" / "channel_steps_runtimes")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "hw": hw, "batch": batch,
                                                    "torch_assumed_block": channel_block(device, "fp32"),
                                                    "runtimes": found}, indent=2))
    names = list(found)
    lines = [f"# Channel steps per runtime ({machine['device']})", "",
             f"{machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}, CPU capability "
             f"{machine['cpu_capability']}, {machine['date']}, {machine['seconds']:.0f} s; load average at the end "
             f"{machine['load_average_end'][0]:.2f}. Written by `benchmarks/channel_steps.py --runtimes "
             f"{' '.join(args.runtimes)}`.", "",
             f"One 3x3 conv + ReLU, C in and C out channels, {hw}x{hw}, batch {batch}, fp32: every count prepared "
             "by the runtime (exported, compiled) and all timed side by side in interleaved rounds "
             "(`autoprune.runtimes.blocks.measure_block`, what `--channel-multiple auto` runs the first time a "
             "runtime is used on a machine). ms per batch, median.", "",
             "| channels | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in counts:
        lines.append(f"| {c} | " + " | ".join(f"{found[n]['times_ms'][c]:.3f}" for n in names) + " |")
    lines += ["", "| runtime | block read off its steps | as timed |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {found[n]['block']} | {found[n]['detail']} |")
    lines += ["", f"torch's block assumed from the CPU's vector width (`autoprune.device.channel_block`): "
                  f"{channel_block(device, 'fp32')}; read off torch's own times here: "
                  + (f"{block_from_times(found['torch']['times_ms'])}." if "torch" in found else "not measured.")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
