"""Opening a search: create the study, or join (or resume) an existing one, and resolve once
what this worker runs with.

:func:`open_study` takes what was asked (:class:`~autoprune.study.SearchSettings`) and
returns an :class:`OpenStudy`, frozen: the study loaded with this worker's sampler, its
stored settings (:class:`~autoprune.study.records.StudyMeta`), and the
:class:`~autoprune.study.objective.SearchContext` every trial shares. A new study's
settings are the ones asked; an existing study's stored settings win, and asking for
different ones explicitly (``given``) is refused unless ``--resume``.

Creating a study: its space is checked on the untrained model first (a bad file must not
cost a baseline training), then the dense baseline is loaded or trained and measured
(:mod:`~autoprune.study.baseline`), then the study is created with its settings stored.
Two workers that create one study at the same moment: the second joins the first's.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune._version import __version__
from autoprune.checkpoint import Checkpoint, load_checkpoint
from autoprune.config import PruneConfig, Schedule
from autoprune.dense import build_model, example_input, existing_checkpoint, load_dataset, weights_for
from autoprune.device import resolve_channel_multiple, resolve_device
from autoprune.errors import UserError
from autoprune.groups import ChannelGraph
from autoprune.latency import LatencyCache, check_dtype
from autoprune.progress import Reporter
from autoprune.runtimes import check_runtime
from autoprune.study.baseline import dense_checkpoint, latency_settings, measure_dense
from autoprune.study.objective import SearchContext
from autoprune.study.records import STUDY_ATTR, StudyMeta
from autoprune.study.rungs import Fidelity
from autoprune.study.sampler import PruningSampler
from autoprune.study.settings import AUTO_BUDGET_TRIALS, DEFAULT_TRIALS, SearchSettings, parse_epoch_budget
from autoprune.study.slots import READY_ATTR, TARGET_ATTR, prepare_slots
from autoprune.study.space import SearchSpace
from autoprune.study.space_file import load_space
from autoprune.study.storage import default_storage, open_storage, redact, storage_exists
from autoprune.task import ClassifierTask, Task, model_fingerprint


@dataclass(frozen=True)
class OpenStudy:
    """A study open for this worker: everything the trial loop needs, resolved once.

    Attributes:
        study: The Optuna study, loaded with this worker's sampler.
        url: The storage URL.
        ctx: What every trial shares (the stored settings ``ctx.meta``, the space, the data,
            the dense checkpoint, the device, the latency settings, the ADMM schedule).
        target: The trials the study should have in all.
        study_dir: The study's folder under ``runs/``.
        creator: This worker created the study.
        notes: What the space left out, and why (new studies only).
    """

    study: optuna.Study
    url: str
    ctx: SearchContext
    target: int
    study_dir: Path
    creator: bool
    notes: tuple[str, ...] = ()

    @property
    def meta(self) -> StudyMeta:
        return self.ctx.meta

    @property
    def name(self) -> str:
        return self.ctx.meta.name


@dataclass(frozen=True)
class _Parts:
    """A created or joined study before this worker's sampler is attached."""

    study: optuna.Study | None  # None: another worker created it first (join it)
    meta: StudyMeta
    space: SearchSpace
    task: Task  # the dense model, its input, the training loop, the metric
    graph: ChannelGraph
    device: torch.device
    notes: tuple[str, ...] = ()


def open_study(s: SearchSettings, reporter: Reporter) -> OpenStudy:
    """Create, join or resume the study ``s`` asks for; nothing is written before ``s`` is checked.

    Raises:
        UserError: for bad settings, a missing space file, an unreachable storage, a study
            that clashes with what was asked, a missing checkpoint.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    s.validate()
    if s.space not in (None, "auto") and not Path(s.space).is_file():  # before any storage file is created
        raise UserError(f"search space file '{s.space}' does not exist (see search_spaces/ for examples, or use "
                        f"--space auto).")
    device = resolve_device(s.device or "cpu")
    check_dtype(s.dtype, device)
    if "runtime" in s.given or not s.resume:  # a resumed study measures in its own runtime, checked below
        check_runtime(s.runtime, device, s.dtype)
    if s.task is not None:  # the user's metric, once, before anything is written (the baseline reuses it)
        s.task.dense_score(device)
    url = s.storage or default_storage(s.runs_dir)
    name = s.study_name or s.default_study_name(device.type)
    # a storage file that is not there yet holds no study: it is created with the study, once
    # everything a new study reads (its data, model, space and checkpoint) has been checked
    storage = open_storage(url) if storage_exists(url) else None
    study = load_existing(storage, name) if storage is not None else None
    if study is None and s.resume:
        raise UserError(f"no study named '{name}' in {redact(url)}; run without --resume to start it.")
    parts = None
    if study is None:
        inputs = _new_study_inputs(s, device)
        storage = storage if storage is not None else open_storage(url)
        parts = _create(s, storage, name, device, reporter, inputs)
    creator = parts is not None and parts.study is not None
    if not creator:
        notes = parts.notes if parts is not None else ()
        study = study or load_existing(storage, name)
        parts = dataclasses.replace(_join(study, s), notes=notes)
        check_runtime(parts.meta.runtime, parts.device, parts.meta.dtype)
    if not creator and "epoch_budget" in s.given:  # raising a study's epoch budget lets it go on
        parts = _with_epoch_budget(parts, s, study)
    for note in parts.notes:
        reporter.log(f"note: {note}")
    return _attach(s, parts, storage, url, creator, reporter)


def _with_epoch_budget(parts: _Parts, s: SearchSettings, study: optuna.Study) -> _Parts:
    """An existing study with the epoch budget asked for (stored, so every worker sees it)."""
    fid = Fidelity.from_dict(parts.meta.fidelity)
    budget = parse_epoch_budget(s.epoch_budget)
    if budget == "auto":
        budget = AUTO_BUDGET_TRIALS * parts.task.trial_amount(Schedule(**parts.meta.admm))
    meta = dataclasses.replace(parts.meta, fidelity=dataclasses.replace(fid, epoch_budget=budget).to_dict())
    study.set_user_attr(STUDY_ATTR, meta.to_dict())
    return dataclasses.replace(parts, meta=meta)


def _attach(s: SearchSettings, parts: _Parts, storage: Any, url: str, creator: bool,  # noqa: ANN401
            reporter: Reporter) -> OpenStudy:
    """This worker's context and sampler on the study, and its slots made ready."""
    meta = parts.meta
    study_dir = Path(s.runs_dir) / meta.name.replace("/", "-")
    study_dir.mkdir(parents=True, exist_ok=True)
    ctx = SearchContext(
        meta=meta, space=parts.space, task=parts.task, graph=parts.graph,
        device=parts.device, latency=latency_settings(meta.latency_batch, meta),
        cache=LatencyCache(Path(s.runs_dir) / "latency_cache.json"),
        admm=s.admm if creator else Schedule(**meta.admm), min_speedup=s.min_speedup,
        abandon_drop=s.abandon_drop, reporter=reporter, method=meta.trial_method,
        fidelity=Fidelity.from_dict(meta.fidelity),
    )
    # the study creator uses the seed as given; joining workers shift it, so that their
    # random start-up trials differ (their runs are not reproducible one by one anyway)
    seed = meta.seed if creator else meta.seed + 1 + os.getpid() % 100_000
    sampler = PruningSampler(parts.space, ctx.probe, base=make_sampler(meta.sampler, seed), seed=seed,
                             guided=ctx.fidelity.rungs, direction=meta.direction)
    study = optuna.load_study(study_name=meta.name, storage=storage, sampler=sampler)
    target = s.trials if s.trials is not None else int(study.user_attrs.get(TARGET_ATTR, DEFAULT_TRIALS))
    # a new study, or one whose creator died before it was ready: seeds first, then slots
    prepare = creator or (s.resume and not study.user_attrs.get(READY_ATTR))
    prepare_slots(study, target, seed_params(parts.space) if prepare else (), prepare=prepare)
    return OpenStudy(study, url, ctx, target, study_dir, creator, parts.notes)


@dataclass(frozen=True)
class _Inputs:
    """What a new study reads, checked before anything is written (the storage included)."""

    graph: ChannelGraph
    space: SearchSpace
    task: Task | None = None  # the caller's own task, or None for the built-in classifier
    splits: Any = None  # the dataset's splits (built-in classifier)
    checkpoint: tuple[Checkpoint, Path] | None = None  # a given or cached baseline; None: train one


def _new_study_inputs(s: SearchSettings, device: torch.device) -> _Inputs:
    """The data, the model's graph, the space and a given (or cached) checkpoint of a new
    study, each read and checked; nothing is written. (The space is checked on the untrained
    model: a bad file must not cost a baseline training.)"""
    if s.task is not None:  # the caller's own model, loop and metric (autoprune.search)
        graph = ChannelGraph(s.task.dense(), s.task.example())
        return _Inputs(graph, load_space(s.space, s.model, graph, device=device.type), task=s.task)
    splits = load_dataset(s.dataset, data_dir=s.data_dir)
    graph = ChannelGraph(build_model(s.model, splits), example_input(splits))
    space = load_space(s.space, s.model, graph, device=device.type)
    config = PruneConfig(model=s.model, dataset=s.dataset, layers={}, checkpoint=s.checkpoint, data_dir=s.data_dir,
                         seed=s.seed)
    return _Inputs(graph, space, splits=splits, checkpoint=existing_checkpoint(config, splits.name, splits=splits,
                                                                                runs_dir=s.runs_dir))


def _create(s: SearchSettings, storage: Any, name: str, device: torch.device,  # noqa: ANN401
            reporter: Reporter, inputs: _Inputs) -> _Parts:
    """A new study: the dense baseline trained where needed and measured, the settings stored.
    Its ``study`` is None when another worker created the study meanwhile."""
    graph, space = inputs.graph, inputs.space
    if inputs.task is not None:
        task: Task = inputs.task
        dataset, ckpt_id = s.dataset, model_fingerprint(task.dense())
    else:
        splits = inputs.splits
        if inputs.checkpoint is not None:
            ckpt, ckpt_path = inputs.checkpoint
        else:
            ckpt, ckpt_path = dense_checkpoint(s.model, s.dataset, checkpoint=s.checkpoint, data_dir=s.data_dir,
                                               seed=s.seed, runs_dir=s.runs_dir, splits=splits, device=device,
                                               reporter=reporter)
        task = ClassifierTask(splits, ckpt)
        dataset, ckpt_id = splits.name, str(Path(ckpt_path).resolve())
    if s.trial_method not in (*task.methods, "auto"):
        raise UserError(f"trial method '{s.trial_method}' needs autoprune's built-in training loop; with your own "
                        f"train use one of: {', '.join((*task.methods, 'auto'))}.")
    dense = measure_dense(task, device, s, s.latency_batch, graph, reporter,  # same model, data: same graph
                          label=f"{s.model} on {dataset}")
    fidelity = study_fidelity(s, task)
    val_size = len(task.splits.val) if isinstance(task, ClassifierTask) else None
    meta = StudyMeta(
        name=name, model=s.model, dataset=dataset, checkpoint=ckpt_id, metric=task.metric, direction=task.direction,
        objectives=(task.metric, "latency_ms"),
        device=str(device), budget=s.budget, budget_mode=s.budget_mode, dtype=s.dtype,
        space=space.source, space_spec=space.to_dict(), sampler=s.sampler, seed=s.seed,
        admm=dict(s.admm.__dict__), versions=versions(), channels_last=s.channels_last, fold_bn=s.fold_bn,
        trial_method=s.trial_method, steady_memory=s.steady_memory, runtime=s.runtime,
        fidelity=fidelity.to_dict(), val_size=val_size,
        channel_multiple=resolve_channel_multiple(s.channel_multiple, device, s.dtype, runtime=s.runtime,
                                                  threads=s.threads, log=reporter.log), threads=s.threads,
        **dense,
    )
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=list(meta.directions),
                                    sampler=optuna.samplers.RandomSampler(), load_if_exists=False)
        study.set_user_attr(STUDY_ATTR, meta.to_dict())
        study.set_metric_names(list(meta.objectives))  # optuna-dashboard and study.trials_dataframe() name them
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile: join it
        study = None
    return _Parts(study, meta, space, task, graph, device, tuple(space.notes))


def _join(study: optuna.Study, s: SearchSettings) -> _Parts:
    """An existing study, with its own settings: checked against what was asked, its
    checkpoint found, and its space file (where it still exists) unchanged."""
    meta = existing_study_meta(study, s)
    name = study.study_name
    device = resolve_device(s.device if s.device is not None else meta.device)
    if s.task is not None:
        task: Task = s.task
        if model_fingerprint(task.dense()) != meta.checkpoint:
            raise UserError(f"study '{name}' was made from another model or other weights than the one given; "
                            f"pass the same trained model, or start a new study_name.")
    else:
        task = _registry_task(s, meta, name)
    graph = ChannelGraph(task.dense(), task.example())
    space = SearchSpace.from_dict(meta.space_spec)
    if meta.space != "auto" and Path(meta.space).is_file():
        now = load_space(meta.space, meta.model, graph, device=device.type).to_dict()
        if now["variables"] != meta.space_spec["variables"] or now["fixed"] != meta.space_spec["fixed"]:
            raise UserError(f"the space file '{meta.space}' changed since study '{name}' was created; a study "
                            f"searches one space: restore the file or start a new --study-name.")
    return _Parts(study, meta, space, task, graph, device)


def _registry_task(s: SearchSettings, meta: StudyMeta, name: str) -> ClassifierTask:
    """The built-in classifier task of an existing study: its dataset and its checkpoint file."""
    splits = load_dataset(meta.dataset, data_dir=s.data_dir)
    ckpt_file = s.checkpoint if s.checkpoint is not None else meta.checkpoint
    if not Path(ckpt_file).is_file():
        raise UserError(f"study '{name}' was made from the checkpoint '{ckpt_file}', which is not here; "
                        f"pass --checkpoint with a copy of it.")
    ckpt = load_checkpoint(ckpt_file, weights_for=weights_for(meta.model, splits))
    if ckpt.model != meta.model:
        raise UserError(f"checkpoint '{ckpt_file}' holds model '{ckpt.model}', but study '{name}' searches "
                        f"'{meta.model}'.")
    return ClassifierTask(splits, ckpt)


# -- pieces -------------------------------------------------------------------
def study_fidelity(s: SearchSettings, task: Task) -> Fidelity:
    """How a new study's trials climb the rungs: the settings asked, the epoch budget resolved
    (``auto``: :data:`~autoprune.study.settings.AUTO_BUDGET_TRIALS` full trial schedules)."""
    budget = parse_epoch_budget(s.epoch_budget)
    if budget == "auto":
        budget = AUTO_BUDGET_TRIALS * task.trial_amount(s.admm)
    return Fidelity(rungs=s.rungs, short=s.short_rung, epoch_budget=budget)



def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The base sampler behind :class:`~autoprune.study.sampler.PruningSampler`."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler '{name}'; use one of: tpe, nsga2, random.")


def versions() -> dict[str, str]:
    """The versions a study was made with (stored in its settings)."""
    return {"autoprune": __version__, "torch": torch.__version__, "optuna": optuna.__version__}


def seed_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The enqueued first trial: the dense configuration (free: measured with the baseline), the
    front's reference point. The sampler proposes everything after it."""
    dense = space.dense_params()
    return [] if dense is None else [dense]


def load_existing(storage: Any, name: str) -> optuna.Study | None:  # noqa: ANN401
    """The study ``name`` in ``storage``, or None."""
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None


def existing_study_meta(study: optuna.Study, s: SearchSettings) -> StudyMeta:
    """The settings of a study someone else created (waiting briefly for a creator that is
    still writing them), refusing a clash with what was asked."""
    if study.user_attrs.get(STUDY_ATTR) is None and len(study.directions) == 2:
        wait_for_meta(study, timeout=60.0)
    return check_compatible(study, s)


def wait_for_meta(study: optuna.Study, timeout: float = 120.0) -> StudyMeta:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        raw = study.user_attrs.get(STUDY_ATTR)
        if raw is not None:
            return StudyMeta.from_dict(raw)
        time.sleep(0.5)
    raise UserError(f"study '{study.study_name}' exists but its creator never stored its settings; "
                    f"start a new study with another --study-name.")


def check_compatible(study: optuna.Study, s: SearchSettings) -> StudyMeta:
    """The stored settings of an existing study, refusing a clash with what was asked."""
    name = study.study_name
    raw = study.user_attrs.get(STUDY_ATTR)
    directions = [d.name.lower() for d in study.directions]
    want = (s.task.metric, s.task.direction) if s.task is not None else ("accuracy", "maximize")
    meta = StudyMeta.from_dict(raw) if raw is not None else None
    if meta is None or (meta.metric, meta.direction) != want or tuple(directions) != meta.directions:
        have = f"{meta.metric} ({meta.direction})" if meta is not None else f"directions {directions}"
        raise UserError(f"study '{name}' exists with other objectives ({have}); this search scores {want[0]} "
                        f"({want[1]}) and latency_ms (minimize). Use another study name.")
    asked = {
        "model": (s.model, meta.model), "dataset": (s.dataset, meta.dataset),
        "budget": (s.budget, meta.budget), "budget_mode": (s.budget_mode, meta.budget_mode),
        "device": (None if s.device is None else resolve_device(s.device).type, torch.device(meta.device).type),
        "dtype": (s.dtype, meta.dtype), "latency_batch": (s.latency_batch, meta.latency_batch),
        "sampler": (s.sampler, meta.sampler), "seed": (s.seed, meta.seed),
        "space": (space_id(s.space), space_id(meta.space)),
        "admm": (dict(s.admm.__dict__), meta.admm),
        "channel_multiple": (resolve_channel_multiple(s.channel_multiple, torch.device(meta.device), meta.dtype,
                                                      runtime=meta.runtime, threads=meta.threads)
                             if "channel_multiple" in s.given else None, meta.channel_multiple),
        "channels_last": (s.channels_last, meta.channels_last), "fold_bn": (s.fold_bn, meta.fold_bn),
        "steady_memory": (s.steady_memory, meta.steady_memory), "runtime": (s.runtime, meta.runtime),
        "trial_method": (s.trial_method, meta.trial_method),
        "rungs": (s.rungs, Fidelity.from_dict(meta.fidelity).rungs),
        "short_rung": (s.short_rung, Fidelity.from_dict(meta.fidelity).short),
    }
    clashes = [f"{key} {stored!r} (asked: {want!r})" for key, (want, stored) in asked.items()
               if key in s.given and want is not None and want != stored]
    if clashes and not s.resume:
        raise UserError(f"study '{name}' already exists with {', '.join(clashes)}; add --resume to continue it "
                        f"with its own settings, or pick another --study-name.")
    return meta


def space_id(space: str | None) -> str | None:
    """A space's identity for comparison: ``auto``, or the file's resolved path."""
    if space is None or space == "auto":
        return space
    return str(Path(space).resolve())
