"""Declared parameter checks: each setting's constraint written once, one message per kind.

In the spirit of scikit-learn's ``utils/_param_validation.py``: a settings class declares
``{field: Param(label, constraint)}`` and :func:`validate_params` checks every field
against it, raising :class:`~autoprune.errors.UserError` (which the CLI prints as one line,
exit status 2) in the project's two message shapes:

* a range or a form: ``--trials must be at least 1. Got 0 instead.``, or for an API
  setting ``The 'rho' ADMM setting must be > 0. Got -1 instead.`` (the shape of
  ``The 'rate' parameter of filter sparsity must be in [0, 1). Got 1.2 instead.``);
* a choice: ``unknown sampler 'annealing'; use one of: tpe, nsga2, random.``

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Run:
    ...     repeats: int = 30
    >>> checks = {"repeats": Param("--repeats", Interval(int, 1, None))}
    >>> validate_params(Run(repeats=0), checks)
    Traceback (most recent call last):
    ...
    autoprune.errors.UserError: --repeats must be at least 1. Got 0 instead.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from autoprune.errors import UserError

__all__ = ["Constraint", "Interval", "NonEmpty", "Options", "Param", "check_param", "validate_params"]


class Constraint(ABC):
    """What a value must be; ``str()`` completes "must be ..."."""

    @abstractmethod
    def holds(self, value: Any) -> bool:  # noqa: ANN401
        """Whether ``value`` satisfies the constraint."""

    @abstractmethod
    def __str__(self) -> str: ...


@dataclass(frozen=True)
class Interval(Constraint):
    """A number between ``low`` and ``high`` (None: unbounded on that side).

    Args:
        kind: ``int`` (whole numbers only, ``3`` or ``3.0``, as YAML may write them) or
            ``float`` (any real number); bools and NaN never pass.
        low: The lower bound, or None.
        high: The upper bound, or None.
        closed: Which bounds belong to the interval: ``"left"``, ``"right"``, ``"both"``
            or ``"neither"``.
    """

    kind: type
    low: float | None
    high: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def holds(self, value: Any) -> bool:  # noqa: ANN401
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            return False
        if self.kind is int and not (isinstance(value, numbers.Integral) or float(value).is_integer()):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return self.high is None or value < self.high or (value == self.high and self.closed in ("right", "both"))

    def __str__(self) -> str:
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        if self.high is None:
            return f"at least {self.low:g}" if left else f"> {self.low:g}"
        if self.low is None:
            return f"at most {self.high:g}" if right else f"< {self.high:g}"
        return f"in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a few names (checked as they are written: no case folding)."""

    values: tuple[str, ...]

    def holds(self, value: Any) -> bool:  # noqa: ANN401
        return value in self.values

    def __str__(self) -> str:
        return f"one of: {', '.join(self.values)}"


@dataclass(frozen=True)
class NonEmpty(Constraint):
    """A string with something in it besides white space."""

    def holds(self, value: Any) -> bool:  # noqa: ANN401
        return isinstance(value, str) and bool(value.strip())

    def __str__(self) -> str:
        return "a non-empty name"


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    Args:
        label: How the message names it: a flag (``--trials``), a word (``sampler``), or a
            phrase (``The 'rho' ADMM setting``).
        constraint: What its value must be.
        optional: None is allowed too (the setting is not given).
    """

    label: str
    constraint: Constraint
    optional: bool = False


def check_param(param: Param, value: Any, *, error: type[UserError] = UserError) -> None:  # noqa: ANN401
    """Raise ``error`` with the one-line message when ``value`` breaks ``param``'s constraint."""
    if (value is None and param.optional) or param.constraint.holds(value):
        return
    if isinstance(param.constraint, Options):
        raise error(f"unknown {param.label} '{value}'; use {param.constraint}.")
    raise error(f"{param.label} must be {param.constraint}. Got {value!r} instead.")


def validate_params(obj: Any, params: Mapping[str, Param], *, error: type[UserError] = UserError) -> None:  # noqa: ANN401
    """Check the attributes of ``obj`` named in ``params``, in the order declared."""
    for name, param in params.items():
        check_param(param, getattr(obj, name), error=error)
