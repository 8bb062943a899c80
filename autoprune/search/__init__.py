"""The search: Optuna over per-layer sparsity types and rates, scored by a validation metric
and latency measured on the target device, under a budget on the metric.

Called, ``autoprune.search(model, example_inputs, train=..., evaluate=...)`` runs
:func:`autoprune.api.search` (the Python API's entry point; its docstring has every argument).

* :mod:`~autoprune.search.settings` — what a run is asked (frozen, checked up front);
* :mod:`~autoprune.search.space` — YAML search spaces → Optuna suggestions;
* :mod:`~autoprune.search.opening` — create, join or resume a study; resolve a worker's settings;
* :mod:`~autoprune.search.baseline` — the dense baseline, measured once per study;
* :mod:`~autoprune.search.slots` — trial slots shared by workers, heartbeats, stale trials;
* :mod:`~autoprune.search.objective` — one trial (latency first, then ADMM, early stops);
* :mod:`~autoprune.search.study` — the loop: one trial at a time, callbacks, the study's files;
* :mod:`~autoprune.search.callbacks` — side effects the caller passes (MLflow, figures);
* :mod:`~autoprune.search.remeasure` — the winners timed again, side by side;
* :mod:`~autoprune.search.records` — plain records of a study rebuilt from the storage;
* :mod:`~autoprune.search.configs` — a trial as a ``prune --config`` YAML;
* :mod:`~autoprune.search.summary` — what a run did, and the end-of-run table.
"""

import sys
import types
from typing import Any

from autoprune.search.callbacks import ArtifactsCallback, SearchCallback, SearchEnd, TrackerCallback
from autoprune.search.configs import best_config_yaml
from autoprune.search.records import StudyMeta, StudyRecord, TrialRecord, study_record
from autoprune.search.settings import SEARCH_ADMM, SearchSettings, parse_budget
from autoprune.search.space import SearchSpace, load_space
from autoprune.search.storage import DEFAULT_STORAGE, open_storage
from autoprune.search.study import run_search
from autoprune.search.summary import SearchResult, print_summary

__all__ = [
    "DEFAULT_STORAGE",
    "SEARCH_ADMM",
    "ArtifactsCallback",
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
    "load_space",
    "open_storage",
    "parse_budget",
    "print_summary",
    "run_search",
    "study_record",
]


class _CallableSearch(types.ModuleType):
    """``autoprune.search`` is both this package and the API's entry point: calling it runs
    :func:`autoprune.api.search` (the package keeps its name, the call its natural one)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:  # noqa: ANN401
        from autoprune.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableSearch
