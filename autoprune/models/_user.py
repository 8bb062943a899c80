"""``package.module:callable``: the user's own model builder."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from autoprune._torchvision import import_torchvision
from autoprune.errors import UserError, first_line


def _load_callable(name: str) -> Any:
    module_path, _, attr_path = name.partition(":")
    if not module_path or not attr_path:
        raise UserError(f"model '{name}' must have the form package.module:callable.")
    try:  # a module that imports torchvision (or timm) must find it importable on a CPU-only torch
        import_torchvision()
    except (ImportError, RuntimeError):
        pass  # no usable torchvision: a module that needs it says so when imported below
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # ImportError, or any error raised while running the module
        raise UserError(f"cannot import module '{module_path}' for model '{name}': {first_line(exc, with_type=True)}.") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"module '{module_path}' has no attribute '{attr_path}' (model '{name}').") from None
    if not callable(obj):
        raise UserError(f"'{name}' is a {type(obj).__name__}, not a callable that builds a model.")
    return obj


def _accepted_kwargs(fn: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that ``fn``'s signature accepts (all of them with ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature available: pass nothing
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in values.items() if k in params and params[k].kind in usable}


def create_user_model(
    name: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int]
) -> nn.Module:
    """Import ``package.module``, get ``callable`` and call it with the keyword arguments it accepts.

    ``callable`` may be a class or a function and may be dotted (``pkg.mod:Factory.build``).
    It receives whichever of ``in_channels``, ``num_classes`` and ``image_size`` its
    signature names (all three if it takes ``**kwargs``).

    Raises:
        UserError: the module cannot be imported, the attribute is missing or not callable,
            or the result is not an ``nn.Module``.
    """
    fn = _load_callable(name)
    values = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    model = fn(**_accepted_kwargs(fn, values))
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{name}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model
