"""Search spaces: which layers are searched, with which sparsity types and rates.

A space is a YAML file (``search_spaces/<model>.yaml``, chosen with ``--space``) or, for
a model without one, the automatic space: every conv and linear layer except the output
layer. The first conv is searched too: it runs at the input's full resolution, so its
output channels (and the pooling and activations on them) can dominate the measured
time. Which layers pay off is for the measured latency to say. The schema::

    model: resnet20                  # optional; checked against the searched model
    include: ["layer*"]              # layers searched (default: the automatic set)
    types: [none, filter, shape]     # sparsity types offered to every layer ("none" = dense)
    rate: {low: 0.1, high: 0.9, step: 0.1}
    overrides:                       # per-layer changes by glob (the most specific wins)
      "layer3.*": {types: [none, filter], rate: {low: 0.3, high: 0.9, step: 0.1}}
    groups:                          # layer sets: layers that share one variable (small spaces for big nets)
      stage1: ["layer1.*"]           # or {layers: [...], types: [...], rate: {...}}
    fixed:                           # layers set to one target, not searched
      "layer3.2.conv2": {type: filter, rate: 0.5}
      "fc": none

Every searched layer (or layer set) is one *variable* with two Optuna parameters:
``layer.<name>.type`` (or ``group.<name>.type``) and, for types with a rate,
``layer.<name>.rate``.

Words: a ``groups:`` entry of a space is a *layer set*, several layers that share one
searched variable (its parameters keep the ``group.`` prefix, which studies store). It is
neither a *channel group* (:class:`autoprune.groups.ChannelGroup`: coupled channels that
are removed together) nor a sparsity type's *pruning group* (the filters, columns or
weights a rate counts). A type that cannot apply to a layer (filter pruning on a channel
group that must keep its width, N:M on a layer whose input is not a multiple of M) is
dropped from that variable with a note. Unknown keys, unknown types and patterns that
match no layer are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution

from autoprune.config import (
    NONE_TYPE,
    LayerTarget,
)
from autoprune.sparsity import get_sparsity


@dataclass(frozen=True)
class RateRange:
    low: float
    high: float
    step: float | None

    def snap(self, rate: float) -> float:
        """The allowed rate nearest to ``rate``."""
        r = min(max(rate, self.low), self.high)
        if self.step:
            k = round((r - self.low) / self.step)
            r = min(self.low + k * self.step, self.high)
        return round(r, 10)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "step": self.step}


@dataclass
class Variable:
    """One searched choice: a layer, or a layer set (a space's ``groups:`` entry) whose layers share it."""

    name: str  # parameter prefix: "layer.features.3", or "group.stage1" for a layer set
    layers: list[str]
    types: list[str]
    rate: RateRange

    @property
    def type_param(self) -> str:
        return f"{self.name}.type"

    @property
    def rate_param(self) -> str:
        return f"{self.name}.rate"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": self.layers, "types": self.types, "rate": self.rate.to_dict()}


@dataclass
class SearchSpace:
    """The resolved space of one model: variables, fixed layers, and notes."""

    source: str  # the file, or "auto"
    variables: list[Variable]
    fixed: dict[str, LayerTarget] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "variables": [v.to_dict() for v in self.variables],
            "fixed": {k: v.to_dict() for k, v in self.fixed.items()},
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SearchSpace:
        """The space stored with a study (:meth:`to_dict`), so workers and resumed runs search
        exactly what the study was created with, whatever happened to the file since."""
        variables = [Variable(v["name"], list(v["layers"]), list(v["types"]),
                              RateRange(v["rate"]["low"], v["rate"]["high"], v["rate"]["step"]))
                     for v in spec.get("variables", [])]
        fixed = {k: LayerTarget(v["type"], v.get("rate")) for k, v in spec.get("fixed", {}).items()}
        return cls(spec.get("source", "stored"), variables, fixed)

    # -- Optuna ---------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, LayerTarget]:
        """Ask the trial for every variable; returns the per-layer targets (``none`` left out)."""
        targets: dict[str, LayerTarget] = {n: t for n, t in self.fixed.items() if t.type != NONE_TYPE}
        for var in self.variables:
            kind = trial.suggest_categorical(var.type_param, var.types)
            target = self._target(var, kind, trial)
            if target is not None:
                for layer in var.layers:
                    targets[layer] = target
        return targets

    @staticmethod
    def _target(var: Variable, kind: str, trial: Any) -> LayerTarget | None:
        # the rate is asked for whenever the variable offers a type with a rate, even when this
        # trial's type has none: samplers that model a fixed set of parameters (NSGA-II's
        # intersection search space) would otherwise never see the rates at all
        rate = None
        if any(has_rate(t) for t in var.types):
            rate = trial.suggest_float(var.rate_param, var.rate.low, var.rate.high, step=var.rate.step)
        if kind == NONE_TYPE:
            return None
        if not has_rate(kind):
            return LayerTarget(kind)
        return LayerTarget(kind, round(float(rate), 10))  # 0.6000000000000001 -> 0.6

    def distributions(self) -> dict[str, Any]:
        """Optuna's distribution of every parameter :meth:`suggest` asks for, by name."""
        out: dict[str, Any] = {}
        for var in self.variables:
            out[var.type_param] = CategoricalDistribution(var.types)
            if any(has_rate(t) for t in var.types):
                out[var.rate_param] = FloatDistribution(var.rate.low, var.rate.high, step=var.rate.step)
        return out

    def rates(self, var: Variable) -> list[float]:
        """The rates a variable offers, lowest first (its grid, or 10 points without a step)."""
        r = var.rate
        if r.step:
            n = int(round((r.high - r.low) / r.step))
            return [round(r.low + i * r.step, 10) for i in range(n + 1)]
        return [round(r.low + (r.high - r.low) * i / 9, 10) for i in range(10)]

    def params_of(self, choices: dict[str, tuple[str, float | None]]) -> dict[str, Any]:
        """Parameters from ``{variable name: (type, rate)}``; variables not named take their
        lightest choice (dense where the variable offers ``none``, else its first type at the
        lowest rate), and a variable whose type has no rate keeps the rate parameter at its
        lowest value."""
        params: dict[str, Any] = {}
        for var in self.variables:
            kind, rate = choices.get(var.name) or self.lightest(var)
            if kind not in var.types:
                raise ValueError(f"{var.name} does not offer type {kind!r} (it offers {var.types})")
            params[var.type_param] = kind
            if any(has_rate(t) for t in var.types):
                params[var.rate_param] = var.rate.snap(rate if rate is not None else var.rate.low)
        return params

    @staticmethod
    def lightest(var: Variable) -> tuple[str, float | None]:
        """The choice of ``var`` that prunes least: ``none`` where offered, else its first type
        with a rate at the lowest rate (or its first type, when none has a rate)."""
        if NONE_TYPE in var.types:
            return NONE_TYPE, None
        rated = [t for t in var.types if has_rate(t)]
        return (rated[0], var.rate.low) if rated else (var.types[0], None)

    def choices_of(self, params: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
        """``{variable name: (type, rate)}`` of a parameter dict (rate None for rate-less types)."""
        out = {}
        for var in self.variables:
            kind = params[var.type_param]
            rate = params.get(var.rate_param) if has_rate(kind) else None
            out[var.name] = (kind, None if rate is None else round(float(rate), 10))
        return out

    def targets_from_params(self, params: dict[str, Any]) -> dict[str, LayerTarget]:
        """The per-layer targets an Optuna parameter dict stands for."""

        class _Fixed:
            def suggest_categorical(self, name: str, choices: list) -> Any:  # noqa: ANN401
                return params[name]

            def suggest_float(self, name: str, low: float, high: float, step: float | None = None) -> float:
                return params[name]

        return self.suggest(_Fixed())

    def uniform_params(self, kind: str, rate: float | None = None) -> dict[str, Any] | None:
        """Parameters that give every variable ``kind`` at ``rate`` where it allows it and
        ``none`` elsewhere; None when that is not in the space (or is the dense config)."""
        params: dict[str, Any] = {}
        used = False
        for var in self.variables:
            if kind in var.types:
                params[var.type_param] = kind
                used = used or kind != NONE_TYPE
            elif NONE_TYPE in var.types:
                params[var.type_param] = NONE_TYPE
            else:
                return None
            if any(has_rate(t) for t in var.types):
                params[var.rate_param] = var.rate.snap(rate if rate is not None else 0.5)
        if kind != NONE_TYPE and not used:
            return None
        return params

    def dense_params(self) -> dict[str, Any] | None:
        """The all-``none`` parameters, when every variable offers ``none`` and nothing is fixed."""
        if any(t.type != NONE_TYPE for t in self.fixed.values()):
            return None
        if not all(NONE_TYPE in v.types for v in self.variables):
            return None
        return self.uniform_params(NONE_TYPE)


def has_rate(kind: str) -> bool:
    if kind == NONE_TYPE:
        return False
    return get_sparsity(kind).name != "n:m" and ":" not in kind
