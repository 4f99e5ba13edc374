"""A small web application showing pyramid_pyncette at work.

Run the web application and the daemon side by side, from the project root::

    pserve development.ini
    pscheduler development.ini

then open http://localhost:6543/ to schedule, watch, pause, resume and cancel jobs,
and http://localhost:6543/pyncette/ for the operator dashboard
(``pyramid_pyncette.dashboard``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.router import Router

from pyramid_pyncette.demo.security import EveryoneOperatesTheDemo
from pyramid_pyncette.demo.tasks import RECENT_RUNS

#: The demo's pyramid_jinja2 settings (they take precedence over the INI file's).
JINJA2_SETTINGS = {
    # Auto-escaped output, spelled as html.escape spells it (see escape_text).
    "jinja2.autoescape": "true",
    "jinja2.finalize": "pyramid_pyncette.demo.views.escape_text",
}


def main(global_config: dict[str, Any], **settings: Any) -> Router:
    """The WSGI application factory (``use = egg:pyramid_pyncette#demo``)."""
    with Configurator(settings={**settings, **JINJA2_SETTINGS}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_jinja2")
        config.include("pyramid_pyncette")
        config.registry.demo_runs = deque(maxlen=RECENT_RUNS)
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy(samesite="Strict"))
        config.set_default_csrf_options(require_csrf=True)
        # The operator dashboard. Its pages require pyncette.dashboard.permission,
        # which this demo's policy grants to EVERY visitor (fine for a demo on
        # localhost; a real application grants it to its operators only).
        config.set_security_policy(EveryoneOperatesTheDemo())
        config.include("pyramid_pyncette.dashboard")
        config.add_route("home", "/")
        config.add_route("jobs_json", "/jobs.json")
        config.add_route("hello_now", "/hello/now")
        config.add_route("hello_at", "/hello/at")
        config.add_route("hello_every", "/hello/every")
        config.add_route("hello_cron", "/hello/cron")
        config.add_route("flaky", "/flaky")
        config.add_route("cancel_job", "/jobs/{id:.+}/cancel")
        config.add_route("pause_job", "/jobs/{id:.+}/pause")
        config.add_route("resume_job", "/jobs/{id:.+}/resume")
        config.scan("pyramid_pyncette.demo")
    return config.make_wsgi_app()
