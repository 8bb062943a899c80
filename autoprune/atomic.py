"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer writes a temporary sibling (``.NAME.PID-THREAD.tmp``, unique to the writer),
flushes it to disk, then renames it over the target, which POSIX does atomically: a
process killed at any moment leaves the old file or the new one under the target's name,
never a torn one (at worst a stray ``.tmp`` sibling)::

    with atomic_path("runs/x/model.pt") as tmp:
        torch.save(state, tmp)

A folder is built beside its target and put in place with :func:`replace_folder`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "check_writable", "replace_folder", "save_torch_atomic", "staged_folder",
           "write_text_atomic"]


def check_writable(path: str | os.PathLike, *, what: str, folder: bool = False) -> Path:
    """Refuse, before any work is done, a place that cannot be written: a file path that is a
    folder, or a path under a file or under a folder this process may not write in. Nothing is
    created.

    Args:
        path: The file (or, with ``folder``, the folder) to be written.
        what: What it is, for the message (``"--out"``).
        folder: ``path`` is a folder to write into (an existing folder is fine).

    Raises:
        UserError: naming the path and why.
    """
    from autoprune.errors import UserError

    path = Path(path)
    if not folder and path.is_dir():
        raise UserError(f"{what} '{path}' is a folder; give a file name.")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what} '{path}' is a file; give a folder.")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} '{path}' cannot be written: '{parent}' is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} '{path}' cannot be written: no permission to write in '{parent}'.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block ends
    without an exception, removed when it raises. Folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (folders are created)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:  # noqa: ANN401 - what torch.save takes
    """``torch.save(obj, path)`` atomically (folders are created)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _flush_to_disk(path: Path) -> None:
    """fsync the file's data, so that the rename cannot reach the disk before it (power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A new, empty temporary sibling folder of ``out`` that becomes ``out`` when the block succeeds
    (:func:`replace_folder`) and is removed when it fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the folder ``new`` (a sibling of ``path``, complete) in place as ``path``.

    Where ``path`` does not exist or is an empty folder, one rename. Where it holds an
    older folder, the two are swapped in one step (Linux ``renameat2(RENAME_EXCHANGE)``)
    and the old one, now under ``new``'s name, is deleted; a process killed at any moment
    leaves the old folder or the new one at ``path``. Where the swap is not available
    (another OS, a file system without it), the old folder is first renamed aside
    (``.NAME.old-PID``) and deleted once the new one is in place.
    """
    new, path = Path(new), Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        os.replace(new, path)
        return
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
