"""The MLflow mirror of a study.

The Optuna storage is the source of truth; MLflow mirrors it for browsing (``mlflow ui``)
and can be rebuilt from it at any time (:meth:`Tracker.sync_study`). The layout:

- one experiment per study, named after it;
- one parent run per study (tag ``autoprune.role=study``) holding the search settings and
  the dense baseline as params, the summary metrics, and the study's artifacts (Pareto
  figure, per-layer heatmap, parameter importances, report, best config, dense baseline);
- one nested run per trial (``trial-<n>``, tag ``mlflow.parentRunId``) holding every
  layer's target as params (``layer.<name>.type`` / ``layer.<name>.rate``), Optuna's own
  params (``optuna.<name>``), the measured metrics, the ADMM residual and training loss as
  step histories, and the trial's config as ``config.yaml``.

What is logged, by name, is :mod:`autoprune.tracking.keys`; how the tracking URI is
reached, :mod:`autoprune.tracking.connection`.

Logging is idempotent: a trial logged twice updates its run, a resumed study reuses its
parent run. Tracking never stops a search: every MLflow call goes through one guard, and
the first failure (an unreachable server, a locked database) is reported once through
``warn`` and turns the tracker off. Example::

    tracker = Tracker("sqlite:///runs/mlflow.db", warn=print)
    tracker.start_study(record.meta, record.storage)
    for trial in record.trials:
        tracker.log_trial(record.meta, trial, config_yaml=None)
    tracker.finish_study(record, study=study, out_dir=Path("runs") / record.meta.name)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.report.artifacts import write_study_artifacts
from autoprune.study.records import StudyMeta, StudyRecord, TrialRecord
from autoprune.study.storage import absolute_storage, redact
from autoprune.text import percent
from autoprune.tracking.client import GuardedClient
from autoprune.tracking.keys import (
    CHOSEN_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_TAG_VALUE,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STORAGE_TAG,
    STUDY_NAME_TAG,
    TRIAL_RUNS_QUERY,
    mlflow_key,
    param_value,
    settings_params,
    trial_metrics,
    trial_params,
    trial_run_name,
    trial_tags,
)

__all__ = ["Tracker"]

# a stopped trial (PRUNED: not faster than dense, or hopeless) shows as "Killed", not as a
# finished one; tags.outcome tells over-budget from within-budget among the finished
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

@dataclass
class _StudyRuns:
    experiment_id: str
    parent_run_id: str
    trial_runs: dict[int, str]  # trial number -> run id, filled lazily
    meta: StudyMeta | None = None  # the study's settings (the metric's name and format)


class Tracker(GuardedClient):
    """Mirror a study into MLflow, through an explicit ``MlflowClient``.

    Args:
        tracking_uri: Where MLflow keeps runs: ``sqlite:///path.db`` (the default,
            :data:`DEFAULT_TRACKING_URI`, relative to the current folder; the folder is
            created and artifacts go to ``mlartifacts/`` beside the database) or
            ``http(s)://host:port`` of a tracking server.
        warn: Called once, with a one-line message, if MLflow fails; the tracker is then
            off and every later call is a no-op. Default: the ``autoprune.tracking`` logger.

    For an http(s) URI, the tracker sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and
    ``MLFLOW_HTTP_REQUEST_TIMEOUT=5`` in the process environment unless the user set them,
    and checks ``<uri>/health`` once (3 s), so an unreachable server costs seconds, not
    minutes.
    """

    def __init__(self, tracking_uri: str | None = None, *, warn: Callable[[str], None] | None = None) -> None:
        super().__init__(tracking_uri, warn=warn)
        self._studies: dict[str, _StudyRuns] = {}

    # ------------------------------------------------------------ lookups

    def _open_study(self, meta: StudyMeta, storage: str | None) -> _StudyRuns:
        """The experiment and parent run of a study, found (resume) or created."""
        cached = self._studies.get(meta.name)
        if cached is not None:
            return cached
        exp_id = self._experiment(meta.name)
        self._call("set_experiment_tag", exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        parents = self._search(exp_id, f"tags.`{ROLE_TAG}` = 'study'")
        if storage is not None:  # mirrors before the tag was absolute hold the URL as given
            names = (storage_tag(storage), param_value(redact(storage), MAX_TAG_VALUE), None)
            parents = [r for r in parents if r.data.tags.get(STORAGE_TAG) in names]
        parents.sort(key=lambda r: r.info.start_time or 0)
        if parents:
            parent_id = parents[0].info.run_id
        else:
            tags = {ROLE_TAG: "study", STUDY_NAME_TAG: meta.name}
            if storage is not None:
                tags[STORAGE_TAG] = storage_tag(storage)
            parent_id = self._call("create_run", exp_id, run_name=meta.name, tags=tags).info.run_id
        runs = _StudyRuns(exp_id, parent_id, {}, meta)
        self._studies[meta.name] = runs
        return runs

    def _trial_run(self, runs: _StudyRuns, trial: TrialRecord) -> tuple[str, Any]:
        """The run of ``trial`` and its current state (None when just created). A new run
        starts when the trial did (its ``seconds`` before now: runs are written as a trial
        ends), so the runs table shows how long each trial took."""
        number = trial.number
        run_id = runs.trial_runs.get(number)
        if run_id is not None:
            return run_id, self._call("get_run", run_id)
        found = self._search(
            runs.experiment_id,
            f"tags.`{PARENT_TAG}` = '{runs.parent_run_id}' and tags.trial_number = '{number}'",
        )
        if found:
            found.sort(key=lambda r: r.info.start_time or 0)
            run = found[0]
            runs.trial_runs[number] = run.info.run_id
            return run.info.run_id, run
        tags = {PARENT_TAG: runs.parent_run_id, ROLE_TAG: "trial", "trial_number": str(number)}
        start = int(1000 * (time.time() - (trial.seconds or 0.0)))
        run = self._call("create_run", runs.experiment_id, run_name=trial_run_name(trial, meta=runs.meta), tags=tags,
                         start_time=start)
        runs.trial_runs[number] = run.info.run_id
        return run.info.run_id, None

    # ------------------------------------------------------------ the public API

    def ui_hint(self, study_name: str) -> str | None:
        """How to look at a study's runs: the ``mlflow ui`` command (for a database) and the
        link to the experiment's trial runs, fastest first, in MLflow's model-training view
        (:data:`~autoprune.tracking.keys.TRIAL_RUNS_QUERY`); None when the tracker is off or
        the study has no experiment."""
        runs = self._studies.get(study_name)
        if not self._enabled or runs is None:
            return None
        link = f"#/experiments/{runs.experiment_id}/runs?{TRIAL_RUNS_QUERY}"
        if self._conn.is_http:
            return f"MLflow: {self.tracking_uri.rstrip('/')}/{link}"
        given = self._conn.db_as_given
        if given is None:
            return f"MLflow: mlflow ui --backend-store-uri {self.tracking_uri}, then http://127.0.0.1:5000/{link}"
        # the artifact locations are relative like the database's path: start MLflow from here
        return (f"MLflow: mlflow ui --backend-store-uri sqlite:///{given.as_posix()} (in {Path.cwd()}), then "
                f"http://127.0.0.1:5000/{link}")

    def start_study(self, meta: StudyMeta, storage: str) -> None:
        """Open (or, on resume, find) the study's experiment and parent run and log the
        search settings and the dense baseline.

        On resume the parent run is the oldest run tagged ``autoprune.role=study`` in the
        experiment whose ``optuna.storage`` tag is this storage (or unset), so a study of the
        same name in another storage gets its own parent. A deleted experiment is restored.

        Args:
            meta: The study's settings and dense baseline.
            storage: The Optuna storage URL (kept as a tag: a relative path made absolute, password masked).
        """
        with self._guarded():
            runs = self._open_study(meta, storage)
            existing = self._call("get_run", runs.parent_run_id)
            params = {mlflow_key(k): param_value(v) for k, v in settings_params(meta).items()}
            dense = {
                f"dense_{meta.metric}": meta.dense_accuracy,
                f"dense_test_{meta.metric}": meta.dense_test_accuracy,
                "dense_latency_ms": meta.dense_latency_ms,
                "dense_latency_p90_ms": meta.dense_latency_p90_ms,
                "dense_macs": meta.dense_macs,
                "dense_params": meta.dense_params,
            }
            params.update({mlflow_key(k): param_value(v) for k, v in dense.items() if v is not None})
            tags = {
                ROLE_TAG: "study",
                STUDY_NAME_TAG: meta.name,
                STORAGE_TAG: storage_tag(storage),
                "runtime": meta.runtime,
            }
            metrics = [(k, float(v), 0) for k, v in dense.items() if v is not None]
            self._log(runs.parent_run_id, params=params, metrics=metrics, tags=tags, existing=existing)
            self._log_text(runs.parent_run_id, json.dumps(meta.to_dict(), indent=2, default=str), "study_meta.json")
            if existing.info.status != "RUNNING":
                self._call("update_run", runs.parent_run_id, status="RUNNING")

    def log_trial(self, meta: StudyMeta, trial: TrialRecord, config_yaml: str | None = None) -> None:
        """Log one trial as a nested run (or update its run if it was logged before).

        Args:
            meta: The study's settings.
            trial: The trial as measured (any state; RUNNING trials stay RUNNING).
            config_yaml: The trial's pruning config, logged as ``config.yaml``.
        """
        with self._guarded():
            runs = self._open_study(meta, None)
            run_id, existing = self._trial_run(runs, trial)
            self._log(
                run_id,
                params=trial_params(meta, trial),
                metrics=trial_metrics(trial, meta.metric),
                tags=trial_tags(trial, meta),
                existing=existing,
            )
            if config_yaml is not None:
                self._log_text(run_id, config_yaml, "config.yaml")
            name = trial_run_name(trial, meta=meta)
            if existing is not None and existing.info.run_name != name:
                self._call("update_run", run_id, name=name)
            status = _STATUS.get(trial.state)
            current = existing.info.status if existing is not None else "RUNNING"
            if status is not None and current != status:
                self._call("set_terminated", run_id, status=status, end_time=int(1000 * time.time()))
            elif status is None and current != "RUNNING":
                self._call("update_run", run_id, status="RUNNING")

    def finish_study(
        self,
        record: StudyRecord,
        *,
        study: Any = None,
        best_config_yaml: str | None = None,
        out_dir: Path | None = None,
        figures: bool = True,
    ) -> dict[str, Path]:
        """Re-tag Pareto membership on every trial run and log the study's artifacts and
        summary metrics on the parent run.

        Artifacts (also written into ``out_dir`` when given): ``pareto.html``,
        ``layer_heatmap.html``, ``param_importances.html`` (with ``study`` and at least two
        completed trials), ``report.html``, ``best_config.yaml`` (when given) and
        ``dense_baseline.json``. Metrics: ``n_trials``, ``n_complete``, ``n_feasible``,
        ``best_feasible_speedup``, ``best_feasible_accuracy``, ``best_feasible_latency_ms``.

        Args:
            record: The study, with ``pareto`` marked on its trials (:func:`mark_pareto`).
            study: The ``optuna.Study``, for parameter importances; optional.
            best_config_yaml: The best configuration as YAML; optional.
            out_dir: A folder to write the artifacts into as well.
            figures: False skips the figures and the report (faster; data files only).

        Returns:
            ``{name: path}`` of the files written into ``out_dir`` (empty without it).
            Names: ``pareto``, ``layer_heatmap``, ``param_importances``, ``report``,
            ``best_config``, ``dense_baseline``.
        """
        if out_dir is None and not self._enabled:
            return {}
        with tempfile.TemporaryDirectory(prefix="autoprune-mlflow-") as tmp:
            folder = Path(out_dir) if out_dir is not None else Path(tmp)
            files = self._write_artifacts(
                record, folder, study=study, best_config_yaml=best_config_yaml, figures=figures
            )
            with self._guarded():
                self._finish_runs(record, files)
        return files if out_dir is not None else {}

    def sync_study(
        self,
        record: StudyRecord,
        config_yaml_for: Callable[[TrialRecord], str | None] | None = None,
        *,
        study: Any = None,
        figures: bool = True,
        out_dir: Path | None = None,
    ) -> dict[str, Path]:
        """Rebuild the mirror of a study from its record (e.g. from the Optuna storage):
        parent run, every trial, then :meth:`finish_study`. Safe to repeat.

        Args:
            record: The study.
            config_yaml_for: Gives a trial's config YAML (logged as ``config.yaml``); also
                gives ``best_config.yaml`` from the best feasible trial.
            study: The ``optuna.Study``, for parameter importances; optional.
            figures: False skips figures and report.
            out_dir: A folder to write the study's artifacts into as well.

        Returns:
            What :meth:`finish_study` returns.
        """
        self.start_study(record.meta, record.storage)
        for trial in record.trials:
            if not self._enabled:
                break
            self.log_trial(record.meta, trial, config_yaml_for(trial) if config_yaml_for else None)
        best = record.best_feasible()
        best_yaml = config_yaml_for(best) if (config_yaml_for is not None and best is not None) else None
        return self.finish_study(
            record, study=study, best_config_yaml=best_yaml, out_dir=out_dir, figures=figures
        )

    # ------------------------------------------------------------ finish, in parts

    def _write_artifacts(
        self,
        record: StudyRecord,
        folder: Path,
        *,
        study: Any,
        best_config_yaml: str | None,
        figures: bool,
    ) -> dict[str, Path]:
        return write_study_artifacts(record, folder, study=study, best_config_yaml=best_config_yaml,
                                     figures=figures, warn=self._warn)

    def _finish_runs(self, record: StudyRecord, files: dict[str, Path]) -> None:
        runs = self._open_study(record.meta, record.storage)
        parent = runs.parent_run_id
        best = record.best_feasible()
        self._mark_trials(runs, record, best)
        for path in files.values():
            self._log_artifact(parent, path)
        summary: dict[str, float | None] = {
            "n_trials": len(record.trials),
            "n_complete": len(record.completed),
            "n_feasible": len(record.feasible),
            "n_pareto": len(record.front),
            "best_feasible_speedup": best.speedup if best else None,
            f"best_feasible_{record.meta.metric}": best.score if best else None,
            "best_feasible_latency_ms": best.latency_ms if best else None,
        }
        step = len(record.trials)
        metrics = [(k, float(v), step) for k, v in summary.items() if v is not None]
        tags = {"best_feasible_trial": str(best.number) if best else "none"}
        if best is not None:
            speedup = f"{best.speedup:.2f}x, " if best.speedup is not None else ""
            tags["mlflow.note.content"] = (
                f"Fastest within the budget: trial {best.number} ({speedup}{best.latency_ms:.4g} ms) at "
                f"{record.meta.metric} {record.meta.fmt(best.score)}; {len(record.front)} trials on the Pareto front."
            )
        self._log(parent, metrics=metrics, tags=tags)
        self._call("set_experiment_tag", runs.experiment_id, NOTE_TAG, _study_description(record, best))
        self._call("set_terminated", parent, status="FINISHED")

    def _mark_trials(self, runs: _StudyRuns, record: StudyRecord, best: TrialRecord | None) -> None:
        """Tag every trial run with its Pareto membership and whether it is the chosen one
        (``chosen = true``, and ``*`` before its name), as of the whole study."""
        trials = {t.number: t for t in record.trials}
        children = self._search(runs.experiment_id, f"tags.`{PARENT_TAG}` = '{runs.parent_run_id}'")
        for run in children:
            number = run.data.tags.get("trial_number")
            if number is None or not number.lstrip("-").isdigit() or int(number) not in trials:
                continue
            trial = trials[int(number)]
            runs.trial_runs.setdefault(trial.number, run.info.run_id)
            chosen = best is not None and trial.number == best.number
            want = {"pareto": "true" if trial.pareto else "false", CHOSEN_TAG: "true" if chosen else "false"}
            for key, value in want.items():
                if run.data.tags.get(key) != value:
                    self._call("set_tag", run.info.run_id, key, value)
            name = trial_run_name(trial, chosen=chosen, meta=record.meta)
            if run.info.run_name != name:
                self._call("update_run", run.info.run_id, name=name)


def storage_tag(storage: str) -> str:
    """The ``optuna.storage`` tag: the storage URL with a relative path made absolute (a
    relative one would depend on the folder the search ran in) and any password masked."""
    return param_value(redact(absolute_storage(storage)), MAX_TAG_VALUE)


def _study_description(record: StudyRecord, best: TrialRecord | None) -> str:
    """The experiment's description: what was searched, and the best result."""
    m = record.meta
    budget = f"{percent(m.budget)} of dense" if m.budget_mode == "relative" else m.fmt_drop(m.budget)
    text = (f"autoprune search of {m.model} on {m.dataset}, {m.device_description}, budget: {m.metric} at most "
            f"{budget} worse than dense, latency at batch {m.latency_batch} {m.dtype}. {len(record.trials)} trials, "
            f"{len(record.feasible)} within the budget, {len(record.front)} on the Pareto front. ")
    if best is None:
        return text + "No pruned trial kept the budget."
    speed = best.final_speedup
    return text + (f"Chosen: trial {best.number} ({best.sparsity_summary()}), validation {m.metric} "
                   f"{m.fmt(best.score)}, {best.latency_ms:.4g} ms" + (f", {speed:.2f}x faster than dense" if speed else "")
                   + ". Runs: filter `tags.chosen = 'true'`, `tags.outcome = 'within-budget'` or `tags.pareto = 'true'`.")
