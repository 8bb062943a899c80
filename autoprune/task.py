"""What a search or a prune works on: the dense model, its input, the training loop, the metric.

A :class:`Task` answers four questions and nothing else: a fresh copy of the dense model,
one example input, how to prune it (ADMM or magnitude through a training loop), and its
score. The built-in :class:`ClassifierTask` (a registry dataset, the dense checkpoint, SGD
with cross-entropy, top-1 accuracy) is what the CLI searches; :class:`FunctionTask`
takes the user's own ``train(model, amount)`` and ``evaluate(model) -> float`` (any
metric: ``accuracy``, ``mAP``, ``IoU``, ``loss``; higher or lower is better), which is
what :func:`autoprune.search` and :func:`autoprune.prune` use.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autoprune import admm
from autoprune.admm import EvalFn, PruneHistory, TrainFn
from autoprune.config import Schedule
from autoprune.data import make_loader
from autoprune.errors import UserError
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.steering import frozen_weights
from autoprune.train import (
    ClassifierTrainer,
    evaluate,
    fresh_batchnorm,
    recalibrate_batchnorm,
    seed_everything,
    steps_for,
)

__all__ = ["DIRECTIONS", "ClassifierTask", "FunctionTask", "Task", "metric_drop", "model_fingerprint"]

DIRECTIONS = ("maximize", "minimize")


def metric_drop(dense: float, value: float, direction: str) -> float:
    """How much worse ``value`` is than ``dense`` (positive: worse), in the metric's units."""
    return dense - value if direction == "maximize" else value - dense


def model_fingerprint(model: nn.Module) -> str:
    """``user:<class>:<sha256 of the state dict>``: which model and weights a study searches."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if value.numel() else b"")
    return f"user:{type(model).__qualname__}:{h.hexdigest()[:16]}"


class Task:
    """The base: subclasses fill in the four methods and the two names."""

    metric: str = "accuracy"
    direction: str = "maximize"
    methods: tuple[str, ...] = admm.METHODS  # the prune methods its loop can run
    amount_unit_is_epoch: bool = True  # its training amounts are epochs (the equal-epoch table's unit)

    def dense(self) -> nn.Module:
        """A fresh copy of the dense model on the CPU (its weights never change)."""
        raise NotImplementedError

    def example(self) -> torch.Tensor:
        """One example input, batch 1, on the CPU."""
        raise NotImplementedError

    def score(self, model: nn.Module, device: torch.device) -> float:
        """The metric on validation data."""
        raise NotImplementedError

    def test_score(self, model: nn.Module, device: torch.device) -> float | None:
        """The metric on held-out test data, where the task has some (else None)."""
        return None

    def dense_score(self, device: torch.device) -> float:
        """The metric of the dense model on validation data."""
        return self.score(self.dense().to(device), device)

    def prune(self, model: nn.Module, projector: Projector, settings: Schedule, *, method: str, seed: int,
              device: torch.device, reporter: Reporter | None = None,
              on_hard_prune: Callable[[float], None] | None = None) -> tuple[dict[str, torch.Tensor], PruneHistory]:
        """Prune ``model`` in place (ADMM or magnitude, hard prune, masked retraining)."""
        raise NotImplementedError

    # -- the search's rungs (autoprune.study.rungs) --------------------------------------
    def rule_epochs(self, settings: Schedule | None) -> float | None:
        """A prune's whole training in epochs, as :func:`autoprune.method_rule.choose_method`
        reads it; None where the loop's unit is not known to be the epoch."""
        return self.trial_amount(settings) if self.amount_unit_is_epoch else None

    def trial_amount(self, settings: Schedule) -> float:
        """A trial's whole training, in the training loop's unit."""
        raise NotImplementedError

    def recalibrate(self, model: nn.Module, device: torch.device, fidelity: Any, settings: Schedule,  # noqa: ANN401
                    seed: int) -> float:
        """Recompute the BatchNorm statistics of a hard-pruned ``model`` without training a
        weight; returns what it cost, in the training loop's unit (0 without BatchNorm)."""
        raise NotImplementedError

    def screen_score(self, model: nn.Module, device: torch.device, fidelity: Any) -> float:  # noqa: ANN401
        """The metric the screen rung scores with (default: :meth:`score`)."""
        return self.score(model, device)

    def retrain(self, model: nn.Module, masks: dict[str, torch.Tensor], amount: float, settings: Schedule, *,
                seed: int, device: torch.device, reporter: Reporter | None = None) -> tuple[float, float]:
        """Masked retraining of ``model`` for ``amount``; returns the training actually run, in the
        loop's unit, and the mean training loss (NaN where the loop returns none)."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example().shape[1:])


class ClassifierTask(Task):
    """The built-in classifier: a dense checkpoint, a registry dataset's splits, SGD and
    cross-entropy (:class:`~autoprune.train.ClassifierTrainer`), top-1 accuracy."""

    metric = "accuracy"
    direction = "maximize"

    def __init__(self, splits: Any, checkpoint: Any) -> None:  # noqa: ANN401 - DatasetSplits, Checkpoint
        self.splits = splits
        self.checkpoint = checkpoint

    def dense(self) -> nn.Module:
        return self.checkpoint.build()

    def example(self) -> torch.Tensor:
        return torch.zeros(1, self.splits.in_channels, *self.splits.image_size)

    def score(self, model: nn.Module, device: torch.device) -> float:
        return evaluate(model, self.splits.val, device=device)

    def test_score(self, model: nn.Module, device: torch.device) -> float | None:
        return evaluate(model, self.splits.test, device=device)

    def prune(self, model: nn.Module, projector: Projector, settings: Schedule, *, method: str, seed: int,
              device: torch.device, reporter: Reporter | None = None,
              on_hard_prune: Callable[[float], None] | None = None) -> tuple[dict[str, torch.Tensor], PruneHistory]:
        seed_everything(seed)
        return admm.prune(model, projector, self.splits.train, settings, method=method, device=device, seed=seed,
                          reporter=reporter, val_set=self.splits.val, on_hard_prune=on_hard_prune)

    def trial_amount(self, settings: Schedule) -> float:
        per_epoch = self._per_epoch(settings)
        return settings.total_amount(per_epoch)

    def _per_epoch(self, settings: Schedule) -> int:
        return len(make_loader(self.splits.train, batch_size=settings.batch_size, shuffle=False,
                               drop_last=len(self.splits.train) > settings.batch_size))

    def recalibrate(self, model: nn.Module, device: torch.device, fidelity: Any, settings: Schedule,  # noqa: ANN401
                    seed: int) -> float:
        # at most 5% of an epoch (two batches at least): on a small training set 16 batches would be most of it
        batches = min(fidelity.screen_batches, max(2, math.ceil(0.05 * self._per_epoch(settings))))
        images = recalibrate_batchnorm(model, self.splits.train_eval, device=device, batches=batches,
                                       batch_size=settings.batch_size, seed=seed)
        return images / max(len(self.splits.train), 1)

    def screen_score(self, model: nn.Module, device: torch.device, fidelity: Any) -> float:  # noqa: ANN401
        return evaluate(model, self.screen_subset(fidelity.screen_val), device=device)

    def screen_subset(self, size: int) -> torch.utils.data.Dataset:
        """``size`` validation images drawn once with a fixed seed (all of them for 0 or more)."""
        val = self.splits.val
        if size <= 0 or size >= len(val):
            return val
        rows = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:size].sort().values
        return torch.utils.data.Subset(val, rows.tolist())

    def retrain(self, model: nn.Module, masks: dict[str, torch.Tensor], amount: float, settings: Schedule, *,
                seed: int, device: torch.device, reporter: Reporter | None = None) -> tuple[float, float]:
        if amount <= 0:
            return 0.0, float("nan")
        model.to(device)
        trainer = ClassifierTrainer(self.splits.train, settings, device=device, seed=seed, reporter=reporter,
                                    description="masked retraining")
        loss = admm.masked_retrain(model, masks, trainer, amount)
        per_epoch = self._per_epoch(settings)
        return steps_for(amount, per_epoch) / per_epoch, loss


class FunctionTask(Task):
    """The user's model, training loop and metric (``gmp`` needs the built-in loop's step count).

    Args:
        model: The trained dense model (copied; never changed).
        example_inputs: One input batch (its first dimension is the batch).
        train: ``train(model, amount)``: trains ``model`` in place for ``amount`` of its own
            unit (epochs or steps), creating its own optimizer. autoprune adds the ADMM
            penalty and holds the masks through optimizer hooks; the function needs no change.
        evaluate: ``evaluate(model) -> float`` on validation data (None: no metric, for a
            prune without one; :meth:`score` then refuses).
        metric: The metric's name (``accuracy``, ``mAP``, ``IoU``, ``loss``...).
        direction: ``"maximize"`` or ``"minimize"``.
        schedule: How much ``train`` each phase gets (default: :meth:`Schedule.for_budget` of 5,
            6 x 0.25 + 3.5, in ``train``'s unit).
        test: ``test(model) -> float`` on held-out data, reported beside (optional).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, train: TrainFn, evaluate: EvalFn | None, *,
                 metric: str = "accuracy", direction: str = "maximize", schedule: Schedule | None = None,
                 test: EvalFn | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise UserError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
        if not torch.is_tensor(example_inputs) or example_inputs.dim() < 2:
            raise UserError("example_inputs must be one input tensor with a batch dimension first, e.g. "
                            "torch.randn(1, 3, 224, 224).")
        for name, fn in (("train", train), ("evaluate", evaluate)):
            if not callable(fn) and not (name == "evaluate" and fn is None):
                raise UserError(f"{name} must be a function; got {type(fn).__name__}.")
        if direction not in DIRECTIONS:
            raise UserError(f"direction must be 'maximize' or 'minimize' (is a higher {metric} better?); "
                            f"got {direction!r}.")
        if not isinstance(metric, str) or not metric.strip():
            raise UserError("metric must be a non-empty name such as 'accuracy' or 'mAP'.")
        self._model = copy.deepcopy(model).cpu().eval()
        self._example = example_inputs[:1].detach().cpu()
        self.train, self.evaluate, self.test = train, evaluate, test
        self.metric, self.direction = metric.strip(), direction
        self.schedule = schedule or Schedule.for_budget(5.0)
        self.methods = ("admm", "magnitude")
        self.amount_unit_is_epoch = False  # the user's unit (epochs or steps): the method rule cannot tell
        self._dense_scores: dict[str, float] = {}

    def dense(self) -> nn.Module:
        return copy.deepcopy(self._model)

    def example(self) -> torch.Tensor:
        return self._example.clone()

    def _call_metric(self, fn: EvalFn, model: nn.Module, device: torch.device) -> float:
        model.to(device)
        value = fn(model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"evaluate() must return a number (the {self.metric}); it returned "
                            f"{type(value).__name__}.") from None
        if not math.isfinite(value):
            raise UserError(f"evaluate() returned {value} for the {self.metric}; it must be a finite number.")
        return value

    def score(self, model: nn.Module, device: torch.device) -> float:
        if self.evaluate is None:
            raise UserError("this needs a metric: pass evaluate=, a function model -> float on validation data.")
        return self._call_metric(self.evaluate, model, device)

    def test_score(self, model: nn.Module, device: torch.device) -> float | None:
        return None if self.test is None else self._call_metric(self.test, model, device)

    def dense_score(self, device: torch.device) -> float:
        """The user's metric of the dense model, called once per device and kept: a search calls
        it before it writes anything (so that a metric that returns no number is refused with
        nothing half-written), and the study's dense baseline reuses it."""
        if str(device) not in self._dense_scores:
            self._dense_scores[str(device)] = self.score(self.dense(), device)
        return self._dense_scores[str(device)]

    def prune(self, model: nn.Module, projector: Projector, settings: Schedule | None = None, *, method: str,
              seed: int, device: torch.device, reporter: Reporter | None = None,
              on_hard_prune: Callable[[float], None] | None = None) -> tuple[dict[str, torch.Tensor], PruneHistory]:
        seed_everything(seed)
        model.to(device)
        schedule = self.schedule if settings is None else settings
        return admm.prune_with(model, projector, schedule, train=self.train,
                               evaluate=None if self.evaluate is None else (lambda m: self.score(m, device)),
                               method=method, reporter=reporter, on_hard_prune=on_hard_prune)

    def trial_amount(self, settings: Schedule | None) -> float:
        return (self.schedule if settings is None else settings).total_amount()

    def recalibrate(self, model: nn.Module, device: torch.device, fidelity: Any, settings: Schedule | None,  # noqa: ANN401
                    seed: int) -> float:
        """The user's ``train`` for ``screen_amount`` of a trial's training with every optimizer
        step undone (:func:`autoprune.steering.frozen_weights`): only the BatchNorm statistics,
        reset first and averaged over the batches seen, change."""
        amount = fidelity.screen_amount * self.trial_amount(settings)
        if amount <= 0:
            return 0.0
        model.to(device)
        with fresh_batchnorm(model) as norms:
            if norms == 0:
                return 0.0
            seed_everything(seed)
            model.train()  # a loop that leaves the mode as it finds it still updates the statistics
            with frozen_weights(dict(model.named_parameters())):
                self.train(model, amount)
        model.eval()
        return amount

    def retrain(self, model: nn.Module, masks: dict[str, torch.Tensor], amount: float, settings: Schedule | None,
                *, seed: int, device: torch.device, reporter: Reporter | None = None) -> tuple[float, float]:
        if amount <= 0:
            return 0.0, float("nan")
        seed_everything(seed)
        model.to(device)
        return amount, admm.masked_retrain(model, masks, self.train, amount)
