"""ADMM's schedule for a budget of a few epochs: Schedule.for_budget and equal-epoch accounting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import autoprune.train
from autoprune import admm
from autoprune.config import LayerTarget, PruneConfig, Schedule
from autoprune.errors import ConfigError
from autoprune.groups import ChannelGraph
from autoprune.pipeline import build_model, example_input, load_dataset, run_prune
from autoprune.projection import Projector

# the fields stored with every search study and compared as a dict on resume
# (autoprune/study/opening.py): for_budget must not add one
STORED_FIELDS = ["iters", "epochs", "steps", "rho", "rho_growth", "rho_max", "retrain_epochs", "lr", "momentum",
                 "weight_decay", "batch_size"]


def test_for_budget_at_five_epochs_is_the_measured_schedule():
    s = Schedule.for_budget(5)
    assert (s.iters, s.epochs, s.retrain_epochs) == (6, 0.25, 3.5)
    assert (s.rho, s.rho_growth, s.lr) == (3.0, 1.3, 0.05)
    assert (s.momentum, s.weight_decay, s.batch_size, s.steps) == (0.9, 5e-4, 64, None)


@pytest.mark.parametrize("budget", [1, 2.5, 3, 5, 10, 22])
def test_for_budget_spends_exactly_the_budget(budget):
    s = Schedule.for_budget(budget)
    assert s.iters * s.epochs + s.retrain_epochs == pytest.approx(budget, abs=1e-12)
    assert s.iters * s.epochs == pytest.approx(0.3 * budget)


def test_for_budget_changes_replace_fields_and_none_is_ignored():
    s = Schedule.for_budget(10, lr=0.01, batch_size=32, rho=None)
    assert (s.lr, s.batch_size, s.rho, s.epochs, s.retrain_epochs) == (0.01, 32, 3.0, 0.5, 7.0)


@pytest.mark.parametrize("budget", [0, -1.0])
def test_for_budget_refuses_an_empty_budget(budget):
    with pytest.raises(ConfigError, match="budget"):
        Schedule.for_budget(budget)


def test_for_budget_adds_no_stored_field_and_round_trips():
    """Studies keep ``dict(settings.__dict__)`` and configs the YAML form: both must read back equal."""
    assert [f.name for f in dataclasses.fields(Schedule)] == STORED_FIELDS
    s = Schedule.for_budget(5)
    assert Schedule(**dict(s.__dict__)) == s
    cfg = PruneConfig(model="lenet5", dataset="digits", layers={"features.*": LayerTarget("filter", 0.5)}, admm=s)
    assert PruneConfig.from_dict(cfg.to_dict()).admm == s


def _record_epochs(monkeypatch) -> list[tuple[float, int | None]]:  # noqa: ANN001
    calls: list[tuple[float, int | None]] = []

    def fake_run_epochs(model, dataset, *, epochs, steps=None, **kwargs):  # noqa: ANN001, ANN202
        calls.append((epochs, steps))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # one step, so that the masks' hooks see it
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        return 0.0

    monkeypatch.setattr(autoprune.train, "run_epochs", fake_run_epochs)
    return calls


@pytest.mark.parametrize("budget", [5, 10])
def test_admm_and_magnitude_train_for_the_same_epochs(monkeypatch, budget):
    calls = _record_epochs(monkeypatch)
    splits = load_dataset("digits")
    settings = Schedule.for_budget(budget)
    spent = {}
    for method in ("admm", "magnitude"):
        calls.clear()
        model = build_model("lenet5", splits)
        graph = ChannelGraph(model, example_input(splits))
        projector = Projector(model, graph, {"features.0": LayerTarget("filter", 0.5),
                                             "classifier.1": LayerTarget("filter", 0.5)})
        admm.prune(model, projector, splits.train, settings, method=method, device=torch.device("cpu"))
        spent[method] = list(calls)
    assert spent["admm"] == [(budget / 20, None)] * 6 + [(0.7 * budget, None)]
    assert spent["magnitude"] == [(pytest.approx(budget), None)]


@pytest.mark.slow
def test_for_budget_converges_where_the_former_search_schedule_collapsed(digits_baseline):
    """digits-cnn, 90% of the filters of every conv and of the hidden linear layer, 5 epochs each.

    The search's former schedule (6 x 0.5 epoch at rho 1, lr 0.01, + 2) stays far from Z
    (residual ~0.95), its hard prune is at chance and 2 retraining epochs leave it near 60%;
    the budget schedule's hard prune keeps most of the accuracy and it ends above 90%
    (benchmarks/results/admm_vs_magnitude.md, seeds 0-2).
    """
    ckpt, _ = digits_baseline
    layers = {"features.*": LayerTarget("filter", 0.9), "classifier.1": LayerTarget("filter", 0.9)}
    former = Schedule(iters=6, epochs=0.5, rho=1.0, rho_growth=1.3, retrain_epochs=2.0, lr=0.01)
    out = {}
    for name, settings in (("former", former), ("budget", Schedule.for_budget(5))):
        cfg = PruneConfig(model="digits-cnn", dataset="digits", layers=layers, checkpoint=str(ckpt), admm=settings)
        out[name] = run_prune(cfg, method="admm", device=torch.device("cpu")).to_dict()
    former_s, budget_s = out["former"], out["budget"]
    assert former_s["hard_prune_val_acc"] <= 0.25
    assert budget_s["hard_prune_val_acc"] >= 0.45
    assert max(budget_s["residuals"][-1]["residual"].values()) < max(former_s["residuals"][-1]["residual"].values())
    assert budget_s["pruned"]["val_acc"] >= 0.85
    assert budget_s["pruned"]["val_acc"] >= former_s["pruned"]["val_acc"] + 0.15
