"""Showing jobs, runs and queues to operators: lines for the terminal, documents for JSON.

Pure functions from :class:`~pyramid_pyncette.jobs.Job`,
:class:`~pyramid_pyncette.jobs.RunRecord` and
:class:`~pyramid_pyncette.jobs.QueueInfo` to text or to plain data;
``pscheduler`` prints what they return (they never touch a store).
Everything in a job came from the store and may hold anything: control
characters and escape sequences are shown as backslash escapes so they can
neither break a table nor drive the terminal, credentials in URLs inside
error texts are hidden (see :func:`~pyramid_pyncette.redaction.redact_text`),
and a job whose row could not be read (``Job.problem``) is shown as well as
its values allow, never raising.

The JSON form of a job (:func:`job_document`) has these keys, always all of
them: ``id``, ``task``, ``queue``, ``state``, ``paused``, ``schedule`` (the stored schedule object),
``schedule_description``, ``next_attempt_at`` (when it is next tried: the
retry time while retrying), ``next_run_at`` (the scheduled time of its run),
``args``, ``kwargs``, ``options``, ``attempts``, ``last_run_at``,
``last_status``, ``last_error`` (in full), ``created_at``, ``lease_holder``
(the daemon's lease token while running, else ``null``) and ``problem``
(``null`` unless the row is unreadable). A run (:func:`run_document`) has
``id``, ``job_id``, ``task``, ``queue``, ``scheduled_at``, ``started_at``,
``finished_at``, ``duration`` (seconds), ``attempt``, ``outcome``, ``error``,
``host``, ``pid`` and ``worker``; a queue (:func:`queue_document`) ``name``,
``paused``, ``due`` and ``running``. Times are ISO 8601 in UTC, or ``null``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from .jobs import JOB_STATES, Job, QueueInfo, RunRecord
from .redaction import redact_text
from .schedules import ScheduleError, schedule_from_json

__all__ = [
    "JOB_STATES",
    "LIST_COLUMNS",
    "QUEUE_COLUMNS",
    "RUN_COLUMNS",
    "describe_schedule",
    "dump_json",
    "error_headline",
    "format_duration",
    "format_time",
    "iso_time",
    "job_change",
    "job_details",
    "job_document",
    "job_row",
    "jobs_document",
    "jobs_table",
    "queue_document",
    "queue_row",
    "queues_document",
    "queues_table",
    "run_document",
    "run_row",
    "runs_document",
    "runs_table",
    "terminal_text",
]

#: The header of ``pscheduler --list``.
LIST_COLUMNS = ("ID", "TASK", "QUEUE", "SCHEDULE", "NEXT RUN", "STATE", "LAST", "LAST ERROR")

#: The header of ``pscheduler --runs`` (and of the runs ``--show`` prints).
RUN_COLUMNS = (
    "WHEN",
    "JOB",
    "TASK",
    "QUEUE",
    "ATTEMPT",
    "OUTCOME",
    "DURATION",
    "DAEMON",
    "ERROR",
)

#: The header of ``pscheduler --queues``: the queue's pause, its backlog (DUE),
#: then its jobs counted by state, and the earliest due time of its waiting jobs
#: (in the past: how late the queue runs).
QUEUE_COLUMNS = (
    "NAME",
    "PAUSED",
    "DUE",
    "RUNNING",
    "SCHEDULED",
    "RETRYING",
    "FAILED",
    "PAUSED JOBS",
    "FIRST DUE",
)

#: The state counted in each count column of :data:`QUEUE_COLUMNS`.
_COUNTED_STATES = ("scheduled", "retrying", "failed", "paused")

#: How many characters of an error's headline the ``LAST ERROR`` column shows.
ERROR_COLUMN_WIDTH = 60

# Characters that move the cursor, erase, start escape sequences or reorder
# text on a terminal: C0 and C1 controls, DEL, line and paragraph
# separators, and the bidirectional overrides and isolates.
_OTHER_UNSAFE = r"\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_LINE = re.compile(rf"[\x00-\x1f{_OTHER_UNSAFE}]")
# Multi-line text keeps its newlines and tabs.
_UNSAFE_IN_TEXT = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHER_UNSAFE}]")

_TRACEBACK_START = "Traceback (most recent call last):"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(value: Any, multiline: bool = False) -> str:
    """``value`` as text safe to print: unsafe characters become backslash escapes.

    One line unless ``multiline``, which keeps newlines and tabs (and
    escapes everything else a terminal would act on, carriage returns too).
    Never raises.
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    if multiline:
        return _UNSAFE_IN_TEXT.sub(_escape, text.replace("\r\n", "\n"))
    return _UNSAFE_IN_LINE.sub(_escape, text)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def error_headline(error: Any, width: int = ERROR_COLUMN_WIDTH) -> str:
    """The line that names an error, shortened to ``width`` and safe to print; ``-`` if none.

    For a text that starts with a Python traceback (whole, or cut from the
    front as stores keep long ones) that is its exception line, its last
    unindented line; for any other text (a run record's error starts with
    its exception line), its first non-empty line.
    """
    if not error:
        return "-"
    text = redact_text(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "-"
    headline = lines[0]
    # A traceback names its exception last; a run record's error puts that
    # line first (then the traceback), like any other text.
    if lines[0].lstrip().startswith(_TRACEBACK_START) or text.startswith("..."):
        unindented = [line for line in lines if not line[:1].isspace()]
        headline = unindented[-1] if unindented else lines[-1]
    return _shorten(terminal_text(headline.strip()), width)


def format_time(value: Any) -> str:
    """A stored time for the terminal (``2026-01-02 03:04:05 UTC``), ``-`` if unset."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return terminal_text(repr(value))


def iso_time(value: Any) -> str | None:
    """A stored time in ISO 8601 UTC for JSON; ``None`` if unset or not a time."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def describe_schedule(data: Any) -> str:
    """The schedule's one-line description (``every 30s``), or ``unreadable ...``."""
    try:
        return terminal_text(schedule_from_json(data).describe())
    except ScheduleError:
        return terminal_text(f"unreadable {data!r}")
    except Exception:
        return "unreadable"


def _last(job: Job) -> str:
    last = terminal_text(job.last_status) if job.last_status else "-"
    if job.attempts and isinstance(job.attempts, int):
        last = f"{last} (attempt {job.attempts})"
    return last


def _state(job: Job) -> str:
    try:
        return job.state
    except Exception:
        return "unreadable"


def _next_attempt(job: Job) -> Any:
    try:
        return job.next_attempt_at
    except Exception:
        return job.next_run_at


def job_row(job: Job) -> tuple[str, ...]:
    """The cells of ``job``'s line in ``pscheduler --list`` (see :data:`LIST_COLUMNS`)."""
    return (
        terminal_text(job.id),
        terminal_text(job.task),
        terminal_text(job.queue),
        describe_schedule(job.schedule),
        # A retrying job's next run is its retry, not its scheduled time.
        format_time(_next_attempt(job)),
        _state(job),
        _last(job),
        error_headline(job.last_error),
    )


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]], empty: str) -> list[str]:
    """``header`` and ``rows`` as aligned lines (two spaces apart), or ``[empty]``."""
    lines = [header, *rows]
    if len(lines) == 1:
        return [empty]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    ]


def jobs_table(jobs: Iterable[Job]) -> list[str]:
    """The lines of ``pscheduler --list``: a header and a line per job, or ``no jobs``."""
    return _table(LIST_COLUMNS, (job_row(job) for job in jobs), "no jobs")


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_fallback)
    except Exception:
        return terminal_text(repr(value))


def _fallback(value: Any) -> str:
    # A value no JSON can hold (an unreadable stored text): its repr.
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _lease_holder(job: Job) -> str | None:
    return job.locked_by if _state(job) == "running" else None


def _paused(job: Job) -> bool | None:
    try:
        return job.paused
    except Exception:
        return None


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def job_details(
    job: Job, runs: Sequence[RunRecord] | None = None, queue_paused: bool = False
) -> list[str]:
    """The lines of ``pscheduler --show``: every field of ``job``, its last error in full.

    ``queue_paused`` says the job's queue is paused (its queue line says so).
    ``runs`` (newest first), when given, come as a table under ``runs:``,
    before the last error.
    """
    queue = terminal_text(job.queue)
    fields: list[tuple[str, str]] = [
        ("id", terminal_text(job.id)),
        ("task", terminal_text(job.task)),
        ("queue", f"{queue} (paused)" if queue_paused else queue),
        ("state", _state(job)),
        ("paused", _yes_no(_paused(job))),
        ("schedule", describe_schedule(job.schedule)),
        ("next run", format_time(_next_attempt(job))),
        ("args", terminal_text(_json_text(job.args))),
        ("kwargs", terminal_text(_json_text(job.kwargs))),
        ("options", terminal_text(_json_text(job.options))),
        ("attempts", terminal_text(job.attempts)),
        ("last run", format_time(job.last_run_at)),
        ("last status", terminal_text(job.last_status) if job.last_status else "-"),
        ("created at", format_time(job.created_at)),
    ]
    holder = _lease_holder(job)
    if holder is not None:
        fields.append(("lease holder", terminal_text(holder)))
    if job.problem:
        fields.append(("problem", terminal_text(redact_text(job.problem))))
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in fields]
    if runs is not None:
        if runs:
            lines.append(f"runs (last {len(runs)}, newest first):")
            lines.extend(f"    {line}" for line in runs_table(runs, one_job=True))
        else:
            lines.append(f"{'runs:':<{width}}-")
    if job.last_error:
        lines.append("last error:")
        error = terminal_text(redact_text(job.last_error), multiline=True)
        lines.extend(f"    {line}" for line in error.splitlines())
    else:
        lines.append(f"{'last error:':<{width}}-")
    return lines


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (an unreadable stored value becomes its repr)."""
    try:
        json.dumps(value)
    except Exception:
        return _fallback(value)
    return value


def job_document(job: Job) -> dict[str, Any]:
    """``job`` as a JSON object with stable keys (see the module documentation)."""
    attempts = job.attempts if isinstance(job.attempts, int) else None
    return {
        "id": _plain(job.id),
        "task": _plain(job.task),
        "queue": _plain(job.queue),
        "state": _state(job),
        "paused": _paused(job),
        "schedule": _plain(job.schedule),
        "schedule_description": describe_schedule(job.schedule),
        "next_attempt_at": iso_time(_next_attempt(job)),
        "next_run_at": iso_time(job.next_run_at),
        "args": _plain(job.args),
        "kwargs": _plain(job.kwargs),
        "options": _plain(job.options),
        "attempts": attempts,
        "last_run_at": iso_time(job.last_run_at),
        "last_status": _plain(job.last_status),
        "last_error": None if job.last_error is None else redact_text(job.last_error),
        "created_at": iso_time(job.created_at),
        "lease_holder": _lease_holder(job),
        "problem": None if job.problem is None else redact_text(job.problem),
    }


def dump_json(document: Any) -> str:
    """``document`` as one JSON text, ASCII only (so no stored character reaches the
    terminal unescaped); keys in a stable order."""
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=True, default=_fallback)


def jobs_document(jobs: Sequence[Job]) -> dict[str, Any]:
    """The JSON document of ``pscheduler --list --json``: ``{"jobs": [...]}``."""
    return {"jobs": [job_document(job) for job in jobs]}


def job_change(job: Job, done: str) -> str:
    """The line ``pscheduler`` prints after changing ``job``: what was ``done``, the
    job's new state and its next run (``job 'x' paused: state paused, next run -``)."""
    return (
        f"job {terminal_text(repr(job.id))} {done}: state {_state(job)}, "
        f"next run {format_time(_next_attempt(job))}"
    )


# --------------------------------------------------------------------------- runs


def format_duration(seconds: Any) -> str:
    """A run's duration for the terminal: ``0.042s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _duration(run: RunRecord) -> float | None:
    try:
        return run.duration
    except Exception:
        return None


def _daemon(run: RunRecord) -> str:
    if not run.host and not run.pid:
        return "-"
    return terminal_text(f"{run.host}:{run.pid}")


def run_row(run: RunRecord) -> tuple[str, ...]:
    """The cells of ``run``'s line in ``pscheduler --runs`` (see :data:`RUN_COLUMNS`)."""
    return (
        format_time(run.started_at),
        terminal_text(run.job_id),
        terminal_text(run.task),
        terminal_text(run.queue),
        terminal_text(run.attempt),
        terminal_text(run.outcome),
        format_duration(_duration(run)),
        _daemon(run),
        error_headline(run.error),
    )


# The columns of the runs ``pscheduler --show`` prints: its job, task and
# queue are the job's own, already shown above them.
_ONE_JOB_RUN_COLUMNS = (0, 4, 5, 6, 7, 8)


def runs_table(runs: Iterable[RunRecord], one_job: bool = False) -> list[str]:
    """The lines of ``pscheduler --runs``: a header and a line per run, or ``no runs``.

    ``one_job`` leaves out the JOB, TASK and QUEUE columns (the runs of one
    job, as ``pscheduler --show`` prints them).
    """
    rows: Iterable[tuple[str, ...]] = (run_row(run) for run in runs)
    header: tuple[str, ...] = RUN_COLUMNS
    if one_job:
        header = tuple(header[i] for i in _ONE_JOB_RUN_COLUMNS)
        rows = (tuple(row[i] for i in _ONE_JOB_RUN_COLUMNS) for row in rows)
    return _table(header, rows, "no runs")


def run_document(run: RunRecord) -> dict[str, Any]:
    """``run`` as a JSON object with stable keys (see the module documentation)."""
    return {
        "id": _plain(run.id),
        "job_id": _plain(run.job_id),
        "task": _plain(run.task),
        "queue": _plain(run.queue),
        "scheduled_at": iso_time(run.scheduled_at),
        "started_at": iso_time(run.started_at),
        "finished_at": iso_time(run.finished_at),
        "duration": _duration(run),
        "attempt": run.attempt if isinstance(run.attempt, int) else None,
        "outcome": _plain(run.outcome),
        "error": None if run.error is None else redact_text(run.error),
        "host": _plain(run.host),
        "pid": run.pid if isinstance(run.pid, int) else None,
        "worker": _plain(run.worker),
    }


def runs_document(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """The JSON document of ``pscheduler --runs --json``: ``{"runs": [...]}``, newest first."""
    return {"runs": [run_document(run) for run in runs]}


# --------------------------------------------------------------------------- queues


def queue_row(queue: QueueInfo) -> tuple[str, ...]:
    """The cells of ``queue``'s line in ``pscheduler --queues`` (see :data:`QUEUE_COLUMNS`)."""
    return (
        terminal_text(queue.name),
        _yes_no(queue.paused),
        terminal_text(queue.due),
        terminal_text(queue.running),
        # "-": a QueueInfo built without counts (every store counts them).
        *(
            terminal_text(queue.jobs.get(state, 0)) if queue.jobs else "-"
            for state in _COUNTED_STATES
        ),
        format_time(queue.oldest_due_at),
    )


def queues_table(queues: Iterable[QueueInfo]) -> list[str]:
    """The lines of ``pscheduler --queues``: a header and a line per queue, or ``no queues``."""
    return _table(QUEUE_COLUMNS, (queue_row(queue) for queue in queues), "no queues")


def queue_document(queue: QueueInfo) -> dict[str, Any]:
    """``queue`` as a JSON object: ``name``, ``paused``, ``due``, ``running``,
    ``jobs`` (a count per state) and ``oldest_due_at``."""
    return {
        "name": _plain(queue.name),
        "paused": bool(queue.paused),
        "due": queue.due,
        "running": queue.running,
        "jobs": dict(queue.jobs),
        "oldest_due_at": iso_time(queue.oldest_due_at),
    }


def queues_document(queues: Sequence[QueueInfo]) -> dict[str, Any]:
    """The JSON document of ``pscheduler --queues --json``: ``{"queues": [...]}``."""
    return {"queues": [queue_document(queue) for queue in queues]}
