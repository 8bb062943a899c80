"""ADMM and masked retraining through any training loop: optimizer hooks, removed afterwards.

A user's ``train(model, amount)`` builds its own optimizer, loss, autocast and loader.
autoprune reaches its gradients and weights without changing it, through two of
PyTorch's global optimizer hooks (:func:`torch.optim.optimizer.register_optimizer_step_pre_hook`
and ``..._post_hook``), registered only while the loop runs and only acting on the
parameters of the model being pruned:

* :func:`admm_penalty` (the W-step): before every optimizer step, each constrained
  parameter's gradient gets the ADMM penalty's gradient ``ρ (W − Z + U)``. A step hook
  runs after :class:`torch.amp.GradScaler` has unscaled the gradients and once per
  update whatever the gradient accumulation, so the penalty has its intended strength
  with mixed precision too.
* :func:`hold_masks` (masked retraining): before every step, pruned entries of the
  gradients are zeroed (so no momentum or Adam moment builds up there); after it, the
  pruned weights and every same-shaped optimizer state tensor (momentum buffers, Adam
  moments) are zeroed again, which also undoes any decoupled weight decay or other
  update that does not come from the gradient.

How far a W-step pulls depends on the optimizer. SGD moves a weight by about ``lr · ρ ·
(W − Z + U)`` per step: a contraction toward Z. Adam and its kin normalise each
coordinate's step to about ``lr`` whatever the gradient's size, so a W-step moves a weight
by at most ``lr × steps``: small weights (conv and linear weights) reach Z, but a
BatchNorm scale near 1 coupled to a pruned filter barely moves in a short W-step. Measured
on digits (``tests/api_tests``): with AdamW at lr 3e-3, four W-steps of half an epoch took
a linear layer's distance to its 75% sparse set from 0.53 (no penalty) to 0.20, but a
filter group with its BatchNorm only from 0.86 to 0.78 even at ρ = 5000. With an Adam-type
loop, give ADMM longer W-steps or use ``method="magnitude"``.

Both count the optimizer steps they saw: a ``train`` that never stepped a
``torch.optim`` optimizer over the model's parameters is reported as a
:class:`~autoprune.errors.UserError` (autoprune could not have acted on it). When the
block ends the hooks are gone and the model is a plain model again: no parametrization,
no tensor hook, no extra attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from autoprune.errors import UserError

__all__ = ["StepCount", "admm_penalty", "frozen_weights", "hold_masks", "no_step_error"]


@dataclass
class StepCount:
    """Optimizer steps seen over the model's constrained parameters."""

    steps: int = 0


def _ours(opt: torch.optim.Optimizer, by_id: Mapping[int, object]) -> list[nn.Parameter]:
    return [p for group in opt.param_groups for p in group["params"] if id(p) in by_id]


def _on_our_grads(by_id: Mapping[int, object], count: StepCount,
                  act: Callable[[nn.Parameter], None]) -> Callable[[torch.optim.Optimizer, object, object], None]:
    """An optimizer step pre-hook: for a step over our parameters, count it and ``act`` on each
    of them that has a gradient (before the optimizer reads it)."""

    @torch.no_grad()
    def pre(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        ours = _ours(opt, by_id)
        if not ours:
            return
        count.steps += 1
        for p in ours:
            if p.grad is not None:
                act(p)

    return pre


@contextlib.contextmanager
def admm_penalty(params: Mapping[str, nn.Parameter], z: Mapping[str, torch.Tensor], u: Mapping[str, torch.Tensor],
                 rho: float) -> Iterator[StepCount]:
    """Add ``rho * (W - Z + U)`` to each parameter's gradient before every optimizer step.

    Args:
        params: The constrained parameters, by name.
        z: The ADMM auxiliary variables Z (the last projection), by the same names.
        u: The scaled dual variables U, by the same names.
        rho: The penalty's strength for this W-step.

    Yields:
        The count of optimizer steps that reached these parameters.
    """
    by_id = {id(p): (p, z[n], u[n]) for n, p in params.items()}
    count = StepCount()

    def penalty(p: nn.Parameter) -> None:
        _, zn, un = by_id[id(p)]
        p.grad.add_((p.detach() - zn + un).to(p.grad.dtype), alpha=rho)

    handle = register_optimizer_step_pre_hook(_on_our_grads(by_id, count, penalty))
    try:
        yield count
    finally:
        handle.remove()


@contextlib.contextmanager
def hold_masks(params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> Iterator[StepCount]:
    """Keep the pruned entries of ``params`` at zero through every optimizer step.

    Args:
        params: The pruned parameters, by name.
        masks: 1 where a weight is kept, 0 where it is pruned, by the same names.

    Yields:
        The count of optimizer steps that reached these parameters.
    """
    by_id = {id(p): (p, masks[n].to(p.device, p.dtype)) for n, p in params.items()}
    count = StepCount()

    def mask_grad(p: nn.Parameter) -> None:
        p.grad.mul_(by_id[id(p)][1].to(p.grad.dtype))

    @torch.no_grad()
    def post(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for p in _ours(opt, by_id):
            m = by_id[id(p)][1]
            p.mul_(m)
            for value in opt.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(m.to(value.dtype))

    with torch.no_grad():  # the loop starts from masked weights
        for p, m in by_id.values():
            p.mul_(m)
    handles = [register_optimizer_step_pre_hook(_on_our_grads(by_id, count, mask_grad)),
               register_optimizer_step_post_hook(post)]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():  # whatever the loop did outside an optimizer step
            for p, m in by_id.values():
                p.mul_(m)


@contextlib.contextmanager
def frozen_weights(params: Mapping[str, nn.Parameter]) -> Iterator[StepCount]:
    """Undo every optimizer step over ``params``: each parameter is copied before a step and put
    back after it, and so is the optimizer's state for it. What the loop's forward passes change
    outside the optimizer (BatchNorm running statistics) stays: this is how a user's ``train``
    recomputes BatchNorm statistics for the search's screen without training a weight.

    Yields:
        The count of optimizer steps that reached these parameters.
    """
    by_id = {id(p): p for p in params.values()}
    count = StepCount()
    saved: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    @torch.no_grad()
    def pre(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        ours = _ours(opt, by_id)
        if not ours:
            return
        count.steps += 1
        for p in ours:
            state = {k: v.clone() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)}
            saved[id(p)] = (p.detach().clone(), state)

    @torch.no_grad()
    def post(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for p in _ours(opt, by_id):
            if id(p) not in saved:
                continue
            value, state = saved.pop(id(p))
            p.copy_(value)
            if not state:  # the step made the state: every step is again the first
                opt.state.pop(p, None)
                continue
            for k, v in state.items():
                opt.state[p][k] = v

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


def no_step_error(what: str) -> UserError:
    """The error for a ``train`` function that stepped no optimizer over the model."""
    return UserError(
        f"train() ran no optimizer step over the model's pruned layers during {what}. autoprune acts through "
        "torch.optim optimizers: create the optimizer inside train from the model it is given "
        "(model.parameters()), and call optimizer.step() at least once."
    )
