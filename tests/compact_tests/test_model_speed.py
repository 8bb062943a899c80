"""Whole-model timing is tied to the model: a compacted model with far fewer MACs is
measured far faster than dense, by the same code the search and ``bench`` use."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.admm import apply_masks
from autoprune.bench import parse_uniform, uniform_targets
from autoprune.compact import compact_model
from autoprune.device import resolve_channel_multiple
from autoprune.groups import ChannelGraph
from autoprune.latency import LatencySettings, compare_latency, latency_ratio
from autoprune.models import create_model
from autoprune.projection import Projector
from autoprune.stats import layer_stats, model_counts


@pytest.mark.slow
def test_resnet18_filter_70_percent_is_measured_far_faster_than_dense() -> None:
    """tv:resnet18, filter 70% on every layer ``bench --uniform`` prunes, batch 8 at 224x224:
    about 8x fewer MACs, measured ~8x faster on this project's CPU. Asserted: more than 2x,
    a margin no noise reaches (one thread, so a busy neighbour slows both models alike)."""
    cpu = torch.device("cpu")
    shape = (3, 224, 224)
    settings = LatencySettings(batch_size=8, threads=1, warmup=1, repeats=3, min_seconds=0.0)  # 3 rounds
    torch.manual_seed(0)
    model = create_model("tv:resnet18", in_channels=3, num_classes=1000, image_size=shape[1:]).eval()
    example = torch.randn(1, 3, 64, 64)  # channels do not depend on the resolution: build at a small one
    graph = ChannelGraph(model, example)
    targets = uniform_targets(graph, parse_uniform("filter:0.7"))
    masked = copy.deepcopy(model)
    projector = Projector(masked, graph, targets, channel_multiple=resolve_channel_multiple("auto", cpu, "fp32"))
    apply_masks(masked, projector.hard_masks())
    compacted = compact_model(masked, projector, example, device=cpu, latency=settings).model

    dense_macs = model_counts(model, layer_stats(model, graph))["macs"]
    pruned_macs = model_counts(masked, layer_stats(masked, projector.graph, targets))["macs"]
    assert dense_macs / pruned_macs > 5  # the premise: far less work

    timed = compare_latency({"dense": model, "compacted": compacted}, shape, device=cpu, settings=settings)
    speedup = latency_ratio(timed["dense"], timed["compacted"])
    assert speedup > 2.0, (speedup, timed["dense"].rounds_ms, timed["compacted"].rounds_ms)
