"""A deployable folder written by autoprune before the renovation (commit 0a467df) still loads.

``tests/fixtures/deployable_v1/`` holds ``model.pt``, ``architecture.json`` and ``report.json``
of a pruned digits-cnn (filter-pruned convs, so Conv2d/BatchNorm2d specs, and a CSRLinear
kernel), and ``expected.json``: what that autoprune's ``load_pruned`` gave for a fixed input,
plain and ``as_timed``. Its README says how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoprune.deploy import load_pruned
from autoprune.pipeline import load_dataset
from autoprune.train import evaluate

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "deployable_v1"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((V1 / "expected.json").read_text())


def _input() -> torch.Tensor:
    return (torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8) % 17) / 16.0


def test_the_v1_folder_loads_with_the_same_modules_and_outputs(expected) -> None:
    model = load_pruned(V1)
    modules = {n: type(m).__name__ for n, m in model.named_modules() if n.count(".") == 1}
    assert modules == expected["modules"]
    with torch.no_grad():
        torch.testing.assert_close(model(_input()), torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-6)


def test_the_v1_folder_loads_as_timed_with_the_same_outputs(expected) -> None:
    timed = load_pruned(V1, as_timed=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in timed.modules())  # report.json: fold_bn
    x = _input().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(timed(x), torch.tensor(expected["logits_as_timed"]), rtol=1e-5, atol=1e-6)


def test_the_v1_folder_has_its_reported_test_accuracy(expected) -> None:
    report = json.loads((V1 / "report.json").read_text())
    assert report["pruned"]["test_acc"] == expected["test_acc"]
    acc = evaluate(load_pruned(V1), load_dataset("digits").test, device=torch.device("cpu"))
    assert acc == expected["test_acc"]
