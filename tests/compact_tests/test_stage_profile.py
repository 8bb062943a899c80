"""benchmarks/stage_profile.py: stage MACs add up and every top-level stage is timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
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
    threads = torch.get_num_threads()
    try:
        timed = sp.profile(models, shape, torch.device("cpu"), settings, rounds=1)
    finally:
        torch.set_num_threads(threads)  # profile() sets the thread count for the process
    children = [n for n, _ in dense.named_children()]
    for k in ("dense", "compacted"):  # the figures themselves: test_profile_times_... below, on a fake clock
        stages = timed[k]["stages_ms"]
        assert set(stages) <= set(children) and {"conv1", "layer1", "layer3"} <= set(stages)
        assert set(timed[k]) == {"whole_ms", "stages_ms"}


_CLOCK = {"now": 0.0}


class _Tick(torch.nn.Module):
    """Takes exactly ``ms`` milliseconds of the fake clock per call."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _CLOCK["now"] += self.ms / 1e3
        return x


def test_profile_times_the_whole_model_and_each_stage(monkeypatch) -> None:
    """On a clock that moves only inside the stages, every figure is known: the whole model
    is the sum of its stages, and each stage its own time."""
    import types

    import autoprune.latency as latency

    sp = _load()
    clock = types.SimpleNamespace(perf_counter=lambda: _CLOCK["now"])
    monkeypatch.setattr(latency, "time", clock)
    monkeypatch.setattr(sp, "time", clock)
    _CLOCK["now"] = 1000.0
    models = {"dense": torch.nn.Sequential(_Tick(2.0), _Tick(5.0), torch.nn.Flatten()),
              "compacted": torch.nn.Sequential(_Tick(0.5), _Tick(1.5), torch.nn.Flatten())}
    settings = LatencySettings(batch_size=2, threads=1, warmup=1, repeats=1, fold_bn=False)
    threads = torch.get_num_threads()
    try:
        timed = sp.profile(models, (3, 4, 4), torch.device("cpu"), settings, rounds=3)
    finally:
        torch.set_num_threads(threads)
    assert timed["dense"]["whole_ms"] == pytest.approx(7.0)
    assert timed["compacted"]["whole_ms"] == pytest.approx(2.0)
    assert timed["dense"]["stages_ms"] == pytest.approx({"0": 2.0, "1": 5.0, "2": 0.0}, abs=1e-6)
    assert timed["compacted"]["stages_ms"] == pytest.approx({"0": 0.5, "1": 1.5, "2": 0.0}, abs=1e-6)


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
