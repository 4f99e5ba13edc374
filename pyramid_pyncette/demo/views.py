"""The demo's pages: schedule, list and cancel jobs.

The page is plain HTML built here; every value that reaches it goes through
:func:`html.escape`. Bad input is answered with the page, the error message
and HTTP 400.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta
from typing import Any

from pyramid.csrf import get_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.response import Response
from pyramid.view import view_config

from pyramid_pyncette import InvalidJobError, ScheduleError
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


def _scheduler(request):
    """The scheduler the views write with: jobs are written iff the request commits."""
    return request.scheduler


def _now(request) -> datetime:
    """The scheduler's current time (UTC)."""
    return request.registry.scheduler.now()


# -- formatting ---------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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
        relative = f"in {_format_span(seconds)}"
    elif seconds < 0:
        relative = f"{_format_span(-seconds)} ago"
    else:
        relative = "now"
    return f"{value:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _format_span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _error_preview(error: str | None) -> str:
    """The exception line of a stored traceback, shortened."""
    if not error:
        return ""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if len(last) > ERROR_PREVIEW:
        last = last[: ERROR_PREVIEW - 3] + "..."
    return last


def _arguments(job) -> str:
    parts = [json.dumps(arg) for arg in job.args]
    parts += [f"{key}={json.dumps(value)}" for key, value in job.kwargs.items()]
    return ", ".join(parts)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- the page -------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
.forms { display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr));
         gap: 1rem; }
fieldset { border: 1px solid #ccc; border-radius: 6px; padding: 0.8rem; height: 100%;
           box-sizing: border-box; }
legend { font-weight: 600; }
label { display: block; margin: 0.3rem 0; }
input[type=text] { width: 100%; box-sizing: border-box; padding: 0.3rem; font: inherit; }
button { margin-top: 0.4rem; padding: 0.3rem 0.8rem; font: inherit; cursor: pointer; }
.hint { color: #666; font-size: 0.9em; margin: 0.4rem 0 0; }
.error { background: #fde8e8; border: 1px solid #e0a0a0; border-radius: 6px;
         padding: 0.6rem 0.8rem; white-space: pre-wrap; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; margin-top: 0.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f5f5f5; }
td.id, td.args { font-family: ui-monospace, monospace; word-break: break-all; }
.failed { color: #a40000; }
.succeeded { color: #1a7f37; }
td form { margin: 0; }
td button { margin: 0; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _form(request, form_id: str, route: str, title: str, fields: str, button: str, hint: str):
    token = get_csrf_token(request)
    return f"""
<form id="{form_id}" method="post" action="{_e(request.route_url(route))}">
  <input type="hidden" name="csrf_token" value="{_e(token)}">
  <fieldset>
    <legend>{_e(title)}</legend>
    {fields}
    <button type="submit">{_e(button)}</button>
    <p class="hint">{hint}</p>
  </fieldset>
</form>"""


def _field(label: str, name: str, values: dict[str, str], placeholder: str = "") -> str:
    extra = f' placeholder="{_e(placeholder)}"' if placeholder else ""
    return (
        f'<label>{_e(label)} <input type="text" name="{_e(name)}" '
        f'value="{_e(values.get(name, ""))}"{extra}></label>'
    )


def _forms(request, values: dict[str, str]) -> str:
    name = _field("Name", "name", values)
    return "\n".join(
        [
            _form(
                request,
                "hello-now",
                "hello_now",
                "Say hello now",
                name,
                "Run now",
                "An async job: runs as soon as a daemon polls.",
            ),
            _form(
                request,
                "hello-at",
                "hello_at",
                "Say hello later",
                name + _field("In (seconds, or e.g. 5m)", "delay", values),
                "Schedule",
                "A date job: runs once at the given time.",
            ),
            _form(
                request,
                "hello-every",
                "hello_every",
                "Say hello repeatedly",
                name + _field("Every (seconds, or e.g. 1m30s)", "interval", values),
                "Schedule",
                "An interval job: runs until cancelled.",
            ),
            _form(
                request,
                "hello-cron",
                "hello_cron",
                "Say hello on a cron schedule",
                name
                + _field("Cron", "cron", values)
                + _field("Time zone", "timezone", values, placeholder="default: pyncette.timezone"),
                "Schedule",
                "A cron job, e.g. <code>*/5 * * * *</code> or <code>0 9 * * mon-fri</code>.",
            ),
            _form(
                request,
                "flaky",
                "flaky",
                "Flaky task",
                "",
                "Run the flaky task",
                "Fails on its first attempt, succeeds on the retry: watch "
                "<em>last status</em> and <em>attempts</em>.",
            ),
        ]
    )


def _jobs_table(request, jobs, more: bool, now: datetime) -> str:
    if not jobs:
        return "<p>No jobs are stored.</p>"
    rows = []
    for job in jobs:
        status = job.last_status or ""
        cancel = (
            f'<form method="post" action="{_e(request.route_url("cancel_job", id=job.id))}">'
            f'<input type="hidden" name="csrf_token" value="{_e(get_csrf_token(request))}">'
            '<button type="submit">Cancel</button></form>'
        )
        rows.append(
            "<tr>"
            f'<td class="id">{_e(job.id)}</td>'
            f"<td>{_e(job.task)}</td>"
            f'<td class="args">{_e(_arguments(job))}</td>'
            f"<td>{_e(_describe(job.schedule))}</td>"
            f"<td>{_e(_format_time(job.next_run_at, now))}</td>"
            f"<td>{_e(job.state)}</td>"
            f"<td>{_e(job.attempts)}</td>"
            f"<td>{_e(_format_time(job.last_run_at, now))}</td>"
            f'<td class="{_e(status)}">{_e(status or "-")}</td>'
            f'<td title="{_e(job.last_error or "")}">{_e(_error_preview(job.last_error))}</td>'
            f"<td>{cancel}</td>"
            "</tr>"
        )
    note = f"<p>Showing the first {len(jobs)} jobs.</p>" if more else ""
    return f"""
<table id="jobs">
  <thead><tr>
    <th>ID</th><th>Task</th><th>Arguments</th><th>Schedule</th><th>Next run</th>
    <th>State</th><th>Attempts</th><th>Last run</th><th>Last status</th><th>Last error</th>
    <th></th>
  </tr></thead>
  <tbody>
  {"".join(rows)}
  </tbody>
</table>{note}"""


def _e_mode(request) -> str:
    """Where this app's jobs run, as page text."""
    if getattr(request.registry, "pyncette_worker", None) is not None:
        return "Jobs run in a worker thread of this process (combined mode)."
    return "Jobs run in a separate daemon: <code>pscheduler &lt;your ini file&gt;</code>."


def _runs_table(request, now: datetime) -> str:
    runs = list(recent_runs(request.registry))
    if not runs:
        return (
            "<p>No job has run in this process. Jobs run by a separate <code>pscheduler</code> "
            "daemon appear in its log and in the <em>last status</em> column above.</p>"
        )
    rows = [
        "<tr>"
        f"<td>{_e(_format_time(run['ran_at'], now))}</td>"
        f'<td class="id">{_e(run["job_id"])}</td>'
        f"<td>{_e(run['task'])}</td>"
        f"<td>{_e(run['attempt'])}</td>"
        f'<td class="{_e(run["outcome"])}">{_e(run["outcome"])}</td>'
        f"<td>{_e(run['detail'])}</td>"
        "</tr>"
        for run in reversed(runs)
    ]
    return f"""
<table id="runs">
  <thead><tr>
    <th>Ran</th><th>Job</th><th>Task</th><th>Attempt</th><th>Outcome</th><th>Detail</th>
  </tr></thead>
  <tbody>{"".join(rows)}</tbody>
</table>"""


def render_page(
    request, *, error: str | None = None, values: dict[str, str] | None = None, status: int = 200
) -> Response:
    """The home page, optionally showing ``error`` above the forms."""
    now = _now(request)
    page = _scheduler(request).get_jobs(limit=PAGE_SIZE)
    jobs = list(page)
    settings = request.registry.pyncette_settings
    shown = dict(DEFAULTS)
    if values:
        shown.update({key: value for key, value in values.items() if key in DEFAULTS})
    alert = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pyramid_pyncette demo</title>
<style>{STYLE}</style>
</head>
<body>
<h1>pyramid_pyncette demo</h1>
<p class="sub">Store: <code>{_e(settings.redacted_url())}</code>.
{_e_mode(request)}
Now: {_e(f"{now:%Y-%m-%d %H:%M:%S}")} UTC.</p>
{alert}
<h2>Schedule a job</h2>
<div class="forms">
{_forms(request, shown)}
</div>
<h2>Jobs</h2>
<p><a href="{_e(request.route_url("home"))}">Refresh</a> &middot;
<a href="{_e(request.route_url("jobs_json"))}">as JSON</a></p>
{_jobs_table(request, jobs, page.next_cursor is not None, now)}
<h2>Recent runs in this process</h2>
{_runs_table(request, now)}
</body>
</html>
"""
    return Response(body, status=status, content_type="text/html", charset="utf-8")


# -- views ----------------------------------------------------------------------


@view_config(route_name="home", request_method="GET")
def home(request):
    """The page."""
    return render_page(request)


def _done(request) -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url("home"))


def _rejected(request, exc: Exception) -> Response:
    return render_page(request, error=str(exc), values=dict(request.POST), status=400)


def _name(request) -> str:
    name = request.POST.get("name", "").strip() or DEFAULTS["name"]
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidJobError(f"name: at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    return name


@view_config(route_name="hello_now", request_method="POST")
def hello_now(request):
    """Say hello as soon as possible (an async job)."""
    try:
        _scheduler(request).add_async_job(say_hello, kwargs={"name": _name(request)})
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="hello_at", request_method="POST")
def hello_at(request):
    """Say hello once, in a given number of seconds (a date job)."""
    text = request.POST.get("delay", "")
    try:
        name = _name(request)
        delay = parse_duration(text, key="delay")
        try:
            date = _now(request) + timedelta(seconds=delay)
        except OverflowError:
            raise InvalidJobError(f"delay: {text!r} is too far in the future") from None
        _scheduler(request).add_date_job(say_hello, date, kwargs={"name": name})
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="hello_every", request_method="POST")
def hello_every(request):
    """Say hello every so often (an interval job)."""
    text = request.POST.get("interval", "")
    try:
        name = _name(request)
        _scheduler(request).add_interval_job(say_hello, interval=text, kwargs={"name": name})
    except OverflowError:
        return _rejected(request, InvalidJobError(f"interval: {text!r} is too long"))
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="hello_cron", request_method="POST")
def hello_cron(request):
    """Say hello on a cron schedule."""
    cron = request.POST.get("cron", "").strip()
    zone = request.POST.get("timezone", "").strip() or None
    try:
        name = _name(request)
        _scheduler(request).add_cron_job(
            say_hello, schedule=cron, timezone=zone, kwargs={"name": name}
        )
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="flaky", request_method="POST")
def run_flaky(request):
    """Run the task that fails once."""
    try:
        _scheduler(request).add_async_job(flaky)
    except ValueError as exc:
        return _rejected(request, exc)
    return _done(request)


@view_config(route_name="cancel_job", request_method="POST")
def cancel_job(request):
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


@view_config(route_name="jobs_json", request_method="GET", renderer="json")
def jobs_json(request):
    """The stored jobs, and the runs made in this process, as JSON."""
    page = _scheduler(request).get_jobs(limit=PAGE_SIZE)
    return {
        "jobs": [
            {
                "id": job.id,
                "task": job.task,
                "schedule": _describe(job.schedule),
                "state": job.state,
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
