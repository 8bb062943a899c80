"""``openvino``: the model exported to ONNX as the deployable folder exports it
(:func:`autoprune.runtimes._onnxruntime.exported_onnx`), compiled by OpenVINO for its CPU
plugin: the latency hint, as many inference threads as torch uses (or
``LatencySettings.threads``), fp32 inference precision (OpenVINO would otherwise run bf16 on
CPUs that have it), the input shape fixed at the latency batch. fp32, CPU only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.latency import LatencySettings
from autoprune.runtimes._base import Prepared, Runtime, cpu_threads, register_runtime
from autoprune.runtimes._onnxruntime import exported_onnx


def _ov() -> Any:  # noqa: ANN401 - the module
    import openvino

    return openvino


def compiled_model(model: nn.Module | bytes, input_shape: tuple[int, ...], *, batch: int | None,
                   settings: LatencySettings) -> Any:  # noqa: ANN401 - an openvino.CompiledModel
    """``model`` (a module, exported by :func:`exported_onnx`, or an ONNX model's bytes) compiled
    for OpenVINO's CPU plugin; ``batch`` fixes the input's batch (None: dynamic)."""
    ov = _ov()
    core = ov.Core()
    data = model if isinstance(model, bytes) else exported_onnx(model, input_shape, settings)
    graph = core.read_model(model=data, weights=b"")
    if batch is not None:
        graph.reshape({graph.inputs[0].any_name: [batch, *input_shape]})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
              "INFERENCE_NUM_THREADS": int(settings.threads or torch.get_num_threads())}
    return core.compile_model(graph, "CPU", config)


@register_runtime
class OpenVinoRuntime(Runtime):
    """OpenVINO on the CPU: the model exported to ONNX and compiled by OpenVINO, fp32."""

    name = "openvino"
    description = "OpenVINO (CPU plugin): the model exported to ONNX, compiled for the latency hint, fp32"
    install = 'pip install openvino, or pip install -e ".[openvino]"'
    # shape-wise gather-GEMM exports as Gather + MatMul; CSR / 2:4 layers would run densely
    kernel_forms = frozenset({"dense", "shape-gemm"})
    torch_layout = False  # OpenVINO picks its own layout and memory

    def missing(self) -> str | None:
        try:
            _ov()
        except ImportError:
            return f"openvino is not installed; {self.install}."
        return None

    def version(self) -> str:
        return str(_ov().__version__).split("-")[0]

    def unsupported(self, device: torch.device, dtype: str) -> str | None:
        if device.type != "cpu":
            return (f"autoprune runs OpenVINO on its CPU plugin only (got --device {device}); measure on --device "
                    f"cpu, or use --runtime onnxruntime or torch on {device.type}.")
        if dtype != "fp32":
            return f"autoprune times OpenVINO models in fp32 only (got {dtype}); use --dtype fp32."
        return None

    def describe(self, device: torch.device, settings: LatencySettings) -> str:
        return f"openvino {self.version()}, CPU plugin, {cpu_threads(settings)}"

    program_file = "model.onnx"

    def prepare_file(self, path: Path, input_shape: tuple[int, ...], *, device: torch.device,
                     settings: LatencySettings) -> Prepared:
        return self.prepare(Path(path).read_bytes(), input_shape, device=device, settings=settings)

    def prepare(self, model: nn.Module | bytes, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> Prepared:
        timed = compiled_model(model, input_shape, batch=settings.batch_size, settings=settings)
        dynamic: list[Any] = []  # compiled on first use: for outputs at other batch sizes
        request = timed.create_infer_request()
        x = torch.randn(settings.batch_size, *input_shape).numpy()

        def infer(inp: torch.Tensor) -> torch.Tensor:
            arr = inp.detach().cpu().float().numpy()
            if arr.shape[0] == settings.batch_size:
                return torch.from_numpy(timed(arr)[timed.output(0)].copy())
            if not dynamic:
                dynamic.append(compiled_model(model, input_shape, batch=None, settings=settings))
            return torch.from_numpy(dynamic[0](arr)[dynamic[0].output(0)].copy())

        def run() -> object:
            request.infer({0: x})
            return request

        run()  # the first inference allocates the plugin's buffers
        return Prepared(run=run, infer=infer, cuda_events=False)
