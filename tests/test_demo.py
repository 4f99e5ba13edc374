import html
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from webtest import TestApp

from pyramid_pyncette import InvalidJobError
from pyramid_pyncette.testing import FakeClock, run_pending

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
START = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

FORMS = ("hello-now", "hello-at", "hello-every", "hello-cron", "flaky")


def _make_app(url="memory://", **extra):
    from pyramid_pyncette.demo import main

    settings = {"pyncette.url": url, **extra}
    wsgi = main({}, **settings)
    clock = FakeClock(START)
    wsgi.registry.scheduler.clock = clock
    return TestApp(wsgi), wsgi.registry, clock


@pytest.fixture
def demo():
    app, registry, clock = _make_app()
    return app, registry, clock


def _jobs(registry):
    """The jobs the demo's forms added (not its periodic heartbeat, which
    ``run_pending`` writes as a starting daemon does)."""
    jobs = registry.scheduler.get_jobs(limit=200)
    return [job for job in jobs if job.id != "demo.heartbeat"]


def _submit(app, form_id, expect_errors=False, **fields):
    form = app.get("/").forms[form_id]
    for key, value in fields.items():
        form[key] = value
    return form.submit(expect_errors=expect_errors)


def _error_text(registry, call):
    with pytest.raises(InvalidJobError) as excinfo:
        call(registry.scheduler)
    return html.escape(str(excinfo.value), quote=True)


# --------------------------------------------------------------------------- the page


def test_page_renders_every_form(demo):
    app, _, _ = demo
    res = app.get("/")
    assert res.status_int == 200
    assert res.content_type == "text/html"
    for form_id in FORMS:
        form = res.forms[form_id]
        assert form.method.upper() == "POST"
        assert form["csrf_token"].value
    assert res.forms["hello-cron"]["cron"].value == "*/1 * * * *"
    assert "No jobs are stored." in res.text


def test_hello_now_adds_an_async_job(demo):
    app, registry, _ = demo
    res = _submit(app, "hello-now", name="Ada")
    assert res.status_int == 303
    assert res.location == "http://localhost/"
    [job] = _jobs(registry)
    assert job.task == "demo.say_hello"
    assert job.kwargs == {"name": "Ada"}
    assert job.schedule["kind"] == "date"
    assert job.next_run_at == START
    assert job.id in res.follow().text


def test_hello_at_adds_a_date_job(demo):
    app, registry, _ = demo
    _submit(app, "hello-at", name="Ada", delay="45")
    [job] = _jobs(registry)
    assert job.schedule["kind"] == "date"
    assert job.next_run_at == START + timedelta(seconds=45)


def test_hello_at_accepts_units(demo):
    app, registry, _ = demo
    _submit(app, "hello-at", delay="2m")
    [job] = _jobs(registry)
    assert job.next_run_at == START + timedelta(minutes=2)
    assert job.kwargs == {"name": "world"}


def test_hello_every_adds_an_interval_job(demo):
    app, registry, _ = demo
    _submit(app, "hello-every", name="Ada", interval="15")
    [job] = _jobs(registry)
    assert job.schedule["kind"] == "interval"
    assert job.schedule["microseconds"] == 15_000_000
    assert job.next_run_at == START + timedelta(seconds=15)
    assert "every 15s" in app.get("/").text


def test_hello_cron_adds_a_cron_job_with_the_default_schedule(demo):
    app, registry, _ = demo
    _submit(app, "hello-cron")
    [job] = _jobs(registry)
    assert job.schedule["kind"] == "cron"
    assert job.schedule["expression"] == "*/1 * * * *"
    assert job.next_run_at == START + timedelta(minutes=1)


def test_hello_cron_with_a_timezone(demo):
    app, registry, _ = demo
    _submit(app, "hello-cron", cron="0 9 * * *", timezone="Europe/Ljubljana")
    [job] = _jobs(registry)
    assert job.schedule["timezone"] == "Europe/Ljubljana"
    assert job.next_run_at == datetime(2030, 1, 2, 8, 0, tzinfo=timezone.utc)


def test_flaky_form_adds_a_flaky_job(demo):
    app, registry, _ = demo
    _submit(app, "flaky")
    [job] = _jobs(registry)
    assert job.task == "demo.flaky"
    assert job.failure_mode == "unlock"


# --------------------------------------------------------------------------- bad input


def test_bad_cron_shows_the_library_error(demo):
    app, registry, _ = demo
    res = _submit(app, "hello-cron", expect_errors=True, cron="61 * * *")
    assert res.status_int == 400
    expected = _error_text(
        registry, lambda s: s.add_cron_job("demo.say_hello", schedule="61 * * *")
    )
    assert expected in res.text
    assert "add_cron_job" in res.text
    # the page keeps the bad input for correction, and nothing was written
    assert res.forms["hello-cron"]["cron"].value == "61 * * *"
    assert _jobs(registry) == []


def test_bad_timezone_is_a_400(demo):
    app, registry, _ = demo
    res = _submit(app, "hello-cron", expect_errors=True, timezone="Mars/Olympus")
    assert res.status_int == 400
    assert "unknown timezone" in res.text
    assert _jobs(registry) == []


@pytest.mark.parametrize("value", ["abc", "-5", "0", "", "1e3"])
def test_bad_interval_is_a_400(demo, value):
    app, registry, _ = demo
    res = _submit(app, "hello-every", expect_errors=True, interval=value)
    assert res.status_int == 400
    expected = _error_text(registry, lambda s: s.add_interval_job("demo.say_hello", interval=value))
    assert expected in res.text
    assert _jobs(registry) == []


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_bad_delay_is_a_400(demo, value):
    app, registry, _ = demo
    res = _submit(app, "hello-at", expect_errors=True, delay=value)
    assert res.status_int == 400
    assert "delay: " in res.text
    assert "is not a duration" in res.text
    assert _jobs(registry) == []


@pytest.mark.parametrize(("form_id", "field"), [("hello-at", "delay"), ("hello-every", "interval")])
def test_huge_durations_are_a_400(demo, form_id, field):
    app, registry, _ = demo
    res = _submit(app, form_id, expect_errors=True, **{field: "99999999999999w"})
    assert res.status_int == 400
    assert _jobs(registry) == []


def test_overlong_name_is_a_400(demo):
    app, registry, _ = demo
    res = _submit(app, "hello-now", expect_errors=True, name="x" * 201)
    assert res.status_int == 400
    assert "at most 200 characters" in res.text
    assert _jobs(registry) == []


def test_error_text_is_escaped(demo):
    app, _, _ = demo
    res = _submit(app, "hello-cron", expect_errors=True, cron="<script>alert(1)</script>")
    assert res.status_int == 400
    assert "<script>" not in res.text
    assert "&lt;script&gt;" in res.text


def test_post_without_csrf_token_is_refused(demo):
    app, registry, _ = demo
    res = app.post("/hello/now", {"name": "Ada"}, status=400)
    assert res.status_int == 400
    assert _jobs(registry) == []


# --------------------------------------------------------------------------- cancel and JSON


def test_cancel_removes_the_job(demo):
    app, registry, _ = demo
    _submit(app, "hello-every")
    _submit(app, "hello-now")
    assert len(_jobs(registry)) == 2
    page = app.get("/")
    cancel_forms = [form for form in page.forms.values() if form.action.endswith("/cancel")]
    assert len(cancel_forms) == 2
    target = cancel_forms[0].action
    res = cancel_forms[0].submit()
    assert res.status_int == 303
    remaining = _jobs(registry)
    assert len(remaining) == 1
    assert f"/jobs/{remaining[0].id}/cancel" not in target


def test_cancel_of_a_job_id_with_odd_characters(demo):
    app, registry, _ = demo
    registry.scheduler.add_async_job("demo.say_hello", job_id="a/b c?&<x>")
    page = app.get("/")
    assert "a/b c?&amp;&lt;x&gt;" in page.text
    [form] = [form for form in page.forms.values() if form.action.endswith("/cancel")]
    form.submit()
    assert _jobs(registry) == []


def test_cancel_of_an_unknown_job_is_a_404(demo):
    app, _, _ = demo
    token = app.get("/").forms["hello-now"]["csrf_token"].value
    res = app.post("/jobs/nope/cancel", {"csrf_token": token}, status=404)
    assert "No job &#x27;nope&#x27;" in res.text


def test_jobs_json_lists_jobs(demo):
    app, registry, _ = demo
    assert app.get("/jobs.json").json == {"jobs": [], "more": False, "recent_runs": []}
    _submit(app, "hello-every", interval="1m")
    _submit(app, "flaky")
    data = app.get("/jobs.json").json
    by_task = {job["task"]: job for job in data["jobs"]}
    assert set(by_task) == {"demo.say_hello", "demo.flaky"}
    assert {job["id"] for job in data["jobs"]} == {job.id for job in _jobs(registry)}
    hello = by_task["demo.say_hello"]
    assert hello["state"] == "scheduled"
    assert hello["schedule"].startswith("every 1m")
    assert hello["next_run_at"] == (START + timedelta(minutes=1)).isoformat()
    assert by_task["demo.flaky"]["next_run_at"] == START.isoformat()


# --------------------------------------------------------------------------- pause and resume


def _lever_form(page, job_id, lever):
    [form] = [
        form for form in page.forms.values() if form.action.endswith(f"/jobs/{job_id}/{lever}")
    ]
    return form


def test_pause_button_pauses_the_job_and_the_page_offers_resume(demo):
    app, registry, clock = demo
    _submit(app, "hello-every", interval="10")
    [job] = _jobs(registry)
    res = _lever_form(app.get("/"), job.id, "pause").submit()
    assert res.status_int == 303
    [paused] = _jobs(registry)
    assert paused.state == "paused"
    page = app.get("/")
    assert '<td class="state paused">paused</td>' in page.text
    _lever_form(page, job.id, "resume")  # the paused job's button is Resume
    assert not [form for form in page.forms.values() if form.action.endswith("/pause")]
    clock.advance(30)
    assert run_pending(registry, now=clock()) == 0  # never runs while paused


def test_resume_button_puts_the_job_back_on_its_schedule(demo):
    app, registry, clock = demo
    _submit(app, "hello-every", interval="10")
    [job] = _jobs(registry)
    registry.scheduler.pause_job(job.id)
    clock.advance(25)
    res = _lever_form(app.get("/"), job.id, "resume").submit()
    assert res.status_int == 303
    [resumed] = _jobs(registry)
    assert resumed.state == "scheduled"
    assert resumed.next_run_at == START + timedelta(seconds=30)
    assert '<td class="state scheduled">scheduled</td>' in app.get("/").text


def test_page_and_json_show_each_jobs_state_and_queue(demo):
    app, registry, clock = demo
    scheduler = registry.scheduler
    scheduler.add_async_job("demo.say_hello", job_id="fine", queue="emails")
    scheduler.add_async_job("demo.flaky", job_id="flaky")
    run_pending(registry, now=clock())  # flaky fails once: retrying
    scheduler.add_interval_job("demo.say_hello", interval=60, job_id="held")
    scheduler.pause_job("held")
    page = app.get("/").text
    assert '<td class="state retrying">retrying</td>' in page
    assert '<td class="state paused">paused</td>' in page
    data = {job["id"]: job for job in app.get("/jobs.json").json["jobs"]}
    assert data["flaky"]["state"] == "retrying"
    assert data["held"]["state"] == "paused"
    assert data["held"]["queue"] == "default"
    scheduler.add_date_job("demo.say_hello", START + timedelta(hours=1), job_id="later")
    scheduler.add_async_job("demo.say_hello", job_id="mail", queue="emails")
    data = {job["id"]: job for job in app.get("/jobs.json").json["jobs"]}
    assert data["later"]["state"] == "scheduled"
    assert data["mail"]["queue"] == "emails"
    assert "<td>emails</td>" in app.get("/").text


def test_pause_or_resume_of_an_unknown_job_is_a_404(demo):
    app, _, _ = demo
    token = app.get("/").forms["hello-now"]["csrf_token"].value
    for lever in ("pause", "resume"):
        res = app.post(f"/jobs/nope/{lever}", {"csrf_token": token}, status=404)
        assert "No job &#x27;nope&#x27;" in res.text


def test_pause_without_csrf_token_is_refused(demo):
    app, registry, _ = demo
    _submit(app, "hello-every")
    [job] = _jobs(registry)
    app.post(f"/jobs/{job.id}/pause", {}, status=400)
    assert _jobs(registry)[0].state == "scheduled"


# --------------------------------------------------------------------------- running jobs


def test_say_hello_runs_and_is_recorded(demo, caplog):
    app, registry, clock = demo
    _submit(app, "hello-now", name="<b>Ada</b>")
    with caplog.at_level("INFO", logger="pyramid_pyncette.demo"):
        assert run_pending(registry, now=clock()) == 1
    assert "Hello, <b>Ada</b>!" in caplog.text
    assert _jobs(registry) == []  # a one-off job is deleted once it succeeded
    [run] = registry.demo_runs
    assert run["task"] == "demo.say_hello"
    assert run["attempt"] == 1
    assert run["outcome"] == "succeeded"
    page = app.get("/")
    assert "Hello, &lt;b&gt;Ada&lt;/b&gt;!" in page.text
    assert "<b>Ada</b>" not in page.text
    assert app.get("/jobs.json").json["recent_runs"][0]["detail"] == "Hello, <b>Ada</b>!"


def test_interval_job_runs_and_shows_its_last_status(demo):
    app, registry, clock = demo
    _submit(app, "hello-every", interval="10")
    assert run_pending(registry, now=clock()) == 0
    clock.advance(10)
    assert run_pending(registry, now=clock()) == 1
    [job] = _jobs(registry)
    assert job.last_status == "succeeded"
    assert job.last_run_at == START + timedelta(seconds=10)
    assert job.next_run_at == START + timedelta(seconds=20)
    assert job.attempts == 0
    assert '<td class="succeeded">succeeded</td>' in app.get("/").text


def test_flaky_fails_on_its_first_attempt_then_succeeds(demo):
    app, registry, clock = demo
    _submit(app, "flaky")
    [job] = _jobs(registry)

    assert run_pending(registry, now=clock()) == 1
    failed = registry.scheduler.get_job(job.id)
    assert failed.last_status == "failed"
    assert failed.attempts == 1
    assert failed.state == "retrying"  # unlocked: due again at once
    assert "FlakyError" in failed.last_error
    page = app.get("/")
    assert '<td class="failed">failed</td>' in page.text
    assert "FlakyError: flaky job" in page.text
    # By id: the demo's heartbeat job sorts first when the generated id starts after 'd'.
    [listed] = [j for j in app.get("/jobs.json").json["jobs"] if j["id"] == job.id]
    assert listed["last_status"] == "failed"
    assert listed["last_error"].startswith("pyramid_pyncette.demo.tasks.FlakyError")

    clock.advance(1)
    assert run_pending(registry, now=clock()) == 1
    assert registry.scheduler.get_job(job.id) is None
    outcomes = [(run["attempt"], run["outcome"]) for run in registry.demo_runs]
    assert outcomes == [(1, "failed"), (2, "succeeded")]


def test_heartbeat_is_a_periodic_task(demo):
    _, registry, clock = demo
    [written] = registry.scheduler.sync_periodic_jobs()
    assert written.id == "demo.heartbeat"
    assert written.next_run_at == START + timedelta(minutes=1)
    clock.advance(60)
    assert run_pending(registry, now=clock()) == 1
    assert registry.scheduler.get_job("demo.heartbeat").last_status == "succeeded"
    assert [run["detail"] for run in registry.demo_runs] == ["heartbeat"]


def test_sqlite_store(tmp_path):
    path = tmp_path / "demo.sqlite"
    app, registry, clock = _make_app(f"sqlite:///{path}")
    assert not path.exists()  # nothing is opened until first use
    assert app.get("/").status_int == 200
    assert path.exists()
    _submit(app, "hello-now", name="Ada")
    _submit(app, "hello-cron")
    assert {job.task for job in _jobs(registry)} == {"demo.say_hello"}
    assert len(app.get("/jobs.json").json["jobs"]) == 2
    assert run_pending(registry, now=clock()) == 1
    [job] = _jobs(registry)
    assert job.schedule["kind"] == "cron"

    # a second application on the same file (as the daemon would be) sees the job
    other, other_registry, _ = _make_app(f"sqlite:///{path}")
    assert [j.id for j in _jobs(other_registry)] == [job.id]
    assert job.id in other.get("/").text
    registry.scheduler.repository.close()
    other_registry.scheduler.repository.close()


# --------------------------------------------------------------------------- packaging


def test_scanning_the_demo_imports_nothing_test_only():
    code = (
        "import sys\n"
        "from pyramid_pyncette.demo import main\n"
        "main({}, **{'pyncette.url': 'memory://'})\n"
        "names = ('webtest', 'pytest', 'hypothesis', 'tests')\n"
        "print(','.join(sorted(m for m in names if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=HERE
    )
    assert out.stdout.strip() == ""


def _store_files(ini_name):
    name = {"development.ini": "pyncette-demo.sqlite", "production.ini": "pyncette.sqlite"}
    base = os.path.join(ROOT, name[ini_name])
    return {path for path in (base, base + "-wal", base + "-shm") if os.path.exists(path)}


def test_development_ini_loads():
    from pyramid.paster import get_app

    before = _store_files("development.ini")
    wsgi = get_app(os.path.join(ROOT, "development.ini"))
    settings = wsgi.registry.pyncette_settings
    assert settings.url.startswith("sqlite:///")
    assert settings.url.endswith("/pyncette-demo.sqlite")
    assert settings.poll_interval == 1.0
    assert settings.concurrency == 4
    assert "demo.say_hello" in wsgi.registry.pyncette_tasks
    assert _store_files("development.ini") == before


def test_production_ini_loads():
    import plaster

    before = _store_files("production.ini")
    loader = plaster.get_loader(os.path.join(ROOT, "production.ini"), protocols=["wsgi"])
    wsgi = loader.get_wsgi_app()
    assert wsgi.registry.pyncette_settings.url.endswith("/pyncette.sqlite")
    assert wsgi.registry.settings["pyramid.reload_templates"] is False
    server = loader.get_settings("server:main")
    assert server["listen"] == "127.0.0.1:6543"
    assert _store_files("production.ini") == before


def test_json_is_json(demo):
    app, _, _ = demo
    _submit(app, "hello-now")
    res = app.get("/jobs.json")
    assert res.content_type == "application/json"
    assert json.loads(res.text)["jobs"][0]["task"] == "demo.say_hello"


# --------------------------------------------------------------------------- templates


def test_escape_text_spells_entities_as_html_escape():
    from pyramid_pyncette.demo.views import escape_text

    text = '<a href="x">it\'s & more</a>'
    assert escape_text(text).__html__() == html.escape(text, quote=True)
    assert escape_text(None).__html__() == ""
    assert escape_text(3).__html__() == "3"


def test_escape_text_keeps_markup_as_it_is():
    from markupsafe import Markup

    from pyramid_pyncette.demo.views import escape_text

    markup = Markup("<em>already html</em>")
    assert escape_text(markup) is markup


def test_stored_error_text_is_escaped_in_the_title_attribute(demo):
    app, registry, clock = demo
    _submit(app, "flaky")
    run_pending(registry, now=clock())
    page = app.get("/").text
    # With a raw quote in it the attribute would end at the first file name.
    title = re.search(r'<td title="(Traceback[^"]*)">', page)
    assert title is not None
    assert "&quot;" in title.group(1)
    assert "FlakyError: flaky job" in title.group(1)


def test_page_templates_and_stylesheet_are_package_files(demo):
    from importlib.resources import files

    app, _, _ = demo
    templates = files("pyramid_pyncette.demo") / "templates"
    names = {path.name for path in templates.iterdir()}
    assert {"base.jinja2", "home.jinja2", "demo.css"} <= names
    css = (templates / "demo.css").read_text(encoding="utf-8")
    first_rule = css.strip().splitlines()[0]
    assert first_rule in app.get("/").text


def test_views_return_data_for_the_template(demo):
    from pyramid.testing import DummyRequest

    from pyramid_pyncette.demo.views import DEFAULTS, page_data

    _, registry, _ = demo
    request = DummyRequest()
    request.registry = registry
    request.scheduler = registry.scheduler
    data = page_data(request, error="bad <input>", values={"cron": "x", "other": "y"})
    assert data["error"] == "bad <input>"  # escaped by the template, not here
    assert data["values"] == {**DEFAULTS, "cron": "x"}
    assert data["store"] == "memory://"
    assert data["combined"] is False
    assert data["jobs"] == [] and data["runs"] == [] and data["more"] is False
