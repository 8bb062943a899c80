"""Shared fixtures: quiet MLflow, a trained digits baseline cached for the session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory):  # noqa: ANN001, ANN201
    """A digits-cnn trained on digits once per test session (path to its checkpoint)."""
    import torch

    from autoprune.pipeline import train_baseline

    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("baseline") / "digits-cnn-digits.pt"
    ckpt, path = train_baseline("digits-cnn", "digits", device=torch.device("cpu"), seed=0, out=path)
    return path, ckpt


def _randomize_bn(model) -> None:  # noqa: ANN001
    """Give every BatchNorm non-trivial statistics and affine parameters (seeded), so that
    equivalence tests notice a channel whose BN shift was not removed with it."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.2
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5


@pytest.fixture
def randomize_bn():  # noqa: ANN201
    return _randomize_bn
