"""What a study and its trials log to MLflow: the names and values of params, metrics and tags.

These names are the mirror's format: runs of different trials and studies line up on them
(``layer.<name>.type`` / ``layer.<name>.rate``, ``kernel.<layer>``), so they change only
with a migration.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from autoprune.config import LayerTarget
from autoprune.study.records import StudyMeta, TrialRecord
from autoprune.study.rungs import RUNGS

__all__ = [
    "CHOSEN_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MAX_KEY",
    "MAX_PARAM_VALUE",
    "MAX_RUN_NAME",
    "MAX_TAG_VALUE",
    "ML_VIEW_QUERY",
    "MODEL_FORMAT_NOTE_TAG",
    "MODEL_FORMAT_TAG",
    "NOTE_TAG",
    "OUTCOME_TAG",
    "PARENT_TAG",
    "ROLE_TAG",
    "STORAGE_TAG",
    "STUDY_NAME_TAG",
    "TRIAL_RUNS_QUERY",
    "mlflow_key",
    "param_value",
    "settings_params",
    "trial_metrics",
    "trial_outcome",
    "trial_params",
    "trial_run_name",
    "trial_tags",
]

ROLE_TAG = "autoprune.role"
# a deployable's run: how its model was logged ("pt2": a torch.export program, no code; "pickle":
# the module pickled whole, where torch.export could not export it) and why, or what was exported densely
MODEL_FORMAT_TAG = "autoprune.model_format"
MODEL_FORMAT_NOTE_TAG = "autoprune.model_format_note"
OUTCOME_TAG = "outcome"
CHOSEN_TAG = "chosen"
# a search's runs are model training, not GenAI traces: MLflow 3 releases before 3.17 choose an
# experiment's page from this tag; 3.17 from the URL's ``workflowType`` (else the browser's
# stored choice, GenAI by default), so the links autoprune prints carry ML_VIEW_QUERY as well
ML_VIEW_QUERY = "workflowType=machine_learning"
# the runs tab with the trial runs alone, fastest first: with a filter or a sort MLflow lists
# nested runs flat (unfiltered, they hide under the study's run until it is expanded)
TRIAL_RUNS_QUERY = ML_VIEW_QUERY + "&" + urllib.parse.urlencode(
    {"searchFilter": "tags.`autoprune.role` = 'trial'", "orderByKey": "metrics.`speedup`", "orderByAsc": "false"},
    quote_via=urllib.parse.quote)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # an experiment's or run's description in the UI
MAX_RUN_NAME = 100
STORAGE_TAG = "optuna.storage"
STUDY_NAME_TAG = "optuna.study_name"
PARENT_TAG = "mlflow.parentRunId"

# MLflow's limits (mlflow.utils.validation); kept here so a change there is one edit here.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def mlflow_key(name: str) -> str:
    """A valid MLflow param/metric/tag key (unusual characters become ``_``)."""
    return _BAD_KEY_CHARS.sub("_", name)[:MAX_KEY]


def param_value(value: Any, limit: int = MAX_PARAM_VALUE) -> str:  # noqa: ANN401
    """A param or tag value as MLflow stores it: text (containers as sorted JSON), cut at ``limit``."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def settings_params(meta: StudyMeta) -> dict[str, Any]:
    """The search settings as flat params (the parent run logs these, each trial a summary)."""
    out: dict[str, Any] = {
        "model": meta.model,
        "dataset": meta.dataset,
        "checkpoint": meta.checkpoint,
        "device": meta.device,
        "device_description": meta.device_description,
        "budget": meta.budget,
        "budget_mode": meta.budget_mode,
        "allowed_drop": meta.allowed_drop(),
        "latency_batch": meta.latency_batch,
        "dtype": meta.dtype,
        "channels_last": meta.channels_last,
        "fold_bn": meta.fold_bn,
        "steady_memory": meta.steady_memory,
        "runtime": meta.runtime,
        "channel_multiple": meta.channel_multiple,
        "space": meta.space,
        "sampler": meta.sampler,
        "seed": meta.seed,
        "objectives": ",".join(meta.objectives),
        "metric": meta.metric,
        "direction": meta.direction,
    }
    out.update({f"admm.{k}": v for k, v in meta.admm.items()})
    out.update({f"version.{k}": v for k, v in meta.versions.items()})
    return out


def trial_params(meta: StudyMeta, trial: TrialRecord) -> dict[str, str]:
    """The params of a trial's run: every layer's ``type`` and ``rate`` (once: Optuna's own
    parameters say the same and stay in the Optuna storage), and a summary of the search
    settings.

    A layer's ``rate`` is the fraction of its weights removed
    (:attr:`~autoprune.config.LayerTarget.removed_fraction`: the target's rate, 0 for
    ``none`` and ``1 - N/M`` for ``N:M``), rounded to 4 digits (``0.7``, not
    ``0.7000000000000001``), so the column lines up across trials.
    """
    out: dict[str, Any] = {}
    for name, stored in trial.targets.items():
        target = LayerTarget.from_dict(stored)
        rate = target.removed_fraction
        out[f"layer.{name}.type"] = target.type
        if rate is not None:
            out[f"layer.{name}.rate"] = round(rate, 4)
    settings = settings_params(meta)
    for k in ("model", "dataset", "device", "device_description", "seed", "latency_batch", "dtype"):
        out[k] = settings[k]
    out.update({k: v for k, v in settings.items() if k.startswith("version.")})
    out["is_dense"] = trial.is_dense
    return {mlflow_key(k): param_value(v) for k, v in out.items()}


def trial_metrics(trial: TrialRecord, metric: str = "accuracy") -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of a trial: the measured numbers at step 0 (the study's metric
    under its own name: ``accuracy``, ``accuracy_drop``, ``hard_prune_accuracy``), then the
    ADMM residual and the training loss as histories (step = iteration / epoch index)."""
    scalars = {
        metric: trial.score,
        f"{metric}_drop": trial.score_drop,
        f"hard_prune_{metric}": trial.hard_prune_score,
        "latency_ms": trial.latency_ms,
        "latency_p90_ms": trial.latency_p90_ms,
        "speedup": trial.speedup,
        "macs": trial.macs,
        "params_count": trial.params_count,
        "sparsity": trial.sparsity,
        "seconds": trial.seconds,
        "epochs": trial.epochs,
    }
    out = [(mlflow_key(k), float(v), 0) for k, v in scalars.items() if v is not None]
    # the rungs climbed, the rung as the step (0 screen, 1 short, 2 full): MLflow's chart of
    # ``rung_<metric>`` shows how each configuration fared as it was trained more
    out += [(mlflow_key(f"rung_{metric}"), float(r["score"]), RUNGS.index(r["rung"])) for r in trial.rungs
            if r.get("score") is not None and r.get("rung") in RUNGS]
    out += [(mlflow_key("rung_epochs"), float(r["epochs"]), RUNGS.index(r["rung"])) for r in trial.rungs
            if r.get("epochs") is not None and r.get("rung") in RUNGS]
    out += [("admm_residual", float(v), i) for i, v in enumerate(trial.residuals) if v is not None]
    out += [("train_loss", float(v), i) for i, v in enumerate(trial.train_losses) if v is not None]
    return out


def trial_tags(trial: TrialRecord, meta: StudyMeta | None = None) -> dict[str, str]:
    """Tags of a trial's run: number, state, Pareto membership, feasibility, stop reason,
    the sparsity summary, the kernel chosen per layer, and the worker (``host:pid``) and
    device that ran it: latencies of workers that shared a device are not comparable
    (filter ``tags.worker`` to see which ran together)."""
    out = {
        ROLE_TAG: "trial",
        "trial_number": str(trial.number),
        "state": trial.state,
        "pareto": "true" if trial.pareto else "false",
        "summary": trial.sparsity_summary(),
        OUTCOME_TAG: trial_outcome(trial),
    }
    if trial.feasible is not None:
        out["feasible"] = "true" if trial.feasible else "false"
    if trial.stop_reason:
        out["stop_reason"] = trial.stop_reason
    if trial.repeat_of is not None:
        out["repeat_of"] = str(trial.repeat_of)
    if trial.worker is not None:
        out["worker"] = trial.worker
    if meta is not None:
        out["device"] = meta.device_description or meta.device
        out["runtime"] = meta.runtime
    if trial.stopped_at:
        out["stopped_at_rung"] = trial.stopped_at
    if trial.method:
        out["prune_method"] = trial.method
    out.update({f"kernel.{layer}": form for layer, form in trial.kernels.items()})
    return {mlflow_key(k): param_value(v, MAX_TAG_VALUE) for k, v in out.items()}


def trial_outcome(trial: TrialRecord) -> str:
    """What became of a trial, in one word the runs table can filter on
    (``tags.outcome = 'over-budget'``): ``within-budget``, ``over-budget``, ``stopped``
    (ended early: not faster than dense, or a hopeless accuracy), ``repeat`` (an earlier
    trial ran the same configuration; its result, counted once), ``failed``, ``running``
    or ``waiting``."""
    if trial.repeat_of is not None and trial.state in ("COMPLETE", "PRUNED"):
        return "repeat"
    if trial.state == "COMPLETE":
        return "over-budget" if trial.feasible is False else "within-budget"
    return {"PRUNED": "stopped", "FAIL": "failed", "RUNNING": "running"}.get(trial.state, trial.state.lower())


def _short_layer(name: str) -> str:
    """``features.3`` stays, ``layer1.0.conv2`` stays; only a long dotted path keeps its last two parts."""
    parts = name.split(".")
    return name if len(parts) <= 3 else ".".join(parts[-2:])


def trial_run_name(trial: TrialRecord, *, chosen: bool = False, meta: StudyMeta | None = None) -> str:
    """A trial run's name, its result first: ``t07 3.80x 96.5% | filter70 conv1,conv2``.

    MLflow's runs table cuts names at about 30 characters, so the outcome comes first:
    speedup and validation score for a finished trial (``= t03`` after a repeat of trial 3),
    ``stopped``/``failed``/``repeat`` otherwise; then the targets grouped by type and rate,
    each with its layers (``×N`` where the names would not fit). ``*`` marks the chosen trial
    (the fastest within the budget)."""
    if trial.is_dense or not trial.targets:
        what = "dense"
    else:
        groups: dict[str, list[str]] = {}
        for layer, stored in trial.targets.items():
            target = LayerTarget.from_dict(stored)
            if target.type == "none":
                continue
            rate = "" if target.rate is None or target.type.count(":") else f"{round(100 * target.rate)}"
            groups.setdefault(f"{target.type}{rate}", []).append(_short_layer(layer))
        listed = " ".join(f"{label} {','.join(layers)}" for label, layers in groups.items())
        counted = " ".join(label + (f"×{len(layers)}" if len(layers) > 1 else "") for label, layers in groups.items())
        what = listed if len(listed) <= 56 else counted
    if trial.state == "COMPLETE" and trial.score is not None:
        speed = trial.final_speedup
        shown = meta.fmt(trial.score) if meta is not None else f"{100 * trial.score:.1f}%"
        result = (f"{speed:.2f}x " if speed is not None else "") + shown
        if trial.feasible is False:
            result += " over budget"
        if trial.repeat_of is not None:
            result += f" = t{trial.repeat_of:02d}"
    else:
        result = trial_outcome(trial) if trial.repeat_of is None else f"stopped = t{trial.repeat_of:02d}"
    name = f"{'* ' if chosen else ''}t{trial.number:02d} {result} | {what}"
    return name if len(name) <= MAX_RUN_NAME else name[: MAX_RUN_NAME - 1] + "…"
