"""autoprune: find the per-layer pruning rates and sparsity types that make a CNN
fastest on a target device within an accuracy budget (StructADMM + Optuna + MLflow)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_pruned"]


def load_pruned(path):  # noqa: ANN001, ANN201 - lazy: importing autoprune stays light
    """Load a deployable pruned model folder (see :func:`autoprune.deploy.load_pruned`)."""
    from autoprune.deploy import load_pruned as _load_pruned

    return _load_pruned(path)
