"""Errors raised by the scheduler API."""

from __future__ import annotations

from typing import Any


class InvalidJobError(ValueError):
    """A job cannot be added as asked; the message names the problem and the fix.

    Raised at add time, before anything is written.
    """


class UnknownTaskError(InvalidJobError, LookupError):
    """A function or name that is not a registered task."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``value`` as an error message shows it: its ``repr``, cut to ``limit`` characters.

    Never raises (a value whose ``repr`` fails is shown by its type).
    """
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
