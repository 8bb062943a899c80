"""Plain records of a study and its trials, rebuilt from the Optuna storage.

The Optuna storage is the source of truth: every number a trial measured is kept in the
trial's user attributes (``autoprune.*``) and the study's settings and dense baseline in
the study's user attributes. :func:`study_record` turns a study into these dataclasses,
which the summary table, the MLflow mirror and the plots read, so none of them needs
Optuna's objects.

A repeated configuration (``repeat_of``: an earlier trial ran it, its result was reused) is
stored as a stopped (PRUNED) trial, so that Optuna's ``best_trials`` and optuna-dashboard
hold each configuration once; a repeat of a complete trial reads back here as complete,
with the result it reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from autoprune.errors import UserError
from autoprune.study.phases import Proposal

STUDY_ATTR = "autoprune.study"  # study user attr: StudyMeta as a dict
TRIAL_ATTR = "autoprune.trial"  # trial user attr: the measured metrics
TARGETS_ATTR = "autoprune.targets"  # trial user attr: {layer: {type, rate}}
REASON_ATTR = "autoprune.stop_reason"  # trial user attr: why a trial stopped early or failed
SIGNATURE_ATTR = "autoprune.signature"  # trial user attr: what the targets amount to (Projector.signature)
REMEASURED_ATTR = "autoprune.remeasured"  # study user attr: trial number -> its end-of-search re-measurement
OWNER_ATTR = "autoprune.owner"  # trial user attr: {host, pid, started} of the worker that claimed it
PROPOSAL_ATTR = "autoprune.proposal"  # trial user attr: which part of the sampler proposed it (uniform, ascent, ...)
SAMPLER_EPOCHS_ATTR = "autoprune.sampler_epochs"  # study user attr: what the sampler's own screens cost (epochs)
OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")
CONSTRAINT = "accuracy_drop_over_budget"


@dataclass
class StudyMeta:
    """What a study searches and its dense baseline (fixed when the study is created)."""

    name: str
    model: str
    dataset: str
    checkpoint: str
    device: str  # "cpu", "cuda", ...
    device_description: str  # "cpu:AMD EPYC ...", "cuda:NVIDIA H100 ..."
    budget: float  # accuracy drop allowed: absolute fraction (0.02 = 2 points), or relative
    budget_mode: str  # "absolute" or "relative"
    latency_batch: int
    dtype: str
    space: str  # the search space file, or "auto"
    space_spec: dict[str, Any]  # the resolved space (variables and their layers)
    sampler: str
    seed: int
    admm: dict[str, Any]
    dense_accuracy: float  # validation accuracy, fraction
    dense_test_accuracy: float
    dense_latency_ms: float
    dense_latency_p90_ms: float
    dense_macs: float
    dense_params: float
    versions: dict[str, str] = field(default_factory=dict)
    objectives: tuple[str, ...] = OBJECTIVES
    # measurement and pruning settings; the defaults are what studies made before they existed used
    channels_last: bool = False
    fold_bn: bool = False
    steady_memory: bool = False  # studies made before this setting measured with glibc's default allocator
    runtime: str = "torch"  # where latency is measured (autoprune.runtimes); studies made before it: torch eager
    channel_multiple: int = 1
    threads: int | None = None
    trial_method: str = "admm"  # how trials prune: magnitude or admm (studies made before the option used admm)
    # how trials climb the rungs (autoprune.study.rungs.Fidelity as a dict; None: studies made
    # before rungs existed, which trained every trial fully)
    fidelity: dict[str, Any] | None = None
    val_size: int | None = None  # validation images of the built-in loop (None: the user's metric, or older studies)
    # the metric the budget is on (the ``dense_accuracy`` and trial ``accuracy`` fields hold it
    # whatever its name), and whether higher (maximize) or lower is better
    metric: str = "accuracy"
    direction: str = "maximize"

    def allowed_drop(self) -> float:
        """The budget as an absolute drop of the metric (in its units; a fraction for accuracy)."""
        if self.budget_mode == "relative":
            return self.budget * abs(self.dense_accuracy)
        return self.budget

    def drop(self, value: float) -> float:
        """How much worse ``value`` is than dense (positive: worse), whatever the direction."""
        return self.dense_accuracy - value if self.direction == "maximize" else value - self.dense_accuracy

    @property
    def percent(self) -> bool:
        """Whether the metric is shown as a percentage (the built-in accuracy)."""
        return self.metric == "accuracy"

    @property
    def _decimals(self) -> int:
        """Decimals of a percentage: two where one validation image is worth under 0.05 points."""
        return 2 if (self.val_size or 0) >= 2000 else 1

    def fmt(self, value: float | None) -> str:
        """A value of the metric as shown: ``97.2%`` for accuracy (``91.37%`` on a validation split of
        2,000 images or more), ``0.8312`` otherwise."""
        if value is None:
            return "–"
        return f"{100 * value:.{self._decimals}f}%" if self.percent else f"{value:.4g}"

    def fmt_drop(self, drop: float | None, sign: bool = False) -> str:
        """A drop of the metric: ``1.2 points`` for accuracy, ``0.0132`` otherwise."""
        if drop is None:
            return "–"
        if self.percent:
            return f"{100 * drop:{'+' if sign else ''}.{self._decimals}f} points"
        return f"{drop:{'+' if sign else ''}.3g}"

    def validation_note(self) -> str | None:
        """``validation: 6,000 images (one image is 0.017 points)``, where the study knows its size."""
        if not self.val_size:
            return None
        return f"validation: {self.val_size:,} images (one image is {100 / self.val_size:.2g} points)"

    @property
    def directions(self) -> tuple[str, str]:
        """The study's Optuna directions: the metric's, then latency's."""
        return (self.direction, "minimize")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = list(self.objectives)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudyMeta:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in raw.items() if k in known}
        data["objectives"] = tuple(data.get("objectives", OBJECTIVES))
        return cls(**data)


@dataclass
class TrialRecord:
    """One trial as measured: the study's metric (``score``, named by ``StudyMeta.metric``;
    accuracy as a fraction for the built-in loop), latency in ms per batch. ``accuracy``,
    ``accuracy_drop`` and ``hard_prune_accuracy`` are the former names of the three scores,
    kept as aliases (studies stored before the renaming are read back under the new names)."""

    number: int
    state: str  # COMPLETE, PRUNED (stopped early), FAIL, RUNNING, WAITING
    params: dict[str, Any] = field(default_factory=dict)  # Optuna's parameters
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer -> {type, rate}
    is_dense: bool = False
    # the study's metric (its name: StudyMeta.metric; accuracy for the built-in loop, the user's
    # otherwise) on validation data after retraining, how much worse than dense it is (absolute,
    # along the metric's direction) and its value right after the hard prune, before retraining
    score: float | None = None
    score_drop: float | None = None
    hard_prune_score: float | None = None
    latency_ms: float | None = None  # median, compacted model, on the study's device and batch
    latency_p90_ms: float | None = None
    speedup: float | None = None  # dense latency / latency
    macs: float | None = None  # effective MACs of the pruned model
    params_count: float | None = None  # nonzero parameters
    sparsity: float | None = None  # fraction of weights removed, over all prunable layers
    kernels: dict[str, str] = field(default_factory=dict)  # layer -> kernel form chosen
    feasible: bool | None = None  # accuracy drop within the budget
    stop_reason: str | None = None
    residuals: list[float] = field(default_factory=list)  # ADMM primal residual per iteration (mean over layers)
    # per ADMM iteration, then per retraining epoch (with rungs: the mean of each rung's retraining)
    train_losses: list[float] = field(default_factory=list)
    seconds: float | None = None
    pareto: bool = False  # on the accuracy-latency front of the completed trials
    repeat_of: int | None = None  # an earlier trial of the same configuration, whose result this one reused
    proposal: str | None = None  # who proposed it: uniform, ascent, explore, mutate (None: enqueued or older studies)
    worker: str | None = None  # "host:pid" of the worker that ran it (None: older studies)
    # re-measured at the end of the search beside dense and the other candidates, more rounds:
    # {"speedup", "speedup_p10", "speedup_p90", "rounds"} (None: not among the re-measured)
    remeasured: dict[str, float] | None = None
    # the rungs it climbed (autoprune.study.rungs): [{"rung", "score", "epochs", "seconds", "decision"}]
    rungs: list[dict[str, Any]] = field(default_factory=list)
    epochs: float | None = None  # training it spent, every rung counted (0: nothing trained; None: older studies)
    stopped_at: str | None = None  # the rung where the promotion rule stopped it ("screen", "short")
    method: str | None = None  # how it pruned (admm, magnitude, gmp; None: older studies, the study's trial method)

    accuracy = property(lambda self: self.score, lambda self, v: setattr(self, "score", v),
                        doc="Former name of :attr:`score`.")
    accuracy_drop = property(lambda self: self.score_drop, lambda self, v: setattr(self, "score_drop", v),
                             doc="Former name of :attr:`score_drop`.")
    hard_prune_accuracy = property(lambda self: self.hard_prune_score,
                                   lambda self, v: setattr(self, "hard_prune_score", v),
                                   doc="Former name of :attr:`hard_prune_score`.")

    @property
    def merit(self) -> float:
        """Higher is better whatever the metric's direction: minus the drop from dense."""
        return -self.score_drop if self.score_drop is not None else float("-inf")

    @property
    def final_speedup(self) -> float | None:
        """The re-measured speedup where there is one, else the one measured during the search."""
        return self.remeasured["speedup"] if self.remeasured else self.speedup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sparsity_summary(self) -> str:
        """``filter 50% ×2, shape 80%`` — the targets in a few words."""
        if self.is_dense or not self.targets:
            return "dense"
        counts: dict[str, int] = {}
        for t in self.targets.values():
            label = t["type"] if t.get("rate") is None else f"{t['type']} {round(100 * t['rate'])}%"
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in counts.items())


@dataclass
class StudyRecord:
    """A study: its settings, its trials, and the derived front."""

    meta: StudyMeta
    storage: str
    trials: list[TrialRecord]
    sampler_epochs: float = 0.0  # what the sampler's own screens cost (the guided ladder's measurements)

    @property
    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.score is not None and t.latency_ms is not None]

    @property
    def front(self) -> list[TrialRecord]:
        """The Pareto front of completed trials (max accuracy, min latency), fastest first."""
        return sorted((t for t in self.completed if t.pareto), key=lambda t: t.latency_ms)

    @property
    def feasible(self) -> list[TrialRecord]:
        return [t for t in self.completed if t.feasible]

    def best_feasible(self) -> TrialRecord | None:
        """The fastest trial within the budget (ties: the more accurate; a repeat never wins over
        the trial it repeats). Where the search re-measured its fastest candidates at the end
        (``remeasured``), the fastest of them by that figure: the best of many noisy timings
        is biased upward, a second timing side by side is not."""
        return _fastest([t for t in self.feasible if t.repeat_of is None])

    def best_uniform(self) -> TrialRecord | None:
        """The fastest trial within the budget among the uniform ones (one type and rate on every
        searched variable: the search's first phase), by the same rule as :meth:`best_feasible`."""
        return _fastest([t for t in self.feasible if t.repeat_of is None and t.proposal == Proposal.UNIFORM])

    def epochs_spent(self) -> float:
        """The training the study spent: its trials' (every rung counted; repeats spent none) and
        the sampler's own screens."""
        return self.sampler_epochs + sum(t.epochs or 0.0 for t in self.trials)

    def rung_correlations(self) -> dict[str, Any]:
        """Spearman's rank correlation of each lower rung's score with the fully trained score,
        over the trials that climbed every rung: ``{"screen": r, "short": r, "pairs": n}``
        (None where fewer than three pairs)."""
        from autoprune.study.rungs import rank_correlation

        trained = [t for t in self.completed if t.rungs and t.repeat_of is None and not t.is_dense]
        out: dict[str, Any] = {"pairs": 0}
        for rung in ("screen", "short"):
            pairs = [(r["score"], t.score) for t in trained for r in t.rungs if r["rung"] == rung]
            sign = 1.0 if self.meta.direction == "maximize" else -1.0
            out[rung] = rank_correlation([sign * a for a, _ in pairs], [sign * b for _, b in pairs])
            out["pairs"] = max(out["pairs"], len(pairs))
        return out

    def most_accurate(self) -> TrialRecord | None:
        done = self.completed
        return max(done, key=lambda t: (t.merit, -t.latency_ms)) if done else None


def si_count(value: float | None) -> str:
    """1.82e9 -> ``1.82 G`` (MACs and parameter counts in tables)."""
    if value is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def mark_pareto(trials: list[TrialRecord]) -> None:
    """Set ``pareto`` on the completed trials no other completed trial dominates; a repeated
    configuration (``repeat_of``) counts once, as the trial that ran it."""
    done = [t for t in trials if t.state == "COMPLETE" and t.score is not None and t.latency_ms is not None
            and t.repeat_of is None]
    for t in trials:
        t.pareto = False
    for t in done:
        t.pareto = not any(
            (o.merit >= t.merit and o.latency_ms <= t.latency_ms)
            and (o.merit > t.merit or o.latency_ms < t.latency_ms)
            for o in done
        )


def _worker(owner: Any) -> str | None:  # noqa: ANN401 - a stored user attribute
    if not isinstance(owner, dict) or "host" not in owner or "pid" not in owner:
        return None
    return f"{owner['host']}:{owner['pid']}"


#: the trial record's former names of its scores (studies stored before the renaming use them)
FORMER_SCORE_KEYS = {"accuracy": "score", "accuracy_drop": "score_drop", "hard_prune_accuracy": "hard_prune_score"}


def renamed_scores(measured: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored measurements with the scores under their current names."""
    return {FORMER_SCORE_KEYS.get(k, k): v for k, v in measured.items()}


def study_record(study: Any, storage: str) -> StudyRecord:
    """Rebuild the records of an Optuna study created by ``autoprune search``."""
    raw = study.user_attrs.get(STUDY_ATTR)
    if raw is None:
        raise UserError(f"study '{study.study_name}' in {storage} was not created by 'autoprune search'.")
    meta = StudyMeta.from_dict(raw)
    remeasured = study.user_attrs.get(REMEASURED_ATTR) or {}
    trials = []
    frozen = study.get_trials(deepcopy=False)
    state_of = {ft.number: ft.state.name for ft in frozen}
    for ft in frozen:
        measured = renamed_scores(ft.user_attrs.get(TRIAL_ATTR, {}))
        known = set(TrialRecord.__dataclass_fields__) - {"number", "state", "params", "targets", "stop_reason", "pareto",
                                                         "proposal", "remeasured", "worker"}
        rec = TrialRecord(
            number=ft.number,
            state=ft.state.name,
            params=dict(ft.params),
            targets=dict(ft.user_attrs.get(TARGETS_ATTR, {})),
            stop_reason=ft.user_attrs.get(REASON_ATTR),
            proposal=ft.user_attrs.get(PROPOSAL_ATTR),
            worker=_worker(ft.user_attrs.get(OWNER_ATTR)),
            remeasured=remeasured.get(str(ft.number)),
            **{k: v for k, v in measured.items() if k in known},
        )
        if rec.state == "COMPLETE" and ft.values is not None:
            rec.score, rec.latency_ms = float(ft.values[0]), float(ft.values[1])
            if rec.score_drop is None:
                rec.score_drop = meta.drop(rec.score)
        elif rec.state == "PRUNED" and state_of.get(rec.repeat_of) == "COMPLETE":
            # a repeat of a complete trial: stopped in Optuna (each configuration once on its
            # fronts), complete here with the result it reused (older studies stored it complete)
            rec.state, rec.stop_reason = "COMPLETE", None
        trials.append(rec)
    mark_pareto(trials)
    return StudyRecord(meta, storage, trials, float(study.user_attrs.get(SAMPLER_EPOCHS_ATTR) or 0.0))


def _fastest(trials: list[TrialRecord]) -> TrialRecord | None:
    """The fastest of ``trials`` (ties: the more accurate): by the end-of-search re-measurement
    where some were re-measured, else by the search's own timing."""
    if not trials:
        return None
    again = [t for t in trials if t.remeasured]
    if again:
        return max(again, key=lambda t: (t.remeasured["speedup"], t.merit))
    return min(trials, key=lambda t: (t.latency_ms, -t.merit))
