"""A runtime's channel block, measured in that runtime rather than assumed from torch's.

``--channel-multiple auto`` rounds the channels a pruned group keeps to the block its
device's conv kernels work in (:func:`autoprune.projection.rounded_keep`): a conv pays for
every block it touches, so 20 channels can cost twice 16. For the ``torch`` runtime the block
is :func:`autoprune.device.channel_block` (the CPU's vector width; measured in
``benchmarks/results/channel_steps.md``). Another runtime brings its own kernels and layouts
(ONNX Runtime's NCHWc blocking, OpenVINO's plugins, inductor's lowering), so its block is
measured the first time it is asked for: one 3x3 conv with as many channels in as out, at
8, 12, ..., 68 channels (28x28, batch 8), timed side by side in the runtime; the block is the
period of the steps in those times (:func:`block_from_times`). The result is cached per
runtime version, device, CPU capability, dtype and thread count in
``$XDG_CACHE_HOME/autoprune/channel-blocks.json`` (default ``~/.cache/autoprune``), which
:func:`measured_block` reads before it measures.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import write_text_atomic
from autoprune.latency import LatencySettings, compare_calls, device_description

__all__ = ["COUNTS", "BlockMeasurement", "block_from_times", "cache_file", "measure_block", "measured_block"]

#: channel counts (in = out) the conv is timed at: steps of 4 show blocks of 8, 16, 32 and 64
COUNTS: tuple[int, ...] = tuple(range(8, 72, 4))
#: a step this many times the typical relative step is a block boundary
JUMP = 2.0
#: ... and at least this elasticity (smooth growth of a C-to-C conv is 2)
MIN_JUMP = 3.0
CANDIDATES = (8, 16, 32, 64)
_SIDE, _BATCH = 28, 8


@dataclass(frozen=True)
class BlockMeasurement:
    """A runtime's channel block and the times it was read from (ms per batch by channel count)."""

    block: int
    times_ms: dict[int, float] = field(default_factory=dict)
    key: str = ""
    measured_at: str = ""

    def describe(self) -> str:
        steps = " ".join(f"{c}:{t:.3g}" for c, t in sorted(self.times_ms.items()))
        return f"channel block {self.block} (3x3 conv ms by channels: {steps})"


def block_from_times(times: Mapping[int, float], *, jump: float = JUMP,
                     candidates: tuple[int, ...] = CANDIDATES) -> int:
    """The channel block that ``times`` (ms by channel count, on a regular grid) step by; 1 if none.

    A step from one count to the next is a *jump* when its elasticity (relative time added per
    relative channel added) is more than ``jump`` times the typical one (the lower quartile: a
    block of 8 on a grid of 4 makes half the steps jumps) and more than :data:`MIN_JUMP` (a
    C-to-C conv's work grows as C squared: elasticity 2 is smooth growth).
    The block is the smallest candidate ``b`` such that at least two thirds of the counts that
    are multiples of ``b`` jump to the next count, and at least two thirds of the jumps are at
    multiples of ``b`` (a single noisy step does not make a staircase), with two multiples of
    ``b`` in range at least. With no jumps the times
    grow smoothly: exact channel counts (1).

    Example:
        >>> block_from_times({8: 1.0, 12: 1.1, 16: 1.2, 20: 2.4, 24: 2.5, 28: 2.6, 32: 2.7, 36: 4.0, 40: 4.1})
        16
        >>> block_from_times({8: 1.0, 12: 1.5, 16: 2.0, 20: 2.5, 24: 3.0})
        1
    """
    counts = sorted(times)
    if len(counts) < 3:
        raise ValueError(f"need times at three channel counts at least, got {counts}")
    rel = {c: (times[n] - times[c]) / max(times[c], 1e-12) * c / (n - c) for c, n in zip(counts, counts[1:])}
    typical = statistics.quantiles(rel.values(), n=4)[0]  # the lower quartile: half the steps may jump
    jumps = {c for c, r in rel.items() if r > max(jump * typical, MIN_JUMP)}
    if not jumps:
        return 1
    for b in sorted(candidates):
        multiples = [c for c in rel if c % b == 0]
        if len(multiples) < 2:  # one step cannot show a period
            continue
        hit = sum(c in jumps for c in multiples)
        if hit >= 2 / 3 * len(multiples) and sum(c % b == 0 for c in jumps) >= 2 / 3 * len(jumps):
            return b
    return 1


def _conv(c: int) -> nn.Module:
    torch.manual_seed(c)
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()).eval()


def measure_block(runtime: str, device: torch.device, settings: LatencySettings,
                  counts: tuple[int, ...] = COUNTS, *, side: int = _SIDE, batch: int = _BATCH) -> BlockMeasurement:
    """Time the conv of every count in ``counts`` in ``runtime``, all side by side
    (interleaved rounds), and read the block off the times."""
    from autoprune.runtimes import get_runtime  # the registry imports this module's package

    rt = get_runtime(runtime)
    s = LatencySettings(batch_size=batch, dtype=settings.dtype, channels_last=settings.channels_last,
                        fold_bn=settings.fold_bn, steady_memory=settings.steady_memory, threads=settings.threads,
                        warmup=3, repeats=15, min_seconds=0.05, runtime=rt.name)
    prepared = {c: rt.prepare(_conv(c), (c, side, side), device=device, settings=s) for c in counts}
    res = compare_calls({str(c): p.run for c, p in prepared.items()}, device=device, settings=s,
                        cuda_events=all(p.cuda_events for p in prepared.values()))
    times = {c: res[str(c)].median_ms for c in counts}
    return BlockMeasurement(block_from_times(times), times, measured_at=time.strftime("%Y-%m-%d %H:%M"))


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoprune" / "channel-blocks.json"


def _key(runtime: str, version: str, device: torch.device, settings: LatencySettings) -> str:
    threads = settings.threads or torch.get_num_threads()
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else "cuda"
    return (f"{runtime} {version} | {device_description(device)} | {capability} | {settings.dtype} | "
            f"{threads} threads")


def measured_block(runtime: str, device: torch.device, settings: LatencySettings, *,
                   measure: Callable[..., BlockMeasurement] | None = None,
                   log: Callable[[str], None] | None = None) -> BlockMeasurement:
    """The block of ``runtime`` on ``device``: from the cache, else measured and cached."""
    from autoprune.runtimes import get_runtime

    key = _key(runtime, get_runtime(runtime).version(), torch.device(device), settings)
    path = cache_file()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and isinstance(cached.get("block"), int):
        return BlockMeasurement(cached["block"], {int(c): t for c, t in cached.get("times_ms", {}).items()}, key,
                                cached.get("measured_at", ""))
    if log is not None:
        log(f"measuring the channel block of {runtime} on this device (once; cached in {path})")
    found = (measure or measure_block)(runtime, torch.device(device), settings)
    found = BlockMeasurement(found.block, found.times_ms, key, found.measured_at)
    try:
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[key] = {"block": found.block, "times_ms": {str(c): t for c, t in found.times_ms.items()},
                      "measured_at": found.measured_at}
        write_text_atomic(path, json.dumps(table, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache only means measuring again next time
    return found
