"""A runtime's channel block: read off measured steps, cached, and used by --channel-multiple auto."""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.device import channel_block, resolve_channel_multiple
from autoprune.latency import LatencySettings
from autoprune.runtimes import blocks, get_runtime
from autoprune.runtimes.blocks import BlockMeasurement, block_from_times, measure_block, measured_block

CPU = torch.device("cpu")

# benchmarks/results/channel_steps.md, fp32 column (one 3x3 conv, 56x56, batch 32, eager torch, AVX-512)
TORCH_STEPS = {8: 0.65, 12: 0.84, 16: 1.10, 20: 2.76, 24: 3.36, 28: 3.96, 32: 4.54, 36: 7.02, 40: 7.80, 44: 8.87,
               48: 8.90, 52: 12.83, 56: 13.67, 60: 14.75, 64: 15.16, 68: 20.84, 72: 21.85, 76: 23.01, 80: 24.31}


def _staircase(block: int, counts=range(8, 72, 4)) -> dict[int, float]:  # noqa: ANN001
    """A conv that pays for whole blocks of ``block`` channels in and out, plus a little per channel."""
    return {c: (-(-c // block) * block) ** 2 + 0.05 * c * c for c in counts}


def test_the_block_is_read_off_the_steps_of_the_measured_times() -> None:
    assert block_from_times(TORCH_STEPS) == 16  # the measured eager staircase gives the block channel_block assumes
    for block in (8, 16, 32):
        assert block_from_times(_staircase(block)) == block
    # smooth growth (every channel costs the same): exact counts
    assert block_from_times({c: 0.1 * c for c in range(8, 72, 4)}) == 1
    assert block_from_times({c: 0.01 * c * c for c in range(8, 72, 4)}) == 1
    # one step out of line is noise, not a staircase
    noisy = {c: 0.1 * c for c in range(8, 72, 4)}
    noisy[40] *= 2  # 36 -> 40 jumps (elasticity 11)
    assert block_from_times(noisy) == 1
    noisy[68] *= 2  # and 64 -> 68: 64 is the only multiple of 64 in range, one of two of 32
    assert block_from_times(noisy) == 1
    # a staircase with one step missed (here 48 -> 52 rises smoothly) is still one
    missed = _staircase(16)
    for c in (52, 56, 60, 64):
        missed[c] = missed[48] * (c / 48) ** 2
    missed[68] = _staircase(16)[68]
    assert block_from_times(missed) == 16
    with pytest.raises(ValueError, match="three channel counts"):
        block_from_times({8: 1.0, 12: 2.0})


def test_the_measured_block_is_cached_per_runtime_version_device_and_threads(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake(runtime: str, device: torch.device, settings: LatencySettings) -> BlockMeasurement:
        calls.append((runtime, settings.threads))
        return BlockMeasurement(32 if settings.threads == 1 else 8, {8: 1.0, 12: 1.1})

    logged = []
    one = measured_block("onnxruntime", CPU, LatencySettings(threads=1), measure=fake, log=logged.append)
    assert one.block == 32 and calls == [("onnxruntime", 1)] and "measuring the channel block" in logged[0]
    again = measured_block("onnxruntime", CPU, LatencySettings(threads=1), measure=fake, log=logged.append)
    assert again.block == 32 and again.times_ms == {8: 1.0, 12: 1.1} and len(calls) == 1 and len(logged) == 1
    two = measured_block("onnxruntime", CPU, LatencySettings(threads=2), measure=fake)
    assert two.block == 8 and len(calls) == 2  # another thread count is another measurement
    table = json.loads(blocks.cache_file().read_text())
    assert sorted(v["block"] for v in table.values()) == [8, 32]
    key = next(k for k, v in table.items() if v["block"] == 32)
    assert key.startswith(f"onnxruntime {get_runtime('onnxruntime').version()} | cpu:") and key.endswith("1 threads")


def test_channel_multiple_auto_takes_the_runtime_s_block(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(blocks, "measure_block", lambda runtime, device, settings: BlockMeasurement(32, {}))
    assert resolve_channel_multiple("auto", CPU, "fp32", runtime="onnxruntime", threads=1) == 32
    assert resolve_channel_multiple("auto", CPU, "fp32", runtime="torch") == channel_block(CPU, "fp32")
    assert resolve_channel_multiple(None, CPU, "fp32") == channel_block(CPU, "fp32")
    assert resolve_channel_multiple(4, CPU, "fp32", runtime="onnxruntime") == 4  # a number is taken as given
    assert not blocks.cache_file().exists() or "torch " not in blocks.cache_file().read_text()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_block_is_measured_in_the_runtime_itself(runtime, monkeypatch) -> None:  # noqa: ANN001
    rt = get_runtime(runtime)
    if not rt.available():
        pytest.skip(rt.missing())
    prepared = []
    real = type(rt).prepare

    def spy(self, model, shape, **kw):  # noqa: ANN001, ANN202
        prepared.append(shape[0])
        return real(self, model, shape, **kw)

    monkeypatch.setattr(type(rt), "prepare", spy)
    found = measure_block(runtime, CPU, LatencySettings(threads=1), counts=(8, 12, 16, 20))
    assert prepared == [8, 12, 16, 20]  # one conv per count, prepared (exported, compiled) by the runtime
    assert sorted(found.times_ms) == [8, 12, 16, 20] and all(t > 0 for t in found.times_ms.values())
    assert found.block == block_from_times(found.times_ms)


def test_a_search_for_a_runtime_rounds_to_that_runtime_s_block(tmp_path, monkeypatch, digits_baseline) -> None:  # noqa: ANN001
    """``search --runtime onnxruntime`` (channel multiple ``auto``) measures ONNX Runtime's block,
    says so, and stores it in the study; torch's study keeps the CPU's vector width."""
    if not get_runtime("onnxruntime").available():
        pytest.skip(get_runtime("onnxruntime").missing())
    from autoprune.config import Schedule
    from autoprune.progress import Reporter
    from autoprune.study import SearchSettings, run_search

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    other = 4 if channel_block(CPU, "fp32") != 4 else 8  # a block torch's rule would not give
    monkeypatch.setattr(blocks, "measure_block", lambda runtime, device, settings: BlockMeasurement(other, {}))
    logged: list[str] = []

    class Log(Reporter):
        def log(self, message: str) -> None:
            logged.append(message)

    found = {}
    for runtime in ("onnxruntime", "torch"):
        s = SearchSettings(checkpoint=str(digits_baseline[0]), runs_dir=str(tmp_path / "runs"), trials=1,
                           latency_batch=8, runtime=runtime, study_name=runtime, rungs=False,
                           admm=Schedule(iters=1, epochs=0.1, rho=1.0, retrain_epochs=0.1),
                           storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        found[runtime] = run_search(s, reporter=Log()).record.meta.channel_multiple
    assert found == {"onnxruntime": other, "torch": channel_block(CPU, "fp32")}
    assert sum("measuring the channel block of onnxruntime" in m for m in logged) == 1


@pytest.mark.slow
def test_torch_compile_compiles_every_model_it_prepares_not_only_the_first_eight() -> None:
    """Each model prepared is another compile of the same forward code; past dynamo's default
    recompile limit (8) it would run eagerly under torch-compile's name (the channel-block
    measurement prepares 16 convs, a suite dozens of models)."""
    import torch._dynamo.utils as dynamo_utils
    from torch import nn

    rt = get_runtime("torch-compile")
    if not rt.supports(CPU):
        pytest.skip(rt.unsupported(CPU, "fp32"))
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for c in range(4, 4 + 10):
        rt.prepare(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()), (c, 6, 6), device=CPU,
                   settings=LatencySettings(batch_size=2, threads=1))
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before == 10
