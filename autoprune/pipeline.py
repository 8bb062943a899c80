"""Library entry points behind the CLI: train a baseline, list layers, prune from a config.

Each function does the whole job and returns data the CLI only prints (dicts of numbers
and names; a prune, the typed :class:`PruneSummary`, whose ``to_dict`` is its
``result.json``), and tests call these directly. The dense model's input, data and
checkpoint come from :mod:`autoprune.dense` (re-exported here).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.admm import AdmmIteration
from autoprune.atomic import check_writable, save_torch_atomic, write_text_atomic
from autoprune.config import AdmmSettings, PruneConfig
from autoprune.data import DatasetSplits
from autoprune.dense import (
    build_model,
    checkpoint_for,
    example_input,
    existing_checkpoint,
    load_dataset,
    model_input,
    train_baseline,
)
from autoprune.errors import UserError
from autoprune.groups import ChannelGraph
from autoprune.models import check_model_input, create_model
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.pruning import check_method, prune_task, resolve_targets
from autoprune.stats import LayerStats
from autoprune.task import ClassifierTask

if TYPE_CHECKING:
    from autoprune.deploy import DeployReport

__all__ = ["ModelScores", "PruneOutcome", "PruneSummary", "build_model", "checkpoint_for", "example_input",
           "list_layers", "load_dataset", "run_prune", "train_baseline", "write_prune_outputs"]


# -- layers ----------------------------------------------------------------------
def list_layers(model_name: str, dataset_name: str | None = None, *, data_dir: str | None = None) -> list[dict[str, Any]]:
    """The prunable layers of a model, as ``autoprune layers`` prints them, for the dataset's
    inputs or, without one, the model's native input (:func:`autoprune.dense.model_input`)."""
    inp = model_input(model_name, dataset_name, data_dir=data_dir)
    model = create_model(model_name, in_channels=inp.in_channels, num_classes=inp.num_classes,
                         image_size=inp.image_size)
    check_model_input(model, inp.in_channels, inp.image_size, name=model_name)
    graph = ChannelGraph(model, torch.zeros(1, *inp.shape))
    rows = []
    for info in graph.layers.values():
        rows.append({
            "name": info.name,
            "kind": info.kind,
            "weight_shape": list(info.weight_shape),
            "macs": info.macs,
            "coupled": info.coupled,
            "out_group": info.out_group,
            "in_group": info.in_group,
            "filters_prunable": info.out_group is not None and graph.groups[info.out_group].prunable,
            "channels_prunable": info.in_group is not None and graph.groups[info.in_group].prunable,
        })
    return rows


# -- prune -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelScores:
    """Accuracy and size of one model (the dense baseline, or the masked pruned model).

    ``params_nonzero`` and ``macs`` count what remains once zero weights are skipped;
    ``macs_dense`` is the count without skipping them (:func:`autoprune.stats.model_counts`).
    """

    val_acc: float
    test_acc: float
    params: int
    params_nonzero: int
    macs_dense: int
    macs: int
    mac_reduction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneSummary:
    """What a prune run measured: the typed form of ``result.json`` (:meth:`to_dict`).

    ``out_dir`` is set once the outputs are written (:func:`write_prune_outputs`),
    ``deploy`` once a deployable folder is built from it, ``mlflow_run_id`` (with
    ``tracked``) once the deployable was offered to MLflow; each appears in
    :meth:`to_dict` only from then on.
    """

    model: str
    dataset: str
    checkpoint: str
    method: str
    device: str
    admm: AdmmSettings
    channel_multiple: int
    dense: ModelScores
    pruned: ModelScores
    layers: list[LayerStats]
    residuals: list[AdmmIteration]  # one per ADMM iteration
    retrain_losses: list[float]
    hard_prune_val_acc: float | None  # right after the hard prune, before retraining
    notes: list[str]
    seconds: float
    out_dir: str | None = None
    deploy: DeployReport | None = None
    mlflow_run_id: str | None = None
    tracked: bool = False  # the model upload was tried (its run id is None where it failed)

    @property
    def val_drop(self) -> float:
        """Validation accuracy lost to pruning (points as a fraction: 0.02 is 2 points)."""
        return self.dense.val_acc - self.pruned.val_acc

    @property
    def test_drop(self) -> float:
        return self.dense.test_acc - self.pruned.test_acc

    def to_dict(self) -> dict[str, Any]:
        """``result.json``: the summary as plain data (the keys of autoprune 0.1)."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "method": self.method,
            "device": self.device,
            "admm": dict(self.admm.__dict__),
            "channel_multiple": self.channel_multiple,
            "dense": self.dense.to_dict(),
            "pruned": self.pruned.to_dict(),
            "accuracy_drop": {"val": self.val_drop, "test": self.test_drop},
            "layers": [s.to_dict() for s in self.layers],
            "residuals": [asdict(it) for it in self.residuals],
            "retrain_losses": list(self.retrain_losses),
            "hard_prune_val_acc": self.hard_prune_val_acc,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }
        if self.out_dir is not None:
            out["out_dir"] = self.out_dir
        if self.deploy is not None:
            out["deploy"] = self.deploy.to_dict(with_out_dir=True)
        if self.tracked:
            out["mlflow_run_id"] = self.mlflow_run_id
        return out


@dataclass
class PruneOutcome:
    """Everything a prune run gives back (``to_dict`` is what ``--json`` prints)."""

    summary: PruneSummary
    model: nn.Module
    masks: dict[str, torch.Tensor]
    projector: Projector | None = None  # whose hard masks were applied (its kept channels drive compaction)
    splits: DatasetSplits | None = None  # the dataset splits used

    def to_dict(self) -> dict[str, Any]:
        return self.summary.to_dict()


def run_prune(
    config: PruneConfig,
    *,
    method: str = "auto",
    device: torch.device,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
) -> PruneOutcome:
    """Prune the config's model (ADMM, one-shot or gradual magnitude pruning; ``auto``: the method
    :func:`autoprune.method_rule.choose_method` picks) and masked retraining, then evaluate it.

    Args:
        overrides: ADMM settings that replace the config's (None values are ignored).
        out_dir: When given, ``result.json``, ``config.yaml`` and ``masked_model.pt`` are written there.
    """
    reporter = reporter or Reporter()
    check_method(method)
    settings: AdmmSettings = config.admm.replace(**(overrides or {}))
    splits = load_dataset(config.dataset, data_dir=config.data_dir)
    # everything the config can get wrong is checked before a missing baseline is trained:
    # the targets are checked on the architecture, which needs no weights
    found = existing_checkpoint(config, splits.name, splits=splits)
    if found is None:  # prune_task checks the targets too, but only after the baseline is trained
        resolve_targets(build_model(config.model, splits), example_input(splits), config.layers,
                        channel_multiple=config.channel_multiple, where="config 'layers'")
        ckpt, ckpt_path, _ = checkpoint_for(config, splits.name, device=device, reporter=reporter)
    else:
        ckpt, ckpt_path = found
    result = prune_task(ClassifierTask(splits, ckpt), config.layers, settings=settings, method=method, device=device,
                        seed=config.seed, channel_multiple=config.channel_multiple, reporter=reporter,
                        where="config 'layers'")
    summary = PruneSummary(
        model=config.model,
        dataset=config.dataset,
        checkpoint=str(ckpt_path),
        method=result.method,
        device=str(device),
        admm=settings,
        channel_multiple=config.channel_multiple,
        dense=ModelScores(val_acc=result.dense_score, test_acc=result.dense_test_score, **result.dense_counts),
        pruned=ModelScores(val_acc=result.score, test_acc=result.test_score, **result.counts),
        layers=result.layers,
        residuals=result.history.iterations,
        retrain_losses=result.history.retrain_losses,
        hard_prune_val_acc=result.history.hard_prune_val_acc,
        notes=result.history.notes,
        seconds=result.seconds,
    )
    outcome = PruneOutcome(summary, result.model, result.masks, result.projector, splits)
    if out_dir is not None:
        write_prune_outputs(outcome, config, out_dir)
    return outcome


def write_prune_outputs(outcome: PruneOutcome, config: PruneConfig, out_dir: str | os.PathLike) -> Path:
    """``config.yaml``, ``masked_model.pt`` and ``result.json`` of a prune run, into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", config.to_yaml())
    save_torch_atomic({"state_dict": {k: v.cpu() for k, v in outcome.model.state_dict().items()},
                       "masks": {k: v.cpu() for k, v in outcome.masks.items()}, "summary": outcome.summary.to_dict()},
                      out / "masked_model.pt")
    outcome.summary.out_dir = str(out)
    write_text_atomic(out / "result.json", json.dumps(outcome.summary.to_dict(), indent=2))
    return out


def prune_to_folder(
    config: PruneConfig,
    out: str | os.PathLike,
    *,
    method: str = "auto",
    device: torch.device,
    overrides: dict[str, Any] | None = None,
    latency_batch: int | None = None,
    dtype: str | None = None,
    runtime: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    reporter: Reporter | None = None,
) -> PruneSummary:
    """``autoprune prune``: prune the config's model (:func:`run_prune`), build the deployable
    folder ``out`` (compacted, timed beside dense: :func:`autoprune.deploy.build_deployable`),
    write ``config.yaml``, ``masked_model.pt`` and ``result.json`` beside it, and offer the
    deployable to MLflow at ``tracking_uri`` (None: not tracked).

    ``latency_batch``, ``dtype`` and ``runtime`` default to the search's that wrote the config
    (its ``origin``), else batch 32, fp32, torch. Everything that can be refused is checked
    before any training: a bad batch, dtype or runtime, an ``out`` that is not empty (unless
    ``force``) or not writable."""
    from autoprune.deploy import build_deployable, load_pruned
    from autoprune.latency import LatencySettings, check_dtype
    from autoprune.runtimes import check_runtime

    reporter = reporter or Reporter()
    origin = config.origin or {}
    batch = latency_batch if latency_batch is not None else int(origin.get("latency_batch") or 32)
    dtype = dtype or str(origin.get("dtype") or "fp32")
    if batch < 1:
        raise UserError(f"--latency-batch must be at least 1 (got {batch}).")
    check_dtype(dtype, device)
    runtime = check_runtime(runtime or str(origin.get("runtime") or "torch"), device, dtype).name
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"output folder {out} exists and is not empty; use --force to overwrite or pick another --out")
    check_writable(out, what="--out", folder=True)
    outcome = run_prune(config, method=method, device=device, overrides=overrides, reporter=reporter)
    deploy = build_deployable(outcome, out, device=device,
                              latency=LatencySettings(batch_size=batch, dtype=dtype, runtime=runtime),
                              force=force, reporter=reporter)
    write_prune_outputs(outcome, config, out)
    summary = outcome.summary
    summary.deploy = deploy
    if tracking_uri is not None:
        from autoprune.tracking import log_model_to_mlflow

        summary.mlflow_run_id = log_model_to_mlflow(
            load_pruned(out), example_input(outcome.splits, batch=2), tracking_uri,
            str(origin.get("study") or "autoprune-prune"), f"prune-{out.name}", deploy.to_dict(with_out_dir=True),
            warn=lambda m: reporter.log(f"warning: {m}"))
        summary.tracked = True
        write_text_atomic(out / "result.json", json.dumps(summary.to_dict(), indent=2, default=str))
    return summary
