"""The repository contract every store implements, and the decisions they share.

The contract is batch first: one call claims many due jobs, one call
completes many, one call extends many leases. What to *do* with a claimed
job or a finished run (lease it, advance it, delete it, keep the lease,
unlock it) is decided here, once, by :func:`plan_claim` and
:func:`plan_completion`; each backend only applies those plans in as few
statements as its store allows.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..jobs import MAX_ERROR_LENGTH, STATUS_FAILED, STATUS_SUCCEEDED, Job
from ..schedules import ScheduleError, schedule_from_json

log = logging.getLogger(__name__)


class RepositoryError(Exception):
    """The store failed (connection lost, server gone, lock timeout)."""


@dataclass(frozen=True)
class Lease:
    """One claimed run of a job.

    ``token`` identifies the claim: completion and heartbeats only touch the
    row while it still carries this token. At-most-once jobs are advanced
    (or deleted) inside the claim itself, so their ``token`` is ``None``.
    """

    job: Job
    scheduled_at: datetime
    token: str | None

    @property
    def attempt(self) -> int:
        """1 for the first try of this run, 2 for the first retry, ..."""
        return self.job.attempts


@dataclass(frozen=True)
class Outcome:
    """How one run ended."""

    lease: Lease
    succeeded: bool
    finished_at: datetime
    error: str | None = None
    #: The job can never succeed as stored (e.g. its task is gone): park it as failed.
    permanent: bool = False
    #: The run already completed its row inside its own transaction (``transactional=True``).
    completed: bool = False


@dataclass(frozen=True)
class ClaimPlan:
    """What a claim does to one due row.

    ``action`` is ``'lease'`` (at-least-once: lock it until ``due_at``),
    ``'advance'`` (at-most-once recurring: move it to its next run, unlocked)
    or ``'delete'`` (at-most-once one-off: remove it before it runs).
    """

    action: str
    job: Job
    lease: Lease


@dataclass(frozen=True)
class CompletionPlan:
    """What completing one run does to its row.

    ``action`` is ``'delete'`` (a finished one-off job), ``'settle'`` (write
    ``values`` and release the lock), or ``'note'`` (only record the last
    status, keeping any lease). ``token`` guards every write: ``None`` means
    the row is addressed by id alone (at-most-once runs hold no lease).
    """

    action: str
    job_id: str
    token: str | None
    values: dict[str, Any]


def truncate_error(text: str | None) -> str | None:
    """Keep the end of long error text (the exception line is last)."""
    if text is None or len(text) <= MAX_ERROR_LENGTH:
        return text
    return "..." + text[-(MAX_ERROR_LENGTH - 3) :]


def next_run_of(job: Job, scheduled_at: datetime, now: datetime) -> datetime | None:
    """The run after ``scheduled_at`` (missed runs coalesced), or None if there is none."""
    if not job.recurring:
        return None
    try:
        return schedule_from_json(job.schedule).next_run(scheduled_at, now)
    except ScheduleError:
        log.error(
            "job %r has an unreadable schedule %r; it will not run again", job.id, job.schedule
        )
        return None


def plan_claim(job: Job, now: datetime, token: str, default_lease: float) -> ClaimPlan:
    """Decide what claiming the due ``job`` at ``now`` writes."""
    scheduled_at = job.next_run_at or job.due_at or now
    attempts = job.attempts + 1
    if job.execution_mode == "at_most_once":
        claimed = job.replace(attempts=attempts, locked_by=None)
        lease = Lease(job=claimed, scheduled_at=scheduled_at, token=None)
        following = next_run_of(job, scheduled_at, now)
        if following is None:
            return ClaimPlan("delete", claimed, lease)
        advanced = claimed.replace(due_at=following, next_run_at=following, attempts=0)
        return ClaimPlan("advance", advanced, lease)
    seconds = job.lease_duration or default_lease
    leased = job.replace(
        locked_by=token,
        due_at=now + timedelta(seconds=seconds),
        next_run_at=scheduled_at,
        attempts=attempts,
    )
    return ClaimPlan("lease", leased, Lease(job=leased, scheduled_at=scheduled_at, token=token))


def plan_completion(outcome: Outcome) -> CompletionPlan:
    """Decide what finishing a run writes to its row."""
    lease = outcome.lease
    job = lease.job
    now = outcome.finished_at
    status = STATUS_SUCCEEDED if outcome.succeeded else STATUS_FAILED
    last = {
        "last_run_at": now,
        "last_status": status,
        "last_error": None if outcome.succeeded else truncate_error(outcome.error),
    }
    if lease.token is None:
        # At-most-once: the row was already advanced or deleted by the claim.
        return CompletionPlan("note", job.id, None, last)
    if outcome.permanent and not outcome.succeeded:
        # Parked: no due time, so no daemon claims it until it is retried or replaced.
        values = {"due_at": None, "next_run_at": None, "attempts": job.attempts, **last}
        return CompletionPlan("settle", job.id, lease.token, values)
    done = outcome.succeeded or job.failure_mode == "commit"
    if done:
        following = next_run_of(job, lease.scheduled_at, now)
        if following is None:
            return CompletionPlan("delete", job.id, lease.token, {})
        values = {"due_at": following, "next_run_at": following, "attempts": 0, **last}
        return CompletionPlan("settle", job.id, lease.token, values)
    if job.failure_mode == "unlock":
        values = {
            "due_at": now,
            "next_run_at": lease.scheduled_at,
            "attempts": job.attempts,
            **last,
        }
        return CompletionPlan("settle", job.id, lease.token, values)
    # failure_mode 'none': keep the lease; the run is retried once it expires.
    return CompletionPlan("note", job.id, lease.token, last)


@dataclass
class JobPage:
    """One page of :meth:`Repository.list`: ``jobs`` plus the cursor of the next page."""

    jobs: list[Job]
    next_cursor: str | None

    def __iter__(self):
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index):
        return self.jobs[index]


class Repository(abc.ABC):
    """The store of jobs. Implementations must be safe to call from many threads."""

    #: Whether claims and heartbeats use the store's own clock instead of the
    #: ``now`` they are given, so daemons whose clocks disagree never take a
    #: live lease from each other. Stores without a clock ignore it; tests
    #: that drive time with a fake clock switch it off.
    store_clock = False

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Create tables or scripts. Called once before first use."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    def add(self, jobs: Sequence[Job], replace: bool = True) -> None:
        """Insert ``jobs``; an existing id is replaced (or kept when ``replace`` is false)."""

    @abc.abstractmethod
    def remove(self, ids: Iterable[str]) -> set[str]:
        """Delete jobs by id; return the ids that existed."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """One job, or None."""

    def get_many(self, ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among ``ids``, by id."""
        found = {}
        for job_id in ids:
            job = self.get(job_id)
            if job is not None:
                found[job_id] = job
        return found

    def apply(self, adds: Sequence[Job], removes: Sequence[str]) -> None:
        """Write ``adds`` (replacing) and delete ``removes``, atomically where the store can."""
        if removes:
            self.remove(removes)
        if adds:
            self.add(adds)

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the store is (temporarily) unreachable, so a retry may work."""
        return isinstance(exc, (RepositoryError, ConnectionError, TimeoutError))

    @abc.abstractmethod
    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Jobs ordered by id, after ``cursor``, optionally of one task."""

    @abc.abstractmethod
    def claim(self, now: datetime, limit: int, token: str, default_lease: float) -> list[Lease]:
        """Atomically take up to ``limit`` jobs due at ``now`` (see :func:`plan_claim`)."""

    @abc.abstractmethod
    def complete(self, outcomes: Sequence[Outcome]) -> None:
        """Apply many outcomes at once (see :func:`plan_completion`)."""

    @abc.abstractmethod
    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        """Renew leases ``(id, token, seconds)`` to expire ``seconds`` after now.

        Returns the ids still held by their token (the others were lost).
        """

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> None:
        """Give back claimed runs that never started: unlocked, due again, attempt undone."""

    @abc.abstractmethod
    def next_due(self) -> datetime | None:
        """The earliest ``due_at`` of any job (leased or not), or None when empty."""
