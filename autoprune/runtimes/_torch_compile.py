"""``torch-compile``: ``torch.compile`` with the inductor backend on the eval model with its
weights frozen (inductor's ``freezing``: weights become constants, folded where they can be),
static shapes — how PyTorch 2 users deploy without leaving Python.

The model is prepared as the ``torch`` runtime prepares it (BatchNorm folded, channels-last,
device and dtype), then compiled and run once (compiling takes seconds per model; a first
compile in a process, tens of seconds). On CPU inductor writes and builds C++: without a C++
compiler the runtime says so and is not used.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import nn

from autoprune.errors import first_line
from autoprune.latency import LatencySettings, _input, prepare_for_timing
from autoprune.runtimes._base import Prepared, Runtime, cpu_threads, register_runtime
from autoprune.runtimes._torch import prepared_call


@functools.cache
def _cpp_compiler_problem() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - inductor's own error names the compiler it looked for
        return (f"inductor needs a C++ compiler on CPU and found none ({first_line(exc, limit=160)}); "
                f"install g++ or set CXX.")
    return None


#: compiles of one forward's code dynamo keeps before it falls back to eager (default 8)
RECOMPILE_LIMIT = 4096


def _room_for_many_models() -> None:
    """Every model prepared here is another compile of the same ``forward`` code (one per
    module class), which dynamo counts against ``recompile_limit``: past its default of 8 it
    warns once and runs the model *eagerly*, so a search or a suite that times many
    configurations would time eager torch under this runtime's name. Raise the limits."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, RECOMPILE_LIMIT)


@register_runtime
class TorchCompileRuntime(Runtime):
    """torch.compile (inductor) on frozen eval weights."""

    name = "torch-compile"
    description = "torch.compile, inductor backend, frozen eval weights, static shapes"
    install = "it comes with torch >= 2.0; on CPU it needs a C++ compiler (g++), on CUDA triton"
    kernel_forms = frozenset({"dense", "shape-gemm"})  # sparse tensors do not compile

    def unsupported(self, device: torch.device, dtype: str) -> str | None:
        if device.type == "cpu":
            return _cpp_compiler_problem()
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "inductor needs triton on CUDA, which is not installed (it comes with the CUDA builds of torch)."
        return None

    def describe(self, device: torch.device, settings: LatencySettings) -> str:
        threads = f", {cpu_threads(settings)}" if device.type == "cpu" else ""
        return f"torch-compile {torch.__version__} inductor, frozen weights{threads}"

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> Prepared:
        _room_for_many_models()
        eager = prepare_for_timing(model, input_shape, device=device, settings=settings)
        for p in eager.parameters():
            p.requires_grad_(False)
        compiled = torch.compile(eager, backend="inductor", dynamic=False, options={"freezing": True})
        x = _input(input_shape, device, settings)
        with torch.inference_mode():
            compiled(x)  # compile now, not in the timed calls
        return prepared_call(compiled, x, device=device, settings=settings)
