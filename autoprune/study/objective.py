"""One trial: suggest a configuration, measure its latency, prune and retrain it, score it.

The order matters for cost. The compacted architecture depends only on the
configuration, so its latency is measured first (on the target device, at the study's
deployment batch, and cached by configuration): a configuration that is not faster
than dense stops there. A configuration an earlier trial already ran is not trained
again: the trial takes its result and stops as a repeat (so that Optuna's fronts and
optuna-dashboard hold each configuration once). The trial then climbs the rungs of
:mod:`~autoprune.study.rungs`: the hard prune scored after BatchNorm recalibration (no
training), a short masked retraining, the full schedule; between rungs the promotion
rule stops a configuration that cannot reach the front within the budget, and the study's
epoch budget stops one it cannot pay for. (A study made with ``rungs`` off, or before they
existed, prunes by the trial method and retrains every configuration fully, as before.)
The validation accuracy after the full schedule is the first objective, the measured
latency the second, and ``accuracy drop − budget`` the constraint (feasible when ≤ 0).

Optuna's pruners do not work in multi-objective studies, so these early stops are
ours: :class:`TrialStopped` carries the reason, and the study records the trial as
PRUNED with that reason.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from optuna.trial import TrialState
from torch import nn

from autoprune.admm import apply_masks
from autoprune.config import LayerTarget, Schedule
from autoprune.groups import ChannelGraph
from autoprune.latency import LatencyCache, LatencySettings
from autoprune.method_rule import AUTO, choose_method
from autoprune.progress import Reporter
from autoprune.stats import layer_stats, model_counts
from autoprune.study.phases import Proposal
from autoprune.study.probe import ConfigProbe
from autoprune.study.records import (
    CONSTRAINT,
    PROPOSAL_ATTR,
    REASON_ATTR,
    SAMPLER_EPOCHS_ATTR,
    SIGNATURE_ATTR,
    TARGETS_ATTR,
    TRIAL_ATTR,
    StudyMeta,
    TrialRecord,
    renamed_scores,
)
from autoprune.study.rungs import FULL, RUNGS, SCREEN, SHORT, Fidelity, Reference, decide
from autoprune.study.slots import SlotStorage
from autoprune.study.space import SearchSpace
from autoprune.task import Task


class TrialStopped(Exception):
    """A trial that cannot pay off; the message says why."""


@dataclass
class SearchContext:
    """What every trial of one worker shares (built once per process)."""

    meta: StudyMeta
    space: SearchSpace
    task: Task  # the dense model, its input, the training loop, the metric
    graph: ChannelGraph
    device: torch.device
    latency: LatencySettings
    cache: LatencyCache
    admm: Schedule
    min_speedup: float
    abandon_drop: float | None  # absolute drop after the hard prune beyond which a trial stops (None: never)
    reporter: Reporter
    # how a trial prunes: "admm" (ADMM, hard prune, retraining), "magnitude", "gmp", or "auto":
    # per trial, the one the equal-epoch table shows best for its targets (autoprune.method_rule)
    method: str = "admm"
    fidelity: Fidelity = Fidelity(rungs=False)  # how trials climb the rungs (the study's stored setting)

    @functools.cached_property
    def trial_amount(self) -> float:
        """A fully trained trial's training, in the loop's unit (epochs for the built-in one)."""
        return self.task.trial_amount(self.admm)

    def method_for(self, targets: dict[str, LayerTarget]) -> str:
        """How a trial of ``targets`` prunes (``auto`` resolved by the table for the trial's schedule)."""
        if self.method != AUTO:
            return self.method
        return choose_method(targets, self.task.rule_epochs(self.admm), self.task.methods).method

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.task.input_shape

    def example(self) -> torch.Tensor:
        return self.task.example()

    @functools.cached_property
    def probe(self) -> ConfigProbe:
        """Signatures, MACs and latency of configurations (latency cached by signature)."""
        return ConfigProbe.for_search(self)


def _record(trial: Any, rec: TrialRecord) -> None:  # noqa: ANN401
    keep = {k: v for k, v in rec.to_dict().items()
            if k not in ("number", "state", "params", "targets", "stop_reason", "pareto", "proposal", "worker")}
    trial.set_user_attr(TRIAL_ATTR, keep)


def find_prior(study: Any, signature: str, number: int) -> Any | None:  # noqa: ANN401
    """The earliest finished trial (complete, or stopped early) of ``signature`` other than
    ``number`` that ran it (not itself a repeat)."""
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    key=lambda t: t.number):
        measured = t.user_attrs.get(TRIAL_ATTR)
        if (t.number != number and t.user_attrs.get(SIGNATURE_ATTR) == signature and measured is not None
                and measured.get("repeat_of") is None):
            return t
    return None


TWIN_WAIT_S = 600.0  # the longest a trial waits for a twin another worker is running
UNSIGNED_WAIT_S = 10.0  # the longest it waits for a lower trial to name its configuration


def wait_for_twin(study: Any, signature: str, number: int, poll_s: float = 0.2,  # noqa: ANN401
                  timeout_s: float = TWIN_WAIT_S, unsigned_s: float = UNSIGNED_WAIT_S) -> Any | None:
    """Where a lower-numbered trial of the same configuration is running (another worker
    proposed it at the same moment), wait until it ends and return the finished trial to
    reuse (:func:`find_prior`), or None where it failed: a configuration is trained once.

    A lower-numbered running trial that has not named its configuration yet (its worker is
    still in the sampler) is waited for until it has, for at most ``unsigned_s``: it may be
    the twin (two workers racing through the sampler, the later trial's worker first).
    Waiting only on lower numbers keeps two twins from waiting on each other."""
    start = time.monotonic()
    deadline, waited = start + timeout_s, False
    while time.monotonic() < deadline:
        lower = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < number]
        twins = [t for t in lower if t.user_attrs.get(SIGNATURE_ATTR) == signature]
        unsigned = [t for t in lower if SIGNATURE_ATTR not in t.user_attrs]
        if not twins and not (unsigned and time.monotonic() - start < unsigned_s):
            break
        waited = waited or bool(twins)
        time.sleep(poll_s)
    return find_prior(study, signature, number) if waited else None


def _reuse(trial: Any, prior: Any, rec: TrialRecord, allowed: float) -> None:  # noqa: ANN401
    """A configuration already run: its stored result, marked as a repeat; no training.

    A repeat always ends as stopped (PRUNED, :class:`TrialStopped`) in the Optuna storage, so
    that Optuna's ``best_trials`` and optuna-dashboard's fronts hold each configuration once;
    it keeps the result (and, after a complete trial, the constraint) of the trial it repeats,
    and :func:`~autoprune.study.records.study_record` reads a repeat of a complete trial
    back as complete, so autoprune's own tables count it as before."""
    known = set(TrialRecord.__dataclass_fields__)
    for key, value in renamed_scores(prior.user_attrs[TRIAL_ATTR]).items():
        if key in known and key not in ("number", "state", "targets", "seconds", "repeat_of", "epochs"):
            setattr(rec, key, value)
    rec.repeat_of = prior.number
    rec.seconds, rec.epochs = 0.0, 0.0  # nothing trained
    _record(trial, rec)
    if prior.state == TrialState.PRUNED:
        raise TrialStopped(f"same configuration as trial {prior.number}, which stopped: "
                           f"{prior.user_attrs.get(REASON_ATTR, 'stopped early')}")
    SlotStorage.set_constraint(trial, CONSTRAINT, rec.score_drop - allowed)
    raise TrialStopped(repeat_reason(prior.number))


def repeat_reason(prior: int) -> str:
    """The stop reason of a repeat of complete trial ``prior``."""
    return f"same configuration as trial {prior}: its result, counted once"


def run_trial(trial: Any, ctx: SearchContext) -> tuple[float, float]:  # noqa: ANN401 - optuna.Trial
    """Run one trial; returns (validation accuracy, latency ms) or raises :class:`TrialStopped`.

    A configuration that an earlier trial of the study already ran (the same signature: the
    same channels and weights kept per layer) is not trained again: the trial takes the
    earlier result, records ``repeat_of`` and stops (see :func:`_reuse`).
    """
    t0 = time.perf_counter()
    targets = ctx.space.suggest(trial)
    trial.set_user_attr(TARGETS_ATTR, {k: v.to_dict() for k, v in targets.items()})
    signature = ctx.probe.signature(targets)
    trial.set_user_attr(SIGNATURE_ATTR, signature)
    rec = TrialRecord(number=trial.number, state="RUNNING", targets={k: v.to_dict() for k, v in targets.items()})
    allowed = ctx.meta.allowed_drop()

    prior = find_prior(trial.study, signature, trial.number) or wait_for_twin(trial.study, signature, trial.number)
    if prior is not None:
        _reuse(trial, prior, rec, allowed)  # raises TrialStopped: a repeat is not a new result
    if not targets:  # the dense configuration: measured once per study
        return _dense(trial, rec, ctx.meta, allowed, t0)
    _measure_latency(trial, rec, targets, ctx, t0)  # 1. before any training
    if ctx.fidelity.rungs:  # 2. from the dense weights, rung by rung
        acc = _climb(trial, rec, targets, ctx, t0)
    else:
        acc = _prune_and_score(trial, rec, targets, ctx, t0)
    rec.feasible = rec.score_drop <= allowed + 1e-12
    rec.seconds = time.perf_counter() - t0
    _record(trial, rec)
    SlotStorage.set_constraint(trial, CONSTRAINT, rec.score_drop - allowed)
    return acc, rec.latency_ms


def _dense(trial: Any, rec: TrialRecord, meta: StudyMeta, allowed: float, t0: float) -> tuple[float, float]:  # noqa: ANN401
    """The dense configuration's trial: the study's own dense measurements."""
    rec.is_dense = True
    rec.score, rec.score_drop = meta.dense_accuracy, 0.0
    rec.latency_ms, rec.latency_p90_ms, rec.speedup = meta.dense_latency_ms, meta.dense_latency_p90_ms, 1.0
    rec.macs, rec.params_count, rec.sparsity = meta.dense_macs, meta.dense_params, 0.0
    rec.feasible, rec.seconds, rec.epochs = True, time.perf_counter() - t0, 0.0
    _record(trial, rec)
    SlotStorage.set_constraint(trial, CONSTRAINT, -allowed)
    return meta.dense_accuracy, meta.dense_latency_ms


def _measure_latency(trial: Any, rec: TrialRecord, targets: dict[str, LayerTarget], ctx: SearchContext,  # noqa: ANN401
                     t0: float) -> None:
    """The compacted architecture's latency beside dense; stops a configuration that is not
    faster than ``ctx.min_speedup``."""
    meta = ctx.meta
    lat = ctx.probe.latency(targets)
    rec.latency_ms, rec.latency_p90_ms = lat.ratio * meta.dense_latency_ms, lat.ratio_p90 * meta.dense_latency_ms
    rec.speedup = 1.0 / lat.ratio
    rec.kernels = lat.kernels
    _record(trial, rec)
    if rec.speedup < ctx.min_speedup:
        rec.seconds, rec.epochs = time.perf_counter() - t0, 0.0
        _record(trial, rec)
        raise TrialStopped(
            f"not faster than dense: {rec.speedup:.2f}x ({rec.latency_ms:.3g} ms against {meta.dense_latency_ms:.3g} "
            f"ms dense, measured side by side), below the {ctx.min_speedup:g}x required"
        )


def _prune_and_score(trial: Any, rec: TrialRecord, targets: dict[str, LayerTarget], ctx: SearchContext,  # noqa: ANN401
                     t0: float) -> float:
    """Prune from the dense weights (ADMM or magnitude, stopping after the hard prune when it
    cannot recover), retrain, and fill ``rec`` with the accuracy and sizes; returns the
    validation accuracy."""
    meta = ctx.meta
    model: nn.Module = ctx.task.dense()
    projector = ctx.probe.projector(targets, model)
    method = rec.method = ctx.method_for(targets)

    def check(hard_acc: float) -> None:
        rec.hard_prune_score = hard_acc
        drop = meta.drop(hard_acc)
        if ctx.abandon_drop is not None and drop > ctx.abandon_drop:
            # what ADMM's W-steps trained before the hard prune (magnitude pruning: nothing yet)
            rec.epochs = ctx.trial_amount - ctx.admm.retrain_epochs if method == "admm" else 0.0
            rec.seconds = time.perf_counter() - t0
            _record(trial, rec)
            raise TrialStopped(
                f"{meta.metric} after the hard prune is {meta.fmt(hard_acc)}, {meta.fmt_drop(drop)} worse than dense: "
                f"beyond the {meta.fmt_drop(ctx.abandon_drop)} limit for recovering within the budget"
            )

    _, history = ctx.task.prune(model, projector, ctx.admm, method=method, seed=meta.seed, device=ctx.device,
                                reporter=ctx.reporter, on_hard_prune=check)
    rec.epochs = ctx.trial_amount
    acc = ctx.task.score(model, ctx.device)
    rec.score, rec.score_drop = acc, meta.drop(acc)
    _sizes(rec, model, targets, ctx)
    rec.residuals = [sum(it.residual.values()) / max(len(it.residual), 1) for it in history.iterations]
    rec.train_losses = [it.train_loss for it in history.iterations] + list(history.retrain_losses)
    return acc


def _sizes(rec: TrialRecord, model: nn.Module, targets: dict[str, LayerTarget], ctx: SearchContext) -> None:
    """The pruned model's MACs, nonzero parameters and sparsity into ``rec``."""
    stats = layer_stats(model, ctx.graph, targets)
    counts = model_counts(model, stats)
    weights = sum(math.prod(s.weight_shape) for s in stats)
    zeros = sum(s.sparsity * math.prod(s.weight_shape) for s in stats)
    rec.macs, rec.params_count = float(counts["macs"]), float(counts["params_nonzero"])
    rec.sparsity = zeros / max(weights, 1)


# -- the rungs (autoprune.study.rungs) ----------------------------------------------------
RESERVED_ATTR = "autoprune.reserved_epochs"  # trial user attr: the training a running trial has committed to


def _climb(trial: Any, rec: TrialRecord, targets: dict[str, LayerTarget], ctx: SearchContext,  # noqa: ANN401
           t0: float) -> float:
    """Score the hard-pruned configuration at the screen, retrain it briefly, then fully,
    asking the promotion rule (and the epoch budget) before each training; fills ``rec`` and
    returns the validation score after the full schedule, or raises :class:`TrialStopped`."""
    meta, fid, task, device = ctx.meta, ctx.fidelity, ctx.task, ctx.device
    full = ctx.trial_amount
    short = fid.short * full
    # the uniform ladder is what the user compares the search with, and the rule's first
    # references: its trials always climb (within the epoch budget)
    exempt = SlotStorage.stored_attrs(trial).get(PROPOSAL_ATTR) == Proposal.UNIFORM
    method = rec.method = ctx.method_for(targets)
    model: nn.Module = task.dense().to(device)
    projector = ctx.probe.projector(targets, model)
    masks = projector.hard_masks()
    apply_masks(model, masks)
    rec.epochs, rec.rungs = 0.0, []

    rec.epochs += task.recalibrate(model, device, fid, ctx.admm, meta.seed)
    score = task.screen_score(model, device, fid)
    rec.hard_prune_score = score
    _rung(trial, rec, SCREEN, score, t0)
    if ctx.abandon_drop is not None and meta.drop(score) > ctx.abandon_drop:
        raise TrialStopped(f"{meta.metric} after the hard prune is {meta.fmt(score)}, {meta.fmt_drop(meta.drop(score))} "
                           f"worse than dense: beyond the {meta.fmt_drop(ctx.abandon_drop)} limit for recovering "
                           f"within the budget")
    retrain_losses: list[float] = []
    if short > 0:
        _gate(trial, rec, SCREEN, score, ctx, exempt, to=SHORT, cost=short)
        spent, loss = task.retrain(model, masks, short, ctx.admm, seed=meta.seed + 5000, device=device,
                                   reporter=ctx.reporter)
        rec.epochs += spent
        retrain_losses.append(loss)
        score = task.score(model, device)
        _rung(trial, rec, SHORT, score, t0)
    last = SHORT if short > 0 else SCREEN
    if method in ("admm", "gmp"):  # the method's full schedule from the dense weights
        _gate(trial, rec, last, score, ctx, exempt, to=FULL, cost=full)
        model = task.dense().to(device)
        _, history = task.prune(model, ctx.probe.projector(targets, model), ctx.admm, method=method, seed=meta.seed,
                                device=device, reporter=ctx.reporter)
        rec.epochs += full
        rec.residuals = [sum(it.residual.values()) / max(len(it.residual), 1) for it in history.iterations]
        retrain_losses += [it.train_loss for it in history.iterations] + list(history.retrain_losses)
    else:
        _gate(trial, rec, last, score, ctx, exempt, to=FULL, cost=full - short)
        spent, loss = task.retrain(model, masks, full - short, ctx.admm, seed=meta.seed + 5001, device=device,
                                   reporter=ctx.reporter)
        rec.epochs += spent
        retrain_losses.append(loss)
    acc = task.score(model, device)
    rec.score, rec.score_drop = acc, meta.drop(acc)
    rec.train_losses = retrain_losses
    _rung(trial, rec, FULL, acc, t0)
    _sizes(rec, model, targets, ctx)
    return acc


def _rung(trial: Any, rec: TrialRecord, rung: int, score: float, t0: float) -> None:  # noqa: ANN401
    """Record the score a trial reached at ``rung`` (and what it has trained so far)."""
    rec.rungs.append({"rung": RUNGS[rung], "score": score, "epochs": rec.epochs,
                      "seconds": time.perf_counter() - t0})
    rec.seconds = time.perf_counter() - t0
    _record(trial, rec)


def _gate(trial: Any, rec: TrialRecord, rung: int, score: float, ctx: SearchContext, exempt: bool,  # noqa: ANN401
          to: int, cost: float) -> None:
    """Let the trial train ``cost`` more to reach rung ``to``, or stop it: by the promotion
    rule (unless ``exempt``), or because the study's epoch budget cannot pay for it."""
    meta = ctx.meta
    if not exempt:
        d = decide(rung, score, rec.latency_ms, references(trial.study, trial.number), dense=meta.dense_accuracy,
                   allowed=meta.allowed_drop(), direction=meta.direction,
                   fmt=meta.fmt)
        rec.rungs[-1]["decision"] = d.reason
        if d.predicted is not None:
            rec.rungs[-1]["predicted"] = d.predicted
        if not d.promote:
            rec.stopped_at = RUNGS[rung]
            _record(trial, rec)
            raise TrialStopped(f"stopped at the {RUNGS[rung]} rung: {d.reason}")
    budget = ctx.fidelity.epoch_budget
    if budget is not None:
        spent = epochs_spent(trial.study, trial.number) + rec.epochs
        if spent + cost > budget + 1e-9:
            _record(trial, rec)
            raise TrialStopped(f"the study's epoch budget is spent: {spent:.3g} of {budget:g} epochs used, and the "
                               f"{RUNGS[to]} rung needs {cost:.3g} more")
    SlotStorage.mark(trial.study, trial, {RESERVED_ATTR: rec.epochs + cost})  # others count it as spent
    why = "uniform ladder" if exempt else rec.rungs[-1].get("decision", "")
    ctx.reporter.log(f"trial {trial.number}: {RUNGS[rung]} {meta.fmt(score)} ({why}): on to the {RUNGS[to]} rung "
                     f"({cost:.3g} epochs)")


def references(study: Any, number: int) -> list[Reference]:  # noqa: ANN401
    """The trained trials of ``study`` (complete, not repeats, not dense, with their rung scores)
    other than ``number``: what the promotion rule predicts from."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs.get(TRIAL_ATTR) or {}
        if t.number == number or m.get("repeat_of") is not None or m.get("is_dense") or not m.get("rungs"):
            continue
        scores = {RUNGS.index(r["rung"]): float(r["score"]) for r in m["rungs"]}
        if FULL in scores and m.get("latency_ms") is not None:
            out.append(Reference(t.number, scores, float(m["latency_ms"])))
    return out


def epochs_spent(study: Any, number: int | None = None) -> float:  # noqa: ANN401
    """The training the study's trials have spent, every rung counted, other than trial
    ``number``; a running trial counts what it has committed to (its reserved epochs)."""
    total = float(study.user_attrs.get(SAMPLER_EPOCHS_ATTR) or 0.0)
    for t in study.get_trials(deepcopy=False):
        if t.number == number or t.state == TrialState.WAITING:
            continue
        done = float((t.user_attrs.get(TRIAL_ATTR) or {}).get("epochs") or 0.0)
        if t.state == TrialState.RUNNING:
            done = max(done, float(t.user_attrs.get(RESERVED_ATTR) or 0.0))
        total += done
    return total
