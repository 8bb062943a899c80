"""Exploration: Optuna's own sampler (TPE by default), informed by every trial so far, fills the
rest of the accuracy-latency front. A proposal whose configuration was already run or is
running is drawn again (then mutated from the incumbent), so trial slots go to new
configurations. This phase always proposes: it is the last one asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.study.phases import Phase, Proposal, Proposed
from autoprune.study.space import has_rate

if TYPE_CHECKING:
    from autoprune.study.sampler import PruningSampler, Seen

RESAMPLE = 12  # draws from the base sampler before a repeated configuration is mutated instead


class Explore(Phase):
    name = Proposal.EXPLORE

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        params, origin = explore(sampler, study, trial, seen)
        return Proposed(params, origin)


def explore(s: PruningSampler, study: optuna.Study, trial: FrozenTrial, seen: list[Seen]) -> tuple[dict[str, Any], Proposal]:
    taken = {t.signature for t in seen}
    params: dict[str, Any] = {}
    for _ in range(RESAMPLE):
        params = from_base(s, study, trial)
        if s.signature(params) not in taken:
            return params, Proposal.EXPLORE
    inc = s.incumbent(seen)
    start = {k: inc.params[k] for k in s._dists} if inc is not None else params
    for _ in range(100):
        mutated = mutate(s, start)
        if s.signature(mutated) not in taken:
            return mutated, Proposal.MUTATE
    return params, Proposal.EXPLORE  # the space is exhausted: the trial will reuse an earlier result


def from_base(s: PruningSampler, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    space = s.base.infer_relative_search_space(study, trial)
    params = dict(s.base.sample_relative(study, trial, space)) if space else {}
    for name, dist in s._dists.items():
        if name not in params or not dist._contains(dist.to_internal_repr(params[name])):
            params[name] = s.base.sample_independent(study, trial, name, dist)
    return {k: params[k] for k in s._dists}


def mutate(s: PruningSampler, params: dict[str, Any]) -> dict[str, Any]:
    choices = s.space.choices_of(params)
    var = s.space.variables[s.rng.randint(len(s.space.variables))]
    kind = var.types[s.rng.randint(len(var.types))]
    rates = s.space.rates(var)
    rate = rates[s.rng.randint(len(rates))] if has_rate(kind) else None
    return s.space.params_of({**choices, var.name: (kind, rate)})
