"""Local steps: random neighbours of the incumbent with two or three variables changed together,
screened by measured latency like the ascent's moves (the fastest that beats the incumbent is
tried). Where the ascent moves one variable at a time, this finds faster configurations that
need several layers to change together. Past the ascent, every other trial is a local step
(the others explore).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.config import NONE_TYPE
from autoprune.study.phases import Phase, Proposal, Proposed
from autoprune.study.space import has_rate

if TYPE_CHECKING:
    from autoprune.study.sampler import PruningSampler, Seen

LOCAL_DRAWS = 12  # random neighbours of the incumbent drawn per local step


class LocalStep(Phase):
    name = Proposal.LOCAL

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        explored = sum(1 for t in seen if t.proposal in (Proposal.LOCAL, Proposal.EXPLORE, Proposal.MUTATE))
        if explored % 2:
            return None  # exploration's turn
        params = local_step(sampler, seen)
        return None if params is None else Proposed(params, self.name)


def local_step(s: PruningSampler, seen: list[Seen]) -> dict[str, Any] | None:
    """A random neighbour of the incumbent that measures faster than it: two or three
    variables each moved one or two rates (or to another type), at least one of them up.
    Where the ascent moves one variable at a time, this finds faster configurations that
    need several layers to change together."""
    inc = s.incumbent(seen)
    if inc is None:
        return None
    inc_params = {k: inc.params[k] for k in s._dists}
    inc_sig = s.signature(inc_params)
    taken = {t.signature for t in seen} | {inc_sig}
    cands, sigs = [], set()
    for _ in range(LOCAL_DRAWS * 4):
        p = neighbour(s, inc_params)
        sig = s.signature(p)
        if sig not in taken and sig not in sigs:
            cands.append(p)
            sigs.add(sig)
        if len(cands) >= LOCAL_DRAWS:
            break
    cands.sort(key=lambda p: s.probe.macs(s._targets(p)))
    for start in range(0, len(cands), s.screen):
        batch = cands[start:start + s.screen]
        ratios = s.relative(inc_params, inc_sig, batch)
        good = [(r, i) for i, r in enumerate(ratios) if r <= 1.0 - s.min_gain]
        if good:
            return batch[min(good)[1]]
    return None


def neighbour(s: PruningSampler, params: dict[str, Any]) -> dict[str, Any]:
    choices = dict(s.space.choices_of(params))
    n = min(len(s.space.variables), 2 + s.rng.randint(2))
    picked = s.rng.choice(len(s.space.variables), size=n, replace=False)
    for j, idx in enumerate(picked):
        var = s.space.variables[int(idx)]
        kind, rate = choices[var.name]
        rates = s.space.rates(var)
        up = j == 0 or s.rng.rand() < 0.5
        if kind == NONE_TYPE or not has_rate(kind) or s.rng.rand() < 0.15:
            other = [t for t in var.types if t != kind]
            if not other:
                continue
            kind = other[s.rng.randint(len(other))]
            rate = rates[s.rng.randint(len(rates))] if has_rate(kind) else None
        else:
            i = min(range(len(rates)), key=lambda k: abs(rates[k] - rate))
            step = 1 + s.rng.randint(2)
            rate = rates[max(0, min(len(rates) - 1, i + (step if up else -step)))]
        choices[var.name] = (kind, rate)
    return s.space.params_of(choices)
