"""The runtime contract, its registry, and the seam's two timing calls.

A :class:`Runtime` answers three questions about where a model is deployed: can it run here
(:meth:`~Runtime.missing`, :meth:`~Runtime.unsupported`), what is the model in that runtime
(:meth:`~Runtime.prepare`: fold BatchNorm, export, build a session or a compiled program),
and how long does it take (:meth:`~Runtime.compare`: several prepared models timed side by
side with the interleaved rounds and statistics of :func:`autoprune.latency.compare_calls`,
the same for every runtime). :meth:`~Runtime.channel_block` is the block its convs work in
(measured in the runtime, :mod:`autoprune.runtimes.blocks`).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import nn

from autoprune.errors import UserError, unknown_name
from autoprune.latency import LatencyResult, LatencySettings, compare_calls, measure_call

__all__ = ["Prepared", "Runtime", "check_runtime", "describe_runtimes", "get_runtime", "list_runtimes",
           "register_runtime", "unregister_runtime"]

_REGISTRY: dict[str, type[Runtime]] = {}
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
DEFAULT_RUNTIME = "torch"


@dataclass
class Prepared:
    """A model as its runtime runs it.

    Attributes:
        run: One inference on the timing batch (``settings.batch_size`` random inputs bound
            when the model was prepared): what is timed.
        infer: Outputs for an input batch (a CPU float32 tensor in, a CPU float32 tensor out),
            for checking that the runtime computes what the model computes.
        cuda_events: On CUDA, time ``run`` with CUDA events on torch's current stream (the
            runtime works on it); otherwise with the wall clock (``run`` returns when done).
    """

    run: Callable[[], object]
    infer: Callable[[torch.Tensor], torch.Tensor]
    cuda_events: bool = True


class Runtime(abc.ABC):
    """Where a model runs, and how it is timed there.

    Subclasses set ``name`` (lower case, the ``--runtime`` value), ``description`` and
    ``install`` (how to install its package), implement :meth:`prepare`, and override
    :meth:`missing` / :meth:`unsupported` / :meth:`version` / :meth:`describe` where they have
    something to say. ``kernel_forms`` names the per-layer kernel forms of
    :func:`autoprune.compact.kernels.candidate_forms` the runtime runs as such (None: all);
    other forms are not offered when compacting for it. A runtime is registered with
    :func:`register_runtime` and imported in :mod:`autoprune.runtimes`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    install: ClassVar[str] = ""
    kernel_forms: ClassVar[frozenset[str] | None] = None
    # LatencySettings.channels_last / steady_memory apply (the model runs as torch tensors in this process)
    torch_layout: ClassVar[bool] = True
    # the deployable folder's file this runtime runs as saved (``model.onnx``); None: it runs the module
    program_file: ClassVar[str | None] = None

    def missing(self) -> str | None:
        """None when the runtime can be used in this environment; else one line: what is
        missing and how to install it."""
        return None

    def available(self) -> bool:
        return self.missing() is None

    def unsupported(self, device: torch.device, dtype: str) -> str | None:
        """None when the runtime runs on ``device`` in ``dtype``; else why not (one line)."""
        return None

    def supports(self, device: torch.device, dtype: str = "fp32") -> bool:
        return self.unsupported(torch.device(device), dtype) is None

    def version(self) -> str:
        return torch.__version__

    def describe(self, device: torch.device, settings: LatencySettings) -> str:
        """What a report says of the measurement, e.g. ``onnxruntime 1.31.1, CPUExecutionProvider, 2 threads``."""
        return f"{self.name} {self.version()}"

    @abc.abstractmethod
    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> Prepared:
        """``model`` (not modified) in the form this runtime runs, bound to a timing batch of
        ``settings.batch_size`` inputs of ``input_shape``, warmed up once."""

    def prepare_file(self, path: Path, input_shape: tuple[int, ...], *, device: torch.device,
                     settings: LatencySettings) -> Prepared:
        """The deployable folder's own exported program (the file :attr:`program_file` names, at
        ``path``) as this runtime runs it, bound to a timing batch like :meth:`prepare`."""
        raise NotImplementedError(f"runtime '{self.name}' runs the model itself, not a saved file")

    def channel_block(self, device: torch.device, settings: LatencySettings,
                      log: Callable[[str], None] | None = None) -> int:
        """The channel count this runtime's convs work in whole blocks of on ``device``
        (``--channel-multiple auto``): measured in the runtime the first time, then cached
        (:func:`autoprune.runtimes.blocks.measured_block`)."""
        from autoprune.runtimes.blocks import measured_block

        return measured_block(self.name, torch.device(device), settings, log=log).block

    def compare(self, models: dict[str, nn.Module], input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings, rounds: int | None = None) -> dict[str, LatencyResult]:
        """Prepare every model, then time them side by side in interleaved rounds
        (:func:`autoprune.latency.compare_calls`; pair two results with
        :func:`autoprune.latency.latency_ratio`)."""
        settings = dataclasses.replace(settings, runtime=self.name)
        prepared = {k: self.prepare(m, input_shape, device=device, settings=settings) for k, m in models.items()}
        events = all(p.cuda_events for p in prepared.values())
        return compare_calls({k: p.run for k, p in prepared.items()}, device=device, settings=settings,
                             rounds=rounds, cuda_events=events)

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device,
                settings: LatencySettings) -> LatencyResult:
        """Time one model alone (:func:`autoprune.latency.measure_call`)."""
        settings = dataclasses.replace(settings, runtime=self.name)
        p = self.prepare(model, input_shape, device=device, settings=settings)
        return measure_call(p.run, device=device, settings=settings, cuda_events=p.cuda_events)


def cpu_threads(settings: LatencySettings) -> str:
    """``1 thread``, ``2 threads``: the CPU threads a measurement uses (its own, else torch's)."""
    n = settings.threads or torch.get_num_threads()
    return f"{n} thread{'' if n == 1 else 's'}"


T = TypeVar("T", bound=type[Runtime])


def register_runtime(cls: T) -> T:
    """Class decorator: add a :class:`Runtime` subclass to the registry (the runtime tests
    parametrise over it, so a registered runtime is tested the day it is added)."""
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"register_runtime expects a Runtime subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{cls.__name__}.name must be a lower-case name, got {name!r}")
    if not isinstance(getattr(cls, "description", None), str):
        raise TypeError(f"{cls.__name__} needs a 'description' string")
    old = _REGISTRY.get(name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"runtime '{name}' is already registered by {old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def unregister_runtime(name: str) -> None:
    """Remove a registry entry (for tests that register throw-away runtimes)."""
    _REGISTRY.pop(name, None)


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name`` (case and surrounding spaces ignored).

    Raises:
        UserError: for an unknown name.

    Example:
        >>> get_runtime("torch").name
        'torch'
    """
    if not isinstance(name, str):
        raise UserError(f"A runtime name must be a string. Got {name!r} instead.")
    cls = _REGISTRY.get(name.strip().lower())
    if cls is None:
        raise unknown_name("runtime", name, list_runtimes())
    return cls()


def list_runtimes() -> list[str]:
    """Registry names in registration order (``torch``, the default, first)."""
    return list(_REGISTRY)


def describe_runtimes() -> dict[str, str]:
    """``{name: description}`` for every registered runtime."""
    return {name: cls.description for name, cls in _REGISTRY.items()}


def check_runtime(name: str, device: torch.device, dtype: str = "fp32") -> Runtime:
    """The runtime called ``name``, checked to be installed and to run on ``device`` in ``dtype``.

    Raises:
        UserError: an unknown name, a missing package (the message says how to install it),
            or a device or dtype the runtime does not run.
    """
    runtime = get_runtime(name)
    why = runtime.missing()
    if why:
        raise UserError(f"runtime '{runtime.name}' cannot be used here: {why}")
    why = runtime.unsupported(torch.device(device), dtype)
    if why:
        raise UserError(f"runtime '{runtime.name}' does not run on {torch.device(device)} in {dtype}: {why}")
    return runtime
