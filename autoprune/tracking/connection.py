"""Where MLflow keeps runs, and reaching it: the one connection helper of the tracking.

A tracking URI is resolved once into a :class:`Connection`: a relative SQLite path made
absolute (so the mirror does not move with the current folder), artifacts beside the
database (``mlartifacts/``, instead of MLflow's ``./mlruns`` in the current folder), and
for an http(s) server fail-fast settings and a ``/health`` check, so that an unreachable
server costs seconds, not minutes.

An experiment created beside a SQLite database named by a relative path (the default
``sqlite:///runs/mlflow.db``) stores its artifact location relative in the same way
(``runs/mlartifacts/<experiment>``): plain MLflow resolves both against the folder it is
started in, so the database and its artifacts move together (copy ``runs/`` anywhere and run
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` beside it). MLflow's API makes a
relative location absolute when it creates an experiment, so the relative one is written
after creation; autoprune itself writes artifacts through :meth:`Connection.artifact_repository`,
which resolves a relative location against the database's own ``mlartifacts/`` folder, from any
current folder. A database named by an absolute path keeps absolute artifact locations. Example::

    conn = Connection.resolve("sqlite:///runs/mlflow.db")
    failure = conn.open()            # None, or why MLflow cannot be used
    experiment_id = conn.experiment_id(MlflowClient(tracking_uri=conn.uri), "my-study")
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.errors import first_line
from autoprune.tracking.keys import mlflow_key

__all__ = [
    "ARTIFACT_DIR",
    "DEFAULT_TRACKING_URI",
    "HEALTH_TIMEOUT_S",
    "HTTP_ENV_DEFAULTS",
    "Connection",
    "describe_failure",
    "is_connection_error",
    "is_relative_location",
]

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
ARTIFACT_DIR = "mlartifacts"  # next to a SQLite database, instead of MLflow's ./mlruns in the current folder

# Fail fast against a remote server (MLflow's defaults: 7 retries with backoff, 120 s timeout).
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
HEALTH_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Connection:
    """A resolved tracking URI.

    Args:
        uri: ``sqlite:///<absolute path>`` or ``http(s)://host:port`` (as given, for others).
        db_path: The SQLite database, or None.
        db_as_given: The database's path as the URI gave it, when relative (``runs/mlflow.db``).
    """

    uri: str
    db_path: Path | None = None
    db_as_given: Path | None = None

    @classmethod
    def resolve(cls, uri: str | None) -> Connection:
        """``uri`` (default :data:`DEFAULT_TRACKING_URI`) with a relative SQLite path made absolute."""
        uri = uri or DEFAULT_TRACKING_URI
        if not uri.startswith("sqlite:///"):
            return cls(uri)
        rest = uri[len("sqlite:///") :]
        path_part, sep, query = rest.partition("?")
        if not path_part or path_part == ":memory:":
            return cls(uri)
        given = Path(path_part).expanduser()
        path = given.resolve()
        return cls(f"sqlite:///{path}{sep}{query}", path, None if given.is_absolute() else given)

    @property
    def is_http(self) -> bool:
        return self.uri.lower().startswith(("http://", "https://"))

    @property
    def artifact_root(self) -> Path | None:
        """Where new experiments keep their artifacts: beside a SQLite database, else MLflow's choice."""
        return self.db_path.parent / ARTIFACT_DIR if self.db_path is not None else None

    def open(self) -> BaseException | None:
        """Get ready to log: create the database's folder; for a server, set
        :data:`HTTP_ENV_DEFAULTS` in the process environment (unless the user set them) and
        check ``<uri>/health`` once (:data:`HEALTH_TIMEOUT_S`).

        Returns:
            None, or the error that makes MLflow unusable (see :func:`describe_failure`).
        """
        if self.db_path is not None:
            try:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return exc
            if not self.db_path.exists():
                self._seed_new_database()
        if not self.is_http:
            return None
        for name, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; /health may just be routed elsewhere (a proxy, auth)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None)
            if isinstance(exc, ssl.SSLError) or isinstance(reason, ssl.SSLError):
                return None  # it answered; MLflow's own TLS settings decide the rest
            return exc
        return None

    def experiment_id(self, client: Any, name: str) -> str:  # noqa: ANN401 - an mlflow.MlflowClient
        """The id of experiment ``name``: found (a deleted one is restored) or created, with
        its artifacts under :attr:`artifact_root` when there is one (stored relative when
        the database was named by a relative path, see the module's notes)."""
        exp = client.get_experiment_by_name(name)
        if exp is None:
            if self.artifact_root is None:
                return client.create_experiment(name)
            folder = mlflow_key(name).replace("/", "_")
            exp_id = client.create_experiment(name, artifact_location=(self.artifact_root / folder).as_uri())
            if self.db_as_given is not None:
                self._set_artifact_location(exp_id, (self.db_as_given.parent / ARTIFACT_DIR / folder).as_posix())
            return exp_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _seed_new_database(self) -> None:
        """Start a new database as a copy of an empty one made by this MLflow version (cached
        under ``$XDG_CACHE_HOME/autoprune``): MLflow's own creation runs every schema migration,
        about 4 s on a 2-core CPU, for each new ``runs/`` folder. Without a usable cache
        (unwritable, or any error) MLflow creates the database itself, as before."""
        assert self.db_path is not None
        try:
            template = empty_database()
            tmp = self.db_path.with_name(f".{self.db_path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(template.read_bytes())
            with contextlib.closing(sqlite3.connect(tmp, timeout=30)) as db, db:  # MLflow's Default experiment
                db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                           ((self.db_path.parent / ARTIFACT_DIR / "0").resolve().as_uri(),))
            try:
                os.link(tmp, self.db_path)  # only where no database appeared meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - an optimisation: MLflow creates the database otherwise
            return

    def _set_artifact_location(self, experiment_id: str, location: str) -> None:
        """Store ``location`` as the experiment's artifact location, as it is (MLflow's API
        makes every local location absolute); its runs created afterwards inherit it."""
        assert self.db_path is not None
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                       (location, int(experiment_id)))

    def local_artifacts(self, location: str) -> Path | None:
        """The folder a relative artifact location under ``mlartifacts/`` stands for: the one
        beside this database, wherever the current folder is; None for any other location."""
        parts = Path(location).parts
        if self.db_path is None or not is_relative_location(location) or ARTIFACT_DIR not in parts:
            return None
        return self.db_path.parent.joinpath(*parts[parts.index(ARTIFACT_DIR):])

    def location_base(self, location: str) -> Path | None:
        """The folder against which MLflow must resolve the relative ``location`` to reach
        :meth:`local_artifacts` (the folder the search ran in); None when it cannot be told."""
        local = self.local_artifacts(location)
        parts = Path(location).parts
        if local is None or ".." in parts:
            return None
        return local.parents[len(parts) - 1]

    def artifact_repository(self, artifact_uri: str) -> Any:  # noqa: ANN401 - an mlflow ArtifactRepository
        """Where a run's artifacts are written: :meth:`local_artifacts` for a relative location
        under ``mlartifacts/`` (not the current folder, as MLflow would), MLflow's choice otherwise."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        local = self.local_artifacts(artifact_uri)
        if local is not None:
            return LocalArtifactRepository(str(local))
        return get_artifact_repository(artifact_uri, tracking_uri=self.uri)


def empty_database() -> Path:
    """An empty MLflow tracking database of the installed MLflow version, made once per
    machine and version in ``$XDG_CACHE_HOME/autoprune`` (default ``~/.cache/autoprune``)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoprune"
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{path.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{tmp}", (cache / "mlartifacts").as_uri())
    store.engine.dispose()
    os.replace(tmp, path)
    return path


def is_relative_location(artifact_uri: str) -> bool:
    """Whether ``artifact_uri`` is a relative local path (no scheme, not absolute)."""
    return "://" not in artifact_uri and ":" not in artifact_uri.split("/")[0] and not Path(artifact_uri).is_absolute()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the server could not be reached."""
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, urllib.error.URLError)):
            return True
        if type(e).__module__.startswith(("requests", "urllib3")):
            return True
    text = str(exc)
    return "API request to" in text and "failed" in text  # mlflow.utils.rest_utils' wording


def describe_failure(exc: BaseException) -> str:
    """``is unreachable ([Errno 111] Connection refused)`` or ``failed (<first line>)``: what
    follows "MLflow tracking at URI" in a warning. The reason is the ``[Errno N] ...`` of the
    cause where there is one, rather than a page of urllib3."""
    what = "is unreachable" if is_connection_error(exc) else "failed"
    for e in _chain(exc):
        m = re.search(r"\[Errno -?\d+\][^'\"\)\]]*", str(e))
        if m:
            return f"{what} ({m.group(0).strip()})"
    return f"{what} ({first_line(exc, limit=200)})"
