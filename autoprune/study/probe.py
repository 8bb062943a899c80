"""What a configuration costs, found before any training: its signature, MACs and latency.

The architecture of a pruned model, and so its speed, depends only on the configuration
(which channels are removed is a matter of weights; how many is not). A configuration can
therefore be measured on the device before anyone trains it: the search measures each
trial's latency first, and its sampler screens candidate moves by measured latency before
proposing one. Both go through :class:`ConfigProbe`, whose measurements are cached by the
configuration's *signature* (what the targets amount to after rounding and coupling; see
:meth:`autoprune.projection.Projector.signature`), so a configuration is timed once per
study and device however it was written. It compacts and times through the one "measure a
configuration" service (:func:`autoprune.measure.compact_masked`,
:func:`autoprune.measure.time_side_by_side`), without the output check of
:func:`~autoprune.measure.measure_pruned`: its models' weights do not matter.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from autoprune.admm import apply_masks
from autoprune.compact import CompactResult
from autoprune.config import LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.latency import (
    LatencyCache,
    LatencyResult,
    LatencySettings,
    architecture_fingerprint,
    latency_ratio,
    percentile,
)
from autoprune.measure import compact_masked, time_side_by_side
from autoprune.projection import Projector
from autoprune.stats import layer_stats, model_counts

if TYPE_CHECKING:
    from autoprune.study.objective import SearchContext


@dataclass
class ConfigLatency:
    """A configuration's latency, measured in interleaved rounds with the dense model.

    ``ratio`` (compacted / dense, the median of per-round ratios) is what drift of the machine
    leaves intact; ``latency_ms`` puts it on the study's scale: ratio x the study's dense
    latency, so that trials measured at different moments compare fairly.
    """

    ratio: float
    ratio_p90: float
    compact_ms: float  # raw median of this measurement
    dense_ms: float  # raw median of the dense model in the same rounds
    kernels: dict[str, str]

    def to_extra(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "ratio_p90": self.ratio_p90, "compact_ms": self.compact_ms,
                "dense_ms": self.dense_ms, "kernels": self.kernels}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ConfigLatency:
        return cls(extra["ratio"], extra["ratio_p90"], extra["compact_ms"], extra["dense_ms"],
                   dict(extra.get("kernels", {})))


@dataclass(frozen=True)
class RatioStats:
    """One model's latency over another's, from per-round ratios of one side-by-side timing."""

    median: float
    p10: float
    p90: float
    rounds: int

    @classmethod
    def of(cls, a: LatencyResult, b: LatencyResult) -> RatioStats:
        ratios = sorted(x / max(y, 1e-12) for x, y in zip(a.rounds_ms, b.rounds_ms))
        if not ratios:
            r = a.median_ms / max(b.median_ms, 1e-12)
            return cls(r, r, r, 0)
        return cls(latency_ratio(a, b), percentile(ratios, 0.1), percentile(ratios, 0.9), len(ratios))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90, "rounds": self.rounds}


class ConfigProbe:
    """Signature, MACs and measured latency of configurations of one dense model.

    Args:
        build: Builds a fresh dense model (the checkpoint's weights) on the CPU.
        graph: Its channel graph.
        channel_multiple: Kept channels are rounded to multiples of this (see
            :func:`autoprune.projection.rounded_keep`).
        device: Where latency is measured.
        latency: How it is measured (batch, dtype, layout, repeats).
        input_shape: One sample's shape, ``(C, H, W)``.
        cache: Latency results by signature; None keeps nothing between processes.
    """

    def __init__(self, build: Callable[[], torch.nn.Module], graph: ChannelGraph, *, channel_multiple: int,
                 device: torch.device, latency: LatencySettings, input_shape: tuple[int, ...],
                 cache: LatencyCache | None = None,
                 screener: Callable[[torch.nn.Module], tuple[float, float]] | None = None) -> None:
        self.build = build
        self.graph = graph
        self.channel_multiple = int(channel_multiple)
        self.device = device
        self.settings = latency
        self.input_shape = tuple(input_shape)
        self.cache = cache if cache is not None else LatencyCache(None)
        self.screener = screener
        self._macs: dict[str, float] = {}
        self._screens: dict[str, float] = {}

    @classmethod
    def for_search(cls, ctx: SearchContext) -> ConfigProbe:
        def screener(model: torch.nn.Module) -> tuple[float, float]:
            spent = ctx.task.recalibrate(model, ctx.device, ctx.fidelity, ctx.admm, ctx.meta.seed)
            return ctx.task.screen_score(model, ctx.device, ctx.fidelity), spent

        return cls(ctx.task.dense, ctx.graph, channel_multiple=ctx.meta.channel_multiple, device=ctx.device,
                   latency=ctx.latency, input_shape=ctx.input_shape, cache=ctx.cache, screener=screener)

    def screen(self, targets: dict[str, LayerTarget]) -> tuple[float, float]:
        """The screen rung's score of a configuration (the hard prune of the dense weights, BatchNorm
        recomputed, the validation subset; :mod:`autoprune.study.rungs`) and what it cost in
        training epochs (0 when it was already known in this process)."""
        if self.screener is None:
            raise RuntimeError("this probe has no screen (it was made without a task)")
        sig = self.signature(targets)
        if sig in self._screens:
            return self._screens[sig], 0.0
        model = self.build().to(self.device)
        if targets:
            apply_masks(model, self.projector(targets, model).hard_masks())
        score, spent = self.screener(model)
        self._screens[sig] = score
        return score, spent

    @functools.cached_property
    def _shape_model(self) -> torch.nn.Module:
        """A dense model kept for projections (its weights are never changed)."""
        return self.build()

    @functools.cached_property
    def dense_fingerprint(self) -> str:
        return architecture_fingerprint(self.build())

    def projector(self, targets: dict[str, LayerTarget], model: torch.nn.Module | None = None) -> Projector:
        return Projector(model if model is not None else self._shape_model, self.graph, targets,
                         channel_multiple=self.channel_multiple)

    def signature(self, targets: dict[str, LayerTarget]) -> str:
        """What the targets amount to (see :meth:`autoprune.projection.Projector.signature`)."""
        return self.projector(targets).signature() if targets else "dense"

    def macs(self, targets: dict[str, LayerTarget]) -> float:
        """Effective MACs per sample of the configuration (magnitude masks of the dense weights)."""
        sig = self.signature(targets)
        if sig not in self._macs:
            model = copy.deepcopy(self._shape_model)
            if targets:
                apply_masks(model, self.projector(targets, model).hard_masks())
            self._macs[sig] = float(model_counts(model, layer_stats(model, self.graph, targets))["macs"])
        return self._macs[sig]

    def cache_key(self, targets: dict[str, LayerTarget]) -> str:
        """The latency cache key: this model's dense architecture, the signature, the device
        and the measurement settings."""
        digest = hashlib.sha256(self.signature(targets).encode()).hexdigest()[:24]
        return "config:" + LatencyCache.key(f"{self.dense_fingerprint}/{digest}", self.device, self.input_shape,
                                            self.settings)

    def cached_latency(self, targets: dict[str, LayerTarget]) -> ConfigLatency | None:
        extra = self.cache.extra(self.cache_key(targets))
        return ConfigLatency.from_extra(extra) if extra is not None and "ratio" in extra else None

    def _compact(self, targets: dict[str, LayerTarget]) -> CompactResult:
        masked = self.build()
        projector = self.projector(targets, masked)
        apply_masks(masked, projector.hard_masks())
        return compact_masked(masked, projector, self.input_shape, device=self.device, latency=self.settings)

    def compacted(self, targets: dict[str, LayerTarget]) -> torch.nn.Module:
        """The deployable model of ``targets`` from magnitude-projected dense weights."""
        return self._compact(targets).model if targets else self.build()

    def compare(self, configs: list[dict[str, LayerTarget]], *, rounds: int | None = None) -> list[RatioStats]:
        """Latency of each configuration relative to the first, timed side by side in one set of
        interleaved rounds (so that the machine's drift cancels); the first gets ratio 1.
        ``rounds`` (default: the study's) of three calls each."""
        return self.compare_models([self.compacted(t) for t in configs], rounds=rounds)

    def compare_models(self, models: list[torch.nn.Module], *, rounds: int | None = None) -> list[RatioStats]:
        """:meth:`compare` for models built elsewhere (another pruner's, for instance)."""
        settings = self.settings
        if rounds is not None:
            settings = dataclasses.replace(settings, repeats=3 * rounds, min_seconds=settings.min_seconds * rounds / 10)
        named = {f"m{i}": m for i, m in enumerate(models)}
        timed = time_side_by_side(named, self.input_shape, device=self.device, latency=settings, rounds=rounds)
        return [RatioStats.of(timed[k], timed["m0"]) for k in named]

    def latency_ratio(self, targets: dict[str, LayerTarget]) -> float:
        """Compacted over dense latency (see :meth:`latency`); 1 for the dense configuration."""
        return self.latency(targets).ratio if targets else 1.0

    def latency(self, targets: dict[str, LayerTarget]) -> ConfigLatency:
        """Latency of the compacted model of ``targets`` against dense, measured side by side on
        the device (from magnitude-projected dense weights: the architecture, and so the speed,
        does not depend on which weights survive). Cached by signature."""
        cached = self.cached_latency(targets)
        if cached is not None:
            return cached
        result = self._compact(targets)
        timed = time_side_by_side({"dense": self.build(), "config": result.model}, self.input_shape,
                                  device=self.device, latency=self.settings)
        d, c = timed["dense"], timed["config"]
        out = ConfigLatency(latency_ratio(c, d), c.p90_ms / d.median_ms, c.median_ms, d.median_ms,
                            {n: ch.form for n, ch in result.choices.items()})
        self.cache.put(self.cache_key(targets), c, extra=out.to_extra())
        return out
