"""Training and evaluation loops shared by baselines, ADMM and retraining."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import make_loader
from autoprune.errors import NonFiniteLossError
from autoprune.progress import Reporter

StepHook = Callable[[], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainSettings:
    """Plain supervised training (the dense baseline)."""

    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    label_smoothing: float = 0.0


def make_sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with weight decay on weights only (not on BN parameters or biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def run_epochs(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    device: torch.device,
    epochs: float,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    steps: int | None = None,
    grad_hook: StepHook | None = None,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    reporter: Reporter | None = None,
    description: str = "train",
    on_loss: Callable[[float], None] | None = None,
) -> float:
    """Train with SGD and a cosine learning rate over ``epochs`` (or ``steps``) and return the mean loss.

    Args:
        grad_hook: Called after ``backward()`` and before the optimizer step; ADMM adds
            its penalty gradient here and masked retraining zeroes pruned gradients.
        after_step: Called after every optimizer step (masked retraining re-applies masks
            to weights and optimizer state here).
        on_loss: Receives the mean training loss of each epoch.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite ("loss became nan at step 12
            (epoch 1) of ...", steps counted from 1), at that step.
    """
    reporter = reporter or Reporter()
    # the run's randomness (augmentation, dropout) comes from ``seed`` alone, whatever ran before
    # in the process (an evaluation, another trial); the caller's RNG state is left as it was
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed,
                             drop_last=len(dataset) > batch_size)
        per_epoch = len(loader)
        total = steps if steps is not None else steps_for(epochs, per_epoch)
        opt = make_sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        model.train()
        step, running, count, epoch_loss, epoch_n = 0, 0.0, 0, 0.0, 0
        with reporter.task(description, total) as task:
            while step < total:
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x), y)
                    value = float(loss.detach())
                    if not math.isfinite(value):  # at once: the rest of the schedule would train on NaN
                        raise NonFiniteLossError(f"loss became {value} at step {step + 1} (epoch "
                                                 f"{step // per_epoch + 1}) of {description}")
                    loss.backward()
                    if grad_hook is not None:
                        grad_hook()
                    opt.step()
                    sched.step()
                    if after_step is not None:
                        after_step(opt)
                    running += value
                    count += 1
                    epoch_loss += value
                    epoch_n += 1
                    step += 1
                    task.advance()
                    if step % 10 == 0 or step == total:
                        epochs_total = math.ceil(total / per_epoch)
                        task.set(epoch=f"{min(step // per_epoch + 1, epochs_total)}/{epochs_total}", loss=running / count)
                    if step >= total:
                        break
                if on_loss is not None and epoch_n:
                    on_loss(epoch_loss / epoch_n)
                epoch_loss, epoch_n = 0.0, 0
        return running / max(count, 1)


class ClassifierTrainer:
    """The built-in training loop as a ``train(model, epochs)`` function: SGD with momentum,
    weight decay and a cosine learning rate over the call, cross-entropy on ``dataset``.

    Each call restarts the learning rate and takes its randomness from ``seed`` plus the
    number of earlier calls, so a run is repeatable whatever ran before it.

    Args:
        dataset: The training set.
        settings: ``lr``, ``momentum``, ``weight_decay`` and ``batch_size`` (an
            :class:`~autoprune.config.Schedule` or :class:`TrainSettings`).
        description: The progress bar's label.
        on_loss: Receives the mean training loss of each epoch.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, settings: object, *, device: torch.device, seed: int = 0,
                 reporter: Reporter | None = None, description: str = "train",
                 on_loss: Callable[[float], None] | None = None) -> None:
        self.dataset = dataset
        self.settings = settings
        self.device = device
        self.seed = seed
        self.reporter = reporter
        self.description = description
        self.on_loss = on_loss
        self.calls = 0

    def __call__(self, model: nn.Module, epochs: float) -> float:
        """Train ``model`` in place for ``epochs`` (fractions allowed); returns the mean loss."""
        s = self.settings
        seed = self.seed + self.calls
        self.calls += 1
        return run_epochs(model, self.dataset, device=self.device, epochs=epochs, lr=s.lr, momentum=s.momentum,
                          weight_decay=s.weight_decay, batch_size=s.batch_size, seed=seed, reporter=self.reporter,
                          description=f"{self.description} ({epochs:.3g} epochs)", on_loss=self.on_loss)


def steps_for(epochs: float, per_epoch: int) -> int:
    """The optimizer steps :func:`run_epochs` takes for ``epochs`` of ``per_epoch`` batches."""
    return max(1, int(math.ceil(epochs * per_epoch - 1e-9)))


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def fresh_batchnorm(model: nn.Module) -> Iterator[int]:
    """Reset every BatchNorm's running statistics and make it average the batches it sees from
    now on with equal weight (``momentum=None``); each BatchNorm's momentum comes back at the end.
    Yields the number of BatchNorm layers (0: nothing to recompute)."""
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield len(norms)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: torch.utils.data.Dataset, *, device: torch.device,
                          batches: int, batch_size: int = 64, seed: int = 0) -> int:
    """Recompute the BatchNorm statistics of ``model`` from ``batches`` batches of ``dataset``
    (forward passes in training mode, no weight changes; EagleEye's adaptive BatchNorm,
    arXiv 2007.02491). Returns the images passed (0 when the model has no BatchNorm)."""
    with fresh_batchnorm(model) as n:
        if n == 0:
            return 0
        was_training = model.training
        model.train()
        seen = 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for i, (x, _) in enumerate(make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed)):
                if i >= batches:
                    break
                model(x.to(device))
                seen += int(x.shape[0])
        model.train(was_training)
    return seen


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: torch.utils.data.Dataset, *, device: torch.device, batch_size: int = 256
) -> float:
    """Top-1 accuracy in [0, 1] on ``dataset``."""
    model.eval()
    correct, total = 0, 0
    for x, y in make_loader(dataset, batch_size=batch_size, shuffle=False):
        pred = model(x.to(device)).argmax(dim=1)
        correct += int((pred.cpu() == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def train_model(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    *,
    device: torch.device,
    settings: TrainSettings,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Train a dense model from scratch; returns the final training loss and validation accuracy."""
    reporter = reporter or Reporter()
    model.to(device)
    loss = run_epochs(
        model,
        train_set,
        device=device,
        epochs=settings.epochs,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
        seed=seed,
        reporter=reporter,
        description=f"train {settings.epochs} epochs",
    )
    return {"train_loss": loss, "val_acc": evaluate(model, val_set, device=device)}
