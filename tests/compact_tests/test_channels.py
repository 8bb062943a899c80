"""Channel compaction: the physically smaller model computes what the masked model computes."""

from __future__ import annotations


import pytest
import torch

from autoprune.admm import apply_masks
from autoprune.bench import uniform_targets
from autoprune.compact import remove_channels
from autoprune.config import LayerTarget
from autoprune.groups import ChannelGraph
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
      "tv:regnet_x_400mf", "tv:efficientnet_b0", "tv:resnext50_32x4d"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", TV)
def test_torchvision_families(model_name, randomize_bn):
    _check(model_name, 64, LayerTarget("filter", 0.3), randomize_bn)
