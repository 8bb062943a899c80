"""What one ``autoprune search`` run is asked to do, validated before any work starts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from autoprune.config import AdmmSettings
from autoprune.device import parse_channel_multiple
from autoprune.errors import UserError

SAMPLERS = ("tpe", "nsga2", "random")
TRIAL_METHODS = ("admm", "magnitude")
BUDGET_MODES = ("absolute", "relative")

# A trial's training: 5 epochs in all at the dense training's lr 0.05. With --trial-method
# admm, 6 ADMM W-steps of 0.25 epoch at rho 3 and 3.5 epochs of masked retraining (ADMM's
# best measured schedule for this budget); with magnitude (the default), all 5 epochs are
# masked retraining after a one-shot magnitude prune, which was level or ahead at equal
# epochs (benchmarks/results/admm_vs_magnitude.md).
SEARCH_ADMM = AdmmSettings.for_budget(5.0)


def parse_budget(text: str | float) -> float:
    """``2%`` → 0.02, ``0.02`` → 0.02, ``2`` is refused (ambiguous: write 2% or 0.02).

    Raises:
        UserError: if it does not parse or lies outside (0, 100%).
    """
    raw = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)", raw)
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


@dataclass
class SearchSettings:
    """Everything ``autoprune search`` takes (the CLI fills it; tests build it directly).

    Attributes that are None take the study's stored value when resuming, else a default.
    """

    model: str = "digits-cnn"
    dataset: str = "digits"
    checkpoint: str | None = None
    data_dir: str | None = None
    budget: float = 0.02
    budget_mode: str = "absolute"
    trials: int | None = None  # the study's total; None: the study's stored target, else 30
    device: str | None = None  # None: cpu for a new study, the study's own device for an existing one
    latency_batch: int | None = None  # None: the smallest batch (>= 32) where dense takes >= 10 ms
    dtype: str = "fp32"
    channels_last: bool = True  # latency in channels-last memory format (faster on every model measured here)
    fold_bn: bool = True  # latency with BatchNorm folded into the convs, as deployed
    steady_memory: bool = True  # CPU latency with an allocator that keeps freed memory (autoprune.latency)
    # kept channels rounded to a multiple of this; "auto": the device's channel block
    # (autoprune.device.channel_block), resolved when the study is made; 1: exact rates
    channel_multiple: int | str = "auto"
    threads: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    study_name: str | None = None  # default: <model>-<dataset>-<device type>
    storage: str | None = None  # default: sqlite:///runs/optuna.db
    resume: bool = False
    space: str | None = None  # YAML file, "auto", or None: the model's shipped file, else auto
    admm: AdmmSettings = field(default_factory=lambda: SEARCH_ADMM)
    # how each trial prunes: "magnitude" (one-shot, then every epoch masked retraining) or "admm"
    trial_method: str = "magnitude"
    min_speedup: float = 1.0  # a config must be at least this much faster than dense, or it stops early
    # stop a trial whose accuracy right after the hard prune is this far below dense. Off by
    # default: on digits, trials at 21% after the hard prune recovered to 97.9% (README)
    abandon_drop: float | None = None
    runs_dir: str = "runs"
    stale_after: float = 600.0  # a RUNNING trial without a heartbeat for this long lost its worker
    # explicitly given on the command line (the rest are defaults, which a resumed study overrides)
    given: set[str] = field(default_factory=set)

    def validate(self) -> None:
        if self.trials is not None and self.trials < 1:
            raise UserError(f"--trials must be at least 1 (got {self.trials}).")
        if self.trial_method not in TRIAL_METHODS:
            raise UserError(f"unknown --trial-method '{self.trial_method}'; use one of: {', '.join(TRIAL_METHODS)}.")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.sampler}'; use one of: {', '.join(SAMPLERS)}.")
        if self.budget_mode not in BUDGET_MODES:
            raise UserError(f"unknown --budget-mode '{self.budget_mode}'; use absolute or relative.")
        if not 0.0 < self.budget < 1.0:
            raise UserError(f"--budget {self.budget} lies outside (0, 100%).")
        if self.latency_batch is not None and self.latency_batch < 1:
            raise UserError(f"--latency-batch must be at least 1 (got {self.latency_batch}).")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1 (got {self.threads}).")
        parse_channel_multiple(self.channel_multiple)
        if self.min_speedup <= 0:
            raise UserError(f"--min-speedup must be > 0 (got {self.min_speedup}).")
        if self.abandon_drop is not None and not 0 < self.abandon_drop <= 1:
            raise UserError(f"--abandon-drop must lie in (0, 1] (got {self.abandon_drop}).")
        if self.stale_after <= 0:
            raise UserError(f"--stale-after must be > 0 seconds (got {self.stale_after}).")
        if self.study_name is not None and not self.study_name.strip():
            raise UserError("--study-name must not be empty.")

    def default_study_name(self, device_type: str) -> str:
        return f"{self.model}-{self.dataset}-{device_type}".replace(":", "-").replace("/", "-")
