"""The default prune method follows the equal-epoch table (autoprune.method_rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.config import LayerTarget
from autoprune.method_rule import TABLE, TABLE_FILE, choose_method, table_row

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("admm", "magnitude", "gmp")


def _table_from_json() -> dict[tuple[str, float, int], dict[str, float]]:
    data = json.loads((ROOT / TABLE_FILE).with_suffix(".json").read_text())
    cells: dict[tuple[str, float, int], dict[str, float]] = {}
    for row in data["summary"]:
        if row["method"] in LIBRARY and row["model"] == "resnet20":  # the rule's table is resnet20's
            key = (row["kind"], row["rate"], int(row["length"]))
            cells.setdefault(key, {})[row["method"]] = round(100 * row["test_mean"], 1)
    return cells


def test_the_rule_holds_the_committed_table():
    assert TABLE == _table_from_json()


def _best(cell, available=LIBRARY):  # noqa: ANN001, ANN202
    scores = {m: v for m, v in _table_from_json()[cell].items() if m in available}
    return max(scores, key=scores.get)


@pytest.mark.parametrize(("targets", "epochs", "cell"), [
    ({"a": LayerTarget("filter", 0.9), "b": LayerTarget("filter", 0.9)}, 20, ("filter", 0.9, 20)),
    ({"a": LayerTarget("irregular", 0.98)}, 18, ("irregular", 0.98, 20)),
    ({"a": LayerTarget("shape", 0.95), "b": LayerTarget("filter", 0.5), "c": LayerTarget("shape", 0.95)}, 22,
     ("shape", 0.95, 20)),
    ({"a": LayerTarget("filter", 0.75)}, 5, ("filter", 0.75, 4)),
])
def test_the_rule_picks_what_the_table_would(targets, epochs, cell):
    choice = choose_method(targets, epochs)
    assert choice.method == _best(cell)
    assert TABLE_FILE in choice.reason and choice.reason.startswith(f"method: {choice.method} - best at {cell[2]} ")


def test_the_two_cases_named_by_the_table():
    # gradual magnitude pruning for filters at a final prune's length; one-shot magnitude for single weights
    assert choose_method({"a": LayerTarget("filter", 0.9)}, 20).method == "gmp"
    assert choose_method({"a": LayerTarget("irregular", 0.98)}, 20).method == "magnitude"


def test_without_gmp_the_next_best_runs():
    # a user's own loop cannot run gmp: at filter 75% and 4 epochs ADMM (73.4) is ahead of magnitude (70.1)
    choice = choose_method({"a": LayerTarget("filter", 0.75)}, 4, ("admm", "magnitude"))
    assert choice.method == _best(("filter", 0.75, 4), ("admm", "magnitude")) == "admm"
    assert "gmp" not in choice.reason


def test_rates_and_lengths_between_cells_read_the_nearest():
    assert table_row({"a": LayerTarget("filter", 0.3), "b": LayerTarget("filter", 0.6),
                      "c": LayerTarget("none")}) == ("filter", pytest.approx(0.45))
    choice = choose_method({"a": LayerTarget("filter", 0.3)}, 60)
    assert choice.method == _best(("filter", 0.9, 40))
    assert "nearest measured rate, 90%" in choice.reason and "this prune trains 60 epochs" in choice.reason
    assert table_row({"a": LayerTarget("2:4")}) == ("irregular", 0.5)


def test_a_length_in_an_unknown_unit_reads_no_cell():
    # your own loop's amounts may be steps: no cell of the table (by epochs) can be read
    choice = choose_method({"a": LayerTarget("filter", 0.75)}, None, ("admm", "magnitude"))
    assert choice.method == "magnitude" and "not known to be the epoch" in choice.reason
    assert choose_method({"a": LayerTarget("filter", 0.75)}, 4, ("admm", "magnitude")).method == "admm"  # known: read
    assert choose_method({"a": LayerTarget("filter", 0.75)}, None, ("admm",)).method == "admm"


def test_a_search_or_prune_with_your_own_loop_does_not_read_its_unit_as_epochs():
    import torch

    from autoprune.pruning import _epochs
    from autoprune.task import FunctionTask

    task = FunctionTask(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8), lambda m, n: None, None)
    assert task.amount_unit_is_epoch is False and _epochs(task, None) is None
