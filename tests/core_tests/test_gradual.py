"""Gradual magnitude pruning (autoprune.gradual; method "gmp"): the cubic rate, masks that rise
step by step through the caller's optimizer, the same training as the other methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune
from autoprune import admm
from autoprune.config import AdmmSettings, LayerTarget
from autoprune.errors import UserError
from autoprune.gradual import gradual_pruning, gradual_rate
from autoprune.groups import ChannelGraph
from autoprune.pipeline import build_model, example_input, load_dataset
from autoprune.projection import Projector


def test_the_cubic_rises_fast_then_slowly_to_the_target():
    values = [gradual_rate(t, 10) for t in range(12)]
    assert values[0] == 0.0 and values[10] == values[11] == 1.0
    assert all(a < b for a, b in zip(values[:10], values[1:11]))
    assert values[1] - values[0] > values[10] - values[9]  # the first step prunes most
    assert gradual_rate(5, 10) == pytest.approx(1 - 0.5 ** 3)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _zero_filters(conv: nn.Conv2d) -> int:
    return int((conv.weight.detach().flatten(1).abs().sum(1) == 0).sum())


def test_filters_are_removed_step_by_step_and_held_at_zero():
    model = _net()
    graph = ChannelGraph(model, torch.zeros(1, 1, 8, 8))
    projector = Projector(model, graph, {"0": LayerTarget("filter", 0.75), "2": LayerTarget("filter", 0.75)})
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    seen: list[int] = []

    def train(m: nn.Module, amount: float) -> float:
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for _ in range(int(amount)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            seen.append(_zero_filters(m[0]))
        return float(loss.detach())

    with gradual_pruning(model, projector, 40, updates=8) as count:
        train(model, 40)
    assert count.steps == 40
    # 12 of 16 filters at the end of the ramp (step 20); fewer before, never fewer than a step earlier
    assert seen[0] < 12 and seen[19:] == [12] * 21
    assert all(a <= b for a, b in zip(seen, seen[1:])) and len(set(seen[:20])) >= 4
    masks = projector.hard_masks()
    assert int((~masks["0.weight"].flatten(1).any(1)).sum()) == 12
    assert _zero_filters(model[2]) == 12


def test_gmp_without_a_step_count_is_refused_in_one_line():
    model = _net()
    projector = Projector(model, ChannelGraph(model, torch.zeros(1, 1, 8, 8)), {"0": LayerTarget("filter", 0.5)})
    with pytest.raises(UserError, match="built-in training loop"):
        admm.prune_with(model, projector, admm.Schedule(), train=lambda m, a: 0.0, method="gmp")


def test_the_api_with_a_users_loop_refuses_gmp_before_training():
    calls = []
    with pytest.raises(UserError, match="built-in training loop"):
        autoprune.prune(_net(), {"0": "filter:0.5"}, train=lambda m, a: calls.append(a),
                        example_inputs=torch.zeros(2, 1, 8, 8), method="gmp")
    assert calls == []


def test_the_built_in_loop_spends_the_schedule_in_one_gradual_run(monkeypatch):
    import autoprune.train

    calls = []
    real = autoprune.train.run_epochs

    def spy(model, dataset, *, epochs, steps=None, **kwargs):  # noqa: ANN001, ANN202
        calls.append(epochs)
        return real(model, dataset, epochs=epochs, steps=steps, **kwargs)

    monkeypatch.setattr(autoprune.train, "run_epochs", spy)
    splits = load_dataset("digits")
    model = build_model("lenet5", splits)
    projector = Projector(model, ChannelGraph(model, example_input(splits)),
                          {"features.0": LayerTarget("filter", 0.5), "classifier.1": LayerTarget("filter", 0.5)})
    settings = AdmmSettings.for_budget(1.0)
    masks, history = admm.prune(model, projector, splits.train, settings, method="gmp", device=torch.device("cpu"),
                                val_set=splits.val)
    assert calls == [pytest.approx(1.0)]  # what admm and magnitude spend in all (iters x epochs + retraining)
    assert history.method == "gmp" and history.iterations == [] and history.hard_prune_val_acc is None
    kept = masks["features.0.weight"].flatten(1).any(1)
    assert int(kept.sum()) == model.features[0].out_channels // 2
    assert torch.all(model.features[0].weight.detach()[~kept] == 0)
