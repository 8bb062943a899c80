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
stronger ρ (:meth:`AdmmSettings.for_budget`) brought ADMM from about 4 (digits-cnn) and 9
(lenet5) points behind one-shot magnitude pruning to under a point behind, not ahead: magnitude
pruning gains from the same learning rate (``benchmarks/results/admm_vs_magnitude.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.config import AdmmSettings
from autoprune.data import make_loader
from autoprune.errors import UserError
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.train import evaluate, run_epochs

METHODS = ("admm", "magnitude")
NOT_CONVERGED = 0.5  # a final primal residual above this is reported as non-convergence


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
    hard_prune_val_acc: float | None = None  # accuracy right after the hard prune, before retraining


def admm_phase(
    model: nn.Module,
    projector: Projector,
    train_set: torch.utils.data.Dataset,
    settings: AdmmSettings,
    *,
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
    history: PruneHistory | None = None,
) -> PruneHistory:
    """Run ``settings.iters`` ADMM iterations in place on ``model`` (no pruning yet)."""
    reporter = reporter or Reporter()
    history = history or PruneHistory("admm")
    names = projector.constrained_params
    named = dict(model.named_parameters())
    params = {n: named[n] for n in names}
    with torch.no_grad():
        z, _ = projector.project({n: p.detach().clone() for n, p in params.items()})
        u = {n: torch.zeros_like(p) for n, p in params.items()}
    rho = settings.rho
    with reporter.task("ADMM", settings.iters) as task:
        for k in range(settings.iters):
            current_rho = rho

            def penalty_grad() -> None:
                with torch.no_grad():
                    for n, p in params.items():
                        if p.grad is not None:
                            p.grad.add_(p.detach() - z[n] + u[n], alpha=current_rho)

            loss = run_epochs(
                model,
                train_set,
                device=device,
                epochs=settings.epochs,
                steps=settings.steps,
                lr=settings.lr,
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
                batch_size=settings.batch_size,
                seed=seed + 1000 + k,
                grad_hook=penalty_grad,
                reporter=reporter,
                description=f"ADMM iteration {k + 1}/{settings.iters}",
            )
            with torch.no_grad():
                w = {n: p.detach() for n, p in params.items()}
                z, _ = projector.project({n: w[n] + u[n] for n in names})
                for n in names:
                    u[n].add_(w[n] - z[n])
                residual = {n: float((w[n] - z[n]).norm() / w[n].norm().clamp_min(1e-12)) for n in names}
            history.iterations.append(AdmmIteration(k + 1, current_rho, loss, residual))
            worst = max(residual.values()) if residual else 0.0
            task.advance()
            task.set(rho=current_rho, loss=loss, max_residual=worst)
            rho = min(rho * settings.rho_growth, settings.rho_max)
    if history.iterations:
        last = history.iterations[-1].residual
        worst = max(last, key=last.get) if last else None
        if worst is not None and last[worst] > NOT_CONVERGED:
            history.notes.append(
                f"ADMM did not converge: ||W-Z||/||W|| is {last[worst]:.2f} for {worst} after {settings.iters} "
                f"iterations (rho reached {history.iterations[-1].rho:.3g}); the hard prune will cost accuracy. "
                "Raise rho (its pull per SGD step is about lr x rho, so a lower lr needs a higher rho), rho_growth "
                "or the ADMM epochs."
            )
    return history


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of the named parameters."""
    named = dict(model.named_parameters())
    for pname, mask in masks.items():
        named[pname].mul_(mask.to(named[pname].device, named[pname].dtype))


def masked_retrain(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    train_set: torch.utils.data.Dataset,
    settings: AdmmSettings,
    *,
    epochs: float,
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
    on_loss=None,  # noqa: ANN001
) -> float:
    """Retrain with pruned weights held at zero: gradients, weights and momentum stay masked."""
    if epochs <= 0:
        return float("nan")
    named = dict(model.named_parameters())
    pairs = [(named[n], m.to(named[n].device, named[n].dtype)) for n, m in masks.items()]

    def zero_grads() -> None:
        for p, m in pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def reapply(opt: torch.optim.Optimizer) -> None:
        for p, m in pairs:
            p.mul_(m)
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    return run_epochs(
        model,
        train_set,
        device=device,
        epochs=epochs,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
        seed=seed + 5000,
        grad_hook=zero_grads,
        after_step=reapply,
        reporter=reporter,
        description=f"masked retraining ({epochs:g} epochs)",
        on_loss=on_loss,
    )


def prune(
    model: nn.Module,
    projector: Projector,
    train_set: torch.utils.data.Dataset,
    settings: AdmmSettings,
    *,
    method: str = "admm",
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
    val_set: torch.utils.data.Dataset | None = None,
    on_hard_prune: Callable[[float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], PruneHistory]:
    """Prune ``model`` in place with ADMM (or one-shot magnitude) and masked retraining.

    Args:
        on_hard_prune: Called with the validation accuracy right after the hard prune
            (needs ``val_set``), before retraining; it may raise to stop the run there.

    Returns:
        The hard-prune masks (parameter name -> bool) and the run's history.
    """
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; use one of: {', '.join(METHODS)}.")
    model.to(device)
    history = PruneHistory(method, notes=list(projector.notes))
    retrain_epochs = settings.retrain_epochs
    if method == "admm":
        admm_phase(model, projector, train_set, settings, device=device, seed=seed, reporter=reporter, history=history)
    else:  # the same training budget, all spent on masked retraining
        if settings.steps is not None:
            per_epoch = len(make_loader(train_set, batch_size=settings.batch_size, shuffle=False))
            retrain_epochs += settings.iters * settings.steps / max(per_epoch, 1)
        else:
            retrain_epochs += settings.iters * settings.epochs
    masks = projector.hard_masks()
    apply_masks(model, masks)
    if val_set is not None:
        history.hard_prune_val_acc = evaluate(model, val_set, device=device)
        if on_hard_prune is not None:
            on_hard_prune(history.hard_prune_val_acc)
    masked_retrain(
        model,
        masks,
        train_set,
        settings,
        epochs=retrain_epochs,
        device=device,
        seed=seed,
        reporter=reporter,
        on_loss=history.retrain_losses.append,
    )
    return masks, history
