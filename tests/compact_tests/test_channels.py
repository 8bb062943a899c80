"""Channel compaction: the physically smaller model computes what the masked model computes."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from autoprune.admm import apply_masks
from autoprune.bench import uniform_targets
from autoprune.compact import remove_channels
from autoprune.config import LayerTarget
from autoprune.errors import ConfigError
from autoprune.groups import ChannelGraph, is_grouped_conv
from autoprune.models import create_model, list_models
from autoprune.projection import Projector


def _check(model_name: str, size: int, target: LayerTarget, randomize_bn, channels: int = 3) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=channels, num_classes=10, image_size=(size, size)).eval()
    randomize_bn(model)
    x = torch.randn(2, channels, size, size)
    graph = ChannelGraph(model, x[:1])
    targets = uniform_targets(graph, target)
    proj = Projector(model, graph, targets)
    apply_masks(model, proj.hard_masks())
    compact = remove_channels(model, proj, x[:1])
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref, out = model(x), compact(x)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("kind", ["filter", "channel"])
def test_every_registry_model(model_name, kind, randomize_bn):
    size = 8 if model_name in ("digits-cnn", "lenet5") else 32
    _check(model_name, size, LayerTarget(kind, 0.5), randomize_bn)


TV = ["tv:resnet18", "tv:vgg11_bn", "tv:alexnet", "tv:mobilenet_v2", "tv:densenet121", "tv:googlenet",
      "tv:regnet_x_400mf", "tv:efficientnet_b0", "tv:resnext50_32x4d", "tv:regnet_y_400mf", "tv:shufflenet_v2_x1_0"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", TV)
def test_torchvision_families(model_name, randomize_bn):
    _check(model_name, 64, LayerTarget("filter", 0.3), randomize_bn)


# -- grouped convolutions and channel shuffles ---------------------------------------------

def _pruned(model_name: str, kind: str, rate: float, randomize_bn, multiple: int = 1):  # noqa: ANN001, ANN202
    """(dense, masked, compacted, projector, input) for uniform ``kind`` pruning at 3×64×64, batch 2."""
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=3, num_classes=10, image_size=(64, 64)).eval()
    randomize_bn(model)
    dense = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    graph = ChannelGraph(model, x[:1])
    proj = Projector(model, graph, uniform_targets(graph, LayerTarget(kind, rate)), channel_multiple=multiple)
    apply_masks(model, proj.hard_masks())
    compact = remove_channels(model, proj, x[:1])
    with torch.no_grad():
        ref, out = model(x), compact(x)
        assert not torch.allclose(dense(x), ref, atol=1e-3)  # the masks changed the model
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max())))
    return dense, model, compact, proj, x


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(mod, inp, out):  # noqa: ANN001, ANN202
        nonlocal total
        positions = out[0].numel() // out.shape[1] if isinstance(mod, nn.Conv2d) else 1
        total += positions * mod.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total


GROUPED = [pytest.param("tv:resnext50_32x4d", marks=pytest.mark.slow), "tv:regnet_x_400mf", "tv:regnet_y_400mf"]


@pytest.mark.parametrize("model_name", GROUPED)
@pytest.mark.parametrize("kind", ["filter", "channel"])
def test_grouped_convs_prune_balanced_and_compact(model_name, kind, randomize_bn):
    dense, masked, compact, proj, x = _pruned(model_name, kind, 0.5, randomize_bn)
    grouped = {n: m for n, m in dense.named_modules() if is_grouped_conv(m)}
    assert grouped and all(proj.graph.out_group(n).prunable for n in grouped)
    shrunk, own_offsets = 0, False
    for name, before in grouped.items():
        after = compact.get_submodule(name)
        assert after.groups == before.groups  # a valid grouped conv: same groups, fewer channels each
        assert after.weight.shape == (after.out_channels, after.in_channels // after.groups, *before.kernel_size)
        assert after.in_channels % after.groups == 0 and after.out_channels % after.groups == 0
        shrunk += after.in_channels < before.in_channels and after.out_channels < before.out_channels
        # which input channels each conv group kept: not the same offsets everywhere (what
        # Torch-Pruning's own grouped-conv pruning assumes), so the per-group gather is exercised
        kept = proj.kept_channels_[proj.graph.in_group(name).index].view(before.groups, -1)
        own_offsets |= any(not torch.equal(kept[0], row) for row in kept[1:])
    assert shrunk == len(grouped) and own_offsets
    assert _macs(compact, x) < 0.5 * _macs(dense, x)


@pytest.mark.parametrize("multiple", [1, 8])
def test_grouped_kept_counts_follow_the_cells_and_channel_multiple(multiple, randomize_bn):
    dense, _, compact, proj, _ = _pruned("tv:regnet_x_400mf", "filter", 0.3, randomize_bn, multiple)
    for gt in proj.group_targets.values():
        kept = int(proj.kept_channels_[gt.group.index].sum())
        assert kept == proj.group_keep_count(gt) and kept % gt.group.cells == 0
        if gt.group.cells > 1:
            kept_cells = gt.group.cell_of[proj.kept_channels_[gt.group.index]]
            per_cell = torch.bincount(kept_cells, minlength=gt.group.cells)
            assert bool((per_cell == kept // gt.group.cells).all())
            if multiple == 8 and 4 * math.lcm(gt.group.cells, 8) <= gt.group.size:
                assert kept % 8 == 0
    # stage 1 of regnet_x_400mf: 32 channels in 2 groups of 16; 30% of 32 -> 23 kept, rounded to 24
    b = compact.get_submodule("trunk_output.block1.block1-0.f.b.0")
    assert (b.in_channels, b.out_channels, b.groups) == (24, 24, 2)
    assert dense.get_submodule("trunk_output.block1.block1-0.f.b.0").in_channels == 32


def test_shufflenet_branches_prune_and_shuffled_channels_do_not(randomize_bn):
    dense, _, compact, proj, x = _pruned("tv:shufflenet_v2_x0_5", "filter", 0.5, randomize_bn)
    graph = proj.graph
    for block in ("stage2.1", "stage3.4", "stage4.3"):
        inner = graph.out_group(f"{block}.branch2.0")
        assert inner.prunable and {f"{block}.branch2.3", f"{block}.branch2.5"} <= set(inner.layer_names())
        before = dense.get_submodule(f"{block}.branch2.0").out_channels
        assert compact.get_submodule(f"{block}.branch2.0").out_channels == before // 2
        assert compact.get_submodule(f"{block}.branch2.3").out_channels == before // 2  # depthwise
        assert compact.get_submodule(f"{block}.branch2.5").in_channels == before // 2
        # the block's output channels go through concat, channel_shuffle and chunk: kept whole
        shuffled = graph.out_group(f"{block}.branch2.5")
        assert not shuffled.prunable and "channel shuffle" in shuffled.reason
        assert compact.get_submodule(f"{block}.branch2.5").out_channels == before
    assert _macs(compact, x) < _macs(dense, x)
    with pytest.raises(ConfigError, match="channel shuffle"):
        Projector(dense, graph, {"stage3.4.branch2.5": LayerTarget("filter", 0.5)})


def test_tracing_shufflenet_leaves_the_model_as_it_was():
    model = create_model("tv:shufflenet_v2_x0_5", in_channels=3, num_classes=10, image_size=(64, 64)).eval()
    ChannelGraph(model, torch.zeros(1, 3, 64, 64))
    assert all("forward" not in m.__dict__ for m in model.modules())  # the trace-time forward is gone


def test_layers_command_lists_shufflenet(capsys):
    from autoprune.cli import main

    assert main(["layers", "--model", "tv:shufflenet_v2_x0_5", "--dataset", "digits", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["stage3.0.branch2.0"]["filters_prunable"] and rows["stage3.0.branch2.5"]["channels_prunable"]
    assert not rows["stage3.0.branch2.5"]["filters_prunable"]
