"""The search: Optuna over per-layer sparsity types and rates, scored by validation
accuracy and latency measured on the target device, under an accuracy budget.

* :mod:`~autoprune.search.space` — YAML search spaces → Optuna suggestions;
* :mod:`~autoprune.search.objective` — one trial (latency first, then ADMM, early stops);
* :mod:`~autoprune.search.study` — storage, sampler, trial slots shared by workers;
* :mod:`~autoprune.search.records` — plain records of a study rebuilt from the storage;
* :mod:`~autoprune.search.summary` — the end-of-run table.
"""

from autoprune.search.records import StudyMeta, StudyRecord, TrialRecord, study_record
from autoprune.search.settings import SEARCH_ADMM, SearchSettings, parse_budget
from autoprune.search.space import SearchSpace, load_space
from autoprune.search.storage import DEFAULT_STORAGE, open_storage
from autoprune.search.study import SearchResult, run_search
from autoprune.search.summary import print_summary

__all__ = [
    "DEFAULT_STORAGE",
    "SEARCH_ADMM",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "StudyMeta",
    "StudyRecord",
    "TrialRecord",
    "load_space",
    "open_storage",
    "parse_budget",
    "print_summary",
    "run_search",
    "study_record",
]
