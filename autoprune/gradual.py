"""Gradual magnitude pruning (Zhu & Gupta 2017, arXiv 1710.01878) through the training loop's
optimizer steps.

The field's standard baseline, and on Fashion-MNIST the best method at equal epochs in most
of ``benchmarks/results/admm_vs_magnitude_fmnist.md``'s cells (filter and shape pruning at 4
and 40 epochs). One training run of the whole schedule; over its first ``ramp`` of optimizer
steps every layer's rate rises from 0 to its target along the cubic
``rate_t = rate * (1 - (1 - t / end) ** 3)``, the masks recomputed by magnitude (the layer's
own sparsity type, through a :class:`~autoprune.projection.Projector` at the scaled rates)
``updates`` times; between updates and after the ramp, pruned weights, their gradients and
their optimizer state stay at zero (as :func:`autoprune.steering.hold_masks` keeps them).

It needs the run's number of optimizer steps in advance (the cubic is over steps), which
autoprune's built-in loop knows (:func:`autoprune.admm.prune`); a user's ``train`` does not
say, so ``autoprune.prune`` with your own loop offers ``admm`` and ``magnitude``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from autoprune.config import LayerTarget
from autoprune.projection import Projector
from autoprune.steering import StepCount, _on_our_grads, _ours

__all__ = ["GRADUAL_RAMP", "GRADUAL_UPDATES", "gradual_pruning", "gradual_rate"]

GRADUAL_RAMP = 0.5  # the share of the run's steps over which the rates rise
GRADUAL_UPDATES = 16  # mask updates along the ramp


def gradual_rate(step: int, end: int) -> float:
    """The fraction of each layer's target rate reached after ``step`` of ``end`` ramp steps
    (Zhu & Gupta's cubic: fast at first, slow near the target)."""
    if end <= 0 or step >= end:
        return 1.0
    return 1.0 - (1.0 - max(step, 0) / end) ** 3


def _scaled(targets: dict[str, LayerTarget], fraction: float) -> dict[str, LayerTarget]:
    """Each target at ``fraction`` of its rate (a type without a rate, n:m, only at the end)."""
    out = {}
    for name, t in targets.items():
        if t.rate is None:
            if fraction >= 1.0:
                out[name] = t
        elif t.rate * fraction > 0:
            out[name] = LayerTarget(t.type, t.rate * fraction)
    return out


@contextlib.contextmanager
def gradual_pruning(model: nn.Module, projector: Projector, total_steps: int, *, ramp: float = GRADUAL_RAMP,
                    updates: int = GRADUAL_UPDATES) -> Iterator[StepCount]:
    """While the block runs, raise ``projector``'s targets on ``model`` gradually, one optimizer
    step at a time (see the module docstring); the block's training should take ``total_steps``
    optimizer steps. After it, the masks are the targets' (every rate reached); call
    ``projector.hard_masks()`` for them.

    Yields:
        The count of optimizer steps over the model's pruned parameters.
    """
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    end = max(1, round(ramp * max(total_steps, 1)))
    every = max(1, end // max(updates, 1))
    count = StepCount()
    state: dict[str, object] = {"masks": {}, "fraction": 0.0}

    def current() -> dict[str, torch.Tensor]:
        return state["masks"]  # type: ignore[return-value]

    @torch.no_grad()
    def update(fraction: float) -> None:
        targets = _scaled(projector.targets, fraction)
        if not targets:
            return
        step = Projector(model, projector.graph, targets, channel_multiple=projector.channel_multiple)
        state["masks"] = {n: m.to(named[n].dtype) for n, m in step.hard_masks().items() if n in named}
        state["fraction"] = fraction

    def mask_grad(p: torch.nn.Parameter) -> None:
        m = current().get(by_id[id(p)])
        if m is not None:
            p.grad.mul_(m.to(p.grad.dtype))

    @torch.no_grad()
    def post(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        if not _ours(opt, by_id):
            return
        t = count.steps
        if (t % every == 0 and t <= end) or t == end:
            fraction = gradual_rate(t, end)
            if fraction > float(state["fraction"]):  # type: ignore[arg-type]
                update(fraction)
        for n, m in current().items():
            p = named[n]
            p.mul_(m)
            for value in opt.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(m.to(value.dtype))

    handles = [register_optimizer_step_pre_hook(_on_our_grads(by_id, count, mask_grad)),
               register_optimizer_step_post_hook(post)]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()
        if float(state["fraction"]) < 1.0 and count.steps > 0:  # type: ignore[arg-type]
            update(1.0)  # fewer steps ran than announced: the targets are reached all the same
            with torch.no_grad():
                for n, m in current().items():
                    named[n].mul_(m)
