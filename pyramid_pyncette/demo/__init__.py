"""A small web application showing pyramid_pyncette at work.

Run the web application and the daemon side by side, from the project root::

    pserve development.ini
    pscheduler development.ini

then open http://localhost:6543/ to schedule, watch and cancel jobs.
"""

from __future__ import annotations

from collections import deque

from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy

from pyramid_pyncette.demo.tasks import RECENT_RUNS


def main(global_config, **settings):
    """The WSGI application factory (``use = egg:pyramid_pyncette#demo``)."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_pyncette")
        config.registry.demo_runs = deque(maxlen=RECENT_RUNS)
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy(samesite="Strict"))
        config.set_default_csrf_options(require_csrf=True)
        config.add_route("home", "/")
        config.add_route("jobs_json", "/jobs.json")
        config.add_route("hello_now", "/hello/now")
        config.add_route("hello_at", "/hello/at")
        config.add_route("hello_every", "/hello/every")
        config.add_route("hello_cron", "/hello/cron")
        config.add_route("flaky", "/flaky")
        config.add_route("cancel_job", "/jobs/{id:.+}/cancel")
        config.scan("pyramid_pyncette.demo")
    return config.make_wsgi_app()
