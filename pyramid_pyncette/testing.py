"""Helpers for testing applications that schedule jobs.

``config.include('pyramid_pyncette.testing')`` (instead of, or after,
``pyramid_pyncette``) swaps in a memory store and a
:class:`RecordingScheduler`, so a test can assert "this view scheduled that
job" (``registry.scheduler.scheduled``) and run due jobs synchronously with
:func:`run_pending`. :class:`FakeClock` is an injectable clock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from pyramid.interfaces import PHASE3_CONFIG

from .jobs import Job
from .repository import Repository
from .repository.memory import MemoryRepository
from .scheduler import Scheduler
from .settings import PyncetteSettings

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry

__all__ = ["FakeClock", "RecordingScheduler", "includeme", "run_pending", "set_clock"]


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


def run_pending(registry: Registry, now: datetime | None = None) -> int:
    """Run every job due at ``now`` (default: the scheduler's clock); return how many ran.

    Like a daemon starting, it first syncs the periodic jobs
    (:meth:`~pyramid_pyncette.scheduler.Scheduler.sync_periodic_jobs`): it
    writes the jobs of the ``@periodic_task`` tasks (those already stored
    with the same definition keep their next run), removes those the code no
    longer declares and revives jobs parked because their task was unknown,
    so periodic tasks are tested the same way as jobs added by views, with
    no extra call. Like a daemon, it claims from the queues of
    ``pyncette.queues`` and records each run in the run history.
    """
    from .worker import Worker

    registry.scheduler.sync_periodic_jobs()
    return Worker(registry).run_pending(now)


def set_clock(registry: Registry, clock: Callable[[], datetime]) -> Callable[[], datetime]:
    """Make ``clock`` the time of the application's scheduler and its store; return it.

    ``clock`` is a callable returning an aware UTC datetime, usually a
    :class:`FakeClock`. Adding jobs, claiming them and computing their next
    runs then all follow it. PostgreSQL, MySQL and Redis stores otherwise
    decide what is due by the database server's clock: that is switched off
    (``repository.store_clock = False``), so a fake time works on every store.
    """
    scheduler = registry.scheduler
    scheduler.clock = clock
    scheduler.repository.store_clock = False
    return clock


class RecordingScheduler(Scheduler):
    """A scheduler over a memory store that remembers what was committed.

    ``scheduled`` lists every job written (after its transaction committed,
    for ``request.scheduler``), ``cancelled`` every job id deleted. It
    records through :attr:`~pyramid_pyncette.scheduler.Scheduler.commit_listeners`,
    like any other listener.
    """

    def __init__(
        self,
        registry: Registry,
        settings: PyncetteSettings,
        clock: Callable[[], datetime] | None = None,
        repository: Repository | None = None,
    ) -> None:
        if repository is None:
            repository = MemoryRepository()
        super().__init__(registry, settings, repository=repository, clock=clock)
        self.scheduled: list[Job] = []
        self.cancelled: list[str] = []
        self.commit_listeners.append(self._record)

    def _record(self, written: Sequence[Job], removed: Sequence[str]) -> None:
        self.scheduled.extend(written)
        self.cancelled.extend(removed)

    def clear(self) -> None:
        """Forget what was recorded (the store keeps its jobs)."""
        self.scheduled.clear()
        self.cancelled.clear()


def includeme(config: Configurator) -> None:
    """Include ``pyramid_pyncette`` with a memory store and a :class:`RecordingScheduler`.

    The swap is a configuration action ordered after the default ones, so
    it replaces the scheduler ``pyramid_pyncette`` registers even when the
    application includes ``pyramid_pyncette`` again after this include.
    """
    config.include("pyramid_pyncette")
    config.action(None, _use_recording_scheduler, args=(config.registry,), order=PHASE3_CONFIG + 1)


def _use_recording_scheduler(registry: Registry) -> None:
    settings = dataclasses.replace(registry.pyncette_settings, url="memory://")
    registry.pyncette_settings = settings
    registry.scheduler = RecordingScheduler.from_settings(registry, settings)
