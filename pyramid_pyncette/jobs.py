"""The job record: one persisted, scheduled instance of a task.

A *task* is code (a registered callable plus its options); a *job* is the row
that names a task, carries its schedule and JSON arguments, and tracks its
state. Every store keeps exactly these fields. A :class:`Lease` is one
claimed run of a job, an :class:`Outcome` how that run ended.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .options import (
    ExecutionMode,
    FailureMode,
    JobOptions,
    RetryExhausted,
    is_paused,
    options_from_json,
)
from .schedules import RECURRING_KINDS

#: Defaults of the retry settings and options: a failed run is retried 5
#: times, about 5-10 s, 10-20 s, 20-40 s, 40-80 s and 80-160 s after each
#: failure, so a broken job surfaces (parked, or on to its next run) within
#: minutes.
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 10.0
DEFAULT_RETRY_BACKOFF_MAX = 3600.0

#: How the lock of a row staged by a transaction starts (see
#: :meth:`~pyramid_pyncette.repository.base.Repository.stage`). Daemons lock
#: rows with tokens of their own, never with this prefix.
STAGED_PREFIX = "staged:"

#: Longest accepted job id (it is a primary key in every store).
MAX_JOB_ID_LENGTH = 200

#: Longest stored error text; longer tracebacks are cut from the front.
MAX_ERROR_LENGTH = 4000

STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"

#: The queue of a job that names none.
DEFAULT_QUEUE = "default"

#: A queue name: a letter or digit, then up to 63 letters, digits, ``_``, ``-`` or ``.``.
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: Where a job stands (:attr:`Job.state`): the same words in ``pscheduler``,
#: the demo and events.
JOB_STATES = ("scheduled", "running", "retrying", "failed", "paused")

#: How a run ended (:attr:`RunRecord.outcome`).
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_SKIPPED = "skipped"
RUN_LEASE_LOST = "lease_lost"
RUN_OUTCOMES = (RUN_SUCCEEDED, RUN_FAILED, RUN_SKIPPED, RUN_LEASE_LOST)

#: Longest error text a run record keeps (its first lines).
MAX_RUN_ERROR_LENGTH = 2000


#: Most partitions a store may be split into (``pyncette.partitions``).
MAX_PARTITIONS = 1024


def partition_of(job_id: str, partitions: int) -> int:
    """The partition (``0`` to ``partitions - 1``) of the job ``job_id``.

    A stable hash of the id (CRC-32 of its UTF-8 bytes): every process, on any
    machine and Python version, puts a job in the same partition, so a store
    can find a job's keys from its id alone.
    """
    if partitions <= 1:
        return 0
    return zlib.crc32(job_id.encode("utf-8", "surrogatepass")) % partitions


def queue_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a queue name, or None when it is one."""
    if not isinstance(name, str):
        return f"a queue name is a string, got {type(name).__name__}"
    if QUEUE_NAME.fullmatch(name) is None:
        return (
            f"{name!r} is not a queue name: use 1 to 64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (e.g. 'emails')"
        )
    return None


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
    ``options`` the JSON form of the resolved execution options
    (``execution_mode``, ``failure_mode``, ``lease_duration``, the retry
    options and ``misfire_grace_time``; options the job did not set are
    absent, so the daemon's settings apply to them); :attr:`parsed_options`
    is their typed form. ``due_at`` is when the job is next
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
    queue: str = DEFAULT_QUEUE
    problem: str | None = field(default=None, compare=False)

    @property
    def parsed_options(self) -> JobOptions:
        """``options`` as a typed :class:`~pyramid_pyncette.options.JobOptions`.

        Parsed once per job (see :func:`~pyramid_pyncette.options.options_from_json`);
        a stored value that cannot be read counts as unset (and the store
        reports it in ``problem``).
        """
        parsed = self.__dict__.get(_PARSED_OPTIONS)
        if parsed is None:
            parsed = remember_options(self, options_from_json(self.options)[0])
        return parsed

    @property
    def execution_mode(self) -> ExecutionMode:
        """``'at_least_once'`` (the default) or ``'at_most_once'``."""
        return self.parsed_options.execution_mode or ExecutionMode.AT_LEAST_ONCE

    @property
    def failure_mode(self) -> FailureMode:
        """``'none'``, ``'unlock'`` or ``'commit'`` (``'none'`` when unset).

        It only decides what a failure does when the job sets it (see
        :meth:`retry_limit`); otherwise the bounded default retries apply.
        """
        return self.parsed_options.failure_mode or FailureMode.NONE

    @property
    def failure_mode_set(self) -> bool:
        """Whether the job (or its task) chose a ``failure_mode`` explicitly."""
        return self.parsed_options.failure_mode is not None

    @property
    def lease_duration(self) -> float | None:
        """Seconds a claim of this job holds its lease, or ``None`` for the default."""
        return self.parsed_options.lease_duration

    @property
    def max_retries(self) -> int | None:
        """The ``max_retries`` the job (or its task) set, or ``None`` when unset."""
        return self.parsed_options.max_retries

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
        return self.parsed_options.retry_backoff

    @property
    def retry_backoff_max(self) -> float | None:
        """The longest pause between two retries in seconds, or ``None`` for the default."""
        return self.parsed_options.retry_backoff_max

    def backoff(self, defaults: RetryDefaults = DEFAULT_RETRIES) -> tuple[float, float]:
        """``(retry_backoff, retry_backoff_max)`` in seconds: the job's own, else ``defaults``."""
        options = self.parsed_options
        backoff = options.retry_backoff
        backoff_max = options.retry_backoff_max
        return (
            defaults.retry_backoff if backoff is None else backoff,
            defaults.retry_backoff_max if backoff_max is None else backoff_max,
        )

    @property
    def retry_exhausted(self) -> RetryExhausted:
        """What a recurring job does after its last retry failed: ``'advance'`` or ``'park'``."""
        return self.parsed_options.retry_exhausted or RetryExhausted.ADVANCE

    @property
    def misfire_grace_time(self) -> float | None:
        """Seconds a run may start late before it is skipped, or ``None`` (no limit)."""
        return self.parsed_options.misfire_grace_time

    @property
    def recurring(self) -> bool:
        """Whether the job has more than one run (interval or cron)."""
        return isinstance(self.schedule, dict) and self.schedule.get("kind") in RECURRING_KINDS

    @property
    def paused(self) -> bool:
        """Whether the job is paused (:meth:`~pyramid_pyncette.scheduler.Scheduler.pause_job`).

        A paused job is never claimed; its options carry the pause marker
        (:data:`~pyramid_pyncette.options.PAUSED_MARKER`).
        """
        return is_paused(self.options)

    @property
    def state(self) -> str:
        """Where the job stands: one of :data:`JOB_STATES`.

        ``'paused'`` while it is paused (a run in progress when it was paused
        finishes, and the job is not claimed again); ``'running'`` while a
        daemon holds its lease; ``'failed'`` when it is parked after its last
        failure (no due time); ``'retrying'`` when a failed run waits for its
        next attempt (unlocked, with attempts counted: a finished or fresh run
        has none); otherwise ``'scheduled'``.
        A row a transaction staged (locked until it commits) is not running:
        it shows the state it will have once published.
        """
        if self.paused:
            return "paused"
        locked_by = self.locked_by
        if locked_by is not None and not (
            isinstance(locked_by, str) and locked_by.startswith(STAGED_PREFIX)
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
        otherwise the scheduled time of its run (``None`` once parked or paused)."""
        state = self.state
        if state == "paused":
            return None
        if state == "retrying":
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
        if "options" in changes:
            copy.__dict__.pop(_PARSED_OPTIONS, None)
        return copy


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Job))

# Where a job keeps its parsed options (not a field: never stored, compared or shown).
_PARSED_OPTIONS = "_parsed_options"


def remember_options(job: Job, parsed: JobOptions) -> JobOptions:
    """Keep ``parsed`` as ``job.parsed_options``; for decoders that already parsed
    ``job.options`` with :func:`~pyramid_pyncette.options.options_from_json`."""
    job.__dict__[_PARSED_OPTIONS] = parsed
    return parsed


@dataclass(frozen=True)
class Lease:
    """One claimed run of a job.

    ``token`` identifies the claim: completion and heartbeats only touch the
    row while it still carries this token. At-most-once jobs are advanced
    (or deleted) inside the claim itself, so their ``token`` is ``None``.

    ``skipped`` marks a run the claim decided not to start: a misfire (the
    run was claimed more than ``misfire_grace_time`` after it was due,
    ``lateness`` seconds late; the claim already deleted or advanced the
    row, so ``token`` is ``None``), or a job whose stored row cannot be run
    (``job.problem`` says why; it is leased, for the worker to park it).
    """

    job: Job
    scheduled_at: datetime
    token: str | None
    skipped: bool = False
    lateness: float = 0.0
    #: The claim found the job paused and took it off the schedule: nothing
    #: runs, nothing is recorded (``token`` is ``None``).
    paused: bool = False
    #: When this attempt became due: ``scheduled_at`` for a run's first try,
    #: the retry time for a retry (or when a lost lease expired). None when the
    #: claim did not say (then ``scheduled_at`` stands for it). For measuring
    #: only: two leases of one claim are equal whether or not they carry it.
    due_at: datetime | None = field(default=None, compare=False)

    @property
    def attempt_due_at(self) -> datetime:
        """When this attempt became due (how late it started is measured from here)."""
        return self.due_at if isinstance(self.due_at, datetime) else self.scheduled_at

    @property
    def attempt(self) -> int:
        """1 for the first try of this run, 2 for the first retry, ..."""
        return self.job.attempts

    @property
    def runnable(self) -> bool:
        """Whether the worker should run this lease (not skipped, readable)."""
        return not self.skipped and not self.paused and self.job.problem is None


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
    #: The retry options of a job that sets none (the daemon's ``pyncette.max_retries``,
    #: ``retry_backoff`` and ``retry_backoff_max``): the outcome carries them so that
    #: :func:`~pyramid_pyncette.policy.plan_completion` stays a function of the outcome alone.
    retry_defaults: RetryDefaults = DEFAULT_RETRIES


@dataclass(frozen=True)
class RunRecord:
    """One run of a job as the run history keeps it.

    ``outcome`` is one of :data:`RUN_OUTCOMES`: ``'succeeded'``, ``'failed'``,
    ``'skipped'`` (claimed too late, see ``misfire_grace_time``; never
    started) or ``'lease_lost'`` (another daemon took the job over while it
    ran; its result was not written). ``error`` holds the first lines of the
    error (at most :data:`MAX_RUN_ERROR_LENGTH` characters). ``host``,
    ``pid`` and ``worker`` name the daemon that ran it. ``id`` is the
    store's, assigned when the record is written (``None`` before): records
    are listed newest first by it.
    """

    job_id: str
    task: str
    queue: str
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime
    attempt: int
    outcome: str
    error: str | None = None
    host: str = ""
    pid: int = 0
    worker: str = ""
    id: str | None = None

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return (self.finished_at - self.started_at).total_seconds()

    def matches(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
    ) -> bool:
        """Whether the record passes every filter given (``outcomes``: any of these)."""
        return (
            (job_id is None or self.job_id == job_id)
            and (task is None or self.task == task)
            and (queue is None or self.queue == queue)
            and (outcomes is None or self.outcome in outcomes)
        )

    @property
    def failed(self) -> bool:
        """Whether the run failed or lost its lease."""
        return self.outcome in (RUN_FAILED, RUN_LEASE_LOST)


def new_run_record(
    job_id: str,
    task: str,
    queue: str,
    scheduled_at: datetime,
    started_at: datetime,
    finished_at: datetime,
    attempt: int,
    outcome: str,
    error: str | None,
    host: str,
    pid: int,
    worker: str,
) -> RunRecord:
    """``RunRecord(...)`` with every field but ``id`` given, positionally, at a fraction
    of the cost: the worker builds one per run, and a frozen dataclass's
    ``__init__`` sets each of its 13 fields through ``object.__setattr__``.

    The record is the same (equal, hashed, shown alike) as one built by the
    class; nothing is checked, as the class checks nothing either.
    """
    record = _new_object(RunRecord)
    values = record.__dict__
    values["job_id"] = job_id
    values["task"] = task
    values["queue"] = queue
    values["scheduled_at"] = scheduled_at
    values["started_at"] = started_at
    values["finished_at"] = finished_at
    values["attempt"] = attempt
    values["outcome"] = outcome
    values["error"] = error
    values["host"] = host
    values["pid"] = pid
    values["worker"] = worker
    values["id"] = None
    return record


_new_object = object.__new__


@dataclass(frozen=True)
class QueueInfo:
    """One queue as :meth:`~pyramid_pyncette.scheduler.Scheduler.get_queues` reports it.

    ``due`` counts the jobs due now and not running (the backlog),
    ``running`` the jobs a daemon holds a lease on. A queue is listed while
    it holds jobs or is paused.

    ``jobs`` counts every stored job of the queue by its :attr:`Job.state`,
    with a key for each of :data:`JOB_STATES` (a row a transaction staged
    counts in the state it will have once published); every store fills it,
    and it is empty only in a ``QueueInfo`` built without counts. ``oldest_due_at`` is
    the earliest due time of the jobs waiting for a daemon (scheduled or
    retrying, neither locked nor paused), None when no job waits: how late
    the queue runs is ``now - oldest_due_at`` once that is positive.
    """

    name: str
    paused: bool
    due: int
    running: int
    jobs: Mapping[str, int] = field(default_factory=dict)
    oldest_due_at: datetime | None = None


def job_state_counts(states: Iterable[str] = ()) -> dict[str, int]:
    """How many of ``states`` are each of :data:`JOB_STATES` (every state keyed, 0 when absent)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state in states:
        counts[state] += 1
    return counts
