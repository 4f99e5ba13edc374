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
RETRY_EXHAUSTED_MODES = ("advance", "park")

#: Defaults of the retry options (seconds).
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_RETRY_BACKOFF_MAX = 3600.0

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
    ``failure_mode``, ``lease_duration``, the retry options and
    ``misfire_grace_time``). ``due_at`` is when the job is next eligible to be
    claimed: its next run time while unleased (or the time of its next retry),
    the lease expiry while leased, ``None`` once it is parked as failed.
    ``next_run_at`` is the scheduled time of the run.

    ``problem`` is never stored: a store sets it when the stored row cannot be
    read as a job (unreadable JSON, wrong types); such a job is never run, the
    daemon parks it as failed with ``problem`` as its error.
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
    problem: str | None = field(default=None, compare=False)

    def _option(self, name: str, default: Any = None) -> Any:
        options = self.options
        if not isinstance(options, dict):
            return default
        value = options.get(name)
        return default if value is None else value

    def _seconds(self, name: str, default: float | None) -> float | None:
        value = self._option(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return default
        if not 0 < value < float("inf"):
            return default
        return float(value)

    @property
    def execution_mode(self) -> str:
        """``'at_least_once'`` (the default) or ``'at_most_once'``."""
        value = self._option("execution_mode")
        return value if value in EXECUTION_MODES else "at_least_once"

    @property
    def failure_mode(self) -> str:
        """``'none'`` (the default), ``'unlock'`` or ``'commit'``."""
        value = self._option("failure_mode")
        return value if value in FAILURE_MODES else "none"

    @property
    def lease_duration(self) -> float | None:
        """Seconds a claim of this job holds its lease, or ``None`` for the default."""
        return self._seconds("lease_duration", None)

    @property
    def max_retries(self) -> int | None:
        """How often a failed run is retried, or ``None`` (``failure_mode`` decides)."""
        value = self._option("max_retries")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        return value

    @property
    def retry_backoff(self) -> float:
        """Seconds before the first retry (doubling for each further one)."""
        return self._seconds("retry_backoff", DEFAULT_RETRY_BACKOFF)

    @property
    def retry_backoff_max(self) -> float:
        """The longest pause between two retries, in seconds."""
        return self._seconds("retry_backoff_max", DEFAULT_RETRY_BACKOFF_MAX)

    @property
    def retry_exhausted(self) -> str:
        """What a recurring job does after its last retry failed: ``'advance'`` or ``'park'``."""
        value = self._option("retry_exhausted")
        return value if value in RETRY_EXHAUSTED_MODES else "advance"

    @property
    def misfire_grace_time(self) -> float | None:
        """Seconds a run may start late before it is skipped, or ``None`` (no limit)."""
        return self._seconds("misfire_grace_time", None)

    @property
    def recurring(self) -> bool:
        """Whether the job has more than one run (interval or cron)."""
        return isinstance(self.schedule, dict) and self.schedule.get("kind") in (
            "interval",
            "cron",
        )

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
        if not _FIELD_NAMES.issuperset(changes):
            unknown = changes.keys() - _FIELD_NAMES
            raise TypeError(f"Job has no field(s) {', '.join(sorted(unknown))}")
        # dataclasses.replace re-runs __init__; on the claim path, a plain
        # copy of the instance dict is several times cheaper.
        copy = object.__new__(Job)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Job))
