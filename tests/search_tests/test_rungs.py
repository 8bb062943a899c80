"""Multi-fidelity trials: the promotion rule, the rank correlation, the screen's BatchNorm
recalibration (the built-in loop's and a user's loop with its steps undone), and a study's
epoch count against what the trainer really ran."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from autoprune.study.rungs import FULL, SCREEN, SHORT, Fidelity, Reference, decide, predict, rank_correlation


def _ref(number: int, screen: float, short: float, final: float, latency: float = 10.0) -> Reference:
    return Reference(number, {SCREEN: screen, SHORT: short, FULL: final}, latency)


REFS = [  # a dense score of 0.90: what retraining brings back grows with the damage the screen shows
    _ref(1, 0.80, 0.87, 0.895, latency=8.0),
    _ref(2, 0.60, 0.84, 0.885, latency=6.0),
    _ref(3, 0.40, 0.80, 0.870, latency=4.0),
    _ref(4, 0.20, 0.70, 0.840, latency=2.0),
]


def test_prediction_interpolates_the_references_monotone_fit() -> None:
    pred, tol, used = predict(SCREEN, 0.50, REFS)
    assert used == [2, 3] and pred == pytest.approx((0.885 + 0.870) / 2)  # halfway between trials 3 and 2
    # beyond the highest and the lowest reference: along the end segments
    assert predict(SCREEN, 0.90, REFS)[0] == pytest.approx(0.895 + 0.1 * (0.895 - 0.885) / 0.2)
    assert predict(SCREEN, 0.10, REFS)[0] == pytest.approx(0.840 - 0.1 * (0.870 - 0.840) / 0.2)
    # the tolerance is the rule's own leave-one-out error on the references: here, well under a point
    # (leaving out trial 2: read between trials 1 and 3 at 0.6 gives 0.8825, off by 0.0025, ...)
    assert tol == pytest.approx(statistics.median([0.005, 0.0025, 0.0075, 0.015]))


def test_a_reference_that_breaks_the_order_is_pooled_not_followed() -> None:
    # trial 9 scored higher at the screen than trial 2 but ended lower: the fit stays monotone
    refs = [*REFS, _ref(9, 0.70, 0.85, 0.875, latency=7.0)]
    pred, _, _ = predict(SCREEN, 0.65, refs)
    pooled = (0.885 + 0.875) / 2  # trials 2 and 9 pooled at their mean screen score 0.65
    assert pred == pytest.approx(pooled)
    assert predict(SCREEN, 0.66, refs)[0] >= predict(SCREEN, 0.64, refs)[0]


def test_a_candidate_predicted_within_budget_goes_up_and_one_beyond_it_stops() -> None:
    # 0.61 at the screen predicts about 0.8855: within a 2-point budget of 0.90
    ok = decide(SCREEN, 0.61, latency_ms=5.0, refs=REFS, dense=0.90, allowed=0.02)
    assert ok.promote and ok.predicted == pytest.approx(0.885 + (0.895 - 0.885) * 0.01 / 0.2)
    # 0.21 predicts about 0.8415: 6 points under dense, far beyond the budget and the tolerance
    no = decide(SCREEN, 0.21, latency_ms=1.0, refs=REFS, dense=0.90, allowed=0.02)
    assert not no.promote and "beyond the budget" in no.reason and no.references == [3, 4]
    # with only two references the tolerance is the budget again: 0.05 predicts 0.8575 (drop 4.25) > 2 + 2
    two = REFS[:2]
    assert decide(SCREEN, 0.05, 1.0, two, dense=0.90, allowed=0.02).predicted == pytest.approx(0.8575)
    assert not decide(SCREEN, 0.05, 1.0, two, dense=0.90, allowed=0.02).promote
    assert decide(SCREEN, 0.15, 1.0, two, dense=0.90, allowed=0.02).promote  # 0.8625: drop 3.75, within 2 + 2


def test_a_candidate_that_a_faster_trained_trial_beats_is_not_a_contender() -> None:
    refs = [*REFS, _ref(5, 0.95, 0.96, 0.97, latency=8.5)]
    # 0.78 predicts about 0.89: within a 10-point budget of 0.97, but trial 5 (8.5 ms) is faster than
    # the candidate (9 ms) and reached 0.97
    d = decide(SCREEN, 0.78, latency_ms=9.0, refs=refs, dense=0.97, allowed=0.10)
    assert not d.promote and "trial 5" in d.reason and "not a contender" in d.reason
    faster = decide(SCREEN, 0.78, latency_ms=8.0, refs=refs, dense=0.97, allowed=0.10)
    assert faster.promote


def test_without_two_references_everything_goes_up() -> None:
    assert decide(SCREEN, 0.01, 1.0, [], dense=0.9, allowed=0.01).promote
    assert decide(SHORT, 0.01, 1.0, REFS[:1], dense=0.9, allowed=0.01).promote
    assert not decide(SHORT, 0.01, 1.0, REFS[:2], dense=0.9, allowed=0.01).promote


def test_a_metric_to_minimize_is_predicted_and_judged_the_other_way() -> None:
    # losses: lower is better; dense 0.30, budget 0.05; retraining lowers the loss
    refs = [Reference(1, {SCREEN: 1.0, FULL: 0.33}, 5.0), Reference(2, {SCREEN: 2.0, FULL: 0.40}, 3.0),
            Reference(3, {SCREEN: 3.0, FULL: 0.60}, 2.0)]
    assert predict(SCREEN, 1.5, refs, direction="minimize")[0] == pytest.approx(0.365)
    assert decide(SCREEN, 1.05, 4.0, refs, dense=0.30, allowed=0.05, direction="minimize").promote
    assert not decide(SCREEN, 2.9, 2.0, refs, dense=0.30, allowed=0.05, direction="minimize").promote


def test_rank_correlation_matches_scipy() -> None:
    from scipy.stats import spearmanr

    xs = [0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.6]
    ys = [1.0, 2.0, 0.5, 3.0, 4.0, 0.1, 2.0]
    assert rank_correlation(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2], [1, 2]) is None and rank_correlation([1, 1, 1], [1, 2, 3]) is None


def test_fidelity_settings_are_checked_and_old_studies_train_fully() -> None:
    from autoprune.errors import UserError

    assert Fidelity.from_dict(None).rungs is False
    assert Fidelity.from_dict(Fidelity(short=0.3).to_dict()) == Fidelity(short=0.3)
    for bad in ({"short": 1.0}, {"epoch_budget": 0}, {"screen_batches": 0}):
        with pytest.raises(UserError):
            Fidelity(**bad)


# -- the screen's BatchNorm recalibration --------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # noqa: ANN001, ANN201, D102
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_recalibration_recomputes_batchnorm_statistics_and_trains_no_weight() -> None:
    from torch.utils.data import TensorDataset

    from autoprune.train import recalibrate_batchnorm

    torch.manual_seed(0)
    net = _Net()
    data = TensorDataset(torch.randn(256, 1, 8, 8) * 3 + 2, torch.zeros(256, dtype=torch.long))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = recalibrate_batchnorm(net, data, device=torch.device("cpu"), batches=4, batch_size=32)
    assert seen == 128
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    assert net.bn.momentum == 0.1  # given back
    # the statistics are the plain average over the four batches the loader gave
    from autoprune.data import make_loader

    means = []
    for i, (x, _) in enumerate(make_loader(data, batch_size=32, shuffle=True, seed=0)):
        if i == 4:
            break
        means.append(net.conv(x).mean((0, 2, 3)))
    assert torch.allclose(net.bn.running_mean, torch.stack(means).mean(0), atol=1e-5)


def test_a_users_loop_recalibrates_batchnorm_with_every_step_undone() -> None:
    """The API's screen: the user's own train (AdamW here) runs with its optimizer steps undone;
    only the BatchNorm statistics change."""
    from autoprune.task import FunctionTask

    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(64, 1, 8, 8) * 3 + 2
    y = torch.randint(0, 3, (64,))
    steps = []

    def train(model: nn.Module, amount: float) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
        for _ in range(int(amount)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            steps.append(1)
        return float(loss.detach())

    task = FunctionTask(net, x[:1], train, lambda m: 0.5)
    model = task.dense()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spent = task.recalibrate(model, torch.device("cpu"), Fidelity(screen_amount=0.5), None, seed=0)
    assert spent == pytest.approx(0.5 * task.trial_amount(None)) and len(steps) == int(spent)
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(v, before[k]), k  # no weight moved, weight decay included
    assert not torch.allclose(model.bn.running_mean, before["bn.running_mean"])
    with torch.no_grad():  # every step saw the same batch: the statistics are that batch's
        assert torch.allclose(model.bn.running_mean, model.conv(x).mean((0, 2, 3)), atol=1e-5)


def test_a_model_without_batchnorm_costs_nothing_at_the_screen() -> None:
    from autoprune.task import FunctionTask

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    called = []
    task = FunctionTask(net, torch.zeros(1, 1, 8, 8), lambda m, a: called.append(a), lambda m: 0.5)
    model = task.dense()
    assert task.recalibrate(model, torch.device("cpu"), Fidelity(), None, seed=0) == 0.0 and not called


# -- a study's epochs add up to what the trainer ran ----------------------------------------
def _settings(tmp_path, baseline, **kw):  # noqa: ANN001, ANN003, ANN202
    from autoprune.config import Schedule
    from autoprune.study import SearchSettings

    base = dict(checkpoint=str(baseline), runs_dir=str(tmp_path / "runs"), trials=8, latency_batch=32,
                trial_method="magnitude",  # the rung accounting below is one-shot magnitude's (auto: its own test)
                admm=Schedule(iters=1, epochs=0.25, rho=1.0, retrain_epochs=0.75), study_name="r",
                storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    base.update(kw)
    return SearchSettings(**base)


@pytest.fixture(scope="module")
def counted_search(tmp_path_factory, digits_baseline):  # noqa: ANN001, ANN201
    """A digits search with rungs, the optimizer steps and BatchNorm passes it ran counted
    outside autoprune's own bookkeeping."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import autoprune.task
    from autoprune.study import run_search

    tmp = tmp_path_factory.mktemp("rungs")
    steps, recal = [], []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: steps.append(1))
    original = autoprune.task.recalibrate_batchnorm
    autoprune.task.recalibrate_batchnorm = lambda *a, **k: recal.append(original(*a, **k)) or recal[-1]
    try:
        result = run_search(_settings(tmp, digits_baseline[0], epoch_budget=None))
    finally:
        handle.remove()
        autoprune.task.recalibrate_batchnorm = original
    return result, len(steps), sum(recal)


def test_the_epochs_recorded_per_trial_add_up_to_what_the_trainer_ran(counted_search) -> None:
    from autoprune.data import get_dataset

    result, steps, recal_images = counted_search
    rec = result.record
    train = get_dataset("digits").train
    per_epoch = len(train) // 64  # the built-in loop drops the last partial batch
    trained = [t for t in rec.trials if t.epochs]
    assert trained and steps > 0 and recal_images > 0
    assert rec.epochs_spent() == pytest.approx(steps / per_epoch + recal_images / len(train), rel=1e-9)
    # every trial that climbed counts its rungs: the screen's passes, then each rung's training
    for t in trained:
        assert t.rungs[0]["rung"] == "screen" and 0 < t.rungs[0]["epochs"] < 0.1
        assert [r["epochs"] for r in t.rungs] == sorted(r["epochs"] for r in t.rungs)
        assert t.epochs == pytest.approx(t.rungs[-1]["epochs"]) or t.state == "PRUNED"
    full = [t for t in trained if t.state == "COMPLETE" and t.repeat_of is None]
    assert full and all(t.rungs[-1]["rung"] == "full" for t in full)
    assert all(t.epochs == pytest.approx(t.rungs[0]["epochs"] + 1.0, abs=1 / per_epoch) for t in full)


def test_auto_trials_prune_by_the_table_and_count_their_epochs(tmp_path, digits_baseline) -> None:
    """``trial_method="auto"``: each trial runs the method the equal-epoch table picks for its
    targets; a gmp trial's full rung starts again from the dense weights, so it counts the
    screen, the short rung and the whole schedule, and the study's count is what the trainer ran."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from autoprune.config import LayerTarget
    from autoprune.data import get_dataset
    from autoprune.method_rule import choose_method
    from autoprune.study import run_search

    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: steps.append(1))
    try:
        result = run_search(_settings(tmp_path, digits_baseline[0], epoch_budget=None, trials=6, trial_method="auto"))
    finally:
        handle.remove()
    rec = result.record
    per_epoch = len(get_dataset("digits").train) // 64
    trained = [t for t in rec.trials if t.epochs]
    assert trained and rec.meta.trial_method == "auto"
    for t in trained:
        targets = {k: LayerTarget.from_dict(v) for k, v in t.targets.items()}
        assert t.method == choose_method(targets, 1.0).method
    full = [t for t in trained if t.state == "COMPLETE" and t.repeat_of is None]
    assert full and {t.method for t in full} == {"gmp"}  # filters at 1 epoch: the table's 4-epoch filter rows
    for t in full:
        screen, short = t.rungs[0]["epochs"], t.rungs[1]["epochs"] - t.rungs[0]["epochs"]
        assert t.epochs == pytest.approx(screen + short + 1.0, abs=2 / per_epoch)
    trained_steps = sum(t.epochs - t.rungs[0]["epochs"] for t in trained if t.rungs)
    assert len(steps) == pytest.approx(trained_steps * per_epoch, abs=len(trained) * 2)


def test_rung_scores_reach_the_record_the_summary_and_mlflow_keys(counted_search) -> None:
    from autoprune.tracking.keys import trial_metrics

    result, _, _ = counted_search
    rec = result.record
    full = next(t for t in rec.completed if t.rungs and t.repeat_of is None)
    metrics = {(k, s): v for k, v, s in trial_metrics(full)}
    assert [metrics[("rung_accuracy", i)] for i in range(3)] == [r["score"] for r in full.rungs]
    assert metrics[("epochs", 0)] == full.epochs
    summary = result.to_dict()
    assert summary["epochs"]["spent"] == pytest.approx(rec.epochs_spent())
    assert summary["rung_correlation"]["pairs"] == len([t for t in rec.completed if t.rungs and t.repeat_of is None
                                                        and not t.is_dense])


def test_a_repeat_climbs_no_rung_and_spends_nothing(tmp_path, digits_baseline, monkeypatch) -> None:
    import yaml

    import autoprune.task
    from autoprune.study import run_search

    space = tmp_path / "space.yaml"  # two rates that build the same model: the second trial repeats the first
    space.write_text(yaml.safe_dump({"include": ["features.3"], "types": ["filter"],
                                     "rate": {"low": 0.8, "high": 0.9, "step": 0.1}}))
    calls = []
    real = autoprune.task.ClassifierTask.retrain
    monkeypatch.setattr(autoprune.task.ClassifierTask, "retrain",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    rec = run_search(_settings(tmp_path, digits_baseline[0], trials=3, space=str(space), budget=0.99,
                               channel_multiple=16, min_speedup=0.01)).record
    first, *repeats = [t for t in rec.trials if t.state == "COMPLETE"]
    assert len(repeats) == 2 and len(calls) == 2  # the first trial's short and full rungs, nothing more
    assert first.epochs > 0 and [t.repeat_of for t in repeats] == [first.number] * 2
    assert all(t.epochs == 0.0 for t in repeats) and rec.epochs_spent() == pytest.approx(first.epochs)
