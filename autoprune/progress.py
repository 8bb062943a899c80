"""Progress reporting for long work, kept out of the library's logic.

Library functions take an optional :class:`Reporter`. The default does nothing, so
tests and scripts stay quiet; the CLI passes :class:`RichReporter`, which draws
progress bars on stderr (epochs, batches, ADMM iterations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["LogReporter", "Reporter", "RichReporter", "Task"]


class Task:
    """A handle on one running task: advance it and attach short status fields."""

    def advance(self, n: int = 1) -> None:  # noqa: D102 - trivial
        pass

    def set(self, **fields: Any) -> None:  # noqa: D102 - trivial
        pass


class Reporter:
    """No-op reporter; subclasses draw progress somewhere."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        yield Task()

    def log(self, message: str) -> None:
        """A one-line message worth keeping (a finished epoch, a result)."""


class _RichTask(Task):
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._id = task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)

    def set(self, **fields: Any) -> None:
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._id, info=text)


class RichReporter(Reporter):
    """Progress bars on stderr with rich; nested tasks show as separate bars."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._depth = 0

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        if self._depth == 0:
            self._progress.start()
        self._depth += 1
        task_id = self._progress.add_task(description, total=total, info="")
        try:
            yield _RichTask(self._progress, task_id)
        finally:
            self._depth -= 1
            if self._depth > 0:
                self._progress.remove_task(task_id)
            else:
                self._progress.stop()
                for tid in list(self._progress.task_ids):
                    self._progress.remove_task(tid)

    def log(self, message: str) -> None:
        # soft_wrap: one message is one line (a terminal folds it; pipes and logs keep it whole),
        # so no number is ever split across lines
        console = self._progress.console if self._depth else self.console
        console.print(message, soft_wrap=True, highlight=False)


class LogReporter(Reporter):
    """One line per message on stderr, with the seconds since it was made (no bars: for
    scripts, notebooks and logs)."""

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self._t0 = self._clock()

    def log(self, message: str) -> None:
        import sys

        print(f"[{self._clock() - self._t0:7.1f} s] {message}", file=sys.stderr, flush=True)
