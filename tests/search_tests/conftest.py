"""Fixtures for search tests: a real PostgreSQL server on 127.0.0.1 for multi-worker runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres (PATH first, then Debian's layout)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").is_file():
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():  # noqa: ANN201
    """Start a throw-away PostgreSQL server on 127.0.0.1 and yield its SQLAlchemy URL.

    PostgreSQL refuses to run as root; as root the server runs as the 'postgres' user.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    preexec = None
    root = tempfile.mkdtemp(prefix="autoprune-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)

        def preexec() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    data = Path(root) / "data"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "autoprune", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, preexec_fn=preexec, env=env, cwd=root)
    log = Path(root) / "server.log"
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True, preexec_fn=preexec, env=env, cwd=root)
    try:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="autoprune", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql+psycopg2://autoprune@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       preexec_fn=preexec, env=env, cwd=root)
        shutil.rmtree(root, ignore_errors=True)
