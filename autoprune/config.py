"""Pruning configurations: per-layer targets, the schedule (:class:`Schedule`), and their YAML form.

The YAML format (read by ``autoprune prune --config``, written by later tools)::

    model: digits-cnn
    dataset: digits
    checkpoint: runs/baselines/digits-cnn-digits.pt   # optional: trained when absent
    layers:                                          # layer name or glob -> target
      features.0: {type: filter, rate: 0.5}
      "features.*": {type: shape, rate: 0.7}         # the most specific match wins
    admm: {iters: 4, epochs: 1, rho: 0.001, rho_growth: 1.3, retrain_epochs: 2}
    channel_multiple: 16       # optional: kept channels of filter/channel groups rounded to 16 (default 1: exact)
    origin: {study: ..., trial: 12, metrics: {...}}  # optional, informational (written by search/export)

Unknown keys are errors. Layer patterns are matched with :func:`fnmatch.fnmatchcase`;
an exact name beats any glob, and among globs the one with more literal characters
wins (ties: the one written first). ``{type: none}`` leaves a layer dense.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError, UserError, first_line
from autoprune.params import Interval, Param, validate_params
from autoprune.sparsity import NMSparsity

NONE_TYPE = "none"


@dataclass(frozen=True)
class LayerTarget:
    """What one layer should become: a sparsity type and the fraction of groups removed.

    Args:
        type: A sparsity type name (``filter``, ``shape``, ``2:4``, ...) or ``none``.
        rate: Fraction of the type's groups to remove, in [0, 1). ``None`` only where
            the type implies it (n:m) or for ``none``.
    """

    type: str
    rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.rate is not None:
            out["rate"] = float(self.rate)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LayerTarget:
        """A target as :meth:`to_dict` writes it (and a study stores it): ``{type, rate}``,
        a missing type being ``none``. Not a check of user input (that is a config's job)."""
        return cls(str(raw.get("type", NONE_TYPE)), raw.get("rate"))

    @property
    def removed_fraction(self) -> float | None:
        """The fraction of the layer's weights this target removes: its rate, 0 for ``none``,
        ``1 - N/M`` for an ``N:M`` type (``2:4`` removes half); None for another type without
        a rate."""
        if self.rate is not None:
            return self.rate
        if self.type == NONE_TYPE:
            return 0.0
        try:
            nm = NMSparsity.from_name(self.type)
        except UserError:  # 0:4, 5:4: no pattern
            return None
        return nm.implied_rate if nm is not None else None


def _admm(name: str, constraint: Interval, optional: bool = False) -> Param:
    return Param(f"The '{name}' ADMM setting", constraint, optional)


#: What each ADMM setting must be (``rho_max`` must also be at least ``rho``).
ADMM_PARAMS = {
    "iters": _admm("iters", Interval(int, 0, None)),
    "epochs": _admm("epochs", Interval(float, 0, None, closed="neither")),
    "steps": _admm("steps", Interval(int, 0, None, closed="neither"), optional=True),
    "rho": _admm("rho", Interval(float, 0, None, closed="neither")),
    "rho_growth": _admm("rho_growth", Interval(float, 1, None)),
    "rho_max": _admm("rho_max", Interval(float, 0, None, closed="neither")),
    "retrain_epochs": _admm("retrain_epochs", Interval(float, 0, None)),
    "lr": _admm("lr", Interval(float, 0, None, closed="neither")),
    "momentum": _admm("momentum", Interval(float, 0, 1, closed="left")),
    "weight_decay": _admm("weight_decay", Interval(float, 0, None)),
    "batch_size": _admm("batch_size", Interval(int, 1, None)),
}


@dataclass(frozen=True)
class Schedule:
    """How much training each phase of a prune gets, and the ADMM penalty: the one schedule
    record of the config file (``admm:``), the CLI, a study and the Python API
    (``autoprune.Schedule``). Its fields are the keys stored in configs, studies and
    ``result.json``. The defaults follow the StructADMM authors' progressive code (a config
    without ``admm:`` gets them); the search's and the Python API's default is
    :meth:`for_budget` of 5 epochs (6 x 0.25 + 3.5, rho 3).

    ``epochs`` and ``retrain_epochs`` are in the train function's own unit for the Python API
    (epochs or steps); :meth:`for_loop` takes them under the API's former names
    (``admm_amount``, ``retrain_amount``), with its former defaults.

    Args:
        iters: ADMM iterations (W-step, Z-step, U-step each).
        epochs: Epochs of SGD per W-step. Ignored when ``steps`` is set.
        steps: Optimizer steps per W-step instead of whole epochs.
        rho: Initial penalty rho_0.
        rho_growth: rho is multiplied by this after every iteration ...
        rho_max: ... up to this cap.
        retrain_epochs: Masked retraining epochs after the hard prune.
        lr: Learning rate of the W-step and of retraining; restarts every iteration.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Training batch size.
    """

    iters: int = 4
    epochs: float = 1.0
    steps: int | None = None
    rho: float = 1e-3
    rho_growth: float = 1.3
    rho_max: float = 100.0
    retrain_epochs: float = 2.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        validate_params(self, ADMM_PARAMS, error=ConfigError)
        if self.rho_max < self.rho:
            raise ConfigError(f"The 'rho_max' ADMM setting must be >= rho ({self.rho:g}). Got {self.rho_max} instead.")

    def replace(self, **changes: Any) -> Schedule:
        """Return a copy with the given (non-None) fields changed."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def for_budget(cls, epochs: float, **changes: Any) -> Schedule:
        """ADMM's best measured schedule for a run of ``epochs`` training epochs in all.

        Six ADMM iterations share 30% of the budget (W-steps of ``epochs / 20``) at rho 3
        growing x1.3; masked retraining gets the other 70%; lr 0.05, the dense training's
        (at 5 epochs: 6 x 0.25 + 3.5). The pull of a W-step toward Z per SGD step is about
        lr x rho, so rho 3 here matches rho 15 at lr 0.01. On ``digits`` at 5 epochs it
        brought ADMM from about 4 (digits-cnn) and 9 (lenet5) points behind one-shot
        magnitude pruning (with the search's former 6 x 0.5 + 2 at lr 0.01) to under a
        point behind it at the same epochs and lr: not ahead
        (``benchmarks/results/admm_vs_magnitude.md``). ``changes``
        (non-None) then replace any field, as in :meth:`replace`.
        """
        if not epochs > 0:
            raise ConfigError(f"The ADMM budget must be > 0 epochs. Got {epochs} instead.")
        iters = 6
        step = epochs / 20
        base = cls(iters=iters, epochs=step, rho=3.0, rho_growth=1.3, retrain_epochs=epochs - iters * step, lr=0.05)
        return base.replace(**changes)

    @classmethod
    def for_loop(cls, iters: int = 6, admm_amount: float = 0.25, retrain_amount: float = 3.5, rho: float = 3.0,
                 rho_growth: float = 1.3, rho_max: float = 100.0, **changes: Any) -> Schedule:
        """A schedule in the Python API's own words, with its defaults: ``iters`` W-steps of
        ``admm_amount`` each, then ``retrain_amount`` of masked retraining, in the train
        function's unit (what ``autoprune.Schedule(iters, admm_amount, retrain_amount, rho, ...)``
        was before the one record). The other fields are :meth:`for_budget` (5)'s; ``changes``
        replace any."""
        return cls.for_budget(5.0).replace(iters=iters, epochs=admm_amount, retrain_epochs=retrain_amount, rho=rho,
                                           rho_growth=rho_growth, rho_max=rho_max, **changes)

    def w_step_amount(self, per_epoch: int | None = None) -> float:
        """Training per W-step in epochs (the train function's unit): ``epochs``, or ``steps``
        over ``per_epoch`` batches per epoch where ``steps`` is set."""
        return self.epochs if self.steps is None else self.steps / max(per_epoch or 1, 1)

    def in_epochs(self, per_epoch: int) -> Schedule:
        """This schedule with its W-step in epochs: ``steps`` (where set) become epochs of
        ``per_epoch`` batches."""
        return self if self.steps is None else dataclasses.replace(self, epochs=self.w_step_amount(per_epoch),
                                                                   steps=None)

    def total_amount(self, per_epoch: int | None = None) -> float:
        """The training every method spends in all (what magnitude pruning spends on retraining)."""
        return self.iters * self.w_step_amount(per_epoch) + self.retrain_epochs


#: The name of :class:`Schedule` before it was the one schedule record (configs, studies and
#: imports of earlier versions).
AdmmSettings = Schedule


@dataclass(frozen=True)
class PruneConfig:
    """A whole pruning job: which model, which data, which per-layer targets."""

    model: str
    dataset: str
    layers: dict[str, LayerTarget]
    checkpoint: str | None = None
    data_dir: str | None = None
    seed: int = 0
    admm: Schedule = field(default_factory=Schedule)
    channel_multiple: int = 1  # kept channels of each pruned group rounded to a multiple of this (1: exact rates)
    origin: dict[str, Any] | None = None  # where the config came from (study, trial, measured metrics); informational

    # -- YAML -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "config") -> PruneConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with keys model, dataset, layers; got {type(raw).__name__}.")
        allowed = {"model", "dataset", "checkpoint", "data_dir", "seed", "layers", "admm", "channel_multiple", "origin"}
        reject_unknown_keys(raw, allowed, source)
        for key in ("model", "dataset", "layers"):
            if key not in raw:
                raise ConfigError(f"{source}: missing required key '{key}'.")
        if not isinstance(raw["layers"], dict) or not raw["layers"]:
            raise ConfigError(f"{source}: 'layers' must map layer names or globs to {{type, rate}}.")
        layers = {str(pat): parse_target(val, f"{source}: layers['{pat}']") for pat, val in raw["layers"].items()}
        admm_raw = raw.get("admm") or {}
        if not isinstance(admm_raw, dict):
            raise ConfigError(f"{source}: 'admm' must be a mapping.")
        fields = {f.name for f in dataclasses.fields(Schedule)}
        reject_unknown_keys(admm_raw, fields, f"{source}: admm")
        try:
            admm = Schedule(**admm_raw)
        except TypeError as exc:  # wrong value types
            raise ConfigError(f"{source}: admm: {exc}") from None
        ckpt = raw.get("checkpoint")
        multiple = raw.get("channel_multiple", 1)
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ConfigError(f"{source}: 'channel_multiple' must be a positive integer (e.g. 8), got {multiple!r}.")
        origin = raw.get("origin")
        if origin is not None and not isinstance(origin, dict):
            raise ConfigError(f"{source}: 'origin' must be a mapping (it records where the config came from).")
        return cls(
            model=str(raw["model"]),
            dataset=str(raw["dataset"]),
            layers=layers,
            checkpoint=None if ckpt is None else str(ckpt),
            data_dir=None if raw.get("data_dir") is None else str(raw["data_dir"]),
            seed=int(raw.get("seed", 0)),
            admm=admm,
            channel_multiple=multiple,
            origin=origin,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PruneConfig:
        return cls.from_dict(read_yaml(path, "config file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "dataset": self.dataset}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.data_dir is not None:
            out["data_dir"] = self.data_dir
        out["seed"] = self.seed
        out["layers"] = {k: v.to_dict() for k, v in self.layers.items()}
        out["admm"] = {k: v for k, v in dataclasses.asdict(self.admm).items() if v is not None}
        if self.channel_multiple != 1:
            out["channel_multiple"] = self.channel_multiple
        if self.origin is not None:
            out["origin"] = self.origin
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:  # noqa: ANN401
    """A YAML file's content, with one clear error for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} '{p}' does not exist{missing_hint}.")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} '{p}' is not valid YAML: {_yaml_problem(exc)}; fix the file.") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's cause and where it is (``expected ',' or ']', but got '<stream end>' (line 2,
    column 1)``), not its whole report."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = " ".join(str(problem).split()) if problem else (first_line(exc) if str(exc).strip() else "syntax error")
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text


def reject_unknown_keys(raw: dict, allowed: set[str], where: str) -> None:
    """Refuse a mapping with a key outside ``allowed`` (``where`` starts the message)."""
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))}).")


def parse_target(val: Any, where: str) -> LayerTarget:  # noqa: ANN401
    """A layer target as YAML writes it: ``{type, rate}``, ``filter:0.5``, ``2:4`` or ``none``."""
    if isinstance(val, str):  # shorthand "filter:0.5", "2:4" or "none"
        if re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", val):
            return LayerTarget(val.replace(" ", ""))
        kind, _, rate = val.partition(":")
        if kind == NONE_TYPE:
            return LayerTarget(NONE_TYPE)
        if ":" in rate or not rate:  # "2:4" style n:m shorthand
            return LayerTarget(val)
        try:
            return LayerTarget(kind, float(rate))
        except ValueError:
            raise ConfigError(f"{where}: cannot read '{val}'; write {{type: filter, rate: 0.5}}.") from None
    if not isinstance(val, dict):
        raise ConfigError(f"{where}: expected {{type: ..., rate: ...}}, got {val!r}.")
    reject_unknown_keys(val, {"type", "rate"}, where)
    if "type" not in val:
        raise ConfigError(f"{where}: missing 'type'.")
    rate = val.get("rate")
    if rate is not None:
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: rate must be a number, got {rate!r}.") from None
    return LayerTarget(str(val["type"]), rate)


def pattern_specificity(pattern: str) -> int:
    """How specific a layer glob is: its literal characters (the more, the more specific)."""
    return sum(1 for ch in pattern if ch not in "*?[]")


def resolve_layer_targets(
    patterns: dict[str, LayerTarget], layer_names: list[str], *, where: str = "config"
) -> dict[str, LayerTarget]:
    """Map every matched layer name to its target (the most specific pattern wins).

    Layers resolved to ``none`` are left out of the result.

    Raises:
        ConfigError: when a pattern matches no prunable layer.
    """
    chosen: dict[str, tuple[tuple[int, int, int], LayerTarget]] = {}
    for order, (pattern, target) in enumerate(patterns.items()):
        matches = [n for n in layer_names if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            shown = ", ".join(layer_names[:8]) + (", ..." if len(layer_names) > 8 else "")
            raise ConfigError(
                f"{where}: layer pattern '{pattern}' matches no prunable layer "
                f"(layers: {shown}; run 'autoprune layers --model ...' to list them)."
            )
        exact = pattern in layer_names
        for name in matches:
            key = (1 if exact else 0, pattern_specificity(pattern), -order)
            if name not in chosen or key > chosen[name][0]:
                chosen[name] = (key, target)
    ordered = [n for n in layer_names if n in chosen]
    return {n: chosen[n][1] for n in ordered if chosen[n][1].type != NONE_TYPE}
