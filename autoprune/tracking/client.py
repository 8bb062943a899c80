"""The guarded MLflow client under :class:`autoprune.tracking.Tracker`: every call goes through
one guard (:meth:`GuardedClient._with_client`), and the first failure (an unreachable server, a
locked database) is reported once through ``warn`` and turns the client off; batched writes
within MLflow's limits (:meth:`GuardedClient._log`) and artifacts resolved against the
tracking root."""


from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autoprune.tracking.connection import DEFAULT_TRACKING_URI, Connection, describe_failure
from autoprune.tracking.keys import (
    mlflow_key,
)

__all__ = ["GuardedClient"]

# MLflow's batch limits (mlflow.utils.validation)
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000

_GOES_ON = "the search goes on without tracking"


_log = logging.getLogger(__name__)



class _Off(Exception):
    """Raised inside the tracker once MLflow failed; public methods turn it into a no-op."""



class GuardedClient:
    """An ``MlflowClient`` at ``tracking_uri`` behind one guard (see the module docstring)."""

    def __init__(self, tracking_uri: str | None = None, *, warn: Callable[[str], None] | None = None) -> None:
        self._conn = Connection.resolve(tracking_uri or DEFAULT_TRACKING_URI)
        # MLflow prints "View run ... at: URL" on stdout when a run ends; stdout is for --json
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = self._conn.uri
        self._warn = warn if warn is not None else _log.warning
        self._enabled = True
        self._client: Any = None
        self._repos: dict[str, Any] = {}  # run id -> its artifact repository
        self._opened = False  # the connection is opened by the first call: nothing is written before it

    @property
    def enabled(self) -> bool:
        """False once MLflow failed (or was unreachable when first used)."""
        return self._enabled

    # ------------------------------------------------------------ the guard

    def _disable(self, exc: BaseException) -> None:
        if not self._enabled:
            return
        self._enabled = False
        self._warn(f"MLflow tracking at {self.tracking_uri} {describe_failure(exc)}; {_GOES_ON}")

    def _with_client(self, fn: Callable[[Any], Any]) -> Any:  # noqa: ANN401
        """Every MLflow call goes through here: the first failure warns and turns the tracker off."""
        if not self._enabled:
            raise _Off
        if not self._opened:
            self._opened = True
            failure = self._conn.open()
            if failure is not None:
                self._disable(failure)
                raise _Off
        try:
            if self._client is None:
                from mlflow import MlflowClient  # heavy: only once something is logged

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            return fn(self._client)
        except Exception as exc:  # noqa: BLE001 - any MLflow failure must not stop the search
            self._disable(exc)
            raise _Off from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        """``MlflowClient.<method>(*args, **kwargs)``, guarded."""
        return self._with_client(lambda client: getattr(client, method)(*args, **kwargs))

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            yield
        except _Off:
            pass

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
        return self._with_client(lambda client: self._conn.experiment_id(client, name))

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
        metric_objs = [Metric(mlflow_key(k), v, now, s) for k, v, s in metrics if math.isfinite(v)]
        param_objs = [Param(k, v) for k, v in params.items()]
        tag_objs = [RunTag(k, v) for k, v in tags.items()]
        while param_objs or tag_objs or metric_objs:
            p, param_objs = param_objs[:MAX_PARAMS_PER_BATCH], param_objs[MAX_PARAMS_PER_BATCH:]
            t, tag_objs = tag_objs[:MAX_TAGS_PER_BATCH], tag_objs[MAX_TAGS_PER_BATCH:]
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
            m, metric_objs = metric_objs[:room], metric_objs[room:]
            self._call("log_batch", run_id, metrics=m, params=p, tags=t)

    def _artifacts(self, run_id: str) -> Any:  # noqa: ANN401 - an mlflow ArtifactRepository
        """The run's artifact repository, its location resolved against the tracking root
        (:meth:`Connection.artifact_repository`), not against the current folder."""
        repo = self._repos.get(run_id)
        if repo is None:
            uri = self._call("get_run", run_id).info.artifact_uri
            repo = self._repos[run_id] = self._with_client(lambda _: self._conn.artifact_repository(uri))
        return repo

    def _log_artifact(self, run_id: str, path: Path) -> None:
        repo = self._artifacts(run_id)
        self._with_client(lambda _: repo.log_artifact(str(path)))

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory(prefix="autoprune-mlflow-") as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            self._log_artifact(run_id, path)

