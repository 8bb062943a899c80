"""A user's own model in a deployable folder (format version 2): :func:`describe_user_model`
records its class and every layer autoprune changed (conv, linear and norm shapes, kernel
forms); :func:`rebuild_user_model` reshapes a new instance of the caller's class to them and
loads the weights. Read by :func:`autoprune.load_pruned`, written by :func:`autoprune.save_pruned`."""


from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune._version import __version__
from autoprune.deploy.archive import (
    FORMAT,
    USER_FORMAT_VERSION,
    _reshape,
    _shape_attributes,
    build_module,
    describe_module,
)
from autoprune.errors import UserError

__all__ = ["class_name", "describe_user_model", "rebuild_user_model"]


def class_name(model: nn.Module) -> str:
    """``module.QualifiedName`` of the model's class."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def describe_user_model(model: nn.Module) -> dict[str, Any]:
    """What ``architecture.json`` holds for a user's own model: its class, a spec for every
    module autoprune can describe (every conv, linear, norm, PReLU and kernel, changed or not:
    there is no dense registry model to compare with), and the shape attributes of the others.

    Args:
        model: The compacted model (semi-structured layers already replaced by dense ones).
    """
    specs: list[dict[str, Any]] = []
    attributes: dict[str, dict[str, int]] = {}
    replaced: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(r + ".") for r in replaced):
            continue  # inside a described module (its from_spec builds its children)
        described = describe_module(module) if name else None
        if described is not None:
            kind, args = described
            specs.append({"name": name, "kind": kind, "args": args})
            replaced.append(name)
            continue
        attrs = _shape_attributes(module)
        if attrs:
            attributes[name] = attrs
    return {
        "format": FORMAT,
        "format_version": USER_FORMAT_VERSION,
        "base": {"class": class_name(model)},
        "modules": specs,
        "attributes": attributes,
        "versions": {"autoprune": __version__, "torch": str(torch.__version__)},
    }


def rebuild_user_model(model: nn.Module, arch: dict[str, Any], state: dict[str, torch.Tensor],
                       where: Path) -> nn.Module:
    """Reshape ``model`` (a fresh instance of the saved class) in place to what ``arch``
    (:func:`describe_user_model`) describes and load ``state`` into it strictly.

    Modules with a spec are replaced where they differ; the others get the saved shape
    attributes, and any of their tensors whose saved shape differs is resized before loading.

    Raises:
        UserError: the model lacks a module the saved one has, or the weights do not fit it.
    """
    saved_class = arch["base"]["class"]

    def module_at(name: str) -> nn.Module:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise UserError(f"the model passed to load_pruned ({class_name(model)}) has no module '{name}', which "
                            f"the model saved in '{where}' has; pass a new instance of {saved_class}.") from None

    for spec in arch.get("modules", []):
        current = module_at(spec["name"])
        if describe_module(current) == (spec["kind"], spec["args"]):
            continue
        model.set_submodule(spec["name"], build_module(spec["kind"], spec["args"]))
    _reshape(model, arch, state, module_at)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"the weights in '{where}' do not fit the model passed to load_pruned ({class_name(model)}; "
                        f"saved: {saved_class}): {detail}") from None
    return model
