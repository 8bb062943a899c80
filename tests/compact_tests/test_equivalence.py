"""Every sparsity type compacts every model so that outputs equal the masked model's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autoprune.admm import apply_masks
from autoprune.bench import uniform_targets
from autoprune.compact import compact_model
from autoprune.config import LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.models import create_model, list_models
from autoprune.projection import Projector
from autoprune.sparsity import get_sparsity, list_sparsity_types

TYPES = [t for t in list_sparsity_types() if t != "n:m"] + ["2:4"]
CPU = torch.device("cpu")




def _targets(graph: ChannelGraph, model: nn.Module, type_name: str) -> dict[str, LayerTarget]:
    stype = get_sparsity(type_name)
    rate = None if stype.name == "n:m" else 0.6
    out = uniform_targets(graph, LayerTarget(type_name, rate))
    return {n: t for n, t in out.items() if stype.applies_to(model.get_submodule(n).weight) is None}


def _masked_and_projector(model_name: str, size: int, type_name: str, randomize_bn):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=3, num_classes=10, image_size=(size, size)).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, size, size)
    graph = ChannelGraph(model, x[:1])
    targets = _targets(graph, model, type_name)
    if not targets:
        pytest.skip(f"{type_name} applies to no layer of {model_name} (e.g. K not a multiple of 4 for 2:4)")
    proj = Projector(model, graph, targets)
    apply_masks(model, proj.hard_masks())
    return model, proj, x


FORMS = ["dense", "shape-gemm", "csr"]


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("type_name", TYPES)
def test_compacted_equals_masked(model_name, type_name, randomize_bn):
    size = 8 if model_name in ("digits-cnn", "lenet5") else 16
    masked, proj, x = _masked_and_projector(model_name, size, type_name, randomize_bn)
    with torch.no_grad():
        ref = masked(x)
    used = set()
    for form in FORMS:
        result = compact_model(copy.deepcopy(masked), proj, x[:1], device=CPU, force_form=form)
        used |= {c.form for c in result.choices.values()}
        with torch.no_grad():
            out = result.model.eval()(x)
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max())))
    structured = get_sparsity(type_name).structured
    if type_name in ("shape", "filter+shape"):
        assert "shape-gemm" in used  # the shape kernel really ran
    if type_name == "irregular":
        assert "csr" in used
    if structured is not None:
        n_masked = sum(p.numel() for p in masked.parameters())
        n_compact = sum(p.numel() for p in result.model.parameters())
        assert n_compact < n_masked  # channels were physically removed


TV = ["tv:resnet18", "tv:vgg11_bn", "tv:alexnet", "tv:mobilenet_v2", "tv:densenet121", "tv:googlenet",
      "tv:regnet_x_400mf", "tv:efficientnet_b0", "tv:resnext50_32x4d", "tv:regnet_y_400mf", "tv:shufflenet_v2_x0_5"]


def _tv_cases() -> list[tuple[str, str]]:
    """Every torchvision family with filter pruning (the channel surgery) and one more type
    each, in turn, so that every type meets at least two families: 22 of the 66 pairs
    (the registry models above run every pair; all 66 took 70 s of the suite's 10 minutes)."""
    others = [t for t in TYPES if t != "filter"]
    return [(m, "filter") for m in TV] + [(m, others[i % len(others)]) for i, m in enumerate(TV)]


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "type_name"), _tv_cases())
def test_torchvision_models(model_name, type_name, randomize_bn):
    masked, proj, x = _masked_and_projector(model_name, 64, type_name, randomize_bn)
    with torch.no_grad():
        ref = masked(x)
    # the intra-layer kernel of each type (2:4 is masked dense off CUDA, see test_kernels.py)
    form = {"shape": "shape-gemm", "filter+shape": "shape-gemm", "irregular": "csr"}.get(type_name, "dense")
    result = compact_model(copy.deepcopy(masked), proj, x[:1], device=CPU, force_form=form)
    with torch.no_grad():
        out = result.model.eval()(x)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max())))
    used = {c.form for c in result.choices.values()}
    if form != "dense":
        assert form in used  # the kernel really ran
    if get_sparsity(type_name).structured is not None:  # filter, channel, filter+shape
        assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in masked.parameters())
