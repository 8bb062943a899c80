"""Stage profile: where a compacted model's time goes, stage by stage, against the dense model.

The suite (``benchmarks/suite.py``) gives one speedup per model; this script splits it
over the model's top-level stages (for ``tv:resnet18``: the stem conv, its ReLU and
max-pool, ``layer1``..``layer4``, the head) so a speedup below the MAC ratio can be traced
to the stages that fall short. Writes benchmarks/results/stage_profile.md and .json (with
the machine described). Not a test: timings are noisy and machine-specific. Run:

    .venv/bin/python benchmarks/stage_profile.py [--model tv:resnet18] [--uniform filter:0.5 filter:0.7]
        [--batch 32] [--rounds 8] [--device cpu|cuda]

Both models are built as ``autoprune bench --uniform`` builds them (magnitude projection,
``--channel-multiple auto``, compaction with the per-layer kernel choice) and timed in the
deployed form (:func:`autoprune.latency.prepare_for_timing`: BatchNorm folded,
channels-last, steady memory on CPU). The whole forward is timed without hooks by
:func:`autoprune.latency.compare_latency`; then each stage is timed by forward hooks on the
model's top-level children, in interleaved rounds of three calls of each model, a stage's
figure being the median over all calls. MACs
per stage are those of the built models (per sample), so "GMAC/s" is the throughput each
stage reaches at the batch size.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from autoprune.admm import apply_masks  # noqa: E402
from autoprune.bench import parse_uniform, uniform_targets  # noqa: E402
from autoprune.compact import compact_model  # noqa: E402
from autoprune.device import channel_block, resolve_channel_multiple, resolve_device  # noqa: E402
from autoprune.groups import ChannelGraph  # noqa: E402
from autoprune.latency import (  # noqa: E402
    LatencySettings,
    compare_latency,
    device_description,
    prepare_for_timing,
)
from autoprune.models import create_model  # noqa: E402
from autoprune.projection import Projector  # noqa: E402
from autoprune.stats import layer_stats  # noqa: E402


def stage_macs(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """MACs per sample of each top-level child (conv and linear layers)."""
    out: dict[str, int] = {}
    for s in layer_stats(model, graph):
        out[s.name.split(".")[0]] = out.get(s.name.split(".")[0], 0) + s.macs
    return out


class StageTimer:
    """Forward hooks on a model's top-level children that record each child's wall time."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device, self.times, self._t0 = device, {}, {}
        self.handles = []
        for name, child in model.named_children():
            self.handles.append(child.register_forward_pre_hook(lambda m, i, n=name: self._start(n)))
            self.handles.append(child.register_forward_hook(lambda m, i, o, n=name: self._stop(n)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, name: str) -> None:
        self._sync()
        self._t0[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self._sync()
        self.times.setdefault(name, []).append((time.perf_counter() - self._t0[name]) * 1e3)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def build(model_name: str, spec: str, shape: tuple[int, int, int], device: torch.device,
          settings: LatencySettings) -> tuple[nn.Module, nn.Module, dict, dict, int]:
    """The dense model and its compacted copy (as ``bench --uniform`` builds them), with MACs per stage."""
    torch.manual_seed(0)
    classes = 1000 if model_name.startswith("tv:") else 10
    model = create_model(model_name, in_channels=shape[0], num_classes=classes, image_size=shape[1:]).eval()
    example = torch.randn(1, *shape)
    graph = ChannelGraph(model, example)
    targets = uniform_targets(graph, parse_uniform(spec))
    multiple = resolve_channel_multiple("auto", device, settings.dtype)
    masked = copy.deepcopy(model)
    projector = Projector(masked, graph, targets, channel_multiple=multiple)
    apply_masks(masked, projector.hard_masks())
    compacted = compact_model(masked, projector, example, device=device, latency=settings).model
    return model, compacted, stage_macs(model, graph), stage_macs(masked, projector.graph), multiple


def profile(models: dict[str, nn.Module], shape: tuple, device: torch.device, settings: LatencySettings,
            rounds: int) -> dict[str, dict]:
    """Per model: median ms of the whole forward (:func:`compare_latency`, no hooks) and of
    each top-level stage (hooked calls, in interleaved rounds of three calls per model)."""
    whole_settings = dataclasses.replace(settings, repeats=3 * rounds)
    whole = compare_latency(models, shape, device=device, settings=whole_settings, rounds=rounds)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    prepared = {k: prepare_for_timing(m, shape, device=device, settings=settings) for k, m in models.items()}
    x = torch.randn(settings.batch_size, *shape, device=device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for m in prepared.values():
            for _ in range(settings.warmup):
                m(x)
        timers = {k: StageTimer(m, device) for k, m in prepared.items()}
        for _ in range(rounds):
            for m in prepared.values():
                for _ in range(3):
                    m(x)
    for t in timers.values():
        t.remove()
    return {k: {"whole_ms": whole[k].median_ms,
                "stages_ms": {n: statistics.median(v) for n, v in timers[k].times.items()}} for k in prepared}


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def stage_rows(timed: dict, macs_dense: dict, macs_pruned: dict, batch: int) -> list[dict]:
    """One row per stage: times, speedup, MAC ratio and the throughput each model reaches."""
    rows = []
    whole = timed["compacted"]["whole_ms"]
    for name, d_ms in timed["dense"]["stages_ms"].items():
        c_ms = timed["compacted"]["stages_ms"].get(name, float("nan"))
        md, mc = macs_dense.get(name, 0), macs_pruned.get(name, 0)
        rows.append({
            "stage": name, "dense_ms": d_ms, "compact_ms": c_ms, "speedup": d_ms / c_ms,
            "mac_ratio": md / mc if mc else None,
            "speedup_over_mac_ratio": d_ms / c_ms / (md / mc) if mc else None,
            "dense_gmacs": md * batch / d_ms / 1e6 if md else None,
            "compact_gmacs": mc * batch / c_ms / 1e6 if mc else None,
            "share_of_compacted": c_ms / whole,
        })
    return rows


def markdown(model: str, batch: int, machine: dict, results: list[dict]) -> str:
    lines = [f"# Stage profile: {model}, batch {batch} ({machine['device']})", "",
             f"{machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}, "
             f"{machine['date']}, {machine['minutes']} minutes. Written by `benchmarks/stage_profile.py`: "
             "uniform pruning as `autoprune bench --uniform` does it (kept channels in multiples of the "
             "device's channel block), both models timed as deployed (BatchNorm folded, channels-last, "
             "steady memory on CPU), each top-level stage timed by forward hooks, medians over interleaved "
             "rounds. MACs per stage are the built models'; GMAC/s is the throughput each stage reaches.", ""]
    for r in results:
        lines += [f"## {r['config']} (x{r['channel_multiple']}): {r['speedup']:.2f}x of a "
                  f"{r['mac_ratio']:.2f}x MAC ratio ({r['speedup_over_mac_ratio']:.2f}); dense "
                  f"{r['dense_ms']:.1f} ms, compacted {r['compact_ms']:.1f} ms", "",
                  "| stage | dense ms | compacted ms | share of compacted | speedup | MAC ratio "
                  "| speedup / MAC ratio | dense GMAC/s | compacted GMAC/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in r["stages"]:
            lines.append(f"| {s['stage']} | {s['dense_ms']:.2f} | {s['compact_ms']:.2f} | "
                         f"{s['share_of_compacted']:.0%} | {s['speedup']:.2f}x | "
                         f"{_fmt(s['mac_ratio'], '.2f')} | "
                         f"{_fmt(s['speedup_over_mac_ratio'], '.2f')} | {_fmt(s['dense_gmacs'], '.0f')} | "
                         f"{_fmt(s['compact_gmacs'], '.0f')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tv:resnet18")
    ap.add_argument("--uniform", nargs="+", default=["filter:0.5", "filter:0.7"])
    ap.add_argument("--input-shape", default="3,224,224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "results" / "stage_profile"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    threads = os.cpu_count() if device.type == "cpu" else None
    settings = LatencySettings(batch_size=args.batch, threads=threads)
    t_start = time.time()
    results = []
    for spec in args.uniform:
        dense, compacted, macs_dense, macs_pruned, multiple = build(args.model, spec, shape, device, settings)
        timed = profile({"dense": dense, "compacted": compacted}, shape, device, settings, args.rounds)
        d_ms, c_ms = timed["dense"]["whole_ms"], timed["compacted"]["whole_ms"]
        mac_ratio = sum(macs_dense.values()) / sum(macs_pruned.values())
        row = {"config": spec, "channel_multiple": multiple, "dense_ms": d_ms, "compact_ms": c_ms,
               "speedup": d_ms / c_ms, "mac_ratio": mac_ratio,
               "speedup_over_mac_ratio": d_ms / c_ms / mac_ratio,
               "stages": stage_rows(timed, macs_dense, macs_pruned, args.batch)}
        results.append(row)
        print(f"{args.model} {spec} x{multiple}: dense {d_ms:.1f} ms, compacted {c_ms:.1f} ms, "
              f"{row['speedup']:.2f}x of {mac_ratio:.2f}x MACs ({row['speedup_over_mac_ratio']:.2f})",
              flush=True)
        for s in row["stages"]:
            print(f"  {s['stage']:10s} {s['dense_ms']:8.2f} {s['compact_ms']:7.2f} ms  {s['speedup']:5.2f}x"
                  + (f" of {s['mac_ratio']:5.2f}x" if s["mac_ratio"] else ""), flush=True)
    machine = {"device": device_description(device), "cores": os.cpu_count(), "threads": threads,
               "torch": torch.__version__, "python": platform.python_version(),
               "platform": platform.platform(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "channel_block": channel_block(device, "fp32"), "date": time.strftime("%Y-%m-%d"),
               "minutes": round((time.time() - t_start) / 60, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "model": args.model, "batch": args.batch, "input_shape": list(shape),
         "rows": results}, indent=2))
    out.with_suffix(".md").write_text(markdown(args.model, args.batch, machine, results))
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
