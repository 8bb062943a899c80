"""Uploading a deployable model to MLflow (saving it locally is :mod:`autoprune.deploy`)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import autoprune
from autoprune.errors import first_line
from autoprune.tracking.connection import Connection, describe_failure
from autoprune.tracking.keys import MAX_TAG_VALUE, MODEL_FORMAT_NOTE_TAG, MODEL_FORMAT_TAG, ROLE_TAG

__all__ = ["log_model_to_mlflow", "report_metrics"]

_log = logging.getLogger(__name__)


def log_model_to_mlflow(
    model: nn.Module,
    example_input: torch.Tensor,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    report: dict[str, Any],
    *,
    warn: Callable[[str], None] | None = None,
) -> str | None:
    """Log the compacted model to MLflow (``mlflow.pytorch.log_model`` with a signature
    inferred from ``example_input``) plus the report's headline metrics and ``report.json``.

    The model is logged as a ``torch.export`` program (``serialization_format="pt2"``), which
    carries no Python code: sparse CSR / semi-structured layers, which torch.export cannot
    trace, are exported as their dense masked equivalent (same outputs), and the run's
    ``autoprune.model_format_note`` tag names them. Where torch.export cannot export the
    model at all, it is pickled instead (with autoprune's source beside it, ``code_paths``),
    and the run's tags say so: ``autoprune.model_format`` is ``pt2`` or ``pickle``, the note
    says why. ``mlflow.pytorch.load_model("runs:/<id>/model")`` gives a module back either
    way. Never raises for MLflow's sake: an unreachable or failing tracking URI is reported
    once through ``warn`` and gives None.

    Args:
        model: The deployable model (any device; logged as a CPU float32 copy).
        example_input: A batch, for the signature.
        tracking_uri: Where MLflow keeps runs (see :class:`~autoprune.tracking.connection.Connection`).
        experiment: The experiment (created when missing).
        run_name: The run's name.
        report: What the deployable folder's ``report.json`` holds
            (:meth:`autoprune.deploy.DeployReport.to_dict`).
        warn: Called with a one-line message when logging fails (default: a logger).

    Returns:
        The MLflow run id, or None when logging failed.
    """
    warn = warn or _log.warning
    conn = Connection.resolve(tracking_uri)
    failure = conn.open()
    if failure is not None:
        warn(f"MLflow tracking at {conn.uri} {describe_failure(failure)}; the model was not logged")
        return None
    try:
        import mlflow  # heavy: only when a model is logged
        from mlflow import MlflowClient
        from mlflow.models import infer_signature

        client = MlflowClient(tracking_uri=conn.uri)
        exp_id = conn.experiment_id(client, experiment)
        # MLflow resolves a relative artifact location (a search's experiment, see
        # Connection) against the current folder: log from the folder it is relative to
        base = conn.location_base(client.get_experiment(exp_id).artifact_location)
        cpu_model = copy.deepcopy(model).cpu().float().eval()
        x = example_input.detach().cpu().float()
        with torch.no_grad():
            y = cpu_model(x)
        signature = infer_signature(x.numpy(), y.numpy())
        exportable, note, why_not = _exportable_form(cpu_model, x)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(conn.uri)
        try:
            with _working_folder(base), mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
                mlflow.set_tag(ROLE_TAG, "deployable")
                mlflow.log_metrics(report_metrics(report))
                mlflow.log_dict(report, "report.json")
                requirements = [f"torch=={torch.__version__.split('+')[0]}"]
                if exportable is not None:
                    try:
                        mlflow.pytorch.log_model(exportable, name="model", signature=signature,
                                                 input_example=x.numpy(), pip_requirements=requirements,
                                                 serialization_format="pt2")
                    except Exception as exc:  # noqa: BLE001 - MLflow's own export failed: pickle it below
                        exportable, why_not = None, f"MLflow's torch.export failed: {first_line(exc, with_type=True)}"
                if exportable is None:
                    mlflow.pytorch.log_model(cpu_model, name="model", signature=signature,
                                             pip_requirements=requirements,
                                             code_paths=[str(Path(autoprune.__file__).parent)],
                                             serialization_format="pickle")
                    note = f"pickled: {why_not}"
                mlflow.set_tag(MODEL_FORMAT_TAG, "pt2" if exportable is not None else "pickle")
                if note:
                    mlflow.set_tag(MODEL_FORMAT_NOTE_TAG, note[:MAX_TAG_VALUE])
                return run.info.run_id
        finally:
            mlflow.set_tracking_uri(previous)
    except Exception as exc:  # noqa: BLE001 - tracking must never break the build
        warn(f"MLflow logging to {conn.uri} failed ({first_line(exc, with_type=True)}); the model was not logged")
        return None


def _exportable_form(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module | None, str | None, str | None]:
    """``(module to log as pt2, note, None)``: the model with its sparse kernels as dense masked
    layers, where torch.export can export it (tried here, dynamic batch as MLflow exports it);
    else ``(None, None, why)``."""
    from autoprune.deploy.archive import with_dense_kernels
    from autoprune.deploy.programs import UNEXPORTABLE_KERNELS

    exportable, densified = with_dense_kernels(model, UNEXPORTABLE_KERNELS)
    try:
        torch.export.export(exportable, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001 - any reason torch.export gives
        return None, None, f"torch.export cannot export this model ({first_line(exc, with_type=True)})"
    note = None
    if densified:
        note = (f"layer{'s' if len(densified) > 1 else ''} {', '.join(densified)} logged as dense masked weights "
                f"(same outputs, no sparse speed-up): torch.export cannot trace sparse kernels")
    return exportable, note, None


@contextlib.contextmanager
def _working_folder(folder: Path | None) -> Iterator[None]:
    """Run the block with ``folder`` as the current folder (None: where it is)."""
    if folder is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a deployable's report as MLflow metrics:
    ``dense_test_acc``, ``pruned_latency_ms``, ..., ``speedup``, ``mac_ratio``, ``param_ratio``."""
    out: dict[str, float] = {}
    for side in ("dense", "pruned"):
        for key in ("test_acc", "val_acc", "latency_ms", "latency_p90_ms", "macs", "params"):
            value = report.get(side, {}).get(key)
            if isinstance(value, (int, float)):
                out[f"{side}_{key}"] = float(value)
    for key in ("speedup", "mac_ratio", "param_ratio"):
        if isinstance(report.get(key), (int, float)):
            out[key] = float(report[key])
    return out
