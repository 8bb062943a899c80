"""benchmarks/stage_profile.py: stage MACs add up and every top-level stage is timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from autoprune.groups import ChannelGraph
from autoprune.latency import LatencySettings
from autoprune.stats import layer_stats

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stage_profile.py"


def _load():
    spec = importlib.util.spec_from_file_location("stage_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_profile_splits_macs_and_times_every_stage() -> None:
    sp = _load()
    settings = LatencySettings(batch_size=2, threads=1, warmup=1, repeats=1)
    shape = (3, 32, 32)
    dense, compacted, macs_dense, macs_pruned, multiple = sp.build("resnet56", "filter:0.5", shape,
                                                                   torch.device("cpu"), settings)
    assert multiple >= 1
    graph = ChannelGraph(dense, torch.randn(1, *shape))
    assert sum(macs_dense.values()) == sum(s.macs for s in layer_stats(dense, graph))
    assert set(macs_dense) == set(macs_pruned)
    # the residual stages lose about three quarters of their MACs at 50% of the filters
    for stage in ("layer1", "layer2", "layer3"):
        assert macs_pruned[stage] < 0.4 * macs_dense[stage]
    models = {"dense": dense, "compacted": compacted}
    timed = sp.profile(models, shape, torch.device("cpu"), settings, rounds=1)
    children = [n for n, _ in dense.named_children()]
    for k in ("dense", "compacted"):
        stages = timed[k]["stages_ms"]
        assert set(stages) <= set(children) and {"conv1", "layer1", "layer3"} <= set(stages)
        assert all(v > 0 for v in stages.values()) and timed[k]["whole_ms"] > 0


def test_stage_timer_records_each_child_until_removed() -> None:
    sp = _load()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    timer = sp.StageTimer(model, torch.device("cpu"))
    model(torch.randn(1, 3, 8, 8))
    model(torch.randn(1, 3, 8, 8))
    assert {k: len(v) for k, v in timer.times.items()} == {"0": 2, "1": 2, "2": 2}
    timer.remove()
    model(torch.randn(1, 3, 8, 8))
    assert {k: len(v) for k, v in timer.times.items()} == {"0": 2, "1": 2, "2": 2}
