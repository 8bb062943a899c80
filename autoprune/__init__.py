"""autoprune: find the per-layer pruning rates and sparsity types that make a CNN
fastest on a target device within an accuracy budget (StructADMM + Optuna + MLflow).

The Python API (``help(autoprune.search)`` to start; the module :mod:`autoprune.api`)::

    result = autoprune.search(model, example_inputs, train=my_train, evaluate=my_metric, budget=0.02)
    pruned = autoprune.prune(model, result.best_config, train=my_train, example_inputs=example_inputs)
    deployable = autoprune.make_deployable(pruned)
    autoprune.save_pruned(deployable, "out/")
    model = autoprune.load_pruned("out/", model=MyNet())  # or without model=: the exported program

``train(model, amount)`` is your own training loop (it creates its optimizer; autoprune
acts through optimizer hooks it removes afterwards), ``evaluate(model) -> float`` your
metric. Names load on first use, so ``import autoprune`` stays light.

The public API is this package's ``__all__`` and the ``__all__`` of its public subpackages
(``autoprune.study``, ``runtimes``, ``sparsity``, ``models``, ``data``, ``tracking``,
``report``, ``progress``, ``errors``, ``deploy``); the ``autoprune`` command imports nothing
else (``tests/core_tests/test_cli_imports.py``). Everything else is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import Any

from autoprune._version import __version__

_LAZY = {
    "search": "autoprune.api", "prune": "autoprune.api", "make_deployable": "autoprune.api",
    "save_pruned": "autoprune.saving", "load_pruned": "autoprune.saving", "PruneResult": "autoprune.api",
    "Deployable": "autoprune.saving", "Schedule": "autoprune.config", "SearchResult": "autoprune.study",
    "UserError": "autoprune.errors", "AutopruneError": "autoprune.errors",
    "ClassifierTrainer": "autoprune.train", "LogReporter": "autoprune.progress",
    "RichReporter": "autoprune.progress",
    # the commands' library functions: what `autoprune train/layers/prune/bench/export` call
    "PruneConfig": "autoprune.config", "train_baseline": "autoprune.dense", "list_layers": "autoprune.pipeline",
    "input_label": "autoprune.dense", "prune_to_folder": "autoprune.pipeline", "run_bench": "autoprune.bench",
    "write_trial_config": "autoprune.pick", "mirror_callbacks": "autoprune.api",
    "resolve_device": "autoprune.device",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - PEP 562: the API's names load on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
