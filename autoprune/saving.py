"""Saving and loading a compacted user model: :class:`Deployable`, :func:`save_pruned`,
:func:`load_pruned`. Light on purpose: loading needs torch and autoprune's kernels, not the
search, Optuna or MLflow.

A user model's folder holds ``module.pt`` (the module pickled whole, so its class must be
importable where it is loaded), ``model.pt2`` and ``model.onnx`` (checked against torch),
and ``report.json``. :func:`load_pruned` also reads the CLI's deployable folders
(``architecture.json`` + ``model.pt`` of registry models).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.atomic import staged_folder, write_text_atomic
from autoprune.errors import UserError

__all__ = ["MODULE_FILE", "Deployable", "load_pruned", "save_pruned"]

MODULE_FILE = "module.pt"  # a user model's compacted module, pickled whole (its class must be importable)
REPORT_FILE = "report.json"


@dataclass
class Deployable:
    """A compacted model: channels removed, each sparse layer in the kernel measured fastest.

    Attributes:
        model: The compacted model (a plain ``nn.Module``, float32, on ``device``).
        kernels: Layer -> the kernel form chosen (``dense``, ``shape-gemm``, ``csr``...).
        max_abs_diff: The largest output difference from the pruned (masked) model on the
            example inputs (float rounding; a larger one raises).
        speedup: Dense latency / compacted latency, measured side by side on ``device``.
        latency_ms: ``{"dense": ms, "pruned": ms}`` per batch of ``batch``.
        batch: The batch the latencies were measured at.
        device: Where it was measured.
        example_inputs: The example batch (export traces it).
    """

    model: nn.Module
    kernels: dict[str, str]
    max_abs_diff: float
    speedup: float
    latency_ms: dict[str, float]
    batch: int
    device: str
    example_inputs: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "max_abs_diff": self.max_abs_diff, "speedup": self.speedup,
                "latency_ms": self.latency_ms, "batch": self.batch, "device": self.device,
                "input_shape": list(self.example_inputs.shape[1:])}


def save_pruned(deployable: Deployable | nn.Module, out_dir: str | os.PathLike, *,
                example_inputs: torch.Tensor | None = None, onnx: bool = True) -> Path:
    """Write a compacted model into ``out_dir``: ``module.pt`` (the module pickled whole: its
    class must be importable where it is loaded), ``model.pt2`` and ``model.onnx`` (checked
    against torch on the example inputs; CSR layers export as dense masked weights), and
    ``report.json``.

    Raises:
        UserError: ``out_dir`` is a file or a non-empty folder; no example inputs for a bare module.
    """
    from autoprune.deploy.programs import check_programs, export_programs

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} exists and is not empty; pick another folder or remove it.")
    model = deployable.model if isinstance(deployable, Deployable) else deployable
    if not isinstance(model, nn.Module):
        raise UserError(f"save_pruned() takes what autoprune.make_deployable() returned (or an nn.Module), not "
                        f"{type(deployable).__name__}.")
    x = example_inputs if example_inputs is not None else getattr(deployable, "example_inputs", None)
    if onnx and x is None:
        raise UserError("save_pruned() needs example_inputs to export a bare module (or pass onnx=False).")
    with staged_folder(out) as tmp:
        cpu = copy.deepcopy(model).cpu().float().eval()
        torch.save(cpu, tmp / MODULE_FILE)
        report: dict[str, Any] = {"format": "autoprune-module/1", "class": f"{type(model).__module__}."
                                  f"{type(model).__qualname__}"}
        if isinstance(deployable, Deployable):
            report.update(deployable.to_dict())
        if onnx:
            xb = x.detach().cpu().float()
            xb = xb if xb.shape[0] >= 2 else torch.cat([xb, xb])
            exports = export_programs(cpu, xb, tmp)
            report["exports"] = {k: (str(Path(v).name) if isinstance(v, Path) else v) for k, v in exports.items()}
            report["checks"] = check_programs(exports, cpu, xb)
        write_text_atomic(tmp / REPORT_FILE, json.dumps(report, indent=2, default=str))
    return out


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Load a folder written by :func:`save_pruned` or by the CLI's deploy step
    (``architecture.json`` + ``model.pt``, registry models)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if (folder / MODULE_FILE).is_file():
        try:
            model = torch.load(folder / MODULE_FILE, weights_only=False, map_location="cpu")
        except (AttributeError, ModuleNotFoundError) as exc:
            raise UserError(f"{folder / MODULE_FILE} holds a model whose class cannot be imported here ({exc}); "
                            f"import the module that defines it first.") from None
        return model.eval()
    from autoprune.deploy import load_pruned as load_registry

    return load_registry(folder)
