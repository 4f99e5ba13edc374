"""The demo application includes the dashboard, open to everyone, and links to it."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from types import SimpleNamespace

from pyramid.interfaces import IRoutesMapper
from webtest import TestApp

from pyramid_pyncette.testing import FakeClock

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
START = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def _demo():
    from pyramid_pyncette.demo import main

    wsgi = main({}, **{"pyncette.url": "memory://"})
    wsgi.registry.scheduler.clock = FakeClock(START)
    return TestApp(wsgi), wsgi.registry


def test_the_demo_home_page_links_to_the_dashboard():
    app, registry = _demo()
    registry.scheduler.add_interval_job("demo.say_hello", interval=60, job_id="greeting")
    home = app.get("/")
    link = home.html.select_one("a#dashboard-link")
    assert link.attrs["href"] == "http://localhost/pyncette/"
    page = app.get(link.attrs["href"])
    assert page.status_int == 200
    assert page.html.select_one('tr[data-job-id="greeting"] td.state').get_text() == "scheduled"


def test_the_demo_dashboard_lets_any_visitor_pause_a_job():
    app, registry = _demo()
    registry.scheduler.add_interval_job("demo.say_hello", interval=60, job_id="greeting")
    app.get("/pyncette/")
    token = app.cookies["csrf_token"]
    res = app.post("/pyncette/job", {"csrf_token": token, "id": "greeting", "action": "pause"})
    assert res.status_int == 303
    assert registry.scheduler.get_job("greeting").paused
    app.post("/pyncette/job", {"id": "greeting", "action": "resume"}, status=400)
    assert registry.scheduler.get_job("greeting").paused


def test_the_demo_policy_grants_the_dashboard_permission_and_nothing_else():
    from pyramid_pyncette.demo.security import EveryoneOperatesTheDemo
    from pyramid_pyncette.settings import PyncetteSettings

    policy = EveryoneOperatesTheDemo()
    request = SimpleNamespace(
        registry=SimpleNamespace(
            pyncette_settings=PyncetteSettings(dashboard_permission="ops.jobs")
        )
    )
    assert policy.identity(request) is None
    assert policy.permits(request, None, "ops.jobs")
    assert not policy.permits(request, None, "pyncette.admin")
    assert not policy.permits(request, None, "edit")


def test_development_ini_mounts_the_dashboard_behind_its_permission():
    from pyramid.paster import get_app

    wsgi = get_app(os.path.join(ROOT, "development.ini"))
    settings = wsgi.registry.pyncette_settings
    assert settings.dashboard_path == "/pyncette"
    assert settings.dashboard_permission == "pyncette.admin"
    routes = {
        route.name: route.pattern for route in wsgi.registry.getUtility(IRoutesMapper).get_routes()
    }
    assert routes["pyncette_dashboard.jobs"] == "/pyncette/"
    with open(os.path.join(ROOT, "development.ini"), encoding="utf-8") as ini:
        text = ini.read()
    assert "grants it to EVERYONE" in text
