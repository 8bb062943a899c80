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
from autoprune.tracking.connection import (
    ARTIFACT_DIR,
    DEFAULT_TRACKING_URI,
    HEALTH_TIMEOUT_S,
    HTTP_ENV_DEFAULTS,
    Connection,
    describe_failure,
    is_connection_error,
)
from autoprune.tracking.keys import (
    MAX_KEY,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    MODEL_FORMAT_NOTE_TAG,
    MODEL_FORMAT_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STORAGE_TAG,
    STUDY_NAME_TAG,
    mlflow_key,
    param_value,
    settings_params,
    trial_metrics,
    trial_params,
    trial_tags,
)
from autoprune.tracking.model import log_model_to_mlflow, report_metrics
from autoprune.tracking.tracker import Tracker

__all__ = [
    "ARTIFACT_DIR",
    "DEFAULT_TRACKING_URI",
    "HEALTH_TIMEOUT_S",
    "HTTP_ENV_DEFAULTS",
    "MAX_KEY",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "MODEL_FORMAT_NOTE_TAG",
    "MODEL_FORMAT_TAG",
    "PARENT_TAG",
    "ROLE_TAG",
    "STORAGE_TAG",
    "STUDY_NAME_TAG",
    "Connection",
    "Tracker",
    "describe_failure",
    "is_connection_error",
    "log_model_to_mlflow",
    "mlflow_key",
    "param_value",
    "report_metrics",
    "settings_params",
    "trial_metrics",
    "trial_params",
    "trial_tags",
    "write_study_artifacts",  # re-exported for the search, which imports it from here today
]
