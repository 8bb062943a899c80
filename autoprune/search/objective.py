"""One trial: suggest a configuration, measure its latency, prune it with ADMM, score it.

The order matters for cost. The compacted architecture depends only on the
configuration, so its latency is measured first (on the target device, at the study's
deployment batch, and cached by configuration): a configuration that is not faster
than dense stops there. ADMM then runs its short schedule from the dense weights; if
the accuracy right after the hard prune is so far below dense that retraining cannot
bring it back within the budget, the trial stops before retraining. Otherwise the
validation accuracy after masked retraining is the first objective, the measured
latency the second, and ``accuracy drop − budget`` the constraint (feasible when ≤ 0).

Optuna's pruners do not work in multi-objective studies, so these early stops are
ours: :class:`TrialStopped` carries the reason, and the study records the trial as
PRUNED with that reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config import AdmmSettings, LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.latency import LatencyCache, LatencySettings
from autoprune.progress import Reporter
from autoprune.search.records import CONSTRAINT, TARGETS_ATTR, TRIAL_ATTR, StudyMeta, TrialRecord
from autoprune.search.space import SearchSpace


class TrialStopped(Exception):
    """A trial that cannot pay off; the message says why."""


@dataclass
class SearchContext:
    """What every trial of one worker shares (built once per process)."""

    meta: StudyMeta
    space: SearchSpace
    splits: Any  # DatasetSplits
    checkpoint: Any  # Checkpoint: builds a fresh dense model per trial
    graph: ChannelGraph
    device: torch.device
    latency: LatencySettings
    cache: LatencyCache
    admm: AdmmSettings
    min_speedup: float
    abandon_drop: float | None  # absolute drop after the hard prune beyond which a trial stops (None: never)
    reporter: Reporter

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.splits.in_channels, *self.splits.image_size)

    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    @functools.cached_property
    def dense_fingerprint(self) -> str:
        """The dense architecture's fingerprint (computed once per worker)."""
        from autoprune.latency import architecture_fingerprint

        return architecture_fingerprint(self.checkpoint.build())


def config_key(targets: dict[str, LayerTarget], ctx: SearchContext) -> str:
    """A cache key for the latency of a configuration of this model on this device."""
    body = json.dumps({k: v.to_dict() for k, v in sorted(targets.items())}, sort_keys=True)
    if ctx.meta.channel_multiple != 1:  # rounding changes the architecture of the same targets
        body += f"|channel_multiple={ctx.meta.channel_multiple}"
    digest = hashlib.sha256(body.encode()).hexdigest()[:24]
    return "config:" + LatencyCache.key(f"{ctx.dense_fingerprint}/{digest}", ctx.device, ctx.input_shape, ctx.latency)


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


def measure_config_latency(targets: dict[str, LayerTarget], ctx: SearchContext) -> ConfigLatency:
    """Latency of the compacted model of ``targets`` against dense, measured on the device
    (from magnitude-projected dense weights: the architecture, and so the speed, does not
    depend on which weights survive). Cached by configuration."""
    from autoprune.admm import apply_masks
    from autoprune.compact import compact_model
    from autoprune.latency import compare_latency, latency_ratio
    from autoprune.projection import Projector

    key = config_key(targets, ctx)
    extra = ctx.cache.extra(key)
    if extra is not None and "ratio" in extra:
        return ConfigLatency(extra["ratio"], extra["ratio_p90"], extra["compact_ms"], extra["dense_ms"],
                             dict(extra.get("kernels", {})))
    masked = ctx.checkpoint.build()
    projector = Projector(masked, ctx.graph, targets, channel_multiple=ctx.meta.channel_multiple)
    apply_masks(masked, projector.hard_masks())
    result = compact_model(masked, projector, ctx.example(), device=ctx.device, latency=ctx.latency)
    timed = compare_latency({"dense": ctx.checkpoint.build(), "config": result.model}, ctx.input_shape,
                            device=ctx.device, settings=ctx.latency)
    d, c = timed["dense"], timed["config"]
    out = ConfigLatency(latency_ratio(c, d), c.p90_ms / d.median_ms, c.median_ms, d.median_ms,
                        {n: ch.form for n, ch in result.choices.items()})
    ctx.cache.put(key, c, extra=out.to_extra())
    return out


def _record(trial: Any, rec: TrialRecord) -> None:  # noqa: ANN401
    keep = {k: v for k, v in rec.to_dict().items()
            if k not in ("number", "state", "params", "targets", "stop_reason", "pareto")}
    trial.set_user_attr(TRIAL_ATTR, keep)


def run_trial(trial: Any, ctx: SearchContext) -> tuple[float, float]:  # noqa: ANN401 - optuna.Trial
    """Run one trial; returns (validation accuracy, latency ms) or raises :class:`TrialStopped`."""
    from autoprune import admm
    from autoprune.projection import Projector
    from autoprune.stats import layer_stats, model_counts
    from autoprune.train import evaluate, seed_everything

    meta = ctx.meta
    t0 = time.perf_counter()
    targets = ctx.space.suggest(trial)
    trial.set_user_attr(TARGETS_ATTR, {k: v.to_dict() for k, v in targets.items()})
    rec = TrialRecord(number=trial.number, state="RUNNING", targets={k: v.to_dict() for k, v in targets.items()})
    allowed = meta.allowed_drop()

    if not targets:  # the dense configuration: measured once per study
        rec.is_dense = True
        rec.accuracy, rec.accuracy_drop = meta.dense_accuracy, 0.0
        rec.latency_ms, rec.latency_p90_ms, rec.speedup = meta.dense_latency_ms, meta.dense_latency_p90_ms, 1.0
        rec.macs, rec.params_count, rec.sparsity = meta.dense_macs, meta.dense_params, 0.0
        rec.feasible, rec.seconds = True, time.perf_counter() - t0
        _record(trial, rec)
        trial.set_constraint(CONSTRAINT, -allowed)
        return meta.dense_accuracy, meta.dense_latency_ms

    # 1. latency of the compacted architecture, before any training
    lat = measure_config_latency(targets, ctx)
    rec.latency_ms, rec.latency_p90_ms = lat.ratio * meta.dense_latency_ms, lat.ratio_p90 * meta.dense_latency_ms
    rec.speedup = 1.0 / lat.ratio
    rec.kernels = lat.kernels
    _record(trial, rec)
    if rec.speedup < ctx.min_speedup:
        rec.seconds = time.perf_counter() - t0
        _record(trial, rec)
        raise TrialStopped(
            f"not faster than dense: {lat.compact_ms:.3g} ms vs {lat.dense_ms:.3g} ms dense, measured side by side "
            f"({rec.speedup:.2f}x, below the {ctx.min_speedup:g}x required)"
        )

    # 2. ADMM from the dense weights, stopping after the hard prune when it cannot recover
    model: nn.Module = ctx.checkpoint.build()
    projector = Projector(model, ctx.graph, targets, channel_multiple=meta.channel_multiple)

    def check(hard_acc: float) -> None:
        rec.hard_prune_accuracy = hard_acc
        drop = meta.dense_accuracy - hard_acc
        if ctx.abandon_drop is not None and drop > ctx.abandon_drop:
            rec.seconds = time.perf_counter() - t0
            _record(trial, rec)
            raise TrialStopped(
                f"accuracy after the hard prune is {100 * hard_acc:.1f}%, {100 * drop:.1f} points below dense: "
                f"beyond the {100 * ctx.abandon_drop:.1f}-point limit for recovering within the budget"
            )

    seed_everything(meta.seed)
    _, history = admm.prune(model, projector, ctx.splits.train, ctx.admm, method="admm", device=ctx.device,
                            seed=meta.seed, reporter=ctx.reporter, val_set=ctx.splits.val, on_hard_prune=check)
    acc = evaluate(model, ctx.splits.val, device=ctx.device)
    stats = layer_stats(model, ctx.graph, targets)
    counts = model_counts(model, stats)
    weights = sum(math.prod(s.weight_shape) for s in stats)
    zeros = sum(s.sparsity * math.prod(s.weight_shape) for s in stats)
    rec.accuracy = acc
    rec.accuracy_drop = meta.dense_accuracy - acc
    rec.macs, rec.params_count = float(counts["macs"]), float(counts["params_nonzero"])
    rec.sparsity = zeros / max(weights, 1)
    rec.residuals = [sum(it.residual.values()) / max(len(it.residual), 1) for it in history.iterations]
    rec.train_losses = [it.train_loss for it in history.iterations] + list(history.retrain_losses)
    rec.feasible = rec.accuracy_drop <= allowed + 1e-12
    rec.seconds = time.perf_counter() - t0
    _record(trial, rec)
    trial.set_constraint(CONSTRAINT, rec.accuracy_drop - allowed)
    return acc, rec.latency_ms

