"""Pick a configuration from a finished (or running) study and write it as a prune config.

The command is ``autoprune export`` (exporting a study's choice); the module is named for
what it does, so that "export" in the library means the deployable model's programs
(:func:`autoprune.deploy.export_programs`). It is the step between the search and the
full-length prune::

    autoprune search --budget 2% ...              # the study, in the Optuna storage
    autoprune export --study S --pick knee --out best.yaml
    autoprune prune --config best.yaml --out runs/deploy/S

Only *pruned* trials can be exported (the dense trial has nothing to prune), and by
default only trials within the study's accuracy budget. Three picks:

* ``fastest`` (default): the fastest pruned trial within the budget (ties: the more
  accurate) — what ``autoprune search`` writes as ``best_config.yaml``.
* ``most-accurate``: the most accurate pruned trial within the budget (ties: the faster).
* ``knee``: the trial where the accuracy–latency front bends most. Take the Pareto front
  of the pruned trials within the budget, put each point in normalised coordinates
  ``u = (log latency − log latency_min) / (log latency_max − log latency_min)`` and
  ``v = (accuracy − accuracy_min) / (accuracy_max − accuracy_min)``, so that the fastest
  front point sits at (0, 0) and the most accurate at (1, 1). The knee is the point
  farthest *above* the straight line between them, i.e. with the largest ``v − u``: the
  most accuracy for its latency relative to trading the two off linearly (log latency,
  because a speed-up is a ratio). With two front points or fewer, or none above the
  line, it falls back to ``fastest``.

``--trial N`` exports one trial by number instead (any COMPLETE pruned trial, even
over budget: the user asked for it).
"""

from __future__ import annotations

import math
import os
from typing import Any

import optuna

from autoprune.atomic import check_writable, write_text_atomic
from autoprune.errors import UserError
from autoprune.study.loop import best_config_yaml
from autoprune.study.records import StudyRecord, TrialRecord, study_record
from autoprune.study.storage import load_autoprune_study, redact

__all__ = ["PICKS", "feasible_front", "pick_trial", "write_trial_config"]

PICKS = ("fastest", "most-accurate", "knee")


def _is_pruned(t: TrialRecord) -> bool:
    return not t.is_dense and bool(t.targets)


def _candidates(record: StudyRecord) -> list[TrialRecord]:
    """Completed pruned trials within the budget (a repeated configuration once)."""
    return [t for t in record.feasible if _is_pruned(t) and t.repeat_of is None]


def feasible_front(record: StudyRecord) -> list[TrialRecord]:
    """The accuracy–latency Pareto front of the pruned trials within the budget, fastest first."""
    cands = _candidates(record)
    front = [
        t for t in cands
        if not any(o.merit >= t.merit and o.latency_ms <= t.latency_ms
                   and (o.merit > t.merit or o.latency_ms < t.latency_ms) for o in cands)
    ]
    return sorted(front, key=lambda t: (t.latency_ms, -t.merit))


def _fastest(cands: list[TrialRecord]) -> TrialRecord:
    """The fastest candidate, by the end-of-search re-measurement where the search made one (as
    ``StudyRecord.best_feasible`` decides), else by the latency measured in its trial."""
    again = [t for t in cands if t.remeasured]
    if again:
        return max(again, key=lambda t: (t.remeasured["speedup"], t.merit, -t.number))
    return min(cands, key=lambda t: (t.latency_ms, -t.merit, t.number))


def _knee(record: StudyRecord, cands: list[TrialRecord]) -> TrialRecord:
    front = feasible_front(record)
    if len(front) <= 2:
        return _fastest(cands)
    lat = [math.log(max(t.latency_ms, 1e-12)) for t in front]
    acc = [t.merit for t in front]
    lat_span = max(lat) - min(lat)
    acc_span = max(acc) - min(acc)
    if lat_span <= 0 or acc_span <= 0:
        return _fastest(cands)

    def above(t: TrialRecord) -> float:  # (signed distance to the line) * sqrt(2)
        u = (math.log(max(t.latency_ms, 1e-12)) - min(lat)) / lat_span
        v = (t.merit - min(acc)) / acc_span
        return v - u

    best = max(front, key=lambda t: (above(t), -t.latency_ms))
    return best if above(best) > 1e-12 else _fastest(cands)


def _no_feasible_message(record: StudyRecord) -> str:
    meta = record.meta
    budget = f"{meta.metric} {meta.fmt_drop(meta.allowed_drop())} worse than dense {meta.fmt(meta.dense_accuracy)}"
    pruned = [t for t in record.completed if _is_pruned(t)]
    if not pruned:
        others = [t for t in record.trials if _is_pruned(t) and t.state != "COMPLETE"]
        detail = f" ({len(others)} pruned trial(s) stopped early or failed)" if others else ""
        return (f"study '{meta.name}' has no completed pruned trial yet{detail}; run more trials "
                f"(autoprune search --study-name {meta.name} --resume --trials N).")
    best = max(pruned, key=lambda t: (t.merit, -t.latency_ms))
    return (f"no pruned trial of study '{meta.name}' is within the budget ({budget}); the most accurate pruned "
            f"trial is {best.number} ({meta.fmt(best.score)}, drop {meta.fmt_drop(best.score_drop)}, "
            f"{best.latency_ms:.3g} ms): export it with --trial {best.number}, or search with a larger --budget.")


def pick_trial(record: StudyRecord, *, trial: int | None = None, pick: str = "fastest") -> TrialRecord:
    """The trial of a study to export.

    Args:
        record: A :class:`~autoprune.study.records.StudyRecord`.
        trial: A trial number; overrides ``pick``.
        pick: ``fastest``, ``most-accurate`` or ``knee`` (see the module docstring).

    Returns:
        The :class:`~autoprune.study.records.TrialRecord`.

    Raises:
        UserError: unknown pick or trial number; a trial that did not complete; the dense
            trial; no pruned trial within the budget (naming the most accurate pruned one).
    """
    name = record.meta.name
    if trial is not None:
        by_number = {t.number: t for t in record.trials}
        chosen = by_number.get(trial)
        if chosen is None:
            numbers = sorted(by_number)
            have = f"trials {numbers[0]}–{numbers[-1]}" if numbers else "no trials"
            raise UserError(f"study '{name}' has no trial {trial} (it has {have}).")
        if chosen.state != "COMPLETE" or chosen.score is None or chosen.latency_ms is None:
            reason = f" ({chosen.stop_reason})" if chosen.stop_reason else ""
            raise UserError(f"trial {trial} of study '{name}' is {chosen.state}{reason}, not COMPLETE; "
                            f"export a completed trial.")
        if not _is_pruned(chosen):
            raise UserError(f"trial {trial} of study '{name}' is the dense model (nothing to prune); "
                            f"export a pruned trial.")
        return chosen
    if pick not in PICKS:
        raise UserError(f"unknown --pick '{pick}'; use one of: {', '.join(PICKS)}.")
    cands = _candidates(record)
    if not cands:
        raise UserError(_no_feasible_message(record))
    if pick == "fastest":
        return _fastest(cands)
    if pick == "most-accurate":
        return max(cands, key=lambda t: (t.merit, -t.latency_ms, -t.number))
    return _knee(record, cands)


def write_trial_config(
    study_name: str,
    storage_url: str,
    *,
    trial: int | None = None,
    pick: str = "fastest",
    out: str | os.PathLike,
) -> dict[str, Any]:
    """Write the ``autoprune prune --config`` YAML of one trial of a study.

    Args:
        study_name: The study.
        storage_url: Its Optuna storage (``sqlite:///runs/optuna.db``, ``postgresql://...``,
            ``journal:///...``).
        trial: A trial number, or None to pick one.
        pick: ``fastest``, ``most-accurate`` or ``knee`` (see :func:`pick_trial`).
        out: The YAML file to write (atomically; its folder is created).

    Returns:
        ``{"study", "storage", "trial", "pick", "summary", "metrics", "out"}``.

    Raises:
        UserError: an ``out`` that cannot be written (checked first), an unknown study (the message lists the storage's studies), a storage
            that cannot be opened, or anything :func:`pick_trial` refuses.
    """
    check_writable(out, what="--out")
    if pick not in PICKS and trial is None:
        raise UserError(f"unknown --pick '{pick}'; use one of: {', '.join(PICKS)}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_autoprune_study(study_name, storage_url)
    record = study_record(study, storage_url)
    chosen = pick_trial(record, trial=trial, pick=pick)
    path = write_text_atomic(out, best_config_yaml(record, chosen))
    return {
        "study": record.meta.name,
        "storage": redact(storage_url),
        "trial": chosen.number,
        "pick": "trial" if trial is not None else pick,
        "summary": chosen.sparsity_summary(),
        "metrics": {
            "val_accuracy": chosen.score, "accuracy_drop": chosen.score_drop, "feasible": chosen.feasible,
            "latency_ms": chosen.latency_ms, "latency_p90_ms": chosen.latency_p90_ms, "speedup": chosen.speedup,
            "macs": chosen.macs, "params_nonzero": chosen.params_count, "sparsity": chosen.sparsity,
            "dense_val_accuracy": record.meta.dense_accuracy, "dense_latency_ms": record.meta.dense_latency_ms,
        },
        "out": str(path),
    }
