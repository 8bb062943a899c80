"""``torch``: PyTorch eager, the default — :mod:`autoprune.latency` as it always timed."""

from __future__ import annotations

import functools

import torch
from torch import nn

from autoprune.device import channel_block
from autoprune.latency import (
    DTYPES,
    LatencyResult,
    LatencySettings,
    _input,
    compare_latency,
    measure_latency,
    prepare_for_timing,
)
from autoprune.runtimes._base import Prepared, Runtime, cpu_threads, register_runtime


def prepared_call(fn: nn.Module, x: torch.Tensor, *, device: torch.device, settings: LatencySettings) -> Prepared:
    """``fn`` (a module prepared as :func:`prepare_for_timing` prepares it, or its compiled form)
    timed on ``x``; ``infer`` moves any input to its device, dtype and memory format."""

    @torch.inference_mode()
    def infer(inp: torch.Tensor) -> torch.Tensor:
        inp = inp.to(device=device, dtype=DTYPES[settings.dtype])
        if settings.channels_last and inp.ndim == 4:
            inp = inp.contiguous(memory_format=torch.channels_last)
        return fn(inp).float().cpu()

    return Prepared(run=functools.partial(fn, x), infer=infer)


@register_runtime
class TorchRuntime(Runtime):
    """PyTorch eager on the device: BatchNorm folded and channels-last as
    :class:`~autoprune.latency.LatencySettings` say, CUDA events on CUDA, torch's threads on CPU."""

    name = "torch"
    description = "PyTorch eager (the default): BatchNorm folded, channels-last, torch's threads"

    def describe(self, device: torch.device, settings: LatencySettings) -> str:
        threads = f", {cpu_threads(settings)}" if device.type == "cpu" else ""
        return f"torch {torch.__version__} eager{threads}"

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> Prepared:
        prepared = prepare_for_timing(model, input_shape, device=device, settings=settings)
        return prepared_call(prepared, _input(input_shape, device, settings), device=device, settings=settings)

    def channel_block(self, device: torch.device, settings: LatencySettings, log=None) -> int:  # noqa: ANN001
        """The device's block (:func:`autoprune.device.channel_block`: the CPU's vector width,
        measured in eager torch in ``benchmarks/results/channel_steps.md``)."""
        return channel_block(torch.device(device), settings.dtype)

    # today's functions, unchanged: the torch runtime *is* autoprune.latency
    def compare(self, models: dict[str, nn.Module], input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings, rounds: int | None = None) -> dict[str, LatencyResult]:
        return compare_latency(models, input_shape, device=device, settings=settings, rounds=rounds)

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> LatencyResult:
        return measure_latency(model, input_shape, device=device, settings=settings)
