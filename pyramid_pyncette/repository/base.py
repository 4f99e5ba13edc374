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
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ..jobs import (
    DEFAULT_RETRIES,
    EXECUTION_MODES,
    FAILURE_MODES,
    MAX_ERROR_LENGTH,
    RETRY_EXHAUSTED_MODES,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    Job,
    RetryDefaults,
)
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

    @property
    def attempt(self) -> int:
        """1 for the first try of this run, 2 for the first retry, ..."""
        return self.job.attempts

    @property
    def runnable(self) -> bool:
        """Whether the worker should run this lease (not skipped, readable)."""
        return not self.skipped and self.job.problem is None


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
    #: :func:`plan_completion` stays a function of the outcome alone.
    retry_defaults: RetryDefaults = DEFAULT_RETRIES


@dataclass(frozen=True)
class ClaimPlan:
    """What a claim does to one due row.

    ``action`` is ``'lease'`` (at-least-once: lock it until ``due_at``),
    ``'advance'`` (at-most-once recurring, or a misfired recurring run: move
    it to its next run, unlocked) or ``'delete'`` (at-most-once one-off, or a
    misfired one-off run: remove it before it runs).
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


#: The longest ``last_status`` a store keeps (the SQL column's width).
MAX_STATUS_LENGTH = 16

# What no store can hold as text: NUL (PostgreSQL refuses it) and lone
# surrogates (not encodable as UTF-8: no driver can send them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: Any, limit: int | None = MAX_ERROR_LENGTH) -> str | None:
    """``text`` as every store can hold it. Never raises.

    NUL and lone surrogates become U+FFFD; text longer than ``limit``
    characters keeps its end (the exception line of a traceback is last),
    behind ``...``. Non-text values are shown with ``str``. The one helper
    through which every store writes error text and statuses.
    """
    if text is None:
        return None
    if type(text) is not str:
        try:
            text = str(text)
        except Exception:
            text = f"<unprintable {type(text).__name__}>"
    if _UNSTORABLE.search(text) is not None:
        text = _UNSTORABLE.sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        text = "..." + text[-(limit - 3) :]
    return text


def ascii_text(text: Any, limit: int | None = MAX_ERROR_LENGTH) -> str | None:
    """:func:`storable_text` in ASCII, other characters as backslash escapes (``\\u00e9``).

    The fallback for a column whose character set cannot hold some
    characters (a ``latin1`` or ``utf8mb3`` MySQL column and an emoji).
    """
    text = storable_text(text, None)
    if text is None or text.isascii():
        return storable_text(text, limit)
    return storable_text(text.encode("ascii", "backslashreplace").decode("ascii"), limit)


def truncate_error(text: Any) -> str | None:
    """Error text as stored: :func:`storable_text` bounded to ``MAX_ERROR_LENGTH``."""
    return storable_text(text, MAX_ERROR_LENGTH)


def storable_values(values: Mapping[str, Any], text: Callable[..., Any] = storable_text) -> dict:
    """Completion ``values`` with ``last_error`` and ``last_status`` made storable by ``text``."""
    values = dict(values)
    if values.get("last_error") is not None:
        values["last_error"] = text(values["last_error"], MAX_ERROR_LENGTH)
    if values.get("last_status") is not None:
        values["last_status"] = text(values["last_status"], None)[:MAX_STATUS_LENGTH]
    return values


def unwritable_row_values(now: datetime, exc: BaseException) -> dict[str, Any]:
    """The values that park a job whose own values the store refused to write.

    No due time (no daemon claims it until it is retried or replaced), the
    status ``failed`` and an ASCII error saying why.
    """
    detail = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {detail[0][:300] if detail else ''}"
    error = (
        f"the store refused to write this job's row ({reason}); it is parked: add it again "
        "with the same job_id to replace it, or cancel it"
    )
    return {
        "due_at": None,
        "next_run_at": None,
        "last_run_at": now,
        "last_status": STATUS_FAILED,
        "last_error": ascii_text(error),
    }


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


# --------------------------------------------------------------------------- retries


def retry_delay(job_id: str, attempt: int, backoff: float, backoff_max: float) -> timedelta:
    """The pause before retrying ``attempt`` (the failed try: 1 for the first).

    Exponential backoff, ``ceiling = min(backoff * 2 ** (attempt - 1),
    backoff_max)``, jittered to between ``ceiling / 2`` and ``ceiling``. The
    jitter is derived from a hash of
    ``(job_id, attempt)`` rather than a random generator, so every daemon and
    every store computes the same delay (and tests can predict it), while
    jobs that fail together still spread their retries.
    """
    exponent = min(max(attempt - 1, 0), 64)
    ceiling = min(backoff * 2.0**exponent, backoff_max)
    key = f"{job_id}\0{attempt}".encode("utf-8", "surrogatepass")
    fraction = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return timedelta(seconds=ceiling / 2 + fraction * ceiling / 2)


# --------------------------------------------------------------------------- stored rows

_SCHEDULE_KINDS = ("date", "interval", "cron")
_TIME_FIELDS = ("due_at", "next_run_at", "last_run_at", "created_at")
_TEXT_FIELDS = ("locked_by", "last_status", "last_error")
_DURATION_OPTIONS = ("lease_duration", "retry_backoff", "retry_backoff_max", "misfire_grace_time")


class UnreadableJSON:
    """What :func:`load_json` returns for stored text that is not JSON."""

    def __init__(self, text: Any, error: BaseException) -> None:
        self.text = text
        self.error = error

    def __repr__(self) -> str:
        return f"<unreadable JSON {_short(self.text)}>"

    def describe(self) -> str:
        detail = str(self.error).splitlines()[0] if str(self.error) else type(self.error).__name__
        return f"not valid JSON ({detail}): {_short(self.text)}"


def load_json(text: Any) -> Any:
    """``json.loads(text)``; unreadable text becomes an :class:`UnreadableJSON`. Never raises."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except Exception as exc:
        return UnreadableJSON(text, exc)


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _what(value: Any) -> str:
    if isinstance(value, UnreadableJSON):
        return value.describe()
    return f"{_short(value)} ({type(value).__name__})"


@functools.lru_cache(maxsize=1024)
def _cron_problem(items: tuple[tuple[str, Any], ...]) -> str | None:
    """Why a cron schedule does not parse (cached: a daemon sees few distinct crons)."""
    try:
        schedule_from_json(dict(items))
    except ScheduleError as exc:
        return f"schedule is unreadable ({exc})"
    return None


def _schedule_problem(schedule: Any) -> str | None:
    """Why the stored ``schedule`` cannot be used.

    Checked cheaply, as every claim checks it: the shape of dates and
    intervals (their values are only read to compute a next run, which
    parks the job if they do not parse), and cron schedules in full, cached.
    """
    if not isinstance(schedule, dict):
        return f"schedule is {_what(schedule)}, not an object with a 'kind'"
    kind = schedule.get("kind")
    if kind not in _SCHEDULE_KINDS:
        return f"schedule has the unknown kind {_short(kind)} (expected date, interval or cron)"
    if kind == "date":
        ok = isinstance(schedule.get("run_at"), str)
    elif kind == "interval":
        micros = schedule.get("microseconds")
        ok = not isinstance(micros, bool) and isinstance(micros, int) and micros > 0
        ok = ok and isinstance(schedule.get("start"), (str, type(None)))
    else:
        expression = schedule.get("expression")
        ok = isinstance(expression, str) and bool(expression.strip())
        ok = ok and isinstance(schedule.get("timezone"), (str, type(None)))
        ok = ok and isinstance(schedule.get("start"), (str, type(None)))
        weeks = schedule.get("weeks")
        ok = ok and (
            weeks is None or (isinstance(weeks, (str, int)) and not isinstance(weeks, bool))
        )
        if ok:
            keys = ("kind", "expression", "timezone", "start", "weeks")
            return _cron_problem(tuple((key, schedule.get(key)) for key in keys))
    if not ok:
        return f"{kind} schedule is malformed: {_short(schedule)}"
    return None


def _option_problem(options: Any) -> str | None:
    if not isinstance(options, dict):
        return f"options are {_what(options)}, not an object"
    for key, value in options.items():
        if value is None:
            continue
        if key == "execution_mode" and value not in EXECUTION_MODES:
            return f"option execution_mode is {_short(value)}"
        if key == "failure_mode" and value not in FAILURE_MODES:
            return f"option failure_mode is {_short(value)}"
        if key == "retry_exhausted" and value not in RETRY_EXHAUSTED_MODES:
            return f"option retry_exhausted is {_short(value)}"
        if key == "max_retries" and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            return f"option max_retries is {_short(value)}, not a whole number >= 0"
        if key in _DURATION_OPTIONS and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e10
        ):
            return f"option {key} is {_short(value)}, not a positive number of seconds"
    return None


def job_problem(job: Job) -> str | None:
    """Why the stored ``job`` cannot be run as it is, or None when it can.

    Cheap structural checks (no cron parsing), so claims stay fast: the task
    name, the schedule, the arguments, the options. ``job.problem`` (set by
    :func:`decode_job_fields`) wins.
    """
    if job.problem is not None:
        return job.problem
    problems = []
    if not isinstance(job.task, str) or not job.task:
        problems.append(f"task is {_what(job.task)}, not a task name")
    problem = _schedule_problem(job.schedule)
    if problem:
        problems.append(problem)
    if not isinstance(job.args, list):
        problems.append(f"args are {_what(job.args)}, not a list")
    if not isinstance(job.kwargs, dict) or not all(isinstance(k, str) for k in job.kwargs):
        problems.append(f"kwargs are {_what(job.kwargs)}, not an object")
    problem = _option_problem(job.options)
    if problem:
        problems.append(problem)
    if isinstance(job.attempts, bool) or not isinstance(job.attempts, int):
        problems.append(f"attempts is {_what(job.attempts)}, not a whole number")
    return _problem_text(job.id, problems)


def _problem_text(job_id: Any, problems: list[str]) -> str | None:
    if not problems:
        return None
    return (
        f"the stored job {_short(job_id)} cannot be run: {'; '.join(problems)}; add it again "
        "with the same job_id to replace it, or cancel it"
    )


def decode_job_fields(
    fields: Any,
    *,
    job_id: str | None = None,
    decode_time: Callable[[Any], datetime | None] | None = None,
) -> Job:
    """A :class:`Job` from the values a store read back, whatever they hold. Never raises.

    ``fields`` maps :class:`Job` field names to stored values (a SQL row's
    ``_mapping``, a decoded Redis document). Two store layouts are understood:
    without a ``kwargs`` key, ``args`` holds ``{"args": [...], "kwargs":
    {...}}`` (the SQL column); a ``job`` key holding JSON text holds further
    fields (the Redis document). Values that are :class:`UnreadableJSON`, of
    the wrong type, or missing are replaced by empty ones and described in
    ``Job.problem``: such a job is never run, and the daemon that claims it
    parks it as failed with that description as its error. ``job_id``
    overrides the stored id; ``decode_time`` turns a stored time that is not a
    ``datetime`` into one.
    """
    try:
        return _decode_job_fields(fields, job_id, decode_time)
    except Exception as exc:  # a last resort: a job that cannot run, but can be listed
        ident = job_id if isinstance(job_id, str) else "?"
        problem = _problem_text(ident, [f"it cannot be decoded ({type(exc).__name__}: {exc})"])
        return Job(id=ident, task="", schedule={}, problem=problem)


def _decode_job_fields(
    fields: Any, job_id: str | None, decode_time: Callable[[Any], datetime | None] | None
) -> Job:
    problems: list[str] = []
    if isinstance(fields, Mapping):
        values = dict(fields)
    else:
        problems.append(f"the stored document is {_what(fields)}, not an object")
        values = {}
    nested = values.get("job")
    if isinstance(nested, (str, bytes, UnreadableJSON)):
        inner = load_json(nested) if not isinstance(nested, UnreadableJSON) else nested
        if isinstance(inner, dict):
            values = {**inner, **{k: v for k, v in values.items() if k != "job"}}
        else:
            problems.append(f"the job definition is {_what(inner)}, not an object")

    ident = job_id if job_id is not None else values.get("id")
    if not isinstance(ident, str):
        problems.append(f"id is {_what(ident)}")
        ident = "" if ident is None else str(ident)

    task = values.get("task")
    if not isinstance(task, str) or not task:
        problems.append(f"task is {_what(task)}, not a task name")
        task = task if isinstance(task, str) else ""

    schedule = values.get("schedule")
    problem = _schedule_problem(schedule)
    if problem:
        problems.append(problem)
    if not isinstance(schedule, dict):
        schedule = {}

    if "kwargs" in values:
        args, kwargs = values.get("args"), values.get("kwargs")
        if args is None:
            args = []
        if kwargs is None:
            kwargs = {}
    else:
        combined = values.get("args")
        if combined is None:
            combined = {}
        if isinstance(combined, dict):
            args, kwargs = combined.get("args", []), combined.get("kwargs", {})
            extra = sorted(str(k) for k in combined if k not in ("args", "kwargs"))
            if extra:
                problems.append(f"arguments have unexpected keys {', '.join(extra)}")
        else:
            problems.append(f"arguments are {_what(combined)}, not an object")
            args, kwargs = [], {}
    if not isinstance(args, list):
        problems.append(f"args are {_what(args)}, not a list")
        args = []
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        problems.append(f"kwargs are {_what(kwargs)}, not an object")
        kwargs = {}

    options = values.get("options")
    if options is None:
        options = {}
    problem = _option_problem(options)
    if problem:
        problems.append(problem)
    if not isinstance(options, dict):
        options = {}

    times: dict[str, datetime | None] = {}
    for name in _TIME_FIELDS:
        value = values.get(name)
        try:
            if value is not None and not isinstance(value, datetime):
                if decode_time is None:
                    raise TypeError(f"not a datetime: {_short(value)}")
                value = decode_time(value)
            if value is not None and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
        except Exception:
            problems.append(f"{name} is {_what(value)}, not a time")
            value = None
        times[name] = value

    text = {}
    for name in _TEXT_FIELDS:
        value = values.get(name)
        text[name] = value if value is None or isinstance(value, str) else str(value)

    # Missing counts are 0; present ones must be whole numbers.
    attempts = values.get("attempts")
    if isinstance(attempts, float) and attempts.is_integer():
        attempts = int(attempts)
    if attempts is None:
        attempts = 0
    elif isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        problems.append(f"attempts is {_what(attempts)}, not a whole number >= 0")
        attempts = 0
    partition = values.get("partition")
    if partition is None:
        partition = 0
    elif isinstance(partition, bool) or not isinstance(partition, int):
        problems.append(f"partition is {_what(partition)}, not a whole number")
        partition = 0

    return Job(
        id=ident,
        task=task,
        schedule=schedule,
        args=args,
        kwargs=kwargs,
        options=options,
        attempts=attempts,
        partition=partition,
        problem=_problem_text(ident, problems),
        **times,
        **text,
    )


def well_formed_job(
    job_id: Any,
    task: Any,
    schedule: Any,
    args: Any,
    kwargs: Any,
    options: Any,
    due_at: Any,
    next_run_at: Any,
    locked_by: Any,
    attempts: Any,
    last_run_at: Any,
    last_status: Any,
    last_error: Any,
    created_at: Any,
    partition: Any,
) -> Job | None:
    """A :class:`Job` from stored values that are all well formed, else ``None``.

    The claim path's decoder: stores call it with the values of a row
    (JSON already parsed, times as UTC datetimes) and fall back to
    :func:`decode_job_fields`, which describes every problem, when it returns
    ``None``. It accepts exactly what :func:`decode_job_fields` would accept
    without a problem, so a job it builds needs no :func:`job_problem` check.
    """
    if (
        type(job_id) is not str
        or type(task) is not str
        or not task
        or type(schedule) is not dict
        or type(args) is not list
        or type(kwargs) is not dict
        or type(options) is not dict
        or type(attempts) is not int
        or attempts < 0
        or type(partition) is not int
    ):
        return None
    if kwargs and not all(type(key) is str for key in kwargs):
        return None
    if _schedule_problem(schedule) is not None or (options and _option_problem(options)):
        return None
    for value in (locked_by, last_status, last_error):
        if value is not None and type(value) is not str:
            return None
    for value in (due_at, next_run_at, last_run_at, created_at):
        if value is not None and (type(value) is not datetime or value.tzinfo is not timezone.utc):
            return None
    job = object.__new__(Job)
    job.__dict__.update(
        id=job_id,
        task=task,
        schedule=schedule,
        args=args,
        kwargs=kwargs,
        options=options,
        due_at=due_at,
        next_run_at=next_run_at,
        locked_by=locked_by,
        attempts=attempts,
        last_run_at=last_run_at,
        last_status=last_status,
        last_error=last_error,
        created_at=created_at,
        partition=partition,
        problem=None,
    )
    return job


def utc(value: Any) -> Any:
    """A stored time as an aware UTC datetime (naive ones are UTC); other values unchanged."""
    if type(value) is datetime and value.tzinfo is not timezone.utc:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    return value


def loads_stored(text: Any) -> Any:
    """:func:`load_json` with a shortcut for the empty objects most rows store."""
    if text == "{}":
        return {}
    if text == '{"args":[],"kwargs":{}}':
        return {"args": [], "kwargs": {}}
    return load_json(text)


# --------------------------------------------------------------------------- claims


def plan_claim(
    job: Job, now: datetime, token: str, default_lease: float, checked: bool = False
) -> ClaimPlan:
    """Decide what claiming the due ``job`` at ``now`` writes. Never raises.

    A job that cannot be run as stored (see :func:`job_problem`) is leased
    like any other, with a skipped lease carrying the problem: the worker
    parks it as failed instead of running it. ``checked`` says the job was
    just decoded by :func:`decode_job_fields` or :func:`well_formed_job`,
    which already did that check (``job.problem`` holds its verdict).
    """
    try:
        problem = job.problem if checked else job_problem(job)
        if problem is None:
            return _plan_claim(job, now, token, default_lease)
    except Exception as exc:
        problem = _problem_text(job.id, [f"it cannot be claimed ({type(exc).__name__}: {exc})"])
    return _unrunnable_claim(job, now, token, default_lease, problem)


def _plan_claim(job: Job, now: datetime, token: str, default_lease: float) -> ClaimPlan:
    scheduled_at = job.next_run_at or job.due_at or now
    if job.options:
        grace, mode, seconds = job.misfire_grace_time, job.execution_mode, job.lease_duration
    else:  # the common case, without reading each option
        grace, mode, seconds = None, "at_least_once", None
    if grace is not None and job.attempts == 0:
        # Only a run's first try can misfire: a retry, or a run whose lease
        # expired, already started and is seen through.
        lateness = (now - scheduled_at).total_seconds()
        if lateness > grace:
            return _misfire_claim(job, now, token, default_lease, scheduled_at, lateness)
    attempts = job.attempts + 1
    if mode == "at_most_once":
        claimed = job.replace(attempts=attempts, locked_by=None)
        lease = Lease(job=claimed, scheduled_at=scheduled_at, token=None)
        return _move_past(job, claimed, lease, now, token, default_lease)
    leased = job.replace(
        locked_by=token,
        due_at=now + timedelta(seconds=seconds or default_lease),
        next_run_at=scheduled_at,
        attempts=attempts,
    )
    return ClaimPlan("lease", leased, Lease(job=leased, scheduled_at=scheduled_at, token=token))


def _misfire_claim(
    job: Job,
    now: datetime,
    token: str,
    default_lease: float,
    scheduled_at: datetime,
    lateness: float,
) -> ClaimPlan:
    """Skip a run claimed too late: delete a one-off job, advance a recurring one."""
    lease = Lease(job=job, scheduled_at=scheduled_at, token=None, skipped=True, lateness=lateness)
    return _move_past(job, job, lease, now, token, default_lease)


def _move_past(
    job: Job, run: Job, lease: Lease, now: datetime, token: str, default_lease: float
) -> ClaimPlan:
    """Take the run ``lease`` describes off the schedule before it runs (or instead).

    A one-off job is deleted; a recurring one moves, unlocked, to its first
    run after ``now``. ``run`` is the row as the plan leaves it, ``job`` as it
    was stored (an unreadable schedule parks that).
    """
    if not job.recurring:
        return ClaimPlan("delete", run, lease)
    try:
        following = schedule_from_json(job.schedule).next_run(lease.scheduled_at, now)
    except ScheduleError as exc:
        problem = _problem_text(job.id, [f"schedule is unreadable ({exc})"])
        return _unrunnable_claim(job, now, token, default_lease, problem)
    if following is None:
        return ClaimPlan("delete", run, lease)
    advanced = run.replace(due_at=following, next_run_at=following, attempts=0, locked_by=None)
    return ClaimPlan("advance", advanced, lease)


def _unrunnable_claim(
    job: Job, now: datetime, token: str, default_lease: float, problem: str | None
) -> ClaimPlan:
    """Lease a job that cannot run (as any at-least-once claim would), flagged with ``problem``."""
    scheduled_at = next((t for t in (job.next_run_at, job.due_at) if isinstance(t, datetime)), now)
    attempts = job.attempts if isinstance(job.attempts, int) else 0
    leased = job.replace(
        locked_by=token,
        due_at=now + timedelta(seconds=default_lease),
        next_run_at=scheduled_at,
        attempts=max(attempts, 0) + 1,
        problem=problem or _problem_text(job.id, ["it cannot be run"]),
    )
    lease = Lease(job=leased, scheduled_at=scheduled_at, token=token, skipped=True)
    return ClaimPlan("lease", leased, lease)


# --------------------------------------------------------------------------- completions


def plan_completion(outcome: Outcome) -> CompletionPlan:
    """Decide what finishing a run writes to its row. Never raises.

    A pure function of ``outcome``: a failed run of a job that sets neither
    ``max_retries`` nor ``failure_mode`` follows ``outcome.retry_defaults``
    (bounded retries with backoff, then parked or moved to its next run); a
    job's own ``max_retries`` wins; an explicit ``failure_mode`` alone keeps
    the lease (``'none'``), unlocks (``'unlock'``) or counts the run as done
    (``'commit'``), without limit.
    """
    lease = outcome.lease
    job = lease.job
    if outcome.succeeded and lease.token is not None and not job.recurring:
        return CompletionPlan("delete", job.id, lease.token, {})  # a finished one-off run
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
    try:
        return _plan_completion(outcome, last)
    except Exception as exc:
        error = f"the run ended but its job could not be settled ({type(exc).__name__}: {exc})"
        return _park(job, lease, now, error)


def split_finished(
    outcomes: Iterable[Outcome],
) -> tuple[list[tuple[CompletionPlan, Outcome]], list[Outcome]]:
    """Outcomes whose plan deletes the row under its lease (finished one-off runs), and the rest.

    Stores fold the first kind into their claim call; the rest take :meth:`Repository.complete`.
    """
    finished, others = [], []
    for outcome in outcomes:
        plan = plan_completion(outcome)
        if plan.action == "delete" and plan.token is not None:
            finished.append((plan, outcome))
        else:
            others.append(outcome)
    return finished, others


def _plan_completion(outcome: Outcome, last: dict[str, Any]) -> CompletionPlan:
    lease = outcome.lease
    job = lease.job
    now = outcome.finished_at
    if outcome.permanent and not outcome.succeeded:
        # Parked: no due time, so no daemon claims it until it is retried or replaced.
        values = {"due_at": None, "next_run_at": None, "attempts": job.attempts, **last}
        return CompletionPlan("settle", job.id, lease.token, values)
    if outcome.succeeded:
        return _finish(job, lease, now, last)
    defaults = outcome.retry_defaults
    retries = job.retry_limit(defaults)
    if retries is None:
        # The job chose a failure_mode and no max_retries: that mode decides, unbounded.
        return _plan_failure_mode(job, lease, now, last)
    attempt = job.attempts
    if attempt <= retries:
        backoff, backoff_max = job.backoff(defaults)
        values = {
            "due_at": now + retry_delay(job.id, attempt, backoff, backoff_max),
            "next_run_at": lease.scheduled_at,
            "attempts": attempt,
            **last,
        }
        return CompletionPlan("settle", job.id, lease.token, values)
    if job.recurring and job.retry_exhausted == "advance":
        return _finish(job, lease, now, last)
    values = {"due_at": None, "next_run_at": None, "attempts": attempt, **last}
    return CompletionPlan("settle", job.id, lease.token, values)


def _plan_failure_mode(
    job: Job, lease: Lease, now: datetime, last: dict[str, Any]
) -> CompletionPlan:
    """A failed run of a job whose explicit ``failure_mode`` decides what follows."""
    mode = job.failure_mode
    if mode == "commit":
        return _finish(job, lease, now, last)
    if mode == "unlock":
        values = {
            "due_at": now,
            "next_run_at": lease.scheduled_at,
            "attempts": job.attempts,
            **last,
        }
        return CompletionPlan("settle", job.id, lease.token, values)
    # failure_mode 'none': keep the lease; the run is retried once it expires.
    return CompletionPlan("note", job.id, lease.token, last)


def describe_failure(outcome: Outcome, plan: CompletionPlan) -> tuple[str, str]:
    """``(attempt, next step)`` of a failed run, as the log line says them.

    ``attempt`` is ``'attempt 2 of 6'`` (``'attempt 2'`` when retries are
    unbounded or impossible); the next step is read from ``plan``, the plan
    :func:`plan_completion` made for ``outcome``: ``'retrying at 12:00:05
    UTC'``, ``'parked as failed'``, ``'moved to its next run at ...'``, ...
    """
    lease = outcome.lease
    job = lease.job
    now = outcome.finished_at
    attempt = f"attempt {lease.attempt}"
    if plan.token is None:
        return attempt, "not retried: it is at-most-once (execution_mode='at_most_once')"
    retries = None if outcome.permanent else job.retry_limit(outcome.retry_defaults)
    if retries is not None:
        attempt = f"{attempt} of {retries + 1}"
    values = plan.values
    if plan.action == "delete":
        if job.recurring:
            return attempt, "deleted: its schedule has no further run"
        return attempt, "counted as done and deleted (failure_mode='commit')"
    if plan.action == "note":
        return attempt, "retrying once its lease expires (failure_mode='none')"
    due_at = values.get("due_at")
    if due_at is None:
        return attempt, "parked as failed (see retry_job)"
    if not values.get("attempts"):
        return attempt, f"moved to its next run at {_clock_time(due_at, now)}"
    if retries is None:
        return attempt, "retrying at the next poll (failure_mode='unlock')"
    return attempt, f"retrying at {_clock_time(due_at, now)}"


def _clock_time(when: datetime, now: datetime) -> str:
    """``12:00:05 UTC``, with the date in front when it is not ``now``'s day."""
    when = when.astimezone(timezone.utc)
    if when.date() == now.astimezone(timezone.utc).date():
        return when.strftime("%H:%M:%S UTC")
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _finish(job: Job, lease: Lease, now: datetime, last: dict[str, Any]) -> CompletionPlan:
    """The run is over: delete a one-off job, move a recurring one to its next run."""
    if not job.recurring:
        return CompletionPlan("delete", job.id, lease.token, {})
    try:
        following = schedule_from_json(job.schedule).next_run(lease.scheduled_at, now)
    except ScheduleError as exc:
        error = (
            f"the schedule of job {job.id!r} is unreadable ({exc}); it is parked: add it again "
            "with the same job_id to replace it, or cancel it"
        )
        log.error("%s", error)
        return _park(job, lease, now, error)
    if following is None:
        return CompletionPlan("delete", job.id, lease.token, {})
    values = {"due_at": following, "next_run_at": following, "attempts": 0, **last}
    return CompletionPlan("settle", job.id, lease.token, values)


def _park(job: Job, lease: Lease, now: datetime, error: str) -> CompletionPlan:
    attempts = job.attempts if isinstance(job.attempts, int) else 0
    values = {
        "due_at": None,
        "next_run_at": None,
        "attempts": attempts,
        "last_run_at": now,
        "last_status": STATUS_FAILED,
        "last_error": truncate_error(error),
    }
    return CompletionPlan("settle", job.id, lease.token, values)


# --------------------------------------------------------------------------- staging

#: How the lock of a row staged by a transaction starts (see :meth:`Repository.stage`).
#: Daemons lock rows with tokens of their own, never with this prefix.
STAGED_PREFIX = "staged:"


def staged_job(job: Job, token: str, until: datetime) -> Job:
    """The row that stands for ``job`` while its transaction commits.

    It is locked by ``token`` and due no earlier than ``until``, so no daemon
    claims it before then: like a leased row, it becomes claimable only when
    that "lease" expires. Its ``next_run_at`` keeps the real first run.
    """
    due_at = None if job.due_at is None else max(job.due_at, until)
    return job.replace(locked_by=token, due_at=due_at)


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
        (which starts with :data:`STAGED_PREFIX`) and due no earlier than
        ``window`` seconds after now (the store's clock when it claims by it,
        else ``now``). Announces nothing. Returns the rows that ``jobs``
        replaced and that ``removes`` deleted, as they were, by id.
        """
        until = now + timedelta(seconds=window)
        previous = self.get_many([job.id for job in jobs] + list(removes))
        self.apply([staged_job(job, token, until) for job in jobs], removes)
        return previous

    def publish(self, token: str, jobs: Sequence[Job]) -> None:
        """Make the rows staged with ``token`` claimable: unlocked, due at ``job.due_at``.

        Only rows still locked by ``token`` change (one a daemon claimed after
        the staging window, or that another writer replaced, is left alone).
        Announces the new jobs to listening daemons.
        """
        current = self.get_many([job.id for job in jobs])
        ready = [
            job.replace(locked_by=None)
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
        refuses (see :func:`unwritable_row_values`).
        """
        return isinstance(exc, (ValueError, TypeError, OverflowError)) and not self.is_transient(
            exc
        )

    @abc.abstractmethod
    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Jobs ordered by id, after ``cursor``, optionally of one task."""

    @abc.abstractmethod
    def claim(self, now: datetime, limit: int, token: str, default_lease: float) -> list[Lease]:
        """Atomically take up to ``limit`` jobs due at ``now`` (see :func:`plan_claim`)."""

    @abc.abstractmethod
    def complete(self, outcomes: Sequence[Outcome]) -> None:
        """Apply many outcomes at once (see :func:`plan_completion`)."""

    def complete_and_claim(
        self,
        outcomes: Sequence[Outcome],
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
    ) -> list[Lease]:
        """:meth:`complete` ``outcomes``, then :meth:`claim`; the worker's loop calls this.

        Stores override it to do both in one round trip. If it raises, the
        caller writes the outcomes again later: writing an outcome twice must
        change nothing (every completion is guarded by its lease token).
        """
        if outcomes:
            self.complete(outcomes)
        return self.claim(now, limit, token, default_lease)

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
    def next_due(self) -> datetime | None:
        """The earliest ``due_at`` of any job (leased or not), or None when empty."""

    def next_due_delay(self, now: datetime) -> float | None:
        """Seconds from now until :meth:`next_due` (negative when overdue), None when empty.

        "Now" is the clock claims use: the store's own when
        :attr:`store_clock` is set and the store has one (read in the same
        call as the earliest due time), else ``now``. Comparing a due time
        from one clock with another clock would make a daemon whose clock
        runs ahead of the store's poll without pause.
        """
        due = self.next_due()
        return None if due is None else (due - now).total_seconds()
