"""Errors raised by the scheduler API."""

from __future__ import annotations


class InvalidJobError(ValueError):
    """A job cannot be added as asked; the message names the problem and the fix.

    Raised at add time, before anything is written.
    """


class UnknownTaskError(InvalidJobError, LookupError):
    """A function or name that is not a registered task."""
