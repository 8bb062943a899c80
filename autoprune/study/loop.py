"""The search loop: an Optuna study over per-layer sparsity, shared by any number of workers.

:func:`run_search` reads like Optuna's ``study/_optimize.py``: open the study
(:mod:`~autoprune.study.opening`: create or join it, measure the dense baseline once per
study, resolve this worker's settings), then one trial at a time (``_run_trial``) until no slot below the
target is left, then the end-of-search re-measurement (:mod:`~autoprune.study.remeasure`)
and the study's files. One trial: fail stale trials, claim a slot
(:mod:`~autoprune.study.slots`), run the objective with a heartbeat, turn how it ended into
a trial state, tell the storage. Side effects per trial and per study (the MLflow mirror,
figures, the report) are :class:`~autoprune.study.callbacks.SearchCallback` objects the
caller passes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.atomic import write_text_atomic
from autoprune.errors import UserError
from autoprune.progress import Reporter
from autoprune.study import objective
from autoprune.study.callbacks import SearchCallback, SearchEnd, StudyMirror, TrackerCallback
from autoprune.study.configs import best_config_yaml
from autoprune.study.opening import OpenStudy, open_study
from autoprune.study.records import REASON_ATTR, StudyMeta, StudyRecord, TrialRecord, study_record
from autoprune.study.remeasure import remeasure
from autoprune.study.settings import SearchSettings
from autoprune.study.slots import (
    Heartbeat,
    claim_lock,
    claim_slot,
    enqueue_slots,
    fail_stale_trials,
    fail_trial,
)
from autoprune.study.storage import redact
from autoprune.study.summary import SearchResult

__all__ = ["INTERRUPTED", "MAX_FAILS_IN_A_ROW", "SearchResult", "TrialOutcome", "best_config_yaml", "run_search"]

INTERRUPTED = "interrupted by the user (Ctrl-C)"
MAX_FAILS_IN_A_ROW = 3  # then this worker stops: the cause is unlikely to go away by itself


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial this worker ran ended (its state as told to the storage)."""

    number: int
    state: TrialState
    reason: str | None = None  # why it stopped early or failed
    interrupted: bool = False  # Ctrl-C or SIGTERM during the trial


def run_search(s: SearchSettings, *, reporter: Reporter | None = None, tracker: StudyMirror | None = None,
               callbacks: Sequence[SearchCallback] = ()) -> SearchResult:
    """Run (or join, or resume) a search and return its study record.

    Args:
        s: What is asked (never changed; an existing study's stored settings win).
        reporter: Where progress goes (default: plain log lines).
        tracker: A study mirror such as :class:`autoprune.tracking.Tracker`; short for
            ``callbacks=[TrackerCallback(tracker)]``.
        callbacks: Side effects per trial and per study (see :mod:`~autoprune.study.callbacks`).

    Raises:
        UserError: for bad settings, an unreachable storage, a study that clashes.
    """
    reporter = reporter or Reporter()
    hooks = [*callbacks, *([TrackerCallback(tracker)] if tracker is not None else [])]
    t_start = time.perf_counter()
    run = open_study(s, reporter)
    for cb in hooks:
        cb.on_study_start(run.meta, run.url)
    ran, interrupted, notes = _optimize(run, s.stale_after, reporter, hooks)
    record = study_record(run.study, run.url)
    if not interrupted and (finished_count(record) >= run.target or _budget_spent(run) is not None):
        remeasure(run.study, record, run.ctx.probe, reporter)
        record = study_record(run.study, run.url)
    best = record.best_feasible()
    best_path = None
    if best is not None and not best.is_dense:
        best_path = run.study_dir / "best_config.yaml"
        write_text_atomic(best_path, best_config_yaml(record, best, data_dir=s.data_dir))
    result = SearchResult(record, run.study_dir, best_path, ran, interrupted, time.perf_counter() - t_start,
                          notes=[*run.notes, *notes])
    write_text_atomic(run.study_dir / "summary.json", json.dumps(result.to_dict(), indent=2, default=str))
    end = SearchEnd(run.study_dir, best_path.read_text() if best_path else None, interrupted)
    for cb in hooks:
        cb.on_search_end(record, run.study, end)
    return result


def _optimize(run: OpenStudy, stale_after: float, reporter: Reporter,
              callbacks: Sequence[SearchCallback]) -> tuple[list[int], bool, list[str]]:
    """Run trials until no slot below the target is left, Ctrl-C, or too many failures in a
    row. Returns the trial numbers run here, whether it was interrupted, and notes."""
    ran: list[int] = []
    fails_in_a_row = 0
    progress = _Progress(run, reporter)
    with reporter.task(f"search {run.name}", total=run.target) as task:
        progress.start(task)
        while True:
            spent = _budget_spent(run)
            if spent is not None:
                reporter.log(f"note: {spent}")
                return ran, False, [spent]
            try:
                outcome = _run_trial(run, stale_after, reporter, callbacks)
                if outcome is None:
                    return ran, False, []
                ran.append(outcome.number)
                record = study_record(run.study, run.url)
                done = next(t for t in record.trials if t.number == outcome.number)
                reporter.log(trial_line(done, record.meta))
                for cb in callbacks:
                    cb.on_trial_end(record, done)
                progress.update(record)
            except KeyboardInterrupt:
                return ran, True, []
            if outcome.interrupted:
                return ran, True, []
            if outcome.state != TrialState.FAIL:
                fails_in_a_row = 0
                continue
            fails_in_a_row += 1
            if fails_in_a_row >= MAX_FAILS_IN_A_ROW:
                msg = (f"{MAX_FAILS_IN_A_ROW} trials in a row failed, the last with: {outcome.reason}; "
                       f"stopping this worker (fix the cause and run the same command to go on)")
                reporter.log(f"warning: {msg}")
                return ran, False, [msg]
            enqueue_slots(run.study, run.target)  # a failed trial does not count: add its replacement


def _run_trial(run: OpenStudy, stale_after: float, reporter: Reporter,
               callbacks: Sequence[SearchCallback] = ()) -> TrialOutcome | None:
    """One trial, as Optuna's ``_run_trial``: fail trials that lost their worker (and tell
    the callbacks), claim a slot (instead of ``ask``), run the objective with a heartbeat,
    tell the storage how it ended.

    Returns:
        How it ended, or None when no slot below the target is left.
    """
    with claim_lock(run.url):
        stale = fail_stale_trials(run.study, stale_after)
        if stale:
            reporter.log(f"trials {stale} lost their worker; they are marked failed and replaced")
            enqueue_slots(run.study, run.target)
        trial = claim_slot(run.study, run.target)
    if stale:
        record = study_record(run.study, run.url)
        for lost in (t for t in record.trials if t.number in stale):
            for cb in callbacks:
                cb.on_trial_end(record, lost)
    if trial is None:
        return None
    told = False
    try:
        state, values, reason, interrupted = _objective(run, trial)
        if reason is not None:
            trial.set_user_attr(REASON_ATTR, reason)
        run.study.tell(trial, values=list(values) if values is not None else None, state=state)
        told = True
    finally:
        if not told:  # interrupted between claim and tell
            fail_trial(run.study, trial, INTERRUPTED)
    return TrialOutcome(trial.number, state, reason, interrupted)


def _objective(run: OpenStudy, trial: optuna.Trial) -> tuple[TrialState, Any, str | None, bool]:  # noqa: ANN401
    """Run the objective; ``(state, values, reason, interrupted)`` of how it ended. A trial
    that breaks must not end the study: any exception becomes a failed trial with its reason."""
    try:
        with Heartbeat(run.study, trial):
            return TrialState.COMPLETE, objective.run_trial(trial, run.ctx), None, False
    except objective.TrialStopped as stop:
        return TrialState.PRUNED, None, str(stop), False
    except KeyboardInterrupt:
        return TrialState.FAIL, None, INTERRUPTED, True
    except UserError as exc:
        return TrialState.FAIL, None, str(exc), False
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0]
        return TrialState.FAIL, None, f"{type(exc).__name__}: {first}"[:500], False


class _Progress:
    """The progress bar: trials finished out of the target, and the best speedup so far."""

    def __init__(self, run: OpenStudy, reporter: Reporter) -> None:
        self.run, self.reporter, self.task, self.shown = run, reporter, None, 0

    def start(self, task: Any) -> None:  # noqa: ANN401
        run, meta = self.run, self.run.meta
        record = study_record(run.study, run.url)
        self.task, self.shown = task, min(finished_count(record), run.target)
        self.reporter.log(f"study '{run.name}' in {redact(run.url)}: {self.shown} of {run.target} trials done; "
                          f"budget: {meta.metric} at most {meta.fmt_drop(meta.allowed_drop())} worse than dense "
                          f"{meta.fmt(meta.dense_accuracy)}")
        if meta.channel_multiple > 1:
            self.reporter.log(f"kept channels are rounded to multiples of {meta.channel_multiple} where a channel "
                              f"group has at least {4 * meta.channel_multiple} (--channel-multiple; 1 keeps the "
                              f"exact rates)")
        task.advance(self.shown)
        task.set(best=best_text(record))

    def update(self, record: StudyRecord) -> None:
        now = min(finished_count(record), self.run.target)
        self.task.advance(max(0, now - self.shown))
        self.shown = max(self.shown, now)
        self.task.set(best=best_text(record))


def _budget_spent(run: OpenStudy) -> str | None:
    """Why no further trial can be trained (the study's epoch budget cannot pay for even the
    short rung), or None."""
    fid, ctx = run.ctx.fidelity, run.ctx
    if fid.epoch_budget is None:
        return None
    spent = objective.epochs_spent(run.study)
    cheapest = (fid.short if fid.rungs and fid.short > 0 else 1.0) * ctx.trial_amount
    if spent + cheapest <= fid.epoch_budget + 1e-9:
        return None
    return (f"the study's epoch budget is spent ({spent:.3g} of {fid.epoch_budget:g} epochs, every rung counted): "
            f"the search ends here; raise --epoch-budget to go on")


def finished_count(record: StudyRecord) -> int:
    """Trials that count toward the target: complete or stopped early."""
    return sum(1 for t in record.trials if t.state in ("COMPLETE", "PRUNED"))


def best_text(record: StudyRecord) -> str:
    """The progress bar's ``best=`` field: the fastest trial within the budget so far."""
    best = record.best_feasible()
    return "none within budget yet" if best is None or best.speedup is None else f"{best.speedup:.2f}x"


def trial_line(t: TrialRecord, meta: StudyMeta) -> str:
    """The line logged when a trial ends."""
    head = f"trial {t.number}: {t.sparsity_summary()}" + (f" [{t.proposal}]" if t.proposal else "")
    if t.repeat_of is not None:
        head += f" (same configuration as trial {t.repeat_of}: its result reused, nothing trained)"
    climbed = rung_path(t, meta)
    if t.state == "COMPLETE":
        ok = "within budget" if t.feasible else "over budget"
        return (f"{head} → {meta.metric} {meta.fmt(t.score)} (drop {meta.fmt_drop(t.score_drop)}), "
                f"{t.latency_ms:.3g} ms "
                f"({t.speedup:.2f}x), {ok}" + (f"; {climbed}" if climbed and t.repeat_of is None else ""))
    return f"{head} → {t.state.lower()}: {t.stop_reason}" + (f" [{climbed}]" if climbed else "")


def rung_path(t: TrialRecord, meta: StudyMeta) -> str:
    """``screen 71.2% → short 86.4% → full 88.9%, 1.03 epochs``: the rungs a trial climbed."""
    if not t.rungs:
        return ""
    steps = " → ".join(f"{r['rung']} {meta.fmt(r['score'])}" for r in t.rungs)
    return f"{steps}, {t.epochs or 0:.3g} epochs" if t.epochs is not None else steps
