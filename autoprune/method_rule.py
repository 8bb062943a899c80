"""Which prune method runs when none is asked: the one the equal-epoch table shows best.

The table is ``benchmarks/results/admm_vs_magnitude_fmnist.md`` (its data:
``admm_vs_magnitude_fmnist.json``, made by ``benchmarks/admm_vs_magnitude.py``): resnet20 on
a 1,000-image Fashion-MNIST subset, 2 seeds, every method given the same total epochs, test
accuracy per cell (its vgg16-bn-half rows at 4 epochs agree: gmp best in 7 of 9 cells,
magnitude in the other 2). :data:`TABLE` is that file's resnet20 mean test accuracy of the library's methods
per measured cell (sparsity type, rate, total epochs); ``tests/core_tests/test_method_rule.py``
checks it against the JSON, so a new table must be copied here to change a default.

:func:`choose_method` reads the cell nearest to a prune — its schedule's total epochs first
(nearest on a log scale: 4, 20 or 40), then its type and rate — and picks the method that
scored best there among those that can run (``gmp`` needs autoprune's built-in loop). It
says why in one line, which ``autoprune prune`` prints. ``--method`` (``method=``) always wins.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autoprune.config import LayerTarget

__all__ = ["AUTO", "TABLE", "TABLE_FILE", "MethodChoice", "choose_method", "table_row"]

AUTO = "auto"
TABLE_FILE = "benchmarks/results/admm_vs_magnitude_fmnist.md"

#: (row, rate, total epochs) -> method -> mean test accuracy in % (TABLE_FILE; magnitude was
#: not run at 40 epochs)
TABLE: dict[tuple[str, float, int], dict[str, float]] = {
    ("filter", 0.5, 4): {"admm": 77.7, "gmp": 78.0, "magnitude": 76.2},
    ("filter", 0.75, 4): {"admm": 73.4, "gmp": 74.7, "magnitude": 70.1},
    ("filter", 0.9, 4): {"admm": 54.1, "gmp": 67.0, "magnitude": 55.1},
    ("filter", 0.9, 20): {"admm": 74.4, "gmp": 76.4, "magnitude": 74.0},
    ("filter", 0.9, 40): {"admm": 77.1, "gmp": 78.3},
    ("shape", 0.75, 4): {"admm": 75.3, "gmp": 77.5, "magnitude": 77.0},
    ("shape", 0.9, 4): {"admm": 72.8, "gmp": 75.5, "magnitude": 74.0},
    ("shape", 0.95, 4): {"admm": 65.8, "gmp": 73.1, "magnitude": 72.8},
    ("shape", 0.95, 20): {"admm": 77.0, "gmp": 78.0, "magnitude": 79.0},
    ("shape", 0.95, 40): {"admm": 79.1, "gmp": 80.7},
    ("irregular", 0.9, 4): {"admm": 75.0, "gmp": 76.3, "magnitude": 77.6},
    ("irregular", 0.95, 4): {"admm": 71.0, "gmp": 74.7, "magnitude": 76.1},
    ("irregular", 0.98, 4): {"admm": 14.8, "gmp": 63.1, "magnitude": 71.4},
    ("irregular", 0.98, 20): {"admm": 75.3, "gmp": 76.4, "magnitude": 77.1},
    ("irregular", 0.98, 40): {"admm": 77.4, "gmp": 79.3},
}

# the table's rows: structured output/input channels, im2col columns, single weights
_ROW = {"filter": "filter", "channel": "filter", "shape": "shape", "filter+shape": "shape",
        "irregular": "irregular", "n:m": "irregular"}


@dataclass(frozen=True)
class MethodChoice:
    """The method chosen and why (one line, naming the table and the cell it read)."""

    method: str
    reason: str


def table_row(targets: Mapping[str, LayerTarget]) -> tuple[str, float] | None:
    """The table row (type) and rate of a prune: the row most of its pruned layers fall in, at
    the median of their rates (an N:M type at the fraction it removes); None if it prunes nothing."""
    rows: dict[str, list[float]] = {}
    for t in targets.values():
        kind = "n:m" if ":" in t.type and t.type != "filter+shape" else t.type
        row = _ROW.get(kind)
        frac = t.removed_fraction
        if row is None or frac is None or frac <= 0:
            continue
        rows.setdefault(row, []).append(float(frac))
    if not rows:
        return None
    row = max(rows, key=lambda r: (len(rows[r]), r))
    return row, statistics.median(rows[row])


def _nearest_cell(row: str, rate: float, epochs: float) -> tuple[str, float, int]:
    lengths = sorted({n for (r, _, n) in TABLE if r == row})
    length = min(lengths, key=lambda n: (abs(math.log(max(epochs, 1e-9) / n)), n))
    rates = sorted(q for (r, q, n) in TABLE if r == row and n == length)
    return row, min(rates, key=lambda q: (abs(q - rate), q)), length


def choose_method(targets: Mapping[str, LayerTarget], epochs: float | None,
                  available: Iterable[str] = ("admm", "magnitude", "gmp")) -> MethodChoice:
    """The method the table shows best for pruning ``targets`` with ``epochs`` of training in
    all (see the module docstring), among ``available``. ``epochs`` None: the length is not
    known in epochs (your own loop's unit may be steps) and no cell can be read: ``magnitude``
    (one-shot, then all the training masked retraining), which needs no split of the schedule
    between W-steps and retraining (ADMM trained with a third of a 30-step schedule left for
    retraining lost 38 points where magnitude kept the budget: ``examples/torchvision_classifier.py``)."""
    allowed = list(available)
    found = table_row(targets)
    if found is None:
        return MethodChoice(allowed[0], f"method: {allowed[0]} (the config prunes nothing the table measured)")
    row, rate = found
    if epochs is None:
        pick = "magnitude" if "magnitude" in allowed else allowed[0]
        return MethodChoice(pick, f"method: {pick} - your loop's unit is not known to be the epoch, so "
                                  f"{TABLE_FILE} (by epochs) cannot be read; {pick} needs no split of the schedule")
    cell = _nearest_cell(row, rate, epochs)
    scores = {m: v for m, v in TABLE[cell].items() if m in allowed}
    if not scores:
        return MethodChoice(allowed[0], f"method: {allowed[0]} (the table has none of {', '.join(allowed)})")
    ranked = sorted(scores, key=lambda m: (-scores[m], allowed.index(m)))
    best = ranked[0]
    others = ", ".join(f"{m} {scores[m]:.1f}%" for m in ranked[1:])
    _, cell_rate, cell_len = cell
    where = (f"{row} {rate:.0%}" if abs(cell_rate - rate) < 1e-9
             else f"{row} {rate:.0%} (read at the nearest measured rate, {cell_rate:.0%})")
    return MethodChoice(best, f"method: {best} - best at {cell_len} epochs for {where} in {TABLE_FILE} "
                              f"({scores[best]:.1f}% test" + (f"; {others})" if others else ")")
                        + (f"; this prune trains {epochs:.3g} epochs" if abs(epochs - cell_len) > 1e-9 else ""))
