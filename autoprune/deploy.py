"""The deployable pruned model: build it from a finished prune, save it, load it, export it.

A folder written by :func:`build_deployable` holds::

    model.pt            plain state dict (CPU tensors): torch.load(..., weights_only=True)
    architecture.json   how to rebuild the compacted model without any search code
    model.pt2           torch.export program (torch.export.load), batch dimension dynamic
    model.onnx          ONNX (opset 17), batch dimension dynamic
    report.json         accuracy, latency, MACs, params, kernel per layer, device, files
    report.md           the same in a few lines

``architecture.json`` names the registry model the network started from (``base``:
model name, input channels, classes, image size) and, for every module whose type or
shape differs from that freshly created dense model, a spec: the module's name, its kind
(``Conv2d``, ``Linear``, ``BatchNorm2d``, ..., or one of the kernels of
:mod:`autoprune.compact.kernels`) and its constructor arguments. Weights and index
buffers come back through the state dict, so a spec only carries shapes. Torch-Pruning
edits modules in place (``out_channels``, ``in_features``, ``num_features``, the
``groups`` of depthwise convs): comparing against the dense model finds those edits.

:func:`load_pruned` needs only :mod:`autoprune.models` and
:mod:`autoprune.compact.kernels` (no Optuna, no MLflow, no search code)::

    from autoprune import load_pruned
    model = load_pruned("runs/deploy/digits")      # eval mode, on the CPU
    logits = model(images)
    fast = load_pruned("runs/deploy/digits", as_timed=True)  # BatchNorm folded, channels-last

Semi-structured (2:4, CUDA fp16/bf16) layers are stored as their dense masked
equivalent (``Linear`` / 1x1 ``Conv2d``): re-apply
:meth:`~autoprune.compact.kernels.SemiStructuredLinear.from_linear` on the GPU to get
the sparse tensor cores back.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.atomic import write_text_atomic
from autoprune.errors import UserError
from autoprune.fold import fold_batchnorm

__all__ = [
    "ARCHITECTURE_FILE",
    "WEIGHTS_FILE",
    "build_deployable",
    "describe_architecture",
    "export_programs",
    "load_pruned",
    "log_model_to_mlflow",
    "save_pruned",
]

FORMAT = "autoprune-pruned-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
ARCHITECTURE_FILE = "architecture.json"
PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
REPORT_FILE = "report.json"
REPORT_MD_FILE = "report.md"
ONNX_OPSET = 17

# -- describing modules ------------------------------------------------------------------

_CONV_KINDS = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}
_BN_KINDS = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm3d": nn.BatchNorm3d}
_BN_HAS_BIAS_ARG = "bias" in inspect.signature(nn.BatchNorm2d.__init__).parameters  # torch >= 2.13
_LN_HAS_BIAS_ARG = "bias" in inspect.signature(nn.LayerNorm.__init__).parameters


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
    from autoprune.compact import kernels

    out = {}
    for name in kernels.__all__:
        cls = getattr(kernels, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "spec") and hasattr(cls, "from_spec"):
            out[name] = cls
    return out


def _build_module(kind: str, args: dict[str, Any]) -> nn.Module:
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
    kernels = _kernel_classes()
    if kind in kernels:
        return kernels[kind].from_spec(args)
    known = sorted([*_CONV_KINDS, "Linear", *_BN_KINDS, "GroupNorm", "LayerNorm", "PReLU", *kernels])
    raise UserError(f"architecture.json names an unknown module kind '{kind}' (known: {', '.join(known)}); "
                    f"it was written by a newer autoprune, or edited.")


def _describe(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
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


def _dense_equivalent(module: nn.Module) -> nn.Module | None:
    """A plain ``nn.Linear`` / ``nn.Conv2d`` computing what a sparse kernel computes (its masked
    dense weight), or None for modules that are not one of autoprune's sparse kernels."""
    from autoprune.compact.kernels import CSRConv2d, CSRLinear, SemiStructuredConv2d, SemiStructuredLinear

    def _bias(m: nn.Module) -> torch.Tensor | None:
        return None if m.bias is None else m.bias.detach().clone()

    if isinstance(module, (CSRLinear, SemiStructuredLinear)):
        # a semi-structured weight is a tensor subclass; to_dense() gives it back as a plain tensor
        w = module.sparse_weight.csr().to_dense() if isinstance(module, CSRLinear) else module.weight.data.to_dense()
        lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if module.bias is not None:
                lin.bias.copy_(_bias(module))
        return lin.to(w.device)
    if isinstance(module, SemiStructuredConv2d):
        inner = _dense_equivalent(module.linear)
        conv = nn.Conv2d(module.in_channels, module.out_channels, 1, stride=module.stride, bias=inner.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(inner.weight.reshape(conv.weight.shape))
            if inner.bias is not None:
                conv.bias.copy_(inner.bias)
        return conv.to(inner.weight.device)
    if isinstance(module, CSRConv2d):
        kh, kw = module.kernel_size
        w2 = module.sparse_weight.csr().to_dense()
        full = torch.zeros(module.out_channels, module.in_channels * kh * kw, dtype=w2.dtype, device=w2.device)
        full[:, module.col_c * (kh * kw) + module.col_kh * kw + module.col_kw] = w2
        left, right, top, bottom = module.pad
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(module.in_channels, module.out_channels, (kh, kw), stride=module.stride,
                         padding=(top, left) if symmetric else 0, dilation=module.dilation,
                         bias=module.bias is not None).to(device=w2.device, dtype=w2.dtype)
        with torch.no_grad():
            conv.weight.copy_(full.reshape(conv.weight.shape))
            if module.bias is not None:
                conv.bias.copy_(_bias(module))
        return conv if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
    return None


def _replace_kernels(model: nn.Module, kinds: tuple[type, ...]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every module of ``kinds`` replaced by its dense equivalent."""
    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if n and isinstance(m, kinds)]
    for n in names:
        out.set_submodule(n, _dense_equivalent(out.get_submodule(n)))
    return out, names


def _semi_structured_kinds() -> tuple[type, ...]:
    from autoprune.compact.kernels import SemiStructuredConv2d, SemiStructuredLinear

    return (SemiStructuredLinear, SemiStructuredConv2d)


def _unexportable_kinds() -> tuple[type, ...]:
    """Kernels that neither torch.export nor the ONNX exporter can trace (sparse tensors)."""
    from autoprune.compact.kernels import CSRConv2d, CSRLinear

    return (CSRLinear, CSRConv2d, *_semi_structured_kinds())


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
    from autoprune.models import create_model

    base = _check_base(base)
    dense = create_model(base["model"], in_channels=base["in_channels"], num_classes=base["num_classes"],
                         image_size=tuple(base["image_size"]))
    dense_modules = dict(dense.named_modules())
    specs: list[dict[str, Any]] = []
    replaced: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue  # the root, or inside a replaced module (its from_spec builds its children)
        ref = dense_modules.get(name)
        if ref is not None and type(ref) is type(module):
            mine, theirs = _describe(module), _describe(ref)
            if mine is not None and mine == theirs:
                continue
            if mine is None and _own_shapes(module) == _own_shapes(ref) and module.extra_repr() == ref.extra_repr():
                continue  # a module kind we do not describe, left as the dense model has it
        described = _describe(module)
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
    import autoprune

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": base,
        "modules": specs,
        "versions": {"autoprune": autoprune.__version__, "torch": str(torch.__version__)},
    }


def _check_base(base: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("model", "in_channels", "num_classes", "image_size") if k not in base]
    if missing:
        raise UserError(f"the 'base' of a pruned model needs model, in_channels, num_classes and image_size; "
                        f"missing: {', '.join(missing)}.")
    return {"model": str(base["model"]), "in_channels": int(base["in_channels"]),
            "num_classes": int(base["num_classes"]), "image_size": [int(v) for v in base["image_size"]]}


# -- save / load -------------------------------------------------------------------------


def save_pruned(model: nn.Module, out_dir: str | os.PathLike, *, base: dict[str, Any]) -> Path:
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
        >>> m = create_model("digits-cnn", in_channels=1, num_classes=10, image_size=(8, 8))
        >>> base = {"model": "digits-cnn", "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}
        >>> import tempfile; d = save_pruned(m, tempfile.mkdtemp(), base=base)
        >>> load_pruned(d).features[0].out_channels
        32
    """
    out = Path(out_dir)
    portable, _ = _replace_kernels(model, _semi_structured_kinds())
    arch = describe_architecture(portable, base=base)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in portable.state_dict().items()}
    _atomic_save(state, out / WEIGHTS_FILE)
    write_text_atomic(out / ARCHITECTURE_FILE, json.dumps(arch, indent=2))
    return out


def load_pruned(path: str | os.PathLike, *, as_timed: bool = False) -> nn.Module:
    """Rebuild a model written by :func:`save_pruned` (or :func:`build_deployable`).

    Creates the base registry model, replaces the modules ``architecture.json`` names, and
    loads ``model.pt`` strictly. Imports only :mod:`autoprune.models` and
    :mod:`autoprune.compact.kernels`.

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
    from autoprune.models import create_model

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    arch_path, weights_path = folder / ARCHITECTURE_FILE, folder / WEIGHTS_FILE
    for p in (arch_path, weights_path):
        if not p.is_file():
            raise UserError(f"'{folder}' holds no pruned model ({p.name} is missing); build one with "
                            f"'autoprune prune --config FILE --out DIR'.")
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"'{arch_path}' cannot be read as JSON ({exc}).") from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise UserError(f"'{arch_path}' was not written by autoprune (no format '{FORMAT}').")
    if int(arch.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"'{arch_path}' has format version {arch['format_version']}, newer than this autoprune "
                        f"reads ({FORMAT_VERSION}); upgrade autoprune.")
    base = _check_base(arch["base"])
    model = create_model(base["model"], in_channels=base["in_channels"], num_classes=base["num_classes"],
                         image_size=tuple(base["image_size"]))
    for spec in arch.get("modules", []):
        try:
            model.get_submodule(spec["name"])
        except AttributeError:
            raise UserError(f"'{arch_path}' replaces module '{spec['name']}', which '{base['model']}' does not "
                            f"have.") from None
        model.set_submodule(spec["name"], _build_module(spec["kind"], spec["args"]))
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated file, foreign pickle
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"'{weights_path}' cannot be read as a state dict ({first}).") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"the weights in '{weights_path}' do not fit its architecture.json: {first}") from None
    model = _timed_form(model.eval(), folder, base) if as_timed else model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _timed_form(model: nn.Module, folder: Path, base: dict[str, Any]) -> nn.Module:
    """The loaded model as its latency was measured: BatchNorm folded, channels-last."""
    from autoprune.latency import LatencySettings, prepare_for_timing

    form = {"fold_bn": True, "channels_last": True}
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
        form.update({k: bool(report[k]) for k in form if k in report})
    except (OSError, json.JSONDecodeError, TypeError):
        pass  # no readable report: the defaults the latency is measured with
    shape = (base["in_channels"], *base["image_size"])
    return prepare_for_timing(model, shape, device=torch.device("cpu"), settings=LatencySettings(**form))


# -- export ------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def _export_pt2(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """torch.export with a dynamic batch dimension (falling back to the example's batch)."""
    from torch.export import Dim

    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=65536)},))
        batch = "dynamic"
    except Exception:  # noqa: BLE001 - some graphs specialise the batch; try it fixed
        program = torch.export.export(model, (x,))
        batch = f"fixed {x.shape[0]}"
    torch.export.save(program, str(path))
    return batch


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """The TorchScript-based ONNX exporter (needs no onnxscript), dynamic batch; the dynamo
    exporter only where the first fails and onnxscript is installed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings, the exporter's deprecation notice
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                              dynamo=False)
            return "dynamic"
        except Exception as first:  # noqa: BLE001
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise first from None
            from torch.export import Dim

            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: Dim("batch")},), dynamo=True)
            return "dynamic"


def export_programs(model: nn.Module, example_input: torch.Tensor, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``model.pt2`` (``torch.export.save``) and ``model.onnx`` into ``out_dir``.

    Both are exported from a CPU float32 copy of ``model`` with a dynamic batch dimension
    (``example_input`` should have a batch of at least 2: torch.export specialises sizes 0
    and 1). The ONNX file comes from the TorchScript-based exporter (``dynamo=False``,
    opset 17), which needs no ``onnxscript``; the dynamo exporter is tried only when that
    fails and ``onnxscript`` is installed.

    What exports, measured with torch 2.13: dense layers and the shape-wise gather kernel
    (:class:`~autoprune.compact.kernels.ShapeSparseConv2d`, traced as one ``index_select``)
    export to both. Sparse CSR layers do not (torch.export's fake tensors cannot build a
    CSR tensor; ONNX has no ``aten::sparse_compressed_tensor``), nor do semi-structured
    ones: those layers are exported as their dense masked equivalent (same outputs, no
    sparse speed-up) and a note says so. BatchNorms that follow a conv are folded into it
    first (:func:`autoprune.fold.fold_batchnorm`), the form latency is measured in. An
    exporter that still fails does not raise: its entry says ``"skipped: <reason>"``.

    Returns:
        ``{"pt2": Path | "skipped: ...", "onnx": Path | "skipped: ...", "folded_batchnorm": int,
        "pt2_batch"/"onnx_batch": "dynamic" | "fixed N", "pt2_note"/"onnx_note": str}``
        (the notes only where layers were exported densely).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval()
    x = example_input.detach().cpu().float()
    exportable, densified = _replace_kernels(model, _unexportable_kinds())
    # the form latency was measured in: BatchNorm folded into the convs (autoprune.fold)
    exportable, result_folded = fold_batchnorm(exportable, x)
    note = None
    if densified:
        note = (f"layer{'s' if len(densified) > 1 else ''} {', '.join(densified)} exported as dense masked weights "
                f"(same outputs, no sparse speed-up): sparse CSR / semi-structured kernels cannot be exported")
    result: dict[str, Any] = {"folded_batchnorm": result_folded}
    for key, fn, path in (("pt2", _export_pt2, out / PT2_FILE), ("onnx", _export_onnx, out / ONNX_FILE)):
        try:
            result[f"{key}_batch"] = fn(exportable, x, path)
        except Exception as exc:  # noqa: BLE001 - an exporter failing must not lose the build
            path.unlink(missing_ok=True)
            result[key] = f"skipped: {_first_line(exc)}"
            continue
        result[key] = path
        if note:
            result[f"{key}_note"] = note
    return result


# -- build -------------------------------------------------------------------------------


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is a file; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output folder {out} exists and is not empty; use --force to overwrite or pick another --out")


def _count_stored(model: nn.Module) -> int:
    """Parameters plus the stored weights of CSR kernels (kept as buffers, not parameters)."""
    from autoprune.compact.kernels import _CSRWeight

    n = sum(p.numel() for p in model.parameters())
    n += sum(m.values.numel() for m in model.modules() if isinstance(m, _CSRWeight))
    return int(n)


def _rebuild_in_fp32(masked: nn.Module, projector: Any, example: torch.Tensor, choices: dict,  # noqa: ANN401
                     device: torch.device) -> tuple[nn.Module, list[str]]:
    """The compacted model with the chosen forms built in float32 (the dtype the deployable is
    stored in), for choices measured in fp16/bf16. A form that has no float32 version
    (semi-structured) becomes the dense masked layer; the notes say which."""
    from autoprune.compact.channels import remove_channels
    from autoprune.compact.kernels import candidate_forms

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


def _first_batch(dataset: Any, n: int = 64) -> torch.Tensor:  # noqa: ANN401
    from autoprune.data import make_loader

    x, _ = next(iter(make_loader(dataset, batch_size=n, shuffle=False)))
    return x


def build_deployable(
    outcome: Any,  # noqa: ANN401 - autoprune.pipeline.PruneOutcome
    out_dir: str | os.PathLike,
    *,
    device: torch.device,
    latency: Any,  # noqa: ANN401 - autoprune.latency.LatencySettings
    force: bool = False,
    reporter: Any = None,  # noqa: ANN401 - autoprune.progress.Reporter
    force_form: str | None = None,
) -> dict[str, Any]:
    """Turn a finished prune into a deployable model folder and report on it.

    Steps: compact the masked model (channels removed, per-layer kernel measured on
    ``device`` at ``latency.batch_size``); check its outputs equal the masked model's on a
    validation batch; time dense against compacted (interleaved rounds); evaluate
    validation and test accuracy; save (:func:`save_pruned`) and export
    (:func:`export_programs`); reload through :func:`load_pruned` and check the test
    accuracy is the same, and that the ONNX (onnxruntime, when installed) and torch.export
    programs give the torch outputs; write ``report.json`` and ``report.md``.

    Everything is written into a temporary sibling folder that is renamed into place at
    the end, so a failure leaves nothing half-written under ``out_dir``.

    Args:
        outcome: What :func:`autoprune.pipeline.run_prune` returned (masked model,
            projector, splits, summary with the checkpoint path).
        out_dir: The folder to create.
        device: Where kernels are chosen, latency measured and accuracy evaluated.
        latency: Batch size, dtype and repeats of the measurements.
        force: Replace an existing non-empty ``out_dir``.
        reporter: Progress messages (default: silent).
        force_form: Use this kernel form wherever it is a candidate instead of measuring
            (``dense``, ``shape-gemm``, ``csr``; for tests and known choices).

    Returns:
        The report (what ``report.json`` holds), with ``out_dir``.

    Raises:
        UserError: ``out_dir`` exists and is not empty (without ``force``), or the prune
            outcome lacks its projector or splits.
        RuntimeError: the compacted or reloaded model disagrees with the masked one (a bug).
    """
    from autoprune.checkpoint import load_checkpoint
    from autoprune.compact import compact_model
    from autoprune.latency import compare_latency, device_description, latency_ratio
    from autoprune.progress import Reporter
    from autoprune.train import evaluate

    reporter = reporter or Reporter()
    out = Path(out_dir)
    _check_out_dir(out, force)
    if outcome.projector is None or outcome.splits is None:
        raise UserError("this prune outcome has no projector or dataset splits; run it with autoprune.pipeline.run_prune.")
    t_start = time.perf_counter()
    device = torch.device(device)
    splits, summary = outcome.splits, outcome.summary
    shape = (splits.in_channels, *splits.image_size)
    example = torch.zeros(1, *shape)
    masked = copy.deepcopy(outcome.model).cpu().float().eval()

    reporter.log(f"compacting: channel removal and per-layer kernels measured on {device_description(device)} "
                 f"at batch {latency.batch_size}")
    result = compact_model(copy.deepcopy(masked), outcome.projector, example, device=device, latency=latency,
                           force_form=force_form)
    notes: list[str] = []
    if latency.dtype == "fp32":
        model = result.model
    else:
        model, notes = _rebuild_in_fp32(masked, outcome.projector, example, result.choices, device)
    model = model.to(device).eval()

    # the compacted model computes what the masked one does
    xb = _first_batch(splits.val)
    with torch.no_grad():
        ref = masked.to(device)(xb.to(device)).float().cpu()
        got = model(xb.to(device)).float().cpu()
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    diff = float((got - ref).abs().max())
    if not torch.allclose(got, ref, rtol=1e-3, atol=tol):
        raise RuntimeError(f"the compacted model's outputs differ from the masked model's by up to {diff:.3g} "
                           f"(tolerance {tol:.3g}) on a validation batch; this is a bug in compaction.")
    masked.cpu()

    reporter.log("timing dense against compacted (interleaved)")
    ckpt = load_checkpoint(summary["checkpoint"])
    timed = compare_latency({"dense": ckpt.build().eval(), "pruned": copy.deepcopy(model)}, shape, device=device,
                            settings=latency)
    dense_lat, pruned_lat = timed["dense"], timed["pruned"]

    reporter.log("evaluating")
    val_acc = evaluate(model, splits.val, device=device)
    test_acc = evaluate(model, splits.test, device=device)

    base = {"model": ckpt.model, "in_channels": ckpt.in_channels, "num_classes": ckpt.num_classes,
            "image_size": list(ckpt.image_size)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pruned(model, tmp, base=base)
        example_batch = xb[: min(8, len(xb))] if len(xb) >= 2 else torch.cat([xb, xb])
        exports = export_programs(model, example_batch, tmp)
        reporter.log("reloading and checking the saved model and exported programs")
        checks = _check_saved(tmp, exports, model, xb, splits, device, test_acc)

        layers = _layer_rows(summary, model, result.choices)
        files = {"weights": WEIGHTS_FILE, "architecture": ARCHITECTURE_FILE, "report": REPORT_FILE,
                 "report_md": REPORT_MD_FILE}
        export_info: dict[str, Any] = {}
        for key in ("pt2", "onnx"):
            value = exports.get(key)
            if isinstance(value, Path):
                files[key] = value.name
                export_info[key] = {"file": value.name, "batch": exports.get(f"{key}_batch"),
                                    "batchnorms_folded": exports.get("folded_batchnorm", 0)}
                if f"{key}_note" in exports:
                    export_info[key]["note"] = exports[f"{key}_note"]
            else:
                export_info[key] = {"file": None, "skipped": str(value)}
        dense_counts, pruned_counts = summary["dense"], summary["pruned"]
        report: dict[str, Any] = {
            "model": summary.get("model", ckpt.model),
            "dataset": summary.get("dataset", ckpt.dataset),
            "checkpoint": summary["checkpoint"],
            "method": summary.get("method"),
            "device": str(device),
            "device_description": device_description(device),
            "dtype": latency.dtype,
            "stored_dtype": "fp32",
            "batch_size": latency.batch_size,
            "channels_last": latency.channels_last,
            "fold_bn": latency.fold_bn,
            "steady_memory": dense_lat.steady_memory,
            "dense": {
                "val_acc": dense_counts.get("val_acc"), "test_acc": dense_counts.get("test_acc"),
                "latency_ms": dense_lat.median_ms, "latency_p90_ms": dense_lat.p90_ms,
                "macs": dense_counts.get("macs_dense"), "params": dense_counts.get("params"),
            },
            "pruned": {
                "val_acc": val_acc, "test_acc": test_acc,
                "masked_val_acc": pruned_counts.get("val_acc"), "masked_test_acc": pruned_counts.get("test_acc"),
                "latency_ms": pruned_lat.median_ms, "latency_p90_ms": pruned_lat.p90_ms,
                "macs": pruned_counts.get("macs"), "params": _count_stored(model),
                "params_nonzero": pruned_counts.get("params_nonzero"),
            },
            "accuracy_drop": {"val": (dense_counts.get("val_acc") or 0.0) - val_acc,
                              "test": (dense_counts.get("test_acc") or 0.0) - test_acc},
            "speedup": latency_ratio(dense_lat, pruned_lat),
            "mac_ratio": (dense_counts.get("macs_dense") or 0) / max(pruned_counts.get("macs") or 0, 1),
            "param_ratio": (dense_counts.get("params") or 0) / max(_count_stored(model), 1),
            "latency": {"dense": dense_lat.to_dict(), "pruned": pruned_lat.to_dict()},
            "kernels_reverted": result.reverted,
            "layers": layers,
            "checks": {"masked_max_abs_diff": diff, **checks},
            "exports": export_info,
            "files": files,
            "notes": notes,
            "seconds": None,
        }
        report["seconds"] = time.perf_counter() - t_start
        write_text_atomic(tmp / REPORT_FILE, json.dumps(report, indent=2, default=str))
        write_text_atomic(tmp / REPORT_MD_FILE, _report_md(report))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reporter.log(f"deployable model in {out}: {report['speedup']:.2f}x faster than dense, test accuracy "
                 f"{100 * test_acc:.1f}% (dense {100 * (dense_counts.get('test_acc') or 0):.1f}%)")
    return {**report, "out_dir": str(out)}


def _check_saved(folder: Path, exports: dict[str, Any], model: nn.Module, xb: torch.Tensor, splits: Any,  # noqa: ANN401
                 device: torch.device, test_acc: float) -> dict[str, Any]:
    """Reload the saved model and the exported programs and compare them with ``model``."""
    from autoprune.train import evaluate

    reloaded = load_pruned(folder).to(device)
    reloaded_acc = evaluate(reloaded, splits.test, device=device)
    # CPU kernels are deterministic: the same weights give the same predictions. On a GPU
    # the reloaded model may pick other convolution algorithms; allow one sample there.
    slack = 0.0 if device.type == "cpu" else 1.0 / max(len(splits.test), 1) + 1e-12
    if abs(reloaded_acc - test_acc) > slack:
        raise RuntimeError(f"the saved model reloads with test accuracy {reloaded_acc:.4f}, not {test_acc:.4f}; "
                           f"this is a bug in save_pruned/load_pruned.")
    x = xb.cpu().float()
    with torch.no_grad():
        ref = copy.deepcopy(model).cpu().float().eval()(x)
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    checks: dict[str, Any] = {"reloaded_test_acc": reloaded_acc}
    if isinstance(exports.get("pt2"), Path):
        program = torch.export.load(str(exports["pt2"]))
        with torch.no_grad():
            got = program.module()(x)
        checks["pt2_max_abs_diff"] = float((got - ref).abs().max())
        if checks["pt2_max_abs_diff"] > tol:
            raise RuntimeError(f"the torch.export program differs from the model by {checks['pt2_max_abs_diff']:.3g}.")
    if isinstance(exports.get("onnx"), Path):
        try:
            import onnxruntime as ort
        except ImportError:
            checks["onnxruntime"] = "not installed: ONNX output not checked"
        else:
            session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            checks["onnx_max_abs_diff"] = float(abs(got - ref.numpy()).max())
            if checks["onnx_max_abs_diff"] > tol:
                raise RuntimeError(f"the ONNX model (onnxruntime) differs from the model by "
                                   f"{checks['onnx_max_abs_diff']:.3g}.")
    return checks


def _layer_rows(summary: dict[str, Any], model: nn.Module, choices: dict) -> list[dict[str, Any]]:  # noqa: ANN401
    rows = []
    for row in summary.get("layers", []):
        name = row["name"]
        module = model.get_submodule(name)
        choice = choices.get(name)
        spec = _describe(module)
        rows.append({
            "name": name, "kind": row.get("kind"), "type": row.get("type"), "rate": row.get("rate"),
            "sparsity": row.get("sparsity"), "weight_shape": row.get("weight_shape"),
            "module_after": type(module).__name__, "spec_after": spec[1] if spec else None,
            "kernel": choice.form if choice else "dense",
            "candidates_ms": dict(choice.candidates_ms) if choice else {},
            "macs_dense": row.get("macs_dense"), "macs": row.get("macs"),
        })
    return rows


def _report_md(r: dict[str, Any]) -> str:
    d, p = r["dense"], r["pruned"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = [
        f"# {r['model']} on {r['dataset']}: deployable pruned model",
        "",
        f"Measured on {r['device_description']}, batch {r['batch_size']}, {r['dtype']} "
        f"(weights stored in {r['stored_dtype']}).",
        "",
        "| | dense | pruned |",
        "|---|---|---|",
        f"| test accuracy | {pct(d['test_acc'])} | {pct(p['test_acc'])} |",
        f"| validation accuracy | {pct(d['val_acc'])} | {pct(p['val_acc'])} |",
        f"| latency median (ms/batch) | {d['latency_ms']:.3f} | {p['latency_ms']:.3f} |",
        f"| latency p90 (ms/batch) | {d['latency_p90_ms']:.3f} | {p['latency_p90_ms']:.3f} |",
        f"| MACs per sample | {d['macs']:,} | {p['macs']:,} |",
        f"| parameters | {d['params']:,} | {p['params']:,} |",
        "",
        f"Speedup **{r['speedup']:.2f}x**, {r['mac_ratio']:.2f}x fewer MACs, {r['param_ratio']:.2f}x fewer parameters.",
        "",
        "| layer | target | kernel |",
        "|---|---|---|",
    ]
    for row in r["layers"]:
        target = row["type"] if row.get("rate") is None else f"{row['type']} {row['rate']:g}"
        lines.append(f"| {row['name']} | {target} | {row['kernel']} |")
    lines += ["", "Files: " + ", ".join(f"`{v}`" for v in r["files"].values()) + "."]
    for key, info in r["exports"].items():
        if info.get("skipped"):
            lines.append(f"- {key}: {info['skipped']}")
        elif info.get("note"):
            lines.append(f"- {key}: {info['note']}")
    for note in r["notes"]:
        lines.append(f"- {note}")
    lines += ["", "Load it with `from autoprune import load_pruned; model = load_pruned(FOLDER)`."]
    return "\n".join(lines) + "\n"


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (allowed by ``force``) is moved aside first
    and deleted only once the new folder is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _atomic_save(obj: Any, path: Path) -> None:  # noqa: ANN401
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- MLflow ------------------------------------------------------------------------------


def log_model_to_mlflow(
    model: nn.Module,
    example_input: torch.Tensor,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    report: dict[str, Any],
    *,
    warn: Callable[[str], None] | None = None,
) -> str | None:
    """Log the compacted model to MLflow (``mlflow.pytorch.log_model`` with a signature
    inferred from ``example_input``) plus the report's headline metrics and ``report.json``.

    The model is pickled (``serialization_format="pickle"``: MLflow 3's default ``pt2``
    goes through torch.export, which cannot trace the CSR kernels) with autoprune's
    source beside it (``code_paths``), so it loads where autoprune is not installed;
    ``mlflow.pytorch.load_model("runs:/<id>/model")`` gives the module back. Never raises for MLflow's sake: an unreachable or
    failing tracking URI is reported once through ``warn`` and gives None.

    Returns:
        The MLflow run id, or None when logging failed.
    """
    import logging

    warn = warn or logging.getLogger(__name__).warning
    try:
        from autoprune.tracking import ARTIFACT_DIR, HEALTH_TIMEOUT_S, HTTP_ENV_DEFAULTS, _is_http, _resolve_sqlite
    except ImportError as exc:  # pragma: no cover - mlflow missing
        warn(f"MLflow logging skipped: {exc}")
        return None
    uri, db_path = _resolve_sqlite(tracking_uri)
    if _is_http(uri):
        import urllib.error
        import urllib.request

        for name, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # it answered
        except (urllib.error.URLError, OSError) as exc:
            warn(f"MLflow tracking at {uri} is unreachable ({_first_line(exc)}); the model was not logged")
            return None
    try:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.models import infer_signature

        import autoprune

        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if db_path is not None:
                location = (db_path.parent / ARTIFACT_DIR / experiment.replace("/", "-")).resolve().as_uri()
            exp_id = client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        cpu_model = copy.deepcopy(model).cpu().float().eval()
        x = example_input.detach().cpu().float()
        with torch.no_grad():
            y = cpu_model(x)
        signature = infer_signature(x.numpy(), y.numpy())
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
                mlflow.set_tag("autoprune.role", "deployable")
                mlflow.log_metrics(_report_metrics(report))
                mlflow.log_dict(report, "report.json")
                mlflow.pytorch.log_model(
                    cpu_model, name="model", signature=signature,
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                    code_paths=[str(Path(autoprune.__file__).parent)],
                    # MLflow 3's default 'pt2' goes through torch.export, which cannot trace CSR kernels
                    serialization_format="pickle",
                )
                return run.info.run_id
        finally:
            mlflow.set_tracking_uri(previous)
    except Exception as exc:  # noqa: BLE001 - tracking must never break the build
        warn(f"MLflow logging to {uri} failed ({_first_line(exc)}); the model was not logged")
        return None


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for side in ("dense", "pruned"):
        for key in ("test_acc", "val_acc", "latency_ms", "latency_p90_ms", "macs", "params"):
            value = report.get(side, {}).get(key)
            if isinstance(value, (int, float)):
                out[f"{side}_{key}"] = float(value)
    for key in ("speedup", "mac_ratio", "param_ratio"):
        if isinstance(report.get(key), (int, float)):
            out[key] = float(report[key])
    return out
