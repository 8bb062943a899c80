"""One exception hierarchy for autoprune.

``UserError`` is for problems the user can fix (bad names, bad rates, missing
files). The CLI prints its message as a single line and exits with status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutopruneError(Exception):
    """Base class of every error autoprune raises on purpose."""


class UserError(AutopruneError):
    """Bad input the user can fix. The message names the problem and the fix."""


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
