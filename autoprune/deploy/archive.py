"""The saved form of a pruned model: ``model.pt`` plus ``architecture.json``.

``architecture.json`` names the registry model the network started from (``base``:
model name, input channels, classes, image size) and, for every module whose type or
shape differs from that freshly created dense model, a spec: the module's name, its kind
(``Conv2d``, ``Linear``, ``BatchNorm2d``, ..., or one of the kernels of
:mod:`autoprune.compact.kernels`) and its constructor arguments. Weights and index
buffers come back through the state dict, so a spec only carries shapes. Torch-Pruning
edits modules in place (``out_channels``, ``in_features``, ``num_features``, the
``groups`` of depthwise convs): comparing against the dense model finds those edits.

:func:`autoprune.load_pruned` (:func:`load_registry_model` for these folders) needs only :mod:`autoprune.models` and
:mod:`autoprune.compact.kernels` (no Optuna, no MLflow, no search code)::

    from autoprune import load_pruned
    model = load_pruned("runs/deploy/digits")      # eval mode, on the CPU
    logits = model(images)
    fast = load_pruned("runs/deploy/digits", as_timed=True)  # BatchNorm folded, channels-last

A user's own model (``autoprune.save_pruned``, format version 2) is described by its class
(``base: {"class": "pkg.module.Net"}``), a spec for *every* module autoprune can describe,
and the shape attributes (``out_channels``, ``num_features``, ...) of the others:
:func:`describe_user_model`; :func:`rebuild_user_model` reshapes an instance of that class
to it, so that the weights load into it without unpickling anything.

Semi-structured (2:4, CUDA fp16/bf16) layers are stored as their dense masked
equivalent (``Linear`` / 1x1 ``Conv2d``, their ``to_dense()``): re-apply
:meth:`~autoprune.compact.kernels.SemiStructuredLinear.from_linear` on the GPU to get
the sparse tensor cores back.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune._version import __version__
from autoprune.atomic import save_torch_atomic, write_text_atomic
from autoprune.compact import kernels
from autoprune.compact.kernels import SemiStructuredConv2d, SemiStructuredLinear
from autoprune.errors import UserError, first_line
from autoprune.latency import LatencySettings, prepare_for_timing
from autoprune.models import create_model
from autoprune.safeload import load_tensors
from autoprune.saving import REPORT_FILE

__all__ = [
    "ARCHITECTURE_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "USER_FORMAT_VERSION",
    "build_module",
    "check_base",
    "describe_architecture",
    "describe_module",
    "load_registry_model",
    "read_architecture",
    "save_registry_model",
    "storable_form",
    "with_dense_kernels",
]

FORMAT = "autoprune-pruned-model"
FORMAT_VERSION = 2  # the newest this autoprune reads: 1 a registry model's folder, 2 adds a user model's
REGISTRY_FORMAT_VERSION = 1  # what a registry model's folder is written as (readable by every version)
USER_FORMAT_VERSION = 2
WEIGHTS_FILE = "model.pt"
ARCHITECTURE_FILE = "architecture.json"

# -- describing modules ------------------------------------------------------------------

_CONV_KINDS = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}
_BN_KINDS = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm3d": nn.BatchNorm3d}
_BN_HAS_BIAS_ARG = "bias" in inspect.signature(nn.BatchNorm2d.__init__).parameters  # torch >= 2.13
_LN_HAS_BIAS_ARG = "bias" in inspect.signature(nn.LayerNorm.__init__).parameters
_SEMI_STRUCTURED = (SemiStructuredLinear, SemiStructuredConv2d)  # stored as their dense form


def _plain(value: Any) -> Any:  # noqa: ANN401
    return list(value) if isinstance(value, tuple) else value


def _describe_builtin(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(kind, constructor arguments)`` for the torch modules pruning reshapes, else None.

    Only exact types: a subclass may take other constructor arguments.
    """
    t = type(module)
    for kind, cls in _CONV_KINDS.items():
        if t is cls:
            return kind, {
                "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": _plain(module.kernel_size), "stride": _plain(module.stride),
                "padding": _plain(module.padding), "dilation": _plain(module.dilation), "groups": module.groups,
                "bias": module.bias is not None, "padding_mode": module.padding_mode,
            }
    if t is nn.Linear:
        return "Linear", {"in_features": module.in_features, "out_features": module.out_features,
                          "bias": module.bias is not None}
    for kind, cls in _BN_KINDS.items():
        if t is cls:
            args = {"num_features": module.num_features, "eps": module.eps, "momentum": module.momentum,
                    "affine": module.affine, "track_running_stats": module.track_running_stats}
            if _BN_HAS_BIAS_ARG and module.affine:
                args["bias"] = module.bias is not None
            return kind, args
    if t is nn.GroupNorm:
        return "GroupNorm", {"num_groups": module.num_groups, "num_channels": module.num_channels, "eps": module.eps,
                             "affine": module.affine}
    if t is nn.LayerNorm:
        args = {"normalized_shape": list(module.normalized_shape), "eps": module.eps,
                "elementwise_affine": module.elementwise_affine}
        if _LN_HAS_BIAS_ARG and module.elementwise_affine:
            args["bias"] = module.bias is not None
        return "LayerNorm", args
    if t is nn.PReLU:
        return "PReLU", {"num_parameters": module.num_parameters}
    return None


def _kernel_classes() -> dict[str, type[nn.Module]]:
    """The kernels of :mod:`autoprune.compact.kernels` that describe themselves (``spec``/``from_spec``)."""
    out = {}
    for name in kernels.__all__:
        cls = getattr(kernels, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "spec") and hasattr(cls, "from_spec"):
            out[name] = cls
    return out


def build_module(kind: str, args: dict[str, Any]) -> nn.Module:
    """The module a spec of ``architecture.json`` describes (uninitialised weights).

    Raises:
        UserError: an unknown kind.
    """
    if kind in _CONV_KINDS:
        a = dict(args)
        for key in ("kernel_size", "stride", "dilation"):
            a[key] = tuple(a[key])
        if not isinstance(a["padding"], str):
            a["padding"] = tuple(a["padding"])
        return _CONV_KINDS[kind](**a)
    if kind == "Linear":
        return nn.Linear(**args)
    if kind in _BN_KINDS:
        return _BN_KINDS[kind](**args)
    if kind == "GroupNorm":
        return nn.GroupNorm(**args)
    if kind == "LayerNorm":
        return nn.LayerNorm(**{**args, "normalized_shape": tuple(args["normalized_shape"])})
    if kind == "PReLU":
        return nn.PReLU(**args)
    kernel_classes = _kernel_classes()
    if kind in kernel_classes:
        return kernel_classes[kind].from_spec(args)
    known = sorted([*_CONV_KINDS, "Linear", *_BN_KINDS, "GroupNorm", "LayerNorm", "PReLU", *kernel_classes])
    raise UserError(f"architecture.json names an unknown module kind '{kind}' (known: {', '.join(known)}); "
                    f"it was written by a newer autoprune, or edited.")


def describe_module(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(kind, constructor arguments)`` of a module ``architecture.json`` can hold, else None."""
    builtin = _describe_builtin(module)
    if builtin is not None:
        return builtin
    name = type(module).__name__
    if _kernel_classes().get(name) is type(module):
        return name, module.spec()
    return None


def _own_shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    own = [(n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False)]
    own += [(n, tuple(b.shape)) for n, b in module.named_buffers(recurse=False) if b is not None]
    return sorted(own)


def with_dense_kernels(model: nn.Module, kinds: tuple[type, ...]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every module of ``kinds`` (sparse kernels) replaced by its
    plain dense equivalent (the kernel's ``to_dense()``), and the names replaced."""
    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if n and isinstance(m, kinds)]
    for n in names:
        out.set_submodule(n, out.get_submodule(n).to_dense())
    return out, names


def storable_form(model: nn.Module) -> nn.Module:
    """A copy of the compacted model as it is stored: semi-structured (2:4) layers as their
    dense masked equivalent (sparse tensor cores are CUDA-only; re-apply them after loading)."""
    return with_dense_kernels(model, _SEMI_STRUCTURED)[0]


def _dense_base_model(base: dict[str, Any]) -> nn.Module:
    return create_model(base["model"], in_channels=base["in_channels"], num_classes=base["num_classes"],
                        image_size=tuple(base["image_size"]))


def describe_architecture(model: nn.Module, *, base: dict[str, Any]) -> dict[str, Any]:
    """What ``architecture.json`` holds: the base registry model and a spec for every module
    whose type or shape differs from the freshly created dense model of that name.

    Args:
        model: The compacted model (semi-structured layers already replaced by dense ones).
        base: ``{"model", "in_channels", "num_classes", "image_size"}``.

    Raises:
        UserError: a module differs from the dense model and is of a kind that cannot be
            described (its name and type are in the message), or the dense model lacks it.
    """
    base = check_base(base)
    dense_modules = dict(_dense_base_model(base).named_modules())
    specs: list[dict[str, Any]] = []
    attributes: dict[str, dict[str, Any]] = {}
    replaced: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue  # the root, or inside a replaced module (its from_spec builds its children)
        ref = dense_modules.get(name)
        if ref is not None and type(ref) is type(module):
            mine, theirs = describe_module(module), describe_module(ref)
            if mine is not None and mine == theirs:
                continue
            if mine is None and _own_shapes(module) == _own_shapes(ref) and module.extra_repr() == ref.extra_repr():
                continue  # a module kind we do not describe, left as the dense model has it
            if mine is None and _reshaped_alike(module, ref):
                # a subclass we have no spec for (timm's LayerNorm2d, BatchNormAct2d), pruned in place:
                # its shape attributes say it all (checked by _reshaped_alike)
                attributes[name] = _shape_attributes(module)
                continue
        described = describe_module(module)
        if described is None:
            where = "differs from" if ref is not None else "is not in"
            raise UserError(
                f"cannot save the pruned model: module '{name}' ({type(module).__name__}) {where} the dense "
                f"'{base['model']}' and autoprune cannot describe a {type(module).__name__} in architecture.json "
                f"(known: Conv1d/2d/3d, Linear, BatchNorm1d/2d/3d, GroupNorm, LayerNorm, PReLU, "
                f"{', '.join(sorted(_kernel_classes()))})."
            )
        kind, args = described
        specs.append({"name": name, "kind": kind, "args": args})
        replaced.append(name)
    for name in dense_modules:
        if name and not any(name == r or name.startswith(r + ".") for r in replaced):
            try:
                model.get_submodule(name)
            except AttributeError:
                raise UserError(f"cannot save the pruned model: module '{name}' of the dense '{base['model']}' "
                                f"is missing from it.") from None
    arch = {
        "format": FORMAT,
        "format_version": REGISTRY_FORMAT_VERSION,
        "base": base,
        "modules": specs,
        "versions": {"autoprune": __version__, "torch": str(torch.__version__)},
    }
    if attributes:  # read since format 2: older readers must refuse the folder, not load it wrongly
        arch.update(format_version=USER_FORMAT_VERSION, attributes=attributes)
    return arch


# Attributes Torch-Pruning edits in place, kept for modules autoprune has no spec for
# (a subclass of nn.Conv2d or nn.LayerNorm, a module of the user's own).
_SHAPE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                     "num_channels", "num_groups", "num_parameters", "embed_dim", "num_heads")
_SHAPE_TUPLES = ("normalized_shape",)  # tuples of ints (a LayerNorm's)


def _shape_attributes(module: nn.Module) -> dict[str, Any]:
    """The module's shape attributes: ints, and tuples of ints stored as lists."""
    attrs: dict[str, Any] = {a: v for a in _SHAPE_ATTRIBUTES
                             if isinstance(v := getattr(module, a, None), int) and not isinstance(v, bool)}
    for a in _SHAPE_TUPLES:
        v = getattr(module, a, None)
        if isinstance(v, (tuple, list)) and all(isinstance(i, int) for i in v):
            attrs[a] = list(v)
    return attrs


def _set_shape_attributes(module: nn.Module, attrs: dict[str, Any]) -> None:
    for attr, value in attrs.items():
        if hasattr(module, attr):
            setattr(module, attr, tuple(value) if attr in _SHAPE_TUPLES else value)


def _reshaped_alike(module: nn.Module, ref: nn.Module) -> bool:
    """Whether ``ref`` (the dense model's module, same class) becomes ``module`` once given
    ``module``'s shape attributes and tensor shapes: then those describe it."""
    probe = copy.deepcopy(ref)
    _set_shape_attributes(probe, _shape_attributes(module))
    return probe.extra_repr() == module.extra_repr()


def _reshape(model: nn.Module, arch: dict[str, Any], state: dict[str, torch.Tensor],
             module_at: Callable[[str], nn.Module]) -> None:
    """Give the modules ``arch`` lists under ``attributes`` their saved shape attributes, and
    every tensor of ``model`` whose saved shape in ``state`` differs that shape (uninitialised)."""
    for name, attrs in arch.get("attributes", {}).items():
        _set_shape_attributes(module_at(name), attrs)
    own = model.state_dict()
    for key, saved in state.items():
        if key in own and tuple(own[key].shape) != tuple(saved.shape):
            _resize(model, key, tuple(saved.shape))


def _resize(model: nn.Module, key: str, shape: tuple[int, ...]) -> None:
    """Give the parameter or buffer ``key`` of ``model`` the shape ``shape`` (uninitialised)."""
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    param = owner._parameters.get(attr)  # noqa: SLF001 - replacing the tensor itself
    if param is not None:
        owner._parameters[attr] = nn.Parameter(torch.empty(shape, dtype=param.dtype),  # noqa: SLF001
                                               requires_grad=param.requires_grad)
        return
    buffer = owner._buffers.get(attr)  # noqa: SLF001
    if buffer is not None:
        owner._buffers[attr] = torch.empty(shape, dtype=buffer.dtype)  # noqa: SLF001


def check_base(base: dict[str, Any]) -> dict[str, Any]:
    """The ``base`` of a pruned model in its stored form, or UserError naming what is missing."""
    missing = [k for k in ("model", "in_channels", "num_classes", "image_size") if k not in base]
    if missing:
        raise UserError(f"the 'base' of a pruned model needs model, in_channels, num_classes and image_size; "
                        f"missing: {', '.join(missing)}.")
    return {"model": str(base["model"]), "in_channels": int(base["in_channels"]),
            "num_classes": int(base["num_classes"]), "image_size": [int(v) for v in base["image_size"]]}


# -- save / load -------------------------------------------------------------------------


def save_registry_model(model: nn.Module, out_dir: str | os.PathLike, *, base: dict[str, Any]) -> Path:
    """Write ``model.pt`` (a plain CPU state dict) and ``architecture.json`` into ``out_dir``.

    Args:
        model: The compacted model (any device and dtype; saved as it is, on the CPU).
        out_dir: The folder (created if needed).
        base: ``{"model": registry name, "in_channels", "num_classes", "image_size"}``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserError: when a module cannot be described (see :func:`describe_architecture`).

    Example:
        >>> from autoprune.models import create_model
from autoprune.safeload import load_tensors
        >>> m = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
        >>> base = {"model": "digits-cnn", "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}
        >>> import tempfile; d = save_registry_model(m, tempfile.mkdtemp(), base=base)
        >>> load_registry_model(d).features[0].out_channels
        32
    """
    out = Path(out_dir)
    portable = storable_form(model)
    arch = describe_architecture(portable, base=base)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in portable.state_dict().items()}
    save_torch_atomic(state, out / WEIGHTS_FILE)
    write_text_atomic(out / ARCHITECTURE_FILE, json.dumps(arch, indent=2))
    return out


def load_registry_model(path: str | os.PathLike, *, as_timed: bool = False) -> nn.Module:
    """Rebuild a model written by :func:`save_registry_model` (or :func:`~autoprune.deploy.build_deployable`).

    Creates the base registry model, replaces the modules ``architecture.json`` names, and
    loads ``model.pt`` strictly. Needs only :mod:`autoprune.models` and
    :mod:`autoprune.compact.kernels` (no search, Optuna or MLflow).

    Args:
        path: The folder, or its ``architecture.json`` / ``model.pt``.
        as_timed: Return the model in the form its latency was measured in (see
            ``report.json``'s ``fold_bn`` and ``channels_last``; both on when the folder has
            no report): BatchNorm folded into the convs
            (:func:`autoprune.fold.fold_batchnorm`) and, for image models, channels-last
            weights, so that eager inference runs as fast as reported. Feed it inputs in
            ``torch.channels_last`` too. Off: the model as stored, with its BatchNorms, which
            can be fine-tuned further.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        UserError: missing or foreign files, weights that do not fit the architecture.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    arch_path, weights_path = folder / ARCHITECTURE_FILE, folder / WEIGHTS_FILE
    for p in (arch_path, weights_path):
        if not p.is_file():
            raise UserError(f"'{folder}' holds no pruned model ({p.name} is missing); build one with "
                            f"'autoprune prune --config FILE --out DIR'.")
    arch = read_architecture(arch_path)
    if "class" in arch["base"]:
        cls = arch["base"]["class"]
        raise UserError(f"'{folder}' holds a model of your own class ({cls}), not a registry model; load it with "
                        f"autoprune.load_pruned(folder, model={cls.rsplit('.', 1)[-1]}(...)) or, for inference, "
                        f"autoprune.load_pruned(folder).")
    base, specs = check_base(arch["base"]), list(arch.get("modules", []))
    model = _dense_base_model(base)
    for spec in specs:
        try:
            model.get_submodule(spec["name"])
        except AttributeError:
            raise UserError(f"'{arch_path}' replaces module '{spec['name']}', which '{base['model']}' does not "
                            f"have.") from None
        model.set_submodule(spec["name"], build_module(spec["kind"], spec["args"]))
    state = load_tensors(weights_path, what="weights file", fix="save the model again")

    def module_at(name: str) -> nn.Module:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise UserError(f"'{arch_path}' reshapes module '{name}', which '{base['model']}' does not have.") from None

    if arch.get("attributes"):  # modules pruned in place that have no spec (format 2)
        _reshape(model, arch, state, module_at)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]  # all of it: the size mismatches follow the first line
        raise UserError(f"the weights in '{weights_path}' do not fit its architecture.json: {detail}") from None
    model = _timed_form(model.eval(), folder, base) if as_timed else model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_architecture(arch_path: Path) -> dict[str, Any]:
    """An ``architecture.json``, checked for format and version (its ``base`` is a registry
    model's, or ``{"class": ...}`` for a user's model)."""
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"'{arch_path}' cannot be read as JSON ({first_line(exc)}).") from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT or not isinstance(arch.get("base"), dict):
        raise UserError(f"'{arch_path}' was not written by autoprune (no format '{FORMAT}').")
    if int(arch.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"'{arch_path}' has format version {arch['format_version']}, newer than this autoprune "
                        f"reads ({FORMAT_VERSION}); upgrade autoprune.")
    return arch


def _timed_form(model: nn.Module, folder: Path, base: dict[str, Any]) -> nn.Module:
    """The loaded model as its latency was measured: BatchNorm folded, channels-last."""
    form = {"fold_bn": True, "channels_last": True}
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
        form.update({k: bool(report[k]) for k in form if k in report})
    except (OSError, json.JSONDecodeError, TypeError):
        pass  # no readable report: the defaults the latency is measured with
    shape = (base["in_channels"], *base["image_size"])
    return prepare_for_timing(model, shape, device=torch.device("cpu"), settings=LatencySettings(**form))

