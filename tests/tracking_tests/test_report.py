"""Figures and the HTML report: the traces a reader relies on, and a file that renders
offline (plotly.js inline, once) with escaped text."""

from __future__ import annotations

import re

import pytest

from autoprune.report import (
    importance_figure,
    layer_heatmap,
    layer_removed_fraction,
    param_importances,
    pareto_figure,
    write_figure_html,
    write_report,
)
from autoprune.study.records import StudyRecord

_SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)
_PLOTLY_BANNER = "* plotly.js v"


def _trace(fig, name: str):
    found = [t for t in fig.data if t.name == name or t.meta == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_pareto_figure_has_trials_front_dense_point_and_budget_line(record):
    fig = pareto_figure(record)
    feasible, infeasible = _trace(fig, "feasible"), _trace(fig, "infeasible")
    assert sorted(c[0] for c in feasible.customdata) == [0, 1, 3]
    assert [c[0] for c in infeasible.customdata] == [2]
    assert feasible.marker.symbol != infeasible.marker.symbol
    assert list(infeasible.y) == pytest.approx([90.0])

    front = _trace(fig, "Pareto front")
    assert list(front.x) == [3.0, 5.0, 10.0]  # fastest first
    assert list(front.y) == pytest.approx([90.0, 96.5, 97.0])

    dense = _trace(fig, "dense")
    assert (dense.x[0], dense.y[0]) == pytest.approx((10.0, 97.0))

    budget = _trace(fig, "budget")
    assert list(budget.y) == pytest.approx([96.0, 96.0])  # dense 97% - 1 point
    assert budget.x[0] < 3.0 and budget.x[1] > 10.0
    hover = feasible.customdata[[c[0] for c in feasible.customdata].index(1)]
    assert hover[1] == "2.00×" and hover[2].split("<br>")[0] == "features.0 F 50%"  # every layer, by name


def test_budget_line_follows_a_relative_budget(record):
    record.meta.budget, record.meta.budget_mode = 0.02, "relative"
    assert list(_trace(pareto_figure(record), "budget").y) == pytest.approx([100 * 0.97 * 0.98] * 2)


def test_layer_heatmap_rows_are_pareto_trials_fastest_first(record):
    fig = layer_heatmap(record)
    (heat,) = fig.data
    assert list(heat.x) == ["features.0", "features.3", "features.6", "classifier.1"]
    assert [y.split(" ")[0] for y in heat.y] == ["#2", "★", "dense"]
    assert heat.y[1].startswith("★ #1 chosen")  # the fastest within the budget
    assert list(heat.z[1]) == pytest.approx([0.5, 0.7, 0.5, 0.0])
    assert list(heat.text[1]) == ["F 50%", "S 70%", "2:4", "–"]
    assert list(heat.z[2]) == [0.0, 0.0, 0.0, 0.0]


def test_uniform_reference_chosen_trial_filled_cells_and_repeats_counted_once(record_factory):
    import dataclasses

    from autoprune.study.records import mark_pareto

    rec = record_factory(mark=False)
    trials = rec.trials
    trials[3].proposal = "uniform"  # feasible, 6 ms
    trials[2].proposal = "uniform"  # infeasible, 3 ms
    trials[1].targets = {"features.0": {"type": "filter", "rate": 0.5}}  # a search leaves dense layers out
    repeat = dataclasses.replace(trials[1], number=6, repeat_of=1, pareto=False)
    trials.append(repeat)
    mark_pareto(trials)
    assert not repeat.pareto and trials[1].pareto  # the repeated configuration counts once

    fig = pareto_figure(rec)
    uniform = _trace(fig, "uniform (one rate on every layer)")
    assert list(uniform.x) == [3.0, 6.0]  # joined fastest first
    assert list(_trace(fig, "chosen (trial 1)").x) == [5.0]
    plotted = [n for t in fig.data if t.name in ("feasible", "infeasible") for n in (c[0] for c in t.customdata)]
    assert sorted(plotted) == [0, 1, 2, 3]  # trial 6 repeats trial 1: drawn once

    (heat,) = layer_heatmap(rec).data
    row = list(heat.y).index(next(y for y in heat.y if "#1" in y))
    assert list(heat.text[row]) == ["F 50%", "–", "–", "–"]  # left-out layers shown dense, not blank
    assert list(heat.z[row]) == [0.5, 0.0, 0.0, 0.0]


def test_layer_removed_fraction():
    assert layer_removed_fraction({"type": "filter", "rate": 0.3}) == 0.3
    assert layer_removed_fraction({"type": "none"}) == 0.0
    assert layer_removed_fraction({"type": "1:4"}) == 0.75


def test_importances_per_objective(record, optuna_study_for):
    study = optuna_study_for(record)
    imp = param_importances(study, record)
    assert list(imp) == ["accuracy", "latency_ms"]
    for values in imp.values():
        assert sum(values.values()) == pytest.approx(1.0)
    fig = importance_figure(study, record)
    assert fig is not None and len(fig.data) == 2
    assert all(t.orientation == "h" for t in fig.data)


def test_importances_are_none_when_not_computable(record, optuna_study_for):
    assert importance_figure(None, record) is None
    one = StudyRecord(record.meta, record.storage, record.trials[:1])
    assert importance_figure(optuna_study_for(one), one) is None
    with pytest.raises(ValueError, match="at least 2 completed trials"):
        param_importances(optuna_study_for(one), one)


def test_report_is_one_offline_html_file(record, optuna_study_for, tmp_path):
    record.meta.name = "study <b>&</b>"
    chosen = record.trials[1]
    path = write_report(
        record,
        tmp_path / "sub" / "report.html",
        study=optuna_study_for(record),
        chosen=chosen,
        chosen_yaml="layers:\n  features.0: {type: filter, rate: 0.5}  # <keep>\n",
    )
    text = path.read_text(encoding="utf-8")
    assert text.count(_PLOTLY_BANNER) == 1  # the library, inline, once
    assert not _SCRIPT_SRC.search(text)  # nothing loaded from a CDN or anywhere else
    assert text.count("Plotly.newPlot(") == 3  # Pareto, heatmap, importances

    for t in record.trials:
        assert f"data-trial='{t.number}'" in text
    assert "class='COMPLETE pareto chosen' data-trial='1'" in text
    assert "RuntimeError: &lt;boom&gt; &amp; friends" in text and "<boom>" not in text
    assert "study &lt;b&gt;&amp;&lt;/b&gt;" in text and "<b>&</b>" not in text
    assert "# &lt;keep&gt;" in text
    assert "accuracy after the hard prune 41.0% is below 95.0%" in text
    assert "<h2>Parameter importances</h2>" in text


def test_report_without_completed_trials(record, tmp_path):
    early = StudyRecord(record.meta, record.storage, record.trials[4:])  # PRUNED and FAIL only
    text = write_report(early, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No trial is within the accuracy budget yet." in text
    assert "<h2>Parameter importances</h2>" not in text
    assert text.count(_PLOTLY_BANNER) == 1


def test_standalone_figure_renders_offline(record, tmp_path):
    text = write_figure_html(pareto_figure(record), tmp_path / "pareto.html").read_text(encoding="utf-8")
    assert text.count(_PLOTLY_BANNER) == 1 and not _SCRIPT_SRC.search(text)
