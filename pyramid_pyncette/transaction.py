"""Jobs that persist if and only if the request's transaction commits.

:class:`StagingDataManager` joins the request's transaction (``request.tm``)
the first time a view adds or cancels a job. It keeps the changes in memory
until the two-phase commit:

- ``tpc_vote`` writes them to the store, before zope.sqlalchemy's data
  managers commit the application's database (its sort key orders it
  first), but *staged*: each row is locked by a token of this transaction
  (``staged:<uuid>``, which no daemon's claim can carry) and due no earlier
  than the staging window (``pyncette.lease_duration``) from now, so no
  daemon can claim it yet. Cancelled jobs are deleted. Nothing is announced.
- ``tpc_finish`` (the transaction committed) publishes the rows still
  carrying the token: unlocked, due at their real first run, announced to
  the daemons. A store failure there is logged, never raised (the
  transaction is already committed): the rows then become claimable when
  their staging window expires.
- ``tpc_abort`` deletes the staged rows still carrying the token, or
  restores the versions they replaced, and restores cancelled jobs.

A store that is unreachable at vote time raises :class:`StoreUnavailable`, a
``TransientError``, so the whole request is aborted and pyramid_retry may run
it again.

The data manager knows the store and a callback only: after commit it calls
``on_commit(written, removed)`` with the jobs that were published and the ids
that were deleted (the scheduler announces them from there).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from transaction.interfaces import (
    IDataManagerSavepoint,
    ISavepointDataManager,
    NoTransaction,
    TransientError,
)
from zope.interface import implementer

from .jobs import STAGED_PREFIX, Job
from .redaction import redact_text
from .repository import Repository

if TYPE_CHECKING:
    from transaction import Transaction, TransactionManager

log = logging.getLogger(__name__)


class StoreUnavailable(TransientError):
    """The job store could not be written at commit time; the request may be retried."""


class NoTransactionError(RuntimeError):
    """``request.scheduler`` was used without an active transaction."""


NO_TRANSACTION_HELP = (
    "request.scheduler writes jobs when the request's transaction commits, but there is no "
    "active transaction: include pyramid_tm (config.include('pyramid_tm')) so views run in "
    "one; in scripts wrap the work in 'with request.tm:'; or use request.registry.scheduler "
    "to write immediately, without a transaction"
)


def active_transaction(manager: TransactionManager | None) -> Transaction | None:
    """The transaction ``manager`` has begun, or None (never begins one implicitly)."""
    if manager is None:
        return None
    if getattr(manager, "explicit", False):
        try:
            return manager.get()
        except NoTransaction:
            return None
    # An implicit manager would silently begin a transaction that nobody
    # commits; only use one that was begun (pyramid_tm, or 'with tm:').
    inner = getattr(manager, "manager", manager)
    return getattr(inner, "_txn", None)


@implementer(IDataManagerSavepoint)
class _Savepoint:
    def __init__(self, data_manager: StagingDataManager) -> None:
        self.data_manager = data_manager
        self.length = len(data_manager.changes)
        self.elsewhere = len(data_manager.elsewhere)

    def rollback(self) -> None:
        del self.data_manager.changes[self.length :]
        del self.data_manager.elsewhere[self.elsewhere :]


#: Called after commit with the jobs written and the job ids deleted.
CommitCallback = Callable[[Sequence[Job], Sequence[str]], None]


@implementer(ISavepointDataManager)
class StagingDataManager:
    """Stages job writes of one transaction: written unclaimable at vote, published at finish.

    ``repository`` is the store (it sets itself up on first use), ``window``
    the staging window in seconds and ``clock`` the current UTC time.
    ``on_commit(written, removed)`` is called once the transaction has
    committed, with what it wrote, here or through the app's session.
    """

    def __init__(
        self,
        repository: Repository,
        on_commit: CommitCallback,
        txn: Transaction,
        *,
        window: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.repository = repository
        self.on_commit = on_commit
        self.window = window
        self.clock = clock
        self.txn = txn
        #: ("add", Job) and ("remove", job_id) in the order they were asked for.
        self.changes: list[tuple[str, Any]] = []
        #: Changes written through the app's own session (shared database):
        #: ("add", Job) and ("remove", job_id), only announced on commit.
        self.elsewhere: list[tuple[str, Any]] = []
        #: False once the transaction (or a savepoint rollback) dropped this manager.
        self.joined = True
        #: What tpc_vote staged: (adds, removes, the rows they replaced, the staging token).
        self._applied: tuple[list[Job], list[str], dict[str, Job], str] | None = None

    # -- staging ----------------------------------------------------------

    def add(self, jobs: Iterable[Job]) -> None:
        self.changes.extend(("add", job) for job in jobs)

    def remove(self, job_id: str) -> None:
        self.changes.append(("remove", job_id))

    def written_elsewhere(self, adds: Iterable[Job], removed: Iterable[str]) -> None:
        """Announce on commit what was written through the app's own session."""
        self.elsewhere.extend(("add", job) for job in adds)
        self.elsewhere.extend(("remove", job_id) for job_id in removed)

    def staged_state(self, job_id: str) -> Job | str | None:
        """The last staged change of ``job_id``: a Job, ``'removed'``, or None (untouched)."""
        for action, value in reversed(self.changes):
            if action == "add" and value.id == job_id:
                return value
            if action == "remove" and value == job_id:
                return "removed"
        return None

    def _net_changes(self) -> tuple[list[Job], list[str]]:
        final: dict[str, Job | None] = {}
        for action, value in self.changes:
            if action == "add":
                final[value.id] = value
            else:
                final[value] = None
        adds = [job for job in final.values() if job is not None]
        removes = [job_id for job_id, job in final.items() if job is None]
        return adds, removes

    # -- IDataManager -----------------------------------------------------

    def sortKey(self) -> str:
        # Vote before zope.sqlalchemy ("~sqlalchemy:..."), which commits in
        # its own tpc_vote: a store failure then aborts the app's database too.
        return f"pyramid_pyncette:{id(self)}"

    def abort(self, txn: Transaction) -> None:
        # Also called when a savepoint taken before this manager joined is
        # rolled back: the transaction then forgets it, so it must rejoin.
        self.changes = []
        self.elsewhere = []
        self.joined = False

    def tpc_begin(self, txn: Transaction) -> None:
        pass

    def commit(self, txn: Transaction) -> None:
        pass

    def tpc_vote(self, txn: Transaction) -> None:
        adds, removes = self._net_changes()
        if not adds and not removes:
            return
        token = f"{STAGED_PREFIX}{uuid.uuid4().hex}"
        try:
            previous = self.repository.stage(adds, removes, token, self.window, self.clock())
        except Exception as exc:
            if self.repository.is_transient(exc):
                # The driver's text may echo the store URL: hide its password.
                detail = redact_text(f"{type(exc).__name__}: {exc}")
                raise StoreUnavailable(
                    f"the job store is unavailable ({detail}); "
                    "the transaction was aborted and may be retried"
                ) from exc
            raise
        self._applied = (adds, removes, previous, token)

    def tpc_finish(self, txn: Transaction) -> None:
        written: list[Job] = []
        removed: list[str] = []
        if self._applied is not None:
            adds, removes, previous, token = self._applied
            if adds:
                try:
                    self.repository.publish(token, adds)
                except Exception:
                    # tpc_finish must not raise: the transaction has committed.
                    log.exception(
                        "could not make %d committed job(s) claimable; they become "
                        "claimable when their staging window (pyncette.lease_duration, "
                        "%gs) expires",
                        len(adds),
                        self.window,
                    )
            written.extend(adds)
            removed.extend(job_id for job_id in removes if job_id in previous)
        for action, value in self.elsewhere:
            (written if action == "add" else removed).append(value)
        self._applied = None
        self.changes = []
        self.elsewhere = []
        self.joined = False
        if written or removed:
            try:
                self.on_commit(written, removed)
            except Exception:
                # tpc_finish must not raise: the transaction has committed.
                log.exception("announcing the jobs of a committed transaction failed")

    def tpc_abort(self, txn: Transaction) -> None:
        applied = self._applied
        self._applied = None
        self.changes = []
        self.elsewhere = []
        self.joined = False
        if applied is None:
            return
        adds, removes, previous, token = applied
        try:
            self.repository.withdraw(token, [job.id for job in adds], previous)
        except Exception:
            # tpc_abort must not raise. The staged rows stay: they become
            # claimable when their staging window expires.
            log.exception(
                "could not undo %d staged job write(s) after the transaction failed",
                len(adds) + len(removes),
            )

    def savepoint(self) -> _Savepoint:
        return _Savepoint(self)


def current_transaction(manager: TransactionManager | None) -> Transaction:
    """The transaction ``manager`` has begun; :class:`NoTransactionError` if none."""
    txn = active_transaction(manager)
    if txn is None:
        raise NoTransactionError(NO_TRANSACTION_HELP)
    return txn
