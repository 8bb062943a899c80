"""MLflow mirror of a study.

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

import contextlib
import json
import logging
import math
import os
import re
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.search.records import StudyMeta, StudyRecord, TrialRecord
from autoprune.search.storage import redact

__all__ = ["DEFAULT_TRACKING_URI", "Tracker", "trial_metrics", "trial_params", "trial_tags"]

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"

ROLE_TAG = "autoprune.role"
STORAGE_TAG = "optuna.storage"
STUDY_NAME_TAG = "optuna.study_name"
PARENT_TAG = "mlflow.parentRunId"
ARTIFACT_DIR = "mlartifacts"  # next to a SQLite database, instead of MLflow's ./mlruns in the current folder

# MLflow's limits (mlflow.utils.validation); kept here so a change there is one edit here.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000

# Fail fast against a remote server (MLflow's defaults: 7 retries with backoff, 120 s timeout).
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
HEALTH_TIMEOUT_S = 3.0

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}

_GOES_ON = "the search goes on without tracking"

_log = logging.getLogger(__name__)


class _Off(Exception):
    """Raised inside the tracker once MLflow failed; public methods turn it into a no-op."""


@dataclass
class _StudyRuns:
    experiment_id: str
    parent_run_id: str
    trial_runs: dict[int, str]  # trial number -> run id, filled lazily


# ---------------------------------------------------------------- what a trial logs


def _key(name: str) -> str:
    """A valid MLflow param/metric/tag key (unusual characters become ``_``)."""
    return _BAD_KEY_CHARS.sub("_", name)[:MAX_KEY]


def _value(value: Any, limit: int = MAX_PARAM_VALUE) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _nm_removed(kind: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", kind)
    return 1.0 - int(m.group(1)) / int(m.group(2)) if m and int(m.group(2)) > 0 else None


def _settings_params(meta: StudyMeta) -> dict[str, Any]:
    """The search settings as flat params (the parent run logs these, each trial a summary)."""
    out: dict[str, Any] = {
        "model": meta.model,
        "dataset": meta.dataset,
        "checkpoint": meta.checkpoint,
        "device": meta.device,
        "device_description": meta.device_description,
        "budget": meta.budget,
        "budget_mode": meta.budget_mode,
        "allowed_drop": meta.allowed_drop(),
        "latency_batch": meta.latency_batch,
        "dtype": meta.dtype,
        "channels_last": meta.channels_last,
        "fold_bn": meta.fold_bn,
        "steady_memory": meta.steady_memory,
        "channel_multiple": meta.channel_multiple,
        "space": meta.space,
        "sampler": meta.sampler,
        "seed": meta.seed,
        "objectives": ",".join(meta.objectives),
    }
    out.update({f"admm.{k}": v for k, v in meta.admm.items()})
    out.update({f"version.{k}": v for k, v in meta.versions.items()})
    return out


def trial_params(meta: StudyMeta, trial: TrialRecord) -> dict[str, str]:
    """The params of a trial's run: every layer's ``type`` and ``rate``, Optuna's params
    as given (prefixed ``optuna.``, so they never clash with the layer keys), and a summary
    of the search settings.

    A layer's ``rate`` is the fraction of its weights removed: the target's rate, 0 for
    ``none`` and ``1 - N/M`` for ``N:M``, so the column lines up across trials.
    """
    out: dict[str, Any] = {}
    for name, target in trial.targets.items():
        kind = str(target.get("type", "none"))
        rate = target.get("rate")
        if rate is None:
            rate = 0.0 if kind == "none" else _nm_removed(kind)
        out[f"layer.{name}.type"] = kind
        if rate is not None:
            out[f"layer.{name}.rate"] = rate
    out.update({f"optuna.{k}": v for k, v in trial.params.items()})
    settings = _settings_params(meta)
    for k in ("model", "dataset", "device", "device_description", "seed", "latency_batch", "dtype"):
        out[k] = settings[k]
    out.update({k: v for k, v in settings.items() if k.startswith("version.")})
    out["is_dense"] = trial.is_dense
    return {_key(k): _value(v) for k, v in out.items()}


def trial_metrics(trial: TrialRecord) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of a trial: the measured numbers at step 0, then the ADMM
    residual and the training loss as histories (step = iteration / epoch index)."""
    scalars = {
        "accuracy": trial.accuracy,
        "accuracy_drop": trial.accuracy_drop,
        "hard_prune_accuracy": trial.hard_prune_accuracy,
        "latency_ms": trial.latency_ms,
        "latency_p90_ms": trial.latency_p90_ms,
        "speedup": trial.speedup,
        "macs": trial.macs,
        "params_count": trial.params_count,
        "sparsity": trial.sparsity,
        "seconds": trial.seconds,
    }
    out = [(k, float(v), 0) for k, v in scalars.items() if v is not None]
    out += [("admm_residual", float(v), i) for i, v in enumerate(trial.residuals) if v is not None]
    out += [("train_loss", float(v), i) for i, v in enumerate(trial.train_losses) if v is not None]
    return out


def trial_tags(trial: TrialRecord) -> dict[str, str]:
    """Tags of a trial's run: number, state, Pareto membership, feasibility, stop reason,
    the sparsity summary and the kernel chosen per layer."""
    out = {
        ROLE_TAG: "trial",
        "trial_number": str(trial.number),
        "state": trial.state,
        "pareto": "true" if trial.pareto else "false",
        "summary": trial.sparsity_summary(),
    }
    if trial.feasible is not None:
        out["feasible"] = "true" if trial.feasible else "false"
    if trial.stop_reason:
        out["stop_reason"] = trial.stop_reason
    out.update({f"kernel.{layer}": form for layer, form in trial.kernels.items()})
    return {_key(k): _value(v, MAX_TAG_VALUE) for k, v in out.items()}


def _is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _resolve_sqlite(uri: str) -> tuple[str, Path | None]:
    """Make a relative SQLite path absolute (so the mirror does not move with the current
    folder) and return the database's path."""
    if not uri.startswith("sqlite:///"):
        return uri, None
    rest = uri[len("sqlite:///") :]
    path_part, sep, query = rest.partition("?")
    if not path_part or path_part == ":memory:":
        return uri, None
    path = Path(path_part).expanduser().resolve()
    return f"sqlite:///{path}{sep}{query}", path


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_connection_error(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, urllib.error.URLError)):
            return True
        if type(e).__module__.startswith(("requests", "urllib3")):
            return True
    text = str(exc)
    return "API request to" in text and "failed" in text  # mlflow.utils.rest_utils' wording


def _one_line(exc: BaseException) -> str:
    """A short reason: ``[Errno 111] Connection refused`` rather than a page of urllib3."""
    for e in _chain(exc):
        m = re.search(r"\[Errno -?\d+\][^'\"\)\]]*", str(e))
        if m:
            return m.group(0).strip()
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


# ---------------------------------------------------------------- the tracker


class Tracker:
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
        uri, db_path = _resolve_sqlite(tracking_uri or DEFAULT_TRACKING_URI)
        # MLflow prints "View run ... at: URL" on stdout when a run ends; stdout is for --json
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = uri
        self._warn = warn if warn is not None else _log.warning
        self._enabled = True
        self._client: Any = None
        self._studies: dict[str, _StudyRuns] = {}
        self._artifact_root = db_path.parent / ARTIFACT_DIR if db_path is not None else None
        if db_path is not None:
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._disable(exc)
        if _is_http(uri):
            for name, value in HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)
            self._check_health()

    @property
    def enabled(self) -> bool:
        """False once MLflow failed (or was unreachable at the start)."""
        return self._enabled

    # ------------------------------------------------------------ the guard

    def _disable(self, exc: BaseException) -> None:
        if not self._enabled:
            return
        self._enabled = False
        what = "is unreachable" if _is_connection_error(exc) else "failed"
        reason = _one_line(exc)
        self._warn(f"MLflow tracking at {self.tracking_uri} {what} ({reason}); {_GOES_ON}")

    def _check_health(self) -> None:
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; /health may just be routed elsewhere (a proxy, auth)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None)
            if isinstance(exc, ssl.SSLError) or isinstance(reason, ssl.SSLError):
                return  # it answered; MLflow's own TLS settings decide the rest
            self._disable(exc)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Every MLflow call goes through here: the first failure warns and turns the tracker off."""
        if not self._enabled:
            raise _Off
        try:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any MLflow failure must not stop the search
            self._disable(exc)
            raise _Off from None

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            yield
        except _Off:
            pass

    # ------------------------------------------------------------ lookups

    def _search(self, experiment_id: str, filter_string: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self._call(
                "search_runs",
                [experiment_id],
                filter_string=filter_string,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _experiment(self, name: str) -> str:
        exp = self._call("get_experiment_by_name", name)
        if exp is None:
            location = None
            if self._artifact_root is not None:
                location = (self._artifact_root / _key(name).replace("/", "_")).as_uri()
            return self._call("create_experiment", name, artifact_location=location)
        if exp.lifecycle_stage == "deleted":
            self._call("restore_experiment", exp.experiment_id)
        return exp.experiment_id

    def _open_study(self, meta: StudyMeta, storage: str | None) -> _StudyRuns:
        """The experiment and parent run of a study, found (resume) or created."""
        cached = self._studies.get(meta.name)
        if cached is not None:
            return cached
        exp_id = self._experiment(meta.name)
        parents = self._search(exp_id, f"tags.`{ROLE_TAG}` = 'study'")
        if storage is not None:
            masked = redact(storage)
            parents = [r for r in parents if r.data.tags.get(STORAGE_TAG) in (masked, None)]
        parents.sort(key=lambda r: r.info.start_time or 0)
        if parents:
            parent_id = parents[0].info.run_id
        else:
            tags = {ROLE_TAG: "study", STUDY_NAME_TAG: meta.name}
            if storage is not None:
                tags[STORAGE_TAG] = redact(storage)
            parent_id = self._call("create_run", exp_id, run_name=meta.name, tags=tags).info.run_id
        runs = _StudyRuns(exp_id, parent_id, {})
        self._studies[meta.name] = runs
        return runs

    def _trial_run(self, runs: _StudyRuns, number: int) -> tuple[str, Any]:
        """The run of trial ``number`` and its current state (None when just created)."""
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
        run = self._call("create_run", runs.experiment_id, run_name=f"trial-{number}", tags=tags)
        runs.trial_runs[number] = run.info.run_id
        return run.info.run_id, None

    # ------------------------------------------------------------ writes

    def _log(
        self,
        run_id: str,
        *,
        params: dict[str, str] | None = None,
        metrics: list[tuple[str, float, int]] | None = None,
        tags: dict[str, str] | None = None,
        existing: Any = None,
    ) -> None:
        """``log_batch`` in chunks within MLflow's limits. With ``existing`` (the run as it
        is), params already there are skipped (MLflow refuses to change them), metrics
        already there at the same step are skipped, and unchanged tags are not rewritten."""
        from mlflow.entities import Metric, Param, RunTag

        params = dict(params or {})
        metrics = list(metrics or [])
        tags = dict(tags or {})
        if existing is not None:
            params = {k: v for k, v in params.items() if k not in existing.data.params}
            tags = {k: v for k, v in tags.items() if existing.data.tags.get(k) != v}
            latest = existing.data.metrics
            counts: dict[str, int] = {}
            for key, _, step in metrics:
                counts[key] = counts.get(key, 0) + (1 if step == 0 else 2)
            steps_logged: dict[str, set[int]] = {}
            kept = []
            for key, value, step in metrics:
                if key not in latest:
                    kept.append((key, value, step))
                elif counts[key] == 1:  # a single value: log it again only if it changed
                    if latest[key] != value:
                        kept.append((key, value, step))
                else:  # a history: add the steps not logged yet
                    if key not in steps_logged:
                        steps_logged[key] = {m.step for m in self._call("get_metric_history", run_id, key)}
                    if step not in steps_logged[key]:
                        kept.append((key, value, step))
            metrics = kept
        now = int(time.time() * 1000)
        metric_objs = [Metric(_key(k), v, now, s) for k, v, s in metrics if math.isfinite(v)]
        param_objs = [Param(k, v) for k, v in params.items()]
        tag_objs = [RunTag(k, v) for k, v in tags.items()]
        while param_objs or tag_objs or metric_objs:
            p, param_objs = param_objs[:MAX_PARAMS_PER_BATCH], param_objs[MAX_PARAMS_PER_BATCH:]
            t, tag_objs = tag_objs[:MAX_TAGS_PER_BATCH], tag_objs[MAX_TAGS_PER_BATCH:]
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
            m, metric_objs = metric_objs[:room], metric_objs[room:]
            self._call("log_batch", run_id, metrics=m, params=p, tags=t)

    # ------------------------------------------------------------ the public API

    def start_study(self, meta: StudyMeta, storage: str) -> None:
        """Open (or, on resume, find) the study's experiment and parent run and log the
        search settings and the dense baseline.

        On resume the parent run is the oldest run tagged ``autoprune.role=study`` in the
        experiment whose ``optuna.storage`` tag is this storage (or unset), so a study of the
        same name in another storage gets its own parent. A deleted experiment is restored.

        Args:
            meta: The study's settings and dense baseline.
            storage: The Optuna storage URL (kept as a tag, password masked).
        """
        with self._guarded():
            runs = self._open_study(meta, storage)
            existing = self._call("get_run", runs.parent_run_id)
            params = {_key(k): _value(v) for k, v in _settings_params(meta).items()}
            dense = {
                "dense_accuracy": meta.dense_accuracy,
                "dense_test_accuracy": meta.dense_test_accuracy,
                "dense_latency_ms": meta.dense_latency_ms,
                "dense_latency_p90_ms": meta.dense_latency_p90_ms,
                "dense_macs": meta.dense_macs,
                "dense_params": meta.dense_params,
            }
            params.update({k: _value(v) for k, v in dense.items()})
            tags = {
                ROLE_TAG: "study",
                STUDY_NAME_TAG: meta.name,
                STORAGE_TAG: _value(redact(storage)),
            }
            metrics = [(k, float(v), 0) for k, v in dense.items() if v is not None]
            self._log(runs.parent_run_id, params=params, metrics=metrics, tags=tags, existing=existing)
            self._call("log_dict", runs.parent_run_id, meta.to_dict(), "study_meta.json")
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
            run_id, existing = self._trial_run(runs, trial.number)
            self._log(
                run_id,
                params=trial_params(meta, trial),
                metrics=trial_metrics(trial),
                tags=trial_tags(trial),
                existing=existing,
            )
            if config_yaml is not None:
                self._call("log_text", run_id, config_yaml, "config.yaml")
            status = _STATUS.get(trial.state)
            current = existing.info.status if existing is not None else "RUNNING"
            if status is not None and current != status:
                self._call("set_terminated", run_id, status=status)
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
        pareto = {t.number: ("true" if t.pareto else "false") for t in record.trials}
        children = self._search(runs.experiment_id, f"tags.`{PARENT_TAG}` = '{parent}'")
        for run in children:
            number = run.data.tags.get("trial_number")
            if number is None or not number.lstrip("-").isdigit():
                continue
            runs.trial_runs.setdefault(int(number), run.info.run_id)
            want = pareto.get(int(number))
            if want is not None and run.data.tags.get("pareto") != want:
                self._call("set_tag", run.info.run_id, "pareto", want)
        for path in files.values():
            self._call("log_artifact", parent, str(path))
        best = record.best_feasible()
        summary: dict[str, float | None] = {
            "n_trials": len(record.trials),
            "n_complete": len(record.completed),
            "n_feasible": len(record.feasible),
            "n_pareto": len(record.front),
            "best_feasible_speedup": best.speedup if best else None,
            "best_feasible_accuracy": best.accuracy if best else None,
            "best_feasible_latency_ms": best.latency_ms if best else None,
        }
        step = len(record.trials)
        metrics = [(k, float(v), step) for k, v in summary.items() if v is not None]
        tags = {"best_feasible_trial": str(best.number) if best else "none"}
        if best is not None:
            speedup = f"{best.speedup:.2f}x, " if best.speedup is not None else ""
            tags["mlflow.note.content"] = (
                f"Fastest within the budget: trial {best.number} ({speedup}{best.latency_ms:.4g} ms) at "
                f"{100 * best.accuracy:.2f}% accuracy; {len(record.front)} trials on the Pareto front."
            )
        self._log(parent, metrics=metrics, tags=tags)
        self._call("set_terminated", parent, status="FINISHED")


def write_study_artifacts(
    record: StudyRecord,
    folder: Path,
    *,
    study: Any = None,
    best_config_yaml: str | None = None,
    figures: bool = True,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the study's files (dense baseline, best config, figures, report) into ``folder``."""
    from autoprune import report

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
        "latency_batch": meta.latency_batch,
        "dtype": meta.dtype,
        "accuracy": meta.dense_accuracy,
        "test_accuracy": meta.dense_test_accuracy,
        "latency_ms": meta.dense_latency_ms,
        "latency_p90_ms": meta.dense_latency_p90_ms,
        "macs": meta.dense_macs,
        "params": meta.dense_params,
        "versions": meta.versions,
    }
    files["dense_baseline"] = folder / "dense_baseline.json"
    files["dense_baseline"].write_text(json.dumps(baseline, indent=2) + "\n", encoding="utf-8")
    if best_config_yaml is not None:
        files["best_config"] = folder / "best_config.yaml"
        files["best_config"].write_text(best_config_yaml, encoding="utf-8")
    if not figures:
        return files
    files["pareto"] = report.write_figure_html(report.pareto_figure(record), folder / "pareto.html")
    files["layer_heatmap"] = report.write_figure_html(
        report.layer_heatmap(record), folder / "layer_heatmap.html"
    )
    importances = None
    if study is not None and len(record.completed) >= 2:
        try:
            importances = report.param_importances(study, record)
        except Exception as exc:  # noqa: BLE001 - optuna.importance can fail on odd spaces: skip
            (warn or (lambda _m: None))(f"parameter importances skipped: {_one_line(exc)}")
    fig = report.importance_figure(None, record, importances=importances) if importances else None
    if fig is not None:
        files["param_importances"] = report.write_figure_html(fig, folder / "param_importances.html")
    files["report"] = report.write_report(
        record,
        folder / "report.html",
        chosen=record.best_feasible(),
        chosen_yaml=best_config_yaml,
        importances=importances or {},
    )
    return files
