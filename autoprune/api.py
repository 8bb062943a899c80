"""The Python API: search, prune, compact and save the user's own model with the user's own
training loop and metric. The CLI runs the same library (:func:`autoprune.study.run_search`,
:func:`autoprune.admm.prune_with`, :func:`autoprune.compact.compact_model`).

The shortest complete use::

    import autoprune

    result = autoprune.search(model, torch.randn(1, 3, 32, 32),
                              train=lambda m, epochs: my_train(m, loader, epochs),
                              evaluate=lambda m: my_metric(m, val_loader), metric="mAP",
                              budget=0.02, trials=50)
    pruned = autoprune.prune(model, result.best_config, train=..., example_inputs=x)
    deployable = autoprune.make_deployable(pruned)
    autoprune.save_pruned(deployable, "out/")
    model = autoprune.load_pruned("out/", model=MyNet())  # or without model=: the exported program

``train(model, amount)`` trains the model it is given in place for ``amount`` of its own
unit (epochs or steps: the :class:`~autoprune.Schedule` is in that unit), creating
its optimizer inside; it needs no change for ADMM or masked retraining, which act through
optimizer hooks (:mod:`autoprune.steering`) that are gone when it returns.
``evaluate(model) -> float`` is any metric; ``direction`` says whether higher or lower is
better. Bad input raises :class:`autoprune.UserError` with what to fix.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.admm import EvalFn, TrainFn
from autoprune.config import LayerTarget, PruneConfig, Schedule, parse_target
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.latency import LatencySettings
from autoprune.measure import measure_pruned
from autoprune.progress import Reporter
from autoprune.pruning import PruneResult, prune_task
from autoprune.runtimes import check_runtime
from autoprune.saving import Deployable, load_pruned, save_pruned
from autoprune.study import SearchResult, SearchSettings, run_search
from autoprune.study.callbacks import ArtifactsCallback, SearchCallback, TrackerCallback
from autoprune.study.settings import SEARCH_ADMM, parse_budget
from autoprune.task import FunctionTask

__all__ = ["Deployable", "PruneResult", "load_pruned", "make_deployable", "prune", "save_pruned", "search"]



# -- search --------------------------------------------------------------------------
def search(
    model: nn.Module | str,
    example_inputs: torch.Tensor | None = None,
    *,
    train: TrainFn | None = None,
    evaluate: EvalFn | None = None,
    metric: str = "accuracy",
    direction: str = "maximize",
    budget: float | str = 0.02,
    budget_mode: str = "absolute",
    device: str = "cpu",
    trials: int | None = None,
    schedule: Schedule | None = None,
    method: str = "auto",
    rungs: bool = True,
    short_rung: float = 0.2,
    epoch_budget: float | str | None = "auto",
    space: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    runs_dir: str | os.PathLike = "runs",
    seed: int = 0,
    sampler: str = "tpe",
    latency_batch: int | None = None,
    dtype: str = "fp32",
    runtime: str = "torch",
    dataset: str | None = None,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    test: EvalFn | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    callbacks: Sequence[SearchCallback] = (),
) -> SearchResult:
    """Search per-layer sparsity types and rates that make ``model`` fastest on ``device``
    within a budget on the metric.

    Args:
        model: The trained dense model (never changed), or a registry model name
            (``"digits-cnn"``) to search exactly as ``autoprune search --model`` does
            (then ``dataset`` names its data, and ``train``/``evaluate`` stay None).
        example_inputs: One input batch (batch dimension first); the latency is measured
            on inputs of this shape.
        train: ``train(model, amount)``, your training loop (see the module docstring).
        evaluate: ``evaluate(model) -> float``, your metric on validation data.
        metric: The metric's name, used in the budget, the front, Optuna and MLflow.
        direction: ``"maximize"`` (accuracy, mAP, IoU) or ``"minimize"`` (a loss, an error).
        budget: The drop of the metric allowed: ``0.02`` or ``"2%"``; absolute (in the
            metric's units) or, with ``budget_mode="relative"``, a fraction of dense.
        device: Where latency is measured and the model trained (``cpu``, ``cuda``).
        runtime: What latency is measured in (:mod:`autoprune.runtimes`): ``torch`` (eager, the
            default), ``onnxruntime`` or ``torch-compile``; stored with the study, which refuses
            another one unless ``resume``.
        trials: Trials in all (default 30).
        schedule: Training per ADMM W-step and retraining, in ``train``'s unit
            (default :meth:`Schedule.for_budget(5) <autoprune.Schedule.for_budget>`: 6 x 0.25
            + 3.5, rho 3; ``Schedule.for_loop(iters, admm_amount, retrain_amount, rho)`` writes
            one in these words). For a registry model it is the built-in loop's, in epochs,
            with its learning rate and batch size.
        method: How each trial prunes: ``"magnitude"`` (one-shot, then all the schedule's
            training is masked retraining), ``"admm"``, or ``"auto"`` (the default: the rule of
            :mod:`autoprune.method_rule`, which reads the equal-epoch table by epochs; your
            ``train``'s unit is not known to be the epoch, so here it runs ``"magnitude"`` and
            says why).
        rungs: Score each configuration cheaply first (the hard prune with BatchNorm
            statistics recomputed by ``train`` with its optimizer steps undone, then a short
            masked retraining) and train the full schedule only for those predicted to reach
            the front within the budget (:mod:`autoprune.study.rungs`). False trains every
            configuration faster than dense fully.
        short_rung: The short rung's training, a fraction of the schedule (0: none).
        epoch_budget: The training the whole study may spend, in ``train``'s unit, every rung
            counted: a number, ``"auto"`` (nine full schedules: what a uniform sweep of nine
            rates trains) or None (no cap).
        space: A search space YAML file, or None/``"auto"`` (every prunable layer).
        storage: An Optuna storage URL (default ``sqlite:///<runs_dir>/optuna.db``).
        study_name: The study's name (default ``<model class>-<dataset>-<device>``).
        tracking_uri: The MLflow tracking URI (default ``sqlite:///<runs_dir>/mlflow.db``).
        tracking: False writes the study's figures and report without MLflow.
        runs_dir: Where studies, caches and reports go.
        dataset: A name for your data in reports (default ``user-data``); for a registry
            model, the registry dataset.
        checkpoint: A registry model's dense checkpoint (default: trained once and cached).
        data_dir: Where a registry dataset's files are.
        test: ``test(model) -> float`` on held-out data, reported beside (optional).
        resume: Continue an existing study with its stored settings.
        reporter: Progress (default: none; :class:`autoprune.progress.RichReporter` draws bars).
        callbacks: More per-trial side effects.

    Returns:
        The :class:`~autoprune.study.SearchResult`: ``.front`` (the Pareto trials),
        ``.best`` (the fastest within the budget), ``.best_config`` (its config YAML file,
        which :func:`prune` and ``autoprune prune --config`` read).

    Raises:
        UserError: for bad input (a wrong type, budget, direction, space or storage).
    """
    budget_value = parse_budget(budget)
    admm_settings = SEARCH_ADMM
    if isinstance(model, str):
        if train is not None or evaluate is not None or example_inputs is not None:
            raise UserError("a registry model name searches with the built-in loop and accuracy; pass your model "
                            "object to use your own train and evaluate.")
        task, model_name, data_name = None, model, dataset or "digits"
        if schedule is not None:  # the built-in loop counts in epochs
            admm_settings = schedule
    else:
        if checkpoint is not None or data_dir is not None:
            raise UserError("checkpoint and data_dir belong to registry models; your model object is the checkpoint.")
        if example_inputs is None or train is None or evaluate is None:
            raise UserError("autoprune.search(model, example_inputs, train=..., evaluate=...) needs all four for "
                            "your own model (or pass a registry model name such as 'digits-cnn').")
        task = FunctionTask(model, example_inputs, train, evaluate, metric=metric, direction=direction,
                            schedule=schedule, test=test)
        admm_settings = task.schedule
        model_name, data_name = type(model).__name__, dataset or "user-data"
    given = {"budget", "budget_mode", "device", "sampler", "seed", "dtype", "trial_method", "rungs", "short_rung",
             "runtime"}
    settings = SearchSettings(model=model_name, dataset=data_name, budget=budget_value, budget_mode=budget_mode,
                              trials=trials, device=device, latency_batch=latency_batch, dtype=dtype, sampler=sampler,
                              seed=seed, study_name=study_name, storage=storage, resume=resume, space=space,
                              admm=admm_settings, trial_method=method, runs_dir=str(runs_dir), rungs=rungs,
                              short_rung=short_rung, epoch_budget=epoch_budget,
                              given=frozenset(given | ({"space"} if space is not None else set())), task=task,
                              checkpoint=checkpoint, data_dir=data_dir, runtime=runtime)
    hooks = [*callbacks, *mirror_callbacks(tracking=tracking, tracking_uri=tracking_uri, runs_dir=str(runs_dir),
                                           reporter=reporter)]
    return run_search(settings, reporter=reporter, callbacks=hooks)


def mirror_callbacks(*, tracking: bool, tracking_uri: str | None, runs_dir: str,
                     reporter: Reporter | None) -> list[SearchCallback]:
    """A search's side effects (the CLI's too): the MLflow mirror at ``tracking_uri`` (default
    ``sqlite:///<runs_dir>/mlflow.db``), which writes the study's figures and report as well,
    or without ``tracking`` the figures and report alone. MLflow's failures are logged as
    warnings through ``reporter``."""
    from autoprune.tracking import Tracker, write_study_artifacts  # MLflow and plotly: only when searching

    def warn(msg: str) -> None:
        if reporter is not None:
            reporter.log(f"warning: {msg}")

    if not tracking:
        return [ArtifactsCallback(functools.partial(write_study_artifacts, warn=warn))]
    return [TrackerCallback(Tracker(tracking_uri or f"sqlite:///{runs_dir}/mlflow.db", warn=warn))]


# -- prune ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _ConfigParts:
    layers: dict[str, LayerTarget]
    admm: Schedule | None = None  # the stored schedule (configs written by a search)
    channel_multiple: int = 1
    seed: int = 0
    method: str | None = None  # how the search's trials pruned (configs written by a search)


def _read_config(config: Any) -> _ConfigParts:  # noqa: ANN401
    """What a config in any accepted form asks."""
    if isinstance(config, SearchResult):
        if config.best_config is None:
            raise UserError("this search found no pruned configuration within its budget (best_config is None); "
                            "search longer or with a larger budget, or pass a config.")
        config = config.best_config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"config file '{path}' does not exist; pass a best_config.yaml path, a PruneConfig, or a "
                            f"mapping such as {{'features.*': 'filter:0.5'}}.")
        config = PruneConfig.from_yaml(path)
    if isinstance(config, PruneConfig):
        method = (config.origin or {}).get("trial_method")
        return _ConfigParts(dict(config.layers), config.admm, config.channel_multiple, config.seed, method)
    if isinstance(config, Mapping):
        if "layers" in config:
            raw = dict(config)
            raw.setdefault("model", "user")
            raw.setdefault("dataset", "user-data")
            return _read_config(PruneConfig.from_dict(raw, source="config"))
        if not config:
            raise UserError("the config prunes no layer; map layer names or globs to targets such as "
                            "{'conv1': 'filter:0.5'}.")
        return _ConfigParts({str(k): parse_target(v, f"config['{k}']") for k, v in config.items()})
    raise UserError(f"config must be a best_config.yaml path, a PruneConfig, a SearchResult or a mapping of layers "
                    f"to targets; got {type(config).__name__}.")


def prune(
    model: nn.Module,
    config: Any,  # noqa: ANN401 - path, PruneConfig, SearchResult or mapping
    *,
    train: TrainFn,
    example_inputs: torch.Tensor,
    evaluate: EvalFn | None = None,
    metric: str = "accuracy",
    schedule: Schedule | None = None,
    method: str | None = None,
    device: str = "cpu",
    seed: int | None = None,
    channel_multiple: int | None = None,
    reporter: Reporter | None = None,
) -> PruneResult:
    """Prune a copy of ``model`` to ``config`` with ADMM or magnitude pruning and masked
    retraining, through your training loop.

    Args:
        model: The trained dense model (not changed: a copy is pruned).
        config: What to prune: a ``best_config.yaml`` path (from :func:`search` or the CLI),
            a :class:`~autoprune.config.PruneConfig`, a :class:`~autoprune.study.SearchResult`
            (its best), or a mapping of layer names or globs to targets
            (``{"features.*": "filter:0.5", "classifier.0": {"type": "shape", "rate": 0.7}}``).
        train: ``train(model, amount)``: your loop (see the module docstring).
        example_inputs: One input batch (batch dimension first).
        evaluate: ``evaluate(model) -> float`` (optional): measured before and after.
        metric: The metric's name in the result.
        schedule: Training per phase in ``train``'s unit (default: the config's stored
            schedule, else :meth:`Schedule.for_budget(5) <autoprune.Schedule.for_budget>`).
        method: ``"admm"`` or ``"magnitude"`` (default: how the search that wrote the config
            pruned its trials, else ``"auto"``: :mod:`autoprune.method_rule`, which reads the
            equal-epoch table by epochs; your ``train``'s unit is not known to be the epoch, so
            it runs ``"magnitude"`` and says why; ``"gmp"`` needs autoprune's built-in loop).
        device: Where to train (the model is moved there).
        seed: Seeds Python, NumPy and torch before pruning (default: the config's, else 0).
        channel_multiple: Kept channels rounded to a multiple of this (default: the config's, else 1).

    Returns:
        A :class:`PruneResult`; ``.model`` is a plain model with the pruned weights at zero.

    Raises:
        UserError: a bad config (a layer pattern that matches nothing, an unknown type, a
            rate out of range), a ``train`` that steps no optimizer, bad arguments.
    """
    cfg = _read_config(config)
    task = FunctionTask(model, example_inputs, train, evaluate, metric=metric, schedule=schedule or cfg.admm)
    return prune_task(task, cfg.layers, settings=None, method=method or cfg.method or "auto",
                      device=resolve_device(device), seed=cfg.seed if seed is None else seed,
                      channel_multiple=channel_multiple or cfg.channel_multiple, scored=evaluate is not None,
                      reporter=reporter)


# -- deployable ---------------------------------------------------------------------------
def make_deployable(pruned: PruneResult, example_inputs: torch.Tensor | None = None, *, device: str = "cpu",
            batch: int = 32, dtype: str = "fp32", runtime: str = "torch") -> Deployable:
    """Remove pruned channels and pick each sparse layer's fastest kernel on ``device`` (the
    same compaction as ``autoprune prune --deploy``), check the outputs against the pruned
    model, and time it beside dense.

    Args:
        pruned: What :func:`prune` returned.
        example_inputs: An input batch for the checks (default: ``pruned.example_inputs``).
        device: Where kernels are chosen and latency measured.
        batch: The batch size of the measurements.
        dtype: ``fp32``, ``fp16`` or ``bf16`` for the kernel choice and timing.
        runtime: Where the kernels are chosen and both models timed (:mod:`autoprune.runtimes`:
            ``torch``, ``onnxruntime``, ``torch-compile``).

    Raises:
        UserError: ``pruned`` is not a :class:`PruneResult`.
        RuntimeError: the compacted outputs differ from the pruned model's (a bug).
    """
    if not isinstance(pruned, PruneResult):
        raise UserError(f"make_deployable() takes what autoprune.prune() returned, not {type(pruned).__name__}.")
    dev = resolve_device(device)
    x = (pruned.example_inputs if example_inputs is None else example_inputs).detach().cpu().float()
    latency = LatencySettings(batch_size=batch, dtype=dtype, runtime=check_runtime(runtime, dev, dtype).name)
    m = measure_pruned(pruned.model, pruned.projector, pruned.dense, x, device=dev, latency=latency)
    model, result, diff = m.model, m.compact, m.max_abs_diff
    dense_ms, pruned_ms = m.dense.median_ms, m.pruned.median_ms
    return Deployable(model=model, kernels={k: c.form for k, c in result.choices.items()}, max_abs_diff=diff,
                      speedup=dense_ms / pruned_ms, latency_ms={"dense": dense_ms, "pruned": pruned_ms}, batch=batch,
                      device=str(dev), example_inputs=x)
