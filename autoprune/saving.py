"""Saving and loading a compacted user model: :class:`Deployable`, :func:`save_pruned`,
:func:`load_pruned`. Light on purpose: loading needs torch and autoprune's kernels, not the
search, Optuna or MLflow.

A user model's folder holds nothing that can carry code:

* ``model.pt``: the compacted weights, a plain state dict (``torch.load(weights_only=True)``);
* ``architecture.json``: the model's class and what autoprune changed (every conv, linear and
  norm layer's shape, the kernel form of each sparse layer; see
  :func:`autoprune.deploy.user_model.describe_user_model`);
* ``example.pt``: an example batch and the saved model's outputs on it (tensors), against
  which a rebuilt model is checked;
* ``model.pt2`` (``torch.export``) and ``model.onnx``, checked against torch; ``report.json``.

``load_pruned(folder, model=MyNet())`` reshapes the caller's own instance to the saved
channel counts and kernel forms and loads the weights into it; ``load_pruned(folder)``
returns the ``torch.export`` program, for inference without the class. Neither unpickles
anything. Folders written by autoprune before this format hold ``module.pt``, the module
pickled whole: they load only with ``trust_pickle=True``. :func:`load_pruned` also reads the
CLI's deployable folders (``architecture.json`` + ``model.pt`` of registry models).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from autoprune.atomic import staged_folder, write_text_atomic
from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.deploy.card import DeployReport

__all__ = ["EXAMPLE_FILE", "MODULE_FILE", "Deployable", "load_pruned", "save_pruned"]

# written by autoprune before the code-free format: the module pickled whole (read only with trust_pickle=True)
MODULE_FILE = "module.pt"
EXAMPLE_FILE = "example.pt"  # {"input": a batch, "outputs": the saved model's output tensors on it}
REPORT_FILE = "report.json"


@dataclass
class Deployable:
    """A compacted model: channels removed, each sparse layer in the kernel measured fastest.
    What both builders return: :func:`autoprune.make_deployable` (a user's model) and
    :func:`autoprune.deploy.build_deployable` (the CLI's folder of a registry model, which
    also sets ``report`` and ``out_dir``).

    Attributes:
        model: The compacted model (a plain ``nn.Module``, float32, on ``device``).
        kernels: Layer -> the kernel form chosen (``dense``, ``shape-gemm``, ``csr``...).
        max_abs_diff: The largest output difference from the pruned (masked) model on the
            example inputs (float rounding; a larger one raises).
        speedup: Dense latency / compacted latency, measured side by side on ``device``.
        latency_ms: ``{"dense": ms, "pruned": ms}`` per batch of ``batch``.
        batch: The batch the latencies were measured at.
        device: Where it was measured.
        example_inputs: The example batch (export traces it).
        report: The deployable folder's report card (``report.json``: accuracy, latency,
            MACs and parameters beside dense, the checks and exports; see
            :class:`autoprune.deploy.DeployReport`), for a folder built by
            :func:`~autoprune.deploy.build_deployable`; None from :func:`~autoprune.make_deployable`.
        out_dir: The folder it was built into (with ``report``).
    """

    model: nn.Module
    kernels: dict[str, str]
    max_abs_diff: float
    speedup: float
    latency_ms: dict[str, float]
    batch: int
    device: str
    example_inputs: torch.Tensor = field(repr=False)
    report: DeployReport | None = field(default=None, repr=False)
    out_dir: str | None = None

    def to_dict(self, *, with_out_dir: bool = False) -> dict[str, Any]:
        """What the folder's ``report.json`` says of it: the report card where there is one
        (``with_out_dir`` adds ``out_dir``, as ``autoprune prune --json`` prints it), else the
        measurements (kernels, output difference, speedup, latencies, batch, device, input shape)."""
        if self.report is not None:
            out = self.report.to_dict()
            if with_out_dir:
                out["out_dir"] = self.out_dir
            return out
        return {"kernels": self.kernels, "max_abs_diff": self.max_abs_diff, "speedup": self.speedup,
                "latency_ms": self.latency_ms, "batch": self.batch, "device": self.device,
                "input_shape": list(self.example_inputs.shape[1:])}


def _output_tensors(out: Any) -> list[torch.Tensor]:  # noqa: ANN401 - whatever the model returns
    """The tensors of a model's output (a tensor, or a tuple / list / dict of them)."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def save_pruned(deployable: Deployable | nn.Module, out_dir: str | os.PathLike, *,
                example_inputs: torch.Tensor | None = None, onnx: bool = True) -> Path:
    """Write a compacted model into ``out_dir``, in files that cannot carry code:
    ``model.pt`` (the weights, a plain state dict), ``architecture.json`` (its class and what
    autoprune changed: layer shapes and kernel forms), ``example.pt`` (an example batch and
    the outputs on it), ``model.pt2`` and ``model.onnx`` (checked against torch on the example
    inputs; CSR layers export as dense masked weights) and ``report.json``.

    Load it with :func:`load_pruned`: ``load_pruned(out_dir, model=MyNet())`` with your class,
    or ``load_pruned(out_dir)`` for the exported program.

    Args:
        deployable: What :func:`autoprune.make_deployable` returned, or a compacted module.
        out_dir: A new or empty folder.
        example_inputs: A batch (needed for a bare module; a Deployable has its own).
        onnx: Export ``model.pt2`` and ``model.onnx`` (False: weights, architecture and example only).

    Raises:
        UserError: ``out_dir`` is a file or a non-empty folder; no example inputs for a bare module.
    """
    from autoprune.deploy.archive import ARCHITECTURE_FILE, WEIGHTS_FILE, storable_form
    from autoprune.deploy.programs import check_programs, export_programs
    from autoprune.deploy.user_model import describe_user_model

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} exists and is not empty; pick another folder or remove it.")
    model = deployable.model if isinstance(deployable, Deployable) else deployable
    if not isinstance(model, nn.Module):
        raise UserError(f"save_pruned() takes what autoprune.make_deployable() returned (or an nn.Module), not "
                        f"{type(deployable).__name__}.")
    x = example_inputs if example_inputs is not None else getattr(deployable, "example_inputs", None)
    if onnx and x is None:
        raise UserError("save_pruned() needs example_inputs to export a bare module (or pass onnx=False).")
    cpu = copy.deepcopy(model).cpu().float().eval()
    portable = storable_form(cpu)  # 2:4 layers are stored as their dense form
    arch = describe_user_model(portable)
    with staged_folder(out) as tmp:
        state = {k: v.detach().contiguous().clone() for k, v in portable.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        write_text_atomic(tmp / ARCHITECTURE_FILE, json.dumps(arch, indent=2))
        report: dict[str, Any] = {"format": "autoprune-module/2", "class": arch["base"]["class"]}
        if isinstance(deployable, Deployable):
            report.update(deployable.to_dict())
        if x is not None:
            xb = x.detach().cpu().float()
            xb = xb if xb.shape[0] >= 2 else torch.cat([xb, xb])
            with torch.no_grad():
                outputs = _output_tensors(portable(xb[:2]))
            torch.save({"input": xb[:2].clone(), "outputs": [o.detach().clone() for o in outputs]}, tmp / EXAMPLE_FILE)
        if onnx:
            exports = export_programs(portable, xb, tmp)
            report["exports"] = {k: (str(Path(v).name) if isinstance(v, Path) else v) for k, v in exports.items()}
            report["checks"] = check_programs(exports, portable, xb)
        write_text_atomic(tmp / REPORT_FILE, json.dumps(report, indent=2, default=str))
    return out


def load_pruned(path: str | os.PathLike, model: nn.Module | None = None, *, trust_pickle: bool = False,
                as_timed: bool = False) -> nn.Module:
    """Load a folder written by :func:`save_pruned` or by the CLI's deploy step, running no
    code from it.

    Args:
        path: The folder (or a file in it).
        model: A new instance of your model's class (a folder of :func:`save_pruned`): it is
            reshaped in place to the saved channel counts and kernel forms, the weights are
            loaded into it, and its outputs are checked against the saved ones. Without it,
            the folder's ``torch.export`` program is returned, for inference (it runs as
            exported and cannot be trained further).
        trust_pickle: Load ``module.pt`` of a folder written by an earlier autoprune, a
            module pickled whole. Unpickling runs whatever code the file holds: only for
            files you trust. (Folders of this autoprune hold no pickle.)
        as_timed: For the CLI's folders of registry models: the model as its latency was
            measured (see :func:`autoprune.deploy.load_registry_model`).

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        UserError: a folder without a model; an earlier folder's ``module.pt`` without
            ``trust_pickle=True``; a model that does not fit the saved weights or does not
            compute the saved outputs; a file that would run code to load.
    """
    from autoprune.deploy.archive import ARCHITECTURE_FILE, WEIGHTS_FILE, read_architecture

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    arch_path = folder / ARCHITECTURE_FILE
    if (folder / MODULE_FILE).is_file() and not arch_path.is_file():
        return _load_pickled(folder / MODULE_FILE, trust_pickle)
    arch = read_architecture(arch_path) if arch_path.is_file() else None
    if arch is None or "class" not in arch["base"]:
        from autoprune.deploy.archive import load_registry_model

        if model is not None:
            raise UserError(f"'{folder}' holds a registry model, which autoprune builds itself; call "
                            f"load_pruned('{folder}') without model=.")
        return load_registry_model(folder, as_timed=as_timed)
    if as_timed:
        raise UserError("as_timed applies to the CLI's folders of registry models; a folder of save_pruned loads "
                        "with load_pruned(folder, model=YourNet()), or as its exported program without model=.")
    if model is None:
        return _load_program(folder)
    from autoprune.safeload import load_tensors

    if not isinstance(model, nn.Module):
        raise UserError(f"load_pruned(model=...) takes a new instance of your model's class, not "
                        f"{type(model).__name__}.")
    fix = "save the model again with autoprune.save_pruned"
    state = load_tensors(folder / WEIGHTS_FILE, what="weights file", fix=fix)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{folder / WEIGHTS_FILE}' is not a state dict; {fix}.")
    from autoprune.deploy.user_model import rebuild_user_model

    rebuilt = rebuild_user_model(model.cpu(), arch, state, folder).eval()
    if (folder / EXAMPLE_FILE).is_file():
        _check_outputs(rebuilt, load_tensors(folder / EXAMPLE_FILE, what="example file", fix=fix), folder, arch)
    return rebuilt


def _load_program(folder: Path) -> nn.Module:
    """The folder's ``model.pt2`` as a module (see :func:`autoprune.deploy.programs.load_program`)."""
    from autoprune.deploy.programs import PT2_FILE, load_program

    if not (folder / PT2_FILE).is_file():
        raise UserError(f"'{folder}' holds no exported program ({PT2_FILE}: saved with onnx=False, or the export "
                        f"failed; see report.json); load it with load_pruned(folder, model=YourNet()).")
    return load_program(folder / PT2_FILE)


def _check_outputs(model: nn.Module, example: Any, folder: Path, arch: dict[str, Any]) -> None:  # noqa: ANN401
    """Refuse a rebuilt model whose outputs on the saved example differ from the saved ones."""
    try:
        x, expected = example["input"], list(example["outputs"])
    except (TypeError, KeyError):
        raise UserError(f"'{folder / EXAMPLE_FILE}' is not an example autoprune wrote; save the model again.") from None
    with torch.no_grad():
        got = _output_tensors(model(x))
    worst = max((float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected) if g.shape == e.shape),
                default=0.0)
    scale = max([1.0, *(float(e.abs().max()) for e in expected if e.numel())])
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)) or worst > 1e-4 * scale:
        shown = "other output shapes" if worst == 0.0 else f"outputs that differ by up to {worst:.3g}"
        raise UserError(f"the model passed to load_pruned, rebuilt from '{folder}', gives {shown} on the saved "
                        f"example; pass a new instance of the class that was saved ({arch['base']['class']}) with the same "
                        f"constructor arguments.")


def _load_pickled(path: Path, trust_pickle: bool) -> nn.Module:
    """``module.pt`` of a folder written by an earlier autoprune: unpickled only when trusted."""
    if not trust_pickle:
        raise UserError(f"'{path}' is a module pickled whole (a folder of an earlier autoprune): unpickling it runs "
                        f"any code the file holds; pass trust_pickle=True only if you trust where it came from, "
                        f"then save it again with autoprune.save_pruned.")
    warnings.warn(f"unpickling '{path}' (trust_pickle=True): a folder of an earlier autoprune; save it again with "
                  f"autoprune.save_pruned for one that loads without pickle.", UserWarning, stacklevel=3)
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except (AttributeError, ModuleNotFoundError) as exc:
        raise UserError(f"{path} holds a model whose class cannot be imported here ({exc}); "
                        f"import the module that defines it first.") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"'{path}' holds a {type(model).__name__}, not a model.")
    return model.eval()
