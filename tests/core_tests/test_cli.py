"""The command line as a user meets it: results, and one clear line + exit 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def _config(tmp_path: Path, ckpt: Path | str | None, layers: str = '"features.*": {type: filter, rate: 0.5}',
            extra: str = "") -> Path:
    path = tmp_path / "cfg.yaml"
    ck = f"checkpoint: {ckpt}\n" if ckpt is not None else ""
    path.write_text(f"model: digits-cnn\ndataset: digits\n{ck}layers:\n  {layers}\n"
                    f"admm: {{iters: 1, steps: 2, retrain_epochs: 0.1}}\n{extra}")
    return path


def _one_error_line(capsys, code: int) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoprune: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_model_real_process():
    proc = run_cli("train", "--model", "resnet-999", "--epochs", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown model 'resnet-999'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--model", "digits-cnn", "--dataset", "nosuchdata"], "unknown dataset 'nosuchdata'"),
        (["train", "--model", "nosuch-net"], "unknown model 'nosuch-net'"),
        (["train", "--model", "tv:resnet999"], "tv:resnet999"),
        (["layers", "--model", "nosuch-net"], "unknown model"),
    ],
)
def test_unknown_names(capsys, argv, fragment):
    line = _one_error_line(capsys, main(argv))
    assert fragment in line


@pytest.mark.parametrize(("argv", "fragment"), [
    (["search", "--budget", "-1%"], "--budget -1% lies outside (0, 100%)"),
    (["search", "--trials", "-3"], "--trials must be at least 1. Got -3 instead."),
    (["bench", "--model", "digits-cnn", "--uniform", "filter:0.5", "--batch-size", "-8"], "at least 1"),
])
def test_negative_values_reach_autoprunes_own_message(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)  # argparse's usage would exit with SystemExit(2) and no message of ours
    line = _one_error_line(capsys, main([*argv, "--runs-dir", "r"] if argv[0] == "search" else argv))
    assert fragment in line
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(capsys):
    line = _one_error_line(capsys, main(["train", "--model", "digits-cnn", "--device", "cuda"]))
    assert "no usable CUDA device" in line


def test_bad_npz(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 8, 8), dtype=np.uint8), labels=np.zeros(10, dtype=np.int64))
    line = _one_error_line(capsys, main(["train", "--model", "digits-cnn", "--dataset", f"npz:{bad}"]))
    assert "'y'" in line and "bad.npz" in line


@pytest.mark.parametrize(
    "layers, fragment",
    [
        ('"features.*": {type: blocky, rate: 0.5}', "unknown sparsity type 'blocky'"),
        ('"features.*": {type: filter, rate: 1.2}', "must be in [0, 1)"),
        ('"features.*": {type: filter, rate: -0.1}', "must be in [0, 1)"),
        ('"conv*": {type: filter, rate: 0.5}', "'conv*' matches no prunable layer"),
    ],
)
def test_bad_targets(capsys, tmp_path, digits_baseline, layers, fragment):
    ckpt, _ = digits_baseline
    line = _one_error_line(capsys, main(["prune", "--config", str(_config(tmp_path, ckpt, layers)),
                                         "--device", "cpu", "--out", str(tmp_path / "out")]))
    assert fragment in line
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_and_foreign_checkpoints(capsys, tmp_path):
    line = _one_error_line(capsys, main(["prune", "--config", str(_config(tmp_path, tmp_path / "nope.pt"))]))
    assert "does not exist" in line
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    line = _one_error_line(capsys, main(["prune", "--config", str(_config(tmp_path, foreign))]))
    assert "not written by 'autoprune train'" in line
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    line = _one_error_line(capsys, main(["prune", "--config", str(_config(tmp_path, junk))]))
    assert "cannot be read" in line


def test_checkpoint_of_another_model_is_refused(capsys, tmp_path, digits_baseline):
    ckpt, _ = digits_baseline
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: lenet5\ndataset: digits\ncheckpoint: {ckpt}\nlayers: {{'*': {{type: filter, rate: 0.5}}}}\n")
    line = _one_error_line(capsys, main(["prune", "--config", str(path)]))
    assert "holds model 'digits-cnn'" in line


def test_unknown_config_key(capsys, tmp_path, digits_baseline):
    ckpt, _ = digits_baseline
    line = _one_error_line(capsys, main(["prune", "--config", str(_config(tmp_path, ckpt, extra="colour: red\n"))]))
    assert "unknown key 'colour'" in line


def test_layers_json_lists_coupling(capsys):
    assert main(["layers", "--model", "resnet20", "--dataset", "digits", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["conv1"]["kind"] == "conv" and rows["conv1"]["weight_shape"] == [16, 1, 3, 3]
    assert "layer1.0.conv2" in rows["conv1"]["coupled"]  # the residual stream of stage 1
    assert rows["fc"]["kind"] == "linear" and rows["fc"]["macs"] == 64 * 10
    assert rows["layer1.0.conv1"]["coupled"] == []


def test_layers_of_a_torchvision_model_use_its_native_input(capsys):
    # without --dataset a torchvision model is traced on its ImageNet input, not digits' 1×8×8
    assert main(["layers", "--model", "tv:alexnet", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["features.0"]["weight_shape"] == [64, 3, 11, 11]
    assert rows["classifier.6"]["weight_shape"] == [1000, 4096]
    assert main(["layers", "--model", "tv:alexnet"]) == 0
    assert "3×224×224 native inputs" in capsys.readouterr().out  # the input used is printed
    assert main(["layers", "--model", "digits-cnn"]) == 0
    assert "(digits inputs)" in capsys.readouterr().out  # autoprune's own models: digits, as before


@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "table"])
def test_a_closed_pipe_ends_quietly(tmp_path, json_flag):
    # `autoprune layers --json | head -1`: the reader goes away; no traceback, no BrokenPipeError
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "layers", "--model", "resnet20", *json_flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    proc.stdout.close()  # closed before anything is written: every write fails
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 1, err  # as Python's docs and rich end on a broken pipe
    assert err == ""


def test_prune_json_and_outputs(capsys, tmp_path, digits_baseline, monkeypatch):
    ckpt, _ = digits_baseline
    monkeypatch.chdir(tmp_path)  # the run is tracked into ./runs/mlflow.db: the test's folder, not the checkout
    out = tmp_path / "out"
    code = main(["prune", "--config", str(_config(tmp_path, ckpt)), "--device", "cpu", "--json", "--out", str(out)])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    assert {"dense", "pruned", "layers", "residuals", "accuracy_drop"} <= set(s)
    assert 0 <= s["pruned"]["val_acc"] <= 1 and 0 <= s["pruned"]["test_acc"] <= 1
    assert s["pruned"]["macs"] < s["dense"]["macs"] and s["pruned"]["params_nonzero"] < s["dense"]["params_nonzero"]
    conv = [layer for layer in s["layers"] if layer["name"].startswith("features.")]
    assert all(layer["type"] == "filter" for layer in conv)
    assert (out / "result.json").is_file() and (out / "masked_model.pt").is_file()
    assert json.loads((out / "result.json").read_text())["pruned"] == s["pruned"]
    assert s["mlflow_run_id"] and (tmp_path / "runs" / "mlflow.db").is_file()
