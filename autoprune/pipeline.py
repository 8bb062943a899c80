"""Library entry points behind the CLI: train a baseline, list layers, prune from a config.

Each function does the whole job and returns data the CLI only prints (dicts of numbers
and names; a prune, the :class:`~autoprune.pruning.PruneResult` that :func:`autoprune.prune`
returns too, whose ``to_dict`` is its ``result.json``), and tests call these directly. The dense model's input, data and
checkpoint come from :mod:`autoprune.dense` (re-exported here).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from autoprune.atomic import check_writable, save_torch_atomic, write_text_atomic
from autoprune.config import PruneConfig, Schedule
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
from autoprune.pruning import PruneResult, check_method, prune_task, resolve_targets
from autoprune.task import ClassifierTask

__all__ = ["build_model", "checkpoint_for", "example_input", "list_layers", "load_dataset", "prune_to_folder",
           "run_prune", "train_baseline", "write_prune_outputs"]


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
def run_prune(
    config: PruneConfig,
    *,
    method: str = "auto",
    device: torch.device,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
) -> PruneResult:
    """Prune the config's model (ADMM, one-shot or gradual magnitude pruning; ``auto``: the method
    :func:`autoprune.method_rule.choose_method` picks) and masked retraining, then evaluate it.

    Args:
        overrides: ADMM settings that replace the config's (None values are ignored).
        out_dir: When given, ``result.json``, ``config.yaml`` and ``masked_model.pt`` are written there.
    """
    reporter = reporter or Reporter()
    check_method(method)
    settings: Schedule = config.admm.replace(**(overrides or {}))
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
    result = replace(result, model_name=config.model, dataset=config.dataset, checkpoint=str(ckpt_path),
                     splits=splits)
    if out_dir is not None:
        write_prune_outputs(result, config, out_dir)
    return result


def write_prune_outputs(result: PruneResult, config: PruneConfig, out_dir: str | os.PathLike) -> Path:
    """``config.yaml``, ``masked_model.pt`` and ``result.json`` of a prune run, into ``out_dir``
    (``result.out_dir`` is set to it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", config.to_yaml())
    save_torch_atomic({"state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()},
                       "masks": {k: v.cpu() for k, v in result.masks.items()}, "summary": result.to_dict()},
                      out / "masked_model.pt")
    result.out_dir = str(out)
    write_text_atomic(out / "result.json", json.dumps(result.to_dict(), indent=2))
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
) -> PruneResult:
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
    result = run_prune(config, method=method, device=device, overrides=overrides, reporter=reporter)
    deploy = build_deployable(result, out, device=device,
                              latency=LatencySettings(batch_size=batch, dtype=dtype, runtime=runtime),
                              force=force, reporter=reporter)
    write_prune_outputs(result, config, out)
    result.deploy = deploy
    if tracking_uri is not None:
        from autoprune.tracking import log_model_to_mlflow

        result.mlflow_run_id = log_model_to_mlflow(
            load_pruned(out), example_input(result.splits, batch=2), tracking_uri,
            str(origin.get("study") or "autoprune-prune"), f"prune-{out.name}", deploy.to_dict(with_out_dir=True),
            warn=lambda m: reporter.log(f"warning: {m}"))
        result.tracked = True
        write_text_atomic(out / "result.json", json.dumps(result.to_dict(), indent=2, default=str))
    return result
