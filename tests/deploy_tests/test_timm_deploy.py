"""A compacted timm model saves, reloads and exports (torch.export, ONNX) with the masked outputs:
modules timm subclasses (LayerNorm2d, BatchNormAct2d), pruned in place, are stored by their shapes."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from autoprune.admm import apply_masks
from autoprune.bench import parse_uniform, uniform_targets
from autoprune.compact import compact_model
from autoprune.deploy import load_pruned, save_registry_model
from autoprune.deploy.programs import check_programs, export_programs
from autoprune.groups import ChannelGraph
from autoprune.models import create_model
from autoprune.projection import Projector

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                 reason="timm is not installed (pip install -e '.[timm]')"),
              pytest.mark.slow]


@pytest.mark.parametrize(("family", "subclass"), [("convnext_atto", "LayerNorm2d"),
                                                  ("mobilenetv3_large_100", "BatchNormAct2d")])
def test_compacted_timm_model_saves_reloads_and_exports(family, subclass, tmp_path, randomize_bn) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    name, size = f"timm:{family}", 32
    model = create_model(name, in_channels=3, num_classes=10, image_size=(size, size)).eval()
    randomize_bn(model)
    x = torch.randn(4, 3, size, size)
    graph = ChannelGraph(model, x[:1])
    projector = Projector(model, graph, uniform_targets(graph, parse_uniform("filter:0.3")), channel_multiple=8)
    apply_masks(model, projector.hard_masks())
    compact = compact_model(copy.deepcopy(model), projector, x[:1], device=torch.device("cpu"),
                            force_form="dense").model.eval()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(compact(x), ref, rtol=1e-3, atol=1e-4 * max(1.0, float(ref.abs().max())))

    save_registry_model(compact, tmp_path, base={"model": name, "in_channels": 3, "num_classes": 10, "image_size": [size] * 2})
    arch = json.loads((tmp_path / "architecture.json").read_text())
    reshaped = [n for n in arch["attributes"] if type(compact.get_submodule(n)).__name__ == subclass]
    assert arch["format_version"] == 2 and reshaped  # the subclass has no spec: it is stored by its shapes
    loaded = load_pruned(tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in compact.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), compact(x), rtol=0, atol=0)

    exports = export_programs(compact, x, tmp_path)
    assert isinstance(exports["pt2"], Path) and isinstance(exports["onnx"], Path), exports
    checks = check_programs(exports, compact, x)
    assert checks["pt2_max_abs_diff"] <= 1e-4 and checks["onnx_max_abs_diff"] <= 1e-4, checks
