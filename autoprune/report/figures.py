"""Plotly figures of a study: the accuracy–latency front, the per-layer targets, the
parameter importances.

Everything here reads the plain records of :mod:`autoprune.study.records`; only
:func:`param_importances` and :func:`importance_figure` touch an Optuna study.

- :func:`pareto_figure`: validation accuracy (%) against measured latency (ms per batch)
  of the completed trials, the Pareto front, the dense point and the budget line.
- :func:`layer_heatmap`: the per-layer sparsity type and rate of every Pareto trial.
- :func:`importance_figure`: Optuna's parameter importances for each objective.
- :func:`write_figure_html`: one figure as a file that renders offline.
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from autoprune.atomic import atomic_path
from autoprune.config import NONE_TYPE, LayerTarget
from autoprune.report.labels import (
    layer_removed_fraction,
    layer_targets,
    layers_text,
    speedup_label,
    type_label,
)
from autoprune.study.phases import Proposal
from autoprune.study.records import StudyRecord, TrialRecord

__all__ = [
    "importance_figure",
    "layer_heatmap",
    "param_importances",
    "pareto_figure",
    "write_figure_html",
]

_FEASIBLE_COLOUR = "#1f77b4"
_INFEASIBLE_COLOUR = "#9a9a9a"
_FRONT_COLOUR = "#d62728"
_DENSE_COLOUR = "#2ca02c"
_BUDGET_COLOUR = "#ff7f0e"
_UNIFORM_COLOUR = "#8c564b"
_CHOSEN_COLOUR = "#000000"


def _layer_order(record: StudyRecord) -> list[str]:
    """Layers in model order, each once: the order of the trial naming the most layers,
    then any layer only other trials name."""
    seen: dict[str, None] = {}
    for t in sorted(record.trials, key=lambda t: -len(t.targets)):  # stable: ties keep trial order
        for name in t.targets:
            seen.setdefault(name, None)
    return list(seen)


def _trial_label(trial: TrialRecord, chosen: TrialRecord | None = None) -> str:
    tag = "dense" if trial.is_dense else f"#{trial.number}"
    if chosen is not None and trial.number == chosen.number:
        tag = f"★ {tag} chosen"
    return f"{tag} · {speedup_label(trial)}" if trial.speedup is not None else tag


# ---------------------------------------------------------------- figures


def pareto_figure(record: StudyRecord, chosen: TrialRecord | None = None) -> go.Figure:
    """Accuracy (%) against measured latency (ms) of the completed trials.

    Traces, by name: ``feasible`` and ``infeasible`` trials (styled differently),
    ``Pareto front`` (a line through the non-dominated trials, fastest first),
    ``uniform`` (the trials with one type and rate on every searched layer, joined by a
    line: the reference a per-layer search must beat), ``chosen`` (a ring around the chosen
    trial), ``dense`` (the baseline, a star) and ``budget`` (a horizontal line at the lowest
    accuracy the budget allows). A repeated configuration is drawn once. Hovering a trial
    shows its number, accuracy, latency, speedup and its per-layer targets.

    Args:
        record: The study, with ``pareto`` marked on its trials.
        chosen: The trial to ring (default: the fastest within the budget).

    Returns:
        The figure.
    """
    meta = record.meta
    done = [t for t in record.completed if t.repeat_of is None]
    chosen = chosen if chosen is not None else record.best_feasible()
    fig = go.Figure()
    k = 100.0 if meta.percent else 1.0  # accuracy in %, any other metric as it is
    unit, name = ("%", meta.metric) if meta.percent else ("", html.escape(meta.metric))

    def scatter(trials: list[TrialRecord], name: str, colour: str, symbol: str) -> None:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_ms for t in trials],
                y=[k * t.score for t in trials],
                mode="markers",
                name=name,
                marker={"color": colour, "symbol": symbol, "size": 9, "line": {"width": 1, "color": "white"}},
                customdata=[
                    [t.number, speedup_label(t), "<br>".join(html.escape(x) for x in layers_text(t, "\n").split("\n")),
                     meta.fmt_drop(t.score_drop)]
                    for t in trials
                ],
                hovertemplate=(
                    f"trial %{{customdata[0]}}<br>{name} %{{y:.4g}}{unit} (drop %{{customdata[3]}})<br>"
                    "latency %{x:.4g} ms<br>speedup %{customdata[1]}<br>%{customdata[2]}<extra></extra>"
                ),
            )
        )

    scatter([t for t in done if t.feasible], "feasible", _FEASIBLE_COLOUR, "circle")
    scatter([t for t in done if not t.feasible], "infeasible", _INFEASIBLE_COLOUR, "x")

    _reference_traces(fig, record, done, chosen, k, unit, name)
    _budget_trace(fig, record, done, k, unit, name)
    fig.update_layout(
        title=html.escape(
            f"{meta.name}: {meta.metric} vs measured latency on {meta.device_description or meta.device}"
        ),
        xaxis_title=html.escape(f"latency (ms per batch of {meta.latency_batch}, {meta.dtype}, median)"),
        yaxis_title=f"validation {name}" + (" (%)" if meta.percent else ""),
        height=520,
        legend={"orientation": "h", "y": -0.18},
        margin={"l": 60, "r": 20, "t": 60, "b": 40},
    )
    return fig


def _reference_traces(fig: go.Figure, record: StudyRecord, done: list[TrialRecord], chosen: TrialRecord | None,
                      k: float, unit: str, name: str) -> None:
    """The Pareto front's line, the uniform trials' line, the ring around the chosen trial, the dense star."""
    meta = record.meta
    front = record.front
    fig.add_trace(
        go.Scatter(
            x=[t.latency_ms for t in front],
            y=[k * t.score for t in front],
            mode="lines",
            name="Pareto front",
            line={"color": _FRONT_COLOUR, "width": 2, "dash": "dot"},
            hoverinfo="skip",
        )
    )
    uniform = sorted((t for t in done if t.proposal == Proposal.UNIFORM), key=lambda t: t.latency_ms)
    if uniform:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_ms for t in uniform],
                y=[k * t.score for t in uniform],
                mode="lines+markers",
                name="uniform (one rate on every layer)",
                line={"color": _UNIFORM_COLOUR, "width": 1.5},
                marker={"color": _UNIFORM_COLOUR, "symbol": "square", "size": 8},
                customdata=[[t.number, speedup_label(t), html.escape(t.sparsity_summary())] for t in uniform],
                hovertemplate=(f"uniform trial %{{customdata[0]}}: %{{customdata[2]}}<br>{name} %{{y:.4g}}{unit}<br>"
                               "latency %{x:.4g} ms (%{customdata[1]})<extra></extra>"),
            )
        )
    if chosen is not None and chosen.latency_ms is not None and chosen.score is not None:
        fig.add_trace(
            go.Scatter(
                x=[chosen.latency_ms],
                y=[k * chosen.score],
                mode="markers",
                name=f"chosen (trial {chosen.number})",
                marker={"color": "rgba(0,0,0,0)", "symbol": "circle", "size": 20,
                        "line": {"width": 2.5, "color": _CHOSEN_COLOUR}},
                hovertemplate=f"chosen: trial {chosen.number}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[meta.dense_latency_ms],
            y=[k * meta.dense_accuracy],
            mode="markers",
            name="dense",
            marker={
                "color": _DENSE_COLOUR,
                "symbol": "star",
                "size": 16,
                "line": {"width": 1, "color": "black"},
            },
            hovertemplate=f"dense baseline<br>{name} %{{y:.4g}}{unit}<br>latency %{{x:.4g}} ms<extra></extra>",
        )
    )


def _budget_trace(fig: go.Figure, record: StudyRecord, done: list[TrialRecord], k: float, unit: str, name: str) -> None:
    """A horizontal line at the worst metric the budget allows, across the trials' latencies."""
    meta = record.meta
    lats = [t.latency_ms for t in done] + [meta.dense_latency_ms]
    lats = [x for x in lats if x is not None and math.isfinite(x)]
    lo, hi = (min(lats), max(lats)) if lats else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5 * max(abs(hi), 1e-9)
    sign = -1.0 if meta.direction == "maximize" else 1.0
    floor = k * (meta.dense_accuracy + sign * meta.allowed_drop())
    worst = "lowest" if meta.direction == "maximize" else "highest"
    fig.add_trace(
        go.Scatter(
            x=[lo - pad, hi + pad],
            y=[floor, floor],
            mode="lines",
            name=html.escape(f"budget (drop ≤ {meta.fmt_drop(meta.allowed_drop())})"),
            line={"color": _BUDGET_COLOUR, "width": 1.5, "dash": "dash"},
            hovertemplate=f"{worst} {name} within budget: {floor:.4g}{unit}<extra></extra>",
            meta="budget",
        )
    )


def layer_heatmap(record: StudyRecord, chosen: TrialRecord | None = None) -> go.Figure:
    """Per-layer targets of the Pareto trials: one row per trial (fastest first), one
    column per layer (model order); the chosen trial (default: the fastest within the
    budget) is starred.

    A cell's colour is the fraction of the layer's weights removed (its rate; 0 for
    ``none``; ``1 - N/M`` for ``N:M``) and its text the type's abbreviation and rate
    (``F 50%``: filter, 50% removed; ``S``: shape; ``C``: channel; ``I``: irregular;
    ``–``: dense).

    Args:
        record: The study, with ``pareto`` marked on its trials.

    Returns:
        The figure (an empty one with a note when no trial completed).
    """
    front = record.front
    layers = _layer_order(record)
    chosen = chosen if chosen is not None else record.best_feasible()
    fig = go.Figure()
    if not front or not layers:
        fig.add_annotation(
            text="no completed trial yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_layout(title="per-layer sparsity of the Pareto trials", height=300)
        return fig
    z, text = [], []
    for t in front:
        row_z, row_text = [], []
        targets = layer_targets(t)
        for name in layers:
            target = targets.get(name, LayerTarget(NONE_TYPE))  # a layer a trial leaves out stays dense
            row_z.append(layer_removed_fraction(target))
            row_text.append(html.escape(type_label(target)))
        z.append(row_z)
        text.append(row_text)
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=[html.escape(n) for n in layers],
            y=[_trial_label(t, chosen) for t in front],
            text=text,
            texttemplate="%{text}",
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar={"title": {"text": "removed"}, "tickformat": ".0%"},
            hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    fig.update_layout(
        title="per-layer sparsity of the Pareto trials (fastest first)",
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category", "tickangle": -45},
        height=max(320, 36 * len(front) + 200),
        margin={"l": 110, "r": 20, "t": 60, "b": 120},
    )
    return fig


def param_importances(study: Any, record: StudyRecord | None = None) -> dict[str, dict[str, float]]:
    """Optuna's parameter importances for each objective of ``study``.

    Optuna 5's default evaluator (PED-ANOVA) measures what it takes to get a *low*
    target, so maximized objectives are negated.

    Args:
        study: An ``optuna.Study``.
        record: Supplies the objectives' names (``meta.objectives``); optional.

    Returns:
        ``{objective name: {param: importance}}``, importances normalized to sum to 1.

    Raises:
        ValueError: Fewer than two completed trials.
        Exception: Whatever ``optuna.importance`` raises.
    """
    n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_done < 2:
        raise ValueError(f"parameter importances need at least 2 completed trials, got {n_done}")
    directions = list(study.directions)
    names = list(record.meta.objectives) if record is not None else []
    if len(names) != len(directions):
        names = list(getattr(study, "metric_names", None) or []) or [
            f"objective {i}" for i in range(len(directions))
        ]
    out: dict[str, dict[str, float]] = {}
    for i, direction in enumerate(directions):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

        def target(t: Any, i: int = i, sign: float = sign) -> float:
            return sign * t.values[i]

        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "computes the importances ... to achieve low target", "too few trials"
            out[names[i]] = dict(optuna.importance.get_param_importances(study, target=target))
    return out


def importance_figure(
    study: Any,
    record: StudyRecord | None = None,
    *,
    importances: dict[str, dict[str, float]] | None = None,
) -> go.Figure | None:
    """Horizontal bars of the parameter importances, one panel per objective.

    Args:
        study: An ``optuna.Study`` (ignored when ``importances`` is given).
        record: Supplies the objectives' names; optional.
        importances: Precomputed :func:`param_importances`.

    Returns:
        The figure, or None when the importances cannot be computed (no study, fewer than
        two completed trials, an error inside Optuna).
    """
    if importances is None:
        if study is None:
            return None
        try:
            importances = param_importances(study, record)
        except Exception:  # noqa: BLE001 - "not computable" is an answer here, not an error
            return None
    importances = {k: v for k, v in importances.items() if v}
    if not importances:
        return None
    n_params = max(len(v) for v in importances.values())
    fig = make_subplots(
        rows=1,
        cols=len(importances),
        subplot_titles=[html.escape(k) for k in importances],
        horizontal_spacing=0.25,
    )
    for col, values in enumerate(importances.values(), start=1):
        items = sorted(values.items(), key=lambda kv: kv[1])  # plotly draws bottom-up: largest on top
        fig.add_trace(
            go.Bar(
                x=[v for _, v in items],
                y=[html.escape(k) for k, _ in items],
                orientation="h",
                name=html.escape(list(importances)[col - 1]),
                marker={"color": _FEASIBLE_COLOUR},
                hovertemplate="%{y}: %{x:.3f}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="importance", tickformat=".0%", row=1, col=col)
    fig.update_layout(
        title="parameter importances (Optuna, per objective)",
        height=max(320, 24 * n_params + 160),
        margin={"l": 20, "r": 20, "t": 80, "b": 40},
    )
    fig.update_yaxes(automargin=True)
    return fig


def write_figure_html(fig: go.Figure, path: str | Path) -> Path:
    """Write one figure as a standalone HTML file with plotly.js embedded (renders offline)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return path
