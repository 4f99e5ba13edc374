"""The repository contract every store implements.

The contract is batch first: one call claims many due jobs, one call
completes many, one call extends many leases. What to *do* with a claimed
job or a finished run is the run policy's to decide
(:func:`~pyramid_pyncette.policy.plan_claim`,
:func:`~pyramid_pyncette.policy.plan_completion`); each store applies those
plans in as few statements as it allows, and reads and writes its rows
through :mod:`pyramid_pyncette.repository.rows`.

Some stores offer more than the contract; each such extra is a declared
protocol (:class:`SessionStore`, :class:`Announcer`), checked with
``isinstance`` where it is used.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from ..jobs import STAGED_PREFIX, Job, Lease, Outcome, QueueInfo, RunRecord

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    #: What a :class:`SessionStore` reads and writes through: a SQLAlchemy
    #: Connection, or the app's ORM Session (shared-database mode).
    DBConnection: TypeAlias = Connection | Session


class RepositoryError(Exception):
    """The store failed (connection lost, server gone, lock timeout)."""


# --------------------------------------------------------------------------- staging


def staged_job(job: Job, token: str, until: datetime) -> Job:
    """The row that stands for ``job`` while its transaction commits.

    It is locked by ``token`` and due no earlier than ``until``, so no daemon
    claims it before then: like a leased row, it becomes claimable only when
    that "lease" expires. Its ``next_run_at`` keeps the real first run.
    """
    due_at = None if job.due_at is None else max(job.due_at, until)
    return job.replace(locked_by=token, due_at=due_at)


def published_lock(job: Job) -> str | None:
    """The lock a row staged for ``job`` keeps once its transaction commits.

    None, unless ``job`` carries a daemon's lease (a job paused while it
    runs): the daemon's run then still completes its row.
    """
    locked_by = job.locked_by
    if isinstance(locked_by, str) and not locked_by.startswith(STAGED_PREFIX):
        return locked_by
    return None


@dataclass
class JobPage:
    """One page of :meth:`Repository.list`: ``jobs`` plus the cursor of the next page."""

    jobs: list[Job]
    next_cursor: str | None

    @classmethod
    def read_ahead(cls, jobs: list[Job], limit: int) -> JobPage:
        """The page of the first ``limit`` of ``jobs``, which a store read up to one past
        the page (``limit + 1``) to learn whether another page follows: then the
        next cursor is the id of the page's last job."""
        return cls(*_read_ahead(jobs, limit))

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> Job:
        return self.jobs[index]


@dataclass
class RunPage:
    """One page of :meth:`Repository.list_runs`, newest first, plus the cursor of the next."""

    runs: list[RunRecord]
    next_cursor: str | None

    @classmethod
    def read_ahead(cls, runs: list[RunRecord], limit: int) -> RunPage:
        """The page of the first ``limit`` of ``runs`` (see :meth:`JobPage.read_ahead`)."""
        return cls(*_read_ahead(runs, limit))

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, index: int) -> RunRecord:
        return self.runs[index]


def _read_ahead(found: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """``found``'s first ``limit`` items and, when there are more, the cursor after them."""
    more = len(found) > limit
    page = found[:limit]
    return page, page[-1].id if more else None


class Claim(NamedTuple):
    """What one claim asks for, in the order :meth:`Repository.claim` takes it.

    Up to ``limit`` jobs due at ``now``, leased with ``token`` for
    ``default_lease`` seconds unless a job has a lease duration of its own,
    from the queues named in ``queues`` (``None``: every queue); jobs of a
    paused queue are never claimed.
    """

    now: datetime
    limit: int
    token: str
    default_lease: float
    queues: frozenset[str] | None = None


class Repository(abc.ABC):
    """The store of jobs. Implementations must be safe to call from many threads."""

    #: Whether claims and heartbeats use the store's own clock instead of the
    #: ``now`` they are given, so daemons whose clocks disagree never take a
    #: live lease from each other. Stores without a clock ignore it; tests
    #: that drive time with a fake clock switch it off.
    store_clock = False

    #: Whether the daemon claims a little ahead of the jobs' due times
    #: (:meth:`claim_ahead`): a claim is slow enough (several round trips)
    #: that an idle daemon would start jobs late if it began claiming only
    #: when they became due. The daemon claims the jobs due within the next
    #: claim's time or so and starts each run at its due time (see
    #: :class:`~pyramid_pyncette.worker.Worker`). Only stores whose claims
    #: take the ``now`` they are given (no store clock) can.
    claims_ahead = False

    #: How many partitions the store's due index is split into (see
    #: ``pyncette.partitions``); a job's partition is
    #: :func:`~pyramid_pyncette.jobs.partition_of` its id and this count.
    partitions = 1

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

    # A transaction's writes (see pyramid_pyncette.transaction) go through
    # stage (at vote), then publish (after commit) or withdraw (after abort).
    # Stores override them to do each in one atomic call and announce only in
    # publish; these defaults are correct for a single-process store.

    def stage(
        self,
        jobs: Sequence[Job],
        removes: Sequence[str],
        token: str,
        window: float,
        now: datetime,
    ) -> dict[str, Job]:
        """Write ``jobs`` as not yet claimable and delete ``removes``; return what was replaced.

        Each job is stored as :func:`staged_job` makes it: locked by ``token``
        (which starts with :data:`~pyramid_pyncette.jobs.STAGED_PREFIX`) and due no earlier than
        ``window`` seconds after now (the store's clock when it claims by it,
        else ``now``). Announces nothing. Returns the rows that ``jobs``
        replaced and that ``removes`` deleted, as they were, by id.
        """
        until = now + timedelta(seconds=window)
        previous = self.get_many([job.id for job in jobs] + list(removes))
        self.apply([staged_job(job, token, until) for job in jobs], removes)
        return previous

    def publish(self, token: str, jobs: Sequence[Job]) -> None:
        """Make the rows staged with ``token`` claimable: due at ``job.due_at``, unlocked
        (or locked as ``job`` is: see :func:`published_lock`).

        Only rows still locked by ``token`` change (one a daemon claimed after
        the staging window, or that another writer replaced, is left alone).
        Announces the new jobs to listening daemons.
        """
        current = self.get_many([job.id for job in jobs])
        ready = [
            job.replace(locked_by=published_lock(job))
            for job in jobs
            if job.id in current and current[job.id].locked_by == token
        ]
        if ready:
            self.add(ready)

    def withdraw(self, token: str, ids: Sequence[str], previous: Mapping[str, Job]) -> None:
        """Undo :meth:`stage`: ``ids`` were staged with ``token``, ``previous`` it returned.

        A row of ``ids`` still locked by ``token`` is deleted, or restored to
        its ``previous`` version; a row that no longer carries the token
        (claimed after the staging window, written by someone else) is left
        alone. A ``previous`` row that was deleted (not in ``ids``) is
        restored unless its id was written again since.
        """
        staged = set(ids)
        current = self.get_many(list(staged | set(previous)))
        mine = {job_id for job_id in staged if job_id in current}
        mine = {job_id for job_id in mine if current[job_id].locked_by == token}
        restore = [previous[job_id] for job_id in mine if job_id in previous]
        restore += [job for job_id, job in previous.items() if job_id not in staged]
        restore = [job for job in restore if job.id in mine or job.id not in current]
        self.apply(restore, [job_id for job_id in mine if job_id not in previous])

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the store is (temporarily) unreachable, so a retry may work."""
        return isinstance(exc, (RepositoryError, ConnectionError, TimeoutError))

    def describe_setup_error(self, exc: BaseException) -> str | None:
        """One line naming the misconfiguration behind ``exc`` and its fix, or None.

        Not None only for errors no retry can fix (wrong credentials, an
        unknown database, a missing table or driver): ``pscheduler`` stops
        at start on those instead of waiting for the store.
        """
        if isinstance(exc, ImportError):
            return f"a module the store needs cannot be imported ({exc}); install it"
        return None

    def is_row_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the store refusing the values of one row, not a store failure.

        Such an error is never handled as an outage: the store writes the
        rows of a failed batch one by one and parks the row it still
        refuses (see :func:`~pyramid_pyncette.repository.rows.unwritable_row_values`).
        """
        return isinstance(exc, (ValueError, TypeError, OverflowError)) and not self.is_transient(
            exc
        )

    @abc.abstractmethod
    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Jobs ordered by id, after ``cursor``, optionally of one task."""

    def list_for_sync(self, cursor: str | None = None, limit: int = 100) -> JobPage:
        """The jobs a periodic-task sync may change, ordered by id, after ``cursor``.

        At least every parked job (no due time) and every job whose id is its
        task's name (the only id a periodic task's job has); a store may
        return more. The default returns every job; a store that can filter
        on its side does, so a daemon's start does not read every job.
        """
        return self.list(cursor=cursor, limit=limit)

    @abc.abstractmethod
    def claim(
        self,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        """Atomically take up to ``limit`` jobs due at ``now`` from ``queues`` (None: all).

        Jobs of a queue paused with :meth:`set_queue_paused` are not taken.
        What the claim does to each is :func:`~pyramid_pyncette.policy.plan_claim`'s
        plan; the lease of a paused job (``Lease.paused``) is returned, not run.
        The cost grows with the number of due jobs of the claimed queues, not
        with the number of stored jobs or of other queues' due jobs.
        """

    @abc.abstractmethod
    def complete(self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()) -> None:
        """Apply many outcomes at once (see :func:`~pyramid_pyncette.policy.plan_completion`)
        and append ``runs`` to the run history, in the same round trip where the store can.

        Run records are appended whether or not an outcome still matched its
        row (a run whose lease was lost is recorded too). Writing the same
        ``runs`` twice (a retry after an outage) may record them twice.
        """

    def complete_and_claim(
        self,
        outcomes: Sequence[Outcome],
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> builtins.list[Lease]:
        """:meth:`complete` ``outcomes`` and ``runs``, then :meth:`claim`; the worker's loop
        calls this.

        If it raises, the caller writes the outcomes again later: writing an
        outcome twice must change nothing (every completion is guarded by its
        lease token). Stores do both in one round trip by overriding
        :meth:`_complete_then_claim`.
        """
        claim = Claim(now, limit, token, default_lease, queues)
        return self._complete_then_claim(outcomes, claim, runs)

    def complete_and_claim_ahead(
        self,
        outcomes: Sequence[Outcome],
        now: datetime,
        until: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> builtins.list[Lease]:
        """:meth:`complete` ``outcomes`` and ``runs``, then :meth:`claim_ahead` (the
        worker's loop calls this for a store that :attr:`claims_ahead`)."""
        if outcomes or runs:
            self.complete(outcomes, runs)
        return self.claim_ahead(now, until, limit, token, default_lease, queues)

    def claim_ahead(
        self,
        now: datetime,
        until: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        """Like :meth:`claim`, but take the jobs due by ``until`` (later than ``now``).

        Each job is claimed as if at its due time when that is after ``now``
        (a job claimed ahead is not late, and its lease lasts from then);
        the caller must not start a run before its due time. Stores that
        :attr:`claims_ahead` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not claim ahead of due times")

    def _complete_then_claim(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord] = ()
    ) -> builtins.list[Lease]:
        """What :meth:`complete_and_claim` does; the one method a store overrides for it."""
        if outcomes or runs:
            self.complete(outcomes, runs)
        return self.claim(*claim)

    # -- queues ------------------------------------------------------------

    @abc.abstractmethod
    def set_queue_paused(self, name: str, paused: bool) -> bool:
        """Pause (or resume) the queue ``name`` for every daemon; return whether that changed it.

        Stored in the store: a claim that starts after this returns no job
        of a paused queue. A queue may be paused before it holds any job.
        """

    @abc.abstractmethod
    def paused_queues(self) -> set[str]:
        """The names of the paused queues."""

    @abc.abstractmethod
    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        """Every queue that holds a job or is paused, by name, with its counts at ``now``.

        ``due``: unlocked jobs due at ``now`` (staged rows of an open
        transaction aside); ``running``: jobs leased by a daemon (not staged).
        """

    # -- run history -------------------------------------------------------

    @abc.abstractmethod
    def list_runs(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        """Run records, newest first (by record id), after ``cursor``, matching every filter
        given (``outcomes``: any of these outcomes)."""

    @abc.abstractmethod
    def prune_runs(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` run records that finished before ``before``; return how many.

        Daemons call it repeatedly with a small ``limit``, so the history is
        kept bounded without one huge delete.
        """

    def release_thread_connection(self) -> None:  # noqa: B027 - optional hook
        """Give back what :meth:`complete_and_claim` kept for the calling thread.

        A worker's loop calls it when it stops.
        """

    @abc.abstractmethod
    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        """Renew leases ``(id, token, seconds)`` to expire ``seconds`` after now.

        Returns the ids still held by their token (the others were lost).
        Each id appears at most once in ``leases``: a job has one lease at a
        time, so an id alone says which of the given leases are held.
        """

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> None:
        """Give back claimed runs that never started: unlocked, due again, attempt undone."""

    @abc.abstractmethod
    def next_due(self, queues: frozenset[str] | None = None) -> datetime | None:
        """The earliest ``due_at`` of any job (leased or not) of ``queues`` (None: every queue),
        or None when there is none. Jobs of paused queues do not count."""

    def next_due_delay(self, now: datetime, queues: frozenset[str] | None = None) -> float | None:
        """Seconds from now until :meth:`next_due` (negative when overdue), None when empty.

        "Now" is the clock claims use: the store's own when
        :attr:`store_clock` is set and the store has one (read in the same
        call as the earliest due time), else ``now``. Comparing a due time
        from one clock with another clock would make a daemon whose clock
        runs ahead of the store's poll without pause.
        """
        due = self.next_due(queues)
        return None if due is None else (due - now).total_seconds()


# --------------------------------------------------------------------------- optional abilities


@runtime_checkable
class SessionStore(Protocol):
    """A store that can write through a connection it does not own: the app's session.

    The shared-database mode (``pyncette.session_hook``) writes job rows and
    completes runs through the app's own zope.sqlalchemy session, so they
    commit or roll back with the app's rows. Only the SQL store can.
    """

    def write_on(
        self, conn: DBConnection, adds: Sequence[Job], removes: Sequence[str], announce: bool = True
    ) -> set[str]:
        """Write ``adds`` (replacing) and delete ``removes`` through ``conn``; return the
        ids of ``removes`` that existed."""

    def get_on(self, conn: DBConnection, job_id: str) -> Job | None:
        """One job read through ``conn``, or None."""

    def complete_on(self, conn: DBConnection, outcomes: Sequence[Outcome]) -> int:
        """Apply ``outcomes`` through ``conn``; return how many lease-guarded rows matched."""


@runtime_checkable
class Announcer(Protocol):
    """A store that tells listening daemons when a job is added (PostgreSQL, Redis;
    SQLite and MySQL/MariaDB through change probes)."""

    def start_listener(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` whenever any process adds a job; return a function that
        stops listening, or None when this store cannot announce after all."""


def session_store(repository: Repository) -> SessionStore:
    """``repository`` as a :class:`SessionStore`, or an error naming the fix."""
    if not isinstance(repository, SessionStore):
        raise TypeError(
            f"{type(repository).__name__} cannot write through the app's session: "
            "pyncette.session_hook needs pyncette.url to name the app's SQL database"
        )
    return repository
