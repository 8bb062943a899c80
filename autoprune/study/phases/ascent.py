"""The latency ascent: from the incumbent, one variable at a time one step harder.

From the fastest configuration within the budget so far (the *incumbent*), one variable at a
time moves one step harder: the next rate of its type that changes the architecture, or
another type at its rate. Candidates are ordered by the MACs they remove, then *measured* on
the device (compaction and side-by-side timing; no training, cached by signature), and the
fastest one that beats the incumbent by at least ``min_gain`` is tried (the candidates are
timed side by side *with the incumbent*: its own earlier figure may be a lucky draw). A move
that breaks the budget (after training, or predicted so at a rung) is never tried again at
or above that rate; one that keeps it becomes the new incumbent. This is NetAdapt's greedy
per-layer reduction driven by measured latency (Yang et al., ECCV 2018), walked along the
budget's edge. When no single move is left, two-variable *trades* (one eases, another
tightens) are tried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config import NONE_TYPE
from autoprune.study.phases import Phase, Proposal, Proposed
from autoprune.study.space import has_rate

if TYPE_CHECKING:
    from autoprune.study.sampler import PruningSampler, Seen

MOVE_ATTR = "autoprune.move"  # trial user attr of an ascent step: which variable moved where


class Ascent(Phase):
    name = Proposal.ASCENT

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:
        found = step(sampler, seen)
        return None if found is None else Proposed(found[0], self.name, found[1])


def history(seen: list[Seen]) -> tuple[dict[tuple[str, str], float], dict[str, int]]:
    """From the finished ascent steps: per (variable, type) the lowest rate at which moving that
    variable alone broke the budget (it is not tried at or above it again: a configuration
    only gets more pruned along the ascent, so the damage only grows), and per variable the
    grid steps of its last move that kept the budget (the next move on it jumps twice as far)."""
    failed: dict[tuple[str, str], float] = {}
    jump: dict[str, int] = {}
    for t in sorted(seen, key=lambda t: t.number):
        m = t.move
        if not m or not (t.state == TrialState.COMPLETE or t.rung_stop) or m.get("down"):
            continue
        key = (m["var"], m["type"])
        if t.feasible and not t.rung_stop:
            jump[m["var"]] = int(m.get("jump", 1))
        elif m.get("rate") is not None:
            failed[key] = min(failed.get(key, 2.0), float(m["rate"]))
    return failed, jump


def moves(s: PruningSampler, params: dict[str, Any], failed: dict[tuple[str, str], float] | None = None,
          jump: dict[str, int] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Harder neighbours of a configuration, one variable changed each, with their move records:
    the variable's type at a higher rate (``jump`` grid steps: twice its last successful step,
    at least one; once a rate failed, halfway between the current one and it; always a rate
    that changes the signature),
    and each other type at the variable's rate (from dense: at its lowest rate)."""
    failed, jump = failed or {}, jump or {}
    base_sig = s.signature(params)
    choices = s.space.choices_of(params)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for var in s.space.variables:
        kind, rate = choices[var.name]
        rates = s.space.rates(var)
        if kind != NONE_TYPE and has_rate(kind):
            limit = failed.get((var.name, kind), 2.0)
            higher = [r for r in rates if rate + 1e-9 < r < limit - 1e-9]
            changing = [r for r in higher
                        if s.signature(s.space.params_of({**choices, var.name: (kind, r)})) != base_sig]
            if changing:
                if (var.name, kind) in failed:  # bisect between here and the rate that failed
                    pick = changing[(len(changing) - 1) // 2]
                else:
                    want = 2 * jump.get(var.name, 0) or 1
                    pick = changing[min(want, len(changing)) - 1]
                new = s.space.params_of({**choices, var.name: (kind, pick)})
                out.append((new, {"var": var.name, "type": kind, "rate": pick, "jump": changing.index(pick) + 1}))
        for other in var.types:
            if other in (NONE_TYPE, kind):
                continue
            r = rate if rate is not None and has_rate(other) else (rates[0] if has_rate(other) else None)
            if r is not None and r >= failed.get((var.name, other), 2.0) - 1e-9:
                continue
            new = s.space.params_of({**choices, var.name: (other, r)})
            if s.signature(new) != base_sig:
                out.append((new, {"var": var.name, "type": other, "rate": r, "jump": 1}))
    return out


def trades(s: PruningSampler, params: dict[str, Any], failed: dict[tuple[str, str], float],
           jump: dict[str, int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Two-variable moves for when no single move is left: one variable steps one rate down
    (or to dense from its lowest rate) and another moves up, trading accuracy between layers
    of different sensitivity. Measured latency decides whether a trade is worth a trial: one
    that lowers a layer which costs little time and raises one that costs much comes first."""
    choices = s.space.choices_of(params)
    out = []
    for var in s.space.variables:
        kind, rate = choices[var.name]
        if kind == NONE_TYPE:
            continue
        lower = [r for r in s.space.rates(var) if rate is not None and r < rate - 1e-9]
        down = (kind, lower[-1]) if lower else (NONE_TYPE, None)
        if down[0] == NONE_TYPE and NONE_TYPE not in var.types:
            continue
        eased = s.space.params_of({**choices, var.name: down})
        # the rates that failed did so with this variable higher: one step up is open again
        for new, move in moves(s, eased):
            if move["var"] != var.name:
                out.append((new, {**move, "down": var.name}))
    return out


def step(s: PruningSampler, seen: list[Seen]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    inc = s.incumbent(seen)
    if inc is None:
        return None
    inc_params = {k: inc.params[k] for k in s._dists}
    inc_sig = s.signature(inc_params)
    taken = {t.signature for t in seen}
    failed, jump = history(seen)
    for make in (moves, trades):
        cands = [(p, m) for p, m in make(s, inc_params, failed, jump) if s.signature(p) not in taken]
        cands.sort(key=lambda pm: s.probe.macs(s._targets(pm[0])))
        for start in range(0, len(cands), s.screen):
            batch = cands[start:start + s.screen]
            ratios = s.relative(inc_params, inc_sig, [p for p, _ in batch])
            good = [(r, i) for i, r in enumerate(ratios) if r <= 1.0 - s.min_gain]
            if good:
                return batch[min(good)[1]]
    return None
