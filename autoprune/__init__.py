"""autoprune: find the per-layer pruning rates and sparsity types that make a CNN
fastest on a target device within an accuracy budget (StructADMM + Optuna + MLflow)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
