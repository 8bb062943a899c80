"""A trial as a pruning config: the ``autoprune prune --config`` YAML of a study's trial.

``best_config.yaml`` (written by the search), ``autoprune export`` and the MLflow mirror's
per-trial ``config.yaml`` are all this YAML; its ``origin`` records the study, the trial
and what it measured.
"""

from __future__ import annotations

from autoprune.config import LayerTarget, PruneConfig, Schedule
from autoprune.study.records import StudyRecord, TrialRecord
from autoprune.study.storage import redact


def trial_config(record: StudyRecord, trial: TrialRecord, *, data_dir: str | None = None) -> PruneConfig:
    """The pruning config of ``trial``, with where it came from (``origin``)."""
    meta = record.meta
    layers = {k: LayerTarget(v["type"], v.get("rate")) for k, v in trial.targets.items()}
    return PruneConfig(
        model=meta.model, dataset=meta.dataset, layers=layers, checkpoint=meta.checkpoint, data_dir=data_dir,
        seed=meta.seed, admm=Schedule(**meta.admm), channel_multiple=meta.channel_multiple,
        origin={
            "study": meta.name, "storage": redact(record.storage), "trial": trial.number,
            "budget": meta.budget, "budget_mode": meta.budget_mode,
            "device": meta.device_description, "latency_batch": meta.latency_batch, "dtype": meta.dtype,
            **({"runtime": meta.runtime} if meta.runtime != "torch" else {}),  # torch: configs as before
            "trial_method": meta.trial_method, "metric": meta.metric,
            "metrics": {
                "val_accuracy": trial.score, "accuracy_drop": trial.score_drop,
                "latency_ms": trial.latency_ms, "latency_p90_ms": trial.latency_p90_ms,
                # the end-of-search re-measurement where there is one (see remeasure), else the trial's own
                "speedup": trial.final_speedup, "speedup_in_search": trial.speedup,
                **({"speedup_p10": trial.remeasured["speedup_p10"], "speedup_p90": trial.remeasured["speedup_p90"]}
                   if trial.remeasured else {}),
                "macs": trial.macs, "params_nonzero": trial.params_count, "sparsity": trial.sparsity,
                "dense_val_accuracy": meta.dense_accuracy, "dense_latency_ms": meta.dense_latency_ms,
            },
        },
    )


def best_config_yaml(record: StudyRecord, trial: TrialRecord, *, data_dir: str | None = None) -> str:
    """The ``autoprune prune --config`` YAML of a trial, with where it came from."""
    return trial_config(record, trial, data_dir=data_dir).to_yaml()


def trial_config_yaml(record: StudyRecord, trial: TrialRecord) -> str | None:
    """A trial's config YAML, or None for a trial without targets (dense, or not yet suggested)."""
    return best_config_yaml(record, trial) if trial.targets else None
