"""Plotly figures of a study and one self-contained HTML report.

Everything here reads the plain records of :mod:`autoprune.search.records`; only
:func:`param_importances` and :func:`importance_figure` touch an Optuna study.

- :func:`pareto_figure`: validation accuracy (%) against measured latency (ms per batch)
  of the completed trials, the Pareto front, the dense point and the budget line.
- :func:`layer_heatmap`: the per-layer sparsity type and rate of every Pareto trial.
- :func:`importance_figure`: Optuna's parameter importances for each objective.
- :func:`write_report`: one HTML file with the settings, the figures, a table of all
  trials and the chosen configuration.

Every HTML file renders offline: plotly.js is embedded (never loaded from a CDN), once
per file. Example::

    from autoprune.report import write_report
    write_report(record, "runs/my-study/report.html", chosen=record.best_feasible())
"""

from __future__ import annotations

import html
import math
import re
import warnings
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from autoprune.search.records import StudyRecord, TrialRecord, si_count

__all__ = [
    "TYPE_ABBREVIATIONS",
    "importance_figure",
    "layer_heatmap",
    "layer_removed_fraction",
    "param_importances",
    "pareto_figure",
    "write_figure_html",
    "write_report",
]

TYPE_ABBREVIATIONS = {
    "none": "–",
    "filter": "F",
    "channel": "C",
    "shape": "S",
    "irregular": "I",
    "filter+shape": "F+S",
}
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_FEASIBLE_COLOUR = "#1f77b4"
_INFEASIBLE_COLOUR = "#9a9a9a"
_FRONT_COLOUR = "#d62728"
_DENSE_COLOUR = "#2ca02c"
_BUDGET_COLOUR = "#ff7f0e"
_UNIFORM_COLOUR = "#8c564b"
_CHOSEN_COLOUR = "#000000"


# ---------------------------------------------------------------- small helpers


def layer_removed_fraction(target: dict[str, Any]) -> float:
    """The fraction of a layer's weights a target removes: its rate, 0 for ``none``,
    ``1 - N/M`` for an ``N:M`` type (``2:4`` removes half)."""
    kind = str(target.get("type", "none"))
    rate = target.get("rate")
    if rate is not None:
        return float(rate)
    m = _NM.match(kind)
    if m and int(m.group(2)) > 0:
        return 1.0 - int(m.group(1)) / int(m.group(2))
    return 0.0


def _type_label(target: dict[str, Any]) -> str:
    """``F 50%``, ``2:4``, ``–`` — a layer target in a few characters."""
    kind = str(target.get("type", "none"))
    abbr = TYPE_ABBREVIATIONS.get(kind, kind)
    rate = target.get("rate")
    if kind == "none" or rate is None:
        return abbr
    return f"{abbr} {round(100 * float(rate))}%"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{suffix}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _speedup(trial: TrialRecord) -> str:
    return _fmt(trial.speedup, ".2f", "×")


def _final_speedup(trial: TrialRecord) -> str:
    """The re-measured speedup with its spread where there is one, else the search's figure."""
    r = trial.remeasured
    if not r:
        return _speedup(trial)
    return (f"{r['speedup']:.2f}× (re-measured side by side, {r['speedup_p10']:.2f}–{r['speedup_p90']:.2f}× over "
            f"{int(r['rounds'])} rounds; {_speedup(trial)} in the search)")


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
    return f"{tag} · {_speedup(trial)}" if trial.speedup is not None else tag


def _layers_text(trial: TrialRecord, sep: str = ", ") -> str:
    """``features.0 F 50%, features.3 F 90%`` — every pruned layer with its target."""
    if trial.is_dense or not trial.targets:
        return "dense"
    return sep.join(f"{name} {_type_label(t)}" for name, t in trial.targets.items())


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

    def scatter(trials: list[TrialRecord], name: str, colour: str, symbol: str) -> None:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_ms for t in trials],
                y=[100 * t.accuracy for t in trials],
                mode="markers",
                name=name,
                marker={"color": colour, "symbol": symbol, "size": 9, "line": {"width": 1, "color": "white"}},
                customdata=[
                    [t.number, _speedup(t), "<br>".join(html.escape(x) for x in _layers_text(t, "\n").split("\n")),
                     _pct(t.accuracy_drop)]
                    for t in trials
                ],
                hovertemplate=(
                    "trial %{customdata[0]}<br>accuracy %{y:.2f}% (drop %{customdata[3]})<br>"
                    "latency %{x:.4g} ms<br>speedup %{customdata[1]}<br>%{customdata[2]}<extra></extra>"
                ),
            )
        )

    scatter([t for t in done if t.feasible], "feasible", _FEASIBLE_COLOUR, "circle")
    scatter([t for t in done if not t.feasible], "infeasible", _INFEASIBLE_COLOUR, "x")

    front = record.front
    fig.add_trace(
        go.Scatter(
            x=[t.latency_ms for t in front],
            y=[100 * t.accuracy for t in front],
            mode="lines",
            name="Pareto front",
            line={"color": _FRONT_COLOUR, "width": 2, "dash": "dot"},
            hoverinfo="skip",
        )
    )
    uniform = sorted((t for t in done if t.proposal == "uniform"), key=lambda t: t.latency_ms)
    if uniform:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_ms for t in uniform],
                y=[100 * t.accuracy for t in uniform],
                mode="lines+markers",
                name="uniform (one rate on every layer)",
                line={"color": _UNIFORM_COLOUR, "width": 1.5},
                marker={"color": _UNIFORM_COLOUR, "symbol": "square", "size": 8},
                customdata=[[t.number, _speedup(t), html.escape(t.sparsity_summary())] for t in uniform],
                hovertemplate=("uniform trial %{customdata[0]}: %{customdata[2]}<br>accuracy %{y:.2f}%<br>"
                               "latency %{x:.4g} ms (%{customdata[1]})<extra></extra>"),
            )
        )
    if chosen is not None and chosen.latency_ms is not None and chosen.accuracy is not None:
        fig.add_trace(
            go.Scatter(
                x=[chosen.latency_ms],
                y=[100 * chosen.accuracy],
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
            y=[100 * meta.dense_accuracy],
            mode="markers",
            name="dense",
            marker={
                "color": _DENSE_COLOUR,
                "symbol": "star",
                "size": 16,
                "line": {"width": 1, "color": "black"},
            },
            hovertemplate="dense baseline<br>accuracy %{y:.2f}%<br>latency %{x:.4g} ms<extra></extra>",
        )
    )

    lats = [t.latency_ms for t in done] + [meta.dense_latency_ms]
    lats = [x for x in lats if x is not None and math.isfinite(x)]
    lo, hi = (min(lats), max(lats)) if lats else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5 * max(abs(hi), 1e-9)
    floor = 100 * (meta.dense_accuracy - meta.allowed_drop())
    fig.add_trace(
        go.Scatter(
            x=[lo - pad, hi + pad],
            y=[floor, floor],
            mode="lines",
            name=f"budget (drop ≤ {100 * meta.allowed_drop():.3g} points)",
            line={"color": _BUDGET_COLOUR, "width": 1.5, "dash": "dash"},
            hovertemplate=f"lowest accuracy within budget: {floor:.2f}%<extra></extra>",
            meta="budget",
        )
    )
    fig.update_layout(
        title=html.escape(
            f"{meta.name}: accuracy vs measured latency on {meta.device_description or meta.device}"
        ),
        xaxis_title=html.escape(f"latency (ms per batch of {meta.latency_batch}, {meta.dtype}, median)"),
        yaxis_title="validation accuracy (%)",
        height=520,
        legend={"orientation": "h", "y": -0.18},
        margin={"l": 60, "r": 20, "t": 60, "b": 40},
    )
    return fig


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
        for name in layers:
            target = t.targets.get(name) or {"type": "none"}  # a layer a trial leaves out stays dense
            row_z.append(layer_removed_fraction(target))
            row_text.append(html.escape(_type_label(target)))
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
    import optuna
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

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
            out[names[i]] = dict(get_param_importances(study, target=target))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return path


# ---------------------------------------------------------------- the report

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.pareto td { font-weight: 600; } tr.chosen td { background: #fff4d6; }
tr.FAIL td, tr.PRUNED td, tr.repeat td { color: #888; }
td { white-space: nowrap; } td.layers { white-space: normal; font-size: 0.85em; }
table.settings td, table.settings th { text-align: left; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.9em; }
.note { color: #666; font-size: 0.9em; }
"""


def _figure_div(fig: go.Figure) -> str:
    height = fig.layout.height or 450
    return fig.to_html(
        full_html=False, include_plotlyjs=False, default_height=f"{height}px", config={"displaylogo": False}
    )


def _settings_rows(record: StudyRecord) -> list[tuple[str, str]]:
    m = record.meta
    if m.budget_mode == "relative":
        budget = f"drop ≤ {100 * m.budget:.3g}% of the dense accuracy (= {100 * m.allowed_drop():.3g} points)"
    else:
        budget = f"drop ≤ {100 * m.budget:.3g} points"
    rows = [
        ("study", m.name),
        ("model", m.model),
        ("dataset", m.dataset),
        ("checkpoint", m.checkpoint),
        ("device", m.device_description or m.device),
        ("accuracy budget", budget),
        ("latency", f"batch {m.latency_batch}, {m.dtype}"),
        ("search space", m.space),
        ("sampler", f"{m.sampler}, seed {m.seed}"),
        ("ADMM", ", ".join(f"{k}={v}" for k, v in m.admm.items()) or "–"),
        ("dense accuracy", f"{_pct(m.dense_accuracy)} validation, {_pct(m.dense_test_accuracy)} test"),
        ("dense latency", f"{m.dense_latency_ms:.4g} ms median, {m.dense_latency_p90_ms:.4g} ms p90"),
        ("dense MACs / params", f"{si_count(m.dense_macs)} / {si_count(m.dense_params)}"),
        ("Optuna storage", record.storage),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items()) or "–"),
    ]
    return rows


def _trial_table(record: StudyRecord, chosen: TrialRecord | None) -> str:
    head = (
        "<tr><th>#</th><th class='l'>state</th><th>accuracy</th><th>drop</th><th>latency (ms)</th>"
        "<th>speedup</th><th>MACs</th><th>params</th><th>sparsity</th><th class='l'>layers</th>"
        "<th class='l'>proposed by</th><th class='l'>feasible</th><th class='l'>Pareto</th>"
        "<th class='l'>note</th></tr>"
    )
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        classes = [t.state]
        if t.pareto:
            classes.append("pareto")
        if chosen is not None and t.number == chosen.number:
            classes.append("chosen")
        if t.repeat_of is not None:
            classes.append("repeat")
        feasible = "–" if t.feasible is None else ("yes" if t.feasible else "no")
        note = t.stop_reason or ""
        if t.repeat_of is not None:
            note = f"same configuration as trial {t.repeat_of} (its result, counted once)" + (f"; {note}" if note else "")
        if t.remeasured:
            r = t.remeasured
            note = (f"re-measured: {r['speedup']:.2f}× ({r['speedup_p10']:.2f}–{r['speedup_p90']:.2f}×, "
                    f"{int(r['rounds'])} rounds)" + (f"; {note}" if note else ""))
        cells = [
            f"<td>{t.number}</td>",
            f"<td class='l'>{html.escape(t.state)}</td>",
            f"<td>{_pct(t.accuracy)}</td>",
            f"<td>{_fmt(None if t.accuracy_drop is None else 100 * t.accuracy_drop, '.2f', ' pt')}</td>",
            f"<td>{_fmt(t.latency_ms, '.4g')}</td>",
            f"<td>{_speedup(t)}</td>",
            f"<td>{si_count(t.macs)}</td>",
            f"<td>{si_count(t.params_count)}</td>",
            f"<td>{_pct(t.sparsity, 1)}</td>",
            f"<td class='l layers'>{html.escape(_layers_text(t))}</td>",
            f"<td class='l'>{html.escape(t.proposal or '')}</td>",
            f"<td class='l'>{feasible}</td>",
            f"<td class='l'>{'yes' if t.pareto else ''}</td>",
            f"<td class='l layers'>{html.escape(note)}</td>",
        ]
        rows.append(f"<tr class='{' '.join(classes)}' data-trial='{t.number}'>{''.join(cells)}</tr>")
    return f"<table class='trials'>{head}{''.join(rows)}</table>"


def write_report(
    record: StudyRecord,
    path: str | Path,
    *,
    study: Any = None,
    chosen: TrialRecord | None = None,
    chosen_yaml: str | None = None,
    importances: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write one self-contained HTML report of a study (renders offline).

    Sections: the study's settings and dense baseline, the Pareto figure, a table of all
    trials, the per-layer heatmap of the Pareto trials, the chosen configuration, and the
    parameter importances when they can be computed.

    Args:
        record: The study, with ``pareto`` marked on its trials.
        path: Where to write the file (parent folders are created).
        study: The ``optuna.Study``, for the parameter importances; optional.
        chosen: The trial to highlight as the chosen configuration (default: the fastest
            feasible one).
        chosen_yaml: The chosen configuration as YAML; without it, the chosen trial's
            per-layer targets are shown.
        importances: Precomputed :func:`param_importances` (skips computing them again).

    Returns:
        The path written.
    """
    import yaml

    path = Path(path)
    meta = record.meta
    chosen = chosen if chosen is not None else record.best_feasible()
    n_complete = len(record.completed)
    best = record.best_feasible()
    parts: list[str] = []
    add = parts.append

    add(f"<h1>autoprune study {html.escape(meta.name)}</h1>")
    repeats = sum(1 for t in record.trials if t.repeat_of is not None)
    summary = (
        f"{len(record.trials)} trials: {n_complete} completed, {len(record.feasible)} within the budget, "
        f"{len(record.front)} on the Pareto front"
        + (f", {repeats} repeated an earlier configuration (counted once)." if repeats else ".")
    )
    if best is not None:
        summary += (
            f" Fastest within the budget: trial {best.number}, {_final_speedup(best)} "
            f"({_fmt(best.latency_ms, '.4g')} ms) at {_pct(best.accuracy)} accuracy."
        )
    uniform = record.best_uniform()
    if uniform is not None and best is not None and not best.is_dense:
        summary += (
            f" Fastest uniform configuration within the budget: trial {uniform.number} "
            f"({uniform.sparsity_summary()}), {_final_speedup(uniform)}; the search's best is "
            f"{best.final_speedup / uniform.final_speedup:.2f}× it."
        )
    add(f"<p>{html.escape(summary)}</p>")

    add("<h2>Settings</h2><table class='settings'>")
    for key, value in _settings_rows(record):
        add(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>")
    add("</table>")

    add("<h2>Accuracy against measured latency</h2>")
    add(_figure_div(pareto_figure(record, chosen)))

    add("<h2>Trials</h2>")
    add("<p class='note'>Bold: on the Pareto front. Highlighted: the chosen configuration.</p>")
    add(_trial_table(record, chosen))

    add("<h2>Per-layer sparsity of the Pareto trials</h2>")
    add(_figure_div(layer_heatmap(record, chosen)))

    add("<h2>Chosen configuration</h2>")
    if chosen is None and chosen_yaml is None:
        add("<p>No trial is within the accuracy budget yet.</p>")
    else:
        if chosen is not None:
            add(
                f"<p>Trial {chosen.number}: {_pct(chosen.accuracy)} accuracy, "
                f"{_fmt(chosen.latency_ms, '.4g')} ms, {html.escape(_speedup(chosen))}, "
                f"{html.escape(chosen.sparsity_summary())}.</p>"
            )
        text = chosen_yaml
        if text is None and chosen is not None:
            text = yaml.safe_dump({"layers": chosen.targets}, sort_keys=False)
        add(f"<pre>{html.escape(text or '')}</pre>")

    fig = importance_figure(study, record, importances=importances)
    if fig is not None:
        add("<h2>Parameter importances</h2>")
        add(_figure_div(fig))

    doc = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(f'autoprune: {meta.name}')}</title><style>{_CSS}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>"
        "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path
