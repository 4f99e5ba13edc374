"""Helpers for testing applications that schedule jobs.

:class:`FakeClock` is an injectable clock; :func:`run_pending` runs every job
due at a given instant synchronously, in the calling thread.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["FakeClock", "run_pending"]


class FakeClock:
    """A clock that moves only when told to. Call it to read the time (UTC-aware)."""

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime(2030, 1, 1, tzinfo=timezone.utc)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime, e.g. tzinfo=timezone.utc")
        self._now = start.astimezone(timezone.utc)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (and/or ``timedelta`` keywords); return the new time."""
        with self._lock:
            self._now += timedelta(seconds=seconds, **delta)
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (aware)."""
        if when.tzinfo is None:
            raise ValueError("FakeClock.set needs an aware datetime")
        with self._lock:
            self._now = when.astimezone(timezone.utc)
            return self._now


def run_pending(registry: Any, now: datetime | None = None) -> int:
    """Run every job due at ``now`` (default: the scheduler's clock); return how many ran."""
    from .worker import Worker

    return Worker(registry).run_pending(now)
