"""A study's trials in a few characters: the labels the figures and the HTML report share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autoprune.config import NONE_TYPE, LayerTarget
from autoprune.study.records import TrialRecord

__all__ = [
    "TYPE_ABBREVIATIONS",
    "final_speedup_label",
    "layer_removed_fraction",
    "layer_targets",
    "layers_text",
    "number",
    "speedup_label",
    "type_label",
]

TYPE_ABBREVIATIONS = {
    "none": "–",
    "filter": "F",
    "channel": "C",
    "shape": "S",
    "irregular": "I",
    "filter+shape": "F+S",
}


def layer_removed_fraction(target: LayerTarget | Mapping[str, Any]) -> float:
    """The fraction of a layer's weights a target (or its stored ``{type, rate}``) removes:
    its rate, 0 for ``none``, ``1 - N/M`` for an ``N:M`` type (``2:4`` removes half); 0 for
    anything else (:attr:`~autoprune.config.LayerTarget.removed_fraction`)."""
    removed = _target(target).removed_fraction
    return 0.0 if removed is None else float(removed)


def type_label(target: LayerTarget | Mapping[str, Any]) -> str:
    """``F 50%``, ``2:4``, ``–`` — a layer target in a few characters."""
    t = _target(target)
    abbr = TYPE_ABBREVIATIONS.get(t.type, t.type)
    if t.type == NONE_TYPE or t.rate is None:
        return abbr
    return f"{abbr} {round(100 * float(t.rate))}%"


def _target(target: LayerTarget | Mapping[str, Any]) -> LayerTarget:
    return target if isinstance(target, LayerTarget) else LayerTarget.from_dict(target)


def layer_targets(trial: TrialRecord) -> dict[str, LayerTarget]:
    """A trial's targets by layer, as :class:`~autoprune.config.LayerTarget` (the study stores
    them as ``{type, rate}``)."""
    return {name: LayerTarget.from_dict(t) for name, t in trial.targets.items()}


def number(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` in format ``spec`` with ``suffix``; ``–`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def speedup_label(trial: TrialRecord) -> str:
    """``2.31×``, or ``–``."""
    return number(trial.speedup, ".2f", "×")


def final_speedup_label(trial: TrialRecord) -> str:
    """The re-measured speedup with its spread where there is one, else the search's figure."""
    r = trial.remeasured
    if not r:
        return speedup_label(trial)
    return (f"{r['speedup']:.2f}× (re-measured side by side, {r['speedup_p10']:.2f}–{r['speedup_p90']:.2f}× over "
            f"{int(r['rounds'])} rounds; {speedup_label(trial)} in the search)")


def layers_text(trial: TrialRecord, sep: str = ", ") -> str:
    """``features.0 F 50%, features.3 F 90%`` — every pruned layer with its target."""
    if trial.is_dense or not trial.targets:
        return "dense"
    return sep.join(f"{name} {type_label(t)}" for name, t in layer_targets(trial).items())
