"""Multi-fidelity trials: every configuration is scored cheaply first, and trained only when it
can still reach the front within the budget.

A configuration the latency screen lets through climbs up to three *rungs*:

0. ``screen``: the hard prune of the dense weights, the BatchNorm statistics recomputed on a
   few training batches (EagleEye, arXiv 2007.02491: "adaptive BN" makes a pruned model's
   accuracy before any fine-tuning a good predictor of its accuracy after it), scored on a
   validation subset. No weight is trained.
1. ``short``: masked retraining for a fraction of the trial's schedule (:attr:`Fidelity.short`,
   20% by default), scored on the whole validation split.
2. ``full``: the rest of the trial's schedule (with ``--trial-method admm``, the ADMM schedule
   from the dense weights), scored as every trial is. Only a trial that reaches this rung is
   complete and on the front.

**Promotion** (:func:`decide`). A trained trial (one that reached the full rung) is a
*reference*: its score at each rung and its final score are known. A candidate's final score
is predicted from its score at the rung it stands on by the references' monotone (isotonic)
fit of final score on rung score, read by linear interpolation between them and along the end
segments beyond them: the better a pruned model scores before retraining, the better it scores
after. The prediction's error is measured on the
references themselves (leave-one-out, the median absolute error; with only two references, as
much again as the budget) and allowed as a tolerance. The candidate goes up
when (1) its predicted drop, less the tolerance, is within the budget, and (2) it is a
*contender of the front*: no reference at least as fast is predicted better by more than the
tolerance. Before two references exist, everything goes up (the rule has nothing to compare
with yet); the uniform ladder's trials, which the user compares the search against and
which give the first references, always go up.

**The epoch budget** (:attr:`Fidelity.epoch_budget`): the training epochs the study may spend
in all, every rung of every trial counted (the screen's BatchNorm passes too). A promotion
that the rest of the budget cannot pay for is not made; the trial stops with that reason,
and the search ends once not even a short rung can be paid for.

The rule was chosen on Fashion-MNIST (``benchmarks/results/rung_signal.md``: resnet20;
``benchmarks/results/search_vs_uniform.md`` has the Spearman rank correlation of each rung's
score with the trained score inside real searches, per model).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autoprune.errors import UserError

__all__ = ["FULL", "RUNGS", "SCREEN", "SHORT", "Decision", "Fidelity", "Reference", "decide", "predict",
           "rank_correlation"]

RUNGS = ("screen", "short", "full")
SCREEN, SHORT, FULL = 0, 1, 2


@dataclass(frozen=True)
class Fidelity:
    """How a study's trials climb the rungs (stored with the study).

    Attributes:
        rungs: Score each configuration at the screen (and short) rung first; False trains
            every configuration that passes the latency screen for the full schedule.
        short: The short rung's training, as a fraction of the trial's schedule (0: none).
        screen_batches: Training batches whose statistics the screen's BatchNorm takes
            (the built-in loop, at most 5% of an epoch; with a user's ``train``,
            ``screen_amount`` of its unit).
        screen_amount: The user's ``train`` run with its optimizer steps undone for the
            screen's BatchNorm statistics, as a fraction of the trial's schedule.
        screen_val: Validation images the screen scores on (0: all; the built-in loop).
        epoch_budget: Training epochs the whole study may spend (None: no cap), in the unit
            of the training loop (epochs for the built-in one).
    """

    rungs: bool = True
    short: float = 0.2
    screen_batches: int = 16
    screen_amount: float = 0.02
    screen_val: int = 1000
    epoch_budget: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.short < 1.0:
            raise UserError(f"The short rung must be a fraction of the trial's training in [0, 1). Got {self.short} "
                            f"instead.")
        if self.screen_batches < 1 or self.screen_val < 0 or not self.screen_amount >= 0:
            raise UserError("The screen needs at least one batch, a validation size >= 0 (0: all) and a "
                            "recalibration amount >= 0.")
        if self.epoch_budget is not None and not self.epoch_budget > 0:
            raise UserError(f"--epoch-budget must be a positive number of epochs (or 'none'). Got "
                            f"{self.epoch_budget} instead.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Fidelity:
        """A stored study's fidelity; studies made before rungs existed trained every trial fully."""
        if raw is None:
            return cls(rungs=False)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class Reference:
    """A trained trial as the promotion rule sees it."""

    number: int
    scores: dict[int, float]  # rung -> the metric measured there (the full rung included)
    latency_ms: float

    @property
    def final(self) -> float:
        return self.scores[FULL]


@dataclass(frozen=True)
class Decision:
    """Whether a trial goes up a rung, and why (the reason is what a stopped trial records)."""

    promote: bool
    reason: str
    predicted: float | None = None  # the predicted final score
    tolerance: float | None = None
    references: list[int] = field(default_factory=list)  # the trials the prediction came from


def _isotonic(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators), as
    ``(x, fitted y)`` knots sorted by ``x`` (equal ``x`` pooled into one knot)."""
    blocks: list[list[float]] = []  # [sum x, sum y, count]
    for x, y in sorted(points):
        if blocks and blocks[-1][0] / blocks[-1][2] == x:
            blocks[-1][0] += x
            blocks[-1][1] += y
            blocks[-1][2] += 1
        else:
            blocks.append([x, y, 1])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            x2, y2, n2 = blocks.pop()
            blocks[-1][0] += x2
            blocks[-1][1] += y2
            blocks[-1][2] += n2
    return [(bx / n, by / n) for bx, by, n in blocks]


def _predict_from(score: float, rung: int, refs: Sequence[Reference], sign: float) -> tuple[float, list[int]]:
    """The final score at ``score``: the monotone (isotonic) fit of the references' final scores on
    their rung scores, read between its knots by linear interpolation and beyond them along the
    end segment (its slope capped at 1: retraining does not take back more than the prune
    took); and the references nearest on either side."""
    pts = [(sign * r.scores[rung], sign * r.final) for r in refs]
    knots = _isotonic(pts)
    x = sign * score
    if len(knots) == 1:
        fx = knots[0][1]
    else:  # the segment x falls in, or the end segment x lies beyond (its slope, at most 1, carried on)
        i = min(max(1, next((i for i in range(1, len(knots)) if x <= knots[i][0]), len(knots) - 1)), len(knots) - 1)
        (x0, y0), (x1, y1) = knots[i - 1], knots[i]
        slope = min((y1 - y0) / (x1 - x0), 1.0)
        fx = y0 + slope * (x - x0) if x <= x1 else y1 + slope * (x - x1)
    below = [r for r in refs if sign * r.scores[rung] <= x]
    above = [r for r in refs if sign * r.scores[rung] > x]
    near = [max(below, key=lambda r: sign * r.scores[rung])] if below else []
    near += [min(above, key=lambda r: sign * r.scores[rung])] if above else []
    return sign * fx, sorted(r.number for r in near)


def predict(rung: int, score: float, refs: Sequence[Reference],
            direction: str = "maximize") -> tuple[float, float | None, list[int]] | None:
    """The final score predicted from ``score`` at ``rung`` (see :func:`_predict_from`), the rule's
    leave-one-out error on the references (the median absolute error; None with fewer than
    three references), and the references it was read between; None without any."""
    sign = 1.0 if direction == "maximize" else -1.0
    usable = [r for r in refs if rung in r.scores and FULL in r.scores]
    if not usable:
        return None
    pred, near = _predict_from(score, rung, usable, sign)
    errors = [abs(_predict_from(r.scores[rung], rung, [o for o in usable if o is not r], sign)[0] - r.final)
              for r in usable] if len(usable) > 2 else []
    tol = statistics.median(errors) if errors else None
    return pred, tol, near


def decide(rung: int, score: float, latency_ms: float, refs: Sequence[Reference], *, dense: float, allowed: float,
           direction: str = "maximize", fmt: Any = None) -> Decision:  # noqa: ANN401
    """Whether a trial scoring ``score`` at ``rung`` goes on to the next rung (see the module
    docstring). ``dense`` is the dense model's score, ``allowed`` the budget as an absolute drop,
    ``fmt`` formats a score for the reason (default: ``repr``)."""
    show = fmt or (lambda v: f"{v:.4g}")
    sign = 1.0 if direction == "maximize" else -1.0
    usable = [r for r in refs if rung in r.scores and FULL in r.scores]
    if len(usable) < 2:
        return Decision(True, f"fewer than two trained trials to compare the {RUNGS[rung]} score with")
    pred, tol, used = predict(rung, score, usable, direction)
    if tol is None:  # two references: no error to measure yet; allow as much again as the budget
        tol = allowed
    drop = sign * (dense - pred)
    if drop - tol > allowed + 1e-12:
        return Decision(False, f"{RUNGS[rung]} score {show(score)} predicts {show(pred)} after training (from trials "
                               f"{', '.join(map(str, used))}; error ±{show(tol)}): beyond the budget",
                        pred, tol, used)
    better = [r for r in usable if r.latency_ms <= latency_ms and sign * (r.final - pred) > tol + 1e-12]
    if better:
        r = max(better, key=lambda r: sign * r.final)
        return Decision(False, f"{RUNGS[rung]} score {show(score)} predicts {show(pred)} after training (error "
                               f"±{show(tol)}); trial {r.number}, at least as fast, reached {show(r.final)}: not a "
                               f"contender of the front", pred, tol, used)
    return Decision(True, f"predicted {show(pred)} (±{show(tol)}) after training", pred, tol, used)


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences (ties get their mean rank);
    None with fewer than three pairs or a constant sequence."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5
