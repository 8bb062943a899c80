"""The deployable pruned model: build it from a finished prune, save it, load it, export it.

A folder written by :func:`build_deployable` holds::

    model.pt            plain state dict (CPU tensors): torch.load(..., weights_only=True)
    architecture.json   how to rebuild the compacted model without any search code
    model.pt2           torch.export program (torch.export.load), batch dimension dynamic
    model.onnx          ONNX (opset 17), batch dimension dynamic
    report.json         accuracy, latency, MACs, params, kernel per layer, device, files
    report.md           the same in a few lines

* :mod:`~autoprune.deploy.archive` — ``model.pt`` + ``architecture.json``:
  :func:`save_registry_model`, :func:`load_registry_model` (needs only the models and kernels), the format;
* :mod:`~autoprune.deploy.programs` — :func:`export_programs` (``model.pt2``, ``model.onnx``),
  :func:`load_program` (a ``model.pt2`` read back without running code from the file);
* :mod:`~autoprune.deploy.build` — :func:`build_deployable`, the steps from a prune to a folder;
* :mod:`~autoprune.deploy.card` — :class:`DeployReport`, ``report.json`` and ``report.md``.

Uploading the model to MLflow is :func:`autoprune.tracking.log_model_to_mlflow`.
"""

from autoprune.deploy.archive import (
    ARCHITECTURE_FILE,
    FORMAT,
    FORMAT_VERSION,
    USER_FORMAT_VERSION,
    WEIGHTS_FILE,
    build_module,
    check_base,
    describe_architecture,
    describe_module,
    load_registry_model,
    read_architecture,
    save_registry_model,
    storable_form,
    with_dense_kernels,
)
from autoprune.deploy.build import build_deployable, count_stored
from autoprune.deploy.card import (
    REPORT_FILE,
    REPORT_MD_FILE,
    Checks,
    DenseFigures,
    DeployReport,
    LayerRow,
    ProgramEntry,
    PrunedFigures,
    card_markdown,
    write_card,
)
from autoprune.deploy.programs import (
    ONNX_FILE,
    ONNX_OPSET,
    PT2_FILE,
    ExportedModule,
    check_programs,
    export_programs,
    load_program,
)
from autoprune.deploy.user_model import describe_user_model, rebuild_user_model
from autoprune.saving import load_pruned  # the one load_pruned: every folder autoprune writes

__all__ = [
    "ARCHITECTURE_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "ONNX_FILE",
    "ONNX_OPSET",
    "PT2_FILE",
    "REPORT_FILE",
    "REPORT_MD_FILE",
    "USER_FORMAT_VERSION",
    "WEIGHTS_FILE",
    "Checks",
    "DenseFigures",
    "DeployReport",
    "ExportedModule",
    "LayerRow",
    "ProgramEntry",
    "PrunedFigures",
    "build_deployable",
    "build_module",
    "card_markdown",
    "check_base",
    "check_programs",
    "count_stored",
    "describe_architecture",
    "describe_module",
    "describe_user_model",
    "export_programs",
    "load_program",
    "load_registry_model",
    "load_pruned",
    "read_architecture",
    "rebuild_user_model",
    "save_registry_model",
    "storable_form",
    "with_dense_kernels",
    "write_card",
]
