"""The dashboard's pages and actions.

Pages (GET) return dicts for their templates; actions (POST, CSRF-checked)
call the scheduler API and answer with a redirect to a page that shows what
was done (post-redirect-get), or with a page naming what the scheduler
refused (unknown job, a periodic job's cancel, a paused job's run now) and
an HTTP status saying so. Everything goes through ``registry.scheduler``:
an operator's action is applied at once, never left to the request's
transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pyramid.csrf import get_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.renderers import render_to_response
from pyramid.request import Request
from pyramid.response import Response

from ..exceptions import InvalidJobError, UnknownTaskError
from ..jobs import JOB_STATES, Job, RunRecord
from ..redaction import redact_text
from ..repository.base import RunPage
from ..scheduler import PeriodicJobError, Scheduler, UnknownJobError
from ..settings import PyncetteSettings
from . import RENDERER, ROUTE_PREFIX, metrics_available, metrics_permission, view_permission
from .present import (
    FAILED_OUTCOMES,
    distinct,
    job_details,
    job_row,
    queue_row,
    run_row,
    short_id,
    sort_key_next_run,
)

if TYPE_CHECKING:
    from pyramid.config import Configurator

log = logging.getLogger(__name__)

#: Jobs (and runs) on one page unless ``?limit=`` asks for another number.
PAGE_SIZE = 50

#: The most a page shows (``?limit=`` above it is lowered to it).
MAX_PAGE_SIZE = 500

#: With a state or queue filter, how many store pages one page of jobs may
#: read looking for matches (the store filters only by task); the page then
#: links to the next one.
MAX_SCAN_PAGES = 20

#: How many runs the job page shows.
JOB_RUNS = 25

#: Where the templates are.
TEMPLATES = "pyramid_pyncette.dashboard:templates/"

#: Query parameters of a page that only say what an action did (never carried over).
NOTICE_PARAMS = ("done", "done_job", "done_queue")

#: The messages a page shows after an action, by the ``done`` parameter.
NOTICES = {
    "run": "Job {job} will run now.",
    "paused": "Job {job} is paused.",
    "resumed": "Job {job} is resumed.",
    "cancelled": "Job {job} is cancelled.",
    "queue_paused": "Queue {queue} is paused.",
    "queue_resumed": "Queue {queue} is resumed.",
}

#: The job actions: the form's ``action`` value, the ``done`` code it reports.
JOB_ACTIONS = {"run": "run", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}

#: The queue actions: the form's ``action`` value, the ``done`` code it reports.
QUEUE_ACTIONS = {"pause": "queue_paused", "resume": "queue_resumed"}


def route(name: str) -> str:
    """The full route name of the dashboard page ``name`` (``jobs``, ``job``, ...)."""
    return ROUTE_PREFIX + name


def template(name: str) -> str:
    """The asset spec of the dashboard template ``name``."""
    return f"{TEMPLATES}{name}{RENDERER}"


# --------------------------------------------------------------------------- helpers


class Refusal(Exception):
    """What a page or action answers instead of its result: ``status`` and a message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _scheduler(request: Request) -> Scheduler:
    return request.registry.scheduler


def _notice(request: Request) -> str | None:
    text = NOTICES.get(request.GET.get("done", ""))
    if text is None:
        return None
    # Quoted and shortened: a link can name any id, so the notice never reads as more
    # than a name (the action's own page is where the full id shows).
    job = short_id(request.GET.get("done_job", ""))
    queue = short_id(request.GET.get("done_queue", ""))
    return text.format(job=f"'{job}'", queue=f"'{queue}'")


def _page(request: Request, title: str, active: str = "", **data: Any) -> dict[str, Any]:
    """What every page's template gets besides its own ``data`` (``active``: its tab)."""
    return {
        "title": title,
        "active": active,
        "refresh": False,
        "csrf_token": get_csrf_token(request),
        "notice": _notice(request),
        "store": request.registry.pyncette_settings.redacted_url(),
        "now": _scheduler(request).now().strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nav": [
            ("jobs", "Jobs", request.route_url(route("jobs"))),
            ("runs", "Runs", request.route_url(route("runs"))),
            ("queues", "Queues", request.route_url(route("queues"))),
        ],
        "here": request.path_qs,
        **data,
    }


def _answer(request: Request, refusal: Refusal) -> Response:
    """The message page for ``refusal``, with its status."""
    response = request.response
    response.status_int = refusal.status
    data = _page(request, refusal.title, message=refusal.message, back=_back(request))
    return render_to_response(template("message"), data, request, response=response)


def _back(request: Request) -> str:
    """Where a message page's link leads: the page the form was on, else the jobs."""
    return _return_to(request) or request.route_url(route("jobs"))


def _return_to(request: Request) -> str | None:
    """The form's ``next`` field when it names a dashboard page, else None.

    Only paths below the dashboard are followed, so a forged form cannot
    send the operator elsewhere.
    """
    value = request.POST.get("next", "")
    root = request.route_path(route("jobs"))
    if not value.startswith(root) or "\\" in value or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or ".." in parts.path.split("/"):
        return None
    return value


def _redirect(request: Request, target: str, **notice: str) -> HTTPSeeOther:
    """303 to ``target`` (a path below the dashboard), telling it what was done."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in NOTICE_PARAMS]
    query.extend(notice.items())
    # The path already holds the application's script name (it came from
    # route_path or path_qs), so only the scheme and host go before it.
    location = request.host_url + parts.path
    if query:
        location += "?" + urlencode(query)
    return HTTPSeeOther(location=location)


def refusing(view: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Answer a :class:`Refusal` with the message page, and a store outage with 503.

    A store that cannot be reached (or is misconfigured) is not a crash of
    the dashboard: the operator sees the error, credentials hidden.
    """

    @functools.wraps(view)
    def wrapper(request: Request) -> Any:
        try:
            return view(request)
        except Refusal as refusal:
            return _answer(request, refusal)
        except Exception as exc:
            scheduler = _scheduler(request)
            setup_error = scheduler.describe_setup_error(exc)
            if setup_error is not None:
                # Reached, but not as this application needs it (a table missing
                # or out of date, wrong credentials): say what to fix.
                log.warning("dashboard: the job store is misconfigured: %s", setup_error)
                title = "The job store is not set up for this application"
                return _answer(request, Refusal(503, title, redact_text(setup_error)))
            if not scheduler.is_transient(exc):
                raise
            log.warning("dashboard: the job store failed: %s", redact_text(str(exc)))
            text = redact_text(f"{type(exc).__name__}: {exc}")
            return _answer(request, Refusal(503, "The job store cannot be reached", text))

    return wrapper


def _limit(request: Request) -> int:
    text = request.GET.get("limit", "")
    if not text:
        return PAGE_SIZE
    try:
        value = int(text)
    except ValueError:
        raise Refusal(400, "Bad page size", f"limit: {text!r} is not a number") from None
    if value < 1:
        raise Refusal(400, "Bad page size", f"limit: {value} is not a positive number")
    return min(value, MAX_PAGE_SIZE)


def _bad_filter(exc: Exception) -> Refusal:
    return Refusal(400, "Bad filter", str(exc))


# --------------------------------------------------------------------------- jobs


def root(request: Request) -> HTTPSeeOther:
    """The dashboard's path without its trailing slash: to the Jobs page."""
    return HTTPSeeOther(location=request.route_url(route("jobs")))


def _collect_jobs(
    scheduler: Scheduler, task: str, state: str, queue: str, cursor: str | None, limit: int
) -> tuple[list[Job], str | None]:
    """A page of jobs matching the filters, and the store cursor of the next one.

    The store filters by task; state and queue are matched here, over up to
    :data:`MAX_SCAN_PAGES` store pages of ``limit`` jobs (so a rare match
    may take a few pages to find).
    """
    store_task: str | None = task or None
    local_task: str | None = None
    if store_task is not None and store_task not in scheduler.tasks:
        # Jobs of a task the application no longer registers are still stored.
        store_task, local_task = None, task

    def wanted(job: Job) -> bool:
        return (
            (not state or job.state == state)
            and (not queue or job.queue == queue)
            and (local_task is None or job.task == local_task)
        )

    jobs: list[Job] = []
    for _ in range(MAX_SCAN_PAGES):
        page = scheduler.get_jobs(task=store_task, limit=limit, cursor=cursor)
        jobs.extend(job for job in page if wanted(job))
        cursor = page.next_cursor
        if cursor is None or len(jobs) >= limit:
            break
    return jobs, cursor


@refusing
def jobs(request: Request) -> dict[str, Any]:
    """The Jobs page: filter by state, queue and task, a page at a time, sortable by next run."""
    params = request.GET
    state = params.get("state", "")
    if state and state not in JOB_STATES:
        raise Refusal(400, "Bad filter", f"state: {state!r} is not one of {', '.join(JOB_STATES)}")
    queue = params.get("queue", "").strip()
    task = params.get("task", "").strip()
    sort = "next_run" if params.get("sort") == "next_run" else "id"
    limit = _limit(request)
    cursor = params.get("cursor") or None
    scheduler = _scheduler(request)
    try:
        found, next_cursor = _collect_jobs(scheduler, task, state, queue, cursor, limit)
    except (InvalidJobError, UnknownTaskError) as exc:
        raise _bad_filter(exc) from None
    now = scheduler.now()
    rows = [job_row(job, now) for job in found]
    if sort == "next_run":
        rows.sort(key=sort_key_next_run)
    for row in rows:
        row["url"] = request.route_url(route("job"), _query={"id": row["id"]})
    filters = {"state": state, "queue": queue, "task": task}
    kept = {key: value for key, value in filters.items() if value}
    if limit != PAGE_SIZE:
        kept["limit"] = str(limit)
    sort_query = {**kept, **({"cursor": cursor} if cursor else {})}
    return _page(
        request,
        "Jobs",
        "jobs",
        jobs=rows,
        states=JOB_STATES,
        tasks=distinct(task.name for task in scheduler.tasks),
        filters=filters,
        filtered=bool(state or queue),
        sort=sort,
        sort_urls={
            "id": request.route_url(route("jobs"), _query=sort_query),
            "next_run": request.route_url(route("jobs"), _query={**sort_query, "sort": "next_run"}),
        },
        first_url=(
            request.route_url(route("jobs"), _query={**kept, "sort": sort}) if cursor else None
        ),
        next_url=(
            request.route_url(route("jobs"), _query={**kept, "sort": sort, "cursor": next_cursor})
            if next_cursor
            else None
        ),
        refresh=True,
    )


def _job_id(value: str) -> str:
    if not value:
        raise Refusal(400, "No job named", "Name a job: the page needs its id (?id=...).")
    return value


def _unknown(job_id: str) -> Refusal:
    return Refusal(
        404,
        "No such job",
        f"No job has the id {job_id!r}: it may have finished, been cancelled, or never existed.",
    )


@refusing
def job(request: Request) -> dict[str, Any]:
    """One job: its schedule, arguments, options, last error in full and its run history."""
    job_id = _job_id(request.GET.get("id", ""))
    scheduler = _scheduler(request)
    try:
        found = scheduler.get_job(job_id)
    except InvalidJobError as exc:
        raise Refusal(400, "Bad job id", str(exc)) from None
    if found is None:
        raise _unknown(job_id)
    runs = scheduler.get_runs(job_id=job_id, limit=JOB_RUNS).runs
    paused_queues = scheduler.get_paused_queues()
    now = scheduler.now()
    return _page(
        request,
        f"Job {short_id(job_id)}",
        "jobs",
        job=job_details(found, now, found.queue in paused_queues),
        runs=[run_row(run, now) for run in runs],
        runs_url=request.route_url(route("runs"), _query={"job": job_id}),
        refresh=True,
    )


@refusing
def job_action(request: Request) -> Any:
    """Run now, pause, resume or cancel a job (cancel asks for a confirmation first)."""
    job_id = _job_id(request.POST.get("id", ""))
    action = request.POST.get("action", "")
    if action not in JOB_ACTIONS:
        raise Refusal(
            400, "Unknown action", f"action: {action!r} is not one of {', '.join(JOB_ACTIONS)}"
        )
    scheduler = _scheduler(request)
    if action == "cancel" and request.POST.get("confirm") != "yes":
        return _confirm_cancel(request, job_id)
    try:
        if action == "run":
            scheduler.retry_job(job_id)
        elif action == "pause":
            scheduler.pause_job(job_id)
        elif action == "resume":
            scheduler.resume_job(job_id)
        elif not scheduler.cancel_job(job_id):
            raise _unknown(job_id)
    except UnknownJobError:
        raise _unknown(job_id) from None
    except PeriodicJobError:
        raise Refusal(
            409,
            "This job cannot be cancelled",
            f"Job {job_id!r} belongs to a periodic task declared in the application's code: "
            "every daemon start would add it again. Pause it instead (the pause survives "
            "restarts), or remove the task's declaration from the code.",
        ) from None
    except InvalidJobError as exc:
        raise Refusal(409, "The scheduler refused", str(exc)) from None
    done = JOB_ACTIONS[action]
    if action == "cancel":
        target = _return_to(request)
        if target is None or urlsplit(target).path == request.route_path(route("job")):
            target = request.route_path(route("jobs"))
    else:
        target = _return_to(request) or request.route_path(route("job"), _query={"id": job_id})
    return _redirect(request, target, done=done, done_job=job_id)


def _confirm_cancel(request: Request, job_id: str) -> Response:
    """The page asking whether to cancel ``job_id`` (its form sends ``confirm=yes``)."""
    found = _scheduler(request).get_job(job_id)
    if found is None:
        raise _unknown(job_id)
    data = _page(
        request,
        "Cancel this job?",
        "jobs",
        job=job_row(found, _scheduler(request).now()),
        back=_back(request),
        next=request.POST.get("next", ""),
    )
    return render_to_response(template("confirm"), data, request, response=request.response)


# --------------------------------------------------------------------------- runs


@refusing
def runs(request: Request) -> dict[str, Any]:
    """The Runs page: the recent runs, newest first; failures only on demand; errors shown."""
    params = request.GET
    failures = params.get("failures") == "1"
    job_id = params.get("job", "") or None  # ids may hold spaces: taken as given
    queue = params.get("queue", "").strip() or None
    task = params.get("task", "").strip() or None
    limit = _limit(request)
    cursor = params.get("cursor") or None
    scheduler = _scheduler(request)
    filters: dict[str, Any] = {
        "job_id": job_id,
        "queue": queue,
        "outcome": FAILED_OUTCOMES if failures else None,
    }
    try:
        try:
            page = scheduler.get_runs(task=task, limit=limit, cursor=cursor, **filters)
        except UnknownTaskError:
            if task is None:
                raise
            # The history of a task this application no longer registers is
            # still stored: read it unfiltered, keeping that task's runs.
            page = _runs_of_unregistered_task(scheduler, task, limit, cursor, filters)
    except (InvalidJobError, UnknownTaskError) as exc:
        raise _bad_filter(exc) from None
    except ValueError as exc:  # a cursor that is not one of this store's
        raise Refusal(400, "Bad page", str(exc)) from None
    now = scheduler.now()
    rows = [run_row(run, now) for run in page.runs]
    for row in rows:
        row["job_url"] = request.route_url(route("job"), _query={"id": row["job_id"]})
    filters = {"job": job_id or "", "queue": queue or "", "task": task or ""}
    kept = {key: value for key, value in filters.items() if value}
    if failures:
        kept["failures"] = "1"
    if limit != PAGE_SIZE:
        kept["limit"] = str(limit)
    return _page(
        request,
        "Runs",
        "runs",
        runs=rows,
        failures=failures,
        filters=filters,
        tasks=distinct(task.name for task in scheduler.tasks),
        all_url=request.route_url(
            route("runs"), _query={k: v for k, v in kept.items() if k != "failures"}
        ),
        failures_url=request.route_url(route("runs"), _query={**kept, "failures": "1"}),
        first_url=request.route_url(route("runs"), _query=kept) if cursor else None,
        next_url=(
            request.route_url(route("runs"), _query={**kept, "cursor": page.next_cursor})
            if page.next_cursor
            else None
        ),
        refresh=True,
    )


def _runs_of_unregistered_task(
    scheduler: Scheduler, task: str, limit: int, cursor: str | None, filters: dict[str, Any]
) -> RunPage:
    """A page of the runs of ``task`` read from at most :data:`MAX_SCAN_PAGES` pages of
    the history (the store filters only by registered tasks); its cursor goes on from
    the last page read. Raises UnknownTaskError when those pages hold no run of it and
    the history ends there (the filter names no task, stored or registered)."""
    found: list[RunRecord] = []
    next_cursor = cursor
    for _ in range(MAX_SCAN_PAGES):
        page = scheduler.get_runs(limit=limit, cursor=next_cursor, **filters)
        found.extend(run for run in page.runs if run.task == task)
        next_cursor = page.next_cursor
        if next_cursor is None or len(found) >= limit:
            break
    if not found and next_cursor is None and cursor is None:
        scheduler.tasks.resolve(task)  # raises, naming the close task names
    return RunPage(found, next_cursor)


# --------------------------------------------------------------------------- queues


@refusing
def queues(request: Request) -> dict[str, Any]:
    """The Queues page: each queue's backlog, running jobs and pause, with pause/resume."""
    scheduler = _scheduler(request)
    now = scheduler.now()
    rows = [queue_row(queue, now) for queue in scheduler.get_queues()]
    for row in rows:
        row["jobs_url"] = request.route_url(route("jobs"), _query={"queue": row["name"]})
    return _page(
        request,
        "Queues",
        "queues",
        queues=rows,
        states=JOB_STATES,
        counted=any(row["jobs"] is not None for row in rows),
        aged=any(row["oldest_due"] is not None for row in rows),
        refresh=True,
    )


def metrics(request: Request) -> Response:
    """The store-wide gauges (``pyncette_jobs``, ``pyncette_oldest_due_seconds``) for
    Prometheus, counted at most every few seconds whoever scrapes (see
    :func:`pyramid_pyncette.metrics.store_metrics`). Without prometheus_client:
    501, naming the extra to install."""
    if not metrics_available():
        return Response(
            "prometheus_client is not installed: pip install 'pyramid_pyncette[metrics]'\n",
            status=501,
            content_type="text/plain",
        )
    from ..metrics import StoreCountError, store_metrics

    try:
        body, content_type = store_metrics(_scheduler(request))
    except StoreCountError as exc:
        # A failed scrape (Prometheus' `up` is 0), never gauges that silently vanish.
        return Response(
            f"the job store could not be counted: {exc}\n",
            status=503,
            content_type="text/plain",
        )
    response = Response(body=body, status=200)
    # Prometheus' content type carries its own parameters (version, charset).
    response.headers["Content-Type"] = content_type
    return response


@refusing
def queue_action(request: Request) -> HTTPSeeOther:
    """Pause or resume a queue (applied at once, for every daemon)."""
    name = request.POST.get("queue", "")
    action = request.POST.get("action", "")
    if action not in QUEUE_ACTIONS:
        raise Refusal(
            400, "Unknown action", f"action: {action!r} is not one of {', '.join(QUEUE_ACTIONS)}"
        )
    scheduler = _scheduler(request)
    try:
        if action == "pause":
            scheduler.pause_queue(name)
        else:
            scheduler.resume_queue(name)
    except InvalidJobError as exc:
        raise Refusal(400, "Bad queue name", str(exc)) from None
    target = _return_to(request) or request.route_path(route("queues"))
    return _redirect(request, target, done=QUEUE_ACTIONS[action], done_queue=name)


# --------------------------------------------------------------------------- wiring


def add_views(config: Configurator, settings: PyncetteSettings) -> None:
    """Add the dashboard's routes (below ``pyncette.dashboard.path``), static files and views.

    Every view requires ``pyncette.dashboard.permission`` (see
    :func:`~pyramid_pyncette.dashboard.view_permission`); every POST view
    checks the CSRF token.
    """
    path = settings.dashboard_path
    permission = view_permission(settings)
    config.add_route(route("root"), path)
    config.add_route(route("jobs"), path + "/")
    config.add_route(route("job"), path + "/job")
    config.add_route(route("runs"), path + "/runs")
    config.add_route(route("queues"), path + "/queues")
    config.add_route(route("metrics"), path + "/metrics")
    config.add_static_view(
        path + "/static", "pyramid_pyncette.dashboard:static", permission=permission
    )

    def page(view: Callable[..., Any], name: str, renderer: str | None = None) -> None:
        config.add_view(
            view,
            route_name=route(name),
            request_method="GET",
            renderer=renderer,
            permission=permission,
            http_cache=0,
        )

    def action(view: Callable[..., Any], name: str) -> None:
        config.add_view(
            view,
            route_name=route(name),
            request_method="POST",
            permission=permission,
            require_csrf=True,
        )

    page(root, "root")
    page(jobs, "jobs", template("jobs"))
    page(job, "job", template("job"))
    action(job_action, "job")
    page(runs, "runs", template("runs"))
    page(queues, "queues", template("queues"))
    action(queue_action, "queues")
    config.add_view(
        metrics,
        route_name=route("metrics"),
        request_method="GET",
        permission=metrics_permission(settings),
        http_cache=0,
    )
