"""What one ``autoprune search`` run is asked to do, validated before any work starts.

:class:`SearchSettings` is what the caller asks (frozen; the CLI fills it, tests and
scripts build it directly). The search never changes it: where a study already exists its
stored settings win, and what a worker finally runs with is resolved once, when the study
is opened (:func:`autoprune.study.opening.open_study`), into the study's
:class:`~autoprune.study.records.StudyMeta` and the worker's
:class:`~autoprune.study.objective.SearchContext`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from autoprune.config import Schedule
from autoprune.device import parse_channel_multiple
from autoprune.errors import UserError
from autoprune.params import Interval, NonEmpty, Options, Param, validate_params
from autoprune.task import Task

SAMPLERS = ("tpe", "nsga2", "random")
TRIAL_METHODS = ("admm", "magnitude", "gmp", "auto")
BUDGET_MODES = ("absolute", "relative")
DEFAULT_TRIALS = 30  # trials of the embedded default take seconds: room for the ladder, the ascent and local steps

#: What each setting must be (``channel_multiple``: a positive integer or "auto", checked by
#: :func:`autoprune.device.parse_channel_multiple`).
SEARCH_PARAMS = {
    "trials": Param("--trials", Interval(int, 1, None), optional=True),
    "trial_method": Param("--trial-method", Options(TRIAL_METHODS)),
    "sampler": Param("sampler", Options(SAMPLERS)),
    "budget_mode": Param("--budget-mode", Options(BUDGET_MODES)),
    "budget": Param("--budget", Interval(float, 0, 1, closed="neither")),
    "latency_batch": Param("--latency-batch", Interval(int, 1, None), optional=True),
    "threads": Param("--threads", Interval(int, 1, None), optional=True),
    "min_speedup": Param("--min-speedup", Interval(float, 0, None, closed="neither")),
    "abandon_drop": Param("--abandon-drop", Interval(float, 0, 1, closed="right"), optional=True),
    "stale_after": Param("--stale-after", Interval(float, 0, None, closed="neither")),
    "study_name": Param("--study-name", NonEmpty(), optional=True),
    "short_rung": Param("--short-rung", Interval(float, 0, 1, closed="left")),
}

#: The study's epoch budget when none is given: what a uniform sweep of nine rates (10%–90%)
#: trains, one full trial schedule each — the search is meant to cost no more than that.
AUTO_BUDGET_TRIALS = 9

# A trial's training: 5 epochs in all at the dense training's lr 0.05. With --trial-method
# admm, 6 ADMM W-steps of 0.25 epoch at rho 3 and 3.5 epochs of masked retraining (ADMM's
# best measured schedule for this budget); with magnitude, all 5 epochs are masked retraining
# after a one-shot magnitude prune; with gmp, 5 epochs of gradual magnitude pruning. The
# default, auto, picks per trial the one the equal-epoch table shows best
# (benchmarks/results/admm_vs_magnitude_fmnist.md, autoprune.method_rule).
SEARCH_ADMM = Schedule.for_budget(5.0)


def parse_budget(text: str | float) -> float:
    """``2%`` → 0.02, ``0.02`` → 0.02, ``2`` is refused (ambiguous: write 2% or 0.02).

    Raises:
        UserError: if it does not parse or lies outside (0, 100%).
    """
    raw = str(text).strip()
    m = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)", raw)
    if not m:
        raise UserError(f"--budget '{raw}' is not a number; write it as 2% or 0.02 (an accuracy drop).")
    value = float(m.group(1))
    if m.group(2):
        value /= 100.0
    elif value >= 1.0:
        raise UserError(f"--budget {raw} is ambiguous or too large; write a percentage such as {raw}% or a fraction such as "
                        f"{value / 100:g}.")
    if not 0.0 < value < 1.0:
        raise UserError(f"--budget {raw} lies outside (0, 100%); give an accuracy drop such as 2% or 0.02.")
    return value


def parse_epoch_budget(value: float | str | None) -> float | str | None:
    """``auto``, ``none`` (no cap) or a positive number of epochs.

    Raises:
        UserError: for anything else.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise UserError(f"--epoch-budget must be a positive number of epochs, 'auto' (nine full trials: what a "
                        f"uniform sweep of nine rates trains) or 'none'. Got {value!r} instead.")
    return number


@dataclass(frozen=True)
class SearchSettings:
    """Everything ``autoprune search`` takes (the CLI fills it; tests build it directly).

    Attributes that are None take the study's stored value when resuming, else a default.
    Frozen: make a changed copy with :func:`dataclasses.replace`.
    """

    model: str = "digits-cnn"
    dataset: str = "digits"
    checkpoint: str | None = None
    data_dir: str | None = None
    budget: float = 0.02
    budget_mode: str = "absolute"
    trials: int | None = None  # the study's total; None: the study's stored target, else DEFAULT_TRIALS
    device: str | None = None  # None: cpu for a new study, the study's own device for an existing one
    latency_batch: int | None = None  # None: the smallest batch (>= 32) where dense takes >= 10 ms
    dtype: str = "fp32"
    channels_last: bool = True  # latency in channels-last memory format (faster on every model measured here)
    fold_bn: bool = True  # latency with BatchNorm folded into the convs, as deployed
    steady_memory: bool = True  # CPU latency with an allocator that keeps freed memory (autoprune.latency)
    runtime: str = "torch"  # where latency is measured (autoprune.runtimes): torch, onnxruntime, torch-compile
    # kept channels rounded to a multiple of this; "auto": the device's channel block
    # (autoprune.device.channel_block), resolved when the study is made; 1: exact rates
    channel_multiple: int | str = "auto"
    threads: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    study_name: str | None = None  # default: <model>-<dataset>-<device type>[-<runtime> unless torch]
    storage: str | None = None  # default: sqlite:///runs/optuna.db
    resume: bool = False
    space: str | None = None  # YAML file, "auto", or None: the model's shipped file, else auto
    admm: Schedule = field(default_factory=lambda: SEARCH_ADMM)
    # how each trial prunes: "auto" (per trial, the method the equal-epoch table shows best for its
    # targets and schedule: autoprune.method_rule), "magnitude" (one-shot, then every epoch masked
    # retraining), "gmp" (gradual magnitude pruning) or "admm"
    trial_method: str = "auto"
    # multi-fidelity trials (autoprune.study.rungs): each configuration scored at a screen (BatchNorm
    # recalibration, no training), then a short retraining, before the full schedule; False: every
    # configuration faster than dense is trained fully, as before
    rungs: bool = True
    short_rung: float = 0.2  # the short rung's training, a fraction of the trial's schedule (0: none)
    # training the whole study may spend, every rung counted: epochs (the built-in loop) or the
    # user's train unit; "auto": AUTO_BUDGET_TRIALS full trial schedules; None: no cap
    epoch_budget: float | str | None = "auto"
    min_speedup: float = 1.0  # a config must be at least this much faster than dense, or it stops early
    # stop a trial whose accuracy right after the hard prune is this far below dense. Off by
    # default: on digits, trials at 21%, 41% and 49% accuracy after the hard prune recovered
    # to 97.9%, 95.1% and 97.2% after two retraining epochs (measured, seed 0)
    abandon_drop: float | None = None
    runs_dir: str = "runs"
    stale_after: float = 600.0  # a RUNNING trial without a heartbeat for this long lost its worker
    # explicitly given on the command line (the rest are defaults, which a resumed study overrides)
    given: frozenset[str] = field(default_factory=frozenset)
    # the caller's own model, loop and metric (autoprune.search); None: the registry ``model``
    # trained on ``dataset``, the built-in loop and accuracy
    task: Task | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", frozenset(self.given))

    def validate(self) -> None:
        """Check every setting (:data:`SEARCH_PARAMS`).

        Raises:
            UserError: naming the first setting out of its range or choices.
        """
        validate_params(self, SEARCH_PARAMS)
        parse_channel_multiple(self.channel_multiple)
        parse_epoch_budget(self.epoch_budget)

    def default_study_name(self, device_type: str) -> str:
        runtime = "" if self.runtime == "torch" else f"-{self.runtime}"
        return f"{self.model}-{self.dataset}-{device_type}{runtime}".replace(":", "-").replace("/", "-")
