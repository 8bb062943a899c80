"""Device selection with a clear error when the user asks for what is not there."""

from __future__ import annotations

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
