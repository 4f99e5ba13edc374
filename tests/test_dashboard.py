"""The operator dashboard (``pyramid_pyncette.dashboard``): every page and action over HTTP.

Each test builds an application with the dashboard included, a security
policy granting (or refusing) its permission and cookie-kept CSRF tokens, on
the memory store and on SQLite (one test renders every page on every store),
on a fake clock; webtest drives it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pyramid import testing as pyramid_testing
from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.exceptions import ConfigurationError
from pyramid.security import Allowed, Denied
from webtest import TestApp

from pyramid_pyncette.testing import FakeClock, run_pending

START = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

HOSTILE = "<script>alert('x')</script>"


class Grants:
    """A security policy that grants exactly the permissions it is given, to anyone."""

    def __init__(self, *permissions: str) -> None:
        self.permissions = set(permissions)

    def identity(self, request: Any) -> None:
        return None

    def authenticated_userid(self, request: Any) -> None:
        return None

    def permits(self, request: Any, context: Any, permission: str) -> Any:
        if permission in self.permissions:
            return Allowed(f"granted {permission}")
        return Denied(f"{permission} is not granted")

    def remember(self, request: Any, userid: Any, **kw: Any) -> list[Any]:
        return []

    def forget(self, request: Any, **kw: Any) -> list[Any]:
        return []


def record(request: Any, *args: Any, **kwargs: Any) -> str:
    return "ok"


def fail(request: Any, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError(f"boom {HOSTILE}")


def tick(request: Any) -> None:
    return None


@dataclass
class Dashboard:
    """An application with the dashboard, and the handles the tests use."""

    web: TestApp
    registry: Any
    clock: FakeClock

    @property
    def scheduler(self) -> Any:
        return self.registry.scheduler

    def run_pending(self) -> int:
        return run_pending(self.registry, self.clock())

    def page(self, path: str = "/pyncette/", **kw: Any) -> Any:
        return self.web.get(path, **kw)

    def csrf_token(self) -> str:
        """The CSRF token the dashboard's forms carry (kept in a cookie)."""
        self.page()
        return self.web.cookies["csrf_token"]

    def post_job(self, job_id: str, action: str, expect_errors: bool = False, **extra: str):
        fields = {"csrf_token": self.csrf_token(), "id": job_id, "action": action, **extra}
        return self.web.post("/pyncette/job", fields, expect_errors=expect_errors)

    def post_queue(self, name: str, action: str, expect_errors: bool = False):
        fields = {"csrf_token": self.csrf_token(), "queue": name, "action": action}
        return self.web.post("/pyncette/queues", fields, expect_errors=expect_errors)


def _token(res: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', res.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


DASHBOARD_STORES: dict[str, Callable[[Path], dict[str, str]]] = {
    "memory": lambda tmp_path: {"pyncette.url": "memory://"},
    "sqlite": lambda tmp_path: {"pyncette.url": f"sqlite:///{tmp_path}/jobs.sqlite"},
}


@pytest.fixture(params=list(DASHBOARD_STORES))
def dashboard_store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings of a fresh memory or SQLite store."""
    return DASHBOARD_STORES[request.param](tmp_path)


MakeDashboard = Callable[..., Dashboard]


@pytest.fixture
def make_dashboard(dashboard_store: dict[str, str]) -> Iterator[MakeDashboard]:
    """``make_dashboard(settings=None, policy=Grants('pyncette.admin'), store=None)``.

    A real :class:`~pyramid.config.Configurator` (not ``pyramid.testing``'s),
    so that refusals are answered as an application answers them (403, 400...).
    """
    built: list[Dashboard] = []

    def build(
        settings: dict[str, str] | None = None,
        policy: Any = "default",
        store: dict[str, str] | None = None,
        periodic: bool = False,
        reachable: bool = True,
    ) -> Dashboard:
        values = {**(store or dashboard_store), **(settings or {})}
        config = Configurator(settings=values)
        config.include("pyramid_tm")
        config.include("pyramid_pyncette.dashboard")
        if policy == "default":
            policy = Grants("pyncette.admin")
        if policy is not None:
            config.set_security_policy(policy)
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
        config.add_pyncette_task(record, name="record")
        config.add_pyncette_task(fail, name="fail", max_retries=0)
        if periodic:
            config.add_pyncette_task(tick, name="tick", interval=60)
        app = config.make_wsgi_app()
        clock = FakeClock(START)
        app.registry.scheduler.clock = clock
        if reachable:
            app.registry.scheduler.repository.store_clock = False
        dashboard = Dashboard(TestApp(app), app.registry, clock)
        if reachable:  # closing a store that never connected tries to connect
            built.append(dashboard)
        return dashboard

    yield build

    for dashboard in built:
        dashboard.scheduler.repository.close()


@pytest.fixture
def dash(make_dashboard: MakeDashboard) -> Dashboard:
    """The dashboard of an application whose policy grants ``pyncette.admin`` to all."""
    return make_dashboard()


def _rows(res: Any) -> list[str]:
    """The job ids of the Jobs table's rows, in order."""
    return [row.attrs["data-job-id"] for row in res.html.select("table.jobs tr[data-job-id]")]


def _state_of(res: Any, job_id: str) -> str:
    row = res.html.select_one(f'tr[data-job-id="{job_id}"]')
    return row.select_one("td.state").get_text(strip=True)


def _add(dash: Dashboard, job_id: str, interval: int = 60, **kw: Any) -> Any:
    return dash.scheduler.add_interval_job("record", interval=interval, job_id=job_id, **kw)


# --------------------------------------------------------------------------- the Jobs page


def test_jobs_page_lists_each_job_with_its_state_and_action_buttons(dash):
    _add(dash, "alpha", queue="mail")
    dash.scheduler.add_date_job("record", START + timedelta(minutes=5), job_id="beta")
    dash.scheduler.pause_job("beta")
    res = dash.page()
    assert res.status_int == 200
    assert _rows(res) == ["alpha", "beta"]
    assert _state_of(res, "alpha") == "scheduled"
    assert _state_of(res, "beta") == "paused"
    alpha = res.html.select_one('tr[data-job-id="alpha"]')
    assert alpha.select_one("td.queue").get_text(strip=True) == "mail"
    assert alpha.select_one("td.schedule").get_text(strip=True).startswith("every 1m")
    assert alpha.select_one("td.next time").get_text(strip=True) == "in 60s"
    alpha_buttons = [b.attrs["value"] for b in alpha.select('button[name="action"]')]
    assert alpha_buttons == ["run", "pause", "cancel"]
    beta = res.html.select_one('tr[data-job-id="beta"]')
    assert [b.attrs["value"] for b in beta.select('button[name="action"]')] == [
        "resume",
        "cancel",
    ]


def test_dashboard_path_without_slash_redirects_to_the_jobs_page(dash):
    res = dash.page("/pyncette")
    assert res.status_int == 303
    assert res.location == "http://localhost/pyncette/"


def test_jobs_page_says_when_no_job_is_stored(dash):
    assert "No jobs are stored." in dash.page().text


def test_jobs_filter_by_state(dash):
    for name in ("a", "b", "c"):
        _add(dash, name)
    dash.scheduler.pause_job("b")
    assert _rows(dash.page(params={"state": "paused"})) == ["b"]
    assert _rows(dash.page(params={"state": "scheduled"})) == ["a", "c"]


def test_jobs_filter_by_queue(dash):
    _add(dash, "a", queue="mail")
    _add(dash, "b")
    _add(dash, "c", queue="mail")
    assert _rows(dash.page(params={"queue": "mail"})) == ["a", "c"]


def test_jobs_filter_by_task(dash):
    _add(dash, "a")
    dash.scheduler.add_interval_job("fail", interval=60, job_id="b")
    assert _rows(dash.page(params={"task": "fail"})) == ["b"]
    assert _rows(dash.page(params={"task": "record"})) == ["a"]


def test_jobs_filter_by_a_task_no_longer_registered_finds_nothing_without_error(dash):
    _add(dash, "a")
    res = dash.page(params={"task": "gone"})
    assert res.status_int == 200
    assert _rows(res) == []
    assert "No job on this page matches the filters." in res.text


def test_jobs_filter_by_unknown_state_is_refused_with_400(dash):
    res = dash.page(params={"state": "sleeping"}, status=400)
    assert "state: &#39;sleeping&#39; is not one of scheduled, running" in res.text


def test_jobs_are_paged_with_the_store_cursor(dash):
    names = [f"job{i}" for i in range(7)]
    for name in names:
        _add(dash, name)
    seen = []
    res = dash.page(params={"limit": "3"})
    pages = 0
    assert res.html.select_one("a.first") is None
    while True:
        pages += 1
        seen.extend(_rows(res))
        link = res.html.select_one("a.next")
        if link is None:
            break
        assert "cursor=" in link.attrs["href"]
        assert "limit=3" in link.attrs["href"]
        res = dash.web.get(link.attrs["href"])
        assert res.html.select_one("a.first") is not None
    assert pages == 3
    assert seen == names


def test_a_state_filter_reads_further_store_pages_for_its_matches(dash):
    for i in range(9):
        _add(dash, f"job{i}")
    dash.scheduler.pause_job("job7")
    dash.scheduler.pause_job("job8")
    # Store pages of 2 jobs: the two paused jobs are on the fourth and fifth.
    res = dash.page(params={"state": "paused", "limit": "2"})
    assert _rows(res) == ["job7", "job8"]


def test_jobs_sort_by_next_run_within_the_page(dash):
    _add(dash, "a", interval=300)
    _add(dash, "b", interval=30)
    _add(dash, "c", interval=120)
    dash.scheduler.add_date_job("record", START + timedelta(hours=1), job_id="d")
    dash.scheduler.pause_job("d")
    res = dash.page()
    assert _rows(res) == ["a", "b", "c", "d"]
    res = dash.web.get(res.html.select_one("a.sort-next-run").attrs["href"])
    assert _rows(res) == ["b", "c", "a", "d"]
    assert res.html.select_one('#job-filters input[name="sort"]').attrs["value"] == "next_run"


def test_long_ids_are_shortened_with_the_full_id_in_the_title(dash):
    long_id = "nightly-report-for-customer-0123456789"
    _add(dash, long_id)
    res = dash.page()
    link = res.html.select_one(f'tr[data-job-id="{long_id}"] td.id a')
    assert link.attrs["title"] == long_id
    assert link.get_text() == long_id[:14] + "\u2026"


# --------------------------------------------------------------------------- the job page


def test_job_page_shows_schedule_arguments_options_and_state(dash):
    dash.scheduler.add_interval_job(
        "record", interval=90, job_id="j", args=[1, "two"], kwargs={"who": "Ada"}, queue="mail"
    )
    res = dash.page("/pyncette/job", params={"id": "j"})
    page = res.html
    assert page.select_one("div.job").attrs["data-job-id"] == "j"
    assert page.select_one("dd.schedule").get_text(strip=True).startswith("every 1m30s")
    assert page.select_one("dd.state").get_text(strip=True) == "scheduled"
    assert page.select_one("dd.queue").get_text(strip=True) == "mail"
    assert page.select_one("pre.args").get_text() == '[\n  1,\n  "two"\n]'
    assert page.select_one("pre.kwargs").get_text() == '{\n  "who": "Ada"\n}'
    assert '"kind": "interval"' in page.select_one("pre.schedule-json").get_text()


def test_job_page_shows_the_last_error_in_full_and_the_runs(dash):
    dash.scheduler.add_async_job("fail", job_id="broken")
    dash.run_pending()
    job = dash.scheduler.get_job("broken")
    assert job.state == "failed"
    res = dash.page("/pyncette/job", params={"id": "broken"})
    error = res.html.select_one("pre.last-error").get_text()
    assert error == job.last_error
    assert error.startswith("Traceback (most recent call last):")
    [run] = res.html.select("table.runs tr[data-run-id]")
    assert run.select_one("td.outcome").get_text(strip=True) == "failed"
    assert run.select_one("td.attempt").get_text(strip=True) == "1"
    assert "RuntimeError: boom" in run.select_one("td.error summary").get_text()


def test_job_page_of_an_unknown_job_is_404_with_a_message(dash):
    res = dash.page("/pyncette/job", params={"id": "nope"}, status=404)
    assert "No job has the id &#39;nope&#39;" in res.text


def test_job_page_without_an_id_is_400(dash):
    res = dash.page("/pyncette/job", status=400)
    assert "Name a job" in res.text


# --------------------------------------------------------------------------- job actions


def test_run_now_makes_the_job_due_now_and_redirects_with_a_notice(dash):
    _add(dash, "j", interval=3600)
    res = dash.post_job("j", "run", next="/pyncette/job?id=j")
    assert res.status_int == 303
    assert res.location == "http://localhost/pyncette/job?id=j&done=run&done_job=j"
    job = dash.scheduler.get_job("j")
    assert job.due_at == START
    page = res.follow()
    assert page.html.select_one("p.notice").get_text() == "Job 'j' will run now."
    assert dash.run_pending() == 1
    assert (
        len(
            dash.page("/pyncette/job", params={"id": "j"}).html.select("table.runs tr[data-run-id]")
        )
        == 1
    )


def test_pause_and_resume_change_the_state_shown(dash):
    _add(dash, "j")
    res = dash.post_job("j", "pause", next="/pyncette/")
    assert res.location == "http://localhost/pyncette/?done=paused&done_job=j"
    page = res.follow()
    assert _state_of(page, "j") == "paused"
    assert page.html.select_one("p.notice").get_text() == "Job 'j' is paused."
    assert dash.scheduler.get_job("j").paused
    page = dash.post_job("j", "resume", next="/pyncette/").follow()
    assert _state_of(page, "j") == "scheduled"
    assert not dash.scheduler.get_job("j").paused


def test_an_action_returns_to_the_filtered_page_it_came_from(dash):
    _add(dash, "j", queue="mail")
    res = dash.post_job("j", "pause", next="/pyncette/?queue=mail&done=run&done_job=old")
    assert res.location == "http://localhost/pyncette/?queue=mail&done=paused&done_job=j"


def test_an_action_never_redirects_outside_the_dashboard(dash):
    _add(dash, "j")
    for target in (
        "http://evil.example/",
        "//evil.example/pyncette/",
        "/elsewhere",
        "/pyncette/../elsewhere",
        "/pyncette/\\evil.example",
    ):
        res = dash.post_job("j", "pause", next=target)
        assert res.location == "http://localhost/pyncette/job?id=j&done=paused&done_job=j"


def test_cancel_asks_for_a_confirmation_first(dash):
    _add(dash, "j")
    res = dash.post_job("j", "cancel", next="/pyncette/")
    assert res.status_int == 200
    assert dash.scheduler.get_job("j") is not None
    form = res.forms["confirm-cancel"]
    assert form["confirm"].value == "yes"
    assert form["id"].value == "j"
    done = form.submit("action", value="cancel")
    assert done.status_int == 303
    assert done.location == "http://localhost/pyncette/?done=cancelled&done_job=j"
    assert dash.scheduler.get_job("j") is None
    assert done.follow().html.select_one("p.notice").get_text() == "Job 'j' is cancelled."


def test_cancel_from_the_job_page_returns_to_the_jobs_list(dash):
    _add(dash, "j")
    res = dash.post_job("j", "cancel", next="/pyncette/job?id=j", confirm="yes")
    assert res.location == "http://localhost/pyncette/?done=cancelled&done_job=j"


def test_cancel_of_a_periodic_job_is_refused_with_a_clear_message(make_dashboard):
    dash = make_dashboard(periodic=True)
    dash.run_pending()  # a starting daemon writes the periodic task's job
    assert dash.scheduler.get_job("tick") is not None
    res = dash.post_job("tick", "cancel", confirm="yes", expect_errors=True)
    assert res.status_int == 409
    message = res.html.select_one('p[role="alert"]').get_text()
    assert "belongs to a periodic task declared in the application's code" in message
    assert "Pause it instead" in message
    assert dash.scheduler.get_job("tick") is not None


def test_an_action_on_an_unknown_job_is_404_with_a_message(dash):
    for action in ("run", "pause", "resume"):
        res = dash.post_job("nope", action, expect_errors=True)
        assert res.status_int == 404
        assert "No job has the id &#39;nope&#39;" in res.text
    res = dash.post_job("nope", "cancel", confirm="yes", expect_errors=True)
    assert res.status_int == 404


def test_run_now_of_a_paused_job_is_refused_with_the_schedulers_reason(dash):
    _add(dash, "j")
    dash.scheduler.pause_job("j")
    res = dash.post_job("j", "run", expect_errors=True)
    assert res.status_int == 409
    assert "is paused, so it cannot run now" in res.html.select_one('p[role="alert"]').get_text()


def test_an_unknown_action_is_400(dash):
    _add(dash, "j")
    res = dash.post_job("j", "explode", expect_errors=True)
    assert res.status_int == 400
    assert dash.scheduler.get_job("j").state == "scheduled"


def test_actions_without_the_csrf_token_are_refused(dash):
    _add(dash, "j")
    dash.page()  # the token's cookie is set, but not sent in the form
    for action in ("pause", "run"):
        res = dash.web.post("/pyncette/job", {"id": "j", "action": action}, expect_errors=True)
        assert res.status_int == 400
    res = dash.web.post(
        "/pyncette/job",
        {"id": "j", "action": "cancel", "confirm": "yes", "csrf_token": "forged"},
        expect_errors=True,
    )
    assert res.status_int == 400
    res = dash.web.post("/pyncette/queues", {"queue": "default", "action": "pause"}, status=400)
    job = dash.scheduler.get_job("j")
    assert job is not None
    assert job.state == "scheduled"
    assert job.due_at == START + timedelta(seconds=60)
    assert not any(queue.paused for queue in dash.scheduler.get_queues())


def test_pages_are_get_only_and_actions_post_only(dash):
    _add(dash, "j")
    dash.web.get("/pyncette/queues?queue=default&action=pause")
    assert not any(queue.paused for queue in dash.scheduler.get_queues())
    dash.web.post("/pyncette/runs", {"csrf_token": dash.csrf_token()}, status=404)


# --------------------------------------------------------------------------- runs


def test_runs_page_lists_recent_runs_newest_first_with_errors(dash):
    dash.scheduler.add_async_job("record", job_id="ok")
    dash.run_pending()
    dash.clock.advance(5)
    dash.scheduler.add_async_job("fail", job_id="bad")
    dash.run_pending()
    res = dash.page("/pyncette/runs")
    rows = res.html.select("table.runs tr[data-run-id]")
    assert [row.attrs["data-job-id"] for row in rows] == ["bad", "ok"]
    assert [row.select_one("td.outcome").get_text(strip=True) for row in rows] == [
        "failed",
        "succeeded",
    ]
    assert "RuntimeError: boom" in rows[0].select_one("td.error pre").get_text()
    assert rows[1].select_one("td.error").get_text(strip=True) == ""


def test_runs_failures_filter_shows_only_failed_runs(dash):
    dash.scheduler.add_async_job("record", job_id="ok")
    dash.scheduler.add_async_job("fail", job_id="bad")
    dash.run_pending()
    res = dash.page("/pyncette/runs")
    res = dash.web.get(res.html.select_one("a.failures-only").attrs["href"])
    rows = res.html.select("table.runs tr[data-run-id]")
    assert [row.attrs["data-job-id"] for row in rows] == ["bad"]
    assert res.html.select_one("a.all-runs") is not None


def test_runs_filter_by_job_and_page_with_the_cursor(dash):
    _add(dash, "j", interval=1)
    _add(dash, "other", interval=1)
    for _ in range(5):
        dash.clock.advance(1)
        dash.run_pending()
    res = dash.page("/pyncette/runs", params={"job": "j", "limit": "2"})
    seen = []
    while True:
        rows = res.html.select("table.runs tr[data-run-id]")
        assert {row.attrs["data-job-id"] for row in rows} == {"j"}
        seen.extend(row.attrs["data-run-id"] for row in rows)
        link = res.html.select_one("a.next")
        if link is None:
            break
        res = dash.web.get(link.attrs["href"])
    assert len(seen) == len(set(seen)) == 5


def test_runs_filter_by_an_unknown_task_is_400(dash):
    res = dash.page("/pyncette/runs", params={"task": "gone"}, status=400)
    assert res.html.select_one('p[role="alert"]').get_text()


def _stored_run(dash: Dashboard, job_id: str, task: str) -> None:
    """A run record written straight to the store (of any task, registered or not)."""
    from pyramid_pyncette.jobs import RunRecord

    now = dash.clock()
    record = RunRecord(job_id, task, "default", now, now, now, 1, "failed", "gone away")
    dash.scheduler.repository.complete([], runs=[record])


def test_runs_filter_by_a_task_no_longer_registered_shows_its_stored_runs(dash):
    _stored_run(dash, "old-1", "myapp.removed:task")
    dash.scheduler.add_async_job("record", job_id="ok")
    dash.run_pending()
    res = dash.page("/pyncette/runs", params={"task": "myapp.removed:task"})
    rows = res.html.select("table.runs tr[data-run-id]")
    assert [row.attrs["data-job-id"] for row in rows] == ["old-1"]


def test_runs_page_with_a_cursor_of_no_store_is_400(dash):
    res = dash.page("/pyncette/runs", params={"cursor": "garbage"}, status=400)
    assert "cursor" in res.html.select_one('p[role="alert"]').get_text()


def test_runs_filter_by_job_takes_the_id_as_given(dash):
    for job_id in ("r1", " r1", "  "):
        dash.scheduler.add_async_job("record", job_id=job_id)
    dash.run_pending()
    for job_id in ("r1", " r1", "  "):
        res = dash.page("/pyncette/runs", params={"job": job_id})
        rows = res.html.select("table.runs tr[data-run-id]")
        assert [row.attrs["data-job-id"] for row in rows] == [job_id]


def test_auto_refresh_drops_only_the_notice_of_an_action_never_a_filter():
    from pyramid_pyncette.dashboard import views

    script = (Path(views.__file__).parent / "static" / "dashboard.js").read_text()
    listed = re.search(r"var NOTICE_PARAMS = \[([^\]]*)\];", script)
    assert listed is not None
    assert re.findall(r'"([a-z_]+)"', listed.group(1)) == list(views.NOTICE_PARAMS)
    filters = {"job", "queue", "task", "state", "failures", "cursor", "limit", "id", "sort"}
    assert not filters & set(views.NOTICE_PARAMS)


def test_a_notice_quotes_and_shortens_the_id_a_link_names(dash):
    spoof = "every job in production. Restore from backup: https://evil.example"
    res = dash.page("/pyncette/", params={"done": "cancelled", "done_job": spoof})
    assert res.html.select_one("p.notice").get_text() == "Job 'every job in p\u2026' is cancelled."


# --------------------------------------------------------------------------- queues


def test_queues_page_shows_backlog_running_and_paused(dash):
    _add(dash, "a", queue="mail")
    dash.scheduler.add_async_job("record", job_id="b", queue="mail")
    dash.scheduler.pause_queue("reports")
    res = dash.page("/pyncette/queues")
    mail = res.html.select_one('tr[data-queue="mail"]')
    assert mail.select_one("td.due").get_text(strip=True) == "1"
    assert mail.select_one("td.running").get_text(strip=True) == "0"
    assert mail.select_one("td.paused").get_text(strip=True) == "no"
    reports = res.html.select_one('tr[data-queue="reports"]')
    assert reports.select_one("td.paused").get_text(strip=True) == "paused"
    assert reports.select_one('button[name="action"]').attrs["value"] == "resume"


def test_queue_pause_and_resume_buttons(dash):
    _add(dash, "a", queue="mail")
    res = dash.post_queue("mail", "pause")
    assert res.status_int == 303
    assert res.location == "http://localhost/pyncette/queues?done=queue_paused&done_queue=mail"
    assert [q.paused for q in dash.scheduler.get_queues() if q.name == "mail"] == [True]
    page = res.follow()
    assert page.html.select_one("p.notice").get_text() == "Queue 'mail' is paused."
    assert page.html.select_one('tr[data-queue="mail"] td.paused').get_text(strip=True) == "paused"
    dash.post_queue("mail", "resume")
    assert [q.paused for q in dash.scheduler.get_queues() if q.name == "mail"] == [False]


def test_a_bad_queue_name_is_refused_with_400(dash):
    res = dash.post_queue("no spaces", "pause", expect_errors=True)
    assert res.status_int == 400
    assert "is not a queue name" in res.text


# --------------------------------------------------------------------------- security


PAGES = ("/pyncette", "/pyncette/", "/pyncette/job?id=j", "/pyncette/runs", "/pyncette/queues")


def test_every_page_and_action_is_403_without_the_permission(make_dashboard):
    dash = make_dashboard(policy=Grants("something.else"))
    _add(dash, "j")
    for path in (*PAGES, "/pyncette/static/dashboard.css"):
        dash.web.get(path, status=403)
    dash.web.post("/pyncette/job", {"id": "j", "action": "pause"}, status=403)
    dash.web.post("/pyncette/queues", {"queue": "default", "action": "pause"}, status=403)
    assert not dash.scheduler.get_job("j").paused


def test_the_permission_setting_names_the_permission_required(make_dashboard):
    dash = make_dashboard(
        settings={"pyncette.dashboard.permission": "ops.jobs"}, policy=Grants("ops.jobs")
    )
    for path in PAGES[1:2] + PAGES[3:]:
        dash.web.get(path, status=200)
    dash.web.get("/pyncette/static/dashboard.css", status=200)
    refused = make_dashboard(policy=Grants("ops.jobs"))
    refused.web.get("/pyncette/", status=403)


def test_no_permission_required_opens_the_dashboard_without_a_security_policy(make_dashboard):
    dash = make_dashboard(
        settings={"pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED"}, policy=None
    )
    _add(dash, "j")
    for path in PAGES[1:]:
        dash.web.get(path, status=200)
    dash.post_job("j", "pause")
    assert dash.scheduler.get_job("j").paused


def _commit_dashboard(settings: dict[str, str], csrf: bool = True) -> None:
    config = pyramid_testing.setUp(settings=settings, autocommit=False)
    try:
        config.include("pyramid_pyncette.dashboard")
        if csrf:
            config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
        config.commit()
    finally:
        pyramid_testing.tearDown()


def test_the_include_refuses_to_start_without_a_security_policy():
    with pytest.raises(ConfigurationError) as excinfo:
        _commit_dashboard({"pyncette.url": "memory://"})
    message = str(excinfo.value)
    assert "no security policy is configured" in message
    assert "config.set_security_policy" in message
    assert "'pyncette.admin'" in message
    assert "pyncette.dashboard.permission = NO_PERMISSION_REQUIRED" in message


def test_the_include_refuses_a_session_kept_csrf_token_without_a_session_factory():
    from pyramid.csrf import SessionCSRFStoragePolicy

    config = pyramid_testing.setUp(
        settings={
            "pyncette.url": "memory://",
            "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED",
        },
        autocommit=False,
    )
    try:
        config.include("pyramid_pyncette.dashboard")
        config.set_csrf_storage_policy(SessionCSRFStoragePolicy())
        with pytest.raises(ConfigurationError) as excinfo:
            config.commit()
    finally:
        pyramid_testing.tearDown()
    assert "no session factory is configured" in str(excinfo.value)


def test_the_include_refuses_when_the_csrf_token_has_nowhere_to_live():
    settings = {
        "pyncette.url": "memory://",
        "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED",
    }
    with pytest.raises(ConfigurationError) as excinfo:
        _commit_dashboard(settings, csrf=False)
    message = str(excinfo.value)
    assert "no session factory is configured" in message
    assert "CookieCSRFStoragePolicy" in message
    _commit_dashboard(settings, csrf=True)


def test_hostile_arguments_and_errors_render_as_text(dash):
    dash.scheduler.add_async_job("fail", job_id=f"id{HOSTILE}", kwargs={"html": HOSTILE})
    dash.run_pending()
    for path, params in (
        ("/pyncette/", {}),
        ("/pyncette/job", {"id": f"id{HOSTILE}"}),
        ("/pyncette/runs", {}),
    ):
        res = dash.page(path, params=params)
        assert "<script>" not in res.text
        assert "&lt;script&gt;" in res.text
    job_page = dash.page("/pyncette/job", params={"id": f"id{HOSTILE}"}).html
    assert HOSTILE in job_page.select_one("pre.kwargs").get_text()
    assert HOSTILE in job_page.select_one("pre.last-error").get_text()
    assert not job_page.select("body script:not([src])")


def test_a_store_outage_is_a_503_page_without_the_password(make_dashboard):
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://operator:s3cret-word@127.0.0.1:1/jobs?connect_timeout=2"
    dash = make_dashboard(store={"pyncette.url": url}, reachable=False)
    res = dash.page("/pyncette/", status=503)
    assert "The job store cannot be reached" in res.text
    assert "s3cret-word" not in res.text
    assert "operator:***@127.0.0.1:1" in res.html.select_one("footer code").get_text()


def test_a_store_without_its_tables_is_a_503_page_naming_the_fix(make_dashboard, tmp_path):
    dash = make_dashboard(
        store={"pyncette.url": f"sqlite:///{tmp_path}/empty.sqlite"},
        settings={"pyncette.skip_table_create": "true"},
        reachable=False,
    )
    res = dash.page("/pyncette/queues", status=503)
    assert "The job store is not set up for this application" in res.text
    assert "cannot be reached" not in res.text
    assert "pyncette_jobs" in res.html.select_one('p[role="alert"]').get_text()


def test_the_jobs_table_cuts_long_arguments_and_the_job_page_shows_them_all(dash):
    long_text = "x" * 5000
    _add(dash, "big", kwargs={"text": long_text})
    cell = dash.page().html.select_one('tr[data-job-id="big"] td.args').get_text(strip=True)
    assert len(cell) == 201 and cell.endswith("\u2026")
    page = dash.page("/pyncette/job", params={"id": "big"}).html
    assert long_text in page.select_one("pre.kwargs").get_text()


# --------------------------------------------------------------------------- configuration


def test_the_dashboard_path_setting_moves_the_pages(make_dashboard):
    dash = make_dashboard(settings={"pyncette.dashboard.path": "/ops/jobs/"})
    _add(dash, "j")
    res = dash.page("/ops/jobs/")
    assert _rows(res) == ["j"]
    assert (
        res.html.select_one('link[rel="stylesheet"]')
        .attrs["href"]
        .startswith("http://localhost/ops/jobs/static/")
    )
    dash.web.get("/pyncette/", status=404)
    token = _token(res)
    res = dash.web.post("/ops/jobs/job", {"csrf_token": token, "id": "j", "action": "pause"})
    assert res.location == "http://localhost/ops/jobs/job?id=j&done=paused&done_job=j"


def test_the_pages_escape_whatever_the_applications_jinja2_settings(dashboard_store):
    config = Configurator(
        settings={
            **dashboard_store,
            "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED",
            "jinja2.autoescape": "false",
            "jinja2.undefined": "debug",
        }
    )
    config.include("pyramid_jinja2")
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
    config.include("pyramid_pyncette.dashboard")
    config.add_pyncette_task(record, name="record")
    app = TestApp(config.make_wsgi_app())
    scheduler = app.app.registry.scheduler
    try:
        assert not config.get_jinja2_environment().autoescape  # the application's own
        scheduler.add_async_job("record", job_id="j", kwargs={"html": HOSTILE})
        res = app.get("/pyncette/")
        assert "<script>" not in res.text
        assert "&lt;script&gt;" in res.text
    finally:
        scheduler.repository.close()


def test_settings_added_after_the_include_count(dashboard_store):
    config = Configurator(
        settings={**dashboard_store, "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED"}
    )
    config.include("pyramid_tm")
    config.include("pyramid_pyncette.dashboard")
    config.add_settings({"pyncette.dashboard.path": "/later"})
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
    app = TestApp(config.make_wsgi_app())
    app.get("/later/", status=200)
    app.get("/pyncette/", status=404)
    app.app.registry.scheduler.repository.close()


def test_the_stylesheet_and_script_are_served(dash):
    css = dash.web.get("/pyncette/static/dashboard.css")
    assert "@media (max-width: 700px)" in css.text
    js = dash.web.get("/pyncette/static/dashboard.js")
    assert "auto-refresh" in js.text
    res = dash.page()
    assert [o.attrs["value"] for o in res.html.select("#auto-refresh option")] == ["0", "5"]
    assert res.html.body.attrs["data-refresh"] == "page"


def test_the_confirmation_page_never_refreshes_itself(dash):
    _add(dash, "j")
    res = dash.post_job("j", "cancel")
    assert "data-refresh" not in res.html.body.attrs
    assert res.html.select_one("#auto-refresh") is None


# --------------------------------------------------------------------------- every store


def test_every_page_renders_on_every_store(make_dashboard, store_settings):
    dash = make_dashboard(store=store_settings)
    _add(dash, "a", queue="mail")
    dash.scheduler.add_async_job("fail", job_id="b")
    dash.run_pending()
    assert _rows(dash.page()) == ["a", "b"]
    assert _state_of(dash.page(), "b") == "failed"
    job_page = dash.page("/pyncette/job", params={"id": "b"})
    assert len(job_page.html.select("table.runs tr[data-run-id]")) == 1
    assert len(dash.page("/pyncette/runs").html.select("table.runs tr[data-run-id]")) == 1
    assert dash.page("/pyncette/queues").html.select_one('tr[data-queue="mail"]') is not None
    dash.post_job("a", "pause")
    assert _state_of(dash.page(), "a") == "paused"


# --------------------------------------------------------------------------- mounting


def test_an_application_below_a_script_name_keeps_it_in_links_and_redirects(make_dashboard):
    dash = make_dashboard()
    dash.web.extra_environ = {"SCRIPT_NAME": "/app"}
    _add(dash, "j")
    res = dash.page()
    assert res.html.select_one('tr[data-job-id="j"] td.id a').attrs["href"] == (
        "http://localhost/app/pyncette/job?id=j"
    )
    form = res.html.select_one('tr[data-job-id="j"] form')
    assert form.select_one('input[name="next"]').attrs["value"] == "/app/pyncette/"
    res = dash.post_job("j", "pause", next="/app/pyncette/")
    assert res.location == "http://localhost/app/pyncette/?done=paused&done_job=j"


def test_the_include_honours_a_route_prefix(dashboard_store):
    config = Configurator(
        settings={**dashboard_store, "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED"}
    )
    config.include("pyramid_tm")
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
    config.include("pyramid_pyncette.dashboard", route_prefix="/admin")
    app = TestApp(config.make_wsgi_app())
    try:
        page = app.get("/admin/pyncette/")
        href = page.html.select_one('link[rel="stylesheet"]').attrs["href"]
        assert href == "http://localhost/admin/pyncette/static/dashboard.css"
        app.get(href, status=200)
        app.get("/pyncette/", status=404)
    finally:
        app.app.registry.scheduler.repository.close()


def test_legacy_authentication_and_authorization_policies_count_as_a_security_policy():
    from pyramid.authentication import RemoteUserAuthenticationPolicy
    from pyramid.authorization import ACLAuthorizationPolicy
    from pyramid.interfaces import IRoutesMapper

    config = pyramid_testing.setUp(settings={"pyncette.url": "memory://"}, autocommit=False)
    try:
        config.include("pyramid_pyncette.dashboard")
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
        config.set_authentication_policy(RemoteUserAuthenticationPolicy())
        config.set_authorization_policy(ACLAuthorizationPolicy())
        config.commit()  # no ConfigurationError: the legacy pair is a security policy
        mapper = config.registry.getUtility(IRoutesMapper)
        assert mapper.get_route("pyncette_dashboard.jobs").pattern == "/pyncette/"
    finally:
        pyramid_testing.tearDown()


# --------------------------------------------------------------------------- store-wide counts


def test_queues_page_shows_counts_by_state_and_the_oldest_due_job_when_reported(dash, monkeypatch):
    from types import SimpleNamespace

    queue = SimpleNamespace(
        name="mail",
        paused=False,
        due=3,
        running=1,
        jobs={"scheduled": 5, "running": 1, "failed": 2},
        oldest_due_at=START - timedelta(minutes=4),
    )
    monkeypatch.setattr(dash.scheduler, "get_queues", lambda: [queue])
    row = dash.page("/pyncette/queues").html.select_one('tr[data-queue="mail"]')
    counts = {
        state: row.select_one(f"td.count-{state}").get_text(strip=True)
        for state in ("scheduled", "running", "retrying", "failed", "paused")
    }
    assert counts == {
        "scheduled": "5",
        "running": "1",
        "retrying": "0",
        "failed": "2",
        "paused": "0",
    }
    assert row.select_one("td.oldest time").get_text() == "4m ago"


def test_queues_page_leaves_out_counts_the_store_does_not_report(dash, monkeypatch):
    from pyramid_pyncette.jobs import QueueInfo

    _add(dash, "a", queue="mail")
    # Every store counts jobs by state: a queue listed without them stands for one that does not.
    monkeypatch.setattr(dash.scheduler, "get_queues", lambda: [QueueInfo("mail", False, 0, 0)])
    page = dash.page("/pyncette/queues").html
    assert page.select_one("td.count-scheduled") is None
    assert page.select_one("td.oldest") is None


# --------------------------------------------------------------------------- presentation


def test_short_id_keeps_short_ids_and_cuts_long_ones():
    from pyramid_pyncette.dashboard.present import short_id

    assert short_id("demo.heartbeat") == "demo.heartbeat"
    assert short_id("a" * 15) == "a" * 15
    assert short_id("0123456789abcdef") == "0123456789abcd\u2026"
    assert short_id("0123456789abcdef", keep=4) == "0123\u2026"
    assert short_id("bell\x07") == "bell\\x07"


def test_when_says_how_far_a_time_is_from_now():
    from pyramid_pyncette.dashboard.present import when

    assert when(None, START) is None
    assert when(START + timedelta(seconds=30), START) == {
        "text": "in 30s",
        "utc": "2030-01-01 12:00:30 UTC",
    }
    assert when(START - timedelta(hours=3), START)["text"] == "3h ago"
    assert when(START, START)["text"] == "now"
    assert when(START + timedelta(days=3), START)["text"] == "in 3d"


def test_job_page_says_when_the_jobs_queue_is_paused(dash):
    _add(dash, "j", queue="mail")
    dash.scheduler.pause_queue("mail")
    res = dash.page("/pyncette/job", params={"id": "j"})
    assert res.html.select_one("dd.queue").get_text(" ", strip=True) == "mail (queue paused)"


def test_the_include_adds_no_jinja2_renderer_to_the_application(dashboard_store):
    from pyramid.interfaces import IRendererFactory

    config = Configurator(
        settings={**dashboard_store, "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED"}
    )
    config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
    config.include("pyramid_pyncette.dashboard")
    config.commit()
    try:
        assert config.registry.queryUtility(IRendererFactory, name=".jinja2") is None
        assert config.registry.queryUtility(IRendererFactory, name=".pyncette-jinja2")
    finally:
        config.registry.scheduler.repository.close()


def test_a_running_job_shows_its_lease_holder_and_counts_as_running(dash):
    dash.scheduler.add_async_job("record", job_id="busy", queue="mail")
    # A daemon's claim, as the worker makes it, without running the job.
    [lease] = dash.scheduler.repository.claim(dash.clock(), 10, "daemon-token-1", 60.0)
    assert lease.job.id == "busy"
    assert _state_of(dash.page(), "busy") == "running"
    job_page = dash.page("/pyncette/job", params={"id": "busy"}).html
    assert job_page.select_one("dd.state").get_text(strip=True) == "running"
    assert job_page.select_one("dd.lease").get_text(strip=True) == "daemon-token-1"
    queues = dash.page("/pyncette/queues").html
    assert queues.select_one('tr[data-queue="mail"] td.running').get_text(strip=True) == "1"


# --------------------------------------------------------------------------- <path>/metrics


def _gauges(text: str) -> dict[str, float]:
    """The samples of a Prometheus exposition, by ``name{labels}`` as written."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_serves_the_store_wide_gauges_to_the_permission(make_dashboard):
    dash = make_dashboard()
    _add(dash, "a", queue="mail")
    _add(dash, "b", queue="mail")
    dash.scheduler.pause_job("b")
    dash.scheduler.add_date_job("record", START - timedelta(seconds=30), job_id="late")
    res = dash.web.get("/pyncette/metrics", status=200)
    assert res.headers["Content-Type"].startswith("text/plain; version=")
    samples = _gauges(res.text)
    assert samples['pyncette_jobs{queue="mail",state="scheduled"}'] == 1
    assert samples['pyncette_jobs{queue="mail",state="paused"}'] == 1
    assert samples['pyncette_jobs{queue="default",state="scheduled"}'] == 1
    assert samples['pyncette_jobs{queue="default",state="failed"}'] == 0
    assert samples['pyncette_oldest_due_seconds{queue="default"}'] == 30


def test_metrics_requires_the_permission_unless_made_public(make_dashboard):
    refused = make_dashboard(policy=Grants("something.else"))
    refused.web.get("/pyncette/metrics", status=403)
    public = make_dashboard(
        settings={"pyncette.dashboard.metrics_public": "true"}, policy=Grants("something.else")
    )
    _add(public, "a")
    res = public.web.get("/pyncette/metrics", status=200)
    assert _gauges(res.text)['pyncette_jobs{queue="default",state="scheduled"}'] == 1
    # Only the gauges are public: the pages still need the permission.
    public.web.get("/pyncette/", status=403)


def test_metrics_of_a_store_that_cannot_be_set_up_fail_the_scrape_with_503(
    make_dashboard, monkeypatch
):
    dash = make_dashboard()

    def cannot_open(self):
        raise RuntimeError("unable to open postgresql://app:s3cret@db/app")

    # As a store the web process has not reached yet, and cannot.
    monkeypatch.setattr(type(dash.scheduler.store), "ready", cannot_open)
    res = dash.web.get("/pyncette/metrics", status=503)
    assert res.text.startswith("the job store could not be counted: RuntimeError: unable to open")
    assert "s3cret" not in res.text
    assert "pyncette_jobs" not in res.text


def test_metrics_fail_the_scrape_while_the_store_cannot_be_counted(make_dashboard, monkeypatch):
    dash = make_dashboard()
    _add(dash, "a")
    monkeypatch.setattr("pyramid_pyncette.metrics.STORE_CACHE_SECONDS", 0)
    assert "pyncette_jobs{" in dash.web.get("/pyncette/metrics", status=200).text

    def count_refused(self):
        raise RuntimeError("count refused")

    monkeypatch.setattr(type(dash.scheduler), "get_queues", count_refused)
    res = dash.web.get("/pyncette/metrics", status=503)
    assert "RuntimeError: count refused" in res.text
    monkeypatch.undo()
    assert "pyncette_jobs{" in dash.web.get("/pyncette/metrics", status=200).text


def test_metrics_without_prometheus_client_answer_501_naming_the_extra(make_dashboard, monkeypatch):
    import pyramid_pyncette.dashboard.views as views

    dash = make_dashboard()
    monkeypatch.setattr(views, "metrics_available", lambda: False)
    res = dash.web.get("/pyncette/metrics", status=501)
    assert "pip install 'pyramid_pyncette[metrics]'" in res.text


def test_public_metrics_without_prometheus_client_are_refused_at_commit(monkeypatch):
    import pyramid_pyncette.dashboard as dashboard

    monkeypatch.setattr(dashboard, "metrics_available", lambda: False)
    settings = {
        "pyncette.url": "memory://",
        "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED",
        "pyncette.dashboard.metrics_public": "true",
    }
    with pytest.raises(ConfigurationError) as excinfo:
        _commit_dashboard(settings)
    message = str(excinfo.value)
    assert "pyncette.dashboard.metrics_public" in message
    assert "pip install 'pyramid_pyncette[metrics]'" in message
    monkeypatch.setattr(dashboard, "metrics_available", lambda: True)
    _commit_dashboard(settings)
