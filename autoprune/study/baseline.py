"""The study's dense baseline: its checkpoint, accuracy, MACs and latency, measured once per study.

Every trial is scored against it (the accuracy budget, the speedup), and it is stored in
the study's :class:`~autoprune.study.records.StudyMeta` when the study is created. The
latency is measured at the study's deployment batch: ``--latency-batch``, or the smallest
batch from 32 up at which the dense model takes at least 10 ms.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from autoprune.checkpoint import Checkpoint
from autoprune.config import PruneConfig
from autoprune.data import DatasetSplits
from autoprune.dense import checkpoint_for
from autoprune.groups import ChannelGraph
from autoprune.latency import LatencySettings, check_dtype
from autoprune.progress import Reporter
from autoprune.runtimes import measure_latency
from autoprune.stats import layer_stats, model_counts
from autoprune.task import Task

AUTO_BATCHES = (32, 64, 128, 256, 512, 1024)
AUTO_MIN_MS = 10.0


class MeasuredLike(Protocol):
    """How latency is measured: what :class:`~autoprune.study.SearchSettings` asks and a
    study's :class:`~autoprune.study.records.StudyMeta` stores."""

    dtype: str
    channels_last: bool
    fold_bn: bool
    steady_memory: bool
    threads: int | None
    runtime: str


def latency_settings(batch: int, how: MeasuredLike) -> LatencySettings:
    """The search's latency measurement at ``batch`` (30 repeats, at least half a second or
    ``$AUTOPRUNE_TIMING_SECONDS``: :func:`autoprune.latency.default_min_seconds`)."""
    return LatencySettings(batch_size=batch, dtype=how.dtype, channels_last=how.channels_last, fold_bn=how.fold_bn,
                           steady_memory=how.steady_memory, threads=how.threads, warmup=5, repeats=30,
                           runtime=how.runtime)


def choose_latency_batch(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                         how: MeasuredLike) -> int:
    """The smallest batch from 32 up at which the dense model takes ≥ 10 ms: compute, not
    per-call overhead, dominates there, as it does when serving batches."""
    for b in AUTO_BATCHES:
        quick = dataclasses.replace(latency_settings(b, how), warmup=2, repeats=5, min_seconds=0.05)
        if measure_latency(model, shape, device=device, settings=quick).median_ms >= AUTO_MIN_MS:
            return b
    return AUTO_BATCHES[-1]


def dense_checkpoint(model: str, dataset: str, *, checkpoint: str | None, data_dir: str | None, seed: int,
                     runs_dir: str, splits: DatasetSplits, device: torch.device,
                     reporter: Reporter) -> tuple[Checkpoint, Path]:
    """Load (or train once and cache under ``runs_dir``) the dense baseline."""
    cfg = PruneConfig(model=model, dataset=dataset, layers={}, checkpoint=checkpoint, data_dir=data_dir, seed=seed)
    t0 = time.perf_counter()
    ckpt, path, trained = checkpoint_for(cfg, splits.name, device=device, reporter=reporter, runs_dir=runs_dir)
    if trained:
        reporter.log(f"dense {model} trained {ckpt.epochs} epochs on {len(splits.train):,} images in "
                     f"{time.perf_counter() - t0:.0f} s; cached in {path} (the next search of it starts from there)")
    return ckpt, path


def measure_dense(task: Task, device: torch.device, how: MeasuredLike, latency_batch: int | None,
                  graph: ChannelGraph, reporter: Reporter, *, label: str) -> dict[str, Any]:
    """The dense model's validation and test score, counts and latency: the ``dense_*``
    fields of :class:`~autoprune.study.records.StudyMeta` (and its batch and device).
    ``label`` names the model and data in the line logged (``digits-cnn on digits``)."""
    check_dtype(how.dtype, device)
    model = task.dense().to(device)
    acc = task.dense_score(device)
    test_acc = task.test_score(model, device)
    shape = task.input_shape
    batch = latency_batch or choose_latency_batch(task.dense(), shape, device, how)
    lat = measure_latency(task.dense(), shape, device=device, settings=latency_settings(batch, how))
    counts = model_counts(model, layer_stats(model, graph))
    fmt = (lambda v: f"{100 * v:.2f}%") if task.metric == "accuracy" else (lambda v: f"{v:.4g}")
    test = "" if test_acc is None else f", test {fmt(test_acc)}"
    reporter.log(f"dense {label}: validation {task.metric} {fmt(acc)}{test}, "
                 f"{lat.median_ms:.3g} ms per batch of {batch} on {lat.device}"
                 + ("" if how.runtime == "torch" else f" in {how.runtime}"))
    return {"dense_accuracy": acc, "dense_test_accuracy": test_acc, "dense_latency_ms": lat.median_ms,
            "dense_latency_p90_ms": lat.p90_ms, "dense_macs": float(counts["macs"]),
            "dense_params": float(counts["params"]), "latency_batch": batch, "device_description": lat.device}
