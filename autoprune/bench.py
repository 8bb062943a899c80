"""``autoprune bench``: dense vs compacted latency of a pruned configuration, measured."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from autoprune.admm import apply_masks
from autoprune.checkpoint import ForeignCheckpointError, WeightsFor, load_checkpoint
from autoprune.compact import CompactResult
from autoprune.config import LayerTarget, PruneConfig, resolve_layer_targets
from autoprune.dense import model_input
from autoprune.device import AUTO, parse_channel_multiple, resolve_channel_multiple
from autoprune.errors import UserError
from autoprune.groups import ChannelGraph
from autoprune.latency import (
    LatencyCache,
    LatencySettings,
    architecture_fingerprint,
    check_dtype,
    latency_ratio,
)
from autoprune.measure import measure_pruned
from autoprune.models import create_model
from autoprune.params import Interval, Param, validate_params
from autoprune.projection import Projector
from autoprune.runtimes import check_runtime
from autoprune.sparsity import get_sparsity
from autoprune.stats import layer_stats, model_counts

#: What the measurement settings of ``autoprune bench`` must be (named by their flags).
BENCH_PARAMS = {
    "batch_size": Param("--batch-size", Interval(int, 1, None)),
    "threads": Param("--threads", Interval(int, 1, None), optional=True),
    "repeats": Param("--repeats", Interval(int, 1, None)),
}


def parse_uniform(spec: str) -> LayerTarget:
    """``filter:0.5`` → LayerTarget('filter', 0.5); ``2:4`` → LayerTarget('2:4')."""
    kind, sep, rate = spec.rpartition(":")
    if not sep or not kind:
        raise UserError(f"--uniform '{spec}' is not TYPE:RATE (e.g. filter:0.5, shape:0.8, 2:4).")
    try:
        value = float(rate)
    except ValueError:
        raise UserError(f"--uniform '{spec}': the rate '{rate}' is not a number.") from None
    if kind.isdigit():  # "2:4"
        return LayerTarget(spec)
    return LayerTarget(kind, value)


def uniform_targets(graph: ChannelGraph, target: LayerTarget,
                    skipped: list[str] | None = None) -> dict[str, LayerTarget]:
    """Every conv layer but the first (reads the input) and the output layer; for filter and
    channel targets, only layers whose channel group can be pruned; and only layers the
    sparsity type applies to (2:4 needs a multiple of 4 weights per GEMM row). A layer left
    out because the type does not apply is described in ``skipped`` (when given)."""
    stype = get_sparsity(target.type)
    side = stype.structured
    out = {}
    for n, info in graph.layers.items():
        if info.kind != "conv" or info.reads_input or info.is_output:
            continue
        group = graph.out_group(n) if side == "out" else graph.in_group(n) if side == "in" else None
        if side is not None and (group is None or not group.prunable):
            continue
        why = stype.applies_to(graph.model.get_submodule(n).weight)
        if why:
            if skipped is not None:
                skipped.append(f"{target.type} does not apply to layer '{n}': {why.rstrip('.')}; it stays dense.")
            continue
        out[n] = target
    return out


def _bench_model(model_name: str, dataset: str | None, checkpoint: str | os.PathLike | None,
                 input_shape: tuple[int, int, int] | None, num_classes: int | None,
                 data_dir: str | None) -> tuple[torch.nn.Module, tuple[int, ...], str]:
    """The dense model to measure, its input shape, and where that input came from: the
    checkpoint's, ``--input-shape``, the dataset's, or the model's native input."""
    if checkpoint is not None:
        try:
            ckpt = load_checkpoint(checkpoint)
        except ForeignCheckpointError:  # a plain state dict of the model, for the input below
            shape, source, num_classes = _bench_input(model_name, dataset, input_shape, num_classes, data_dir)
            ckpt = load_checkpoint(checkpoint, weights_for=WeightsFor(model_name, dataset or source, shape[0],
                                                                      num_classes or 10, (shape[1], shape[2])))
            return ckpt.build(), shape, source
        if ckpt.model != model_name:
            raise UserError(f"checkpoint '{checkpoint}' holds model '{ckpt.model}', not '{model_name}'.")
        return ckpt.build(), (ckpt.in_channels, *ckpt.image_size), "the checkpoint's input"
    shape, source, num_classes = _bench_input(model_name, dataset, input_shape, num_classes, data_dir)
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=shape[0], num_classes=num_classes or 10,
                         image_size=(shape[1], shape[2]))
    return model, shape, source


def _bench_input(model_name: str, dataset: str | None, input_shape: tuple[int, int, int] | None,
                 num_classes: int | None, data_dir: str | None) -> tuple[tuple[int, ...], str, int | None]:
    """``--input-shape``, else the dataset's input, else the model's native input; and the classes."""
    if input_shape is None:
        inp = model_input(model_name, dataset, data_dir=data_dir)
        return inp.shape, inp.source, num_classes or inp.num_classes
    return tuple(input_shape), "--input-shape", num_classes


def _bench_targets(graph: ChannelGraph, config: PruneConfig | None,
                   uniform: str | None) -> tuple[dict[str, LayerTarget], list[str]]:
    """The config's targets, or ``uniform``'s on every layer it applies to (with why others were skipped)."""
    skipped: list[str] = []
    if config is not None:
        targets = resolve_layer_targets(config.layers, list(graph.layers), where="config 'layers'")
    else:
        targets = uniform_targets(graph, parse_uniform(uniform), skipped)  # type: ignore[arg-type]
    if not targets:
        if skipped:
            raise UserError(f"no layer to prune: {skipped[0]} Use another type, or --config with other layers.")
        raise UserError("no layer to prune: the config or --uniform selects nothing.")
    return targets, skipped


def _layer_rows(stats: list, result: CompactResult) -> list[dict[str, Any]]:
    """Each pruned layer's stats with its shape after compaction and its kernel (and the candidates' times)."""
    layers = []
    for s in stats:
        row = s.to_dict()
        try:
            after = tuple(result.model.get_submodule(s.name).weight.shape)
        except AttributeError:
            after = tuple(s.weight_shape)
        choice = result.choices.get(s.name)
        row.update({"weight_shape_after": list(after), "kernel": choice.form if choice else "dense",
                    "candidates_ms": choice.candidates_ms if choice else {}})
        layers.append(row)
    return layers


def run_bench(
    model_name: str,
    *,
    dataset: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    config: PruneConfig | None = None,
    uniform: str | None = None,
    device: torch.device,
    latency: LatencySettings,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    cache_path: str | os.PathLike | None = "runs/latency_cache.json",
    channel_multiple: int | str | None = None,
) -> dict[str, Any]:
    """Prune by magnitude projection to the targets, compact, check that the compacted model's
    outputs equal the masked model's (``max_abs_diff``), and measure dense vs compacted.

    The input is the checkpoint's, else ``input_shape``, else the dataset's, else the model's
    native input (a torchvision model's 3×224×224; see :func:`autoprune.dense.model_input`).
    ``channel_multiple`` rounds kept channels to a block: an integer, or ``auto`` for the
    device's channel block (:func:`autoprune.device.channel_block`). Default: the config's
    value with ``--config``, else ``auto``."""
    validate_params(latency, BENCH_PARAMS)
    check_dtype(latency.dtype, device)
    runtime = check_runtime(latency.runtime, device, latency.dtype)
    channel_multiple = parse_channel_multiple(channel_multiple)
    if (config is None) == (uniform is None):
        raise UserError("give exactly one of --config FILE or --uniform TYPE:RATE.")
    if config is not None:
        model_name, dataset = config.model, config.dataset
        checkpoint = checkpoint or config.checkpoint
    model, shape, input_from = _bench_model(model_name, dataset, checkpoint, input_shape, num_classes,
                                            config.data_dir if config else None)
    model.eval()
    example = torch.randn(1, *shape)
    graph = ChannelGraph(model, example)
    targets, skipped = _bench_targets(graph, config, uniform)
    if channel_multiple is None:
        channel_multiple = config.channel_multiple if config is not None else AUTO
    channel_multiple = resolve_channel_multiple(channel_multiple, device, latency.dtype, runtime=runtime.name,
                                                threads=latency.threads)
    masked = copy.deepcopy(model)
    projector = Projector(masked, graph, targets, channel_multiple=channel_multiple)
    apply_masks(masked, projector.hard_masks())
    stats = layer_stats(masked, projector.graph, targets)
    counts = model_counts(masked, stats)
    dense_counts = model_counts(model, layer_stats(model, graph))

    # compacted, checked to compute what the masked (pruned and scored) model computes, and
    # timed beside dense in interleaved rounds in this process (a fair comparison); the cache
    # keeps each timing for the search, which reuses them by architecture
    m = measure_pruned(masked, projector, model, torch.randn(2, *shape), device=device, latency=latency, fp32=False)
    result, max_abs_diff, dense_lat, compact_lat = m.compact, m.max_abs_diff, m.dense, m.pruned
    measured_speedup = latency_ratio(dense_lat, compact_lat)  # paired round by round
    # nothing removed and every kernel kept dense: the deployed model *is* the dense one, and
    # the two timings differ only by the machine's noise
    dense_fp, compact_fp = architecture_fingerprint(model), architecture_fingerprint(result.model)
    unchanged = dense_fp == compact_fp
    cache = LatencyCache(cache_path)
    for fp, res in ((dense_fp, dense_lat), (compact_fp, compact_lat)):
        cache.put(cache.key(fp, device, shape, latency), res)
    fell_back = not unchanged and measured_speedup < 1.0
    # the real parameter count of the compacted model
    compact_params = sum(p.numel() for p in result.model.parameters())
    layers = _layer_rows(stats, result)
    return {
        "model": model_name,
        "input_shape": list(shape),
        "input_from": input_from,
        "device": str(device),
        "settings": {"batch_size": latency.batch_size, "dtype": latency.dtype,
                     "channels_last": latency.channels_last and runtime.torch_layout, "fold_bn": latency.fold_bn,
                     "steady_memory": dense_lat.steady_memory and runtime.torch_layout, "threads": latency.threads,
                     "channel_multiple": channel_multiple, "runtime": runtime.name,
                     "runtime_detail": runtime.describe(device, latency)},
        "dense": {"latency": dense_lat.to_dict(), **dense_counts},
        "compacted": {"latency": compact_lat.to_dict(), **counts, "params_compact": compact_params},
        "speedup": 1.0 if unchanged else measured_speedup,
        "measured_speedup": measured_speedup,
        "max_abs_diff": max_abs_diff,
        "unchanged": unchanged,
        "mac_ratio": dense_counts["macs_dense"] / max(counts["macs"], 1),
        "param_ratio": dense_counts["params"] / max(compact_params, 1),
        "slower_than_dense": fell_back,
        "kernels_reverted": result.reverted,
        "layers": layers,
        "notes": skipped + projector.notes,
    }
