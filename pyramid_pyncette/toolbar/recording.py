"""What a request did to jobs, recorded for the debug toolbar's "Jobs" panel.

The panel starts a record on each request the toolbar watches
(:func:`start_recording`). While ``pyramid_pyncette.toolbar`` is a
``debugtoolbar.includes`` entry, :func:`record_write` is the scheduler's
:attr:`~pyramid_pyncette.scheduler.Scheduler.write_recorder`: it appends
each job write to the record of the current request, if it has one. Nothing
here imports the toolbar, and no request is recorded unless its panel asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyramid.threadlocal import get_current_request

from ..schedules import ScheduleError, schedule_from_json
from ..transaction import active_transaction

if TYPE_CHECKING:
    from pyramid.request import Request

    from ..jobs import Job
    from ..scheduler import Scheduler

#: The request attribute holding its record (set only on requests the toolbar watches).
RECORD_ATTRIBUTE = "pyncette_toolbar_writes"

#: What became of a recorded write.
COMMITTED = "committed"
ABORTED = "aborted"
NO_TRANSACTION = "no transaction"


@dataclass
class RecordedWrite:
    """One job write a request asked for, and what became of it."""

    #: What the write was (one of :data:`~pyramid_pyncette.scheduler.RECORDED_ACTIONS`).
    action: str
    job_id: str
    #: The job as written (for a cancel: as it was, or None when unknown).
    job: Job | None
    #: Whether the write joined a transaction (``request.scheduler``) or was
    #: made at once (``registry.scheduler``).
    transactional: bool
    #: Whether that transaction committed (set by its after-commit hook).
    committed: bool = False

    def commit_attempted(self, status: bool) -> None:
        """The transaction's after-commit hook: ``status`` says whether it committed.

        It only notes the outcome (it writes nothing and cannot fail), so the
        hook's habit of swallowing errors loses nothing. An aborted
        transaction calls no such hook: the write stays not committed.
        """
        self.committed = bool(status)

    @property
    def outcome(self) -> str:
        """:data:`COMMITTED`, :data:`ABORTED` or :data:`NO_TRANSACTION`."""
        if not self.transactional:
            return NO_TRANSACTION
        return COMMITTED if self.committed else ABORTED


def start_recording(request: Request) -> list[RecordedWrite]:
    """Record the job writes made while ``request`` is the current request."""
    writes: list[RecordedWrite] = []
    setattr(request, RECORD_ATTRIBUTE, writes)
    return writes


def record_write(scheduler: Scheduler, action: str, job_id: str, job: Job | None) -> None:
    """The scheduler's write recorder: note the write on the current request's record.

    Writes made outside a recorded request (a daemon's jobs, a request the
    toolbar does not watch) are not noted.
    """
    request = get_current_request()
    writes = getattr(request, RECORD_ATTRIBUTE, None) if request is not None else None
    if writes is None:
        return
    # A bound scheduler's writer names its transaction manager; registry.scheduler's does not.
    manager = getattr(scheduler.writer, "transaction_manager", None)
    txn = active_transaction(manager) if manager is not None else None
    write = RecordedWrite(action, job_id, job, transactional=txn is not None)
    if txn is not None:
        txn.addAfterCommitHook(write.commit_attempted)
    writes.append(write)


def _schedule_text(job: Job) -> str:
    try:
        return schedule_from_json(job.schedule).describe()
    except ScheduleError:
        return f"unreadable schedule {job.schedule!r}"


def _arguments_text(job: Job) -> str:
    parts = [json.dumps(arg) for arg in job.args]
    parts += [f"{key}={json.dumps(value)}" for key, value in job.kwargs.items()]
    return ", ".join(parts)


def _time_text(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    return f"{value:%Y-%m-%d %H:%M:%S %Z}".strip()


def write_row(write: RecordedWrite) -> dict[str, Any]:
    """What the panel shows of one write (plain text: the template escapes it)."""
    job = write.job
    row: dict[str, Any] = {
        "action": write.action,
        "id": write.job_id,
        "outcome": write.outcome,
        "task": "",
        "arguments": "",
        "schedule": "",
        "queue": "",
        "runs_at": "",
    }
    if job is not None:
        row.update(
            task=str(job.task),
            arguments=_arguments_text(job),
            schedule=_schedule_text(job),
            queue=str(job.queue),
            runs_at="paused" if job.paused else _time_text(job.next_run_at),
        )
    return row
