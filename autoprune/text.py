"""Numbers written for people: the one percent formatter of reports, cards and messages."""

from __future__ import annotations

__all__ = ["percent"]


def percent(value: float | None, digits: int = 2, *, missing: str = "–") -> str:
    """A fraction as a percentage: ``percent(0.9312) == "93.12%"``.

    Args:
        value: The fraction (1.0 is 100%), or None.
        digits: Digits after the decimal point.
        missing: What None is written as.

    Example:
        >>> percent(0.5, 1), percent(None, missing="n/a")
        ('50.0%', 'n/a')
    """
    return missing if value is None else f"{100 * value:.{digits}f}%"
