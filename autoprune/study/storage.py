"""Optuna storages from a URL, with one clear error when they cannot be opened.

* ``sqlite:///runs/optuna.db`` (the default), ``postgresql://user:pw@host/db``,
  ``mysql+pymysql://...``: Optuna's RDB storage (SQLAlchemy URLs);
* ``journal:///path/to/study.log`` or a path ending in ``.log`` / ``.journal``: a
  journal file, which several processes (also on several machines sharing a file
  system with working locks) can append to.

PostgreSQL, MySQL and journal files serve several workers; SQLite serves one process
well and a few on one machine passably.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"


def default_storage(runs_dir: str | Path = "runs") -> str:
    """``sqlite:///<runs_dir>/optuna.db``."""
    return f"sqlite:///{Path(runs_dir) / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def absolute_storage(url: str) -> str:
    """The storage URL with a relative file path (SQLite database, journal file) made
    absolute: what it names, whatever the current folder (``sqlite:///runs/optuna.db`` ->
    ``sqlite:////home/me/project/runs/optuna.db``)."""
    if url.startswith("sqlite:///"):
        path, sep, query = url[len("sqlite:///"):].partition("?")
        if path and path != ":memory:" and not Path(path).expanduser().is_absolute():
            return f"sqlite:///{Path(path).expanduser().resolve()}{sep}{query}"
        return url
    journal = _journal_path(url)
    if journal is not None and not journal.expanduser().is_absolute():
        return f"journal://{journal.expanduser().resolve()}"
    return url


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    if "://" not in url and (url.endswith(".log") or url.endswith(".journal")):
        return Path(url)
    return None


def storage_exists(url: str) -> bool:
    """Whether the storage ``url`` may already hold studies: False only for a SQLite database
    or journal file that is not there (opening it would create it). Server URLs: True."""
    journal = _journal_path(url)
    if journal is not None:
        return journal.exists()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].partition("?")[0]
        return not path or path == ":memory:" or Path(path).expanduser().exists()
    return True


def open_storage(url: str) -> Any:  # noqa: ANN401 - optuna.storages.BaseStorage
    """An Optuna storage for ``url``.

    Raises:
        UserError: for an unknown scheme, a missing driver, or a server that cannot be reached.
    """
    import optuna

    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(journal)))
        except OSError as exc:
            raise UserError(f"cannot open the journal file '{journal}': {exc.strerror or exc}.") from None
    if "://" not in url:
        raise UserError(f"--storage '{url}' is not a storage URL; use sqlite:///FILE.db, postgresql://USER@HOST/DB, "
                        f"or journal:///FILE.log.")
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) and str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create the folder of the storage '{url}': {exc.strerror or exc}.") from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 5}}
    elif url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ModuleNotFoundError as exc:
            raise UserError(f"--storage {redact(url)} needs the database driver '{exc.name}'; install it "
                            f"(PostgreSQL: pip install psycopg2-binary).") from None
        except Exception as exc:  # sqlalchemy errors: bad URL, unreachable server, auth failure
            text = str(exc)
            # workers that open a fresh database at the same moment race to create Optuna's
            # tables; the loser sees a duplicate and simply opens what the winner made
            if attempt < 5 and any(k in text for k in ("duplicate key", "already exists", "UniqueViolation",
                                                       "UNIQUE constraint failed", "database is locked")):
                time.sleep(0.5 * (attempt + 1))
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise UserError(f"cannot open the Optuna storage {redact(url)}: {first[:300]}") from None
    raise AssertionError("unreachable")


def missing_storage_file(url: str) -> Path | None:
    """The file of a SQLite or journal storage URL when it does not exist (opening it would
    create an empty one), else None."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].partition("?")[0]
        if not path or path == ":memory:":
            return None
        return None if Path(path).exists() else Path(path)
    journal = _journal_path(url)
    return journal if journal is not None and not journal.exists() else None


def load_autoprune_study(name: str, url: str) -> Any:  # noqa: ANN401 - optuna.Study
    """An existing study by name, with a clear error listing the studies that do exist."""
    import optuna

    missing = missing_storage_file(url)
    if missing is not None:
        raise UserError(f"there is no Optuna storage at '{missing}' (run 'autoprune search' first, or pass --storage).")
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        have = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
        raise UserError(f"no study named '{name}' in {redact(url)} (studies there: {have}).") from None
