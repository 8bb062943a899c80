"""StructADMM: ADMM with SGD toward per-layer sparsity sets, the hard prune, masked retraining.

The problem ``min f(W) s.t. W_i ∈ S_i`` is split as in Zhang et al. (arXiv 1807.11091)
and the authors' progressive code:

* ``Z⁰ = Π(W⁰)``, ``U⁰ = 0``;
* W-step: SGD on ``loss + Σ ρ/2 ‖W_i − Z_i + U_i‖²`` for one ADMM iteration
  (``epochs`` or ``steps``), the learning rate restarting each iteration;
* Z-step: ``Z = Π(W + U)``; U-step: ``U += W − Z``;
* ``ρ ← min(ρ · growth, ρ_max)``.

Then W is hard-pruned to the support of ``Π(W)`` and retrained with masked gradients,
masked weights and masked optimizer state. The primal residual ``‖W − Z‖/‖W‖`` per
layer per iteration is the convergence signal and is recorded.

``method="magnitude"`` skips ADMM: it hard-prunes the dense weights at once and spends
the same number of training epochs on masked retraining, for a fair comparison.

At equal epochs (``benchmarks/admm_vs_magnitude.py``), a W-step epoch buys less than an
epoch of masked retraining, for two reasons. On the support of ``Z`` every U-step leaves
``U = 0`` (``Z = W + U`` there), so the next W-step's penalty ``ρ (W − Z)`` anchors the
surviving weights to their values at the last Z-step: a proximal term of strength ρ (1 to
4 in the search's schedule, against a weight decay of 5e-4) that holds back their
training. And the penalty's pull per SGD step is about ``lr · ρ``: at lr 0.01 and ρ 1 a
half-epoch W-step leaves ADMM far from converged at high rates, so the hard prune still
collapses and only the retraining epochs are left to recover. Dropping the anchor
(penalty on the pruned entries only), ramping the rates up over the iterations, no
weight decay in the W-steps and a distillation term from the dense model did not help
at 5 epochs on ``digits``. A higher learning rate (0.05) and a shorter ADMM phase with a
stronger ρ (:meth:`Schedule.for_budget`) brought ADMM from about 4 (digits-cnn) and 9
(lenet5) points behind one-shot magnitude pruning to under a point behind, not ahead: magnitude
pruning gains from the same learning rate (``benchmarks/results/admm_vs_magnitude.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.config import Schedule
from autoprune.data import make_loader
from autoprune.errors import UserError
from autoprune.norms import mask_statistics
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.steering import admm_penalty, hold_masks, no_step_error
from autoprune.train import ClassifierTrainer, evaluate

METHODS = ("admm", "magnitude", "gmp")
NOT_CONVERGED = 0.5  # a final primal residual above this is reported as non-convergence

#: A training loop: ``train(model, amount)`` trains ``model`` in place for ``amount`` (epochs
#: or steps: the loop's own unit) with its own optimizer; what it returns (a mean loss, or
#: anything) is recorded when it is a number.
TrainFn = Callable[[nn.Module, float], object]
#: A metric: ``evaluate(model) -> float`` on the user's validation data.
EvalFn = Callable[[nn.Module], float]


@dataclass
class AdmmIteration:
    """What one ADMM iteration did."""

    iteration: int
    rho: float
    train_loss: float
    residual: dict[str, float]  # layer -> ‖W − Z‖ / ‖W‖ after the Z-step


@dataclass
class PruneHistory:
    """The record of a pruning run, for reports and tracking."""

    method: str
    iterations: list[AdmmIteration] = field(default_factory=list)
    retrain_losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hard_prune_val_acc: float | None = None  # the metric right after the hard prune, before retraining


def _as_loss(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def admm_phase(
    model: nn.Module,
    projector: Projector,
    train: TrainFn,
    schedule: Schedule,
    *,
    reporter: Reporter | None = None,
    history: PruneHistory | None = None,
) -> PruneHistory:
    """Run ``schedule.iters`` ADMM iterations in place on ``model`` (no pruning yet): each
    W-step is ``train(model, schedule.w_step_amount())`` with the penalty's gradient added
    before every optimizer step (:func:`autoprune.steering.admm_penalty`)."""
    reporter = reporter or Reporter()
    history = history or PruneHistory("admm")
    names = projector.constrained_params
    named = dict(model.named_parameters())
    params = {n: named[n] for n in names}
    with torch.no_grad():
        z, _ = projector.project({n: p.detach().clone() for n, p in params.items()})
        u = {n: torch.zeros_like(p) for n, p in params.items()}
    rho, amount = schedule.rho, schedule.w_step_amount()
    with reporter.task("ADMM", schedule.iters) as task:
        for k in range(schedule.iters):
            with admm_penalty(params, z, u, rho) as seen:
                loss = _as_loss(train(model, amount))
            if seen.steps == 0 and amount > 0:
                raise no_step_error(f"ADMM iteration {k + 1}")
            with torch.no_grad():
                w = {n: p.detach() for n, p in params.items()}
                z, _ = projector.project({n: w[n] + u[n] for n in names})
                for n in names:
                    u[n].add_(w[n] - z[n])
                residual = {n: float((w[n] - z[n]).norm() / w[n].norm().clamp_min(1e-12)) for n in names}
            history.iterations.append(AdmmIteration(k + 1, rho, loss, residual))
            worst = max(residual.values()) if residual else 0.0
            task.advance()
            task.set(rho=rho, loss=loss, max_residual=worst)
            rho = min(rho * schedule.rho_growth, schedule.rho_max)
    if history.iterations:
        last = history.iterations[-1].residual
        worst = max(last, key=last.get) if last else None
        if worst is not None and last[worst] > NOT_CONVERGED:
            history.notes.append(
                f"ADMM did not converge: ||W-Z||/||W|| is {last[worst]:.2f} for {worst} after {schedule.iters} "
                f"iterations (rho reached {history.iterations[-1].rho:.3g}); the hard prune will cost accuracy. "
                "Raise rho (its pull per SGD step is about lr x rho, so a lower lr needs a higher rho), rho_growth "
                "or the ADMM epochs."
            )
    return history


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of the named parameters; norms over channels (LayerNorm,
    GroupNorm) with pruned channels then normalise over their kept channels only, as they
    will once compacted (:func:`autoprune.norms.mask_statistics`)."""
    named = dict(model.named_parameters())
    for pname, mask in masks.items():
        named[pname].mul_(mask.to(named[pname].device, named[pname].dtype))
    mask_statistics(model, masks)


def masked_retrain(model: nn.Module, masks: dict[str, torch.Tensor], train: TrainFn, amount: float) -> float:
    """``train(model, amount)`` with pruned weights held at zero: gradients, weights and
    optimizer state stay masked (:func:`autoprune.steering.hold_masks`). Returns what
    ``train`` returned as a float (NaN when it is not a number)."""
    if amount <= 0:
        return float("nan")
    named = dict(model.named_parameters())
    with hold_masks({n: named[n] for n in masks}, masks) as seen:
        loss = _as_loss(train(model, amount))
    if seen.steps == 0:
        raise no_step_error("masked retraining")
    return loss


def prune_with(
    model: nn.Module,
    projector: Projector,
    schedule: Schedule,
    *,
    train: TrainFn,
    retrain: TrainFn | None = None,
    evaluate: EvalFn | None = None,
    method: str = "admm",
    reporter: Reporter | None = None,
    on_hard_prune: Callable[[float], None] | None = None,
    steps_per_unit: float | None = None,
) -> tuple[dict[str, torch.Tensor], PruneHistory]:
    """Prune ``model`` in place with ADMM (or one-shot or gradual magnitude pruning) and masked
    retraining, through the caller's training loop.

    Args:
        schedule: Iterations and training amounts, in ``train``'s unit (``steps``, where
            set, count as that many of the unit per W-step).
        train: The W-step's loop, ``train(model, amount)``.
        retrain: Masked retraining's loop (default: ``train``).
        evaluate: The metric; when given it is measured right after the hard prune
            (``history.hard_prune_val_acc``) and passed to ``on_hard_prune``, which may raise
            to stop the run there.
        method: ``"admm"``; ``"magnitude"``: no ADMM phase, the same training in all spent
            on masked retraining after a one-shot magnitude prune; ``"gmp"``: the same training
            in one ``retrain`` run during which the rates rise gradually
            (:mod:`autoprune.gradual`; no hard-prune moment, so ``evaluate`` is not called).
        steps_per_unit: Optimizer steps per unit of ``amount`` (``gmp`` schedules its mask
            updates by step and needs it; autoprune's built-in loop knows it).

    Returns:
        The hard-prune masks (parameter name -> bool, True: kept) and the run's history.
    """
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; use one of: {', '.join(METHODS)}.")
    retrain = retrain or train
    history = PruneHistory(method, notes=list(projector.notes))
    if method == "gmp":
        return _gradual(model, projector, schedule, retrain, steps_per_unit, history)
    retrain_amount = schedule.retrain_epochs
    if method == "admm":
        admm_phase(model, projector, train, schedule, reporter=reporter, history=history)
    else:  # the same training budget, all spent on masked retraining
        retrain_amount = schedule.total_amount()
    masks = projector.hard_masks()
    apply_masks(model, masks)
    if evaluate is not None:
        history.hard_prune_val_acc = float(evaluate(model))
        if on_hard_prune is not None:
            on_hard_prune(history.hard_prune_val_acc)
    masked_retrain(model, masks, retrain, retrain_amount)
    return masks, history


def _gradual(model: nn.Module, projector: Projector, schedule: Schedule, retrain: TrainFn,
             steps_per_unit: float | None, history: PruneHistory) -> tuple[dict[str, torch.Tensor], PruneHistory]:
    """Gradual magnitude pruning over the schedule's whole training, in one ``retrain`` run."""
    from autoprune.gradual import gradual_pruning

    if steps_per_unit is None:
        raise UserError("method 'gmp' schedules its mask updates by optimizer step, which needs autoprune's built-in "
                        "training loop; with your own train use method='magnitude' or 'admm'.")
    total = schedule.total_amount()
    with gradual_pruning(model, projector, max(1, round(total * steps_per_unit))) as seen:
        loss = _as_loss(retrain(model, total))
    if seen.steps == 0 and total > 0:
        raise no_step_error("gradual pruning")
    masks = projector.hard_masks()  # the targets' masks (every rate reached): compaction reads its kept channels
    apply_masks(model, masks)
    history.retrain_losses.append(loss)
    return masks, history


def _steps_per_epoch(train_set: torch.utils.data.Dataset, batch_size: int) -> int:
    """Optimizer steps per epoch of the built-in loop (:func:`autoprune.train.run_epochs`'s loader)."""
    return len(make_loader(train_set, batch_size=batch_size, shuffle=False, drop_last=len(train_set) > batch_size))


def prune(
    model: nn.Module,
    projector: Projector,
    train_set: torch.utils.data.Dataset,
    settings: Schedule,
    *,
    method: str = "admm",
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
    val_set: torch.utils.data.Dataset | None = None,
    on_hard_prune: Callable[[float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], PruneHistory]:
    """:func:`prune_with` and the built-in classifier loop (:class:`~autoprune.train.ClassifierTrainer`:
    SGD with a cosine learning rate restarting every phase, cross-entropy, top-1 on ``val_set``).

    Args:
        on_hard_prune: Called with the validation accuracy right after the hard prune
            (needs ``val_set``), before retraining; it may raise to stop the run there.

    Returns:
        The hard-prune masks (parameter name -> bool) and the run's history.
    """
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; use one of: {', '.join(METHODS)}.")
    model.to(device)
    per_epoch = len(make_loader(train_set, batch_size=settings.batch_size, shuffle=False))
    schedule = settings.in_epochs(per_epoch)
    retrain_losses: list[float] = []
    w_step = ClassifierTrainer(train_set, settings, device=device, seed=seed + 1000, reporter=reporter,
                               description="ADMM W-step")
    retrain = ClassifierTrainer(train_set, settings, device=device, seed=seed + 5000, reporter=reporter,
                                description="masked retraining", on_loss=retrain_losses.append)
    score = None if val_set is None else (lambda m: evaluate(m, val_set, device=device))
    masks, history = prune_with(model, projector, schedule, train=w_step, retrain=retrain, evaluate=score,
                                method=method, reporter=reporter, on_hard_prune=on_hard_prune,
                                steps_per_unit=_steps_per_epoch(train_set, settings.batch_size))
    history.retrain_losses = retrain_losses
    return masks, history
