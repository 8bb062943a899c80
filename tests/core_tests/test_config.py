from __future__ import annotations

import pytest

from autoprune.config import LayerTarget, PruneConfig, Schedule, resolve_layer_targets
from autoprune.errors import ConfigError, UserError

LAYERS = ["features.0", "features.3", "features.7", "features.10", "classifier.1", "classifier.4"]


def test_yaml_round_trip(tmp_path):
    cfg = PruneConfig(
        model="digits-cnn",
        dataset="digits",
        layers={"features.0": LayerTarget("filter", 0.5), "features.*": LayerTarget("shape", 0.7)},
        checkpoint="runs/x.pt",
        admm=Schedule(iters=3, rho=0.01),
        channel_multiple=8,
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert PruneConfig.from_yaml(path) == cfg


def test_issue_example_parses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: digits-cnn\ndataset: digits\ncheckpoint: runs/baselines/digits-cnn-digits.pt\n"
        "layers:\n  features.0: {type: filter, rate: 0.5}\n  \"features.*\": {type: shape, rate: 0.7}\n"
        "admm: {iters: 4, epochs: 1, rho: 0.001, rho_growth: 1.3, retrain_epochs: 2}\n"
    )
    cfg = PruneConfig.from_yaml(path)
    assert cfg.admm.iters == 4 and cfg.admm.rho == 0.001 and cfg.admm.retrain_epochs == 2
    assert cfg.layers["features.0"] == LayerTarget("filter", 0.5)


def test_most_specific_pattern_wins():
    pats = {"features.*": LayerTarget("shape", 0.7), "features.0": LayerTarget("filter", 0.5),
            "features.1?": LayerTarget("irregular", 0.9), "*": LayerTarget("none")}
    got = resolve_layer_targets(pats, LAYERS)
    assert got["features.0"] == LayerTarget("filter", 0.5)
    assert got["features.3"] == LayerTarget("shape", 0.7)
    assert got["features.10"] == LayerTarget("irregular", 0.9)
    assert "classifier.1" not in got  # 'none' leaves it dense


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: m\ndataset: d\nlayers: {a: {type: filter, rate: 0.5}}\nbogus: 1\n", "unknown key 'bogus'"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter, rate: 0.5, extra: 2}}\n", "unknown key 'extra'"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter}}\nadmm: {iterz: 3}\n", "unknown key 'iterz'"),
        ("model: m\nlayers: {a: {type: filter}}\n", "missing required key 'dataset'"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter, rate: abc}}\n", "rate must be a number"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter}}\nadmm: {rho: -1}\n", "'rho' ADMM setting"),
        ("model: [\n", "not valid YAML"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter}}\nchannel_multiple: 0\n", "'channel_multiple' must be"),
        ("model: m\ndataset: d\nlayers: {a: {type: filter}}\nchannel_multiple: 2.5\n", "'channel_multiple' must be"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        PruneConfig.from_yaml(path)


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match="'conv9' matches no prunable layer"):
        resolve_layer_targets({"conv9": LayerTarget("filter", 0.5)}, LAYERS)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        PruneConfig.from_yaml(tmp_path / "nope.yaml")
