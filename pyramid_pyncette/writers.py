"""Where a scheduler's adds and cancels go: the store now, the transaction, or the app's session.

A :class:`~pyramid_pyncette.scheduler.Scheduler` composes one writer:

- :class:`ImmediateWriter` (``registry.scheduler``) writes to the store at
  once and announces at once.
- :class:`StagedWriter` (``request.scheduler``) keeps the changes in a
  :class:`~pyramid_pyncette.transaction.StagingDataManager` joined to the
  request's transaction: written if and only if it commits.
- :class:`SessionWriter` (``request.scheduler`` with ``pyncette.session_hook``)
  writes the rows through the app's zope.sqlalchemy session, in the same
  database transaction as the app's own rows.

Every writer reports what it committed to one callback,
``announce(written, removed, kinds)``; the scheduler announces from there.
``kinds`` says what each written job's write was (see :data:`WRITE_KINDS`),
so a pause is announced as a pause, not as a new schedule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from .jobs import Job
from .repository import Repository
from .repository.base import SessionStore, session_store
from .transaction import (
    StagingDataManager,
    active_transaction,
    current_transaction,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from transaction import Transaction, TransactionManager


#: What a write of a job was: added or replaced (``'scheduled'``, the default),
#: paused or resumed. The scheduler fires the matching event once it is committed.
WRITE_KINDS = ("scheduled", "paused", "resumed")

#: A committed write's kinds: ``{id(job): (job, kind)}`` for the written jobs
#: whose write was not ``'scheduled'`` (the job is kept so its ``id`` stays its own).
WriteKinds = Mapping[int, tuple[Job, str]]

#: ``announce(written, removed, kinds)``: called once writes are committed.
AnnounceCallback = Callable[[Sequence[Job], Sequence[str], WriteKinds], None]


def write_kind(kinds: WriteKinds, job: Job) -> str:
    """What the committed write of ``job`` was (one of :data:`WRITE_KINDS`)."""
    entry = kinds.get(id(job))
    return entry[1] if entry is not None and entry[0] is job else "scheduled"


class Store:
    """The application's store: built (unconnected) at include, set up on first use.

    A scheduler and its bound copies share one :class:`Store`, so the store
    is set up once per process, whichever of them uses it first.
    """

    def __init__(self, repository: Repository) -> None:
        #: The store object; it may not be set up yet (building it never connects).
        self.repository = repository
        self._ready = False
        self._lock = threading.Lock()

    def ready(self) -> Repository:
        """The store, set up (a failed set-up is tried again at the next call)."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.repository.setup()
                    self._ready = True
        return self.repository


class JobWriter(Protocol):
    """How a scheduler writes: what :class:`~pyramid_pyncette.scheduler.Scheduler` composes."""

    def write(self, jobs: Sequence[Job], kind: str = "scheduled") -> None:
        """Add (or replace) ``jobs``; ``kind`` says what the write is (:data:`WRITE_KINDS`)."""

    def remove(self, job_id: str) -> bool:
        """Delete a job; whether it existed (as this writer sees it)."""

    def get(self, job_id: str) -> Job | None:
        """The job with this id as this writer sees it (its own pending changes included)."""


class ImmediateWriter:
    """Writes to the store at once; every write is announced as soon as it is done."""

    def __init__(self, store: Store, announce: AnnounceCallback) -> None:
        self.store = store
        self.announce = announce

    def write(self, jobs: Sequence[Job], kind: str = "scheduled") -> None:
        """Write ``jobs`` to the store now."""
        self.store.ready().apply(jobs, [])
        self.announce(jobs, [], _kinds_of(jobs, kind))

    def remove(self, job_id: str) -> bool:
        """Delete the job now; whether it existed."""
        removed = bool(self.store.ready().remove([job_id]))
        if removed:
            self.announce([], [job_id], {})
        return removed

    def get(self, job_id: str) -> Job | None:
        """The job as stored."""
        return self.store.ready().get(job_id)


class _TransactionWriter:
    """Joins ``transaction_manager``'s transaction on the first write (never on a read)."""

    def __init__(
        self,
        store: Store,
        announce: AnnounceCallback,
        transaction_manager: TransactionManager | None,
        *,
        window: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.announce = announce
        self.transaction_manager = transaction_manager
        self.window = window
        self.clock = clock
        self._joined: tuple[Transaction, StagingDataManager] | None = None
        # The kinds of this transaction's writes, announced with them at commit.
        self._kinds: dict[int, tuple[Job, str]] = {}

    def data_manager(self) -> StagingDataManager:
        """This transaction's data manager, joined now if it is not yet.

        Raises :class:`~pyramid_pyncette.transaction.NoTransactionError`
        when no transaction is active.
        """
        txn = current_transaction(self.transaction_manager)
        if self._joined is None or self._joined[0] is not txn or not self._joined[1].joined:
            kinds: dict[int, tuple[Job, str]] = {}

            def on_commit(written: Sequence[Job], removed: Sequence[str]) -> None:
                self.announce(written, removed, kinds)

            data_manager = StagingDataManager(
                self.store.repository, on_commit, txn, window=self.window, clock=self.clock
            )
            txn.join(data_manager)
            self._joined = (txn, data_manager)
            self._kinds = kinds
        return self._joined[1]

    def _note_kind(self, jobs: Sequence[Job], kind: str) -> None:
        """Remember what the write of ``jobs`` is, for the announcement at commit."""
        self._kinds.update(_kinds_of(jobs, kind))

    def _staged(self, job_id: str) -> Job | str | None:
        """This transaction's last change of ``job_id``: a Job, ``'removed'`` or None."""
        if self._joined is None:
            return None
        txn, data_manager = self._joined
        if active_transaction(self.transaction_manager) is not txn:
            return None
        return data_manager.staged_state(job_id)


class StagedWriter(_TransactionWriter):
    """Stages writes in the transaction: stored unclaimable at its vote, published at commit."""

    def write(self, jobs: Sequence[Job], kind: str = "scheduled") -> None:
        """Write ``jobs`` if the transaction commits."""
        data_manager = self.data_manager()
        self._note_kind(jobs, kind)
        data_manager.add(jobs)

    def remove(self, job_id: str) -> bool:
        """Delete the job if the transaction commits; whether it exists, as the transaction sees."""
        staged = self._staged(job_id)
        data_manager = self.data_manager()
        exists = staged != "removed" and (
            staged is not None or self.store.ready().get(job_id) is not None
        )
        data_manager.remove(job_id)
        return exists

    def get(self, job_id: str) -> Job | None:
        """The job as this transaction sees it (its own uncommitted changes included)."""
        staged = self._staged(job_id)
        if isinstance(staged, Job):
            return staged
        if staged == "removed":
            return None
        return self.store.ready().get(job_id)


class SessionWriter(_TransactionWriter):
    """Writes the rows through the app's zope.sqlalchemy session (shared database).

    They commit or roll back with the app's own rows; the data manager only
    announces them once the transaction has committed.
    """

    def __init__(
        self,
        store: Store,
        announce: AnnounceCallback,
        transaction_manager: TransactionManager | None,
        session: Session,
        *,
        window: float,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__(store, announce, transaction_manager, window=window, clock=clock)
        self.session = session

    def _session_store(self) -> SessionStore:
        return session_store(self.store.ready())

    def _write(
        self, adds: Sequence[Job], removes: Sequence[str], kind: str = "scheduled"
    ) -> set[str]:
        from zope.sqlalchemy import mark_changed

        data_manager = self.data_manager()
        self._note_kind(adds, kind)
        removed = self._session_store().write_on(self.session, adds, removes)
        mark_changed(self.session, transaction_manager=self.transaction_manager)
        data_manager.written_elsewhere(adds, removed)
        return removed

    def write(self, jobs: Sequence[Job], kind: str = "scheduled") -> None:
        """Write ``jobs`` through the session."""
        self._write(jobs, [], kind)

    def remove(self, job_id: str) -> bool:
        """Delete the job through the session; whether it existed."""
        return bool(self._write([], [job_id]))

    def get(self, job_id: str) -> Job | None:
        """The job as the session sees it (its uncommitted changes included)."""
        return self._session_store().get_on(self.session, job_id)


def _kinds_of(jobs: Sequence[Job], kind: str) -> dict[int, tuple[Job, str]]:
    if kind == "scheduled":
        return {}
    return {id(job): (job, kind) for job in jobs}
