"""``timm:NAME``: native input, adaptation to the data, one-line errors; timm without its own setup."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from autoprune.cli import main
from autoprune.errors import UnknownNameError, UserError
from autoprune.models import create_model, native_input

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (pip install -e '.[timm]')")


def _one_error_line(capsys, code: int) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("autoprune: error: "), err
    return err


@needs_timm
def test_native_input_is_the_pretrained_config() -> None:
    native = native_input("timm:convnext_atto")
    assert (str(native), native.num_classes) == ("3×224×224", 1000)
    assert str(native_input("timm:efficientnet_b3")) == "3×288×288"  # its config's input_size, not ImageNet's 224
    assert str(native_input("timm:resnet50.a1_in1k")) == "3×224×224"  # a pretrained tag


@needs_timm
def test_a_timm_model_adapts_to_grey_28x28_data_and_is_untrained_and_seeded() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("timm:mobilenetv3_large_100", in_channels=1, num_classes=10, image_size=(28, 28))
        states.append(model.state_dict())
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and model.get_classifier().out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@needs_timm
def test_unknown_timm_name_is_one_line_with_similar_names(capsys) -> None:  # noqa: ANN001
    with pytest.raises(UnknownNameError, match="unknown timm model 'timm:convnext_attoo'. Similar: timm:convnext_atto"):
        create_model("timm:convnext_attoo", in_channels=3, num_classes=10, image_size=(32, 32))
    line = _one_error_line(capsys, main(["layers", "--model", "timm:convnext_attoo"]))
    assert "timm.list_models()" in line


def test_without_timm_the_message_says_how_to_install_it(capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm gives: ImportError
    with pytest.raises(UserError, match=r"need timm, which is not installed; install it with: pip install -e \"\.\[timm\]\""):
        create_model("timm:convnext_atto", in_channels=3, num_classes=10, image_size=(32, 32))
    _one_error_line(capsys, main(["layers", "--model", "timm:convnext_atto"]))


def test_list_models_says_where_the_timm_names_are(capsys) -> None:  # noqa: ANN001
    assert main(["list", "models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("timm:NAME"))
    assert "timm.list_models(" in line and ".[timm]" in line


def test_a_user_module_that_imports_torchvision_or_timm_is_imported_after_the_workaround(tmp_path) -> None:  # noqa: ANN001
    """In a fresh process (torchvision not yet imported): ``pkg.mod:fn`` whose module imports
    timm or torchvision at its top works on a CPU-only torch with the registry's CUDA torchvision."""
    uses = "timm" if importlib.util.find_spec("timm") is not None else "torchvision"
    (tmp_path / "mynet.py").write_text(textwrap.dedent(f"""
        import {uses}
        from torch import nn

        def build(*, in_channels, num_classes):
            return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, num_classes))
    """))
    code = ("from autoprune.models import create_model; "
            "print(create_model('mynet:build', in_channels=1, num_classes=3, image_size=(8, 8))[-1].out_features)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**_env(), "PYTHONPATH": f"{tmp_path}:{_env().get('PYTHONPATH', '')}"}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


@needs_timm
def test_a_plain_state_dict_is_read_as_the_weights_of_the_model(tmp_path, capsys) -> None:  # noqa: ANN001
    """What a training script of one's own saves (``torch.save({"state_dict": model.state_dict()})``) is
    the checkpoint of ``--model timm:NAME`` for the input asked; it must fit that model."""
    from autoprune.checkpoint import ForeignCheckpointError, WeightsFor, load_checkpoint

    name = "timm:mobilenetv3_small_050"
    torch.manual_seed(1)
    mine = create_model(name, in_channels=1, num_classes=10, image_size=(32, 32))
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": mine.state_dict(), "epoch": 7}, path)
    ckpt = load_checkpoint(path, weights_for=WeightsFor(name, "npz:mine.npz", 1, 10, (32, 32)))
    rebuilt = ckpt.build()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in mine.state_dict().items())
    with pytest.raises(ForeignCheckpointError, match="not written by 'autoprune train'"):
        load_checkpoint(path)  # without a model to read it for
    with pytest.raises(UserError, match=r"do not fit 'timm:mobilenetv3_small_050' built for 1×32×32 inputs and 5 "
                                        r"classes: 2 of other shapes \(classifier.weight: \(10, 1024\) for \(5, 1024\)"):
        load_checkpoint(path, weights_for=WeightsFor(name, "npz:mine.npz", 1, 5, (32, 32)))
    assert main(["bench", "--model", name, "--checkpoint", str(path), "--input-shape", "1,32,32", "--num-classes",
                 "10", "--uniform", "filter:0.5", "--batch-size", "2", "--repeats", "1", "--threads", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_shape"] == [1, 32, 32] and out["max_abs_diff"] < 1e-4
