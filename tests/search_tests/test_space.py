"""Search spaces: the schema, its errors, the shipped files, and the Optuna parameters."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml

from autoprune.config import LayerTarget
from autoprune.errors import ConfigError
from autoprune.groups import ChannelGraph
from autoprune.models import create_model
from autoprune.projection import Projector
from autoprune.sparsity import get_sparsity
from autoprune.study.space_file import SPACES_DIR, auto_space, default_space_file, load_space, space_from_dict


def _model_graph(name: str, channels: int = 1, size: int = 8, classes: int = 10) -> tuple[torch.nn.Module,
                                                                                          ChannelGraph]:
    model = create_model(name, in_channels=channels, num_classes=classes, image_size=(size, size)).eval()
    return model, ChannelGraph(model, torch.zeros(1, channels, size, size))


def _graph(name: str, channels: int = 1, size: int = 8, classes: int = 10) -> ChannelGraph:
    return _model_graph(name, channels, size, classes)[1]


@pytest.fixture(scope="module")
def digits_graph() -> ChannelGraph:
    return _graph("digits-cnn")


SHIPPED = {
    "digits-cnn": (1, 8), "lenet5": (1, 28), "resnet20": (3, 32), "resnet56": (3, 32), "vgg16-bn": (3, 32),
    "tv:resnet18": (3, 32), "tv:alexnet": (3, 64),
}


@pytest.mark.parametrize("model", sorted(SHIPPED))
def test_every_documented_model_ships_a_valid_space(model: str) -> None:
    path = default_space_file(model)
    assert path is not None and path.parent == SPACES_DIR
    channels, size = SHIPPED[model]
    net, graph = _model_graph(model, channels, size)
    space = load_space(None, model, graph)
    assert space.source == str(path)
    assert space.variables, "a shipped space searches something"
    searched = {n for v in space.variables for n in v.layers}
    assert graph.output_layer not in searched
    # the first conv runs at full resolution: shipped spaces search it (fixed dense would hide it)
    first = [n for n, info in graph.layers.items() if info.reads_input]
    assert first and all(n in searched for n in first), f"{model}'s space leaves its first conv {first} out"
    # every type a variable offers applies to each of its layers: projecting them all with
    # it, at the variable's highest rate, is accepted and removes weights from every layer
    for var in space.variables:
        assert [t for t in var.types if t != "none"], f"{var.name} offers nothing but dense"
        for kind in var.types:
            if kind == "none":
                continue
            rate = None if get_sparsity(kind).implied_rate is not None else var.rate.high
            masks = Projector(net, graph, {n: LayerTarget(kind, rate) for n in var.layers}).hard_masks()
            for n in var.layers:
                assert not bool(masks[f"{n}.weight"].all()), f"{var.name}: {kind} removes nothing from {n}"


def test_auto_space_is_every_conv_and_linear_but_the_classifier(digits_graph) -> None:
    space = auto_space(digits_graph)
    layers = [n for v in space.variables for n in v.layers]
    assert layers == ["features.0", "features.3", "features.7", "features.10", "classifier.1"]
    by = {v.layers[0]: v for v in space.variables}
    assert by["features.3"].types == ["none", "filter", "shape"]
    assert by["classifier.1"].types == ["none", "filter", "irregular"]
    assert by["features.3"].rate.low == pytest.approx(0.1) and by["features.3"].rate.high == pytest.approx(0.9)
    assert load_space(None, "no-such-file-model", digits_graph).source == "auto"


def test_suggest_uses_stable_names_groups_and_fixed(digits_graph) -> None:
    raw = {
        "include": ["features.3", "features.7", "features.10", "classifier.1"],
        "types": ["none", "filter", "shape"],
        "rate": {"low": 0.2, "high": 0.8, "step": 0.2},
        "groups": {"mid": ["features.7", "features.10"]},
        "fixed": {"classifier.1": {"type": "irregular", "rate": 0.5}},
        "overrides": {"features.3": {"types": ["none", "filter"]}},
    }
    space = space_from_dict(raw, digits_graph)
    assert [v.name for v in space.variables] == ["layer.features.3", "group.mid"]
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        targets = space.suggest(trial)
        assert set(trial.params) <= {"layer.features.3.type", "layer.features.3.rate", "group.mid.type",
                                     "group.mid.rate"}
        assert targets["classifier.1"] == LayerTarget("irregular", 0.5)
        if "features.7" in targets:  # one variable for the group
            assert targets["features.7"] == targets["features.10"]
        for t in targets.values():
            assert t.rate in (0.2, 0.4, 0.6, 0.8) or t == LayerTarget("irregular", 0.5)
        seen.add(trial.params["group.mid.type"])
        study.tell(trial, [0.0, 0.0])
        assert space.targets_from_params(trial.params) == targets
    assert seen == {"none", "filter", "shape"}


def test_uniform_and_dense_params(digits_graph) -> None:
    space = auto_space(digits_graph)
    dense = space.dense_params()
    assert {k: v for k, v in dense.items() if k.endswith(".type")} == {v.type_param: "none" for v in space.variables}
    assert space.targets_from_params(dense) == {}
    # rates are parameters of every trial (also dense ones), so that every sampler models them
    assert {k for k in dense if k.endswith(".rate")} == {v.rate_param for v in space.variables}
    filt = space.uniform_params("filter", 0.5)
    targets = space.targets_from_params(filt)
    assert set(targets) == {"features.0", "features.3", "features.7", "features.10", "classifier.1"}
    assert all(t == LayerTarget("filter", 0.5) for t in targets.values())
    shape = space.targets_from_params(space.uniform_params("shape", 0.73))
    assert set(shape) == {"features.0", "features.3", "features.7", "features.10"}  # the linear layer offers no shape
    assert all(t.rate == pytest.approx(0.7) for t in shape.values())  # snapped to the 0.1 grid


def test_types_that_cannot_apply_are_dropped_with_a_note(digits_graph) -> None:
    raw = {"include": ["features.0", "features.3", "classifier.4"], "types": ["none", "filter", "2:4"]}
    space = space_from_dict(raw, digits_graph)
    types = {v.layers[0]: v.types for v in space.variables}
    assert types["features.0"] == ["none", "filter"]  # K = 1*3*3 is not a multiple of 4
    assert types["features.3"] == ["none", "filter", "2:4"]
    assert types["classifier.4"] == ["none", "2:4"]  # the output layer keeps its classes
    assert any("classifier.4" in n and "'filter' dropped" in n for n in space.notes)
    assert any("features.0" in n and "'2:4' dropped" in n for n in space.notes)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"typo": 1}, "unknown key 'typo'"),
        ({"types": ["none", "filtre"]}, "filtre"),
        ({"types": []}, "non-empty list"),
        ({"rate": {"low": 0.5, "high": 0.2}}, "low <= high"),
        ({"rate": {"low": 0.1, "high": 1.0}}, "high < 1"),
        ({"rate": {"low": 0.1, "high": 0.9, "step": 0.25}}, "not a multiple of step"),
        ({"rate": {"lo": 0.1}}, "unknown key 'lo'"),
        ({"include": ["conv9*"]}, "pattern 'conv9*' matches no layer"),
        ({"overrides": {"nothing.*": {"types": ["none"]}}}, "pattern 'nothing.*' matches no layer"),
        ({"overrides": {"features.3": {"kinds": ["none"]}}}, "unknown key 'kinds'"),
        ({"fixed": {"features.3": {"type": "filter", "rate": 1.5}}}, "features.3"),
        ({"groups": {"g": ["features.3"]}, "fixed": {"features.3": "none"}}, "also fixed"),
        ({"groups": {"a": ["features.3"], "b": ["features.3"]}}, "already in group 'a'"),
        ({"model": "resnet20"}, "written for model 'resnet20'"),
        ({"types": ["none"]}, "nothing to search"),
        ({"types": ["none", 124]}, "quote N:M patterns"),
        ({"groups": {"g": ["features.3", "features.7"]}, "overrides": {"features.3": {"types": ["none", "filter"]}}},
         "different 'types'"),
        ({"fixed": {"classifier.4": {"type": "filter", "rate": 0.5}}}, "filter cannot apply to 'classifier.4'"),
    ],
)
def test_space_errors_name_the_problem(digits_graph, tmp_path, raw: dict, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_space(path, "digits-cnn", digits_graph)


def test_missing_space_file_is_a_user_error(digits_graph, tmp_path) -> None:
    from autoprune.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_space(tmp_path / "nope.yaml", "digits-cnn", digits_graph)


def test_nm_and_case_are_read_as_users_write_them(digits_graph) -> None:
    space = space_from_dict({"include": ["features.3"], "types": ["None", "Filter", "2:4"],
                             "fixed": {"features.7": "2:4"}}, digits_graph)
    assert space.variables[0].types == ["none", "filter", "2:4"]
    assert space.fixed["features.7"] == LayerTarget("2:4")


def test_a_stored_space_round_trips(digits_graph) -> None:
    from autoprune.study.space import SearchSpace

    space = load_space(None, "digits-cnn", digits_graph)
    again = SearchSpace.from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()
    params = space.uniform_params("filter", 0.5)
    assert again.targets_from_params(params) == space.targets_from_params(params)
