"""From a finished prune to a deployable model folder (:func:`build_deployable`), in steps:

1. compact the masked model: channels removed, the kernel of each layer measured on the
   device at the latency batch (:func:`autoprune.compact.compact_model`), stored in float32;
2. verify that its outputs equal the masked model's on a validation batch;
3. time dense against compacted (interleaved rounds);
4. evaluate validation and test accuracy;
5. save (:func:`~autoprune.deploy.save_registry_model`) and export
   (:func:`~autoprune.deploy.export_programs`);
6. reload through :func:`~autoprune.load_pruned` and check that the test accuracy
   is the same, and that the torch.export and ONNX (onnxruntime, when installed) programs
   give the torch outputs;
7. write the card: ``report.json`` and ``report.md`` (:mod:`autoprune.deploy.card`).

Everything is written into a temporary sibling folder that is renamed into place at the
end, so a failure leaves nothing half-written under the output folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from autoprune.atomic import staged_folder
from autoprune.checkpoint import Checkpoint, WeightsFor, load_checkpoint
from autoprune.compact import CompactResult, LayerChoice
from autoprune.compact.kernels import CSRConv2d, CSRLinear
from autoprune.data import make_loader
from autoprune.deploy.archive import (
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    describe_module,
    load_registry_model,
    save_registry_model,
)
from autoprune.deploy.card import (
    REPORT_FILE,
    REPORT_MD_FILE,
    Checks,
    DenseFigures,
    DeployReport,
    LayerRow,
    ProgramEntry,
    PrunedFigures,
    write_card,
)
from autoprune.deploy.programs import check_programs, export_programs
from autoprune.errors import UserError
from autoprune.latency import LatencyResult, LatencySettings, device_description, latency_ratio
from autoprune.measure import measure_pruned
from autoprune.progress import Reporter
from autoprune.runtimes import get_runtime, time_saved_program
from autoprune.saving import Deployable
from autoprune.stats import LayerStats
from autoprune.train import evaluate

if TYPE_CHECKING:
    from autoprune.pruning import PruneResult

__all__ = ["build_deployable", "count_stored"]


def build_deployable(pruned: PruneResult, out_dir: str | os.PathLike, *, device: torch.device,
                     latency: LatencySettings, force: bool = False, reporter: Reporter | None = None,
                     force_form: str | None = None) -> Deployable:
    """Turn a finished prune into a deployable model folder and report on it (the steps are
    in the module's docstring); nothing is left under ``out_dir`` when a step fails.

    Args:
        pruned: What :func:`autoprune.pipeline.run_prune` returned (masked model,
            projector, splits, the checkpoint path, the scores).
        out_dir: The folder to create.
        device: Where kernels are chosen, latency measured and accuracy evaluated.
        latency: Batch size, dtype and repeats of the measurements.
        force: Replace an existing non-empty ``out_dir``.
        reporter: Progress messages (default: silent).
        force_form: Use this kernel form wherever it is a candidate instead of measuring
            (``dense``, ``shape-gemm``, ``csr``; for tests and known choices).

    Returns:
        The :class:`~autoprune.saving.Deployable` (what :func:`autoprune.make_deployable`
        returns), with ``out_dir`` and ``report``, the folder's card (:class:`DeployReport`;
        ``to_dict()`` is ``report.json``).

    Raises:
        UserError: ``out_dir`` exists and is not empty (without ``force``), or the prune
            result lacks its projector or splits.
        RuntimeError: the compacted or reloaded model disagrees with the masked one (a bug).
    """
    reporter = reporter or Reporter()
    out = Path(out_dir)
    _check_out_dir(out, force)
    if pruned.projector is None or pruned.splits is None or pruned.checkpoint is None:
        raise UserError("this prune result has no projector, dataset splits or checkpoint; run it with "
                        "autoprune.pipeline.run_prune.")
    t_start = time.perf_counter()
    device = torch.device(device)
    splits = pruned.splits
    xb = _first_batch(splits.val)
    ckpt = load_checkpoint(pruned.checkpoint, weights_for=WeightsFor(pruned.model_name, splits.name,
                                                                    splits.in_channels, splits.num_classes,
                                                                    tuple(splits.image_size)))
    m = measure_pruned(pruned.model, pruned.projector, ckpt.build(), xb, device=device, latency=latency,
                       force_form=force_form, reporter=reporter)
    model, result, notes, diff = m.model, m.compact, m.notes, m.max_abs_diff
    reporter.log("evaluating")
    val_acc = evaluate(model, splits.val, device=device)
    test_acc = evaluate(model, splits.test, device=device)
    with staged_folder(out) as tmp:
        save_registry_model(model, tmp, base=_base(ckpt))
        exports = export_programs(model, xb[: min(8, len(xb))] if len(xb) >= 2 else torch.cat([xb, xb]), tmp)
        reporter.log("reloading and checking the saved model and exported programs")
        checks = Checks(masked_max_abs_diff=diff, reloaded_test_acc=_check_reload(tmp, splits.test, device, test_acc),
                        **check_programs(exports, model, xb))
        report = _report(pruned, ckpt, model, result, device, latency, m.dense, m.pruned,
                         val_acc, test_acc, checks, exports, notes)
        report = replace(report, saved_program=_time_saved(ckpt.build(), tmp, tuple(xb.shape[1:]), device, latency,
                                                           reporter),
                         seconds=time.perf_counter() - t_start)
        write_card(report, tmp)
    reporter.log(f"deployable model in {out}: {report.speedup:.2f}x faster than dense, test accuracy "
                 f"{100 * test_acc:.1f}% (dense {100 * pruned.dense_test_score:.1f}%)")
    return Deployable(model=model, kernels={k: c.form for k, c in result.choices.items()}, max_abs_diff=diff,
                      speedup=report.speedup, latency_ms={"dense": m.dense.median_ms, "pruned": m.pruned.median_ms},
                      batch=latency.batch_size, device=str(device), example_inputs=xb, report=report, out_dir=str(out))


# -- the steps ---------------------------------------------------------------------------


def _time_saved(dense: nn.Module, folder: Path, input_shape: tuple[int, ...], device: torch.device,
                latency: LatencySettings, reporter: Reporter) -> dict[str, Any] | None:
    """The folder's own exported program timed in the runtime beside dense (where the runtime
    runs a file: ``model.onnx`` for ONNX Runtime and OpenVINO), for the report."""
    runtime = get_runtime(latency.runtime)
    if runtime.program_file is None:
        return None
    reporter.log(f"timing the saved {runtime.program_file} in {runtime.name} beside dense")
    stats = time_saved_program(dense, folder, input_shape, device=device, settings=latency)
    if stats is None:  # the export was skipped: nothing saved to time
        return None
    return {"file": runtime.program_file, "speedup": latency_ratio(stats["dense"], stats["saved"]),
            "dense_ms": stats["dense"].median_ms, "saved_ms": stats["saved"].median_ms,
            "runtime_detail": runtime.describe(device, latency), "batch": latency.batch_size}


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is a file; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output folder {out} exists and is not empty; use --force to overwrite or pick another --out")


def _first_batch(dataset: Dataset, n: int = 64) -> torch.Tensor:
    x, _ = next(iter(make_loader(dataset, batch_size=n, shuffle=False)))
    return x


def _check_reload(folder: Path, test_set: Dataset, device: torch.device, test_acc: float) -> float:
    """The test accuracy of the model as :func:`load_pruned` reads it back from ``folder``.

    Raises:
        RuntimeError: it differs from ``test_acc`` (a bug in save/load).
    """
    reloaded_acc = evaluate(load_registry_model(folder).to(device), test_set, device=device)
    # CPU kernels are deterministic: the same weights give the same predictions. On a GPU
    # the reloaded model may pick other convolution algorithms; allow one sample there.
    slack = 0.0 if device.type == "cpu" else 1.0 / max(len(test_set), 1) + 1e-12
    if abs(reloaded_acc - test_acc) > slack:
        raise RuntimeError(f"the saved model reloads with test accuracy {reloaded_acc:.4f}, not {test_acc:.4f}; "
                           f"this is a bug in save_registry_model/load_registry_model.")
    return reloaded_acc


# -- the report --------------------------------------------------------------------------


def count_stored(model: nn.Module) -> int:
    """Parameters plus the stored weights of CSR kernels (kept as buffers, not parameters)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(m.sparse_weight.nnz for m in model.modules() if isinstance(m, (CSRLinear, CSRConv2d)))
    return int(n)


def _base(ckpt: Checkpoint) -> dict[str, Any]:
    return {"model": ckpt.model, "in_channels": ckpt.in_channels, "num_classes": ckpt.num_classes,
            "image_size": list(ckpt.image_size)}


def _layer_rows(layers: list[LayerStats], model: nn.Module, choices: dict[str, LayerChoice]) -> list[LayerRow]:
    rows = []
    for stats in layers:
        module = model.get_submodule(stats.name)
        choice = choices.get(stats.name)
        spec = describe_module(module)
        rows.append(LayerRow(
            name=stats.name, kind=stats.kind, type=stats.type, rate=stats.rate, sparsity=stats.sparsity,
            weight_shape=list(stats.weight_shape), module_after=type(module).__name__,
            spec_after=spec[1] if spec else None, kernel=choice.form if choice else "dense",
            candidates_ms=dict(choice.candidates_ms) if choice else {},
            macs_dense=stats.macs_dense, macs=stats.macs,
        ))
    return rows


def _report(pruned: PruneResult, ckpt: Checkpoint, model: nn.Module, result: CompactResult,
            device: torch.device, latency: LatencySettings, dense_lat: LatencyResult, pruned_lat: LatencyResult,
            val_acc: float, test_acc: float, checks: Checks, exports: dict[str, Any],
            notes: list[str]) -> DeployReport:
    """What ``report.json`` holds, from the measurements of the build."""
    entries = {key: ProgramEntry.from_export(key, exports) for key in ("pt2", "onnx")}
    files = {"weights": WEIGHTS_FILE, "architecture": ARCHITECTURE_FILE, "report": REPORT_FILE,
             "report_md": REPORT_MD_FILE}
    files.update({key: entry.file for key, entry in entries.items() if entry.file is not None})
    stored = count_stored(model)
    dense, masked = pruned.dense_scores, pruned.pruned_scores
    return DeployReport(
        model=pruned.model_name, dataset=pruned.dataset, checkpoint=pruned.checkpoint, method=pruned.method,
        device=str(device), device_description=device_description(device), dtype=latency.dtype,
        stored_dtype="fp32", batch_size=latency.batch_size, channels_last=latency.channels_last,
        fold_bn=latency.fold_bn, steady_memory=dense_lat.steady_memory,
        dense=DenseFigures(val_acc=dense.val_acc, test_acc=dense.test_acc, latency_ms=dense_lat.median_ms,
                           latency_p90_ms=dense_lat.p90_ms, macs=dense.macs_dense, params=dense.params),
        pruned=PrunedFigures(val_acc=val_acc, test_acc=test_acc, masked_val_acc=masked.val_acc,
                             masked_test_acc=masked.test_acc, latency_ms=pruned_lat.median_ms,
                             latency_p90_ms=pruned_lat.p90_ms, macs=masked.macs, params=stored,
                             params_nonzero=masked.params_nonzero),
        speedup=latency_ratio(dense_lat, pruned_lat),
        mac_ratio=dense.macs_dense / max(masked.macs, 1),
        param_ratio=dense.params / max(stored, 1),
        dense_latency=dense_lat, pruned_latency=pruned_lat, kernels_reverted=result.reverted,
        layers=_layer_rows(pruned.layers, model, result.choices), checks=checks, exports=entries, files=files,
        notes=notes, runtime=latency.runtime, runtime_detail=get_runtime(latency.runtime).describe(device, latency),
    )
