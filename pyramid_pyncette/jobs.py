"""The job record: one persisted, scheduled instance of a task.

A *task* is code (a registered callable plus its options); a *job* is the row
that names a task, carries its schedule and JSON arguments, and tracks its
state. Every store keeps exactly these fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EXECUTION_MODES = ("at_least_once", "at_most_once")
FAILURE_MODES = ("none", "unlock", "commit")

#: Longest accepted job id (it is a primary key in every store).
MAX_JOB_ID_LENGTH = 200

#: Longest stored error text; longer tracebacks are cut from the front.
MAX_ERROR_LENGTH = 4000

STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """A persisted job as the stores keep it and the API returns it.

    ``schedule`` is the schedule's JSON form (see :mod:`pyramid_pyncette.schedules`),
    ``options`` the resolved execution options (``execution_mode``,
    ``failure_mode``, ``lease_duration``). ``due_at`` is when the job is next
    eligible to be claimed: its next run time while unleased, the lease expiry
    while leased. ``next_run_at`` is always the scheduled time of the run.
    """

    id: str
    task: str
    schedule: dict[str, Any]
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    due_at: datetime | None = None
    next_run_at: datetime | None = None
    locked_by: str | None = None
    attempts: int = 0
    last_run_at: datetime | None = None
    last_status: str | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    partition: int = 0

    @property
    def execution_mode(self) -> str:
        """``'at_least_once'`` (the default) or ``'at_most_once'``."""
        return self.options.get("execution_mode", "at_least_once")

    @property
    def failure_mode(self) -> str:
        """``'none'`` (the default), ``'unlock'`` or ``'commit'``."""
        return self.options.get("failure_mode", "none")

    @property
    def lease_duration(self) -> float | None:
        """Seconds a claim of this job holds its lease, or ``None`` for the default."""
        return self.options.get("lease_duration")

    @property
    def recurring(self) -> bool:
        """Whether the job has more than one run (interval or cron)."""
        return self.schedule.get("kind") in ("interval", "cron")

    @property
    def state(self) -> str:
        """``'leased'`` while a daemon holds it, ``'failed'`` when it is parked
        after its last failure, otherwise ``'scheduled'``."""
        if self.locked_by is not None:
            return "leased"
        if self.due_at is None:
            return "failed"
        return "scheduled"

    def replace(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied (field names are checked)."""
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"Job has no field(s) {', '.join(sorted(unknown))}")
        # dataclasses.replace re-runs __init__; on the claim path, a plain
        # copy of the instance dict is several times cheaper.
        copy = object.__new__(Job)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Job))
