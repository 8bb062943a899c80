"""MLflow tracking: the mirror of a study, and the upload of a deployable model.

* :mod:`~autoprune.tracking.tracker` — :class:`Tracker`, the study's mirror (experiment,
  parent run, one nested run per trial), idempotent and never in the search's way;
* :mod:`~autoprune.tracking.keys` — what is logged, by name (params, metrics, tags);
* :mod:`~autoprune.tracking.connection` — the tracking URI resolved and reached
  (SQLite path, artifact folder, http fail-fast and health check);
* :mod:`~autoprune.tracking.model` — :func:`log_model_to_mlflow`, a deployable model as an
  MLflow model.

The study's files themselves (figures, report, best config) are written by
:func:`autoprune.report.write_study_artifacts`; the tracker logs them.
"""

from autoprune.report.artifacts import write_study_artifacts
from autoprune.tracking.connection import DEFAULT_TRACKING_URI, Connection
from autoprune.tracking.keys import trial_metrics, trial_params, trial_tags
from autoprune.tracking.model import log_model_to_mlflow
from autoprune.tracking.tracker import Tracker

__all__ = [
    "DEFAULT_TRACKING_URI",
    "Connection",
    "Tracker",
    "log_model_to_mlflow",
    "trial_metrics",
    "trial_params",
    "trial_tags",
    "write_study_artifacts",
]
