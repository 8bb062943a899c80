"""``onnxruntime``: the model exported to ONNX as the deployable folder exports it
(:func:`autoprune.deploy.programs.export_onnx`), run by an ONNX Runtime session.

CPU: ``CPUExecutionProvider`` with as many intra-op threads as torch uses (or
``LatencySettings.threads``), sequential execution, all graph optimisations. CUDA:
``CUDAExecutionProvider`` where the installed build has it, the input bound on the GPU and the
output left there (I/O binding), so no host copies are timed. fp32 only.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.latency import LatencySettings
from autoprune.runtimes._base import Prepared, Runtime, cpu_threads, register_runtime


def _ort() -> Any:  # noqa: ANN401 - the module
    import onnxruntime

    return onnxruntime


def exported_onnx(model: nn.Module, input_shape: tuple[int, ...], settings: LatencySettings) -> bytes:
    """``model`` as the deployable folder exports it to ONNX: sparse kernels as their dense
    equivalents, BatchNorm folded (when ``settings.fold_bn``), a dynamic batch."""
    from autoprune.deploy.archive import with_dense_kernels  # deploy builds on the runtimes
    from autoprune.deploy.programs import UNEXPORTABLE_KERNELS, export_onnx
    from autoprune.fold import fold_batchnorm

    model = copy.deepcopy(model).cpu().float().eval()
    model, _ = with_dense_kernels(model, UNEXPORTABLE_KERNELS)
    example = torch.randn(max(2, settings.batch_size), *input_shape)
    if settings.fold_bn:
        model, _ = fold_batchnorm(model, example)
    with tempfile.TemporaryDirectory(prefix="autoprune-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example, path)
        return path.read_bytes()


def exported_session(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                     settings: LatencySettings) -> Any:  # noqa: ANN401 - an onnxruntime.InferenceSession
    """An ONNX Runtime session of ``model`` exported by :func:`exported_onnx`."""
    return onnx_session(exported_onnx(model, input_shape, settings), device=device, settings=settings)


def onnx_session(data: bytes, *, device: torch.device, settings: LatencySettings) -> Any:  # noqa: ANN401
    """An ONNX Runtime session of an ONNX model (its bytes), set up as every timing here is."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if device.type == "cuda":
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(data, sess_options=options, providers=providers)


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime: CPU execution provider, or its CUDA provider where the installed build has it."""

    name = "onnxruntime"
    description = "ONNX Runtime (CPU provider; CUDA provider where installed): the model exported to ONNX, fp32"
    install = 'pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA), or pip install -e ".[onnxruntime]"'
    # shape-wise gather-GEMM exports as index_select + MatMul; CSR / 2:4 layers would run densely
    kernel_forms = frozenset({"dense", "shape-gemm"})
    torch_layout = False  # ONNX Runtime picks its own layout and keeps its own memory arena

    def missing(self) -> str | None:
        try:
            _ort()
        except ImportError:
            return f"onnxruntime is not installed; {self.install}."
        return None

    def version(self) -> str:
        return str(_ort().__version__)

    def unsupported(self, device: torch.device, dtype: str) -> str | None:
        if dtype != "fp32":
            return f"autoprune times ONNX models in fp32 only (got {dtype}); use --dtype fp32."
        if device.type == "cuda" and "CUDAExecutionProvider" not in _ort().get_available_providers():
            return ("this onnxruntime build has no CUDAExecutionProvider; install onnxruntime-gpu, or measure on "
                    "--device cpu.")
        if device.type not in ("cpu", "cuda"):
            return f"device type '{device.type}' is not one ONNX Runtime runs here (cpu, cuda)."
        return None

    def describe(self, device: torch.device, settings: LatencySettings) -> str:
        if device.type == "cuda":
            return f"onnxruntime {self.version()}, CUDAExecutionProvider"
        return f"onnxruntime {self.version()}, CPUExecutionProvider, {cpu_threads(settings)}"

    program_file = "model.onnx"

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> Prepared:
        return _prepared(exported_session(model, input_shape, device=device, settings=settings), input_shape,
                         device=device, settings=settings)

    def prepare_file(self, path: Path, input_shape: tuple[int, ...], *, device: torch.device,
                     settings: LatencySettings) -> Prepared:
        return _prepared(onnx_session(Path(path).read_bytes(), device=device, settings=settings), input_shape,
                         device=device, settings=settings)


def _prepared(session: Any, input_shape: tuple[int, ...], *, device: torch.device,  # noqa: ANN401
              settings: LatencySettings) -> Prepared:
    """A session bound to a timing batch of ``settings.batch_size`` random inputs, run once."""
    name = session.get_inputs()[0].name
    x = torch.randn(settings.batch_size, *input_shape)

    def infer(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: inp.detach().cpu().float().numpy()})[0])

    if device.type == "cuda":
        import numpy as np

        xd = x.to(device)
        binding = session.io_binding()
        binding.bind_input(name=name, device_type="cuda", device_id=device.index or 0, element_type=np.float32,
                           shape=tuple(xd.shape), buffer_ptr=xd.data_ptr())
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", device.index or 0)

        def run() -> object:
            session.run_with_iobinding(binding)  # returns when the GPU is done
            return xd  # keeps the bound input alive

    else:
        feed = {name: x.numpy()}

        def run() -> object:
            return session.run(None, feed)

    run()  # the first run allocates the session's buffers
    return Prepared(run=run, infer=infer, cuda_events=False)
