"""What the dashboard's pages show: jobs, runs and queues as plain values for templates.

Pure functions (no request, no store). Everything in a job came from the
store and may hold anything: the templates escape it, these functions make
it readable (control characters as backslash escapes, credentials in URLs
inside error texts hidden, see :mod:`pyramid_pyncette.operate`) and never
raise on a row that could not be read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from ..jobs import RUN_FAILED, RUN_LEASE_LOST, Job, QueueInfo, RunRecord
from ..operate import (
    error_headline,
    format_duration,
    job_document,
    run_document,
    terminal_text,
)
from ..redaction import redact_text

#: How many characters of an id a table shows (the full id is in its title).
SHORT_ID = 14

#: How many characters of an error's headline a table shows.
HEADLINE_WIDTH = 100

#: The outcomes the Runs page's "failures" filter shows.
FAILED_OUTCOMES = (RUN_FAILED, RUN_LEASE_LOST)


def short_id(value: Any, keep: int = SHORT_ID) -> str:
    """``value`` cut to ``keep`` characters and an ellipsis when longer, for a table cell."""
    text = terminal_text(value)
    return text if len(text) <= keep + 1 else text[:keep] + "\u2026"


#: The most characters of a job's arguments the Jobs table shows (its page shows them all).
ARGUMENTS_CELL = 200


def _cut(text: str, keep: int) -> str:
    """``text`` (already made safe to show) cut to ``keep`` characters and an ellipsis."""
    return text if len(text) <= keep + 1 else text[:keep] + "\u2026"


def format_span(seconds: float) -> str:
    """A span for humans: ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = round(abs(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def when(value: Any, now: datetime) -> dict[str, str] | None:
    """A stored time as ``{"text": "in 5m", "utc": "2030-01-01 00:05:00 UTC"}``, or None."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    seconds = (value - now).total_seconds()
    if round(seconds) > 0:
        text = f"in {format_span(seconds)}"
    elif round(seconds) < 0:
        text = f"{format_span(seconds)} ago"
    else:
        text = "now"
    return {"text": text, "utc": value.strftime("%Y-%m-%d %H:%M:%S UTC")}


def _json(value: Any, indent: int | None = None) -> str:
    try:
        return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)
    except Exception:
        return terminal_text(repr(value))


def arguments(job: Job) -> str:
    """The job's arguments on one line, as a call shows them: ``1, "a", name="x"``."""
    try:
        parts = [_json(arg) for arg in job.args]
        parts += [f"{key}={_json(value)}" for key, value in job.kwargs.items()]
    except Exception:
        return terminal_text(repr((job.args, job.kwargs)))
    return terminal_text(", ".join(parts))


def full_text(value: Any) -> str:
    """A stored error text in full, credentials hidden, control characters escaped."""
    if not value:
        return ""
    return terminal_text(redact_text(value), multiline=True)


def job_row(job: Job, now: datetime) -> dict[str, Any]:
    """One line of the Jobs table."""
    document = job_document(job)
    return {
        "id": job.id if isinstance(job.id, str) else terminal_text(job.id),
        "short_id": short_id(job.id),
        "task": terminal_text(job.task),
        "queue": terminal_text(job.queue),
        "arguments": _cut(arguments(job), ARGUMENTS_CELL),
        "schedule": document["schedule_description"],
        "next": when(_next_attempt(job), now),
        "state": document["state"],
        "paused": bool(document["paused"]),
        "attempts": document["attempts"],
        "last_run": when(job.last_run_at, now),
        "last_status": terminal_text(job.last_status) if job.last_status else "",
        "error": error_headline(job.last_error, HEADLINE_WIDTH) if job.last_error else "",
    }


def _next_attempt(job: Job) -> Any:
    try:
        return job.next_attempt_at
    except Exception:
        return job.next_run_at


def sort_key_next_run(row: dict[str, Any]) -> tuple[int, str]:
    """Rows by next run, soonest first; jobs with none (paused, failed) last."""
    moment = row["next"]
    return (1, "") if moment is None else (0, moment["utc"])


def job_details(job: Job, now: datetime, queue_paused: bool) -> dict[str, Any]:
    """Everything the job page shows about ``job``."""
    document = job_document(job)
    return {
        **job_row(job, now),
        "queue_paused": queue_paused,
        "schedule_json": _json(document["schedule"], indent=2),
        "args_json": _json(document["args"], indent=2),
        "kwargs_json": _json(document["kwargs"], indent=2),
        "options_json": _json(document["options"], indent=2),
        "next_run": when(job.next_run_at, now),
        "created": when(job.created_at, now),
        "lease_holder": terminal_text(document["lease_holder"] or ""),
        "problem": full_text(document["problem"]),
        "last_error": full_text(job.last_error),
        "recurring": job.recurring,
    }


def run_row(run: RunRecord, now: datetime) -> dict[str, Any]:
    """One line of a runs table (the Runs page, a job's history)."""
    document = run_document(run)
    daemon = f"{run.host}:{run.pid}" if run.host or run.pid else ""
    return {
        "id": terminal_text(document["id"] or ""),
        "job_id": terminal_text(run.job_id),
        "short_job_id": short_id(run.job_id),
        "task": terminal_text(run.task),
        "queue": terminal_text(run.queue),
        "attempt": document["attempt"],
        "outcome": terminal_text(run.outcome),
        "failed": run.outcome in FAILED_OUTCOMES,
        "started": when(run.started_at, now),
        "scheduled": when(run.scheduled_at, now),
        "duration": format_duration(document["duration"]),
        "daemon": terminal_text(daemon),
        "worker": terminal_text(run.worker),
        "headline": error_headline(run.error, HEADLINE_WIDTH) if run.error else "",
        "error": full_text(run.error),
    }


def queue_row(queue: QueueInfo, now: datetime) -> dict[str, Any]:
    """One line of the Queues table.

    ``jobs`` (counts by state) and ``oldest_due`` are shown when the store
    reports them (``QueueInfo.jobs`` and ``QueueInfo.oldest_due_at``).
    """
    counts = getattr(queue, "jobs", None)
    return {
        "name": terminal_text(queue.name),
        "paused": bool(queue.paused),
        "due": queue.due,
        "running": queue.running,
        "jobs": dict(counts) if counts else None,
        "oldest_due": when(getattr(queue, "oldest_due_at", None), now),
    }


def distinct(values: Iterable[str]) -> list[str]:
    """``values`` without repeats, sorted."""
    return sorted(set(values))
