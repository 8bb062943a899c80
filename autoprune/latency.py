"""Latency measured on the device — never estimated — with a cache keyed by architecture.

``measure_latency`` runs a model in inference mode with warm-up and repeats: on CPU with
a set thread count and ``time.perf_counter``; on CUDA with CUDA events after a
synchronisation. It reports the median, p90 and spread for a batch size and dtype
(fp32/fp16/bf16). It times the form a model is deployed in: a copy with BatchNorm folded
into the convs (:mod:`autoprune.fold`) and, for image inputs, channels-last memory format
(on this project's CPU, dense ``tv:resnet18`` at batch 32 went from 510–532 ms in NCHW to
329–348 ms; ``benchmarks/results/suite.md``, ablation table). Both can be turned
off in :class:`LatencySettings`. On CPU it times with a process allocator that keeps freed
memory (:func:`steady_allocator`), as deployed runtimes do, so that activations are not
page-faulted in again on every call. The caller's model is never modified.

This module is the ``torch`` (eager) runtime's timer and the statistics every runtime
shares: :func:`compare_calls` times any zero-argument calls side by side in interleaved
rounds (medians, p10/p90, per-round medians for :func:`latency_ratio`); the runtimes of
:mod:`autoprune.runtimes` (ONNX Runtime, compiled PyTorch) prepare their models their own
way and time them through it.

``LatencyCache`` stores results in a JSON file keyed by the model's architecture
fingerprint (module types, parameter shapes, kernel forms), the device, and the
measurement settings, so one configuration is measured once.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import write_text_atomic
from autoprune.errors import UserError
from autoprune.fold import fold_batchnorm

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the least time one measurement spends repeating calls (up to 10x its repeats): more is steadier
TIMING_SECONDS_ENV = "AUTOPRUNE_TIMING_SECONDS"


def default_min_seconds() -> float:
    """Seconds a latency measurement spends at least: 0.5, or ``$AUTOPRUNE_TIMING_SECONDS``
    (a smaller value makes quick runs, such as the test suite, faster and their timings noisier)."""
    raw = os.environ.get(TIMING_SECONDS_ENV)
    if raw is None or not raw.strip():
        return 0.5
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0.0):
        raise UserError(f"{TIMING_SECONDS_ENV}={raw!r} is not a number of seconds >= 0; unset it or give e.g. 0.5.")
    return value


@dataclass(frozen=True)
class LatencySettings:
    """How to measure."""

    batch_size: int = 32
    dtype: str = "fp32"
    channels_last: bool = True  # image inputs in channels-last memory format
    fold_bn: bool = True  # BatchNorm folded into the preceding conv, as deployed
    steady_memory: bool = True  # CPU: the process's allocator keeps freed memory (see steady_allocator)
    threads: int | None = None  # CPU threads (default: all of torch's current setting)
    warmup: int = 5
    repeats: int = 30
    # keep repeating until at least this much time was measured (up to 10x repeats): default_min_seconds()
    min_seconds: float = dataclasses.field(default_factory=default_min_seconds)
    # where the model is timed: a name of autoprune.runtimes' registry (torch = this module, eager)
    runtime: str = "torch"


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds per batch."""

    median_ms: float
    p90_ms: float
    p10_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    dtype: str
    device: str
    threads: int | None
    channels_last: bool
    fold_bn: bool = False
    steady_memory: bool = False  # measured with steady_allocator() in force
    rounds_ms: tuple[float, ...] = ()  # per-round medians when timed beside other models (compare_latency)
    runtime: str = "torch"  # the runtime that ran the model (autoprune.runtimes)

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative noise of the measurement."""
        return (self.p90_ms - self.p10_ms) / max(self.median_ms, 1e-12)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a name, refusing what the device cannot run."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of: {', '.join(DTYPES)}.")
    if device.type == "cpu" and dtype == "fp16":
        raise UserError("dtype fp16 is not supported for CPU inference here; use fp32 or bf16 on CPU, fp16 on CUDA.")
    if device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"this CUDA device ({torch.cuda.get_device_name(device)}) cannot run bf16; use fp16 or fp32.")
    return DTYPES[dtype]


_thread_lock = threading.Lock()


def percentile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def prepare_for_timing(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                       settings: LatencySettings) -> nn.Module:
    """A copy of ``model`` in the form that is timed: eval mode, BatchNorm folded (when
    ``settings.fold_bn``), on the device in the dtype, channels-last for image inputs."""

    dtype = check_dtype(settings.dtype, device)
    with torch.no_grad():  # not inference mode: the copy's parameters stay ordinary tensors
        if settings.fold_bn:
            ref = next((p for p in model.parameters()), None)
            example = torch.randn(2, *input_shape, device=ref.device if ref is not None else "cpu",
                                  dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
            model, _ = fold_batchnorm(model, example)
        else:
            model = copy.deepcopy(model).eval()
        model = model.to(device=device, dtype=dtype)
        if settings.channels_last and len(input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
    return model


def _input(input_shape: tuple[int, ...], device: torch.device, settings: LatencySettings) -> torch.Tensor:
    x = torch.randn(settings.batch_size, *input_shape, device=device, dtype=DTYPES[settings.dtype])
    if settings.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device,
    settings: LatencySettings = LatencySettings(),
) -> LatencyResult:
    """Time ``model`` (a prepared copy of it) on a batch of ``settings.batch_size`` inputs of ``input_shape`` (C, H, W)."""
    prepared = prepare_for_timing(model, input_shape, device=device, settings=settings)
    return _time_prepared(prepared, _input(input_shape, device, settings), device=device, settings=settings)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters
_steady: bool | None = None


def steady_allocator() -> bool:
    """Make this process's glibc malloc keep the memory it frees; True when in force.

    By default glibc serves every large block (a batch of activations) with a fresh
    ``mmap`` and unmaps it when freed, so every forward pass page-faults its activations in
    again: ``tv:resnet18`` at batch 32 took about 60,000 page faults per call on this
    project's CPU, some 20% of its time, and whether mid-sized tensors were mapped afresh
    depended on the process's history (a compacted model took 88 or 103 ms from one
    process to the next). Deployments avoid this (ONNX Runtime's arena, jemalloc or
    tcmalloc), so latency is measured without it: once per process, large blocks come from
    the heap and freed memory stays there (``mallopt(M_MMAP_MAX, 0)`` and a 2 GiB trim
    threshold). The process's resident memory then stays near its peak. False where the C
    library is not glibc (nothing is changed there).
    """
    global _steady
    if _steady is None:
        _steady = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _steady = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):
                pass
    return _steady


def steady_allocator_active() -> bool:
    """Whether :func:`steady_allocator` is in force in this process (it cannot be undone)."""
    return bool(_steady)


class _Measuring:
    """Hold the measurement lock and the CPU thread count (and allocator) for a block of timing."""

    def __init__(self, device: torch.device, settings: LatencySettings) -> None:
        self.device, self.settings = device, settings

    def __enter__(self) -> None:
        _thread_lock.acquire()
        if self.device.type == "cpu" and self.settings.steady_memory:
            steady_allocator()
        self.old = torch.get_num_threads()
        if self.device.type == "cpu" and self.settings.threads:
            torch.set_num_threads(self.settings.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)
        _thread_lock.release()


@torch.inference_mode()
def _samples(call: Callable[[], object], *, device: torch.device, settings: LatencySettings, warmup: int,
             cuda_events: bool = True) -> list[float]:
    """Milliseconds of each timed ``call()``, after ``warmup`` untimed ones (the caller holds
    :class:`_Measuring`). On CUDA with ``cuda_events``, CUDA events on torch's current stream
    time each call; otherwise the wall clock (a runtime whose calls return when done)."""
    times: list[float] = []
    for _ in range(warmup):
        call()
    events = device.type == "cuda" and cuda_events
    if events:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    total, limit = 0.0, settings.repeats * 10
    while len(times) < settings.repeats or (total < settings.min_seconds and len(times) < limit):
        if events:
            start.record()
            call()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            call()
            ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        total += ms / 1e3
    return times


def _summary(times: list[float], *, device: torch.device, settings: LatencySettings,
             rounds_ms: tuple[float, ...] = ()) -> LatencyResult:
    """Median, p10/p90 and minimum of the samples of one model."""
    s = sorted(times)
    return LatencyResult(
        median_ms=statistics.median(s),
        p90_ms=percentile(s, 0.9),
        p10_ms=percentile(s, 0.1),
        min_ms=s[0],
        repeats=len(s),
        batch_size=settings.batch_size,
        dtype=settings.dtype,
        device=device_description(device),
        threads=settings.threads if device.type == "cpu" else None,
        channels_last=settings.channels_last,
        fold_bn=settings.fold_bn,
        steady_memory=device.type == "cpu" and steady_allocator_active(),
        rounds_ms=rounds_ms,
        runtime=settings.runtime,
    )


def _time_prepared(model: nn.Module, x: torch.Tensor, *, device: torch.device,
                   settings: LatencySettings) -> LatencyResult:
    return measure_call(functools.partial(model, x), device=device, settings=settings)


def measure_call(call: Callable[[], object], *, device: torch.device, settings: LatencySettings,
                 cuda_events: bool = True) -> LatencyResult:
    """Time one zero-argument ``call`` (a prepared model bound to its input): ``settings.warmup``
    untimed calls, then ``settings.repeats`` timed ones (more until ``settings.min_seconds``)."""
    with _Measuring(device, settings):
        times = _samples(call, device=device, settings=settings, warmup=settings.warmup, cuda_events=cuda_events)
    return _summary(times, device=device, settings=settings)


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    *,
    device: torch.device,
    settings: LatencySettings = LatencySettings(),
    rounds: int | None = None,
) -> dict[str, LatencyResult]:
    """Measure several models side by side, in interleaved rounds.

    After ``settings.warmup`` calls each, every round times each model in turn (one
    untimed call to warm it again, then a few timed ones), so that drift of the machine
    (other load, clocks, memory bandwidth taken by neighbours) affects them alike. Each
    result pools all its samples and keeps its per-round medians in ``rounds_ms``, from
    which :func:`latency_ratio` pairs models round by round. ``rounds`` defaults to a
    third of ``settings.repeats`` (at least 3): on this project's CPU, ``tv:resnet18``'s
    dense/compacted ratio varied by 15% between processes timed in three rounds of ten
    calls, and by 3–5% between rounds of three calls within one process.
    """
    prepared = {name: prepare_for_timing(m, input_shape, device=device, settings=settings) for name, m in models.items()}
    x = _input(input_shape, device, settings)
    return compare_calls({name: functools.partial(m, x) for name, m in prepared.items()}, device=device,
                         settings=settings, rounds=rounds)


def compare_calls(calls: dict[str, Callable[[], object]], *, device: torch.device, settings: LatencySettings,
                  rounds: int | None = None, cuda_events: bool = True) -> dict[str, LatencyResult]:
    """:func:`compare_latency`'s interleaved rounds and statistics for zero-argument calls (each a
    prepared model bound to its input, in any runtime): the timer every runtime shares."""
    rounds = rounds or max(3, settings.repeats // 3)
    per_round = max(1, -(-settings.repeats // rounds))
    one = dataclasses.replace(settings, repeats=per_round, min_seconds=settings.min_seconds / rounds)
    samples: dict[str, list[float]] = {k: [] for k in calls}
    medians: dict[str, list[float]] = {k: [] for k in calls}
    with _Measuring(device, settings):
        for call in calls.values():
            _samples(call, device=device, settings=dataclasses.replace(one, repeats=0, min_seconds=0.0),
                     warmup=settings.warmup, cuda_events=cuda_events)
        for _ in range(rounds):
            for name, call in calls.items():
                times = _samples(call, device=device, settings=one, warmup=1, cuda_events=cuda_events)
                samples[name] += times
                medians[name].append(statistics.median(times))
    return {name: _summary(samples[name], device=device, settings=settings, rounds_ms=tuple(medians[name]))
            for name in calls}


def latency_ratio(a: LatencyResult, b: LatencyResult) -> float:
    """a's latency over b's. For two results of one :func:`compare_latency` call, the median
    of the per-round ratios (each pair timed moments apart, so slow drift of the machine
    cancels); otherwise the ratio of the medians."""
    if a.rounds_ms and len(a.rounds_ms) == len(b.rounds_ms):
        return statistics.median(x / max(y, 1e-12) for x, y in zip(a.rounds_ms, b.rounds_ms))
    return a.median_ms / max(b.median_ms, 1e-12)


def device_description(device: torch.device) -> str:
    """A stable human-readable name of the device (CPU model or GPU name)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{model}"


def architecture_fingerprint(model: nn.Module) -> str:
    """A hash of what determines speed: module types, their settings and parameter shapes."""
    parts = []
    for name, mod in model.named_modules():
        own = [(pn, tuple(p.shape)) for pn, p in mod.named_parameters(recurse=False)]
        own += [(bn, tuple(b.shape)) for bn, b in mod.named_buffers(recurse=False) if b is not None]
        extra = mod.extra_repr() if not list(mod.children()) else ""
        parts.append(f"{name}|{type(mod).__name__}|{extra}|{own}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _runtime_version(name: str) -> str:
    """``onnxruntime 1.31.1``: a runtime's name and version, for cache keys (a new version measures anew)."""
    from autoprune.runtimes import get_runtime  # the runtimes build on this module

    return f"{name} {get_runtime(name).version()}"


class LatencyCache:
    """A JSON file of latency results keyed by architecture, device and settings."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self._data: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        """What the file holds now: {} when there is none; a file that is not a JSON object
        (a crash of some other writer, a hand edit) is set aside as ``NAME.corrupt-TIME``
        with one warning, and measuring starts afresh."""
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"latency cache '{self.path}' cannot be read ({exc.strerror or exc}); not using it.",
                          stacklevel=3)
            return {}
        except ValueError:  # json.JSONDecodeError, UnicodeDecodeError
            pass
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:  # another worker set it aside first
            return {}
        warnings.warn(f"latency cache '{self.path}' is not valid JSON; set it aside as '{aside.name}' and measuring "
                      f"afresh.", stacklevel=3)
        return {}

    @staticmethod
    def key(fingerprint: str, device: torch.device, input_shape: tuple[int, ...], settings: LatencySettings) -> str:
        return "|".join([fingerprint, device_description(device), torch.__version__, str(tuple(input_shape)),
                         str(settings.batch_size), settings.dtype, str(settings.channels_last), str(settings.threads)]
                        + (["folded"] if settings.fold_bn else [])
                        + ([f"runtime={_runtime_version(settings.runtime)}"] if settings.runtime != "torch" else [])
                        + (["steady"] if settings.steady_memory and device.type == "cpu" else []))

    def get(self, key: str) -> LatencyResult | None:
        raw = self._data.get(key)
        if not isinstance(raw, dict):
            return None
        raw = {k: v for k, v in raw.items() if k not in ("spread", "extra", "rounds_ms")}
        try:
            return LatencyResult(**raw)
        except TypeError:  # an entry of another version or a hand edit: measure again
            return None

    def extra(self, key: str) -> dict | None:
        """What was stored beside a result (e.g. the kernels chosen), or None."""
        raw = self._data.get(key)
        return None if raw is None else raw.get("extra")

    def put(self, key: str, result: LatencyResult, extra: dict | None = None) -> None:
        entry = result.to_dict()
        entry.pop("rounds_ms", None)  # only meaningful beside the models it was timed with
        if extra is not None:
            entry["extra"] = extra
        self._data[key] = entry
        if self.path:
            # merge with what other processes wrote meanwhile, then replace atomically
            self._data = {**self._read(), **self._data}
            write_text_atomic(self.path, json.dumps(self._data, indent=1))

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> tuple[LatencyResult, bool]:
        """The cached result for this architecture, or a new measurement. Returns (result, was_cached)."""
        key = self.key(architecture_fingerprint(model), device, input_shape, settings)
        hit = self.get(key)
        if hit is not None:
            return hit, True
        if settings.runtime == "torch":
            result = measure_latency(model, input_shape, device=device, settings=settings)
        else:
            from autoprune.runtimes import get_runtime

            result = get_runtime(settings.runtime).measure(model, input_shape, device=device, settings=settings)
        self.put(key, result)
        return result, False
