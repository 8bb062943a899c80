"""Reports of a search study: plotly figures, one self-contained HTML page, the study's files.

* :mod:`~autoprune.report.figures` — :func:`pareto_figure`, :func:`layer_heatmap`,
  :func:`importance_figure` (:func:`param_importances`), :func:`write_figure_html`;
* :mod:`~autoprune.report.study_html` — :func:`write_report`, the HTML page;
* :mod:`~autoprune.report.artifacts` — :func:`write_study_artifacts`, every file of a study's folder;
* :mod:`~autoprune.report.labels` — the short labels they share (``F 50%``, ``2.31×``).

Every HTML file renders offline: plotly.js is embedded (never loaded from a CDN), once per
file. The deployable model's own report (``report.json`` / ``report.md``) is
:mod:`autoprune.deploy.card`.
"""

from autoprune.report.artifacts import write_study_artifacts
from autoprune.report.figures import (
    importance_figure,
    layer_heatmap,
    param_importances,
    pareto_figure,
    write_figure_html,
)
from autoprune.report.labels import (
    TYPE_ABBREVIATIONS,
    final_speedup_label,
    layer_removed_fraction,
    layer_targets,
    layers_text,
    number,
    speedup_label,
    type_label,
)
from autoprune.report.study_html import write_report

__all__ = [
    "TYPE_ABBREVIATIONS",
    "final_speedup_label",
    "importance_figure",
    "layer_heatmap",
    "layer_removed_fraction",
    "layer_targets",
    "layers_text",
    "number",
    "param_importances",
    "pareto_figure",
    "speedup_label",
    "type_label",
    "write_figure_html",
    "write_report",
    "write_study_artifacts",
]
