"""Masked model → real model: channel removal plus, per layer, the fastest correct kernel.

``compact_model`` first removes every pruned channel group physically
(:mod:`autoprune.compact.channels`). Then, for each layer that keeps an intra-layer
sparsity (shape, irregular, N:M), it times every correct form of that layer on the
target device at the deployment batch size (:func:`autoprune.compact.kernels.candidate_forms`:
masked dense, shape-wise gather-GEMM, CSR, semi-structured) and keeps the fastest. The
masked dense form is always a candidate, so no layer gets slower by compaction.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.compact.channels import remove_channels
from autoprune.compact.kernels import candidate_forms
from autoprune.latency import DTYPES, LatencySettings, latency_ratio
from autoprune.projection import Projector
from autoprune.runtimes import compare_latency, get_runtime, measure_latency

__all__ = ["CompactResult", "LayerChoice", "compact_model", "remove_channels"]


@dataclass
class LayerChoice:
    """The kernel chosen for one layer and what each candidate measured (ms per batch)."""

    name: str
    sparsity: str
    form: str
    candidates_ms: dict[str, float] = field(default_factory=dict)
    weight_shape: tuple[int, ...] = ()


@dataclass
class CompactResult:
    model: nn.Module
    choices: dict[str, LayerChoice]
    reverted: bool = False  # the per-layer kernels were slower as a whole and were undone


def _input_shapes(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for n in names:
        def hook(mod, inp, out, n=n):  # noqa: ANN001, ANN202
            shapes.setdefault(n, tuple(inp[0].shape[1:]))
        handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()
    return shapes


def compact_model(
    masked_model: nn.Module,
    projector: Projector,
    example_input: torch.Tensor,
    *,
    device: torch.device,
    latency: LatencySettings | None = None,
    choose_kernels: bool = True,
    force_form: str | None = None,
) -> CompactResult:
    """Build the real pruned model for ``device``.

    Args:
        masked_model: The hard-pruned model (``projector.hard_masks()`` applied).
        projector: The projector whose masks were applied.
        example_input: One input batch (any batch size) on the CPU.
        latency: Measurement settings for the per-layer kernel choice (batch size, dtype, and the
            runtime: only the forms it runs are offered, and they are timed in it).
        choose_kernels: If False, intra-layer sparse layers stay masked dense.
        force_form: Use this kernel form wherever it is a candidate, without timing
            (for tests and for exporting a known choice).
    """
    latency = latency or LatencySettings()
    compact = remove_channels(masked_model.cpu(), projector, example_input.cpu())
    sparse_layers = [n for n in projector.layer_types]
    choices: dict[str, LayerChoice] = {}
    if not sparse_layers:
        return CompactResult(compact.to(device), choices)
    shapes = _input_shapes(compact, example_input.cpu(), sparse_layers)
    dtype = DTYPES[latency.dtype]
    quick = dataclasses.replace(latency, warmup=3, repeats=15, min_seconds=0.1)
    runnable = get_runtime(latency.runtime).kernel_forms
    plain = copy.deepcopy(compact)  # channel-removed, intra-layer sparsity still masked dense
    for name in sparse_layers:
        module = compact.get_submodule(name)
        mask = module.weight.detach() != 0
        forms = candidate_forms(module, mask, device=device, dtype=dtype) if choose_kernels else {}
        if runnable is not None:  # only the forms the runtime runs as such
            forms = {f: m for f, m in forms.items() if f in runnable}
        stype = projector.layer_types[name][0].name
        if force_form is not None:
            form = force_form if force_form in forms else "dense"
            choices[name] = LayerChoice(name, stype, form, {}, tuple(module.weight.shape))
            if form != "dense":
                compact.set_submodule(name, forms[form])
            continue
        if len(forms) <= 1:
            choices[name] = LayerChoice(name, stype, "dense", {}, tuple(module.weight.shape))
            continue
        timed = {form: measure_latency(m, shapes[name], device=device, settings=quick).median_ms
                 for form, m in forms.items()}
        best = min(timed, key=timed.get)
        choices[name] = LayerChoice(name, stype, best, timed, tuple(module.weight.shape))
        if best != "dense":
            compact.set_submodule(name, forms[best])
    if force_form is None and any(c.form != "dense" for c in choices.values()):
        # layers timed alone need not compose: check the whole model against the plain one
        shape = tuple(example_input.shape[1:])
        timed = compare_latency({"plain": plain, "kernels": compact}, shape, device=device, settings=quick)
        if latency_ratio(timed["kernels"], timed["plain"]) > 1.0:
            for c in choices.values():
                c.form = "dense"
            return CompactResult(plain.to(device), choices, reverted=True)
    return CompactResult(compact.to(device), choices)
