"""The deployable model: build it from a prune, save, reload without search code, export."""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.compact import compact_model
from autoprune.compact.kernels import CSRConv2d, CSRLinear, SemiStructuredLinear, ShapeSparseConv2d
from autoprune.config import LayerTarget, PruneConfig
from autoprune.deploy import (
    build_deployable,
    describe_architecture,
    export_programs,
    load_pruned,
    save_registry_model,
)
from autoprune.errors import UserError
from autoprune.latency import LatencySettings
from autoprune.models import create_model
from autoprune.sparsity import get_sparsity
from autoprune.tracking import log_model_to_mlflow
from autoprune.train import evaluate

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
# few repeats: these tests check behaviour, not timings
QUICK = LatencySettings(batch_size=32, warmup=2, repeats=6, min_seconds=0.05)
BASE = {"model": "digits-cnn", "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}
FILES = ("model.pt", "architecture.json", "model.pt2", "model.onnx", "report.json", "report.md")


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(b.abs().max())))


@pytest.fixture(scope="module")
def pruned(digits_baseline):  # noqa: ANN001, ANN201
    from autoprune.pipeline import run_prune

    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # as tests/conftest.py's THREADS
    config = PruneConfig(
        model="digits-cnn", dataset="digits", checkpoint=str(digits_baseline[0]),
        layers={
            "features.0": LayerTarget("shape", 0.6),
            "features.3": LayerTarget("filter", 0.5),
            "features.7": LayerTarget("filter", 0.5),
            "features.10": LayerTarget("filter", 0.5),
            "classifier.1": LayerTarget("irregular", 0.8),
        },
    )
    return run_prune(config, device=CPU, overrides={"iters": 1, "epochs": 0.2, "retrain_epochs": 0.2})


@pytest.fixture(scope="module")
def deployed(pruned, tmp_path_factory):  # noqa: ANN001, ANN201
    out = tmp_path_factory.mktemp("deploy") / "digits"
    report = build_deployable(pruned, out, device=CPU, latency=QUICK).to_dict(with_out_dir=True)
    return out, report


@pytest.fixture(scope="module")
def val_batch(pruned):  # noqa: ANN001, ANN201
    from autoprune.data import make_loader

    x, _ = next(iter(make_loader(pruned.splits.val, batch_size=64, shuffle=False)))
    return x


# -- the folder and its report -------------------------------------------------------------


def test_folder_holds_weights_architecture_programs_and_report(deployed) -> None:
    out, report = deployed
    for name in FILES:
        assert (out / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no partial folder left behind
    assert json.loads((out / "report.json").read_text()) == json.loads(
        json.dumps({k: v for k, v in report.items() if k != "out_dir"}, default=str))
    for side in ("dense", "pruned"):
        for key in ("test_acc", "val_acc", "latency_ms", "latency_p90_ms", "macs", "params"):
            assert isinstance(report[side][key], (int, float)), (side, key)
    # dense and pruned timed side by side: the speedup is the median of the per-round ratios
    rounds = zip(report["latency"]["dense"]["rounds_ms"], report["latency"]["pruned"]["rounds_ms"], strict=True)
    assert report["speedup"] == pytest.approx(statistics.median(d / p for d, p in rounds))
    assert report["pruned"]["macs"] < report["dense"]["macs"]
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert report["device_description"].startswith("cpu:") and report["dtype"] == "fp32"
    assert report["batch_size"] == 32
    kernels = {row["name"]: row["kernel"] for row in report["layers"]}
    assert kernels["features.3"] == "dense" and kernels["features.0"] in ("dense", "shape-gemm")
    assert kernels["classifier.1"] in ("dense", "csr")
    assert set(report["files"].values()) == set(FILES)
    md = (out / "report.md").read_text()
    assert "Speedup" in md and "features.0" in md


def test_weights_are_a_plain_cpu_state_dict(deployed) -> None:
    out, _ = deployed
    state = torch.load(out / "model.pt", weights_only=True)
    assert isinstance(state, dict) and state
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["base"] == BASE
    specs = {m["name"]: m for m in arch["modules"]}
    assert specs["features.3"]["kind"] == "Conv2d" and specs["features.3"]["args"]["out_channels"] == 32
    assert specs["features.4"]["kind"] == "BatchNorm2d" and specs["features.4"]["args"]["num_features"] == 32
    assert specs["classifier.1"]["args"]["in_features"] == 256
    assert "features.1" not in specs and "classifier.4" not in specs  # unchanged modules are not listed


def test_reloaded_model_has_the_reported_accuracy_and_the_masked_outputs(deployed, pruned, val_batch) -> None:
    out, report = deployed
    model = load_pruned(out)
    assert not model.training
    assert evaluate(model, pruned.splits.test, device=CPU) == report["pruned"]["test_acc"]
    assert report["checks"]["reloaded_test_acc"] == report["pruned"]["test_acc"]
    masked = copy.deepcopy(pruned.model).cpu().eval()
    with torch.no_grad():
        _close(model(val_batch), masked(val_batch))
    import autoprune

    again = autoprune.load_pruned(out / "architecture.json")  # the package-level shortcut, a file path
    with torch.no_grad():
        assert torch.equal(again(val_batch), model(val_batch))


def test_as_timed_form_folds_batchnorm_and_is_channels_last(deployed, val_batch, tmp_path) -> None:
    out, report = deployed
    plain = load_pruned(out)
    timed = load_pruned(out, as_timed=True)
    assert report["fold_bn"] and report["channels_last"]  # what the latency was measured with
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in timed.modules())
    convs = [m for m in timed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not timed.training and not any(p.requires_grad for p in timed.parameters())
    with torch.no_grad():
        _close(timed(val_batch.contiguous(memory_format=torch.channels_last)), plain(val_batch))
    # a folder measured without folding keeps its BatchNorms
    copy_dir = tmp_path / "nofold"
    shutil.copytree(out, copy_dir)
    r = json.loads((copy_dir / "report.json").read_text())
    (copy_dir / "report.json").write_text(json.dumps({**r, "fold_bn": False, "channels_last": False}))
    kept = load_pruned(copy_dir, as_timed=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules())
    assert not kept.features[3].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_are_really_gone(deployed) -> None:
    out, report = deployed
    model = load_pruned(out)
    dense = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
    assert [model.features[i].out_channels for i in (0, 3, 7, 10)] == [32, 32, 64, 64]
    assert model.features[4].num_features == 32 and model.features[11].num_features == 64
    assert model.features[7].in_channels == 32 and model.classifier[1].in_features == 256
    n = sum(p.numel() for p in model.parameters())
    assert n < sum(p.numel() for p in dense.parameters()) / 2
    assert report["pruned"]["params"] >= n  # CSR weights are buffers, counted too


def test_onnx_matches_torch_with_another_batch_size(deployed, val_batch) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX file is not checked")
    out, report = deployed
    assert report["exports"]["onnx"]["batch"] == "dynamic"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = val_batch[:5]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        _close(torch.from_numpy(got), load_pruned(out)(x))
    assert report["checks"]["onnx_max_abs_diff"] < 1e-3


def test_torch_export_program_loads_and_matches(deployed, val_batch) -> None:
    out, report = deployed
    program = torch.export.load(str(out / "model.pt2"))
    x = val_batch[:3]
    with torch.no_grad():
        _close(program.module()(x), load_pruned(out)(x))
    assert report["exports"]["pt2"]["batch"] == "dynamic"


def test_load_pruned_imports_no_search_code(deployed) -> None:
    out, _ = deployed
    code = (
        "import sys; import autoprune.deploy as d; m = d.load_pruned(sys.argv[1], as_timed=True); "
        "bad = [k for k in sys.modules if k.startswith(('autoprune.study', 'optuna', 'mlflow'))]; "
        "assert not bad, bad; print(type(m).__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DigitsCNN"


# -- the output folder ---------------------------------------------------------------------


def test_non_empty_folder_is_refused_without_force(deployed, pruned) -> None:
    out, _ = deployed
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match=r"output folder .* exists and is not empty; use --force to overwrite or "
                                        r"pick another --out"):
        build_deployable(pruned, out, device=CPU, latency=QUICK)
    assert sorted(p.name for p in out.iterdir()) == before


def test_force_replaces_the_folder_csr_kernel_round_trips_and_exports_densely(pruned, tmp_path, val_batch) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier run")
    report = build_deployable(pruned, out, device=CPU, latency=QUICK, force=True,
                              force_form="csr").to_dict(with_out_dir=True)
    assert not (out / "old.txt").exists() and all((out / f).is_file() for f in FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["deploy"]
    kernels = {row["name"]: row["kernel"] for row in report["layers"]}
    assert kernels["classifier.1"] == "csr"
    model = load_pruned(out)
    assert isinstance(model.classifier[1], CSRLinear)
    assert evaluate(model, pruned.splits.test, device=CPU) == report["pruned"]["test_acc"]
    for key in ("pt2", "onnx"):
        assert "classifier.1" in report["exports"][key]["note"]  # exported as dense masked weights
    program = torch.export.load(str(out / "model.pt2"))
    with torch.no_grad():
        _close(program.module()(val_batch), model(val_batch))


def test_kernels_chosen_in_bf16_are_stored_in_fp32(pruned, tmp_path) -> None:
    bf16 = LatencySettings(batch_size=32, dtype="bf16", warmup=1, repeats=3, min_seconds=0.01)
    report = build_deployable(pruned, tmp_path / "bf16", device=CPU, latency=bf16,
                              force_form="shape-gemm").to_dict(with_out_dir=True)
    assert report["dtype"] == "bf16" and report["stored_dtype"] == "fp32"
    model = load_pruned(tmp_path / "bf16")
    assert isinstance(model.features[0], ShapeSparseConv2d) and model.features[0].weight.dtype == torch.float32
    assert evaluate(model, pruned.splits.test, device=CPU) == report["pruned"]["test_acc"]


def test_a_failure_leaves_nothing_behind(pruned, tmp_path, monkeypatch) -> None:
    import autoprune.deploy.build as deploy  # where build_deployable looks the exporter up

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("disk full")

    monkeypatch.setattr(deploy, "export_programs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_deployable(pruned, tmp_path / "deploy", device=CPU, latency=QUICK, force_form="dense")
    assert list(tmp_path.iterdir()) == []


# -- kernel forms, save/load and export without the build ----------------------------------


def test_shape_gemm_form_saves_reloads_and_exports(pruned, tmp_path, val_batch) -> None:
    masked = copy.deepcopy(pruned.model).cpu().eval()
    model = compact_model(copy.deepcopy(masked), pruned.projector, val_batch[:1], device=CPU,
                          force_form="shape-gemm").model.eval()
    assert isinstance(model.features[0], ShapeSparseConv2d)
    save_registry_model(model, tmp_path, base=BASE)
    loaded = load_pruned(tmp_path)
    assert isinstance(loaded.features[0], ShapeSparseConv2d)
    with torch.no_grad():
        ref = masked(val_batch)
        _close(loaded(val_batch), ref)
    files = export_programs(loaded, val_batch[:4], tmp_path)
    assert files["pt2"] == tmp_path / "model.pt2" and files["onnx"] == tmp_path / "model.onnx"
    assert "pt2_note" not in files and "onnx_note" not in files  # the gather kernel itself exports
    with torch.no_grad():
        _close(torch.export.load(str(files["pt2"])).module()(val_batch[:7]), ref[:7])
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: val_batch[:7].numpy()})[0]
    _close(torch.from_numpy(got), ref[:7])


@pytest.mark.parametrize("kind", ["shape", "irregular-conv", "irregular-linear"])
def test_kernel_spec_round_trip(kind) -> None:
    torch.manual_seed(0)
    if kind == "irregular-linear":
        layer = nn.Linear(24, 10)
        mask = get_sparsity("irregular").mask(layer.weight, 0.8)
        module: nn.Module = CSRLinear.from_linear(layer, mask)
        x = torch.randn(3, 24)
    else:
        layer = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        mask = get_sparsity("shape" if kind == "shape" else "irregular").mask(layer.weight, 0.7)
        if kind == "shape":
            module = ShapeSparseConv2d.from_conv(layer, mask.reshape(6, -1).any(0))
        else:
            module = CSRConv2d.from_conv(layer, mask)
        x = torch.randn(2, 4, 9, 9)
    spec = module.spec()
    assert json.loads(json.dumps(spec)) == spec  # plain data
    rebuilt = type(module).from_spec(spec)
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))


def test_semi_structured_layer_is_saved_as_its_dense_equivalent(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8)).eval()
    head = model.classifier[4]
    mask = get_sparsity("2:4").mask(head.weight, None)
    # a CPU stand-in: the constructor takes any weight (the real one is a CUDA 2:4 tensor)
    model.classifier[4] = SemiStructuredLinear(head.weight.detach() * mask, head.bias.detach(), 128, 10)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    save_registry_model(model, tmp_path, base=BASE)
    loaded = load_pruned(tmp_path)
    assert type(loaded.classifier[4]) is nn.Linear
    with torch.no_grad():
        _close(loaded(x), ref)


def test_an_undescribable_module_is_named_in_the_error(tmp_path) -> None:
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
    model.features[2] = nn.LeakyReLU()
    with pytest.raises(UserError, match=r"module 'features.2' \(LeakyReLU\)"):
        describe_architecture(model, base=BASE)
    # saving it fails the same way, before anything is written
    with pytest.raises(UserError, match=r"module 'features.2' \(LeakyReLU\)"):
        save_registry_model(model, tmp_path / "out", base=BASE)
    assert not (tmp_path / "out").exists()


def test_load_pruned_refuses_a_folder_without_a_model(tmp_path) -> None:
    with pytest.raises(UserError, match="holds no pruned model"):
        load_pruned(tmp_path)
    save_registry_model(create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8)), tmp_path, base=BASE)
    arch = json.loads((tmp_path / "architecture.json").read_text())
    arch["modules"] = [{"name": "features.3", "kind": "Conv2d",
                        "args": {"in_channels": 32, "out_channels": 16, "kernel_size": [3, 3], "stride": [1, 1],
                                 "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bias": False,
                                 "padding_mode": "zeros"}}]
    (tmp_path / "architecture.json").write_text(json.dumps(arch))
    with pytest.raises(UserError, match="do not fit its architecture.json"):
        load_pruned(tmp_path)


# -- MLflow ---------------------------------------------------------------------------------


def test_mlflow_unreachable_warns_and_returns_none(deployed, val_batch) -> None:
    out, report = deployed
    warnings: list[str] = []
    run_id = log_model_to_mlflow(load_pruned(out), val_batch[:2], "http://127.0.0.1:9", "deploy", "r", report,
                                 warn=warnings.append)
    assert run_id is None
    assert len(warnings) == 1 and "unreachable" in warnings[0]


def _mlflow_model(uri: str, run_id: str) -> nn.Module:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)


def test_mlflow_logs_a_loadable_model_as_a_program_without_code(deployed, val_batch, tmp_path) -> None:
    import mlflow

    from autoprune.tracking import MODEL_FORMAT_NOTE_TAG, MODEL_FORMAT_TAG

    out, report = deployed
    model = load_pruned(out)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warnings: list[str] = []
    run_id = log_model_to_mlflow(model, val_batch[:2], uri, "deploy", "digits", report, warn=warnings.append)
    assert run_id is not None, warnings
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.metrics["speedup"] == pytest.approx(report["speedup"])
    assert run.data.tags[MODEL_FORMAT_TAG] == "pt2"  # a torch.export program: no pickle, no code
    csr = [row["name"] for row in report["layers"] if row["kernel"] == "csr"]
    assert (MODEL_FORMAT_NOTE_TAG in run.data.tags) == bool(csr)  # sparse layers logged densely are named
    again = _mlflow_model(uri, run_id)
    with torch.no_grad():
        _close(again(val_batch), model(val_batch))


def test_mlflow_pickles_a_model_torch_export_cannot_export_and_says_why(tmp_path) -> None:
    import mlflow

    from autoprune.tracking import MODEL_FORMAT_NOTE_TAG, MODEL_FORMAT_TAG

    class DataDependent(nn.Module):  # control flow on values: torch.export refuses it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    model = DataDependent().eval()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warnings: list[str] = []
    run_id = log_model_to_mlflow(model, torch.ones(2, 4), uri, "deploy", "fallback", {}, warn=warnings.append)
    assert run_id is not None, warnings
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    assert tags[MODEL_FORMAT_TAG] == "pickle"
    assert tags[MODEL_FORMAT_NOTE_TAG].startswith("pickled: torch.export cannot export this model")
    with torch.no_grad():
        x = torch.ones(3, 4)
        assert torch.equal(_mlflow_model(uri, run_id)(x), model(x))