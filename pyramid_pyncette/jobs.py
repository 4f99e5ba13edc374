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

#: Defaults of the retry settings and options: a failed run is retried 5
#: times, about 5-10 s, 10-20 s, 20-40 s, 40-80 s and 80-160 s after each
#: failure, so a broken job surfaces (parked, or on to its next run) within
#: minutes.
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 10.0
DEFAULT_RETRY_BACKOFF_MAX = 3600.0

#: The start of a staging transaction's lock (``repository.base.STAGED_PREFIX``).
_STAGED_PREFIX = "staged:"

#: Longest accepted job id (it is a primary key in every store).
MAX_JOB_ID_LENGTH = 200

#: Longest stored error text; longer tracebacks are cut from the front.
MAX_ERROR_LENGTH = 4000

STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class RetryDefaults:
    """The retry options of jobs that do not set them.

    They come from the ``pyncette.max_retries``, ``pyncette.retry_backoff``
    and ``pyncette.retry_backoff_max`` settings of the daemon that completes
    the run, so a job stored without them follows the daemon's current
    settings. ``max_retries`` only applies to jobs that set neither
    ``max_retries`` nor ``failure_mode``: an explicit ``failure_mode``
    keeps its own meaning (retry without limit, or count the run as done).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX


#: The built-in :class:`RetryDefaults` (the settings' defaults).
DEFAULT_RETRIES = RetryDefaults()


@dataclass(frozen=True)
class Job:
    """A persisted job as the stores keep it and the API returns it.

    ``schedule`` is the schedule's JSON form (see :mod:`pyramid_pyncette.schedules`),
    ``options`` the resolved execution options (``execution_mode``,
    ``failure_mode``, ``lease_duration``, the retry options and
    ``misfire_grace_time``; options the job did not set are absent, so the
    daemon's settings apply to them). ``due_at`` is when the job is next
    eligible to be claimed: its next run time while unleased (or the time of
    its next retry), the lease expiry while leased, ``None`` once it is parked
    as failed. ``next_run_at`` is the scheduled time of the run.

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
        """``'none'``, ``'unlock'`` or ``'commit'`` (``'none'`` when unset).

        It only decides what a failure does when the job sets it (see
        :meth:`retry_limit`); otherwise the bounded default retries apply.
        """
        value = self._option("failure_mode")
        return value if value in FAILURE_MODES else "none"

    @property
    def failure_mode_set(self) -> bool:
        """Whether the job (or its task) chose a ``failure_mode`` explicitly."""
        return self._option("failure_mode") in FAILURE_MODES

    @property
    def lease_duration(self) -> float | None:
        """Seconds a claim of this job holds its lease, or ``None`` for the default."""
        return self._seconds("lease_duration", None)

    @property
    def max_retries(self) -> int | None:
        """The ``max_retries`` the job (or its task) set, or ``None`` when unset."""
        value = self._option("max_retries")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        return value

    def retry_limit(self, defaults: RetryDefaults = DEFAULT_RETRIES) -> int | None:
        """How often a failed run of this job is retried; ``None``: ``failure_mode`` decides.

        The job's own ``max_retries`` wins; a job that sets ``failure_mode``
        instead keeps that mode's meaning (``None``: unbounded retries, or
        ``'commit'``); any other job gets ``defaults.max_retries``.
        """
        retries = self.max_retries
        if retries is not None:
            return retries
        if self.failure_mode_set:
            return None
        return defaults.max_retries

    @property
    def retry_backoff(self) -> float | None:
        """Seconds before the first retry (doubling for each further one), or
        ``None`` for the default (``pyncette.retry_backoff``, see :meth:`backoff`)."""
        return self._seconds("retry_backoff", None)

    @property
    def retry_backoff_max(self) -> float | None:
        """The longest pause between two retries in seconds, or ``None`` for the default."""
        return self._seconds("retry_backoff_max", None)

    def backoff(self, defaults: RetryDefaults = DEFAULT_RETRIES) -> tuple[float, float]:
        """``(retry_backoff, retry_backoff_max)`` in seconds: the job's own, else ``defaults``."""
        return (
            self._seconds("retry_backoff", defaults.retry_backoff),
            self._seconds("retry_backoff_max", defaults.retry_backoff_max),
        )

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
        """Where the job stands: ``'scheduled'``, ``'running'``, ``'retrying'`` or ``'failed'``.

        ``'running'`` while a daemon holds its lease; ``'failed'`` when it is
        parked after its last failure (no due time); ``'retrying'`` when a
        failed run waits for its next attempt (unlocked, with attempts
        counted: a finished or fresh run has none); otherwise ``'scheduled'``.
        A row a transaction staged (locked until it commits) is not running:
        it shows the state it will have once published.
        """
        locked_by = self.locked_by
        if locked_by is not None and not (
            isinstance(locked_by, str) and locked_by.startswith(_STAGED_PREFIX)
        ):
            return "running"
        if self.due_at is None:
            return "failed"
        if isinstance(self.attempts, int) and self.attempts > 0:
            return "retrying"
        return "scheduled"

    @property
    def next_attempt_at(self) -> datetime | None:
        """When the job is next tried: the retry time while ``'retrying'``,
        otherwise the scheduled time of its run (``None`` once parked)."""
        if self.state == "retrying":
            return self.due_at
        return self.next_run_at

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
