"""Exported programs of a deployable model: ``model.pt2`` (``torch.export``) and
``model.onnx``, and the check that they compute what the model computes.

This is what "export" means in autoprune (``autoprune export`` itself picks a search
trial's configuration: :mod:`autoprune.pick`).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from autoprune.compact.kernels import CSRConv2d, CSRLinear, SemiStructuredConv2d, SemiStructuredLinear
from autoprune.deploy.archive import with_dense_kernels
from autoprune.errors import first_line
from autoprune.fold import fold_batchnorm

__all__ = ["ONNX_FILE", "ONNX_OPSET", "PT2_FILE", "check_programs", "export_programs"]

PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17

# Kernels that neither torch.export nor the ONNX exporter can trace (sparse tensors).
_UNEXPORTABLE = (CSRLinear, CSRConv2d, SemiStructuredLinear, SemiStructuredConv2d)


def _export_pt2(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """torch.export with a dynamic batch dimension (falling back to the example's batch)."""
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=65536)},))
        batch = "dynamic"
    except Exception:  # noqa: BLE001 - some graphs specialise the batch; try it fixed
        program = torch.export.export(model, (x,))
        batch = f"fixed {x.shape[0]}"
    torch.export.save(program, str(path))
    return batch


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """The TorchScript-based ONNX exporter (needs no onnxscript), dynamic batch; the dynamo
    exporter only where the first fails and onnxscript is installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings, the exporter's deprecation notice
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                              dynamo=False)
            return "dynamic"
        except Exception as first:  # noqa: BLE001
            try:
                import onnxscript  # noqa: F401 - optional: only the dynamo exporter needs it
            except ImportError:
                raise first from None
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: Dim("batch")},), dynamo=True)
            return "dynamic"


def export_programs(model: nn.Module, example_input: torch.Tensor, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``model.pt2`` (``torch.export.save``) and ``model.onnx`` into ``out_dir``.

    Both are exported from a CPU float32 copy of ``model`` with a dynamic batch dimension
    (``example_input`` should have a batch of at least 2: torch.export specialises sizes 0
    and 1). The ONNX file comes from the TorchScript-based exporter (``dynamo=False``,
    opset 17), which needs no ``onnxscript``; the dynamo exporter is tried only when that
    fails and ``onnxscript`` is installed.

    What exports, measured with torch 2.13: dense layers and the shape-wise gather kernel
    (:class:`~autoprune.compact.kernels.ShapeSparseConv2d`, traced as one ``index_select``)
    export to both. Sparse CSR layers do not (torch.export's fake tensors cannot build a
    CSR tensor; ONNX has no ``aten::sparse_compressed_tensor``), nor do semi-structured
    ones: those layers are exported as their dense masked equivalent (their ``to_dense()``:
    same outputs, no sparse speed-up) and a note says so. BatchNorms that follow a conv are
    folded into it first (:func:`autoprune.fold.fold_batchnorm`), the form latency is
    measured in. An exporter that still fails does not raise: its entry says
    ``"skipped: <reason>"``.

    Returns:
        ``{"pt2": Path | "skipped: ...", "onnx": Path | "skipped: ...", "folded_batchnorm": int,
        "pt2_batch"/"onnx_batch": "dynamic" | "fixed N", "pt2_note"/"onnx_note": str}``
        (the notes only where layers were exported densely).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval()
    x = example_input.detach().cpu().float()
    exportable, densified = with_dense_kernels(model, _UNEXPORTABLE)
    # the form latency was measured in: BatchNorm folded into the convs (autoprune.fold)
    exportable, result_folded = fold_batchnorm(exportable, x)
    note = None
    if densified:
        note = (f"layer{'s' if len(densified) > 1 else ''} {', '.join(densified)} exported as dense masked weights "
                f"(same outputs, no sparse speed-up): sparse CSR / semi-structured kernels cannot be exported")
    result: dict[str, Any] = {"folded_batchnorm": result_folded}
    for key, fn, path in (("pt2", _export_pt2, out / PT2_FILE), ("onnx", _export_onnx, out / ONNX_FILE)):
        try:
            result[f"{key}_batch"] = fn(exportable, x, path)
        except Exception as exc:  # noqa: BLE001 - an exporter failing must not lose the build
            path.unlink(missing_ok=True)
            result[key] = f"skipped: {first_line(exc, with_type=True)}"
            continue
        result[key] = path
        if note:
            result[f"{key}_note"] = note
    return result


def check_programs(exports: dict[str, Any], model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Run the programs :func:`export_programs` wrote on ``x`` and compare them with ``model``.

    Returns:
        ``pt2_max_abs_diff`` and ``onnx_max_abs_diff`` for the programs written (ONNX with
        onnxruntime; without it, ``onnxruntime`` says the file was not checked).

    Raises:
        RuntimeError: a program's outputs differ from the model's (a bug).
    """
    x = x.cpu().float()
    with torch.no_grad():
        ref = copy.deepcopy(model).cpu().float().eval()(x)
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    checks: dict[str, Any] = {}
    if isinstance(exports.get("pt2"), Path):
        program = torch.export.load(str(exports["pt2"]))
        with torch.no_grad():
            got = program.module()(x)
        checks["pt2_max_abs_diff"] = float((got - ref).abs().max())
        if checks["pt2_max_abs_diff"] > tol:
            raise RuntimeError(f"the torch.export program differs from the model by {checks['pt2_max_abs_diff']:.3g}.")
    if isinstance(exports.get("onnx"), Path):
        try:
            import onnxruntime as ort  # optional and heavy: a test dependency
        except ImportError:
            checks["onnxruntime"] = "not installed: ONNX output not checked"
        else:
            session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            checks["onnx_max_abs_diff"] = float(abs(got - ref.numpy()).max())
            if checks["onnx_max_abs_diff"] > tol:
                raise RuntimeError(f"the ONNX model (onnxruntime) differs from the model by "
                                   f"{checks['onnx_max_abs_diff']:.3g}.")
    return checks
