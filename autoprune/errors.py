"""One exception hierarchy for autoprune.

``UserError`` is for problems the user can fix (bad names, bad rates, missing
files). The CLI prints its message as a single line and exits with status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

__all__ = ["AutopruneError", "ConfigError", "NonFiniteLossError", "UnknownNameError", "UserError", "first_line",
           "first_sentence", "unknown_name"]


class AutopruneError(Exception):
    """Base class of every error autoprune raises on purpose."""


class UserError(AutopruneError):
    """Bad input the user can fix. The message names the problem and the fix."""


class NonFiniteLossError(AutopruneError, ArithmeticError):
    """Training diverged: the loss became NaN or infinite (raised at the step it happened)."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class UnknownNameError(UserError):
    """A registry lookup (model, dataset, sparsity type) found nothing."""


def unknown_name(kind: str, name: str, known: list[str], hint: str = "") -> UnknownNameError:
    """Build the one message shape used for every unknown registry name.

    Args:
        kind: What was looked up, e.g. ``"model"``.
        name: The name the user gave.
        known: The names that exist.
        hint: Extra advice appended to the message.
    """
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    msg = f"unknown {kind} '{name}'. Known {kind}s: {shown}."
    if hint:
        msg += f" {hint}"
    return UnknownNameError(msg)


def first_line(exc: BaseException, *, limit: int = 300, with_type: bool = False) -> str:
    """The first line of an exception's message, for a one-line error or warning.

    White space is folded; an empty message gives the exception's type name.

    Args:
        exc: The exception.
        limit: The longest result; a longer one is cut and ends with ``…``.
        with_type: Prefix the type name (``OSError: [Errno 28] No space left on device``).

    Example:
        >>> first_line(ValueError("bad rate\\n  details nobody reads"))
        'bad rate'
        >>> first_line(KeyError(), with_type=True)
        'KeyError'
    """
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if not text:
        text = type(exc).__name__
    elif with_type:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_sentence(exc: BaseException, *, limit: int = 200) -> str:
    """The first sentence of an exception's message, without its full stop: a library's long
    explanation cut to the part that names the cause, for quoting inside autoprune's own message.

    Example:
        >>> first_sentence(RuntimeError("PytorchStreamReader failed reading zip archive. This is an internal "
        ...                             "miniz error. If you are seeing this error..."))
        'PytorchStreamReader failed reading zip archive'
    """
    text = first_line(exc, limit=10_000)
    end = re.search(r"[.!?](\s|$)", text)
    if end is not None and end.start() > 0:
        text = text[: end.start()]
    return text if len(text) <= limit else text[: limit - 1] + "…"
