"""A study's trials in a few characters: the labels the figures and the HTML report share."""

from __future__ import annotations

import math
from typing import Any

from autoprune.config import LayerTarget
from autoprune.search.records import TrialRecord

__all__ = [
    "TYPE_ABBREVIATIONS",
    "final_speedup_label",
    "layer_removed_fraction",
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


def layer_removed_fraction(target: dict[str, Any]) -> float:
    """The fraction of a layer's weights a target removes: its rate, 0 for ``none``,
    ``1 - N/M`` for an ``N:M`` type (``2:4`` removes half); 0 for anything else."""
    removed = LayerTarget(str(target.get("type", "none")), target.get("rate")).removed_fraction
    return 0.0 if removed is None else float(removed)


def type_label(target: dict[str, Any]) -> str:
    """``F 50%``, ``2:4``, ``–`` — a layer target in a few characters."""
    kind = str(target.get("type", "none"))
    abbr = TYPE_ABBREVIATIONS.get(kind, kind)
    rate = target.get("rate")
    if kind == "none" or rate is None:
        return abbr
    return f"{abbr} {round(100 * float(rate))}%"


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
    return sep.join(f"{name} {type_label(t)}" for name, t in trial.targets.items())
