"""The ladders: one type at one rate on many variables, by bisection over the rate grid.

* :class:`UniformLadder`: the primary type (``filter`` where the space offers it) at one rate
  on every variable: the highest uniform rate within the budget in about log2(rates) trials.
  This is what a user would hand-tune, so the search starts from it and can only add to it.
* :class:`EffectiveLadder`: the same on the *effective* variables only: each variable's
  pruning alone is timed once beside dense (:func:`latency_gains`), and those that save less
  than 1% of the latency (or a fifth of the best one) stay dense; pruning them would cost
  accuracy and buy no time (on an AVX-512 CPU a conv with 16 channels or fewer fills one
  channel block whatever is removed).

:func:`bisect` is the bisection both use (and the guided ladder too).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.study.phases import Phase, Proposal, Proposed
from autoprune.study.space import Variable

if TYPE_CHECKING:
    from autoprune.study.sampler import PruningSampler, Seen

GAINS_ATTR = "autoprune.latency_gains"  # study user attr: per variable, the latency its pruning alone saves
EFFECTIVE_GAIN = 0.01  # a variable whose pruning saves less than 1% of the dense latency is left dense
GAINS_ROUNDS = 20  # interleaved rounds (of three calls) when each variable's pruning alone is timed

Rungs = list[tuple[float, dict[str, Any], str]]  # (rate or rank, parameters, signature), lightest first


class UniformLadder(Phase):
    name = Proposal.UNIFORM

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        params = bisect(seen, uniform_rungs(sampler))
        return None if params is None else Proposed(params, self.name)


class EffectiveLadder(Phase):
    name = Proposal.EFFECTIVE

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        effective = effective_variables(sampler, study)
        if not 0 < len(effective) < len(sampler.space.variables):
            return None  # all of them: that was the uniform ladder
        params = bisect(seen, uniform_rungs(sampler, effective))
        return None if params is None else Proposed(params, self.name)


def uniform_rungs(s: PruningSampler, variables: list[Variable] | None = None) -> list[tuple[float, dict[str, Any], str]]:
    """Configurations with the primary type at one rate on ``variables`` (default: every
    variable offering it) and the lightest choice elsewhere (dense where offered), lowest
    rate first, one per signature."""
    if s.primary is None:
        return []
    offering = [v for v in (variables if variables is not None else s.space.variables)
                if s.primary in v.types]
    rates = sorted({r for v in offering for r in s.space.rates(v)})
    out, taken = [], {"dense"}
    for r in rates:
        params = s.space.params_of({v.name: (s.primary, r) for v in offering})
        sig = s.signature(params)
        if sig not in taken:
            taken.add(sig)
            out.append((r, params, sig))
    return out


def latency_gains(s: PruningSampler, study: optuna.Study) -> dict[str, float]:
    """Per variable, the fraction of the dense latency that pruning it alone (the primary
    type at its highest rate) saves, timed once side by side with the lightest configuration
    (dense, where the space offers it) and stored on the study (``autoprune.latency_gains``) for every worker."""
    stored = study.user_attrs.get(GAINS_ATTR)
    if stored is not None:
        return {k: float(v) for k, v in stored.items()}
    offering = [v for v in s.space.variables if s.primary in v.types] if s.primary else []
    if not offering:
        return {}
    configs = [s._targets(s.space.params_of({}))] + [s._targets(s.space.params_of({v.name: (s.primary, s.space.rates(v)[-1])}))
                      for v in offering]
    stats = s.probe.compare(configs, rounds=GAINS_ROUNDS)
    gains = {v.name: 1.0 - float(st.median) for v, st in zip(offering, stats[1:])}
    with contextlib.suppress(Exception):  # another worker stored them first: either is fine
        study.set_user_attr(GAINS_ATTR, gains)
    return gains


def effective_variables(s: PruningSampler, study: optuna.Study) -> list[Variable]:
    """The variables whose pruning measurably saves time: a gain of at least 1% of the dense
    latency and a fifth of the largest gain. Pruning the others costs accuracy for nothing
    (a conv whose channels all fit in one of the device's channel blocks, for instance)."""
    gains = latency_gains(s, study)
    if not gains:
        return []
    floor = max(EFFECTIVE_GAIN, 0.2 * max(gains.values()))
    return [v for v in s.space.variables if gains.get(v.name, 0.0) >= floor]


def bisect(seen: list[Seen], rungs: list[tuple[float, dict[str, Any], str]]) -> dict[str, Any] | None:
    """Bisection over ``rungs`` for the highest rung within the budget (assuming a rung
    keeps the budget when a higher one does)."""
    by_sig: dict[str, Seen] = {}
    for s in sorted(seen, key=lambda s: s.number):  # the trial that ran a configuration, not its repeats
        if s.signature is not None:
            by_sig.setdefault(s.signature, s)
    status = []
    for _, _, sig in rungs:
        s = by_sig.get(sig)
        if s is None:
            status.append(None)
        elif s.state == TrialState.RUNNING:
            status.append("running")
        elif s.rung_stop:
            status.append("infeasible")  # predicted over budget at a rung
        elif s.state == TrialState.PRUNED:
            status.append("stopped")
        else:
            status.append("feasible" if s.feasible else "infeasible")
    lo = max((i for i, st in enumerate(status) if st == "feasible"), default=-1)
    hi = min((i for i, st in enumerate(status) if st == "infeasible" and i > lo), default=len(rungs))
    # a rung still running counts as feasible for choosing the next one (an optimistic guess
    # that lets a second worker go on; the finished result corrects the course)
    lo = max([lo] + [i for i, st in enumerate(status) if st == "running" and lo < i < hi])
    open_ = [i for i in range(lo + 1, hi) if status[i] is None]
    if not open_:
        return None
    mid = (lo + hi + 1) // 2
    pick = min(open_, key=lambda i: (abs(i - mid), -i))
    return rungs[pick][1]
