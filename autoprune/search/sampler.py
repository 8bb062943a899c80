"""The search's sampler: the budget's edge by uniform bisection, then a latency-guided ascent,
then Optuna's own sampler.

A per-layer space is large (every variable a type and a rate) and a trial is expensive (it
trains). Sampled blindly, most of a small trial budget lands on configurations that are
slow, over budget or already run; on held-out data a 20-trial TPE search found 1.11× where
pruning every layer at one rate found 1.48×. :class:`PruningSampler` proposes each trial's
whole configuration in three phases, each deciding from the study's finished and running
trials only (so any number of workers can share one study):

1. **Uniform ladders.** The primary type (``filter`` where the space offers it) at one rate
   on every variable, by bisection over the rate grid: the highest uniform rate within the
   budget in about log2(rates) trials. This is what a user would hand-tune, so the search
   starts from it and can only add to it. Then the same on the *effective* variables only:
   each variable's pruning alone is timed once beside dense (``latency_gains``), and those
   that save less than 1% of the latency (or a fifth of the best one) stay dense; pruning
   them would cost accuracy and buy no time (on an AVX-512 CPU a conv with 16 channels or
   fewer fills one channel block whatever is removed).
   Then, where trials climb rungs (:mod:`autoprune.search.rungs`), the *guided* ladder: from
   the fastest configuration within the budget the ladders found, each variable's pruning to
   the top rate is measured once without training (its latency beside the base, and its
   screen score: the hard prune with BatchNorm recomputed), the variables are ordered by
   latency saved per point of screen score lost, and the ladder's rung ``k`` prunes the
   first ``k`` to the top rate; bisection again finds the longest prefix within the budget.
   A sensitivity analysis weighed by measured time: one move that changes many layers at
   once, where the ascent below changes one per trial.
2. **Latency ascent.** From the fastest configuration within the budget so far (the
   *incumbent*), one variable at a time moves one step harder: the next rate of its type
   that changes the architecture, or another type at its rate. Candidates are ordered by the
   MACs they remove, then *measured* on the device (compaction and side-by-side timing; no
   training, cached by signature), and the fastest one that beats the incumbent by at least
   ``min_gain`` is trained (the candidates are timed side by side *with the incumbent*:
   its own earlier figure may be a lucky draw). A move that breaks the budget is never tried again; one that
   keeps it becomes the new incumbent. This is NetAdapt's greedy per-layer reduction driven
   by measured latency (Yang et al., ECCV 2018), walked along the budget's edge with the
   trials as the short fine-tuning.
3. **Exploration.** The remaining trials alternate between a *local* step (random
   neighbours of the incumbent with two or three variables changed together, screened by
   measured latency like the ascent's moves: the fastest that beats the incumbent is trained)
   and Optuna's sampler (TPE by default), informed by every trial so far, which fills the
   rest of the accuracy-latency front. A proposal whose configuration was already run or is
   running is drawn again (then mutated from the incumbent), so trial slots go to new
   configurations.

The phase that proposed a trial is stored in its ``autoprune.proposal`` user attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from autoprune.config import NONE_TYPE, LayerTarget
from autoprune.search.records import PROPOSAL_ATTR, SAMPLER_EPOCHS_ATTR, SIGNATURE_ATTR, TRIAL_ATTR
from autoprune.search.slots import SlotStorage
from autoprune.search.space import SearchSpace, Variable, has_rate

UNIFORM, EFFECTIVE, GUIDED, ASCENT, LOCAL, EXPLORE, MUTATE = (
    "uniform", "effective", "guided", "ascent", "local", "explore", "mutate")
GAINS_ATTR = "autoprune.latency_gains"  # study user attr: per variable, the latency its pruning alone saves
GUIDE_ATTR = "autoprune.guide"  # study user attr: the guided ladder's base and each variable's gain and damage
EFFECTIVE_GAIN = 0.01  # a variable whose pruning saves less than 1% of the dense latency is left dense
LOCAL_DRAWS = 12  # random neighbours of the incumbent drawn per local step
MIN_GAIN = 0.02  # a move must cut the incumbent's latency by at least 2% to be worth a trial
SCREEN = 4  # candidate moves measured at a time, most MACs removed first
SCREEN_ROUNDS = 20  # interleaved rounds (of three calls) when candidates are timed beside the incumbent
RESAMPLE = 12  # draws from the base sampler before a repeated configuration is mutated instead
INCUMBENT_CHECK = 3  # the fastest feasible trials timed again side by side to pick the incumbent
MOVE_ATTR = "autoprune.move"  # trial user attr of an ascent step: which variable moved where


class Probe:
    """What the sampler needs to know of a configuration without training it.

    The search's :class:`~autoprune.search.probe.ConfigProbe` implements it on the device;
    tests pass small fakes.
    """

    def signature(self, targets: dict[str, LayerTarget]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def macs(self, targets: dict[str, LayerTarget]) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def compare(self, configs: list[dict[str, LayerTarget]], *, rounds: int | None = None) -> list[Any]:  # pragma: no cover
        """Latency of each configuration relative to the first (objects with a ``median``),
        timed side by side on the device in ``rounds`` interleaved rounds."""
        raise NotImplementedError

    screener: Any = None  # set where the probe can score a configuration at the screen rung

    def screen(self, targets: dict[str, LayerTarget]) -> tuple[float, float]:  # pragma: no cover - interface
        """The screen rung's score of a configuration (no training) and its cost in epochs."""
        raise NotImplementedError


@dataclass
class _Seen:
    """One trial as the sampler sees it."""

    number: int
    state: TrialState
    params: dict[str, Any]
    signature: str | None
    feasible: bool | None  # None: not finished, or stopped before training
    latency_ms: float | None
    proposal: str | None
    move: dict[str, Any] | None = None  # an ascent step: {"var", "type", "rate", "jump", "down"}
    # stopped by the rungs' promotion rule (its predicted score was beyond the budget, or it
    # could not reach the front): the sampler takes it as over budget
    rung_stop: bool = False


class PruningSampler(BaseSampler):
    """The uniform and effective ladders, the latency ascent, then local steps alternating
    with ``base`` (see the module docstring).

    Args:
        space: The study's search space.
        probe: Signatures, MACs and measured latency of configurations.
        base: The sampler of the exploration phase (TPE, NSGA-II, random).
        seed: Seeds local steps and the mutations of repeated proposals.
        min_gain: The relative latency cut a move must measure to be tried.
        screen: How many candidate moves are measured at a time.
        ladder: Run the ladders (phase 1).
        ascent: Run the latency ascent (phase 2).

    Example:
        >>> sampler = PruningSampler(space, ConfigProbe(...), base=optuna.samplers.TPESampler(seed=0))  # doctest: +SKIP
        >>> study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)  # doctest: +SKIP
    """

    def __init__(self, space: SearchSpace, probe: Probe, *, base: BaseSampler, seed: int | None = None,
                 min_gain: float = MIN_GAIN, screen: int = SCREEN, ladder: bool = True, ascent: bool = True,
                 guided: bool | None = None, direction: str = "maximize") -> None:
        self.space = space
        self.probe = probe
        self.base = base
        self.min_gain = min_gain
        self.screen = screen
        self.use_ladder = ladder
        self.use_ascent = ascent
        # the guided ladder needs the screen rung's score of a configuration from the probe
        self.use_guided = (getattr(probe, "screener", None) is not None) if guided is None else guided
        self.sign = 1.0 if direction == "maximize" else -1.0
        self._rng = np.random.RandomState(seed)
        self._dists = space.distributions()
        self._sigs: dict[tuple, str] = {}
        self._relative_ms: dict[tuple[str, str], float] = {}  # (incumbent, candidate) -> latency ratio
        self._fastest_of: dict[tuple[str, ...], int] = {}  # the few fastest feasible -> which one timed fastest
        self.primary = _primary_type(space)

    # -- Optuna's sampler interface ------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        seen = self._seen(study, trial.number)
        if self.use_ladder:
            params = self._ladder_step(seen, self.ladder())
            if params is not None:
                return self._claim(study, trial, params, UNIFORM)
            effective = self.effective(study)
            if 0 < len(effective) < len(self.space.variables):
                params = self._ladder_step(seen, self.ladder(effective))
                if params is not None:
                    return self._claim(study, trial, params, EFFECTIVE)
            if self.use_guided:
                params = self._ladder_step(seen, self.guided(study, seen))
                if params is not None:
                    return self._claim(study, trial, params, GUIDED)
        step = self._ascent_step(seen)
        if step is not None:
            return self._claim(study, trial, step[0], ASCENT, step[1])
        # past the ascent, every other trial looks near the incumbent for something faster
        explored = sum(1 for s in seen if s.proposal in (LOCAL, EXPLORE, MUTATE))
        if explored % 2 == 0:
            params = self._local_step(seen)
            if params is not None:
                return self._claim(study, trial, params, LOCAL)
        params, origin = self._explore(study, trial, seen)
        return self._claim(study, trial, params, origin)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:  # noqa: ANN401
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()

    # -- configurations ----------------------------------------------------------------
    def signature(self, params: dict[str, Any]) -> str:
        key = tuple(sorted(params.items()))
        if key not in self._sigs:
            self._sigs[key] = self.probe.signature(self.space.targets_from_params(params))
        return self._sigs[key]

    def _targets(self, params: dict[str, Any]) -> dict[str, LayerTarget]:
        return self.space.targets_from_params(params)

    def _claim(self, study: optuna.Study, trial: FrozenTrial, params: dict[str, Any], origin: str,
               move: dict[str, Any] | None = None) -> dict[str, Any]:
        """Mark the trial with its proposal (so that other workers see it as taken) and return it."""
        attrs = {PROPOSAL_ATTR: origin, SIGNATURE_ATTR: self.signature(params)}
        SlotStorage.mark(study, trial, attrs if move is None else {**attrs, MOVE_ATTR: move})
        return params

    def _seen(self, study: optuna.Study, current: int) -> list[_Seen]:
        out = []
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        for t in study.get_trials(deepcopy=False, states=states):
            if t.number == current:
                continue
            measured = t.user_attrs.get(TRIAL_ATTR, {})
            sig = t.user_attrs.get(SIGNATURE_ATTR)
            if sig is None and set(self._dists) <= set(t.params):
                sig = self.signature({k: t.params[k] for k in self._dists})
            feasible = None
            if t.state == TrialState.COMPLETE and measured.get("repeat_of") is None:
                feasible = bool(measured.get("feasible"))
            out.append(_Seen(t.number, t.state, dict(t.params), sig, feasible, measured.get("latency_ms"),
                             t.user_attrs.get(PROPOSAL_ATTR), t.user_attrs.get(MOVE_ATTR),
                             rung_stop=t.state == TrialState.PRUNED and measured.get("stopped_at") is not None))
        return out

    # -- phase 1: the uniform ladders ------------------------------------------------------
    def ladder(self, variables: list[Variable] | None = None) -> list[tuple[float, dict[str, Any], str]]:
        """Configurations with the primary type at one rate on ``variables`` (default: every
        variable offering it) and the lightest choice elsewhere (dense where offered), lowest
        rate first, one per signature."""
        if self.primary is None:
            return []
        offering = [v for v in (variables if variables is not None else self.space.variables)
                    if self.primary in v.types]
        rates = sorted({r for v in offering for r in self.space.rates(v)})
        out, taken = [], {"dense"}
        for r in rates:
            params = self.space.params_of({v.name: (self.primary, r) for v in offering})
            sig = self.signature(params)
            if sig not in taken:
                taken.add(sig)
                out.append((r, params, sig))
        return out

    def latency_gains(self, study: optuna.Study) -> dict[str, float]:
        """Per variable, the fraction of the dense latency that pruning it alone (the primary
        type at its highest rate) saves, timed once side by side with the lightest configuration
        (dense, where the space offers it) and stored on the study (``autoprune.latency_gains``) for every worker."""
        stored = study.user_attrs.get(GAINS_ATTR)
        if stored is not None:
            return {k: float(v) for k, v in stored.items()}
        offering = [v for v in self.space.variables if self.primary in v.types] if self.primary else []
        if not offering:
            return {}
        configs = [self._targets(self.space.params_of({}))] + [self._targets(self.space.params_of({v.name: (self.primary, self.space.rates(v)[-1])}))
                          for v in offering]
        stats = self.probe.compare(configs, rounds=SCREEN_ROUNDS)
        gains = {v.name: 1.0 - float(st.median) for v, st in zip(offering, stats[1:])}
        with contextlib.suppress(Exception):  # another worker stored them first: either is fine
            study.set_user_attr(GAINS_ATTR, gains)
        return gains

    def effective(self, study: optuna.Study) -> list[Variable]:
        """The variables whose pruning measurably saves time: a gain of at least 1% of the dense
        latency and a fifth of the largest gain. Pruning the others costs accuracy for nothing
        (a conv whose channels all fit in one of the device's channel blocks, for instance)."""
        gains = self.latency_gains(study)
        if not gains:
            return []
        floor = max(EFFECTIVE_GAIN, 0.2 * max(gains.values()))
        return [v for v in self.space.variables if gains.get(v.name, 0.0) >= floor]

    def _ladder_step(self, seen: list[_Seen], rungs: list[tuple[float, dict[str, Any], str]]) -> dict[str, Any] | None:
        """Bisection over ``rungs`` for the highest rung within the budget (assuming a rung
        keeps the budget when a higher one does)."""
        by_sig: dict[str, _Seen] = {}
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

    # -- phase 1b: the guided ladder ------------------------------------------------------------
    def guided(self, study: optuna.Study, seen: list[_Seen]) -> list[tuple[float, dict[str, Any], str]]:
        """Configurations that push the variables pruning buys most time for least damage to the
        top rate, one more at a time, from the fastest configuration within the budget the
        ladders found (the *base*).

        Each variable's pruning to the top rate is measured once from the base, without
        training: its latency beside the base (side by side, on the device) and its screen
        score (hard prune, BatchNorm recomputed; :mod:`autoprune.search.rungs`). Variables
        are ordered by latency saved per point of screen score lost (sensitivity analysis,
        weighed by measured time); rung ``k`` of this ladder has the first ``k`` at the top
        rate. Stored on the study (``autoprune.guide``) for every worker; what the screens
        cost is added to the study's epochs (``autoprune.sampler_epochs``)."""
        if self.primary is None:
            return []
        stored = study.user_attrs.get(GUIDE_ATTR)
        if stored is None:
            stored = self._measure_guide(study, seen)
            if stored is None:
                return []
        base = dict(stored["params"])
        choices = dict(self.space.choices_of(base))
        by_name = {v.name: v for v in self.space.variables}
        useful = [(n, d) for n, d in stored["variables"].items() if d["gain"] > 0 and n in by_name]
        order = sorted(useful, key=lambda nd: (-nd[1]["gain"] / max(nd[1]["drop"], 1e-3), nd[0]))
        out, taken = [], {self.signature(base)}
        for k, (name, _) in enumerate(order, start=1):
            choices[name] = (self.primary, self.space.rates(by_name[name])[-1])
            params = self.space.params_of(choices)
            sig = self.signature(params)
            if sig not in taken:
                taken.add(sig)
                out.append((float(k), params, sig))
        return out

    def _measure_guide(self, study: optuna.Study, seen: list[_Seen]) -> dict[str, Any] | None:
        """Each variable's top-rate pruning from the base: latency gain and screen damage."""
        if any(s.state == TrialState.RUNNING and s.proposal in (UNIFORM, EFFECTIVE) for s in seen):
            return None  # the ladders' last results decide the base
        inc = self.incumbent(seen)
        if inc is None:
            return None
        base = {k: inc.params[k] for k in self._dists}
        base_sig = self.signature(base)
        if base_sig == "dense":
            return None
        choices = self.space.choices_of(base)
        cands = []
        for var in self.space.variables:
            if self.primary not in var.types:
                continue
            top = self.space.rates(var)[-1]
            params = self.space.params_of({**choices, var.name: (self.primary, top)})
            if self.signature(params) != base_sig:
                cands.append((var.name, params))
        if not cands:
            return None
        stats = self.probe.compare([self._targets(base)] + [self._targets(p) for _, p in cands], rounds=SCREEN_ROUNDS)
        base_score, spent = self.probe.screen(self._targets(base))
        variables = {}
        for (name, params), st in zip(cands, stats[1:]):
            score, cost = self.probe.screen(self._targets(params))
            spent += cost
            variables[name] = {"gain": 1.0 - float(st.median), "drop": max(self.sign * (base_score - score), 0.0),
                               "screen": score}
        stored = {"base": inc.number, "params": base, "screen": base_score, "variables": variables}
        with contextlib.suppress(Exception):  # another worker stored its own first: either is fine
            if study.user_attrs.get(GUIDE_ATTR) is None:
                study.set_user_attr(GUIDE_ATTR, stored)
                study.set_user_attr(SAMPLER_EPOCHS_ATTR,
                                    float(study.user_attrs.get(SAMPLER_EPOCHS_ATTR) or 0.0) + spent)
        return study.user_attrs.get(GUIDE_ATTR) or stored

    # -- phase 2: the latency ascent ----------------------------------------------------------
    def incumbent(self, seen: list[_Seen]) -> _Seen | None:
        """The fastest finished trial within the budget (the dense one counts).

        The figures of separate trials are separate timings, and the fastest of many noisy
        timings is biased toward a lucky draw; so the few fastest are timed again side by
        side (once per set) and the fastest of that timing is the incumbent."""
        done = sorted((s for s in seen if s.feasible and s.latency_ms is not None
                       and set(self._dists) <= set(s.params)), key=lambda s: (s.latency_ms, s.number))
        top = done[:INCUMBENT_CHECK]
        if len(top) <= 1:
            return top[0] if top else None
        key = tuple(s.signature or "" for s in top)
        if key not in self._fastest_of:
            stats = self.probe.compare([self._targets({k: s.params[k] for k in self._dists}) for s in top],
                                       rounds=SCREEN_ROUNDS)
            self._fastest_of[key] = min(range(len(top)), key=lambda i: (float(stats[i].median), i))
        return top[self._fastest_of[key]]

    def _history(self, seen: list[_Seen]) -> tuple[dict[tuple[str, str], float], dict[str, int]]:
        """From the finished ascent steps: per (variable, type) the lowest rate at which moving that
        variable alone broke the budget (it is not tried at or above it again: a configuration
        only gets more pruned along the ascent, so the damage only grows), and per variable the
        grid steps of its last move that kept the budget (the next move on it jumps twice as far)."""
        failed: dict[tuple[str, str], float] = {}
        jump: dict[str, int] = {}
        for s in sorted(seen, key=lambda s: s.number):
            m = s.move
            if not m or not (s.state == TrialState.COMPLETE or s.rung_stop) or m.get("down"):
                continue
            key = (m["var"], m["type"])
            if s.feasible and not s.rung_stop:
                jump[m["var"]] = int(m.get("jump", 1))
            elif m.get("rate") is not None:
                failed[key] = min(failed.get(key, 2.0), float(m["rate"]))
        return failed, jump

    def moves(self, params: dict[str, Any], failed: dict[tuple[str, str], float] | None = None,
              jump: dict[str, int] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Harder neighbours of a configuration, one variable changed each, with their move records:
        the variable's type at a higher rate (``jump`` grid steps: twice its last successful step,
        at least one; once a rate failed, halfway between the current one and it; always a rate
        that changes the signature),
        and each other type at the variable's rate (from dense: at its lowest rate)."""
        failed, jump = failed or {}, jump or {}
        base_sig = self.signature(params)
        choices = self.space.choices_of(params)
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for var in self.space.variables:
            kind, rate = choices[var.name]
            rates = self.space.rates(var)
            if kind != NONE_TYPE and has_rate(kind):
                limit = failed.get((var.name, kind), 2.0)
                higher = [r for r in rates if rate + 1e-9 < r < limit - 1e-9]
                changing = [r for r in higher
                            if self.signature(self.space.params_of({**choices, var.name: (kind, r)})) != base_sig]
                if changing:
                    if (var.name, kind) in failed:  # bisect between here and the rate that failed
                        pick = changing[(len(changing) - 1) // 2]
                    else:
                        want = 2 * jump.get(var.name, 0) or 1
                        pick = changing[min(want, len(changing)) - 1]
                    new = self.space.params_of({**choices, var.name: (kind, pick)})
                    out.append((new, {"var": var.name, "type": kind, "rate": pick, "jump": changing.index(pick) + 1}))
            for other in var.types:
                if other in (NONE_TYPE, kind):
                    continue
                r = rate if rate is not None and has_rate(other) else (rates[0] if has_rate(other) else None)
                if r is not None and r >= failed.get((var.name, other), 2.0) - 1e-9:
                    continue
                new = self.space.params_of({**choices, var.name: (other, r)})
                if self.signature(new) != base_sig:
                    out.append((new, {"var": var.name, "type": other, "rate": r, "jump": 1}))
        return out

    def trades(self, params: dict[str, Any], failed: dict[tuple[str, str], float],
               jump: dict[str, int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Two-variable moves for when no single move is left: one variable steps one rate down
        (or to dense from its lowest rate) and another moves up, trading accuracy between layers
        of different sensitivity. Measured latency decides whether a trade is worth a trial: one
        that lowers a layer which costs little time and raises one that costs much comes first."""
        choices = self.space.choices_of(params)
        out = []
        for var in self.space.variables:
            kind, rate = choices[var.name]
            if kind == NONE_TYPE:
                continue
            lower = [r for r in self.space.rates(var) if rate is not None and r < rate - 1e-9]
            down = (kind, lower[-1]) if lower else (NONE_TYPE, None)
            if down[0] == NONE_TYPE and NONE_TYPE not in var.types:
                continue
            eased = self.space.params_of({**choices, var.name: down})
            # the rates that failed did so with this variable higher: one step up is open again
            for new, move in self.moves(eased):
                if move["var"] != var.name:
                    out.append((new, {**move, "down": var.name}))
        return out

    def _ascent_step(self, seen: list[_Seen]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if not self.use_ascent:
            return None
        inc = self.incumbent(seen)
        if inc is None:
            return None
        inc_params = {k: inc.params[k] for k in self._dists}
        inc_sig = self.signature(inc_params)
        taken = {s.signature for s in seen}
        failed, jump = self._history(seen)
        for make in (self.moves, self.trades):
            cands = [(p, m) for p, m in make(inc_params, failed, jump) if self.signature(p) not in taken]
            cands.sort(key=lambda pm: self.probe.macs(self._targets(pm[0])))
            for start in range(0, len(cands), self.screen):
                batch = cands[start:start + self.screen]
                ratios = self._relative(inc_params, inc_sig, [p for p, _ in batch])
                good = [(r, i) for i, r in enumerate(ratios) if r <= 1.0 - self.min_gain]
                if good:
                    return batch[min(good)[1]]
        return None

    def _relative(self, inc_params: dict[str, Any], inc_sig: str, batch: list[dict[str, Any]]) -> list[float]:
        """Each candidate's latency over the incumbent's, timed beside it (remembered per pair:
        the incumbent's own earlier figure may be a lucky draw, so it is timed again with them)."""
        todo = [p for p in batch if (inc_sig, self.signature(p)) not in self._relative_ms]
        if todo:
            stats = self.probe.compare([self._targets(inc_params)] + [self._targets(p) for p in todo],
                                       rounds=SCREEN_ROUNDS)
            for p, st in zip(todo, stats[1:]):
                self._relative_ms[(inc_sig, self.signature(p))] = float(st.median)
        return [self._relative_ms[(inc_sig, self.signature(p))] for p in batch]

    # -- phase 3: exploration ---------------------------------------------------------------
    def _local_step(self, seen: list[_Seen]) -> dict[str, Any] | None:
        """A random neighbour of the incumbent that measures faster than it: two or three
        variables each moved one or two rates (or to another type), at least one of them up.
        Where the ascent moves one variable at a time, this finds faster configurations that
        need several layers to change together."""
        inc = self.incumbent(seen)
        if inc is None:
            return None
        inc_params = {k: inc.params[k] for k in self._dists}
        inc_sig = self.signature(inc_params)
        taken = {s.signature for s in seen} | {inc_sig}
        cands, sigs = [], set()
        for _ in range(LOCAL_DRAWS * 4):
            p = self._neighbour(inc_params)
            sig = self.signature(p)
            if sig not in taken and sig not in sigs:
                cands.append(p)
                sigs.add(sig)
            if len(cands) >= LOCAL_DRAWS:
                break
        cands.sort(key=lambda p: self.probe.macs(self._targets(p)))
        for start in range(0, len(cands), self.screen):
            batch = cands[start:start + self.screen]
            ratios = self._relative(inc_params, inc_sig, batch)
            good = [(r, i) for i, r in enumerate(ratios) if r <= 1.0 - self.min_gain]
            if good:
                return batch[min(good)[1]]
        return None

    def _neighbour(self, params: dict[str, Any]) -> dict[str, Any]:
        choices = dict(self.space.choices_of(params))
        n = min(len(self.space.variables), 2 + self._rng.randint(2))
        picked = self._rng.choice(len(self.space.variables), size=n, replace=False)
        for j, idx in enumerate(picked):
            var = self.space.variables[int(idx)]
            kind, rate = choices[var.name]
            rates = self.space.rates(var)
            up = j == 0 or self._rng.rand() < 0.5
            if kind == NONE_TYPE or not has_rate(kind) or self._rng.rand() < 0.15:
                other = [t for t in var.types if t != kind]
                if not other:
                    continue
                kind = other[self._rng.randint(len(other))]
                rate = rates[self._rng.randint(len(rates))] if has_rate(kind) else None
            else:
                i = min(range(len(rates)), key=lambda k: abs(rates[k] - rate))
                step = 1 + self._rng.randint(2)
                rate = rates[max(0, min(len(rates) - 1, i + (step if up else -step)))]
            choices[var.name] = (kind, rate)
        return self.space.params_of(choices)

    def _explore(self, study: optuna.Study, trial: FrozenTrial, seen: list[_Seen]) -> tuple[dict[str, Any], str]:
        taken = {s.signature for s in seen}
        params: dict[str, Any] = {}
        for _ in range(RESAMPLE):
            params = self._from_base(study, trial)
            if self.signature(params) not in taken:
                return params, EXPLORE
        inc = self.incumbent(seen)
        start = {k: inc.params[k] for k in self._dists} if inc is not None else params
        for _ in range(100):
            mutated = self._mutate(start)
            if self.signature(mutated) not in taken:
                return mutated, MUTATE
        return params, EXPLORE  # the space is exhausted: the trial will reuse an earlier result

    def _from_base(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        space = self.base.infer_relative_search_space(study, trial)
        params = dict(self.base.sample_relative(study, trial, space)) if space else {}
        for name, dist in self._dists.items():
            if name not in params or not dist._contains(dist.to_internal_repr(params[name])):
                params[name] = self.base.sample_independent(study, trial, name, dist)
        return {k: params[k] for k in self._dists}

    def _mutate(self, params: dict[str, Any]) -> dict[str, Any]:
        choices = self.space.choices_of(params)
        var = self.space.variables[self._rng.randint(len(self.space.variables))]
        kind = var.types[self._rng.randint(len(var.types))]
        rates = self.space.rates(var)
        rate = rates[self._rng.randint(len(rates))] if has_rate(kind) else None
        return self.space.params_of({**choices, var.name: (kind, rate)})


def _primary_type(space: SearchSpace) -> str | None:
    """``filter`` where any variable offers it (channel removal is what runs faster on every
    device), else the most offered type with a rate."""
    offered = [t for v in space.variables for t in v.types if t != NONE_TYPE and has_rate(t)]
    if not offered:
        return None
    return "filter" if "filter" in offered else max(set(offered), key=offered.count)

