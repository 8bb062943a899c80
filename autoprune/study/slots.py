"""Trial slots shared by workers, and heartbeats that tell a lost trial from a long one.

The study's trials are created as WAITING slots up front: the dense configuration first
(so the front starts from a known point), then empty slots up to ``--trials``. A worker
claims a slot by moving it from WAITING to RUNNING, which Optuna's storages do atomically
(RDB row update, journal log order), and only claims slots numbered below the target (plus
one per failed trial). Several ``autoprune search`` processes on one study thus finish
exactly the requested number of trials between them, whatever their timing; slots that
two workers enqueued at the same moment beyond the target simply stay WAITING.

A claimed trial's worker marks it alive every :data:`HEARTBEAT_EVERY` seconds
(:class:`Heartbeat`); a RUNNING trial whose beats stopped for ``--stale-after`` seconds
lost its worker (SIGKILL, a machine gone) and :func:`fail_stale_trials` marks it failed,
so that a replacement slot is enqueued. As in ``optuna/storages/_heartbeat.py``, what
reaches below Optuna's ``Study`` into its storage goes through one small adapter,
:class:`SlotStorage`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.study.records import OWNER_ATTR, REASON_ATTR

HEARTBEAT_ATTR = "autoprune.heartbeat"  # trial user attr: the time of the worker's last beat
HEARTBEAT_EVERY = 30.0  # seconds between a running trial's heartbeats
READY_ATTR = "autoprune.ready"  # study user attr: its seed trial and slots are enqueued
TARGET_ATTR = "autoprune.target_trials"  # study user attr: the trials the study should have in all


class SlotStorage:
    """The storage operations of slots and heartbeats, by trial number.

    Optuna's ``Study`` has no public way to move a WAITING trial to RUNNING for this worker,
    nor to write another worker's trial; its storage has. This adapter is the one place
    that reaches it (the storage the study wraps: for RDB storages, Optuna's cached one).
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self._storage = study._storage  # noqa: SLF001 - the storage this Study object wraps
        self._study_id = self._storage.get_study_id_from_name(study.study_name)

    def trial_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def try_claim(self, number: int) -> optuna.Trial | None:
        """Move WAITING trial ``number`` to RUNNING; the trial, or None when another worker was first."""
        trial_id = self.trial_id(number)
        try:
            if not self._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return None
        except UpdateFinishedTrialError:
            return None
        return optuna.trial.Trial(self.study, trial_id)

    def set_trial_user_attr(self, number: int, key: str, value: Any) -> None:  # noqa: ANN401
        self._storage.set_trial_user_attr(self.trial_id(number), key, value)

    @staticmethod
    def set_constraint(trial: optuna.Trial, key: str, value: float) -> None:
        """``trial.set_constraint(key, value)``, and the same value as the list Optuna wrote
        before 5.0 (system attr ``constraints``), which optuna-dashboard 0.21 still reads to
        tell feasible trials from infeasible ones; Optuna 5 reads both (as ``"0"`` and ``key``)."""
        trial.set_constraint(key, value)
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [float(value)])  # noqa: SLF001

    @staticmethod
    def stored_attrs(trial: optuna.Trial) -> dict[str, Any]:
        """A running trial's user attributes as stored now (``trial.user_attrs`` is a copy taken
        when the trial started, before the sampler marked it)."""
        return trial.storage.get_trial(trial._trial_id).user_attrs  # noqa: SLF001

    @staticmethod
    def mark(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
        """Write user attributes on a trial known as a ``FrozenTrial`` (a sampler's view of the
        trial it samples for, which has no ``set_user_attr``)."""
        storage = study._storage  # noqa: SLF001
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)  # noqa: SLF001


def enqueue_slots(study: optuna.Study, target: int, seeds: Sequence[dict[str, Any]] = ()) -> None:
    """Seed configurations (a new study only), then empty WAITING slots up to ``target``
    (plus one per failed trial: a failed trial does not count)."""
    for params in seeds:
        study.enqueue_trial(params, skip_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    for _ in range(max(0, target + failed - len(trials))):
        study.enqueue_trial({})


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), so a
    reused pid is not taken for the process that had it; None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def this_worker() -> dict[str, Any]:
    """The owner record of a trial this process claims: host, pid and the pid's start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_ticks(os.getpid())}


def owner_died(owner: Any) -> bool:  # noqa: ANN401 - a stored user attribute
    """Whether the worker in ``owner`` (see :func:`this_worker`) is known to be gone: it ran on
    this host and its pid is no longer there, or now belongs to a process started later.
    Another host's worker is never known dead here (the heartbeat rule covers it)."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, run by another user
    started = owner.get("started")
    return started is not None and _start_ticks(pid) not in (None, started)


def claim_slot(study: optuna.Study, target: int) -> optuna.Trial | None:
    """Claim the lowest-numbered WAITING slot below the target, recording this worker as its
    owner; None when none is left."""
    slots = SlotStorage(study)
    trials = study.get_trials(deepcopy=False)
    limit = target + sum(1 for t in trials if t.state == TrialState.FAIL)
    for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
        if t.number >= limit:
            break
        trial = slots.try_claim(t.number)
        if trial is not None:
            trial.set_user_attr(OWNER_ATTR, this_worker())
            return trial
    return None


@contextlib.contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Serialise claims on SQLite: it ignores SELECT ... FOR UPDATE, so two processes could
    both move one WAITING trial to RUNNING. Server databases and journal files need no lock."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url[len("sqlite:///"):] + ".claim.lock")
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_slots(study: optuna.Study, target: int, seeds: Sequence[dict[str, Any]], *, prepare: bool) -> None:
    """Make the study's slots ready for ``target`` trials.

    With ``prepare`` (a new study, or a resumed one whose creator died before it was ready)
    the seeds and the slots are enqueued and the study marked ready; otherwise this worker
    waits until the creator made it ready and tops the slots up to ``target``.
    """
    if prepare:
        enqueue_slots(study, target, seeds)
        study.set_user_attr(READY_ATTR, True)
    else:
        wait_ready(study)
        enqueue_slots(study, target)
    if study.user_attrs.get(TARGET_ATTR) != target:
        study.set_user_attr(TARGET_ATTR, target)


def wait_ready(study: optuna.Study, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() - t0 > timeout:
            raise UserError(f"study '{study.study_name}' was never made ready by the worker that created it; "
                            f"add --resume to finish preparing it, or start a new --study-name.")
        time.sleep(0.5)


class Heartbeat:
    """Marks a claimed trial alive (a timestamp user attribute) from a background thread,
    so that other workers can tell a trial whose worker died from a long one."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, every: float = HEARTBEAT_EVERY) -> None:
        self._slots, self._number, self._every = SlotStorage(study), trial.number, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoprune-heartbeat", daemon=True)

    def _beat(self) -> None:
        with contextlib.suppress(Exception):  # a missed beat is harmless; the next one comes
            self._slots.set_trial_user_attr(self._number, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._beat()

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _why_lost(t: FrozenTrial, now: float, stale_after: float) -> str | None:
    """Why RUNNING trial ``t`` lost its worker, or None while it may still be running."""
    owner = t.user_attrs.get(OWNER_ATTR)
    if owner_died(owner):
        return f"its worker (pid {owner['pid']} on {owner['host']}) died"
    beat = t.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    if beat is None or now - float(beat) < stale_after:
        return None
    return f"its worker stopped ({int(now - float(beat))} s without a heartbeat)"


def fail_stale_trials(study: optuna.Study, stale_after: float) -> list[int]:
    """Mark RUNNING trials that lost their worker as FAIL, with the reason; returns their
    numbers. A worker on this host that is gone (SIGKILL, a crash) is known at once by its
    pid; one elsewhere (a machine that went away) once it stopped beating for
    ``stale_after`` seconds."""
    now, failed = time.time(), []
    slots = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _why_lost(t, now, stale_after)
        if reason is None:
            continue
        with contextlib.suppress(Exception):  # another worker may fail it first
            slots = slots or SlotStorage(study)
            slots.set_trial_user_attr(t.number, REASON_ATTR, reason)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


def fail_trial(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark a claimed trial FAIL with ``reason`` (a worker stopped between claim and tell);
    quiet when it is finished already or the storage is gone."""
    with contextlib.suppress(Exception):
        trial.set_user_attr(REASON_ATTR, reason)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
