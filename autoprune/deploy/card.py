"""The deployable model's report card: :class:`DeployReport`, written as ``report.json``
(:meth:`DeployReport.to_dict`) and ``report.md`` (:func:`card_markdown`).

``report.json`` holds accuracy, latency, MACs and parameters of the dense and the
deployable model side by side, the kernel chosen per layer, the checks the build ran, the
exported programs and the files of the folder. Its keys are a file format: they change only
with a new format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoprune.atomic import write_text_atomic
from autoprune.latency import LatencyResult
from autoprune.saving import REPORT_FILE
from autoprune.text import percent

__all__ = [
    "REPORT_FILE",
    "REPORT_MD_FILE",
    "Checks",
    "DenseFigures",
    "DeployReport",
    "LayerRow",
    "ProgramEntry",
    "PrunedFigures",
    "card_markdown",
    "write_card",
]

REPORT_MD_FILE = "report.md"


@dataclass(frozen=True)
class DenseFigures:
    """The dense baseline: accuracy from the prune run, latency timed beside the pruned model."""

    val_acc: float
    test_acc: float
    latency_ms: float
    latency_p90_ms: float
    macs: int  # per sample
    params: int


@dataclass(frozen=True)
class PrunedFigures:
    """The deployable model, with the masked model's accuracy beside its own."""

    val_acc: float
    test_acc: float
    masked_val_acc: float
    masked_test_acc: float
    latency_ms: float
    latency_p90_ms: float
    macs: int  # per sample, zero weights skipped
    params: int  # stored: parameters plus the values of CSR weights
    params_nonzero: int


@dataclass(frozen=True)
class LayerRow:
    """One pruned layer: its target and achieved sparsity, and what it became."""

    name: str
    kind: str
    type: str
    rate: float | None
    sparsity: float
    weight_shape: list[int]
    module_after: str  # the module's class in the deployable model
    spec_after: dict[str, Any] | None  # its constructor arguments (architecture.json's spec)
    kernel: str  # the form chosen: dense, shape-gemm, csr, semi-structured
    candidates_ms: dict[str, float]  # what each form measured (empty when not timed)
    macs_dense: int
    macs: int


@dataclass(frozen=True)
class ProgramEntry:
    """One exported program (``pt2``, ``onnx``): its file, or why it was skipped."""

    file: str | None
    batch: str | None = None  # "dynamic" or "fixed N"
    batchnorms_folded: int | None = None
    note: str | None = None  # which layers went out as dense masked weights
    skipped: str | None = None

    @classmethod
    def from_export(cls, key: str, exports: dict[str, Any]) -> ProgramEntry:
        """The entry for ``key`` of what :func:`~autoprune.deploy.export_programs` returned."""
        value = exports.get(key)
        if not isinstance(value, Path):
            return cls(file=None, skipped=str(value))
        return cls(file=value.name, batch=exports.get(f"{key}_batch"),
                   batchnorms_folded=exports.get("folded_batchnorm", 0), note=exports.get(f"{key}_note"))

    def to_dict(self) -> dict[str, Any]:
        if self.file is None:
            return {"file": None, "skipped": self.skipped}
        out: dict[str, Any] = {"file": self.file, "batch": self.batch, "batchnorms_folded": self.batchnorms_folded}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Checks:
    """How far the deployable model and its programs are from the masked model (max |diff|)."""

    masked_max_abs_diff: float
    reloaded_test_acc: float
    pt2_max_abs_diff: float | None = None
    onnxruntime: str | None = None  # why the ONNX file was not checked
    onnx_max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DeployReport:
    """The report card of a deployable folder: what :func:`~autoprune.deploy.build_deployable`
    measured and wrote, carried by the :class:`~autoprune.saving.Deployable` it returns
    (``deployable.report``).

    :meth:`to_dict` is ``report.json``.
    """

    model: str
    dataset: str
    checkpoint: str
    method: str
    device: str
    device_description: str
    dtype: str  # what the kernels were chosen and timed in
    stored_dtype: str  # what the weights are stored in
    batch_size: int
    channels_last: bool
    fold_bn: bool
    steady_memory: bool
    dense: DenseFigures
    pruned: PrunedFigures
    speedup: float  # median of the per-round dense/pruned latency ratios
    mac_ratio: float
    param_ratio: float
    dense_latency: LatencyResult
    pruned_latency: LatencyResult
    kernels_reverted: bool  # the per-layer kernels were slower as a whole and were undone
    layers: list[LayerRow]
    checks: Checks
    exports: dict[str, ProgramEntry]
    files: dict[str, str]  # role -> file name in the folder
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    runtime: str = "torch"  # where both were timed (autoprune.runtimes)
    runtime_detail: str = ""  # e.g. "onnxruntime 1.31.1, CPUExecutionProvider, 2 threads"
    # the folder's own exported program timed in the runtime beside dense, where the runtime runs a
    # file ({"file", "speedup", "dense_ms", "saved_ms", "runtime_detail", "batch"}; None: torch, torch-compile)
    saved_program: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``report.json`` as plain data."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "method": self.method,
            "device": self.device,
            "device_description": self.device_description,
            "dtype": self.dtype,
            "stored_dtype": self.stored_dtype,
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "fold_bn": self.fold_bn,
            "steady_memory": self.steady_memory,
            "runtime": self.runtime,
            "runtime_detail": self.runtime_detail,
            "dense": asdict(self.dense),
            "pruned": asdict(self.pruned),
            "accuracy_drop": {"val": self.dense.val_acc - self.pruned.val_acc,
                              "test": self.dense.test_acc - self.pruned.test_acc},
            "speedup": self.speedup,
            "mac_ratio": self.mac_ratio,
            "param_ratio": self.param_ratio,
            "latency": {"dense": self.dense_latency.to_dict(), "pruned": self.pruned_latency.to_dict()},
            "kernels_reverted": self.kernels_reverted,
            "layers": [asdict(row) for row in self.layers],
            "checks": self.checks.to_dict(),
            "exports": {key: entry.to_dict() for key, entry in self.exports.items()},
            "files": dict(self.files),
            "notes": list(self.notes),
            "seconds": self.seconds,
        }
        if self.saved_program is not None:
            out["saved_program"] = dict(self.saved_program)
        return out


def write_card(report: DeployReport, folder: Path) -> None:
    """``report.json`` and ``report.md`` into ``folder``."""
    write_text_atomic(folder / REPORT_FILE, json.dumps(report.to_dict(), indent=2, default=str))
    write_text_atomic(folder / REPORT_MD_FILE, card_markdown(report))


def card_markdown(r: DeployReport) -> str:
    """``report.md``: the report in a few lines of markdown."""
    d, p = r.dense, r.pruned

    def pct(v: float | None) -> str:
        return percent(v, missing="n/a")

    lines = [
        f"# {r.model} on {r.dataset}: deployable pruned model",
        "",
        f"Measured on {r.device_description}{f' in {r.runtime_detail}' if r.runtime_detail else ''}, "
        f"batch {r.batch_size}, {r.dtype} "
        f"(weights stored in {r.stored_dtype}).",
        "",
        "| | dense | pruned |",
        "|---|---|---|",
        f"| test accuracy | {pct(d.test_acc)} | {pct(p.test_acc)} |",
        f"| validation accuracy | {pct(d.val_acc)} | {pct(p.val_acc)} |",
        f"| latency median (ms/batch) | {d.latency_ms:.3f} | {p.latency_ms:.3f} |",
        f"| latency p90 (ms/batch) | {d.latency_p90_ms:.3f} | {p.latency_p90_ms:.3f} |",
        f"| MACs per sample | {d.macs:,} | {p.macs:,} |",
        f"| parameters | {d.params:,} | {p.params:,} |",
        "",
        f"Speedup **{r.speedup:.2f}x**, {r.mac_ratio:.2f}x fewer MACs, {r.param_ratio:.2f}x fewer parameters.",
        *_saved_program_lines(r),
        "",
        "| layer | target | kernel |",
        "|---|---|---|",
    ]
    for row in r.layers:
        target = row.type if row.rate is None else f"{row.type} {row.rate:g}"
        lines.append(f"| {row.name} | {target} | {row.kernel} |")
    lines += ["", "Files: " + ", ".join(f"`{v}`" for v in r.files.values()) + "."]
    for key, info in r.exports.items():
        if info.skipped:
            lines.append(f"- {key}: {info.skipped}")
        elif info.note:
            lines.append(f"- {key}: {info.note}")
    for note in r.notes:
        lines.append(f"- {note}")
    lines += ["", "Load it with `from autoprune import load_pruned; model = load_pruned(FOLDER)`."]
    return "\n".join(lines) + "\n"


def _saved_program_lines(r: DeployReport) -> list[str]:
    """The folder's own exported program, timed as saved (where the runtime runs a file)."""
    sp = r.saved_program
    if not sp:
        return []
    return ["", f"As saved: `{sp['file']}` is **{sp['speedup']:.2f}x** faster than the dense model's export in "
                f"{sp['runtime_detail']}, batch {sp['batch']} ({sp['dense_ms']:.3f} against {sp['saved_ms']:.3f} ms "
                f"per batch), timed again from the folder's file."]
