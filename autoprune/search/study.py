"""The search: an Optuna study over per-layer sparsity, shared by any number of workers.

``run_search`` opens (or creates) the study in its storage, measures the dense baseline
once per study, and then runs trials until the study has the requested number.

Trial slots. The study's trials are created as WAITING slots up front: the dense
configuration and a few uniform ones first (so the front starts from known points),
then empty slots up to ``--trials``. A worker claims a slot by moving it from WAITING to
RUNNING, which Optuna's storages do atomically (RDB row update, journal log order), and
only claims slots numbered below the target (plus one per failed trial). Several
``autoprune search`` processes on one study thus finish exactly the requested number
of trials between them, whatever their timing; slots that two workers enqueued at the
same moment beyond the target simply stay WAITING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprune.atomic import write_text_atomic
from autoprune.errors import UserError
from autoprune.progress import Reporter
from autoprune.search.records import (
    DIRECTIONS,
    OBJECTIVES,
    REASON_ATTR,
    STUDY_ATTR,
    StudyMeta,
    StudyRecord,
    TrialRecord,
    study_record,
)
from autoprune.search.settings import SearchSettings
from autoprune.search.storage import default_storage, open_storage, redact

READY_ATTR = "autoprune.ready"
AUTO_BATCHES = (32, 64, 128, 256, 512, 1024)
AUTO_MIN_MS = 10.0


@dataclass
class SearchResult:
    """What a search run did: the study's record and what this worker added."""

    record: StudyRecord
    study_dir: Path
    best_config: Path | None
    ran: list[int] = field(default_factory=list)  # trial numbers this worker ran
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        best = rec.best_feasible()
        uniform = rec.best_uniform()
        most = rec.most_accurate()
        return {
            "study": rec.meta.name,
            "storage": redact(rec.storage),
            "study_dir": str(self.study_dir),
            "meta": rec.meta.to_dict(),
            "allowed_drop": rec.meta.allowed_drop(),
            "trials": {
                "total": len([t for t in rec.trials if t.state != "WAITING"]),
                "complete": len(rec.completed),
                "pruned": len([t for t in rec.trials if t.state == "PRUNED"]),
                "failed": len([t for t in rec.trials if t.state == "FAIL"]),
                "feasible": len(rec.feasible),
                "ran_here": self.ran,
            },
            "front": [t.to_dict() | {"summary": t.sparsity_summary()} for t in rec.front],
            "best_feasible": None if best is None else best.to_dict() | {"summary": best.sparsity_summary()},
            "best_uniform": None if uniform is None else uniform.to_dict() | {"summary": uniform.sparsity_summary()},
            "most_accurate": None if most is None else most.number,
            "best_config": None if self.best_config is None else str(self.best_config),
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "notes": self.notes,
        }


# -- pieces -------------------------------------------------------------------
def make_sampler(name: str, seed: int | None) -> Any:  # noqa: ANN401
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler '{name}'; use one of: tpe, nsga2, random.")


def _versions() -> dict[str, str]:
    import optuna

    from autoprune import __version__

    return {"autoprune": __version__, "torch": torch.__version__, "optuna": optuna.__version__}


def _latency_settings(batch: int, s: SearchSettings) -> Any:  # noqa: ANN401
    from autoprune.latency import LatencySettings

    return LatencySettings(batch_size=batch, dtype=s.dtype, channels_last=s.channels_last, fold_bn=s.fold_bn,
                           steady_memory=s.steady_memory, threads=s.threads, warmup=5, repeats=30, min_seconds=0.5)


def choose_latency_batch(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, s: SearchSettings) -> int:
    """The smallest batch from 32 up at which the dense model takes ≥ 10 ms: compute, not
    per-call overhead, dominates there, as it does when serving batches."""
    from autoprune.latency import measure_latency

    for b in AUTO_BATCHES:
        quick = dataclasses.replace(_latency_settings(b, s), warmup=2, repeats=5, min_seconds=0.05)
        if measure_latency(model, shape, device=device, settings=quick).median_ms >= AUTO_MIN_MS:
            return b
    return AUTO_BATCHES[-1]


def _load_existing(storage: Any, name: str) -> Any | None:  # noqa: ANN401
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None


def _check_compatible(study: Any, s: SearchSettings) -> StudyMeta:  # noqa: ANN401
    """The stored settings of an existing study, refusing a clash with what was asked."""
    from autoprune.device import resolve_channel_multiple, resolve_device

    name = study.study_name
    raw = study.user_attrs.get(STUDY_ATTR)
    directions = [d.name.lower() for d in study.directions]
    if raw is None or tuple(raw.get("objectives", ())) != OBJECTIVES or tuple(directions) != DIRECTIONS:
        have = raw.get("objectives") if raw else directions
        raise UserError(f"study '{name}' exists with other objectives ({have}); autoprune search needs "
                        f"{list(OBJECTIVES)} ({'/'.join(DIRECTIONS)}). Use another --study-name.")
    meta = StudyMeta.from_dict(raw)
    asked = {
        "model": (s.model, meta.model), "dataset": (s.dataset, meta.dataset),
        "budget": (s.budget, meta.budget), "budget_mode": (s.budget_mode, meta.budget_mode),
        "device": (None if s.device is None else resolve_device(s.device).type, torch.device(meta.device).type),
        "dtype": (s.dtype, meta.dtype), "latency_batch": (s.latency_batch, meta.latency_batch),
        "sampler": (s.sampler, meta.sampler), "seed": (s.seed, meta.seed),
        "space": (_space_id(s.space), _space_id(meta.space)),
        "admm": (dict(s.admm.__dict__), meta.admm),
        "channel_multiple": (resolve_channel_multiple(s.channel_multiple, torch.device(meta.device), meta.dtype),
                             meta.channel_multiple),
        "channels_last": (s.channels_last, meta.channels_last), "fold_bn": (s.fold_bn, meta.fold_bn),
        "steady_memory": (s.steady_memory, meta.steady_memory),
        "trial_method": (s.trial_method, meta.trial_method),
    }
    clashes = [f"{key} {stored!r} (asked: {want!r})" for key, (want, stored) in asked.items()
               if key in s.given and want is not None and want != stored]
    if clashes and not s.resume:
        raise UserError(f"study '{name}' already exists with {', '.join(clashes)}; add --resume to continue it "
                        f"with its own settings, or pick another --study-name.")
    return meta


def _space_id(space: str | None) -> str | None:
    """A space's identity for comparison: ``auto``, or the file's resolved path."""
    if space is None or space == "auto":
        return space
    return str(Path(space).resolve())


def _dense_checkpoint(s: SearchSettings, splits: Any, device: torch.device, reporter: Reporter) -> tuple[Any, Path]:  # noqa: ANN401
    """Load (or train once and cache under runs/) the dense baseline."""
    from autoprune.config import PruneConfig
    from autoprune.pipeline import checkpoint_for

    cfg = PruneConfig(model=s.model, dataset=s.dataset, layers={}, checkpoint=s.checkpoint, data_dir=s.data_dir,
                      seed=s.seed)
    ckpt, path, _ = checkpoint_for(cfg, splits.name, device=device, reporter=reporter, runs_dir=s.runs_dir)
    return ckpt, path


def _measure_dense(ckpt: Any, splits: Any, device: torch.device, s: SearchSettings, graph: Any,  # noqa: ANN401
                   reporter: Reporter) -> dict[str, Any]:
    from autoprune.latency import check_dtype, measure_latency
    from autoprune.stats import layer_stats, model_counts
    from autoprune.train import evaluate

    check_dtype(s.dtype, device)
    model = ckpt.build().to(device)
    acc = evaluate(model, splits.val, device=device)
    test_acc = evaluate(model, splits.test, device=device)
    shape = (splits.in_channels, *splits.image_size)
    batch = s.latency_batch or choose_latency_batch(ckpt.build(), shape, device, s)
    lat = measure_latency(ckpt.build(), shape, device=device, settings=_latency_settings(batch, s))
    counts = model_counts(model, layer_stats(model, graph))
    reporter.log(f"dense {s.model} on {s.dataset}: validation {100 * acc:.1f}%, test {100 * test_acc:.1f}%, "
                 f"{lat.median_ms:.3g} ms per batch of {batch} on {lat.device}")
    return {"dense_accuracy": acc, "dense_test_accuracy": test_acc, "dense_latency_ms": lat.median_ms,
            "dense_latency_p90_ms": lat.p90_ms, "dense_macs": float(counts["macs"]),
            "dense_params": float(counts["params"]), "latency_batch": batch, "device_description": lat.device}


def _enqueue_slots(study: Any, target: int, seeds: list[dict[str, Any]] | None = None) -> None:  # noqa: ANN401
    """Seed configurations (new study only), then empty WAITING slots up to ``target``."""
    from optuna.trial import TrialState

    for params in seeds or []:
        study.enqueue_trial(params, skip_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    for _ in range(max(0, target + failed - len(trials))):
        study.enqueue_trial({})


def _claim(study: Any, target: int) -> Any | None:  # noqa: ANN401
    """Claim the lowest-numbered WAITING slot below the target; None when none is left."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage  # the storage this Study object wraps
    trials = study.get_trials(deepcopy=False)
    limit = target + sum(1 for t in trials if t.state == TrialState.FAIL)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
        if t.number >= limit:
            break
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        return optuna.trial.Trial(study, trial_id)
    return None


HEARTBEAT_ATTR = "autoprune.heartbeat"
HEARTBEAT_EVERY = 30.0  # seconds between a running trial's heartbeats


class _Heartbeat:
    """Marks a claimed trial alive (a timestamp user attribute) from a background thread,
    so that other workers can tell a trial whose worker died from a long one."""

    def __init__(self, study: Any, trial: Any, every: float = HEARTBEAT_EVERY) -> None:  # noqa: ANN401
        import threading

        self._storage, self._id, self._every = study._storage, trial._trial_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoprune-heartbeat", daemon=True)

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # a missed beat is harmless; the next one comes
            self._storage.set_trial_user_attr(self._id, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._beat()

    def __enter__(self) -> _Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _fail_stale(study: Any, stale_after: float) -> list[int]:  # noqa: ANN401
    """Mark RUNNING trials whose worker stopped beating for ``stale_after`` seconds as FAIL
    (a worker killed with SIGKILL, a machine that went away); returns their numbers."""
    from optuna.trial import TrialState

    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get(HEARTBEAT_ATTR)
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if beat is None or now - float(beat) < stale_after:
            continue
        with contextlib.suppress(Exception):  # another worker may fail it first
            study._storage.set_trial_user_attr(
                t._trial_id, REASON_ATTR, f"its worker stopped ({int(now - float(beat))} s without a heartbeat)")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


def _seed_params(space: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    """The enqueued first trial: the dense configuration (free: measured with the baseline), the
    front's reference point. The sampler proposes everything after it."""
    dense = space.dense_params()
    return [] if dense is None else [dense]


def best_config_yaml(record: StudyRecord, trial: TrialRecord, *, data_dir: str | None = None) -> str:
    """The ``autoprune prune --config`` YAML of a trial, with where it came from."""
    from autoprune.config import AdmmSettings, LayerTarget, PruneConfig

    meta = record.meta
    layers = {k: LayerTarget(v["type"], v.get("rate")) for k, v in trial.targets.items()}
    cfg = PruneConfig(
        model=meta.model, dataset=meta.dataset, layers=layers, checkpoint=meta.checkpoint, data_dir=data_dir,
        seed=meta.seed, admm=AdmmSettings(**meta.admm), channel_multiple=meta.channel_multiple,
        origin={
            "study": meta.name, "storage": redact(record.storage), "trial": trial.number,
            "budget": meta.budget, "budget_mode": meta.budget_mode,
            "device": meta.device_description, "latency_batch": meta.latency_batch, "dtype": meta.dtype,
            "metrics": {
                "val_accuracy": trial.accuracy, "accuracy_drop": trial.accuracy_drop,
                "latency_ms": trial.latency_ms, "latency_p90_ms": trial.latency_p90_ms,
                # the end-of-search re-measurement where there is one (see remeasure), else the trial's own
                "speedup": trial.final_speedup, "speedup_in_search": trial.speedup,
                **({"speedup_p10": trial.remeasured["speedup_p10"], "speedup_p90": trial.remeasured["speedup_p90"]}
                   if trial.remeasured else {}),
                "macs": trial.macs, "params_nonzero": trial.params_count, "sparsity": trial.sparsity,
                "dense_val_accuracy": meta.dense_accuracy, "dense_latency_ms": meta.dense_latency_ms,
            },
        },
    )
    return cfg.to_yaml()


# -- the run ------------------------------------------------------------------
TARGET_ATTR = "autoprune.target_trials"
DEFAULT_TRIALS = 30  # trials of the embedded default take seconds: room for the ladder, the ascent and local steps
MAX_FAILS_IN_A_ROW = 3


@contextlib.contextmanager
def _claim_lock(url: str) -> Iterator[None]:
    """Serialise claims on SQLite: it ignores SELECT ... FOR UPDATE, so two processes could
    both move one WAITING trial to RUNNING. Server databases and journal files need no lock."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(url[len("sqlite:///"):] + ".claim.lock")
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _existing_study_meta(study: Any, s: SearchSettings) -> StudyMeta:  # noqa: ANN401
    """The settings of a study someone else created (waiting briefly for a creator that is
    still writing them), refusing a clash with what was asked."""
    if study.user_attrs.get(STUDY_ATTR) is None and tuple(d.name.lower() for d in study.directions) == DIRECTIONS:
        _wait_for_meta(study, timeout=60.0)
    return _check_compatible(study, s)


def run_search(s: SearchSettings, *, reporter: Reporter | None = None, tracker: Any = None) -> SearchResult:  # noqa: ANN401, C901
    """Run (or join, or resume) a search and return its study record.

    Raises:
        UserError: for bad settings, an unreachable storage, a study that clashes.
    """
    import optuna
    from optuna.trial import TrialState

    from autoprune.checkpoint import load_checkpoint
    from autoprune.device import resolve_channel_multiple, resolve_device
    from autoprune.groups import ChannelGraph
    from autoprune.latency import LatencyCache, check_dtype
    from autoprune.pipeline import build_model, example_input, load_dataset
    from autoprune.search.objective import SearchContext, TrialStopped, run_trial
    from autoprune.search.sampler import PruningSampler
    from autoprune.search.space import SearchSpace, load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    s.validate()
    if s.space not in (None, "auto") and not Path(s.space).is_file():  # before any storage file is created
        raise UserError(f"search space file '{s.space}' does not exist (see search_spaces/ for examples, or use "
                        f"--space auto).")
    device = resolve_device(s.device or "cpu")
    check_dtype(s.dtype, device)
    url = s.storage or default_storage(s.runs_dir)
    storage = open_storage(url)
    name = s.study_name or s.default_study_name(device.type)

    study = _load_existing(storage, name)
    if study is None and s.resume:
        raise UserError(f"no study named '{name}' in {redact(url)}; run without --resume to start it.")
    creator = False
    notes: list[str] = []
    if study is None:
        # check the space on the untrained model first: a bad file must not cost a baseline training
        splits = load_dataset(s.dataset, data_dir=s.data_dir)
        graph = ChannelGraph(build_model(s.model, splits), example_input(splits))
        space = load_space(s.space, s.model, graph, device=device.type)
        notes = list(space.notes)
        ckpt, ckpt_path = _dense_checkpoint(s, splits, device, reporter)  # same model and dataset: same graph
        dense = _measure_dense(ckpt, splits, device, s, graph, reporter)
        s.channel_multiple = resolve_channel_multiple(s.channel_multiple, device, s.dtype)
        meta = StudyMeta(
            name=name, model=s.model, dataset=splits.name, checkpoint=str(Path(ckpt_path).resolve()),
            device=str(device), budget=s.budget, budget_mode=s.budget_mode, dtype=s.dtype,
            space=space.source, space_spec=space.to_dict(), sampler=s.sampler, seed=s.seed,
            admm=dict(s.admm.__dict__), versions=_versions(), channels_last=s.channels_last, fold_bn=s.fold_bn,
            trial_method=s.trial_method,
            steady_memory=s.steady_memory,
            channel_multiple=s.channel_multiple, threads=s.threads,
            **dense,
        )
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS),
                                        sampler=optuna.samplers.RandomSampler(), load_if_exists=False)
            creator = True
            study.set_user_attr(STUDY_ATTR, meta.to_dict())
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile: join it
            study = _load_existing(storage, name)
    if not creator:
        meta = _existing_study_meta(study, s)
        device = resolve_device(s.device if s.device is not None else meta.device)
        s.dtype, s.channels_last, s.threads = meta.dtype, meta.channels_last, meta.threads
        s.fold_bn, s.channel_multiple, s.steady_memory = meta.fold_bn, meta.channel_multiple, meta.steady_memory
        splits = load_dataset(meta.dataset, data_dir=s.data_dir)
        ckpt_file = s.checkpoint if s.checkpoint is not None else meta.checkpoint
        if not Path(ckpt_file).is_file():
            raise UserError(f"study '{name}' was made from the checkpoint '{ckpt_file}', which is not here; "
                            f"pass --checkpoint with a copy of it.")
        ckpt = load_checkpoint(ckpt_file)
        if ckpt.model != meta.model:
            raise UserError(f"checkpoint '{ckpt_file}' holds model '{ckpt.model}', but study '{name}' searches "
                            f"'{meta.model}'.")
        graph = ChannelGraph(ckpt.build(), example_input(splits))
        space = SearchSpace.from_dict(meta.space_spec)
        if meta.space != "auto" and Path(meta.space).is_file():
            now = load_space(meta.space, meta.model, graph, device=device.type).to_dict()
            if now["variables"] != meta.space_spec["variables"] or now["fixed"] != meta.space_spec["fixed"]:
                raise UserError(f"the space file '{meta.space}' changed since study '{name}' was created; a study "
                                f"searches one space: restore the file or start a new --study-name.")
    for note in notes:
        reporter.log(f"note: {note}")

    study_dir = Path(s.runs_dir) / name.replace("/", "-")
    study_dir.mkdir(parents=True, exist_ok=True)
    ctx = SearchContext(
        meta=meta, space=space, splits=splits, checkpoint=ckpt, graph=graph, device=device,
        latency=_latency_settings(meta.latency_batch, s), cache=LatencyCache(Path(s.runs_dir) / "latency_cache.json"),
        admm=s.admm if creator else s.admm.__class__(**meta.admm), min_speedup=s.min_speedup,
        abandon_drop=s.abandon_drop, reporter=reporter, method=meta.trial_method,
    )
    # the sampler: the study creator uses the seed as given; joining workers shift it, so that
    # their random start-up trials differ (their runs are not reproducible one by one anyway)
    seed = meta.seed if creator else meta.seed + 1 + os.getpid() % 100_000
    sampler = PruningSampler(space, ctx.probe, base=make_sampler(meta.sampler, seed), seed=seed)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    target = s.trials if s.trials is not None else int(study.user_attrs.get(TARGET_ATTR, DEFAULT_TRIALS))
    if creator or (s.resume and not study.user_attrs.get(READY_ATTR)):
        # a new study, or one whose creator died before it was ready: seeds first, then slots
        _enqueue_slots(study, target, _seed_params(space))
        study.set_user_attr(READY_ATTR, True)
    else:
        _wait_ready(study)
        _enqueue_slots(study, target)
    if study.user_attrs.get(TARGET_ATTR) != target:
        study.set_user_attr(TARGET_ATTR, target)

    if tracker is not None:
        tracker.start_study(meta, url)

    ran: list[int] = []
    interrupted = False
    fails_in_a_row = 0
    record = study_record(study, url)
    shown = min(_finished(record), target)
    reporter.log(f"study '{name}' in {redact(url)}: {shown} of {target} trials done; "
                 f"budget {100 * meta.allowed_drop():.2g} points below dense {100 * meta.dense_accuracy:.1f}%")
    if meta.channel_multiple > 1:
        reporter.log(f"kept channels are rounded to multiples of {meta.channel_multiple} where a channel group "
                     f"has at least {4 * meta.channel_multiple} (--channel-multiple; 1 keeps the exact rates)")
    with reporter.task(f"search {name}", total=target) as task:
        task.advance(shown)
        task.set(best=_fmt_best(_best_speedup(record)))
        while not interrupted:
            trial, told = None, False
            try:
                with _claim_lock(url):
                    stale = _fail_stale(study, s.stale_after)
                    if stale:
                        reporter.log(f"trials {stale} lost their worker; they are marked failed and replaced")
                        _enqueue_slots(study, target)
                    trial = _claim(study, target)
                if trial is None:
                    break
                state, values, reason = TrialState.COMPLETE, None, None
                try:
                    with _Heartbeat(study, trial):
                        values = run_trial(trial, ctx)
                except TrialStopped as stop:
                    state, reason = TrialState.PRUNED, str(stop)
                except KeyboardInterrupt:
                    state, reason, interrupted = TrialState.FAIL, INTERRUPTED, True
                except UserError as exc:
                    state, reason = TrialState.FAIL, str(exc)
                except Exception as exc:  # a trial that breaks must not end the study  # noqa: BLE001
                    first = (str(exc).strip().splitlines() or [""])[0]
                    state, reason = TrialState.FAIL, f"{type(exc).__name__}: {first}"[:500]
                if reason is not None:
                    trial.set_user_attr(REASON_ATTR, reason)
                study.tell(trial, values=list(values) if values is not None else None, state=state)
                told = True
                ran.append(trial.number)
                record = study_record(study, url)
                done = next(t for t in record.trials if t.number == trial.number)
                reporter.log(_trial_line(done, record.meta))
                if tracker is not None:
                    tracker.log_trial(record.meta, done, _trial_yaml(record, done))
                now = min(_finished(record), target)
                task.advance(max(0, now - shown))
                shown = max(shown, now)
                task.set(best=_fmt_best(_best_speedup(record)))
                if state == TrialState.FAIL and not interrupted:
                    fails_in_a_row += 1
                    if fails_in_a_row >= MAX_FAILS_IN_A_ROW:
                        msg = (f"{MAX_FAILS_IN_A_ROW} trials in a row failed, the last with: {reason}; "
                               f"stopping this worker (fix the cause and run the same command to go on)")
                        notes.append(msg)
                        reporter.log(f"warning: {msg}")
                        break
                    _enqueue_slots(study, target)  # a failed trial does not count: add its replacement
                else:
                    fails_in_a_row = 0
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if trial is not None and not told:  # interrupted between claim and tell
                    with contextlib.suppress(Exception):
                        trial.set_user_attr(REASON_ATTR, INTERRUPTED)
                        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    record = study_record(study, url)
    if not interrupted and _finished(record) >= target:
        remeasure(study, record, ctx, reporter)
        record = study_record(study, url)
    best = record.best_feasible()
    best_path = None
    if best is not None and not best.is_dense:
        best_path = study_dir / "best_config.yaml"
        write_text_atomic(best_path, best_config_yaml(record, best, data_dir=s.data_dir))
    result = SearchResult(record, study_dir, best_path, ran, interrupted, time.perf_counter() - t_start,
                          notes=notes)
    import json

    write_text_atomic(study_dir / "summary.json", json.dumps(result.to_dict(), indent=2, default=str))
    best_yaml = best_path.read_text() if best_path else None
    if tracker is not None:
        tracker.finish_study(record, study=study, best_config_yaml=best_yaml, out_dir=study_dir)
    else:
        from autoprune.tracking import write_study_artifacts

        write_study_artifacts(record, study_dir, study=study, best_config_yaml=best_yaml,
                              warn=lambda m: reporter.log(f"warning: {m}"))
    return result


INTERRUPTED = "interrupted by the user (Ctrl-C)"
REMEASURE_TOP = 5  # the fastest configurations within the budget timed again at the end
REMEASURE_ROUNDS = 30


def remeasure(study: Any, record: StudyRecord, ctx: Any, reporter: Reporter) -> list[int]:  # noqa: ANN401
    """Time the fastest configurations within the budget again, side by side with dense and the
    fastest uniform one, in more rounds; store the figures on their trials (``remeasured``).

    The best of many noisy timings is biased upward (the winner's curse): two uniform rates 10%
    apart measured 1.48x and 1.31x in one run. The study's result is the best trial by this
    second, joint timing. The figures are a study attribute (``autoprune.remeasured``: trial
    number -> figures), replaced by each re-measurement. Returns the trial numbers re-measured.
    """
    from autoprune.config import LayerTarget
    from autoprune.search.records import REMEASURED_ATTR

    feasible = sorted((t for t in record.feasible if t.repeat_of is None and not t.is_dense and t.targets),
                      key=lambda t: t.latency_ms)
    picks = feasible[:REMEASURE_TOP]
    uniform = [t for t in feasible if t.proposal == "uniform"]
    if uniform and uniform[0] not in picks:
        picks.append(uniform[0])
    if not picks:
        return []
    reporter.log(f"re-measuring trials {[t.number for t in picks]} side by side with dense "
                 f"({REMEASURE_ROUNDS} rounds)")
    configs = [{}] + [{k: LayerTarget(v["type"], v.get("rate")) for k, v in t.targets.items()} for t in picks]
    stats = ctx.probe.compare(configs, rounds=REMEASURE_ROUNDS)
    # a finished trial cannot take new attributes: the figures live on the study, by trial number
    figures = {str(t.number): {"speedup": 1.0 / st.median, "speedup_p10": 1.0 / st.p90,
                               "speedup_p90": 1.0 / st.p10, "rounds": st.rounds}
               for t, st in zip(picks, stats[1:])}
    study.set_user_attr(REMEASURED_ATTR, figures)
    return [t.number for t in picks]


def _finished(record: StudyRecord) -> int:
    return sum(1 for t in record.trials if t.state in ("COMPLETE", "PRUNED"))


def _wait_for_meta(study: Any, timeout: float = 120.0) -> StudyMeta:  # noqa: ANN401
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        raw = study.user_attrs.get(STUDY_ATTR)
        if raw is not None:
            return StudyMeta.from_dict(raw)
        time.sleep(0.5)
    raise UserError(f"study '{study.study_name}' exists but its creator never stored its settings; "
                    f"start a new study with another --study-name.")


def _wait_ready(study: Any, timeout: float = 120.0) -> None:  # noqa: ANN401
    t0 = time.monotonic()
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() - t0 > timeout:
            raise UserError(f"study '{study.study_name}' was never made ready by the worker that created it; "
                            f"add --resume to finish preparing it, or start a new --study-name.")
        time.sleep(0.5)


def _best_speedup(record: StudyRecord) -> float | None:
    best = record.best_feasible()
    return None if best is None else best.speedup


def _fmt_best(speedup: float | None) -> str:
    """The progress bar's ``best=`` field: the fastest trial within the budget so far."""
    return "none within budget yet" if speedup is None else f"{speedup:.2f}x"


def _trial_line(t: TrialRecord, meta: StudyMeta) -> str:
    head = f"trial {t.number}: {t.sparsity_summary()}" + (f" [{t.proposal}]" if t.proposal else "")
    if t.repeat_of is not None:
        head += f" (same configuration as trial {t.repeat_of}: its result reused, nothing trained)"
    if t.state == "COMPLETE":
        ok = "within budget" if t.feasible else "over budget"
        return (f"{head} → {100 * t.accuracy:.1f}% ({-100 * t.accuracy_drop:+.1f}), {t.latency_ms:.3g} ms "
                f"({t.speedup:.2f}x), {ok}")
    return f"{head} → {t.state.lower()}: {t.stop_reason}"


def _trial_yaml(record: StudyRecord, t: TrialRecord) -> str | None:
    if not t.targets:
        return None
    return best_config_yaml(record, t)
