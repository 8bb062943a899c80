"""Measure a pruned configuration: compact it, check it computes what the masked model computes,
and time it beside dense in the runtime (:func:`measure_pruned`).

One service for ``autoprune bench``, the deployable folder (:func:`autoprune.deploy.build_deployable`),
:func:`autoprune.make_deployable` and the search's probe, in two steps:

* :func:`compact_masked`: masks -> compaction (channels removed, each sparse layer's fastest
  kernel measured in the runtime: :func:`autoprune.compact.compact_model`);
* :func:`time_side_by_side`: dense and compacted (or any models) timed in interleaved rounds
  in the runtime (:func:`autoprune.runtimes.compare_latency`).

:func:`measure_pruned` runs both with the outputs checked against the masked model between
them. The search's probe (:class:`autoprune.study.probe.ConfigProbe`) times architectures
before any training, from a model whose weights do not matter, and caches them by signature:
it calls the same two steps, without the output check.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.compact import CompactResult, LayerChoice, compact_model, remove_channels
from autoprune.compact.kernels import candidate_forms
from autoprune.latency import LatencyResult, LatencySettings, device_description, latency_ratio
from autoprune.progress import Reporter
from autoprune.projection import Projector
from autoprune.runtimes import compare_latency

__all__ = ["Measured", "compact_masked", "measure_pruned", "time_side_by_side", "verify_compaction"]


@dataclass
class Measured:
    """A compacted model and how it measured beside dense.

    Attributes:
        model: The compacted model on the device, in eval mode (float32 where ``fp32`` was
            asked, else in the measurement dtype's kernels).
        compact: The compaction's result (each layer's kernel choice and the candidates' times).
        max_abs_diff: The largest difference of its outputs from the masked model's.
        dense, pruned: The interleaved timings (:class:`~autoprune.latency.LatencyResult`).
        notes: What the float32 rebuild changed (a kernel with no float32 form).
    """

    model: nn.Module
    compact: CompactResult
    max_abs_diff: float
    dense: LatencyResult
    pruned: LatencyResult
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Dense over compacted, paired round by round (:func:`autoprune.latency.latency_ratio`)."""
        return latency_ratio(self.dense, self.pruned)

    @property
    def median_speedup(self) -> float:
        """The ratio of the two medians."""
        return self.dense.median_ms / self.pruned.median_ms


def measure_pruned(masked: nn.Module, projector: Projector, dense: nn.Module, check_inputs: torch.Tensor, *,
                   device: torch.device, latency: LatencySettings, fp32: bool = True, force_form: str | None = None,
                   reporter: Reporter | None = None) -> Measured:
    """Compact ``masked`` (pruned weights at zero, ``projector``'s masks), check its outputs on
    ``check_inputs`` and time it beside ``dense`` (neither argument is changed).

    Args:
        check_inputs: A batch the compacted model must compute the masked model's outputs on
            (its shape past the batch dimension is the timed input's).
        latency: Batch size, dtype, runtime and repeats of the measurements.
        fp32: Build the chosen kernels in float32 (what is stored and deployed) where they
            were measured in fp16/bf16; a kernel with no float32 form becomes the masked dense
            layer (:attr:`Measured.notes`). False: the model as measured.
        force_form: A kernel form used wherever it is a candidate, instead of measuring.

    Raises:
        RuntimeError: the compacted outputs differ from the masked model's (a bug).
    """
    masked = copy.deepcopy(masked).cpu().float().eval()
    shape = tuple(check_inputs.shape[1:])
    example = torch.zeros(1, *shape)
    reporter = reporter or Reporter()
    reporter.log(f"compacting: channel removal and per-layer kernels measured on {device_description(device)} "
                 f"at batch {latency.batch_size}")
    result = compact_masked(copy.deepcopy(masked), projector, shape, device=device, latency=latency,
                            force_form=force_form)
    notes: list[str] = []
    model = result.model
    if fp32 and latency.dtype != "fp32":
        model, notes = _rebuild_in_fp32(masked, projector, example, result.choices, device)
    model = model.to(device).eval()
    diff = verify_compaction(masked, model, check_inputs, device)
    reporter.log("timing dense against compacted (interleaved)")
    timed = time_side_by_side({"dense": copy.deepcopy(dense).eval(), "pruned": copy.deepcopy(model)}, shape,
                              device=device, latency=latency)
    return Measured(model=model, compact=result, max_abs_diff=diff, dense=timed["dense"], pruned=timed["pruned"],
                    notes=notes)


def compact_masked(masked: nn.Module, projector: Projector, input_shape: tuple[int, ...], *, device: torch.device,
                   latency: LatencySettings, force_form: str | None = None) -> CompactResult:
    """The compacted model of ``masked`` (``projector``'s hard masks applied; it is moved to the
    CPU and may be changed: pass a copy to keep it): channels removed, each sparse layer in the
    kernel form measured fastest in ``latency``'s runtime on ``device`` at its batch and dtype.

    Args:
        input_shape: One sample's shape (the batch dimension excluded).
        force_form: A kernel form used wherever it is a candidate, instead of measuring.
    """
    example = torch.zeros(1, *input_shape)
    return compact_model(masked, projector, example, device=device, latency=latency, force_form=force_form)


def time_side_by_side(models: dict[str, nn.Module], input_shape: tuple[int, ...], *, device: torch.device,
                      latency: LatencySettings, rounds: int | None = None) -> dict[str, LatencyResult]:
    """``models`` (name -> model) timed in interleaved rounds in ``latency``'s runtime on
    ``device``, on inputs of ``input_shape`` (one sample's) at its batch; ``rounds`` defaults
    to the runtime's (a third of ``latency.repeats``). Pair two results with
    :func:`autoprune.latency.latency_ratio`."""
    return compare_latency(models, tuple(input_shape), device=device, settings=latency, rounds=rounds)


def _rebuild_in_fp32(masked: nn.Module, projector: Projector, example: torch.Tensor,
                     choices: dict[str, LayerChoice], device: torch.device) -> tuple[nn.Module, list[str]]:
    """The compacted model with the chosen forms built in float32 (the dtype the deployable is
    stored in), for choices measured in fp16/bf16. A form that has no float32 version
    (semi-structured) becomes the dense masked layer; the notes say which."""
    compact = remove_channels(copy.deepcopy(masked).cpu().float(), projector, example.cpu())
    notes = []
    for name, choice in choices.items():
        module = compact.get_submodule(name)
        forms = candidate_forms(module, module.weight.detach() != 0, device=device, dtype=torch.float32)
        form = choice.form if choice.form in forms else "dense"
        if form != choice.form:
            notes.append(f"{name}: the {choice.form} kernel has no float32 form; stored as dense masked weights")
        if form != "dense":  # a dense form is what remove_channels left: masked weights
            compact.set_submodule(name, forms[form])
    return compact.to(device), notes


def verify_compaction(masked: nn.Module, model: nn.Module, xb: torch.Tensor, device: torch.device) -> float:
    """The largest difference between the compacted and the masked model on ``xb``.

    Raises:
        RuntimeError: beyond float tolerance (a bug in compaction).
    """
    with torch.no_grad():
        ref = masked.to(device)(xb.to(device)).float().cpu()
        got = model(xb.to(device)).float().cpu()
    masked.cpu()
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    diff = float((got - ref).abs().max())
    if not torch.allclose(got, ref, rtol=1e-3, atol=tol):
        raise RuntimeError(f"the compacted model's outputs differ from the masked model's by up to {diff:.3g} "
                           f"(tolerance {tol:.3g}) on a validation batch; this is a bug in compaction.")
    return diff
