"""Coupled-channel projection: ADMM's sets are exactly what compaction can remove."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from autoprune.admm import apply_masks
from autoprune.config import LayerTarget
from autoprune.errors import ConfigError
from autoprune.groups import ChannelGraph
from autoprune.models import create_model
from autoprune.projection import Projector, rounded_keep
from autoprune.sparsity import keep_count


class TinyResidual(nn.Module):
    """stem -> (conv_a, conv_b) summed -> head: conv_a and conv_b outputs are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 5, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 1)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Conv2d(5, 3, 1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(self.a(x) + self.b(x)))
        return self.fc(torch.relu(self.head(x)).flatten(1))




def test_residual_outputs_form_one_group():
    model = TinyResidual().eval()
    graph = ChannelGraph(model, torch.zeros(1, 1, 4, 4))
    assert graph.layers["a"].out_group == graph.layers["b"].out_group
    assert graph.layers["a"].coupled == ["b"]
    assert graph.layers["fc"].is_output and not graph.groups[graph.layers["fc"].out_group].prunable


def test_group_projection_is_the_closest_point_brute_force():
    torch.manual_seed(0)
    model = TinyResidual().eval()
    graph = ChannelGraph(model, torch.zeros(1, 1, 4, 4))
    rate = 0.4
    proj = Projector(model, graph, {"a": LayerTarget("filter", rate)})
    weights = {n: model.get_parameter(n).detach().clone() for n in proj.constrained_params}
    # the coupled producer is constrained too, with the biases and the BatchNorm entries of the channels
    assert set(weights) == {"a.weight", "a.bias", "b.weight", "b.bias", "bn.weight", "bn.bias"}
    z, masks = proj.project(weights)
    best = min(
        sum(float((w - w * _keep_rows(w, kept)).pow(2).sum()) for w in weights.values())
        for kept in itertools.combinations(range(5), keep_count(5, rate))
    )
    ours = sum(float((weights[n] - z[n]).pow(2).sum()) for n in weights)
    assert ours == pytest.approx(best, rel=1e-6)
    rows_a = masks["a.weight"].flatten(1).any(1)
    rows_b = masks["b.weight"].flatten(1).any(1)
    assert torch.equal(masks["bn.weight"], rows_a) and torch.equal(masks["a.bias"], rows_a)
    assert torch.equal(rows_a, rows_b) and int(rows_a.sum()) == keep_count(5, rate)


def _keep_rows(w: torch.Tensor, kept: tuple[int, ...]) -> torch.Tensor:
    m = torch.zeros_like(w)
    m[list(kept)] = 1
    return m


def _compact_with_torch_pruning(model: nn.Module, proj: Projector, example: torch.Tensor) -> nn.Module:
    """Physically remove every pruned channel group with Torch-Pruning (an independent path)."""
    import torch_pruning as tp

    compact = copy.deepcopy(model)
    names = dict(compact.named_modules())
    dg = tp.DependencyGraph().build_dependency(compact, example_inputs=example, verbose=False)
    weights = {n: model.get_parameter(n).detach() for n in proj.constrained_params}
    for gt in proj.group_targets.values():
        keep = proj.group_keep(gt, weights)
        root = names[gt.group.root]
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        pruned = torch.nonzero(~keep).flatten().tolist()
        group = dg.get_pruning_group(root, fn, idxs=pruned)
        group.prune()
    return compact


@pytest.mark.parametrize(
    "model_name, size, targets",
    [
        ("resnet20", 16, {"layer1.0.conv2": LayerTarget("filter", 0.5), "layer2.*.conv1": LayerTarget("filter", 0.5),
                          "layer3.1.conv2": LayerTarget("channel", 0.75)}),
        ("digits-cnn", 8, {"features.*": LayerTarget("filter", 0.5), "classifier.1": LayerTarget("channel", 0.5)}),
        ("tv:mobilenet_v2", 32, {"features.2.conv.0.0": LayerTarget("filter", 0.5),
                                 "features.3.conv.2": LayerTarget("filter", 0.25)}),
        ("tv:densenet121", 32, {"features.denseblock1.denselayer1.conv2": LayerTarget("filter", 0.5),
                                "features.denseblock2.denselayer3.conv1": LayerTarget("filter", 0.5)}),
    ],
)
def test_masked_model_equals_compacted_model(model_name, size, targets, randomize_bn):
    """After the hard prune, removing the zeroed channels changes nothing: outputs stay equal."""
    from autoprune.config import resolve_layer_targets

    torch.manual_seed(0)
    model = create_model(model_name, in_channels=3, num_classes=10, image_size=(size, size)).eval()
    randomize_bn(model)
    example = torch.randn(2, 3, size, size)
    graph = ChannelGraph(model, example[:1])
    resolved = resolve_layer_targets(targets, list(graph.layers))
    proj = Projector(model, graph, resolved)
    masks = proj.hard_masks()
    apply_masks(model, masks)
    compact = _compact_with_torch_pruning(model, proj, example[:1])
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in compact.parameters())
    assert n_after < n_before
    with torch.no_grad():
        torch.testing.assert_close(compact(example), model(example), rtol=1e-4, atol=1e-5)


def test_input_channels_of_the_first_layer_cannot_be_pruned():
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
    graph = ChannelGraph(model, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="reads the model input"):
        Projector(model, graph, {"features.0": LayerTarget("channel", 0.5)})
    with pytest.raises(ConfigError, match="output layer"):
        Projector(model, graph, {"classifier.4": LayerTarget("filter", 0.5)})


@pytest.mark.parametrize(("n", "rate", "multiple", "kept"), [
    (64, 0.3, 1, 45), (64, 0.3, 8, 48), (64, 0.7, 8, 24), (128, 0.7, 8, 40), (64, 0.95, 8, 8),
    (6, 0.5, 8, 3), (100, 0.0, 8, 100), (64, 0.3, 16, 48), (64, 0.7, 16, 16), (512, 0.7, 16, 160),
    # a block coarser than a quarter of the channels: the exact rate
    (20, 0.1, 8, 18), (32, 0.3, 16, 23), (48, 0.5, 16, 24),
])
def test_rounded_keep(n, rate, multiple, kept):
    assert rounded_keep(n, rate, multiple) == kept


def test_channel_multiple_rounds_every_pruned_group():
    torch.manual_seed(0)
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8)).eval()
    graph = ChannelGraph(model, torch.zeros(1, 1, 8, 8))
    proj = Projector(model, graph, {"features.3": LayerTarget("filter", 0.3)}, channel_multiple=8)
    masks = proj.hard_masks()
    rows = masks["features.3.weight"].flatten(1).any(1)
    assert int(rows.sum()) == 48  # 64 - floor(19.2) = 45 rounds to 48
    with pytest.raises(ConfigError, match="channel_multiple"):
        Projector(model, graph, {}, channel_multiple=0)


# -- grouped convolutions: balanced projection ----------------------------------------------

class TinyGrouped(nn.Module):
    """stem -> a -> BN -> grouped conv g1 (+ grouped conv g2 beside it, or + its input) -> head.

    ``a``'s 12 output channels feed ``g1`` (and ``g2`` when ``groups2`` is given), so one
    channel group passes through grouped convs with the given group counts. ``residual``
    adds g1's input to its output, so g1's inputs and outputs are one channel group.
    """

    def __init__(self, groups: int = 3, groups2: int | None = None, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.g1 = nn.Conv2d(12, 12, 3, padding=1, groups=groups)
        self.g2 = nn.Conv2d(12, 12, 3, padding=1, groups=groups2) if groups2 else None
        self.head = nn.Conv2d(12, 3, 1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = torch.relu(self.bn(self.a(torch.relu(self.stem(x)))))
        y = self.g1(x) + (self.g2(x) if self.g2 is not None else x if self.residual else 0)
        return self.fc(torch.relu(self.head(torch.relu(y))).flatten(1))


def _per_part(keep: torch.Tensor, groups: int) -> list[int]:
    return keep.view(groups, -1).sum(1).tolist()


def test_grouped_projection_is_the_closest_balanced_point_brute_force():
    torch.manual_seed(0)
    model = TinyGrouped(groups=3).eval()
    graph = ChannelGraph(model, torch.zeros(1, 1, 4, 4))
    group = graph.out_group("a")
    assert group.prunable and group.cells == 3 and group.grouped == ["g1"]
    proj = Projector(model, graph, {"a": LayerTarget("filter", 0.5)})
    weights = {n: model.get_parameter(n).detach().clone() for n in proj.constrained_params}
    assert set(weights) == {"a.weight", "a.bias", "bn.weight", "bn.bias"}
    z, masks = proj.project(weights)
    kept = masks["a.weight"].flatten(1).any(1)
    assert int(kept.sum()) == 6 and _per_part(kept, 3) == [2, 2, 2]  # keep_count(12, .5) = 6, 2 per group of 4
    # the best of all balanced choices (2 of each 4), not the best 6 overall
    best = min(
        sum(float((w - w * _keep_rows(w, sum(combo, ()))).pow(2).sum()) for w in weights.values())
        for combo in itertools.product(*(list(itertools.combinations(range(4 * i, 4 * i + 4), 2)) for i in range(3)))
    )
    ours = sum(float((weights[n] - z[n]).pow(2).sum()) for n in weights)
    assert ours == pytest.approx(best, rel=1e-6)


def test_grouped_projection_differs_from_unbalanced_top_k():
    model = TinyGrouped(groups=3).eval()
    with torch.no_grad():  # the 6 strongest channels all in the first two conv groups
        model.a.weight.mul_(torch.tensor([9.0] * 8 + [0.1] * 4).view(12, 1, 1, 1))
    graph = ChannelGraph(model, torch.zeros(1, 1, 4, 4))
    proj = Projector(model, graph, {"a": LayerTarget("filter", 0.5)})
    masks = proj.hard_masks()
    keep = proj.kept_channels_[graph.out_group("a").index]
    assert _per_part(keep, 3) == [2, 2, 2]
    assert keep[:8].sum() == 4  # not the 6 strongest (all in the first two conv groups)
    # every output of conv group i of g1 reads exactly the channels kept in its part i
    reads = masks["g1.weight"][:, :, 0, 0].view(3, 4, 4)  # (conv group, its outputs, its inputs)
    for i, part in enumerate(keep.view(3, 4)):
        assert all(torch.equal(row, part) for row in reads[i])


def test_two_grouped_convs_share_the_finer_cells_or_are_refused():
    torch.manual_seed(0)
    model = TinyGrouped(groups=2, groups2=4).eval()
    graph = ChannelGraph(model, torch.zeros(1, 1, 4, 4))
    group = graph.out_group("a")
    assert group.prunable and group.cells == 4 and group.grouped == ["g1", "g2"]
    proj = Projector(model, graph, {"a": LayerTarget("filter", 0.5)})
    proj.hard_masks()
    keep = proj.kept_channels_[group.index]
    assert int(keep.sum()) == 8  # 12 - 6 = 6, rounded to a multiple of the 4 cells
    assert _per_part(keep, 2) == [4, 4] and _per_part(keep, 4) == [2, 2, 2, 2]
    # 2 and 3 groups cut 12 channels into parts of 4, 2, 2, 4: no count balances both
    uneven = TinyGrouped(groups=2, groups2=3).eval()
    uneven_graph = ChannelGraph(uneven, torch.zeros(1, 1, 4, 4))
    refused = uneven_graph.out_group("a")
    assert not refused.prunable and "unequal" in refused.reason and "'g2' (3 groups)" in refused.reason
    with pytest.raises(ConfigError, match="unequal"):
        Projector(uneven, uneven_graph, {"a": LayerTarget("filter", 0.5)})


@pytest.mark.parametrize(("groups2", "residual", "g1_in", "g1_out"), [(None, False, 6, 6), (4, False, 8, 8),
                                                                      (None, True, 6, 6)])
def test_grouped_masked_model_equals_compacted_model(groups2, residual, g1_in, g1_out, randomize_bn):
    from autoprune.compact import remove_channels

    torch.manual_seed(0)
    model = TinyGrouped(groups=2, groups2=groups2, residual=residual).eval()
    randomize_bn(model)
    x = torch.randn(2, 1, 4, 4)
    graph = ChannelGraph(model, x[:1])
    if residual:  # g1 reads and writes the same channels
        assert graph.out_group("g1") is graph.in_group("g1")
    proj = Projector(model, graph, {"a": LayerTarget("filter", 0.5), "g1": LayerTarget("filter", 0.5)})
    apply_masks(model, proj.hard_masks())
    compact = remove_channels(model, proj, x[:1])
    assert (compact.g1.groups, compact.g1.in_channels, compact.g1.out_channels) == (2, g1_in, g1_out)
    assert compact.g1.weight.shape[1] == compact.g1.in_channels // 2
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-5)


def test_admm_projection_round_trip_on_a_grouped_model():
    """Z = Π(W + U) is balanced and a fixed point; the hard prune of W = Z keeps Z's channels."""
    torch.manual_seed(0)
    model = create_model("tv:regnet_x_400mf", in_channels=3, num_classes=10, image_size=(32, 32)).eval()
    graph = ChannelGraph(model, torch.zeros(1, 3, 32, 32))
    targets = {"trunk_output.block2.block2-0.f.a.0": LayerTarget("filter", 0.5),
               "trunk_output.block3.block3-1.f.b.0": LayerTarget("filter", 0.4),
               "trunk_output.block2.block2-1.f.c.0": LayerTarget("channel", 0.5)}
    proj = Projector(model, graph, targets)
    assert any(gt.group.cells > 1 for gt in proj.group_targets.values())
    w_plus_u = {n: model.get_parameter(n).detach() + 0.1 * torch.randn_like(model.get_parameter(n))
                for n in proj.constrained_params}
    z, masks = proj.project(w_plus_u)
    z_again, _ = proj.project(z)
    for n in z:
        torch.testing.assert_close(z_again[n], z[n])
    with torch.no_grad():
        for n, v in z.items():
            model.get_parameter(n).copy_(v)
    hard = proj.hard_masks()
    for gi, gt in proj.group_targets.items():
        keep = proj.kept_channels_[gi]
        assert int(keep.sum()) == proj.group_keep_count(gt) and int(keep.sum()) % gt.group.cells == 0
        if gt.group.cells > 1:
            counts = torch.bincount(gt.group.cell_of[keep], minlength=gt.group.cells)
            assert bool((counts == counts[0]).all())
    for n in masks:
        assert torch.equal(hard[n], masks[n])  # the hard prune keeps exactly Z's support


@pytest.mark.parametrize(("n", "rate", "multiple", "cells", "kept"), [
    (128, 0.3, 1, 32, 96), (128, 0.5, 1, 32, 64), (128, 0.3, 8, 32, 96), (128, 0.9, 1, 32, 32),
    (32, 0.3, 8, 2, 24), (208, 0.3, 8, 26, 156), (160, 0.3, 8, 10, 120), (12, 0.5, 1, 3, 6), (12, 0.0, 8, 4, 12),
])
def test_rounded_keep_with_cells(n, rate, multiple, cells, kept):
    assert rounded_keep(n, rate, multiple, cells=cells) == kept


@pytest.mark.parametrize("cells", [2, 3, 4, 10, 26, 32])
def test_rounded_keep_with_cells_keeps_the_same_count_in_every_cell(cells):
    """Over a grid of sizes, block sizes and rates: a multiple of the cells (at least one
    channel each, at most all), in steps of lcm(cells, block) where that fits four times
    into the group, and the nearest such count to the rate's own (or the smallest/largest)."""
    for per_cell, multiple, rate in itertools.product((1, 2, 3, 4, 5, 8, 12), (1, 8, 16),
                                                      (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)):
        n = cells * per_cell
        k = rounded_keep(n, rate, multiple, cells=cells)
        unit = math.lcm(cells, multiple)
        unit = unit if 4 * unit <= n else cells
        where = dict(n=n, rate=rate, multiple=multiple, cells=cells, kept=k)
        assert k % cells == 0 and cells <= k <= n, where
        assert k % unit == 0 or k == n, where
        assert abs(k - keep_count(n, rate)) <= unit / 2 or k in (unit, n), where
