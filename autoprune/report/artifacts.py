"""The files a finished (or running) study leaves in its folder: the dense baseline, the
best configuration, the figures and the HTML report. The CLI and the tracker write them;
the tracker also logs them to MLflow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.atomic import write_text_atomic
from autoprune.errors import first_line
from autoprune.report.figures import (
    importance_figure,
    layer_heatmap,
    param_importances,
    pareto_figure,
    write_figure_html,
)
from autoprune.report.study_html import write_report
from autoprune.study.records import StudyRecord

__all__ = ["write_study_artifacts"]


def write_study_artifacts(
    record: StudyRecord,
    folder: Path,
    *,
    study: Any = None,  # noqa: ANN401 - an optuna.Study
    best_config_yaml: str | None = None,
    figures: bool = True,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the study's files into ``folder`` (created if needed).

    Args:
        record: The study, with ``pareto`` marked on its trials.
        folder: Where to write.
        study: The ``optuna.Study``, for parameter importances; optional.
        best_config_yaml: Written as ``best_config.yaml`` when given.
        figures: False writes the data files only (faster).
        warn: Told, in one line, when the parameter importances cannot be computed.

    Returns:
        ``{name: path}``: ``dense_baseline``, ``best_config``, ``pareto``, ``layer_heatmap``,
        ``param_importances``, ``report`` (those written).
    """
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    meta = record.meta
    baseline = {
        "study": meta.name,
        "model": meta.model,
        "dataset": meta.dataset,
        "checkpoint": meta.checkpoint,
        "device": meta.device,
        "device_description": meta.device_description,
        "runtime": meta.runtime,
        "latency_batch": meta.latency_batch,
        "dtype": meta.dtype,
        "metric": meta.metric,
        "direction": meta.direction,
        meta.metric: meta.dense_accuracy,
        f"test_{meta.metric}": meta.dense_test_accuracy,
        "latency_ms": meta.dense_latency_ms,
        "latency_p90_ms": meta.dense_latency_p90_ms,
        "macs": meta.dense_macs,
        "params": meta.dense_params,
        "versions": meta.versions,
    }
    files["dense_baseline"] = folder / "dense_baseline.json"
    write_text_atomic(files["dense_baseline"], json.dumps(baseline, indent=2) + "\n")
    if best_config_yaml is not None:
        files["best_config"] = folder / "best_config.yaml"
        write_text_atomic(files["best_config"], best_config_yaml)
    if not figures:
        return files
    files["pareto"] = write_figure_html(pareto_figure(record), folder / "pareto.html")
    files["layer_heatmap"] = write_figure_html(layer_heatmap(record), folder / "layer_heatmap.html")
    importances = None
    if study is not None and len(record.completed) >= 2:
        try:
            importances = param_importances(study, record)
        except Exception as exc:  # noqa: BLE001 - optuna.importance can fail on odd spaces: skip
            if warn is not None:
                warn(f"parameter importances skipped: {first_line(exc, limit=200)}")
    fig = importance_figure(None, record, importances=importances) if importances else None
    if fig is not None:
        files["param_importances"] = write_figure_html(fig, folder / "param_importances.html")
    files["report"] = write_report(
        record,
        folder / "report.html",
        chosen=record.best_feasible(),
        chosen_yaml=best_config_yaml,
        importances=importances or {},
    )
    return files
