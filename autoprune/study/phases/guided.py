"""The guided ladder: many layers to the top rate at once, in the order a sensitivity analysis
weighed by measured time gives.

From the fastest configuration within the budget the ladders found (the *base*), each
variable's pruning to the top rate is measured once without training: its latency beside
the base (side by side, on the device) and its screen score (the hard prune with BatchNorm
recomputed; :mod:`autoprune.study.rungs`). Variables are ordered by latency saved per point
of screen score lost; rung ``k`` of this ladder has the first ``k`` at the top rate, and
:func:`~autoprune.study.phases.ladders.bisect` finds the longest prefix within the budget.
Where the ascent changes one variable per trial, one trial here changes many. It needs the
probe's screen (a search whose trials climb rungs).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.study.phases import Phase, Proposal, Proposed
from autoprune.study.phases.ladders import bisect
from autoprune.study.records import SAMPLER_EPOCHS_ATTR

if TYPE_CHECKING:
    from autoprune.study.sampler import PruningSampler, Seen

GUIDE_ATTR = "autoprune.guide"  # study user attr: the guided ladder's base and each variable's gain and damage
GUIDE_ROUNDS = 20  # interleaved rounds (of three calls) when the variables' top-rate pruning is timed


class GuidedLadder(Phase):
    name = Proposal.GUIDED

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        if not sampler.use_guided:
            return None
        params = bisect(seen, guided_rungs(sampler, study, seen))
        return None if params is None else Proposed(params, self.name)


def guided_rungs(s: PruningSampler, study: optuna.Study, seen: list[Seen]) -> list[tuple[float, dict[str, Any], str]]:
    """Configurations that push the variables pruning buys most time for least damage to the
    top rate, one more at a time, from the fastest configuration within the budget the
    ladders found (the *base*).

    Each variable's pruning to the top rate is measured once from the base, without
    training: its latency beside the base (side by side, on the device) and its screen
    score (hard prune, BatchNorm recomputed; :mod:`autoprune.study.rungs`). Variables
    are ordered by latency saved per point of screen score lost (sensitivity analysis,
    weighed by measured time); rung ``k`` of this ladder has the first ``k`` at the top
    rate. Stored on the study (``autoprune.guide``) for every worker; what the screens
    cost is added to the study's epochs (``autoprune.sampler_epochs``)."""
    if s.primary is None:
        return []
    stored = study.user_attrs.get(GUIDE_ATTR)
    if stored is None:
        stored = _measure_guide(s, study, seen)
        if stored is None:
            return []
    base = dict(stored["params"])
    choices = dict(s.space.choices_of(base))
    by_name = {v.name: v for v in s.space.variables}
    useful = [(n, d) for n, d in stored["variables"].items() if d["gain"] > 0 and n in by_name]
    order = sorted(useful, key=lambda nd: (-nd[1]["gain"] / max(nd[1]["drop"], 1e-3), nd[0]))
    out, taken = [], {s.signature(base)}
    for k, (name, _) in enumerate(order, start=1):
        choices[name] = (s.primary, s.space.rates(by_name[name])[-1])
        params = s.space.params_of(choices)
        sig = s.signature(params)
        if sig not in taken:
            taken.add(sig)
            out.append((float(k), params, sig))
    return out


def _measure_guide(s: PruningSampler, study: optuna.Study, seen: list[Seen]) -> dict[str, Any] | None:
    """Each variable's top-rate pruning from the base: latency gain and screen damage."""
    if any(t.state == TrialState.RUNNING and t.proposal in (Proposal.UNIFORM, Proposal.EFFECTIVE) for t in seen):
        return None  # the ladders' last results decide the base
    inc = s.incumbent(seen)
    if inc is None:
        return None
    base = {k: inc.params[k] for k in s._dists}
    base_sig = s.signature(base)
    if base_sig == "dense":
        return None
    choices = s.space.choices_of(base)
    cands = []
    for var in s.space.variables:
        if s.primary not in var.types:
            continue
        top = s.space.rates(var)[-1]
        params = s.space.params_of({**choices, var.name: (s.primary, top)})
        if s.signature(params) != base_sig:
            cands.append((var.name, params))
    if not cands:
        return None
    stats = s.probe.compare([s._targets(base)] + [s._targets(p) for _, p in cands], rounds=GUIDE_ROUNDS)
    base_score, spent = s.probe.screen(s._targets(base))
    variables = {}
    for (name, params), st in zip(cands, stats[1:]):
        score, cost = s.probe.screen(s._targets(params))
        spent += cost
        variables[name] = {"gain": 1.0 - float(st.median), "drop": max(s.sign * (base_score - score), 0.0),
                           "screen": score}
    stored = {"base": inc.number, "params": base, "screen": base_score, "variables": variables}
    with contextlib.suppress(Exception):  # another worker stored its own first: either is fine
        if study.user_attrs.get(GUIDE_ATTR) is None:
            study.set_user_attr(GUIDE_ATTR, stored)
            study.set_user_attr(SAMPLER_EPOCHS_ATTR,
                                float(study.user_attrs.get(SAMPLER_EPOCHS_ATTR) or 0.0) + spent)
    return study.user_attrs.get(GUIDE_ATTR) or stored
