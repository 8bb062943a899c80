"""BatchNorm folding (the deployed form latency is measured in) and measurement side effects."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.fold import fold_batchnorm
from autoprune.latency import LatencySettings, compare_latency, measure_latency
from autoprune.models import create_model


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_resnet18_folds_every_batchnorm_with_equal_outputs():
    torch.manual_seed(0)
    model = create_model("tv:resnet18", in_channels=3, num_classes=10, image_size=(32, 32)).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, n = fold_batchnorm(model, x)
    assert n == n_bn == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn


class SharedConvOutput(nn.Module):
    """The conv's output feeds both the BatchNorm and a skip path: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):  # noqa: ANN001, ANN201
        y = self.conv(x)
        return self.bn(y) + y


def test_a_conv_output_read_elsewhere_is_not_folded():
    model = SharedConvOutput().eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    folded, n = fold_batchnorm(model, x)
    assert n == 0
    assert isinstance(folded.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_measuring_leaves_the_callers_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8)).train()
    before = copy.deepcopy(model.state_dict())
    settings = LatencySettings(batch_size=4, dtype="bf16", channels_last=True, fold_bn=True, warmup=1, repeats=2,
                               min_seconds=0.0)
    r = measure_latency(model, (1, 8, 8), device=torch.device("cpu"), settings=settings)
    compare_latency({"a": model}, (1, 8, 8), device=torch.device("cpu"), settings=settings)
    assert r.fold_bn and r.channels_last and r.dtype == "bf16" and r.repeats == 2  # what it measured, as asked
    assert model.training  # not switched to eval
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # its parameters are still ordinary tensors: training works after a measurement
    loss = model(torch.randn(3, 1, 8, 8)).sum()
    loss.backward()
    assert model.features[0].weight.grad is not None
