"""The sampler's phases: each proposes a whole configuration from the study's trials, or passes.

:class:`~autoprune.study.sampler.PruningSampler` asks its phases in order, and the first
that proposes something gives the trial its configuration; the phase's name is stored as the
trial's proposal (``autoprune.proposal``). One phase per file, one small interface
(:class:`Phase`), one enum of the names (:class:`Proposal`) that the records, the
re-measurement, the figures and the trial lines use.

* :mod:`.ladders` — the uniform and the effective ladder (bisection over one rate);
* :mod:`.guided` — the guided ladder (sensitivity measured without training);
* :mod:`.ascent` — the latency ascent (one variable harder per trial, NetAdapt-style);
* :mod:`.local` — random neighbours of the incumbent, screened by latency;
* :mod:`.explore` — Optuna's own sampler, and mutations of repeated proposals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from autoprune.study.sampler import PruningSampler, Seen

__all__ = ["Phase", "Proposal", "Proposed", "default_phases"]


class Proposal(str, enum.Enum):
    """Which phase proposed a trial (stored as its plain string value)."""

    UNIFORM = "uniform"
    EFFECTIVE = "effective"
    GUIDED = "guided"
    ASCENT = "ascent"
    LOCAL = "local"
    EXPLORE = "explore"
    MUTATE = "mutate"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Proposed:
    """A phase's proposal: the parameters, which phase (or how: ``mutate``), an ascent's move."""

    params: dict[str, Any]
    origin: Proposal
    move: dict[str, Any] | None = None


class Phase:
    """One way of proposing configurations.

    ``propose`` reads the study's trials as the sampler sees them (``seen``: finished and
    running, this trial left out) and returns a :class:`Proposed`, or None to let the next
    phase propose. It may measure (latency, screens) through ``sampler.probe``; what it
    learns that other workers need goes on the study's user attributes.
    """

    name: Proposal

    def propose(self, sampler: PruningSampler, study: optuna.Study, trial: FrozenTrial,
                seen: list[Seen]) -> Proposed | None:  # pragma: no cover - interface
        raise NotImplementedError


def default_phases(*, ladder: bool = True, guided: bool = True, ascent: bool = True) -> list[Phase]:
    """The phases in the order the sampler asks them."""
    from autoprune.study.phases.ascent import Ascent
    from autoprune.study.phases.explore import Explore
    from autoprune.study.phases.guided import GuidedLadder
    from autoprune.study.phases.ladders import EffectiveLadder, UniformLadder
    from autoprune.study.phases.local import LocalStep

    phases: list[Phase] = []
    if ladder:
        phases += [UniformLadder(), EffectiveLadder()] + ([GuidedLadder()] if guided else [])
    if ascent:
        phases.append(Ascent())
    return phases + [LocalStep(), Explore()]
