"""Coupled-channel projection: ADMM's sets are exactly what compaction can remove."""

from __future__ import annotations

import copy
import itertools

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
    (6, 0.5, 8, 3), (100, 0.0, 8, 100), (20, 0.1, 8, 16), (64, 0.3, 16, 48),
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
