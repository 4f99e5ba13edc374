"""The demo's pages: schedule, list, pause, resume and cancel jobs.

The views gather data; ``templates/home.jinja2`` (pyramid_jinja2, with
auto-escaping) shows it. Bad input is answered with the page, the error
message and HTTP 400.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup
from pyramid.csrf import get_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.renderers import render_to_response
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from pyramid_pyncette import InvalidJobError, Job, ScheduleError, Scheduler, UnknownJobError
from pyramid_pyncette.dashboard.present import format_span
from pyramid_pyncette.demo.tasks import flaky, recent_runs, say_hello
from pyramid_pyncette.schedules import schedule_from_json
from pyramid_pyncette.settings import parse_duration

#: Most jobs shown on the page and in ``/jobs.json``.
PAGE_SIZE = 200

#: Longest last error shown in the table (the full text is in the cell's title).
ERROR_PREVIEW = 120

#: Longest accepted name for the hello jobs.
MAX_NAME_LENGTH = 200

#: Initial form values; a form sent back with an error keeps what was typed.
DEFAULTS = {
    "name": "world",
    "delay": "10",
    "interval": "30",
    "cron": "*/1 * * * *",
    "timezone": "",
}


def _scheduler(request: Request) -> Scheduler:
    """The scheduler the views write with: jobs are written iff the request commits."""
    return request.scheduler


def _now(request: Request) -> datetime:
    """The scheduler's current time (UTC)."""
    return request.registry.scheduler.now()


# -- formatting ---------------------------------------------------------------


def _describe(schedule: dict[str, Any]) -> str:
    try:
        return schedule_from_json(schedule).describe()
    except ScheduleError:
        return f"unreadable schedule {schedule!r}"


def _format_time(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = round((value - now).total_seconds())
    if seconds > 0:
        relative = f"in {format_span(seconds)}"
    elif seconds < 0:
        relative = f"{format_span(-seconds)} ago"
    else:
        relative = "now"
    return f"{value:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _error_preview(error: str | None) -> str:
    """The exception line of a stored traceback, shortened."""
    if not error:
        return ""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if len(last) > ERROR_PREVIEW:
        last = last[: ERROR_PREVIEW - 3] + "..."
    return last


def _arguments(job: Job) -> str:
    parts = [json.dumps(arg) for arg in job.args]
    parts += [f"{key}={json.dumps(value)}" for key, value in job.kwargs.items()]
    return ", ".join(parts)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- the page -------------------------------------------------------------------

#: The page's template (Jinja2, auto-escaping).
HOME = "pyramid_pyncette.demo:templates/home.jinja2"


def escape_text(value: Any) -> Any:
    """Escape a value for the page as :func:`html.escape` does (``None`` as nothing).

    The templates' ``finalize``: every ``{{ value }}`` goes through it before
    Jinja2's auto-escaping, which leaves the result alone. Quotes become
    ``&quot;`` and ``&#x27;`` (the standard library's spelling, which the page
    has always used), so an escaped value reads the same in a text node and
    in an attribute. Markup (anything with ``__html__``, such as a macro's
    output) passes as it is.
    """
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _job_row(job: Job, now: datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "task": job.task,
        "arguments": _arguments(job),
        "schedule": _describe(job.schedule),
        "next_run": _format_time(job.next_run_at, now),
        "state": job.state,
        "paused": job.paused,
        "queue": job.queue,
        "attempts": job.attempts,
        "last_run": _format_time(job.last_run_at, now),
        "status": job.last_status or "",
        "error": job.last_error or "",
        "error_preview": _error_preview(job.last_error),
    }


def _run_row(run: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {**run, "ran": _format_time(run["ran_at"], now)}


def page_data(
    request: Request, *, error: str | None = None, values: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What the page shows: the jobs, the recent runs, the forms' values and ``error``."""
    now = _now(request)
    page = _scheduler(request).get_jobs(limit=PAGE_SIZE)
    shown = dict(DEFAULTS)
    if values:
        shown.update({key: value for key, value in values.items() if key in DEFAULTS})
    return {
        "store": request.registry.pyncette_settings.redacted_url(),
        "combined": getattr(request.registry, "pyncette_worker", None) is not None,
        "now": f"{now:%Y-%m-%d %H:%M:%S}",
        "error": error,
        "values": shown,
        "csrf_token": get_csrf_token(request),
        "jobs": [_job_row(job, now) for job in page],
        "more": page.next_cursor is not None,
        "runs": [_run_row(run, now) for run in reversed(recent_runs(request.registry))],
        "dashboard_url": request.route_url("pyncette_dashboard.jobs"),
    }


def render_page(
    request: Request,
    *,
    error: str | None = None,
    values: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    """The home page with HTTP ``status``, optionally showing ``error`` above the forms."""
    response = request.response
    response.status_int = status
    data = page_data(request, error=error, values=values)
    return render_to_response(HOME, data, request, response=response)


# -- views ----------------------------------------------------------------------


@view_config(route_name="home", request_method="GET", renderer=HOME)
def home(request: Request) -> dict[str, Any]:
    """The page."""
    return page_data(request)


def _done(request: Request) -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url("home"))


def _rejected(request: Request, exc: Exception) -> Response:
    return render_page(request, error=str(exc), values=dict(request.POST), status=400)


def _name(request: Request) -> str:
    name = request.POST.get("name", "").strip() or DEFAULTS["name"]
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidJobError(f"name: at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    return name


def _adds_a_job(add: Callable[[Request], object]) -> Callable[[Request], Response]:
    """A form's view: ``add`` schedules what the form asks for, then the page is shown again.

    Bad input (a :class:`ValueError` naming the problem) shows the page with
    that problem and the values typed, with status 400.
    """

    @functools.wraps(add)
    def view(request: Request) -> Response:
        try:
            add(request)
        except ValueError as exc:
            return _rejected(request, exc)
        return _done(request)

    return view


@view_config(route_name="hello_now", request_method="POST")
@_adds_a_job
def hello_now(request: Request) -> None:
    """Say hello as soon as possible (an async job)."""
    _scheduler(request).add_async_job(say_hello, kwargs={"name": _name(request)})


@view_config(route_name="hello_at", request_method="POST")
@_adds_a_job
def hello_at(request: Request) -> None:
    """Say hello once, in a given number of seconds (a date job)."""
    text = request.POST.get("delay", "")
    name = _name(request)
    delay = parse_duration(text, key="delay")
    try:
        date = _now(request) + timedelta(seconds=delay)
    except OverflowError:
        raise InvalidJobError(f"delay: {text!r} is too far in the future") from None
    _scheduler(request).add_date_job(say_hello, date, kwargs={"name": name})


@view_config(route_name="hello_every", request_method="POST")
@_adds_a_job
def hello_every(request: Request) -> None:
    """Say hello every so often (an interval job)."""
    text = request.POST.get("interval", "")
    try:
        name = _name(request)
        _scheduler(request).add_interval_job(say_hello, interval=text, kwargs={"name": name})
    except OverflowError:
        raise InvalidJobError(f"interval: {text!r} is too long") from None


@view_config(route_name="hello_cron", request_method="POST")
@_adds_a_job
def hello_cron(request: Request) -> None:
    """Say hello on a cron schedule."""
    cron = request.POST.get("cron", "").strip()
    zone = request.POST.get("timezone", "").strip() or None
    name = _name(request)
    _scheduler(request).add_cron_job(say_hello, schedule=cron, timezone=zone, kwargs={"name": name})


@view_config(route_name="flaky", request_method="POST")
@_adds_a_job
def run_flaky(request: Request) -> None:
    """Run the task that fails once."""
    _scheduler(request).add_async_job(flaky)


@view_config(route_name="cancel_job", request_method="POST")
def cancel_job(request: Request) -> Response:
    """Cancel (delete) a job."""
    job_id = request.matchdict["id"]
    try:
        existed = _scheduler(request).cancel_job(job_id)
    except ValueError as exc:
        return _rejected(request, exc)
    if not existed:
        return render_page(
            request,
            error=f"No job {job_id!r}: it has finished or was cancelled already.",
            status=404,
        )
    return _done(request)


def _steer(request: Request, lever: Callable[[Scheduler, str], Job]) -> Response:
    """Pull ``lever`` (pause or resume) on the job the URL names, then show the page."""
    job_id = request.matchdict["id"]
    try:
        lever(_scheduler(request), job_id)
    except UnknownJobError:
        return render_page(
            request,
            error=f"No job {job_id!r}: it has finished or was cancelled.",
            status=404,
        )
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="pause_job", request_method="POST")
def pause_job(request: Request) -> Response:
    """Pause a job: no daemon runs it until it is resumed."""
    return _steer(request, Scheduler.pause_job)


@view_config(route_name="resume_job", request_method="POST")
def resume_job(request: Request) -> Response:
    """Resume a paused job: back on its schedule from now on."""
    return _steer(request, Scheduler.resume_job)


@view_config(route_name="jobs_json", request_method="GET", renderer="json")
def jobs_json(request: Request) -> dict[str, Any]:
    """The stored jobs, and the runs made in this process, as JSON."""
    page = _scheduler(request).get_jobs(limit=PAGE_SIZE)
    return {
        "jobs": [
            {
                "id": job.id,
                "task": job.task,
                "schedule": _describe(job.schedule),
                "state": job.state,
                "queue": job.queue,
                "next_run_at": _iso(job.next_run_at),
                "attempts": job.attempts,
                "last_status": job.last_status,
                "last_run_at": _iso(job.last_run_at),
                "last_error": _error_preview(job.last_error) or None,
            }
            for job in page
        ],
        "more": page.next_cursor is not None,
        "recent_runs": [
            {
                **run,
                "scheduled_at": _iso(run["scheduled_at"]),
                "ran_at": _iso(run["ran_at"]),
            }
            for run in recent_runs(request.registry)
        ],
    }
