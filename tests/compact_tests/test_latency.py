from __future__ import annotations

import dataclasses
import json
import platform
import statistics

import pytest
import torch
from torch import nn

from autoprune.bench import run_bench
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.latency import (
    LatencyCache,
    LatencyResult,
    LatencySettings,
    architecture_fingerprint,
    check_dtype,
    compare_latency,
    latency_ratio,
    measure_latency,
)

QUICK = LatencySettings(batch_size=4, warmup=1, repeats=5, min_seconds=0.0)


def _net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10))


def test_measure_reports_ordered_percentiles():
    r = measure_latency(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    assert r.repeats >= 5 and r.batch_size == 4 and r.dtype == "fp32"
    assert 0 < r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.device.startswith("cpu:")


def test_cache_measures_an_architecture_once(tmp_path):
    cache = LatencyCache(tmp_path / "lat.json")
    a, hit_a = cache.measure(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    b, hit_b = cache.measure(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)  # same shapes, new weights
    _, hit_c = cache.measure(_net(16), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    assert (hit_a, hit_b, hit_c) == (False, True, False)
    assert a == b
    reread = LatencyCache(tmp_path / "lat.json")  # persisted
    _, hit_d = reread.measure(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    assert hit_d
    assert architecture_fingerprint(_net(8)) != architecture_fingerprint(_net(9))


@pytest.mark.parametrize("garbage", ["{\"k\": {\"median_ms\": 1.0, ", "\u0000\u0000\u0000", "[1, 2]"],
                         ids=["torn", "zeros", "not-an-object"])
def test_a_corrupt_cache_is_set_aside_with_one_warning(tmp_path, garbage):
    path = tmp_path / "latency_cache.json"
    path.write_text(garbage)
    with pytest.warns(UserWarning, match="latency cache .* is not valid JSON; set it aside") as caught:
        cache = LatencyCache(path)
    assert len(caught) == 1
    aside = list(tmp_path.glob("latency_cache.json.corrupt-*"))
    assert [p.read_text() for p in aside] == [garbage] and not path.exists()  # kept for a look, out of the way
    r, hit = cache.measure(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    assert not hit  # measured afresh, and written as a good cache
    assert LatencyCache(path).measure(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK) == (r, True)


def test_compare_latency_times_every_model_in_each_round(tmp_path):
    settings = LatencySettings(batch_size=4, warmup=1, repeats=12, min_seconds=0.0)
    r = compare_latency({"small": _net(4), "big": _net(64)}, (1, 8, 8), device=torch.device("cpu"), settings=settings)
    for res in r.values():
        assert len(res.rounds_ms) == 4 and res.repeats == 12  # a third of the repeats as rounds of three
        assert res.min_ms <= min(res.rounds_ms)
    ratios = [b / s for b, s in zip(r["big"].rounds_ms, r["small"].rounds_ms)]
    assert latency_ratio(r["big"], r["small"]) == pytest.approx(statistics.median(ratios))
    cache = LatencyCache(tmp_path / "lat.json")
    cache.put("k", r["big"])
    assert LatencyCache(tmp_path / "lat.json").get("k").rounds_ms == ()  # rounds only mean something side by side


# -- the timing arithmetic, on a fake clock -------------------------------------------
# perf_counter in autoprune.latency is replaced by a clock that moves only when a _Tick
# module runs, by exactly its milliseconds: every figure is then known in advance.
_CLOCK = {"now": 0.0}


class _Tick(nn.Module):
    """Takes ``ms[i % len(ms)]`` milliseconds of fake time at its i-th call (copies count on their own)."""

    def __init__(self, *ms: float) -> None:
        super().__init__()
        self.ms, self.calls = list(ms), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _CLOCK["now"] += self.ms[self.calls % len(self.ms)] / 1e3
        self.calls += 1
        return x


@pytest.fixture
def fake_clock(monkeypatch):  # noqa: ANN001, ANN201
    import types

    import autoprune.latency as latency

    _CLOCK["now"] = 1000.0
    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: _CLOCK["now"]))
    return _CLOCK


def test_measure_latency_reports_the_calls_own_times(fake_clock):  # noqa: ANN001
    settings = LatencySettings(batch_size=2, warmup=0, repeats=5, min_seconds=0.0, fold_bn=False)
    r = measure_latency(_Tick(5, 1, 3, 2, 4), (1, 4, 4), device=torch.device("cpu"), settings=settings)
    assert r.repeats == 5 and r.batch_size == 2
    assert r.median_ms == pytest.approx(3.0) and r.min_ms == pytest.approx(1.0)
    assert r.p10_ms == pytest.approx(1.4) and r.p90_ms == pytest.approx(4.6)  # interpolated between ranks
    # warm-up calls are not timed: the two first (5 and 1 ms) are skipped
    warm = dataclasses.replace(settings, warmup=2)
    r = measure_latency(_Tick(5, 1, 3, 2, 4, 6, 7), (1, 4, 4), device=torch.device("cpu"), settings=warm)
    assert (r.min_ms, r.median_ms, r.repeats) == (pytest.approx(2.0), pytest.approx(4.0), 5)
    # repeats go on until min_seconds were measured, at most ten times as many
    more = dataclasses.replace(settings, min_seconds=0.0295)
    assert measure_latency(_Tick(2), (1, 4, 4), device=torch.device("cpu"), settings=more).repeats == 15
    most = dataclasses.replace(settings, min_seconds=10.0)
    assert measure_latency(_Tick(2), (1, 4, 4), device=torch.device("cpu"), settings=most).repeats == 50


def test_compare_latency_pairs_each_models_own_times(fake_clock):  # noqa: ANN001
    settings = LatencySettings(batch_size=2, warmup=1, repeats=12, min_seconds=0.0, fold_bn=False)
    # after one warm-up call each, 4 rounds of (1 untimed + 3 timed) calls per model:
    # "slow" takes 10, 11, 12, ... ms at its successive calls, so its rounds' medians are known
    slow = _Tick(*range(10, 40))
    r = compare_latency({"fast": _Tick(3), "slow": slow}, (1, 4, 4), device=torch.device("cpu"),
                        settings=settings)
    assert r["fast"].rounds_ms == pytest.approx((3.0,) * 4) and r["fast"].median_ms == pytest.approx(3.0)
    assert r["slow"].rounds_ms == pytest.approx((13.0, 17.0, 21.0, 25.0)) and r["slow"].repeats == 12
    assert r["slow"].min_ms == pytest.approx(12.0) and r["slow"].median_ms == pytest.approx(19.0)
    assert latency_ratio(r["slow"], r["fast"]) == pytest.approx(19.0 / 3.0)  # median of 13/3 .. 25/3


def _result(median: float, rounds: tuple[float, ...] = ()) -> LatencyResult:
    return LatencyResult(median_ms=median, p90_ms=median, p10_ms=median, min_ms=median, repeats=3, batch_size=1,
                         dtype="fp32", device="cpu:x", threads=None, channels_last=False, rounds_ms=rounds)


def test_latency_ratio_pairs_rounds_so_drift_cancels():
    # b's machine got twice as slow after the first round, a's too: each round says a takes twice b
    a, b = _result(40.0, (10.0, 40.0, 41.0)), _result(10.0, (5.0, 20.0, 10.0))
    assert latency_ratio(a, b) == pytest.approx(2.0)  # per-round ratios 2, 2, 4.1
    assert a.median_ms / b.median_ms == pytest.approx(4.0)  # what the medians alone would say
    assert latency_ratio(_result(30.0), _result(10.0)) == pytest.approx(3.0)  # no rounds: the medians
    assert latency_ratio(_result(30.0, (1.0, 2.0)), _result(10.0, (1.0, 1.0, 1.0))) == pytest.approx(3.0)


def test_dtype_the_device_cannot_run():
    with pytest.raises(UserError, match="fp16"):
        check_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UserError, match="unknown dtype"):
        check_dtype("int3", torch.device("cpu"))


def test_bf16_on_cuda_follows_the_device(monkeypatch):
    """The CUDA branch of check_dtype, with the device's answers faked (runs on the CPU)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"this CUDA device \(Tesla T4\) cannot run bf16; use fp16 or fp32"):
        check_dtype("bf16", cuda)
    assert check_dtype("fp16", cuda) is torch.float16 and check_dtype("fp32", cuda) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert check_dtype("bf16", cuda) is torch.bfloat16

    def not_asked(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a CPU dtype check asked the CUDA device")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", not_asked)
    assert check_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def _err(capsys, code):  # noqa: ANN001, ANN202
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("autoprune: error:"), err
    return err


def test_bench_bad_input(capsys, tmp_path):
    assert "fp16" in _err(capsys, main(["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--dtype", "fp16",
                                        "--device", "cpu"]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: digits-cnn\ndataset: digits\nlayers: {'conv*': {type: filter, rate: 0.5}}\n")
    assert "matches no prunable layer" in _err(capsys, main(["bench", "--config", str(cfg), "--device", "cpu"]))
    assert "TYPE:RATE" in _err(capsys, main(["bench", "--model", "digits-cnn", "--uniform", "filter"]))
    for bad in ("0", "2.5", "fast"):
        assert "--channel-multiple must be a positive integer or 'auto'" in _err(capsys, main(
            ["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--channel-multiple", bad, "--device", "cpu"]))
    if not torch.cuda.is_available():
        assert "CUDA" in _err(capsys, main(["bench", "--model", "digits-cnn", "--uniform", "filter:0.5",
                                            "--device", "cuda"]))
    for flag in ("--threads", "--repeats", "--batch-size"):
        assert f"{flag} must be at least 1" in _err(capsys, main(
            ["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", flag, "-1", "--device", "cpu"]))
    cfg.write_text("model: digits-cnn\ndataset: digits\nlayers: {'features.3': {type: filter, rate: 0.5}}\n")
    assert "differs from the config's model 'digits-cnn'" in _err(capsys, main(
        ["bench", "--model", "lenet5", "--config", str(cfg), "--device", "cpu"]))
    # 2:4 fits none of lenet5's layers that --uniform selects (K = 6 * 5 * 5 = 150)
    assert "2:4 does not apply to layer 'features.3'" in _err(capsys, main(
        ["bench", "--model", "lenet5", "--uniform", "2:4", "--device", "cpu"]))


def test_uniform_targets_leave_out_layers_the_type_does_not_fit() -> None:
    from autoprune.bench import uniform_targets
    from autoprune.config import LayerTarget
    from autoprune.groups import ChannelGraph

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),  # K = 72
                          nn.Conv2d(6, 5, 1), nn.ReLU(), nn.Conv2d(5, 4, 1),  # K = 6, then K = 5
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).eval()
    graph = ChannelGraph(model, torch.randn(1, 3, 8, 8))
    skipped: list[str] = []
    targets = uniform_targets(graph, LayerTarget("2:4"), skipped)
    assert list(targets) == ["2"]  # the first conv reads the input; 4 and 6 do not fit 2:4
    assert len(skipped) == 2 and "layer '4'" in skipped[0] and "K=6" in skipped[0]
    assert set(uniform_targets(graph, LayerTarget("filter", 0.5))) == {"2", "4", "6"}


def test_bench_json_filter(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--batch-size", "8", "--repeats", "5",
                 "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mac_ratio"] > 1.5 and r["param_ratio"] > 1.5
    rows = {layer["name"]: layer for layer in r["layers"]}
    assert rows["features.3"]["weight_shape_after"][0] == 32  # half of 64 filters are gone for real
    assert rows["features.0"]["weight_shape_after"] == [32, 1, 3, 3]  # the first conv is not pruned by --uniform
    # the speedup is the dense/compacted ratio of the two models' paired rounds, as reported
    dense_rounds, compact_rounds = r["dense"]["latency"]["rounds_ms"], r["compacted"]["latency"]["rounds_ms"]
    assert len(dense_rounds) == len(compact_rounds) >= 3
    assert r["measured_speedup"] == pytest.approx(statistics.median(
        [d / c for d, c in zip(dense_rounds, compact_rounds)]))
    assert (tmp_path / "runs" / "latency_cache.json").is_file()
    assert r["settings"]["channels_last"] and r["settings"]["fold_bn"]  # the deployed form by default


def test_bench_channel_multiple_rounds_kept_filters(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 30% of 64 filters leaves 45; rounded to a multiple of 8: 48
    assert main(["bench", "--model", "digits-cnn", "--uniform", "filter:0.3", "--batch-size", "8", "--repeats", "3",
                 "--device", "cpu", "--channel-multiple", "8", "--no-fold-bn", "--no-channels-last", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = {layer["name"]: layer for layer in r["layers"]}
    assert rows["features.3"]["weight_shape_after"][0] == 48
    assert r["settings"]["channel_multiple"] == 8
    assert not r["settings"]["fold_bn"] and not r["settings"]["channels_last"]
    assert r["dense"]["latency"]["fold_bn"] is False


@pytest.mark.slow
def test_bench_of_a_torchvision_model_uses_its_native_input(capsys, tmp_path, monkeypatch):
    # no --dataset: tv:alexnet gets 3×224×224; digits' 1×8×8 failed ("Output size is too small")
    import autoprune.cli as cli

    monkeypatch.chdir(tmp_path)
    measured = []  # what the bench measured, beside what the table prints from it

    def bench(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        measured.append(run_bench(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(cli, "run_bench", bench)
    assert main(["bench", "--model", "tv:alexnet", "--uniform", "shape:0.8", "--batch-size", "1", "--repeats", "3",
                 "--device", "cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "input 3x224x224 (tv:alexnet's native input)" in out
    [r] = measured
    assert r["input_shape"] == [3, 224, 224]
    # the speedup is the paired rounds' dense/compacted ratio, or 1.0 where nothing changed form;
    # the table prints that figure and the MAC ratio (shape 80% on every conv but the first: far fewer MACs)
    dense_rounds, compact_rounds = r["dense"]["latency"]["rounds_ms"], r["compacted"]["latency"]["rounds_ms"]
    assert r["measured_speedup"] == pytest.approx(statistics.median(
        [d / c for d, c in zip(dense_rounds, compact_rounds)]))
    assert r["speedup"] == (1.0 if r["unchanged"] else r["measured_speedup"])
    assert r["mac_ratio"] == pytest.approx(r["dense"]["macs_dense"] / r["compacted"]["macs"])
    assert r["mac_ratio"] > 2
    assert f"speedup {r['speedup']:.2f}x MAC ratio {r['mac_ratio']:.2f}x" in out
    assert ("no layer changed form" in out) == r["unchanged"]


def test_bench_table_keeps_long_names_and_prints_notes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")  # as in a pipe or a CI log
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet20\ndataset: digits\nlayers:\n  layer1.0.conv2: {type: filter, rate: 0.5}\n"
                   "  layer1.1.conv2: {type: filter, rate: 0.3}\n")
    assert main(["bench", "--config", str(cfg), "--batch-size", "4", "--repeats", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("spread ") == 2  # dense and compacted: median, p90 and spread
    assert "…" not in out  # long layer names and shapes wrap instead of being cut short
    assert "share coupled channels" in out and "highest rate asked (0.5)" in out.replace("\n", " ")


@pytest.mark.parametrize(("capability", "block", "kept"), [("AVX512", 16, 48), ("AVX2", 8, 48), ("DEFAULT", 1, 45)])
def test_bench_rounds_to_the_cpus_channel_block_by_default(capsys, tmp_path, monkeypatch, capability, block, kept):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert main(["bench", "--model", "digits-cnn", "--uniform", "filter:0.3", "--batch-size", "4", "--repeats", "3",
                 "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = {layer["name"]: layer for layer in r["layers"]}
    assert r["settings"]["channel_multiple"] == block
    assert rows["features.3"]["weight_shape_after"][0] == kept  # 64 filters less 30%: 45, or 48 in blocks of 8 or 16
    assert rows["features.7"]["weight_shape_after"][0] == {16: 96, 8: 88, 1: 90}[block]  # 128 less 30%: 90


_HEAP = """
import ctypes, json, sys, torch
from autoprune.latency import steady_allocator

libc = ctypes.CDLL("libc.so.6")
info = getattr(libc, "mallinfo2", None) or libc.mallinfo  # mallinfo2: glibc 2.33 and later

class Info(ctypes.Structure):  # struct mallinfo2 (size_t fields) or mallinfo (int fields)
    _fields_ = [(n, ctypes.c_size_t if info is getattr(libc, "mallinfo2", None) else ctypes.c_int)
                for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                          "fordblks", "keepcost")]

info.restype = Info

def heap():  # bytes in the heap (sbrk arena), in mmap'ed blocks, and free in the heap
    m = info()
    return {"heap": m.arena, "mapped": m.hblkhd, "free": m.fordblks}

libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "steady":
    assert steady_allocator()
out = {"before": heap()}
p = libc.malloc(41_000_000)  # a 41 MB block on top of everything
ctypes.memset(p, 1, 41_000_000)
out["alive"] = heap()
libc.free(p)
out["freed"] = heap()
x = torch.ones(41_000_000 // 4)  # a 41 MB activation: the same for torch's allocations
out["torch"] = heap()
print(json.dumps(out))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the steady allocator is glibc's")
def test_steady_allocator_keeps_large_blocks_in_the_heap():
    """What steady_allocator() promises, read from glibc's own accounts (mallinfo2), not from
    page-fault counts (which depend on the page size: transparent huge pages set to "always"
    turn ~10,000 faults per 41 MB into ~20)."""
    import subprocess
    import sys

    def heap(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    mb = 40_000_000
    default = heap("default")  # glibc's default: a block this large is mmap'ed, and unmapped when freed
    assert default["alive"]["mapped"] - default["before"]["mapped"] >= mb
    assert default["freed"]["mapped"] - default["before"]["mapped"] < mb
    assert default["torch"]["mapped"] - default["freed"]["mapped"] >= mb
    steady = heap("steady")  # steady: it comes from the heap, and stays there (free) when freed
    assert steady["alive"]["mapped"] - steady["before"]["mapped"] < mb
    assert steady["alive"]["heap"] - steady["before"]["heap"] >= mb
    assert steady["freed"]["heap"] >= steady["alive"]["heap"]  # not trimmed: the heap keeps it
    assert steady["freed"]["free"] - steady["alive"]["free"] >= mb
    assert steady["torch"]["mapped"] - steady["freed"]["mapped"] < mb
    r = measure_latency(_net(8), (1, 8, 8), device=torch.device("cpu"), settings=QUICK)
    assert r.steady_memory  # a CPU measurement turns it on and says so


def test_the_least_timing_time_is_half_a_second_or_the_environments(monkeypatch) -> None:
    from autoprune.latency import TIMING_SECONDS_ENV, default_min_seconds

    monkeypatch.delenv(TIMING_SECONDS_ENV, raising=False)
    assert default_min_seconds() == 0.5 and LatencySettings().min_seconds == 0.5
    monkeypatch.setenv(TIMING_SECONDS_ENV, "0.05")
    assert LatencySettings().min_seconds == 0.05
    for bad in ("fast", "-1", "nan"):
        monkeypatch.setenv(TIMING_SECONDS_ENV, bad)
        with pytest.raises(UserError, match=f"AUTOPRUNE_TIMING_SECONDS='{bad}' is not a number of seconds >= 0"):
            default_min_seconds()
