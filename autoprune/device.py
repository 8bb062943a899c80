"""Device selection with a clear error when the user asks for what is not there."""

from __future__ import annotations

from collections.abc import Callable

import torch

from autoprune.errors import UserError

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | None) -> torch.device:
    """Turn ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` into a usable :class:`torch.device`.

    Raises:
        UserError: for ``cuda`` on a machine without CUDA, or an unknown name.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} was asked for, but this machine has no usable CUDA device "
                f"(torch {torch.__version__}); use --device cpu or auto."
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist.")
        return dev
    raise UserError(f"unknown device '{name}'; use one of: {', '.join(DEVICE_CHOICES)} (or cuda:N).")


#: ``--channel-multiple auto``: round kept channels to the device's channel block.
AUTO = "auto"


def channel_block(device: torch.device, dtype: str = "fp32") -> int:
    """The channel count a device's conv kernels work in whole blocks of.

    On CPU, oneDNN's convs block channels by the vector width: 16 fp32 lanes with AVX-512
    (bf16 kernels keep 16-channel blocks), 8 with AVX2. A conv pays for a whole block it
    only partly fills: on this project's AVX-512 CPU one 3x3 conv at 56x56, batch 32, took
    1.1 ms with 16 channels and 2.8 ms with 20, and the same with 44 channels as with 48
    (``benchmarks/results/channel_steps.md``). On CUDA, tensor cores take channels in
    multiples of 8 for fp16/bf16 (not measured by this project yet). 1 (exact rates) for
    CPUs whose block is unknown.
    """
    if device.type == "cuda":
        return 8
    if device.type == "cpu":
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        if capability.startswith("AVX512"):
            return 16
        if capability.startswith("AVX2"):
            return 8
    return 1


def parse_channel_multiple(value: int | str | None, *, option: str = "--channel-multiple") -> int | str | None:
    """``auto``, a positive integer, or None (not given); anything else is a :class:`UserError`."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        n = 0
    if n < 1:
        raise UserError(f"{option} must be a positive integer or 'auto' (got {value!r}).")
    return n


def resolve_channel_multiple(value: int | str | None, device: torch.device, dtype: str = "fp32", *,
                             runtime: str | None = None, threads: int | None = None,
                             log: Callable[[str], None] | None = None) -> int:
    """The block size to round kept channels to: ``auto`` (or None) is the block of the
    device's convs in ``runtime`` (``torch`` or None: :func:`channel_block`; another runtime's is
    measured there once and cached, :mod:`autoprune.runtimes.blocks`); an integer is taken as given."""
    value = parse_channel_multiple(value)
    if value is not None and value != AUTO:
        return int(value)
    if runtime is None or runtime == "torch":
        return channel_block(device, dtype)
    from autoprune.latency import LatencySettings  # the runtimes build on this module
    from autoprune.runtimes import get_runtime

    return get_runtime(runtime).channel_block(torch.device(device), LatencySettings(dtype=dtype, threads=threads),
                                              log=log)
