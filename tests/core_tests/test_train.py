from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.checkpoint import load_checkpoint
from autoprune.cli import main
from autoprune.errors import NonFiniteLossError
from autoprune.pipeline import train_baseline
from autoprune.train import run_epochs


def test_same_seed_same_checkpoint_on_cpu(tmp_path):
    a, _ = train_baseline("lenet5", "digits", epochs=1, device=torch.device("cpu"), seed=3, out=tmp_path / "a.pt")
    b, _ = train_baseline("lenet5", "digits", epochs=1, device=torch.device("cpu"), seed=3, out=tmp_path / "b.pt")
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    back = load_checkpoint(tmp_path / "a.pt")
    assert back.model == "lenet5" and back.dataset == "digits" and back.metrics == a.metrics
    assert {"val_acc", "test_acc"} <= set(back.metrics)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file of the atomic write is left


class _TurnsNan(nn.Module):
    """A linear classifier whose outputs become NaN from its ``at``-th training call on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.fc, self.at, self.calls = nn.Linear(4, 2), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.fc(x)
        return out * float("nan") if self.calls >= self.at else out


@pytest.mark.parametrize(("at", "epoch"), [(1, 1), (12, 2), (25, 3)])
def test_a_nan_loss_stops_training_at_the_step_it_appears(at, epoch):
    data = TensorDataset(torch.randn(80, 4), torch.arange(80) % 2)  # 10 steps per epoch at batch 8
    model = _TurnsNan(at)
    with pytest.raises(NonFiniteLossError, match=rf"^loss became nan at step {at} \(epoch {epoch}\) of ADMM"):
        run_epochs(model, data, device=torch.device("cpu"), epochs=10, lr=0.1, batch_size=8,
                   description="ADMM iteration 1/2")
    assert model.calls == at  # not the 100 steps of the schedule
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # no NaN step was applied


def test_train_cli_json(capsys, tmp_path):
    out = tmp_path / "ck.pt"
    assert main(["train", "--model", "digits-cnn", "--epochs", "3", "--device", "cpu", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checkpoint"] == str(out) and out.is_file()
    assert res["val_acc"] > 0.5 and res["test_acc"] > 0.5  # 3 epochs already learn digits


@pytest.mark.slow
def test_torchvision_resnet18_on_a_small_npz(capsys, tmp_path, monkeypatch):
    """train and prune work on tv:resnet18 with a user's npz file."""
    monkeypatch.chdir(tmp_path)  # whatever a command writes relative to the current folder stays here
    rng = np.random.default_rng(0)
    y = np.arange(80) % 4
    x = (rng.random((80, 3, 32, 32)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)  # learnable: brightness
    data = tmp_path / "tiny.npz"
    np.savez(data, x=x, y=y)
    ckpt = tmp_path / "r18.pt"
    assert main(["train", "--model", "tv:resnet18", "--dataset", f"npz:{data}", "--epochs", "2", "--batch-size", "16",
                 "--device", "cpu", "--out", str(ckpt), "--json"]) == 0
    capsys.readouterr()
    cfg = tmp_path / "r18.yaml"
    cfg.write_text(f"model: tv:resnet18\ndataset: npz:{data}\ncheckpoint: {ckpt}\n"
                   "layers:\n  'layer*.0.conv1': {type: filter, rate: 0.5}\n  'layer4.1.conv2': {type: channel, rate: 0.5}\n"
                   "  'layer3.1.conv1': {type: shape, rate: 0.8}\n"
                   "admm: {iters: 2, steps: 3, rho: 1.0, retrain_epochs: 1, batch_size: 16}\n")
    assert main(["prune", "--config", str(cfg), "--device", "cpu", "--json", "--out", str(tmp_path / "p"),
                 "--no-tracking"]) == 0
    s = json.loads(capsys.readouterr().out)
    layers = {layer["name"]: layer for layer in s["layers"]}
    assert layers["layer2.0.conv1"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert layers["layer3.1.conv1"]["sparsity"] >= 0.8 - 1e-3
    assert s["pruned"]["macs"] < s["dense"]["macs"]
