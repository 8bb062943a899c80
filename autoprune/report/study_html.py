"""One self-contained HTML report of a study (plotly.js embedded once: it renders offline).

Example::

    from autoprune.report import write_report
    write_report(record, "runs/my-study/report.html", chosen=record.best_feasible())
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import yaml
from plotly.offline import get_plotlyjs

from autoprune.atomic import write_text_atomic
from autoprune.report.figures import importance_figure, layer_heatmap, pareto_figure
from autoprune.report.labels import final_speedup_label, layers_text, number, speedup_label
from autoprune.study.records import StudyRecord, TrialRecord, si_count
from autoprune.text import percent

__all__ = ["write_report"]

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
        budget = f"drop ≤ {100 * m.budget:.3g}% of the dense {m.metric} (= {m.fmt_drop(m.allowed_drop())})"
    else:
        budget = f"drop ≤ {m.fmt_drop(m.budget)}"
    rows = [
        ("study", m.name),
        ("model", m.model),
        ("dataset", m.dataset),
        ("checkpoint", m.checkpoint),
        ("device", m.device_description or m.device),
        (f"{m.metric} budget", budget),
        ("latency", f"batch {m.latency_batch}, {m.dtype}"),
        ("search space", m.space),
        ("sampler", f"{m.sampler}, seed {m.seed}"),
        ("ADMM", ", ".join(f"{k}={v}" for k, v in m.admm.items()) or "–"),
        (f"dense {m.metric}", f"{m.fmt(m.dense_accuracy)} validation, {m.fmt(m.dense_test_accuracy)} test"),
        ("dense latency", f"{m.dense_latency_ms:.4g} ms median, {m.dense_latency_p90_ms:.4g} ms p90"),
        ("dense MACs / params", f"{si_count(m.dense_macs)} / {si_count(m.dense_params)}"),
        ("Optuna storage", record.storage),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items()) or "–"),
    ]
    return rows


def _trial_table(record: StudyRecord, chosen: TrialRecord | None) -> str:
    m = record.meta
    head = (
        f"<tr><th>#</th><th class='l'>state</th><th>{html.escape(m.metric)}</th><th>drop</th><th>latency (ms)</th>"
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
            f"<td>{html.escape(m.fmt(t.score))}</td>",
            f"<td>{html.escape(m.fmt_drop(t.score_drop))}</td>",
            f"<td>{number(t.latency_ms, '.4g')}</td>",
            f"<td>{speedup_label(t)}</td>",
            f"<td>{si_count(t.macs)}</td>",
            f"<td>{si_count(t.params_count)}</td>",
            f"<td>{percent(t.sparsity, 1)}</td>",
            f"<td class='l layers'>{html.escape(layers_text(t))}</td>",
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
    path = Path(path)
    meta = record.meta
    chosen = chosen if chosen is not None else record.best_feasible()
    parts: list[str] = []
    add = parts.append

    add(f"<h1>autoprune study {html.escape(meta.name)}</h1>")
    summary = _summary_line(record)
    add(f"<p>{html.escape(summary)}</p>")

    add("<h2>Settings</h2><table class='settings'>")
    for key, value in _settings_rows(record):
        add(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>")
    add("</table>")

    add(f"<h2>{html.escape(meta.metric[:1].upper() + meta.metric[1:])} against measured latency</h2>")
    add(_figure_div(pareto_figure(record, chosen)))

    add("<h2>Trials</h2>")
    add("<p class='note'>Bold: on the Pareto front. Highlighted: the chosen configuration.</p>")
    add(_trial_table(record, chosen))

    add("<h2>Per-layer sparsity of the Pareto trials</h2>")
    add(_figure_div(layer_heatmap(record, chosen)))

    add("<h2>Chosen configuration</h2>")
    if chosen is None and chosen_yaml is None:
        add(f"<p>No trial is within the {html.escape(meta.metric)} budget yet.</p>")
    else:
        if chosen is not None:
            add(
                f"<p>Trial {chosen.number}: {html.escape(meta.metric)} {html.escape(meta.fmt(chosen.score))}, "
                f"{number(chosen.latency_ms, '.4g')} ms, {html.escape(speedup_label(chosen))}, "
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
    return write_text_atomic(path, doc)


def _summary_line(record: StudyRecord) -> str:
    """The report's first paragraph: trials, the fastest within the budget, the best uniform."""
    meta = record.meta
    best = record.best_feasible()
    repeats = sum(1 for t in record.trials if t.repeat_of is not None)
    summary = (
        f"{len(record.trials)} trials: {len(record.completed)} completed, {len(record.feasible)} within the budget, "
        f"{len(record.front)} on the Pareto front"
        + (f", {repeats} repeated an earlier configuration (counted once)." if repeats else ".")
    )
    if best is not None:
        summary += (
            f" Fastest within the budget: trial {best.number}, {final_speedup_label(best)} "
            f"({number(best.latency_ms, '.4g')} ms) at {meta.metric} {meta.fmt(best.score)}."
        )
    uniform = record.best_uniform()
    if uniform is not None and best is not None and not best.is_dense:
        summary += (
            f" Fastest uniform configuration within the budget: trial {uniform.number} "
            f"({uniform.sparsity_summary()}), {final_speedup_label(uniform)}; the search's best is "
            f"{best.final_speedup / uniform.final_speedup:.2f}× it."
        )
    return summary
