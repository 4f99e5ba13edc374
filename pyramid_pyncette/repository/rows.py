"""Stored rows: what every store reads back into a job, and writes as text.

Decoding never raises: a row whose values cannot be read (unreadable JSON,
wrong types, an unknown schedule kind, a bad option) becomes a
:class:`~pyramid_pyncette.jobs.Job` whose ``problem`` says why, so one bad
row is parked by the daemon that claims it instead of stopping the others.
:func:`well_formed_job` (and :func:`well_formed_document`, for the stores
that keep a job as a document) is the claim path's fast decoder for rows
that are fine; :func:`decode_job_fields` describes every problem. Text a
store writes (error tracebacks, statuses) goes through :func:`storable_text`.
The stores that keep times as whole microseconds since the epoch read them
with :func:`time_of_micros`, and run records with :func:`run_of_micros`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from ..exceptions import short_repr
from ..jobs import (
    DEFAULT_QUEUE,
    MAX_ERROR_LENGTH,
    QUEUE_NAME,
    STATUS_FAILED,
    Job,
    RunRecord,
    remember_options,
)
from ..options import NO_OPTIONS, JobOptions, options_from_json
from ..schedules import schedule_json_problem

# --------------------------------------------------------------------------- writing rows

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


# --------------------------------------------------------------------------- reading rows

_TIME_FIELDS = ("due_at", "next_run_at", "last_run_at", "created_at")
_TEXT_FIELDS = ("locked_by", "last_status", "last_error")

TimeDecoder = Callable[[Any], "datetime | None"]


class UnreadableJSON:
    """What :func:`load_json` returns for stored text that is not JSON."""

    def __init__(self, text: Any, error: BaseException) -> None:
        self.text = text
        self.error = error

    def __repr__(self) -> str:
        return f"<unreadable JSON {short_repr(self.text)}>"

    def describe(self) -> str:
        """What is wrong with the text, in a line."""
        detail = str(self.error).splitlines()[0] if str(self.error) else type(self.error).__name__
        return f"not valid JSON ({detail}): {short_repr(self.text)}"


def load_json(text: Any) -> Any:
    """``json.loads(text)``; unreadable text becomes an :class:`UnreadableJSON`. Never raises."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except Exception as exc:
        return UnreadableJSON(text, exc)


def loads_stored(text: Any) -> Any:
    """:func:`load_json` with a shortcut for the empty objects most rows store."""
    if text == "{}":
        return {}
    if text == '{"args":[],"kwargs":{}}':
        return {"args": [], "kwargs": {}}
    return load_json(text)


def utc(value: Any) -> Any:
    """A stored time as an aware UTC datetime (naive ones are UTC); other values unchanged."""
    if type(value) is datetime and value.tzinfo is not timezone.utc:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    return value


#: The epoch of the times a store keeps as whole microseconds since it (Redis, DynamoDB).
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def time_of_micros(value: Any) -> datetime | None:
    """A time stored as whole microseconds since :data:`EPOCH` (an ``int``, or its
    digits as text) as an aware UTC datetime; ``None`` stays ``None``.

    Raises ``TypeError`` for any other value (a ``bool``, a ``float``),
    ``ValueError`` for text that is not a whole number and ``OverflowError``
    for a time past what a datetime holds: decoders catch them and describe
    the time as a problem of its job.
    """
    if value is None:
        return None
    if type(value) is str:
        return _time_of_micros_text(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not a time: {short_repr(value)}")
    return EPOCH + timedelta(microseconds=value)


@functools.lru_cache(maxsize=4096)
def _time_of_micros_text(value: str) -> datetime:
    # Jobs added together share their times: a cache spares most conversions.
    return EPOCH + timedelta(microseconds=int(value))


def _what(value: Any) -> str:
    if isinstance(value, UnreadableJSON):
        return value.describe()
    return f"{short_repr(value)} ({type(value).__name__})"


def problem_text(job_id: Any, problems: list[str]) -> str | None:
    """The ``Job.problem`` of a stored job with ``problems``, or None when there are none."""
    if not problems:
        return None
    return (
        f"the stored job {short_repr(job_id)} cannot be run: {'; '.join(problems)}; add it again "
        "with the same job_id to replace it, or cancel it"
    )


def _schedule_problem(schedule: Any) -> str | None:
    if not isinstance(schedule, dict):
        return f"schedule is {_what(schedule)}, not an object with a 'kind'"
    return schedule_json_problem(schedule)


def _options(stored: Any) -> tuple[JobOptions, str | None]:
    if not isinstance(stored, dict):
        return NO_OPTIONS, f"options are {_what(stored)}, not an object"
    return options_from_json(stored)


def job_problem(job: Job) -> str | None:
    """Why the stored ``job`` cannot be run as it is, or None when it can.

    Cheap structural checks, so claims stay fast (a cron expression is
    parsed once per distinct schedule, then cached): the task name, the
    schedule, the arguments, the options. ``job.problem`` (set by
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
    problem = _options(job.options)[1]
    if problem:
        problems.append(problem)
    if isinstance(job.attempts, bool) or not isinstance(job.attempts, int):
        problems.append(f"attempts is {_what(job.attempts)}, not a whole number")
    return problem_text(job.id, problems)


def decode_job_fields(
    fields: Any,
    *,
    job_id: str | None = None,
    decode_time: TimeDecoder | None = None,
    check_queue_name: bool = False,
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

    With ``check_queue_name``, a queue that is text but not a queue name (see
    :data:`~pyramid_pyncette.jobs.QUEUE_NAME`) is replaced by the default
    queue and, when nothing else is wrong, described in ``Job.problem``: the
    stores that name keys or index partitions after queues (Redis, DynamoDB)
    so never name one after garbage.
    """
    try:
        return _decode_job_fields(fields, job_id, decode_time, check_queue_name)
    except Exception as exc:  # a last resort: a job that cannot run, but can be listed
        ident = job_id if isinstance(job_id, str) else "?"
        problem = problem_text(ident, [f"it cannot be decoded ({type(exc).__name__}: {exc})"])
        return Job(id=ident, task="", schedule={}, problem=problem)


def _decode_job_fields(
    fields: Any, job_id: str | None, decode_time: TimeDecoder | None, check_queue_name: bool
) -> Job:
    problems: list[str] = []
    values = _stored_values(fields, problems)
    ident = _decode_id(values, job_id, problems)
    task = _decode_task(values.get("task"), problems)
    schedule = _decode_schedule(values.get("schedule"), problems)
    args, kwargs = _decode_arguments(values, problems)
    options, parsed = _decode_options(values.get("options"), problems)
    times = {
        name: _decode_time(name, values.get(name), decode_time, problems) for name in _TIME_FIELDS
    }

    text = {name: _decode_text(values.get(name)) for name in _TEXT_FIELDS}
    attempts = _decode_attempts(values.get("attempts"), problems)
    partition = _decode_partition(values.get("partition"), problems)
    queue = _decode_queue(values.get("queue", DEFAULT_QUEUE), problems)
    problem = problem_text(ident, problems)
    if check_queue_name and not QUEUE_NAME.fullmatch(queue):
        problem = problem or problem_text(ident, [f"queue is {_what(queue)}, not a queue name"])
        queue = DEFAULT_QUEUE
    job = Job(
        id=ident,
        task=task,
        schedule=schedule,
        args=args,
        kwargs=kwargs,
        options=options,
        attempts=attempts,
        partition=partition,
        queue=queue,
        problem=problem,
        due_at=times["due_at"],
        next_run_at=times["next_run_at"],
        last_run_at=times["last_run_at"],
        created_at=times["created_at"],
        locked_by=text["locked_by"],
        last_status=text["last_status"],
        last_error=text["last_error"],
    )
    remember_options(job, parsed)
    return job


def _stored_values(fields: Any, problems: list[str]) -> dict[str, Any]:
    """``fields`` as a dict, with the fields of a nested ``job`` document merged in."""
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
    return values


def _decode_id(values: dict[str, Any], job_id: str | None, problems: list[str]) -> str:
    ident = job_id if job_id is not None else values.get("id")
    if not isinstance(ident, str):
        problems.append(f"id is {_what(ident)}")
        ident = "" if ident is None else str(ident)
    return ident


def _decode_task(task: Any, problems: list[str]) -> str:
    if not isinstance(task, str) or not task:
        problems.append(f"task is {_what(task)}, not a task name")
        task = task if isinstance(task, str) else ""
    return task


def _decode_schedule(schedule: Any, problems: list[str]) -> dict[str, Any]:
    problem = _schedule_problem(schedule)
    if problem:
        problems.append(problem)
    return schedule if isinstance(schedule, dict) else {}


def _decode_arguments(
    values: dict[str, Any], problems: list[str]
) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)``: stored apart (Redis), or together in ``args`` (the SQL column)."""
    if "kwargs" in values:
        args, kwargs = values.get("args"), values.get("kwargs")
        if args is None:
            args = []
        if kwargs is None:
            kwargs = {}
    else:
        args, kwargs = _split_arguments(values.get("args"), problems)
    if not isinstance(args, list):
        problems.append(f"args are {_what(args)}, not a list")
        args = []
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        problems.append(f"kwargs are {_what(kwargs)}, not an object")
        kwargs = {}
    return args, kwargs


def _split_arguments(combined: Any, problems: list[str]) -> tuple[Any, Any]:
    if combined is None:
        combined = {}
    if not isinstance(combined, dict):
        problems.append(f"arguments are {_what(combined)}, not an object")
        return [], {}
    extra = sorted(str(k) for k in combined if k not in ("args", "kwargs"))
    if extra:
        problems.append(f"arguments have unexpected keys {', '.join(extra)}")
    return combined.get("args", []), combined.get("kwargs", {})


def _decode_options(stored: Any, problems: list[str]) -> tuple[dict[str, Any], JobOptions]:
    if stored is None:
        stored = {}
    parsed, problem = _options(stored)
    if problem:
        problems.append(problem)
    return (stored if isinstance(stored, dict) else {}), parsed


def _decode_time(
    name: str, value: Any, decode_time: TimeDecoder | None, problems: list[str]
) -> datetime | None:
    try:
        if value is not None and not isinstance(value, datetime):
            if decode_time is None:
                raise TypeError(f"not a datetime: {short_repr(value)}")
            value = decode_time(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
    except Exception:
        problems.append(f"{name} is {_what(value)}, not a time")
        return None
    return value


def _decode_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _decode_attempts(value: Any, problems: list[str]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a JSON store may read a count back as 2.0
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"attempts is {_what(value)}, not a whole number >= 0")
        return 0
    return value


def _decode_partition(value: Any, problems: list[str]) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"partition is {_what(value)}, not a whole number")
        return 0
    return value


def _decode_queue(value: Any, problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"queue is {_what(value)}, not a queue name")
        return DEFAULT_QUEUE
    return value


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
    queue: Any = DEFAULT_QUEUE,
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
        or type(queue) is not str
    ):
        return None
    if kwargs and not all(type(key) is str for key in kwargs):
        return None
    if schedule_json_problem(schedule) is not None:
        return None
    parsed, problem = options_from_json(options)
    if problem is not None:
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
        queue=queue,
        problem=None,
    )
    remember_options(job, parsed)
    return job


def well_formed_document(
    job_id: str, document: Mapping[str, Any], decode_time: TimeDecoder
) -> Job | None:
    """:func:`well_formed_job` for a job stored as a document, else ``None``.

    The layout of the stores that keep a job as one document or item (Redis,
    DynamoDB): the run state at its top level (``task``, ``queue``, the times
    ``due_at``, ``next_run_at`` and ``last_run_at``, ``locked_by``,
    ``attempts``, ``last_status``, ``last_error``) and the definition
    (``schedule``, ``args``, ``kwargs``, ``options``, ``created_at``,
    ``partition``) as JSON text under ``job``. ``decode_time`` reads the
    stored times; a time it refuses, a missing queue name or anything
    :func:`well_formed_job` refuses makes this ``None``: the store then
    decodes the document with :func:`decode_job_fields`, which describes
    every problem.
    """
    queue = document.get("queue", DEFAULT_QUEUE)
    definition = loads_stored(document.get("job"))
    if type(definition) is not dict or type(queue) is not str or not QUEUE_NAME.fullmatch(queue):
        return None
    try:
        due_at = decode_time(document.get("due_at"))
        next_run_at = decode_time(document.get("next_run_at"))
        last_run_at = decode_time(document.get("last_run_at"))
        created_at = decode_time(definition.get("created_at"))
    except (TypeError, ValueError, OverflowError):
        return None
    return well_formed_job(
        job_id,
        document.get("task"),
        definition.get("schedule"),
        definition.get("args"),
        definition.get("kwargs"),
        definition.get("options"),
        due_at,
        next_run_at,
        document.get("locked_by"),
        document.get("attempts", 0),
        last_run_at,
        document.get("last_status"),
        document.get("last_error"),
        created_at,
        definition.get("partition"),
        queue,
    )


# --------------------------------------------------------------------------- run records


def run_of_micros(values: Mapping[str, Any], run_id: str) -> RunRecord:
    """The :class:`~pyramid_pyncette.jobs.RunRecord` ``run_id`` from stored ``values``
    whose times are whole microseconds since :data:`EPOCH` (Redis, DynamoDB).

    Raises ``KeyError``, ``TypeError``, ``ValueError`` or ``OverflowError``
    when ``values`` are not those of a run record: the store skips such an
    entry in the history.
    """
    return RunRecord(
        job_id=str(values["job_id"]),
        task=str(values["task"]),
        queue=str(values["queue"]),
        scheduled_at=EPOCH + timedelta(microseconds=values["scheduled_at"]),
        started_at=EPOCH + timedelta(microseconds=values["started_at"]),
        finished_at=EPOCH + timedelta(microseconds=values["finished_at"]),
        attempt=int(values["attempt"]),
        outcome=str(values["outcome"]),
        error=None if values.get("error") is None else str(values["error"]),
        host=str(values.get("host", "")),
        pid=int(values.get("pid") or 0),
        worker=str(values.get("worker", "")),
        id=run_id,
    )
