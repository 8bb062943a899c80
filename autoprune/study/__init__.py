"""The search's study: Optuna over per-layer sparsity types and rates, scored by a validation
metric and latency measured on the target device, under a budget on the metric.

The Python API's entry point is the function :func:`autoprune.search` (:mod:`autoprune.api`);
this package is what it and ``autoprune search`` run.

* :mod:`~autoprune.study.settings` — what a run is asked (frozen, checked up front);
* :mod:`~autoprune.study.space` — search spaces → Optuna suggestions; :mod:`~autoprune.study.space_file` their YAML files;
* :mod:`~autoprune.study.opening` — create, join or resume a study; resolve a worker's settings;
* :mod:`~autoprune.study.baseline` — the dense baseline, measured once per study;
* :mod:`~autoprune.study.slots` — trial slots shared by workers, heartbeats, stale trials;
* :mod:`~autoprune.study.objective` — one trial (latency first, then ADMM, early stops);
* :mod:`~autoprune.study.loop` — the loop: one trial at a time, callbacks, the study's files;
* :mod:`~autoprune.study.callbacks` — side effects the caller passes (MLflow, figures);
* :mod:`~autoprune.study.remeasure` — the winners timed again, side by side;
* :mod:`~autoprune.study.records` — plain records of a study rebuilt from the storage;
* :mod:`~autoprune.study.configs` — a trial as a ``prune --config`` YAML;
* :mod:`~autoprune.study.summary` — what a run did, and the end-of-run table.
"""

from autoprune.study.callbacks import ArtifactsCallback, SearchCallback, SearchEnd, TrackerCallback
from autoprune.study.configs import best_config_yaml, trial_config_yaml
from autoprune.study.loop import run_search
from autoprune.study.records import StudyMeta, StudyRecord, TrialRecord, study_record
from autoprune.study.settings import SEARCH_ADMM, SearchSettings, parse_budget
from autoprune.study.space import SearchSpace
from autoprune.study.space_file import load_space
from autoprune.study.storage import DEFAULT_STORAGE, default_storage, load_autoprune_study, open_storage
from autoprune.study.summary import SearchResult, print_summary

__all__ = [
    "ArtifactsCallback",
    "DEFAULT_STORAGE",
    "SEARCH_ADMM",
    "SearchCallback",
    "SearchEnd",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "StudyMeta",
    "StudyRecord",
    "TrackerCallback",
    "TrialRecord",
    "best_config_yaml",
    "default_storage",
    "load_autoprune_study",
    "load_space",
    "open_storage",
    "parse_budget",
    "print_summary",
    "run_search",
    "study_record",
    "trial_config_yaml",
]
