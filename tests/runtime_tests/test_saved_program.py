"""The deployable folder times its own exported program in the runtime (issue 24, item 3): the
``model.onnx`` it saved, loaded back by ONNX Runtime or OpenVINO, beside the dense model's export."""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.config import LayerTarget, PruneConfig
from autoprune.deploy import build_deployable
from autoprune.latency import LatencySettings
from autoprune.runtimes import get_runtime, time_saved_program

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pruned(digits_baseline):  # noqa: ANN001, ANN201
    from autoprune.pipeline import run_prune

    # digits-cnn, half the filters of every conv: 3.15x fewer MACs (as the runtime bench tests)
    config = PruneConfig(model="digits-cnn", dataset="digits", checkpoint=str(digits_baseline[0]),
                         layers={"features.*": LayerTarget("filter", 0.5)})
    return run_prune(config, method="magnitude", device=CPU, overrides={"iters": 1, "epochs": 0.2,
                                                                        "retrain_epochs": 0.2})


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_the_saved_onnx_file_is_timed_in_its_runtime(pruned, tmp_path, name: str) -> None:  # noqa: ANN001
    runtime = get_runtime(name)
    why = runtime.missing() or runtime.unsupported(CPU, "fp32")
    if why:
        pytest.skip(f"{name}: {why}")
    latency = LatencySettings(batch_size=64, repeats=9, runtime=name)
    built = build_deployable(pruned, tmp_path / "out", device=CPU, latency=latency)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    saved = report["saved_program"]
    assert saved["file"] == "model.onnx" and saved["batch"] == 64
    assert saved["runtime_detail"] == report["runtime_detail"] and saved["runtime_detail"].startswith(f"{name} ")
    assert saved["dense_ms"] > 0 and saved["saved_ms"] > 0
    # 3.15x fewer MACs: the file as saved is faster than dense's export, as the in-memory export was
    assert saved["speedup"] > 1.3 and report["speedup"] > 1.3
    assert built.report.saved_program == saved
    card = (tmp_path / "out" / "report.md").read_text()
    assert "As saved: `model.onnx` is" in card and f"{saved['speedup']:.2f}x" in card


def test_torch_runs_the_module_so_its_folder_times_no_file(pruned, tmp_path) -> None:  # noqa: ANN001
    built = build_deployable(pruned, tmp_path / "out", device=CPU,
                             latency=LatencySettings(batch_size=8, repeats=3, runtime="torch"))
    assert built.report.saved_program is None
    assert "saved_program" not in json.loads((tmp_path / "out" / "report.json").read_text())
    assert time_saved_program(torch.nn.Linear(2, 2), tmp_path / "out", (2,), device=CPU,
                              settings=LatencySettings(runtime="torch")) is None
