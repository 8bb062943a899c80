"""What a search does besides its trials: per-trial and per-study side effects, passed in.

The search itself writes only the study's storage, ``summary.json`` and ``best_config.yaml``.
Anything else (the MLflow mirror, the study's figures and report) is a
:class:`SearchCallback` the caller passes to :func:`~autoprune.study.run_search`, as
Optuna's ``study.optimize(callbacks=[...])`` takes per-trial callbacks: the search never
imports the tracking or report layers. The CLI wires them:

    >>> from autoprune.tracking import Tracker  # doctest: +SKIP
    >>> run_search(settings, callbacks=[TrackerCallback(Tracker(uri))])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna

from autoprune.study.configs import trial_config_yaml
from autoprune.study.records import StudyMeta, StudyRecord, TrialRecord


@dataclass(frozen=True)
class SearchEnd:
    """How a search run ended, as its end-of-search callbacks see it.

    Attributes:
        study_dir: The study's folder under ``runs/`` (``summary.json``, ``best_config.yaml``).
        best_config_yaml: The best feasible trial's config YAML; None when the best is dense
            or nothing is within the budget.
        interrupted: The run was stopped (Ctrl-C, SIGTERM) before the study had its trials.
    """

    study_dir: Path
    best_config_yaml: str | None
    interrupted: bool = False


class SearchCallback:
    """The side effects of one search run; every hook does nothing unless overridden.

    The lifecycle: :meth:`on_study_start` once the study is open (created, joined or
    resumed) and its slots are ready; :meth:`on_trial_end` after each trial this worker ran
    is told to the storage (whatever its state); :meth:`on_search_end` once, after the
    end-of-search re-measurement and ``summary.json``.
    """

    def on_study_start(self, meta: StudyMeta, storage: str) -> None:
        """The study is open: ``meta`` is its stored settings, ``storage`` its URL."""

    def on_trial_end(self, record: StudyRecord, trial: TrialRecord) -> None:
        """Trial ``trial`` ended; ``record`` is the whole study as stored just after."""

    def on_search_end(self, record: StudyRecord, study: optuna.Study, end: SearchEnd) -> None:
        """This worker stopped; ``record`` is the study as it stands."""


class StudyMirror(Protocol):
    """What :class:`TrackerCallback` calls: the API of :class:`autoprune.tracking.Tracker`."""

    def start_study(self, meta: StudyMeta, storage: str) -> None: ...

    def log_trial(self, meta: StudyMeta, trial: TrialRecord, config_yaml: str | None = None) -> None: ...

    def finish_study(self, record: StudyRecord, *, study: Any = None, best_config_yaml: str | None = None,  # noqa: ANN401
                     out_dir: Path | None = None) -> Any: ...  # noqa: ANN401


class TrackerCallback(SearchCallback):
    """Mirrors the study to a tracker (MLflow): a parent run, one run per trial with its
    config YAML, and at the end the study's artifacts, written into its folder as well.

    Args:
        tracker: An :class:`autoprune.tracking.Tracker` (or anything with its three methods).
    """

    def __init__(self, tracker: StudyMirror) -> None:
        self.tracker = tracker

    def on_study_start(self, meta: StudyMeta, storage: str) -> None:
        self.tracker.start_study(meta, storage)

    def on_trial_end(self, record: StudyRecord, trial: TrialRecord) -> None:
        self.tracker.log_trial(record.meta, trial, trial_config_yaml(record, trial))

    def on_search_end(self, record: StudyRecord, study: optuna.Study, end: SearchEnd) -> None:
        self.tracker.finish_study(record, study=study, best_config_yaml=end.best_config_yaml, out_dir=end.study_dir)


class ArtifactsCallback(SearchCallback):
    """Writes the study's files (figures, report, dense baseline) into its folder at the end.

    Args:
        write: ``write(record, folder, *, study, best_config_yaml)``, e.g.
            :func:`autoprune.tracking.write_study_artifacts`.
    """

    def __init__(self, write: Callable[..., Any]) -> None:
        self.write = write

    def on_search_end(self, record: StudyRecord, study: optuna.Study, end: SearchEnd) -> None:
        self.write(record, end.study_dir, study=study, best_config_yaml=end.best_config_yaml)
