"""Runtimes: where a model is prepared and timed — the seam every latency measurement goes through.

A runtime prepares a model the way it is deployed there (fold BatchNorm, export, build a
session or a compiled program) and times several prepared models side by side with the
interleaved rounds and statistics of :mod:`autoprune.latency` (medians, p10/p90, per-round
ratios), so a speedup means the same in every runtime.

Example:
    >>> import torch
    >>> from autoprune.runtimes import get_runtime, list_runtimes
    >>> list_runtimes()
    ['torch', 'onnxruntime', 'torch-compile']
    >>> get_runtime("onnxruntime").kernel_forms == {"dense", "shape-gemm"}
    True

Registered: ``torch`` (eager, the default), ``onnxruntime``, ``torch-compile``. A new runtime
(TensorRT, OpenVINO) is one module with a :class:`Runtime` subclass decorated by
:func:`register_runtime`, imported below. The module-level :func:`compare_latency` and
:func:`measure_latency` time in the runtime that ``settings.runtime`` names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from autoprune.latency import LatencyResult, LatencySettings, compare_calls
from autoprune.runtimes._base import (
    DEFAULT_RUNTIME,
    Prepared,
    Runtime,
    check_runtime,
    describe_runtimes,
    get_runtime,
    list_runtimes,
    register_runtime,
    unregister_runtime,
)

# Import order is registry order.
from autoprune.runtimes._torch import TorchRuntime  # isort: skip
from autoprune.runtimes._onnxruntime import OnnxRuntime  # isort: skip
from autoprune.runtimes._torch_compile import TorchCompileRuntime  # isort: skip
from autoprune.runtimes._openvino import OpenVinoRuntime  # isort: skip

__all__ = [
    "DEFAULT_RUNTIME",
    "LatencyResult",
    "LatencySettings",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "Prepared",
    "Runtime",
    "TorchCompileRuntime",
    "TorchRuntime",
    "check_runtime",
    "compare_latency",
    "describe_runtimes",
    "get_runtime",
    "list_runtimes",
    "measure_latency",
    "register_runtime",
    "time_saved_program",
    "unregister_runtime",
]


def compare_latency(models: dict[str, nn.Module], input_shape: tuple[int, ...], *, device: torch.device,
                    settings: LatencySettings = LatencySettings(),
                    rounds: int | None = None) -> dict[str, LatencyResult]:
    """Several models timed side by side in ``settings.runtime`` (interleaved rounds; see
    :func:`autoprune.latency.compare_latency`, which the default ``torch`` runtime is)."""
    return get_runtime(settings.runtime).compare(models, input_shape, device=device, settings=settings, rounds=rounds)


def time_saved_program(dense: nn.Module, folder: Path, input_shape: tuple[int, ...], *, device: torch.device,
                       settings: LatencySettings, rounds: int | None = None) -> dict[str, LatencyResult] | None:
    """The deployable folder's own exported program (``model.onnx`` for ONNX Runtime and OpenVINO)
    timed side by side with the dense model in ``settings.runtime``: ``{"dense", "saved"}``, or
    None where the runtime runs the model itself (``torch``, ``torch-compile``) or the folder
    lacks the file."""
    runtime = get_runtime(settings.runtime)
    path = None if runtime.program_file is None else Path(folder) / runtime.program_file
    if path is None or not path.is_file():
        return None
    settings = dataclasses.replace(settings, runtime=runtime.name)
    prepared = {"dense": runtime.prepare(dense, input_shape, device=device, settings=settings),
                "saved": runtime.prepare_file(path, input_shape, device=device, settings=settings)}
    return compare_calls({k: p.run for k, p in prepared.items()}, device=device, settings=settings, rounds=rounds,
                         cuda_events=all(p.cuda_events for p in prepared.values()))


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                    settings: LatencySettings = LatencySettings()) -> LatencyResult:
    """One model timed alone in ``settings.runtime``."""
    return get_runtime(settings.runtime).measure(model, input_shape, device=device, settings=settings)
