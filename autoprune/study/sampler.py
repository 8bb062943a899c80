"""The search's sampler: whole configurations proposed by phases, from the budget's edge out.

A per-layer space is large (every variable a type and a rate) and a trial is expensive (it
trains, however briefly). Sampled blindly, most of a small trial budget lands on
configurations that are slow, over budget or already run; on held-out data a 20-trial TPE
search found 1.11× where pruning every layer at one rate found 1.48×. :class:`PruningSampler`
asks its phases (:mod:`autoprune.study.phases`, one file each) in order for each trial's
whole configuration, each deciding from the study's finished and running trials only (so any
number of workers can share one study):

1. the **uniform** and **effective** ladders (:mod:`~autoprune.study.phases.ladders`): one
   rate on every (time-saving) variable, by bisection, to the budget's edge — what a user
   would hand-tune, so the search starts from it;
2. the **guided** ladder (:mod:`~autoprune.study.phases.guided`, where trials climb rungs):
   each variable's pruning to the top rate measured once without training, variables
   ordered by time saved per point of screen score lost, bisection over how many go;
3. the latency **ascent** (:mod:`~autoprune.study.phases.ascent`): one variable at a time one
   step harder, candidates timed beside the incumbent before any training;
4. **local** steps (:mod:`~autoprune.study.phases.local`) alternating with **exploration**
   (:mod:`~autoprune.study.phases.explore`: Optuna's sampler, TPE by default).

The phase that proposed a trial is stored in its ``autoprune.proposal`` user attribute
(:class:`~autoprune.study.phases.Proposal`). The sampler itself keeps what the phases share:
signatures, the incumbent (the fastest trial within the budget, re-timed side by side among
the few fastest), and candidates' latency relative to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from autoprune.config import NONE_TYPE, LayerTarget
from autoprune.study.phases import Phase, Proposal, default_phases
from autoprune.study.phases.ascent import MOVE_ATTR
from autoprune.study.phases.guided import GUIDE_ATTR
from autoprune.study.phases.ladders import EFFECTIVE_GAIN, GAINS_ATTR
from autoprune.study.records import PROPOSAL_ATTR, SIGNATURE_ATTR, TRIAL_ATTR
from autoprune.study.slots import SlotStorage
from autoprune.study.space import SearchSpace, has_rate

__all__ = ["ASCENT", "EFFECTIVE", "EFFECTIVE_GAIN", "EXPLORE", "GAINS_ATTR", "GUIDED", "GUIDE_ATTR", "LOCAL",
           "MIN_GAIN", "MOVE_ATTR", "MUTATE", "UNIFORM", "Probe", "PruningSampler", "Seen"]

# the phases' names, as stored (kept here for callers that import them from the sampler)
UNIFORM, EFFECTIVE, GUIDED, ASCENT, LOCAL, EXPLORE, MUTATE = (
    Proposal.UNIFORM, Proposal.EFFECTIVE, Proposal.GUIDED, Proposal.ASCENT, Proposal.LOCAL, Proposal.EXPLORE,
    Proposal.MUTATE)
MIN_GAIN = 0.02  # a move must cut the incumbent's latency by at least 2% to be worth a trial
SCREEN = 4  # candidate moves measured at a time, most MACs removed first
SCREEN_ROUNDS = 20  # interleaved rounds (of three calls) when candidates are timed beside the incumbent
INCUMBENT_CHECK = 3  # the fastest feasible trials timed again side by side to pick the incumbent


class Probe:
    """What the sampler needs to know of a configuration without training it.

    The search's :class:`~autoprune.study.probe.ConfigProbe` implements it on the device;
    tests pass small fakes.
    """

    screener: Any = None  # set where the probe can score a configuration at the screen rung

    def signature(self, targets: dict[str, LayerTarget]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def macs(self, targets: dict[str, LayerTarget]) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def compare(self, configs: list[dict[str, LayerTarget]], *, rounds: int | None = None) -> list[Any]:  # pragma: no cover
        """Latency of each configuration relative to the first (objects with a ``median``),
        timed side by side on the device in ``rounds`` interleaved rounds."""
        raise NotImplementedError

    def screen(self, targets: dict[str, LayerTarget]) -> tuple[float, float]:  # pragma: no cover - interface
        """The screen rung's score of a configuration (no training) and its cost in epochs."""
        raise NotImplementedError


@dataclass
class Seen:
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
    """Whole configurations from its phases (see the module docstring), the first that proposes.

    Args:
        space: The study's search space.
        probe: Signatures, MACs, measured latency and (for the guided ladder) screen scores.
        base: The sampler of the exploration phase (TPE, NSGA-II, random).
        seed: Seeds local steps and the mutations of repeated proposals.
        min_gain: The relative latency cut a move must measure to be tried.
        screen: How many candidate moves are measured at a time.
        ladder: Run the ladders.
        ascent: Run the latency ascent.
        guided: Run the guided ladder (default: where the probe can screen).
        direction: The metric's direction (a screen score's damage is measured along it).
        phases: The phases to ask, in order (default: :func:`~autoprune.study.phases.default_phases`).

    Example:
        >>> sampler = PruningSampler(space, ConfigProbe(...), base=optuna.samplers.TPESampler(seed=0))  # doctest: +SKIP
        >>> study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)  # doctest: +SKIP
    """

    def __init__(self, space: SearchSpace, probe: Probe, *, base: BaseSampler, seed: int | None = None,
                 min_gain: float = MIN_GAIN, screen: int = SCREEN, ladder: bool = True, ascent: bool = True,
                 guided: bool | None = None, direction: str = "maximize", phases: list[Phase] | None = None) -> None:
        self.space = space
        self.probe = probe
        self.base = base
        self.min_gain = min_gain
        self.screen = screen
        # the guided ladder needs the screen rung's score of a configuration from the probe
        self.use_guided = (getattr(probe, "screener", None) is not None) if guided is None else guided
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.phases = phases if phases is not None else default_phases(ladder=ladder, guided=self.use_guided,
                                                                       ascent=ascent)
        self.rng = np.random.RandomState(seed)
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
        for phase in self.phases:
            proposed = phase.propose(self, study, trial, seen)
            if proposed is not None:
                return self._claim(study, trial, proposed.params, proposed.origin, proposed.move)
        raise RuntimeError("no phase proposed a configuration (the last phase must always propose)")

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
        self.rng.seed()

    # -- what the phases share ----------------------------------------------------------
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
        attrs = {PROPOSAL_ATTR: str(origin), SIGNATURE_ATTR: self.signature(params)}
        SlotStorage.mark(study, trial, attrs if move is None else {**attrs, MOVE_ATTR: move})
        return params

    def _seen(self, study: optuna.Study, current: int) -> list[Seen]:
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
            out.append(Seen(t.number, t.state, dict(t.params), sig, feasible, measured.get("latency_ms"),
                             t.user_attrs.get(PROPOSAL_ATTR), t.user_attrs.get(MOVE_ATTR),
                             rung_stop=t.state == TrialState.PRUNED and measured.get("stopped_at") is not None))
        return out

    def incumbent(self, seen: list[Seen]) -> Seen | None:
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

    def relative(self, inc_params: dict[str, Any], inc_sig: str, batch: list[dict[str, Any]]) -> list[float]:
        """Each candidate's latency over the incumbent's, timed beside it (remembered per pair:
        the incumbent's own earlier figure may be a lucky draw, so it is timed again with them)."""
        todo = [p for p in batch if (inc_sig, self.signature(p)) not in self._relative_ms]
        if todo:
            stats = self.probe.compare([self._targets(inc_params)] + [self._targets(p) for p in todo],
                                       rounds=SCREEN_ROUNDS)
            for p, st in zip(todo, stats[1:]):
                self._relative_ms[(inc_sig, self.signature(p))] = float(st.median)
        return [self._relative_ms[(inc_sig, self.signature(p))] for p in batch]


def _primary_type(space: SearchSpace) -> str | None:
    """``filter`` where any variable offers it (channel removal is what runs faster on every
    device), else the most offered type with a rate."""
    offered = [t for v in space.variables for t in v.types if t != NONE_TYPE and has_rate(t)]
    if not offered:
        return None
    return "filter" if "filter" in offered else max(set(offered), key=offered.count)
