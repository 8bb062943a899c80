"""Exported programs of a deployable model: ``model.pt2`` (``torch.export``) and
``model.onnx``, the check that they compute what the model computes, and
:func:`load_program`, which reads a ``model.pt2`` back without running code from the file.

This is what "export" means in autoprune (``autoprune export`` itself picks a search
trial's configuration: :mod:`autoprune.pick`).
"""

from __future__ import annotations

import copy
import math
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from autoprune.compact.kernels import CSRConv2d, CSRLinear, SemiStructuredConv2d, SemiStructuredLinear
from autoprune.deploy.archive import with_dense_kernels
from autoprune.errors import UserError, first_line, first_sentence
from autoprune.fold import fold_batchnorm
from autoprune.safeload import UnsafeFileError, no_code_loading

__all__ = ["ONNX_FILE", "ONNX_OPSET", "PT2_FILE", "UNEXPORTABLE_KERNELS", "ExportedModule", "check_programs",
           "export_onnx", "export_programs", "load_program"]

PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17

# Kernels that neither torch.export nor the ONNX exporter can trace (sparse tensors).
UNEXPORTABLE_KERNELS = (CSRLinear, CSRConv2d, SemiStructuredLinear, SemiStructuredConv2d)


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


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """Write ``model`` (as it is: fold and densify first) to ``path`` as ONNX: the TorchScript-based
    exporter (needs no onnxscript), opset 17, input ``input``, output ``logits``, dynamic batch; the
    dynamo exporter only where the first fails and onnxscript is installed. Also what the
    ``onnxruntime`` runtime (:mod:`autoprune.runtimes`) times."""
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
    exportable, densified = with_dense_kernels(model, UNEXPORTABLE_KERNELS)
    # the form latency was measured in: BatchNorm folded into the convs (autoprune.fold)
    exportable, result_folded = fold_batchnorm(exportable, x)
    note = None
    if densified:
        note = (f"layer{'s' if len(densified) > 1 else ''} {', '.join(densified)} exported as dense masked weights "
                f"(same outputs, no sparse speed-up): sparse CSR / semi-structured kernels cannot be exported")
    result: dict[str, Any] = {"folded_batchnorm": result_folded}
    for key, fn, path in (("pt2", _export_pt2, out / PT2_FILE), ("onnx", export_onnx, out / ONNX_FILE)):
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
        program = load_program(exports["pt2"])  # the way load_pruned reads it: no code from the file
        with torch.no_grad():
            got = program(x)
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


# -- reading a program back ------------------------------------------------------------------

# what a program's graph may call besides ATen / prims operators: arithmetic on sizes
_SIZE_FUNCTIONS = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.xor,
    operator.not_, operator.invert, operator.lshift, operator.rshift,
    math.floor, math.ceil, math.trunc, math.sqrt,
    torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not, torch.sym_ite, torch.sym_sqrt,
    torch.sym_sum,
})
_OPERATOR_NAMESPACES = ("aten", "prims")


class ExportedModule(nn.Module):
    """A saved ``torch.export`` program as a module, for inference: call it, move it, ``eval()``
    it. It runs as it was exported (eval mode, BatchNorm folded), so ``train()`` is refused:
    to train further, rebuild the model from your own class
    (``autoprune.load_pruned(folder, model=MyNet())``).

    Attributes:
        program: The program's module (``ExportedProgram.module()``).
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program.module()
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - what the program returns
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        if mode:
            raise UserError("this model is a torch.export program, for inference only; to train it further, "
                            "load it with autoprune.load_pruned(folder, model=YourNet()).")
        self.training = False
        return self


def _check_graph(program: torch.export.ExportedProgram, path: Path) -> None:
    """Refuse a program that takes anything but one tensor, or whose graph calls anything but
    ATen / prims operators and size arithmetic (what autoprune's programs hold)."""
    import torch.utils._pytree as pytree

    if program.call_spec.in_spec != pytree.tree_structure(((torch.empty(0),), {})):
        raise UnsafeFileError(f"'{path}' is a program that does not take one tensor, unlike the programs autoprune "
                              f"writes; load it yourself only if you trust where it came from.")
    for gm in (m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)):
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op == "call_function" and (
                    (isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))  # noqa: SLF001
                     and target.namespace in _OPERATOR_NAMESPACES)
                    or target in _SIZE_FUNCTIONS):
                continue
            raise UnsafeFileError(f"'{path}' is a program that calls {getattr(target, '__name__', target)!s:.60} "
                                  f"({node.op}), which autoprune does not run (it runs ATen operators only); load it "
                                  f"yourself only if you trust where it came from.")


def load_program(path: str | os.PathLike) -> ExportedModule:
    """Load a ``model.pt2`` written by :func:`export_programs`, running no code from the file.

    ``torch.export.load`` alone unpickles any payload the file marks as pickled and parses its
    shape expressions with ``eval``; here it runs inside
    :func:`autoprune.safeload.no_code_loading` (tensors only, arithmetic only), and the graph
    is then checked to call only ATen / prims operators and size arithmetic, taking one tensor.

    Returns:
        The program as an :class:`ExportedModule` (CPU, inference only).

    Raises:
        UserError: the file is missing or not a torch.export program.
        UnsafeFileError: the file holds a pickled object, a shape expression that is not
            arithmetic, or a graph that calls other Python functions.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist.")
    try:
        with no_code_loading(path):
            program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        cause: BaseException | None = exc
        while cause is not None:  # a refusal, even where torch wrapped it in an error of its own
            if isinstance(cause, UnsafeFileError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise UserError(f"'{path}' cannot be read as a torch.export program ({first_sentence(exc)}).") from None
    _check_graph(program, path)
    with no_code_loading(path):
        return ExportedModule(program)
