"""The one prune sequence: graph, targets, projector, counts, prune, counts, on any :class:`Task`.

``autoprune prune`` (:func:`autoprune.pipeline.run_prune`, a
:class:`~autoprune.task.ClassifierTask`) and :func:`autoprune.prune` (a
:class:`~autoprune.task.FunctionTask` around the user's loop and metric) both call
:func:`prune_task`; what they add is only how they find the model and what they write.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune import admm
from autoprune.admm import PruneHistory
from autoprune.config import LayerTarget, Schedule, resolve_layer_targets
from autoprune.errors import UserError
from autoprune.groups import ChannelGraph
from autoprune.method_rule import AUTO, choose_method
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.stats import LayerStats, layer_stats, model_counts
from autoprune.task import Task

if TYPE_CHECKING:
    from autoprune.data import DatasetSplits
    from autoprune.saving import Deployable

__all__ = ["ModelScores", "PruneResult", "check_method", "prune_task", "resolve_targets"]


@dataclass(frozen=True)
class ModelScores:
    """Accuracy and size of one model (the dense baseline, or the masked pruned model):
    ``result.json``'s ``dense`` and ``pruned`` (:attr:`PruneResult.dense_scores`,
    :attr:`PruneResult.pruned_scores`).

    ``params_nonzero`` and ``macs`` count what remains once zero weights are skipped;
    ``macs_dense`` is the count without skipping them (:func:`autoprune.stats.model_counts`).
    """

    val_acc: float | None
    test_acc: float | None
    params: int
    params_nonzero: int
    macs_dense: int
    macs: int
    mac_reduction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    """A pruned model and how it got there.

    Attributes:
        model: The pruned model: the user's architecture with pruned weights at zero, a plain
            ``nn.Module`` (no hooks, no parametrizations, no extra attributes).
        masks: Parameter name -> bool tensor (True: kept).
        targets: Layer -> its sparsity type and rate.
        history: ADMM residuals per iteration, notes.
        dense_score: The metric of the dense model (None without ``evaluate``).
        score: The metric after pruning (None without ``evaluate``).
        metric: The metric's name.
        macs: Multiply-accumulates of the pruned model (zeros skipped) and of dense.
        example_inputs: The example batch (compaction and latency use its shape).
        method: ``admm``, ``magnitude`` or ``gmp`` (``auto`` resolved: :mod:`autoprune.method_rule`).
        dense_test_score, test_score: The metric on held-out test data, where the task has
            some (the CLI's classifier: its test split), else None.
        counts, dense_counts: Parameters and MACs (:func:`autoprune.stats.model_counts`).
        layers: Per pruned layer: what it keeps (:func:`autoprune.stats.layer_stats`).
        seconds: The time the prune itself took (ADMM or magnitude, retraining).

    What the CLI's prune (:func:`autoprune.prune_to_folder`) adds, None or empty elsewhere:

    Attributes:
        model_name, dataset, checkpoint: The registry model, its dataset and the dense
            checkpoint's path.
        device: Where it was pruned.
        schedule: The schedule it was pruned with.
        channel_multiple: Kept channels were rounded to multiples of this.
        splits: The dataset splits used.
        out_dir: The folder its outputs were written to (:func:`autoprune.pipeline.write_prune_outputs`).
        deploy: The deployable built from it (with its folder's report card).
        mlflow_run_id, tracked: The MLflow run the deployable was uploaded to, once the upload
            was tried (``tracked``; the run id is None where it failed).

    :meth:`to_dict` is ``result.json``.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    targets: dict[str, LayerTarget]
    history: PruneHistory
    dense_score: float | None
    score: float | None
    metric: str
    macs: int
    dense_macs: int
    example_inputs: torch.Tensor
    dense: nn.Module = field(repr=False)
    projector: Projector = field(repr=False)
    method: str = "admm"
    dense_test_score: float | None = None
    test_score: float | None = None
    counts: dict[str, Any] = field(default_factory=dict, repr=False)
    dense_counts: dict[str, Any] = field(default_factory=dict, repr=False)
    layers: list[LayerStats] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    model_name: str | None = None
    dataset: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    schedule: Schedule | None = None
    channel_multiple: int = 1
    splits: DatasetSplits | None = field(default=None, repr=False)
    out_dir: str | None = None
    deploy: Deployable | None = field(default=None, repr=False)
    mlflow_run_id: str | None = None
    tracked: bool = False

    @property
    def dense_scores(self) -> ModelScores:
        """The dense model's validation and test metric, parameters and MACs."""
        return ModelScores(val_acc=self.dense_score, test_acc=self.dense_test_score, **self.dense_counts)

    @property
    def pruned_scores(self) -> ModelScores:
        """The pruned (masked) model's validation and test metric, parameters and MACs."""
        return ModelScores(val_acc=self.score, test_acc=self.test_score, **self.counts)

    @property
    def val_drop(self) -> float | None:
        """The metric lost to pruning on validation data (accuracy: 0.02 is 2 points)."""
        return None if self.dense_score is None or self.score is None else self.dense_score - self.score

    @property
    def test_drop(self) -> float | None:
        """The metric lost on test data."""
        return None if self.dense_test_score is None or self.test_score is None else self.dense_test_score - self.test_score

    def to_dict(self) -> dict[str, Any]:
        """``result.json`` as plain data (the keys of autoprune 0.1). ``out_dir``, ``deploy`` and
        ``mlflow_run_id`` appear only once set (written, built, upload tried)."""
        out: dict[str, Any] = {
            "model": self.model_name, "dataset": self.dataset, "checkpoint": self.checkpoint, "method": self.method,
            "device": self.device, "admm": None if self.schedule is None else dict(self.schedule.__dict__),
            "channel_multiple": self.channel_multiple,
            "dense": self.dense_scores.to_dict(), "pruned": self.pruned_scores.to_dict(),
            "accuracy_drop": {"val": self.val_drop, "test": self.test_drop},
            "layers": [s.to_dict() for s in self.layers],
            "residuals": [asdict(it) for it in self.history.iterations],
            "retrain_losses": list(self.history.retrain_losses),
            "hard_prune_val_acc": self.history.hard_prune_val_acc,
            "notes": list(self.history.notes),
            "seconds": self.seconds,
        }
        if self.out_dir is not None:
            out["out_dir"] = self.out_dir
        if self.deploy is not None:
            out["deploy"] = self.deploy.to_dict(with_out_dir=True)
        if self.tracked:
            out["mlflow_run_id"] = self.mlflow_run_id
        return out


def check_method(method: str) -> str:
    """``method`` if it is a prune method or ``auto`` (:func:`autoprune.method_rule.choose_method`)."""
    if method not in (*admm.METHODS, AUTO):
        raise UserError(f"unknown method '{method}'; use one of: {', '.join((*admm.METHODS, AUTO))}.")
    return method


def _epochs(task: Task, settings: Schedule | None) -> float | None:
    """A prune's training in epochs, or None where the task's unit is not known to be the epoch."""
    return task.rule_epochs(settings)


def resolve_method(method: str, task: Task, targets: Mapping[str, LayerTarget], settings: Schedule | None,
                   reporter: Reporter) -> str:
    """``method``, or for ``auto`` the one the equal-epoch table shows best for ``targets`` and the
    schedule's total training among those ``task`` can run (printed with its reason)."""
    check_method(method)
    available = getattr(task, "methods", admm.METHODS)
    if method != AUTO:
        if method not in available:
            raise UserError(f"method '{method}' needs autoprune's built-in training loop; with your own train use "
                            f"one of: {', '.join(available)}.")
        return method
    choice = choose_method(targets, _epochs(task, settings), available)
    reporter.log(choice.reason)
    return choice.method


def resolve_targets(model: nn.Module, example: torch.Tensor, layers: Mapping[str, Any], *,
                    channel_multiple: int = 1, where: str = "config") -> tuple[ChannelGraph, Projector]:
    """The graph of ``model`` and the projector of ``layers`` (names or globs -> targets) on it;
    a pattern that matches nothing, a bad type or rate, or no layer pruned is a :class:`UserError`."""
    graph = ChannelGraph(model, example)
    targets = resolve_layer_targets(layers, list(graph.layers), where=where)
    if not targets:
        raise UserError("the config prunes no layer (every match is 'none').")
    return graph, Projector(model, graph, targets, channel_multiple=channel_multiple)


def prune_task(task: Task, layers: Mapping[str, Any], *, settings: Schedule | None, method: str,
               device: torch.device, seed: int, channel_multiple: int = 1, scored: bool = True,
               reporter: Reporter | None = None, where: str = "config") -> PruneResult:
    """Prune a copy of ``task``'s dense model to ``layers`` (ADMM or magnitude, hard prune,
    masked retraining through ``task.prune``) and measure it before and after.

    Args:
        settings: The schedule (None: the task's own, for a :class:`~autoprune.task.FunctionTask`).
        scored: Score the dense and the pruned model with the task's metric (and its test data).
        where: How a bad layer pattern is named in the error (``config``, ``config 'layers'``).
    """
    reporter = reporter or Reporter()
    check_method(method)
    work = task.dense()
    graph, projector = resolve_targets(work, task.example(), layers, channel_multiple=channel_multiple, where=where)
    for note in projector.notes:
        reporter.log(f"note: {note}")
    method = resolve_method(method, task, projector.targets, settings, reporter)
    dense_counts = model_counts(work, layer_stats(work, graph))
    dense = task.dense()
    dense_score = task.score(dense, device) if scored else None
    dense_test = task.test_score(dense, device) if scored else None
    dense.cpu()
    work.to(device)
    t0 = time.perf_counter()
    masks, history = task.prune(work, projector, settings, method=method, seed=seed, device=device, reporter=reporter)
    seconds = time.perf_counter() - t0
    score = task.score(work, device) if scored else None
    test = task.test_score(work, device) if scored else None
    stats = layer_stats(work, graph, projector.targets)
    counts = model_counts(work, stats)
    return PruneResult(model=work, masks=masks, targets=dict(projector.targets), history=history,
                       dense_score=dense_score, score=score, metric=task.metric, macs=int(counts["macs"]),
                       dense_macs=int(dense_counts["macs"]), example_inputs=task.example(), dense=dense,
                       projector=projector, method=method, dense_test_score=dense_test, test_score=test,
                       counts=counts, dense_counts=dense_counts, layers=stats, seconds=seconds, device=str(device),
                       schedule=settings, channel_multiple=channel_multiple)
