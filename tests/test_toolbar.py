"""The debug toolbar's "Jobs" panel (``pyramid_pyncette.toolbar``).

Each test drives a real application with pyramid_debugtoolbar through
webtest, then fetches the toolbar's page for that request
(``/_debug_toolbar/<request id>``, the link the toolbar injects into the
page) and reads the panel's table.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from pyramid.exceptions import ConfigurationError
from pyramid.response import Response
from webtest import TestApp

from pyramid_pyncette.testing import FakeClock

pytest.importorskip("pyramid_debugtoolbar")

START = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
LATER = START + timedelta(minutes=5)
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
TOOLBAR_SETTINGS = {
    "pyncette.url": "memory://",
    "debugtoolbar.includes": "pyramid_pyncette.toolbar",
}
PAGE = "<html><body>done</body></html>"


def greet(request, name="world"):
    """The task the views schedule."""


def _page() -> Response:
    # An HTML page, so the toolbar injects the link to its page for this request.
    return Response(PAGE, content_type="text/html")


def _make_app(make_config, views, settings=TOOLBAR_SETTINGS, toolbar=True):
    """An app whose routes ``/<name>`` run ``views[name](request)``, and its registry."""
    include = ["pyramid_tm", "pyramid_pyncette"]
    if toolbar:
        include.append("pyramid_debugtoolbar")
    config = make_config(settings, include=include)
    config.add_pyncette_task(greet, name="greet")
    for name, view in views.items():

        def page_view(request, view=view):
            view(request)
            return _page()

        config.add_route(name, f"/{name}")
        config.add_view(page_view, route_name=name)
    wsgi = config.make_wsgi_app()
    wsgi.registry.scheduler.clock = FakeClock(START)
    return TestApp(wsgi, extra_environ=LOCAL), wsgi.registry


def _request_id(res) -> str:
    match = re.search(r"/_debug_toolbar/([0-9a-f]+)", res.text)
    assert match, "the toolbar injected no link into the page"
    return match.group(1)


def _panel(app, res) -> str:
    """The HTML of the Jobs panel on the toolbar's page for the request behind ``res``."""
    page = app.get(f"/_debug_toolbar/{_request_id(res)}").text
    start = page.index('id="pDebugPanel-pyncette_jobs-content"')
    end = page.index('class="pDebugPanelContent"', start)
    end = page.index("</div>", page.index('class="scroll"', end))
    return page[start:end]


def _rows(panel: str) -> list[dict[str, str]]:
    """The panel's table as dicts keyed by column title (cell text, unescaped)."""
    heads = re.findall(r"<th>(.*?)</th>", panel)
    rows = []
    for body in re.findall(r"<tr class=\"pyncette-[\w-]+\">(.*?)</tr>", panel, re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", cell))
            for cell in re.findall(r"<td>(.*?)</td>", body, re.S)
        ]
        rows.append(dict(zip(heads, cells, strict=True)))
    return rows


# --------------------------------------------------------------------------- what it shows


def test_panel_lists_the_job_a_view_added(make_config):
    def add(request):
        request.scheduler.add_date_job(
            "greet", LATER, kwargs={"name": "Ada"}, job_id="greet-ada", queue="mail"
        )

    app, registry = _make_app(make_config, {"add": add})
    res = app.get("/add")
    [row] = _rows(_panel(app, res))
    assert row == {
        "Action": "added",
        "Job": "greet-ada",
        "Task": "greet",
        "Arguments": 'name="Ada"',
        "Schedule": f"at {LATER.isoformat()}",
        "Queue": "mail",
        "Runs at": "2030-01-01 12:05:00 UTC",
        "Transaction": "committed",
    }
    assert registry.scheduler.get_job("greet-ada") is not None


def test_tab_counts_the_writes_of_the_request(make_config):
    def add_two(request):
        request.scheduler.add_async_job("greet")
        request.scheduler.add_async_job("greet")

    app, _ = _make_app(make_config, {"add": add_two})
    res = app.get("/add")
    page = app.get(f"/_debug_toolbar/{_request_id(res)}").text
    tab = page[page.index('id="pDebugPanel-pyncette_jobs"') :]
    tab = tab[: tab.index("</li>")]
    assert re.search(r'<span class="badge[^"]*">2</span>', tab)
    assert "Jobs" in tab


def test_aborted_transaction_shows_its_jobs_as_aborted(make_config):
    def add_then_doom(request):
        request.scheduler.add_async_job("greet", job_id="never")
        request.tm.doom()  # pyramid_tm aborts a doomed transaction

    app, registry = _make_app(make_config, {"doomed": add_then_doom})
    res = app.get("/doomed")
    [row] = _rows(_panel(app, res))
    assert (row["Action"], row["Job"], row["Transaction"]) == ("added", "never", "aborted")
    assert registry.scheduler.get_job("never") is None


def test_commit_that_fails_at_the_store_shows_its_jobs_as_aborted(make_config):
    def add(request):
        request.scheduler.add_async_job("greet", job_id="lost")

    app, registry = _make_app(make_config, {"add": add})
    repository = registry.scheduler.repository

    def refuse(*args, **kwargs):
        raise ValueError("the store refused the write")

    repository.stage = refuse
    # The toolbar catches the commit's error and shows its exception page.
    res = app.get("/add", status=500)
    [row] = _rows(_panel(app, res))
    assert (row["Job"], row["Transaction"]) == ("lost", "aborted")
    assert registry.scheduler.get_job("lost") is None


def test_committed_and_aborted_requests_each_show_their_own_outcome(make_config):
    def add(request):
        request.scheduler.add_async_job("greet", job_id="kept")

    def add_then_doom(request):
        request.scheduler.add_async_job("greet", job_id="dropped")
        request.tm.doom()

    app, _ = _make_app(make_config, {"add": add, "doomed": add_then_doom})
    kept = app.get("/add")
    dropped = app.get("/doomed")
    assert [(r["Job"], r["Transaction"]) for r in _rows(_panel(app, kept))] == [
        ("kept", "committed")
    ]
    assert [(r["Job"], r["Transaction"]) for r in _rows(_panel(app, dropped))] == [
        ("dropped", "aborted")
    ]


def test_cancel_is_shown_with_the_job_it_removed(make_config):
    def cancel(request):
        request.scheduler.cancel_job("old")
        request.scheduler.cancel_job("missing")

    app, registry = _make_app(make_config, {"cancel": cancel})
    registry.scheduler.add_date_job("greet", LATER, kwargs={"name": "Bo"}, job_id="old")
    res = app.get("/cancel")
    first, second = _rows(_panel(app, res))
    assert first["Action"] == "cancelled"
    assert (first["Job"], first["Task"], first["Arguments"]) == ("old", "greet", 'name="Bo"')
    assert first["Transaction"] == "committed"
    assert (second["Action"], second["Job"], second["Task"]) == (
        "cancelled (no such job)",
        "missing",
        "",
    )
    assert registry.scheduler.get_job("old") is None


def test_adding_an_existing_id_is_shown_as_a_replace(make_config):
    def add_twice(request):
        request.scheduler.add_async_job("greet", job_id="same")
        request.scheduler.add_async_job("greet", job_id="same", kwargs={"name": "again"})
        request.scheduler.add_async_job("greet", job_id="stored")

    app, registry = _make_app(make_config, {"add": add_twice})
    registry.scheduler.add_async_job("greet", job_id="stored")
    res = app.get("/add")
    rows = _rows(_panel(app, res))
    assert [(r["Action"], r["Job"]) for r in rows] == [
        ("added", "same"),
        ("replaced", "same"),
        ("replaced", "stored"),
    ]


def test_pause_resume_and_retry_are_shown(make_config):
    def steer(request):
        request.scheduler.pause_job("steered")
        request.scheduler.resume_job("steered")
        request.scheduler.retry_job("steered")

    app, registry = _make_app(make_config, {"steer": steer})
    registry.scheduler.add_date_job("greet", LATER, job_id="steered")
    res = app.get("/steer")
    rows = _rows(_panel(app, res))
    assert [(r["Action"], r["Job"]) for r in rows] == [
        ("paused", "steered"),
        ("resumed", "steered"),
        ("retried", "steered"),
    ]
    assert rows[0]["Runs at"] == "paused"
    assert rows[2]["Runs at"] == "2030-01-01 12:00:00 UTC"


def test_registry_scheduler_writes_are_shown_as_without_transaction(make_config):
    def add_now(request):
        request.registry.scheduler.add_async_job("greet", job_id="at-once")

    app, _ = _make_app(make_config, {"now": add_now})
    res = app.get("/now")
    [row] = _rows(_panel(app, res))
    assert (row["Job"], row["Transaction"]) == ("at-once", "no transaction")


def test_request_without_job_writes_says_so(make_config):
    app, _ = _make_app(make_config, {"idle": lambda request: None})
    res = app.get("/idle")
    panel = _panel(app, res)
    assert _rows(panel) == []
    assert "This request added, replaced or cancelled no job." in panel


def test_arguments_and_ids_are_escaped(make_config):
    hostile = "<script>alert('x')</script>"

    def add(request):
        request.scheduler.add_async_job("greet", kwargs={"name": hostile}, job_id="<b>id</b>")

    app, _ = _make_app(make_config, {"add": add})
    res = app.get("/add")
    panel = _panel(app, res)
    assert "<script>" not in panel
    assert "<b>id</b>" not in panel
    assert "&lt;script&gt;" in panel
    [row] = _rows(panel)
    assert row["Arguments"] == f'name="{hostile}"'
    assert row["Job"] == "<b>id</b>"


# --------------------------------------------------------------------------- when it records


def test_nothing_is_recorded_without_the_toolbar(make_config):
    seen = []

    def add(request):
        request.scheduler.add_async_job("greet", job_id="plain")
        seen.append(vars(request).copy())

    app, registry = _make_app(make_config, {"add": add}, toolbar=False)
    app.get("/add")
    assert registry.scheduler.write_recorder is None
    assert not any(name.startswith("pyncette_toolbar") for name in seen[0])
    assert registry.scheduler.get_job("plain") is not None


def test_nothing_is_recorded_when_the_toolbar_lacks_the_include(make_config):
    def add(request):
        request.scheduler.add_async_job("greet", job_id="plain")

    app, registry = _make_app(make_config, {"add": add}, settings={"pyncette.url": "memory://"})
    res = app.get("/add")
    assert registry.scheduler.write_recorder is None
    page = app.get(f"/_debug_toolbar/{_request_id(res)}").text
    assert "pDebugPanel-pyncette_jobs" not in page


def test_requests_the_toolbar_does_not_watch_are_not_recorded(make_config):
    from pyramid_pyncette.toolbar.recording import RECORD_ATTRIBUTE

    seen = []

    def add(request):
        request.scheduler.add_async_job("greet", job_id="remote")
        seen.append(hasattr(request, RECORD_ATTRIBUTE))

    app, registry = _make_app(make_config, {"add": add})
    res = app.get("/add", extra_environ={"REMOTE_ADDR": "192.0.2.7"})
    assert registry.scheduler.write_recorder is not None
    assert seen == [False]
    assert "/_debug_toolbar/" not in res.text
    assert registry.scheduler.get_job("remote") is not None


def test_jobs_added_outside_a_request_are_not_recorded(make_config):
    app, registry = _make_app(make_config, {"idle": lambda request: None})
    registry.scheduler.add_async_job("greet", job_id="script")
    res = app.get("/idle")
    assert _rows(_panel(app, res)) == []


# --------------------------------------------------------------------------- set-up errors


def test_including_the_panel_in_the_app_is_refused_with_the_fix(make_config):
    config = make_config(include=["pyramid_pyncette"])
    with pytest.raises(ConfigurationError, match=r"debugtoolbar\.includes"):
        config.include("pyramid_pyncette.toolbar")


def test_panel_without_pyramid_pyncette_is_refused_with_the_fix(make_config):
    config = make_config(TOOLBAR_SETTINGS, include=["pyramid_tm", "pyramid_debugtoolbar"])
    with pytest.raises(ConfigurationError, match=r"config.include\('pyramid_pyncette'\)"):
        config.make_wsgi_app()


# --------------------------------------------------------------------------- the recorder hook


def test_a_raising_write_recorder_is_logged_and_ignored(config, caplog):
    config.add_pyncette_task(greet, name="greet")
    config.commit()
    scheduler = config.registry.scheduler

    def broken(*args):
        raise RuntimeError("recorder bug")

    scheduler.write_recorder = broken
    with caplog.at_level(logging.ERROR, logger="pyramid_pyncette.scheduler"):
        scheduler.add_async_job("greet", job_id="still-added")
    assert scheduler.get_job("still-added") is not None
    assert "write recorder raised" in caplog.text


def test_write_recorder_is_told_each_write_and_shared_by_bound_copies(config):
    import transaction

    config.add_pyncette_task(greet, name="greet")
    config.commit()
    scheduler = config.registry.scheduler
    told = []
    scheduler.write_recorder = lambda s, action, job_id, job: told.append(
        (s, action, job_id, job and job.task)
    )
    scheduler.add_async_job("greet", job_id="a")
    manager = transaction.TransactionManager(explicit=True)
    bound = scheduler.bind(manager)
    with manager:
        bound.add_async_job("greet", job_id="a")
        bound.cancel_job("a")
    assert told == [
        (scheduler, "added", "a", "greet"),
        (bound, "replaced", "a", "greet"),
        (bound, "cancelled", "a", "greet"),
    ]


def test_unreadable_job_before_an_add_is_recorded_as_added_or_replaced(config):
    config.add_pyncette_task(greet, name="greet")
    config.commit()
    scheduler = config.registry.scheduler
    told = []
    scheduler.write_recorder = lambda s, action, job_id, job: told.append(action)
    real_get = scheduler.writer.get

    def unreadable(job_id):
        raise ConnectionError("store down")

    scheduler.writer.get = unreadable
    scheduler.add_async_job("greet", job_id="x")
    scheduler.writer.get = real_get
    assert told == ["added or replaced"]
    assert scheduler.get_job("x") is not None


def test_generated_ids_are_recorded_as_added_without_reading_the_store(config):
    config.add_pyncette_task(greet, name="greet")
    config.commit()
    scheduler = config.registry.scheduler
    told = []
    scheduler.write_recorder = lambda s, action, job_id, job: told.append(action)

    def no_reads(job_id):
        raise AssertionError("the store was read")

    scheduler.writer.get = no_reads
    job = scheduler.add_async_job("greet")
    assert told == ["added"]
    assert job.id


# --------------------------------------------------------------------------- documented set-ups


def _readme_toolbar_settings() -> dict[str, str]:
    """The settings of the README's "Debug toolbar" INI block."""
    import configparser
    from pathlib import Path

    from tests.daemon import ROOT

    readme = (Path(ROOT) / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Debug toolbar\n") :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(r"^```ini\n(.*?)^```$", section, re.M | re.S)
    assert block, "the README's Debug toolbar section has no INI block"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(block.group(1))
    return dict(parser["app:main"])


def test_readme_settings_turn_the_panel_on(make_config):
    settings = _readme_toolbar_settings()
    assert settings["debugtoolbar.includes"] == "pyramid_pyncette.toolbar"

    def add(request):
        request.scheduler.add_async_job("greet", job_id="documented")

    # pyramid.includes is what the INI loader includes: here, by hand.
    include = settings.pop("pyramid.includes")
    config = make_config({**settings, "pyncette.url": "memory://"}, include=["pyramid_tm"])
    for name in include.split():
        config.include(name)
    config.include("pyramid_pyncette")
    config.add_pyncette_task(greet, name="greet")
    config.add_route("add", "/add")
    config.add_view(lambda request: add(request) or _page(), route_name="add")
    app = TestApp(config.make_wsgi_app(), extra_environ=LOCAL)
    res = app.get("/add")
    assert [(r["Job"], r["Transaction"]) for r in _rows(_panel(app, res))] == [
        ("documented", "committed")
    ]
    remote = app.get("/add", extra_environ={"REMOTE_ADDR": "192.0.2.7"})
    assert "/_debug_toolbar/" not in remote.text


def test_development_ini_turns_the_panel_on():
    import os

    from pyramid.paster import get_app

    from tests.daemon import ROOT

    wsgi = get_app(os.path.join(ROOT, "development.ini"))
    settings = wsgi.registry.settings
    assert settings["debugtoolbar.includes"] == ["pyramid_pyncette.toolbar"]
    assert settings["debugtoolbar.hosts"] == ["127.0.0.1", "::1"]
    assert wsgi.registry.scheduler.write_recorder is not None
