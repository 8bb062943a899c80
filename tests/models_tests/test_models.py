"""The model registry: every own entry, ``tv:NAME``, ``module:callable`` and the errors users see."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models import (
    _registry,
    check_model_input,
    create_model,
    describe_models,
    list_models,
    list_torchvision_models,
    register_model,
)

SMALL_IMAGE_MODELS = {"digits-cnn", "lenet5"}


def _cases() -> list[tuple[str, int, tuple[int, int]]]:
    cases = []
    for name in list_models():
        sizes = [(8, 8), (32, 32)] if name in SMALL_IMAGE_MODELS else [(32, 32)]
        for in_channels in (1, 3):
            for size in sizes:
                cases.append((name, in_channels, size))
    return cases


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_registry_lists_the_shipped_models() -> None:
    assert {"digits-cnn", "lenet5", "vgg16-bn", "resnet20", "resnet56"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert list_models("resnet*") == ["resnet20", "resnet56"]
    assert list_models("nothing-*") == []
    descriptions = describe_models()
    assert set(descriptions) == set(list_models())
    assert all(isinstance(d, str) and d for d in descriptions.values())


@pytest.mark.parametrize(("name", "in_channels", "image_size"), _cases())
def test_own_model_output_shape(name: str, in_channels: int, image_size: tuple[int, int]) -> None:
    model = create_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    assert isinstance(model, nn.Module)
    assert model.training
    check_model_input(model, in_channels, image_size, name=name, num_classes=10)
    assert model.training  # check_model_input restores the mode
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, *image_size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_own_model_is_deterministic_under_a_seed(name: str) -> None:
    size = (8, 8) if name in SMALL_IMAGE_MODELS else (32, 32)
    torch.manual_seed(0)
    a = create_model(name, in_channels=3, num_classes=10, image_size=size).state_dict()
    torch.manual_seed(0)
    b = create_model(name, in_channels=3, num_classes=10, image_size=size).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("name", "n_convs"), [("resnet20", 21), ("resnet56", 57)])
def test_cifar_resnet_structure(name: str, n_convs: int) -> None:
    model = create_model(name, in_channels=3, num_classes=10, image_size=(32, 32))
    convs = dict(_convs(model))
    assert len(convs) == n_convs
    assert {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer3.0.conv1"} <= set(convs)
    # option B: real 1×1 conv shortcuts where the shape changes, identity elsewhere
    shortcuts = sorted(n for n in convs if "shortcut" in n)
    assert shortcuts == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert convs["layer2.0.shortcut.0"].kernel_size == (1, 1)
    assert [m.out_channels for m in (convs["layer1.0.conv1"], convs["layer2.0.conv1"], convs["layer3.0.conv1"])] == [
        16,
        32,
        64,
    ]
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_digits_cnn_is_wide_enough_to_measure() -> None:
    model = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
    convs = _convs(model)
    assert len(convs) >= 4
    widths = [m.out_channels for _, m in convs]
    assert widths[0] >= 32 and widths[1] >= 64 and widths[2] >= 128
    # names configs use
    assert [n for n, _ in convs] == ["features.0", "features.3", "features.7", "features.10"]
    assert all(m.bias is None for _, m in convs)  # followed by BN
    assert isinstance(model.get_submodule("features.1"), nn.BatchNorm2d)


def test_vgg16_bn_has_13_convs_and_adapts_pools() -> None:
    for size, n_pools in [((32, 32), 5), ((8, 8), 3)]:
        model = create_model("vgg16-bn", in_channels=3, num_classes=10, image_size=size)
        widths = [m.out_channels for _, m in _convs(model)]
        assert widths == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == n_pools
        assert model.classifier.in_features == 512
        check_model_input(model, 3, size, num_classes=10)


def test_lenet5_shape() -> None:
    model = create_model("lenet5", in_channels=1, num_classes=10, image_size=(8, 8))
    convs = _convs(model)
    assert [(m.out_channels, m.kernel_size) for _, m in convs] == [(6, (5, 5)), (16, (5, 5))]
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [120, 84, 10]


@pytest.mark.parametrize("name", ["digits-cnn", "lenet5"])
def test_small_models_take_non_square_and_tiny_images(name: str) -> None:
    for size in [(4, 4), (12, 20)]:
        model = create_model(name, in_channels=1, num_classes=3, image_size=size)
        check_model_input(model, 1, size, num_classes=3)


@pytest.mark.parametrize(
    ("name", "image_size"),
    [("tv:resnet18", (32, 32)), ("tv:alexnet", (64, 64)), ("tv:mobilenet_v2", (32, 32))],
)
def test_torchvision_model_with_one_channel(name: str, image_size: tuple[int, int]) -> None:
    model = create_model(name, in_channels=1, num_classes=7, image_size=image_size)
    first = _convs(model)[0][1]
    assert first.in_channels == 1
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *image_size))
    assert out.shape == (2, 7)


def test_torchvision_model_keeps_three_channels() -> None:
    model = create_model("tv:resnet18", in_channels=3, num_classes=5, image_size=(32, 32))
    assert model.conv1.in_channels == 3 and model.fc.out_features == 5


def test_torchvision_models_are_deterministic_under_a_seed() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        states.append(create_model("tv:resnet18", in_channels=1, num_classes=7, image_size=(32, 32)).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv:googlenet", "tv:inception_v3"])
def test_torchvision_models_with_aux_heads_return_a_tensor(name: str) -> None:
    model = create_model(name, in_channels=1, num_classes=4, image_size=(96, 96))
    check_model_input(model, 1, (96, 96), name=name, num_classes=4)


def test_list_torchvision_models_is_classification_only() -> None:
    names = list_torchvision_models()
    assert "tv:resnet18" in names and "tv:alexnet" in names and "tv:mobilenet_v2" in names
    assert all(n.startswith("tv:") for n in names)
    for detection_or_other in ["tv:fasterrcnn_resnet50_fpn", "tv:deeplabv3_resnet50", "tv:r3d_18", "tv:raft_small"]:
        assert detection_or_other not in names


def test_unknown_own_model_raises_user_error() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21", in_channels=3, num_classes=10, image_size=(32, 32))


def test_torchvision_name_without_prefix_is_suggested() -> None:
    with pytest.raises(UserError, match="tv:resnet18"):
        create_model("resnet18", in_channels=3, num_classes=10, image_size=(32, 32))


def test_unknown_torchvision_model_lists_similar_names() -> None:
    with pytest.raises(UserError, match="unknown torchvision model 'tv:resnet19'.*tv:resnet18"):
        create_model("tv:resnet19", in_channels=3, num_classes=10, image_size=(32, 32))
    with pytest.raises(UserError, match="unknown torchvision model"):
        create_model("tv:fasterrcnn_resnet50_fpn", in_channels=3, num_classes=10, image_size=(224, 224))


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"in_channels": 0, "num_classes": 10, "image_size": (32, 32)}, "in_channels"),
        ({"in_channels": 3, "num_classes": -1, "image_size": (32, 32)}, "num_classes"),
        ({"in_channels": 3, "num_classes": 10, "image_size": (32,)}, "image_size"),
        ({"in_channels": 3, "num_classes": 10, "image_size": (32, 0)}, "image_size"),
    ],
)
def test_bad_arguments_raise_user_error(kwargs: dict, parameter: str) -> None:
    with pytest.raises(UserError, match=f"'{parameter}' parameter"):
        create_model("resnet20", **kwargs)


# --- the user's own model: package.module:callable ---------------------------------------------

USER_MODULE = """
    import torch.nn as nn

    def build(in_channels, num_classes):
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    class Net(nn.Module):
        def __init__(self, *, image_size, num_classes=10, **kwargs):
            super().__init__()
            self.seen = dict(kwargs, image_size=image_size)
            self.conv = nn.Conv2d(kwargs["in_channels"], 4, 3)
            self.fc = nn.Linear(4 * (image_size[0] - 2) * (image_size[1] - 2), num_classes)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    def no_args():
        return nn.Linear(4, 2)

    def not_a_model(num_classes):
        return "oops"

    class Factories:
        @staticmethod
        def tiny(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    name = "autoprune_user_models_for_test"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_user_model_function_gets_the_arguments_it_names(user_module: str) -> None:
    model = create_model(f"{user_module}:build", in_channels=1, num_classes=7, image_size=(8, 8))
    check_model_input(model, 1, (8, 8), num_classes=7)


def test_user_model_class_with_var_kwargs_gets_all_arguments(user_module: str) -> None:
    model = create_model(f"{user_module}:Net", in_channels=2, num_classes=5, image_size=(6, 6))
    assert model.seen == {"in_channels": 2, "image_size": (6, 6)}
    check_model_input(model, 2, (6, 6), num_classes=5)


def test_user_model_without_arguments_and_dotted_attribute(user_module: str) -> None:
    assert isinstance(create_model(f"{user_module}:no_args", in_channels=1, num_classes=2, image_size=(2, 2)), nn.Linear)
    model = create_model(f"{user_module}:Factories.tiny", in_channels=1, num_classes=3, image_size=(4, 4))
    assert isinstance(model, nn.Sequential)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":not_a_model", "not a torch.nn.Module"),
        (":missing", "has no attribute 'missing'"),
        (":NOT_CALLABLE", "not a callable"),
        ("_nope:build", "cannot import module"),
        (":", "package.module:callable"),
    ],
)
def test_bad_user_model_raises_one_line_user_error(user_module: str, suffix: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        create_model(user_module + suffix, in_channels=1, num_classes=2, image_size=(8, 8))
    assert "\n" not in str(info.value)


def test_user_module_that_fails_on_import_raises_user_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "autoprune_broken_user_module.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="cannot import module.*RuntimeError: boom") as info:
        create_model("autoprune_broken_user_module:build", in_channels=1, num_classes=2, image_size=(8, 8))
    assert "\n" not in str(info.value)


# --- check_model_input ------------------------------------------------------------------------


def test_check_model_input_turns_a_shape_error_into_user_error() -> None:
    model = create_model("tv:alexnet", in_channels=3, num_classes=10, image_size=(8, 8))
    with pytest.raises(UserError, match=r"model 'tv:alexnet' cannot take 3×8×8 inputs: .*larger images"):
        check_model_input(model, 3, (8, 8), name="tv:alexnet")


def test_check_model_input_reports_a_wrong_output_shape() -> None:
    model = create_model("lenet5", in_channels=1, num_classes=10, image_size=(8, 8))
    check_model_input(model, 1, (8, 8))
    with pytest.raises(UserError, match=r"expected a tensor of shape \(2, 4\)"):
        check_model_input(model, 1, (8, 8), num_classes=4)


def test_check_model_input_does_not_change_the_model() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=3, num_classes=10, image_size=(32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_input(model, 3, (32, 32))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched (eval)


# --- register_model ---------------------------------------------------------------------------


def test_register_model_adds_an_entry_and_rejects_duplicates(monkeypatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_model("test-tiny", description="one conv")
    def tiny(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    assert "test-tiny" in list_models()
    assert describe_models()["test-tiny"] == "one conv"
    model = create_model("test-tiny", in_channels=2, num_classes=3, image_size=(5, 5))
    check_model_input(model, 2, (5, 5), num_classes=3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("test-tiny", description="again")(tiny)
    with pytest.raises(ValueError, match="may not contain ':'"):
        register_model("bad:name", description="x")
