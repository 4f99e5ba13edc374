"""An app whose own log lines hold words that are also store passwords and user names.

``pscheduler`` must print them as they are while it hides the store's password.
"""

from __future__ import annotations

import logging

from pyramid.config import Configurator

log = logging.getLogger("tests.redactapp")

#: What the app logs at start and from its job: ordinary words only.
ORDINARY = (
    "store unavailable? no: pass the postgres, postgresql, mysql+pymysql and redis tests; "
    "e, p, secret and %40 stay"
)


def talk(request):
    """A job that logs :data:`ORDINARY`."""
    log.warning("job says: %s", ORDINARY)


def main(global_config, **settings):
    """The app factory (``use = call:tests.redactapp:main``)."""
    log.warning("app says: %s", ORDINARY)
    with Configurator(settings=settings) as config:
        config.include("pyramid_pyncette")
        config.add_pyncette_task(talk, name="talk")
    return config.make_wsgi_app()
