"""The Python API on a user's own model, loop and metric (issue: the user's train(model, epochs)
needs no change; the model is left plain; bad input raises autoprune.UserError)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.utils import parametrize
from torch.optim import optimizer as optim_module

import autoprune
from autoprune.admm import Schedule, admm_phase
from autoprune.config import LayerTarget
from autoprune.groups import ChannelGraph
from autoprune.projection import Projector


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return {"x": x[:1200], "y": y[:1200], "vx": x[1200:1500], "vy": y[1500 - 300:1500]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def make_train(data, calls: list[int] | None = None, optimizer: str = "adamw"):  # noqa: ANN001, ANN201
    """A user's loop: its own optimizer, label smoothing, bfloat16 autocast, epochs as the unit."""

    def train(model: nn.Module, epochs: float) -> float:
        if calls is not None:
            calls.append(0)
        if optimizer == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        g = torch.Generator().manual_seed(len(calls or []))
        model.train()
        steps = max(1, round(epochs * len(data["x"]) / 64))
        for _ in range(steps):
            idx = torch.randint(0, len(data["x"]), (64,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(data["x"][idx]), data["y"][idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if calls is not None:
                calls[-1] += 1
            opt.step()
        return float(loss.detach())

    return train


def make_accuracy(data):  # noqa: ANN001, ANN201
    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        model.eval()
        return float((model(data["vx"]).argmax(1) == data["vy"]).float().mean())

    return accuracy


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    model = Net()
    make_train(data)(model, 4)
    return model


def _module_state(model: nn.Module) -> dict[str, tuple]:
    """What could be left behind on a module: its attribute names, its hooks, parametrizations."""
    out = {}
    for name, m in model.named_modules():
        hooks = tuple(len(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                    "_backward_pre_hooks", "_state_dict_hooks",
                                                    "_load_state_dict_pre_hooks"))
        out[name] = (tuple(sorted(vars(m))), hooks, parametrize.is_parametrized(m),
                     tuple(sorted(n for n, _ in m.named_parameters(recurse=False))))
    return out


def _optimizer_hooks() -> tuple[int, int]:
    """How many global optimizer step hooks (pre, post) are registered in this process."""
    return len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks)


def test_prune_through_the_users_loop_leaves_a_plain_model_and_no_step_moves_a_masked_weight(data, trained):
    original = copy.deepcopy(trained.state_dict())
    reference = _module_state(copy.deepcopy(trained))
    global_hooks = (len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks))
    calls: list[int] = []
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []

    # registered before autoprune's: runs right after the optimizer's own update, before
    # autoprune zeroes anything again, so it sees what the optimizer itself did
    def watch(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        snapshots.append((len(calls), {n: p.detach().clone() for n, p in zip(
            ("conv1.weight", "conv2.weight", "fc.weight"), [opt.param_groups[0]["params"][i] for i in (0, 4, 8)])}))

    handle = optim_module.register_optimizer_step_post_hook(watch)
    try:
        result = autoprune.prune(trained, {"conv1": "filter:0.5", "conv2": "shape:0.6", "fc": "irregular:0.7"},
                                 train=make_train(data, calls), example_inputs=data["x"][:1],
                                 evaluate=make_accuracy(data), method="admm",
                                 schedule=Schedule.for_loop(iters=2, admm_amount=0.5, retrain_amount=1.0))
    finally:
        handle.remove()
    model = result.model
    # the user's model is untouched; the pruned copy carries nothing of autoprune's
    assert all(torch.equal(original[k], v) for k, v in trained.state_dict().items())
    assert _module_state(model) == reference
    assert (len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks)) == global_hooks
    assert all(p._backward_hooks is None for p in model.parameters())
    assert type(model) is Net
    # the masks hold: pruned weights are zero, and during retraining (the last call of
    # train) no optimizer step ever moved one of them, AdamW's decoupled weight decay included
    assert len(calls) == 3  # two ADMM W-steps, one masked retraining
    masks = result.masks
    named = dict(model.named_parameters())
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        assert masks[name].dtype == torch.bool and not named[name].detach()[~masks[name]].any()
    retrain_steps = [s for call, s in snapshots if call == 3]
    assert len(retrain_steps) == calls[-1] > 0
    for step in retrain_steps:
        for name, w in step.items():
            assert not w[~masks[name]].any(), name
    # and the sparsity asked for is there: half the filters of conv1, 70% of fc's weights
    assert int(masks["conv1.weight"].flatten(1).amax(1).sum()) == 16
    assert float(masks["fc.weight"].float().mean()) == pytest.approx(0.3, abs=0.01)
    assert result.macs < result.dense_macs
    # the scores are the user's metric on the pruned model returned and on the dense one
    accuracy = make_accuracy(data)
    assert result.score == accuracy(model)
    assert result.dense_score == accuracy(copy.deepcopy(trained))


def _distance_to_sparse_set(model: nn.Module, projector: Projector) -> float:
    """||W - Π(W)|| / ||W|| over the constrained weights: 0 when W is already sparse."""
    named = dict(model.named_parameters())
    w = {n: named[n].detach() for n in projector.constrained_params}
    z, _ = projector.project(w)
    num = sum(float((w[n] - z[n]).pow(2).sum()) for n in w)
    return (num / sum(float(w[n].pow(2).sum()) for n in w)) ** 0.5


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_admm_penalty_reaches_the_users_optimizer(data, trained, optimizer):
    """The W-steps are the user's loop with whatever optimizer it builds: with the penalty, W
    ends far closer to the sparse set than the same loop without it (rho ~ 0). (With Adam a
    coordinate moves at most about lr per step, so the layer is one without BatchNorm, whose
    scales near 1 would need hundreds of steps: see autoprune.steering.)"""
    distance = {}
    for rho in (1e-9, 5.0):
        model = copy.deepcopy(trained)
        graph = ChannelGraph(model, data["x"][:1])
        projector = Projector(model, graph, {"fc": LayerTarget("irregular", 0.75)})
        torch.manual_seed(0)
        admm_phase(model, projector, make_train(data, optimizer=optimizer),
                   Schedule.for_loop(iters=4, admm_amount=0.5, retrain_amount=0.0, rho=rho, rho_growth=1.0))
        distance[rho] = _distance_to_sparse_set(model, projector)
    assert distance[5.0] < 0.5 * distance[1e-9], distance


def test_a_train_function_that_steps_no_optimizer_is_a_user_error(data, trained):
    def lazy(model: nn.Module, epochs: float) -> None:
        model(data["x"][:8]).sum().backward()  # gradients, but no optimizer step

    with pytest.raises(autoprune.UserError, match=r"train\(\) ran no optimizer step.*optimizer.step\(\)"):
        autoprune.prune(trained, {"conv1": "filter:0.5"}, train=lazy, example_inputs=data["x"][:1],
                        schedule=Schedule.for_loop(iters=1, admm_amount=1, retrain_amount=1))


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, t, e, x: autoprune.prune(m, {"convX*": "filter:0.5"}, train=t, example_inputs=x),
     "layer pattern 'convX\\*' matches no prunable layer"),
    (lambda m, t, e, x: autoprune.prune(m, {"conv1": "filter:1.5"}, train=t, example_inputs=x), "rate"),
    (lambda m, t, e, x: autoprune.prune(m, {"conv1": "diagonal:0.5"}, train=t, example_inputs=x), "diagonal"),
    (lambda m, t, e, x: autoprune.prune(m, "missing.yaml", train=t, example_inputs=x), "does not exist"),
    (lambda m, t, e, x: autoprune.prune("resnet", {"conv1": "filter:0.5"}, train=t, example_inputs=x),
     "model must be a torch.nn.Module"),
    (lambda m, t, e, x: autoprune.prune(m, {"conv1": "filter:0.5"}, train=t, example_inputs=[1, 2]),
     "example_inputs must be one input tensor"),
    (lambda m, t, e, x: autoprune.search(m, x, train=t, evaluate=e, direction="up"), "direction must be"),
    (lambda m, t, e, x: autoprune.search(m, x, train=t, evaluate=e, budget="150%"), "outside"),
    (lambda m, t, e, x: autoprune.search(m, x, train=t, evaluate=lambda model: "high"), "must return a number"),
    (lambda m, t, e, x: autoprune.search(m, x, train=None, evaluate=e), "needs all four"),
    (lambda m, t, e, x: autoprune.make_deployable(m), "takes what autoprune.prune\\(\\) returned"),
    (lambda m, t, e, x: autoprune.prune(m, {"conv1": "filter:0.5"}, train=t, example_inputs=x,
                                        schedule=Schedule(iters=-1)), "'iters'"),
])
def test_bad_input_raises_one_user_error_that_says_what_to_fix(data, trained, tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)  # where runs/ would go
    assert list(tmp_path.iterdir()) == []
    weights = copy.deepcopy(trained.state_dict())
    state, modes = _module_state(trained), {n: m.training for n, m in trained.named_modules()}
    hooks = _optimizer_hooks()
    with pytest.raises(autoprune.UserError, match=message):
        call(trained, make_train(data), make_accuracy(data), data["x"][:1])
    # nothing written: no file or folder at all (no study, no storage, no cache), and the user's
    # model and the process left as they were (weights, train/eval mode, hooks)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
    assert all(torch.equal(weights[k], v) for k, v in trained.state_dict().items())
    assert _module_state(trained) == state and {n: m.training for n, m in trained.named_modules()} == modes
    assert _optimizer_hooks() == hooks


@pytest.fixture(scope="module")
def deployable(data, trained):  # noqa: ANN001, ANN201
    pruned = autoprune.prune(trained, {"conv1": "filter:0.5", "conv2": "filter:0.5"}, train=make_train(data),
                             example_inputs=data["x"][:1], evaluate=make_accuracy(data), method="magnitude",
                             schedule=Schedule.for_loop(iters=0, retrain_amount=1.0))
    return autoprune.make_deployable(pruned, data["vx"][:32], batch=64)


def test_prune_compact_save_and_load_a_user_model(data, deployable, tmp_path):
    """A config from a search's YAML (or a mapping), the deployable, its folder, its ONNX program."""
    assert deployable.model.conv1.out_channels == 16 and deployable.model.conv2.out_channels == 16
    assert deployable.max_abs_diff < 1e-3
    folder = autoprune.save_pruned(deployable, tmp_path / "out")
    assert {p.name for p in folder.iterdir()} == {"model.pt", "architecture.json", "example.pt", "model.pt2",
                                                  "model.onnx", "report.json"}  # no module.pt: nothing pickled
    report = json.loads((folder / "report.json").read_text())
    assert report["checks"]["onnx_max_abs_diff"] < 1e-4 and report["exports"]["onnx"] == "model.onnx"
    again = autoprune.load_pruned(folder, model=Net())
    assert type(again) is Net and again.conv1.out_channels == 16 and again.bn2.num_features == 16
    with torch.no_grad():
        assert torch.equal(again(data["vx"]), deployable.model.cpu()(data["vx"]))
    with pytest.raises(autoprune.UserError, match="exists and is not empty"):
        autoprune.save_pruned(deployable, folder)


# -- loading runs no code from the folder (issue 27) -------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch):  # noqa: ANN001, ANN201
    """Every way to unpickle an object fails the call and is recorded: pickle's Unpickler (what
    torch.load(weights_only=False) subclasses), pickle.load / loads, and torch.load unless it
    is asked for weights_only=True (its own restricted unpickler, tensors only)."""
    calls: list[str] = []

    class RefusingUnpickler:
        def __init__(self, *args: object, **kwargs: object) -> None:
            calls.append("pickle.Unpickler")
            raise AssertionError("a pickle was read")

    def refusing(name: str):  # noqa: ANN202
        def call(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise AssertionError("a pickle was read")
        return call

    real_load = torch.load

    def load(*args: object, weights_only: object = None, **kwargs: object):  # noqa: ANN202
        calls.append(f"torch.load(weights_only={weights_only})")
        if weights_only is not True:
            raise AssertionError("torch.load without weights_only=True")
        return real_load(*args, weights_only=True, **kwargs)

    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(pickle, "load", refusing("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refusing("pickle.loads"))
    monkeypatch.setattr(torch, "load", load)
    return calls


def _with_kernel_forms(model: nn.Module) -> nn.Module:
    """The compacted model with conv2 in the shape-wise gather kernel and fc in CSR: layers
    whose form, not only their size, must come back."""
    from autoprune.compact.kernels import CSRLinear, ShapeSparseConv2d
    from autoprune.sparsity import get_sparsity

    out = copy.deepcopy(model).cpu().eval()
    torch.manual_seed(0)
    conv_mask = get_sparsity("shape").mask(out.conv2.weight, 0.6)
    out.conv2 = ShapeSparseConv2d.from_conv(out.conv2, conv_mask.reshape(out.conv2.out_channels, -1).any(0))
    out.fc = CSRLinear.from_linear(out.fc, get_sparsity("irregular").mask(out.fc.weight, 0.7))
    return out


def test_a_saved_model_loads_with_the_users_class_and_without_it_and_no_pickle_is_read(
        data, deployable, tmp_path, no_unpickling):
    from autoprune.compact.kernels import CSRLinear, ShapeSparseConv2d
    from autoprune.deploy import ExportedModule

    model = _with_kernel_forms(deployable.model)
    folder = autoprune.save_pruned(model, tmp_path / "out", example_inputs=data["vx"][:8])
    arch = json.loads((folder / "architecture.json").read_text())
    assert arch["base"]["class"].endswith(".Net")
    kinds = {m["name"]: m["kind"] for m in arch["modules"]}
    assert kinds == {"conv1": "Conv2d", "bn1": "BatchNorm2d", "conv2": "ShapeSparseConv2d", "bn2": "BatchNorm2d",
                     "fc": "CSRLinear"}
    no_unpickling.clear()  # saving ran the export checks; what counts is loading

    with torch.no_grad():
        expected = model(data["vx"])
        rebuilt = autoprune.load_pruned(folder, model=Net())
        assert isinstance(rebuilt.conv2, ShapeSparseConv2d) and isinstance(rebuilt.fc, CSRLinear)
        assert rebuilt.conv1.out_channels == 16 and not rebuilt.training
        assert torch.equal(rebuilt(data["vx"]), expected)

        program = autoprune.load_pruned(folder)  # no class needed: the torch.export program
        assert isinstance(program, ExportedModule)
        program.eval()  # what an evaluation loop calls first
        torch.testing.assert_close(program(data["vx"]), expected, rtol=1e-4, atol=1e-5)
    assert no_unpickling and all(c == "torch.load(weights_only=True)" for c in no_unpickling), no_unpickling
    with pytest.raises(autoprune.UserError, match="inference only"):
        program.train()


def _crafted_module_pt(folder, marker):  # noqa: ANN001, ANN202
    """A ``module.pt`` as a stranger could write it: unpickling it creates ``marker`` (builtins
    only: it needs no class of theirs installed) and gives back a module."""

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            code = f"__import__('pathlib').Path({str(marker)!r}).touch() or __import__('torch').nn.Linear(2, 2)"
            return eval, (code,)

    folder.mkdir()
    torch.save(Payload(), folder / "module.pt")
    return folder


def test_a_pickled_module_pt_is_refused_and_runs_nothing_until_trusted(tmp_path, no_unpickling):
    marker = tmp_path / "the-payload-ran"
    folder = _crafted_module_pt(tmp_path / "old", marker)
    with pytest.raises(autoprune.UserError) as refused:
        autoprune.load_pruned(folder)
    message = str(refused.value)
    assert "\n" not in message and "trust_pickle=True" in message and "module.pt" in message
    assert not marker.exists() and not no_unpickling  # refused before anything was read

    with pytest.raises(AssertionError, match="torch.load without weights_only"), pytest.warns(UserWarning):
        autoprune.load_pruned(folder, trust_pickle=True)  # the spy is real: trusting means unpickling
    assert not marker.exists()


def test_a_folder_of_an_earlier_autoprune_loads_when_trusted_with_a_warning(tmp_path):
    marker = tmp_path / "the-payload-ran"
    folder = _crafted_module_pt(tmp_path / "old", marker)
    with pytest.warns(UserWarning, match="earlier autoprune") as warned:
        model = autoprune.load_pruned(folder, trust_pickle=True)
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    assert isinstance(model, nn.Linear) and not model.training
    assert marker.exists()  # trusted: the file's code ran, as it would have before


def test_a_model_that_does_not_fit_the_folder_is_refused(data, deployable, tmp_path):
    folder = autoprune.save_pruned(deployable, tmp_path / "out")

    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(3, 3)

    class Scaled(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(autoprune.UserError, match="do not fit the model passed"):
        autoprune.load_pruned(folder, model=Wider())
    with pytest.raises(autoprune.UserError, match=r"outputs that differ.*on the saved example"):
        autoprune.load_pruned(folder, model=Scaled())
    with pytest.raises(autoprune.UserError, match="has no module 'conv1'.*pass a new instance of .*Net"):
        autoprune.load_pruned(folder, model=nn.Sequential())


def _trials(url: str, name: str) -> list[tuple]:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    return [(t.number, t.state.name, dict(t.params), None if t.values is None else round(t.values[0], 9))
            for t in study.trials]


@pytest.mark.slow
def test_the_cli_and_the_api_run_the_same_search(tmp_path, digits_baseline, monkeypatch):
    """The same digits search through ``autoprune search`` and through ``autoprune.search`` with
    the built-in loop: the same trials (configurations, states, accuracies) for the same seed."""
    from autoprune.cli import main

    monkeypatch.chdir(tmp_path)
    ckpt = str(digits_baseline[0])
    url = f"sqlite:///{tmp_path / 'same.db'}"
    assert main(["search", "--budget", "2%", "--trials", "3", "--study-name", "cli", "--storage", url,
                 "--checkpoint", ckpt, "--no-tracking", "--json", "--admm-iters", "2", "--admm-epochs", "0.25",
                 "--retrain-epochs", "0.5", "--rho", "3"]) == 0
    result = autoprune.search("digits-cnn", dataset="digits", budget="2%", trials=3, study_name="api", storage=url,
                              tracking=False, checkpoint=ckpt,
                              schedule=Schedule.for_loop(iters=2, admm_amount=0.25, retrain_amount=0.5, rho=3.0))
    cli, api = _trials(url, "cli"), _trials(url, "api")
    assert len(cli) == 3 and cli == api
    assert result.record.meta.metric == "accuracy" and result.record.meta.direction == "maximize"


def test_a_metric_to_minimize_counts_its_drop_upward(data, trained, tmp_path):
    """direction="minimize": the budget is on the metric's rise; Optuna, the record and MLflow
    name the metric; a trial worse by more than the budget is infeasible, one within it feasible
    (the ladder's first rung, filter 50%, raises the loss by about 0.24, within the budget of 0.3;
    the next, filter 80%, by more than 1; both run about 4x faster than dense, far from the
    early stop of a configuration not faster than dense)."""
    import optuna

    @torch.no_grad()
    def val_loss(model: nn.Module) -> float:
        model.eval()
        return float(F.cross_entropy(model(data["vx"]), data["vy"]))

    result = autoprune.search(trained, data["x"][:1], train=make_train(data), evaluate=val_loss, metric="val_loss",
                              direction="minimize", budget=0.3, trials=3, runs_dir=tmp_path / "runs",
                              schedule=Schedule.for_loop(iters=0, retrain_amount=0.5), tracking=False, study_name="loss")
    meta = result.record.meta
    assert (meta.metric, meta.direction, meta.objectives) == ("val_loss", "minimize", ("val_loss", "latency_ms"))
    study = optuna.load_study(study_name="loss", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_loss", "latency_ms"]
    done = [t for t in result.record.completed if not t.is_dense]
    for t in done:
        assert t.accuracy_drop == pytest.approx(t.accuracy - meta.dense_accuracy)
        assert t.feasible == (t.accuracy - meta.dense_accuracy <= 0.3 + 1e-12)
    trials = [(t.number, t.state, t.sparsity_summary(), t.accuracy_drop, t.stop_reason) for t in result.record.trials]
    assert sorted(t.feasible for t in done) == [False, True], trials
    page = (tmp_path / "runs" / "loss" / "report.html")
    assert page.is_file() and "val_loss" in page.read_text()


def test_autoprune_search_is_a_plain_function_with_its_real_signature() -> None:
    import inspect

    import autoprune
    import autoprune.study  # the search's internals: importing them must not replace the function

    params = inspect.signature(autoprune.search).parameters
    assert inspect.isfunction(autoprune.search)
    assert {"model", "example_inputs", "train", "evaluate", "budget", "rungs", "epoch_budget"} <= set(params)
    assert autoprune.search.__doc__.startswith("Search per-layer sparsity types and rates")
    from autoprune._version import __version__

    assert autoprune.__version__ == __version__
