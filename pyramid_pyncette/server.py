"""Combined mode: serve the app with waitress and run the lease loop beside it.

``[server:main] use = egg:pyramid_pyncette#main`` in an INI file makes
``pserve`` start a worker thread in the web process, then serve with
waitress (every waitress option, such as ``listen``, is passed through).
Jobs committed by this process's requests wake the worker at once; it
claims from the queues of ``pyncette.queues`` (every queue by default). Only
this server factory starts a loop: ``pshell``, ``prequest``, bootstrap
scripts and ``pscheduler`` itself never do.

Meant for development; in production run ``pscheduler`` beside plain
waitress.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from pyramid.exceptions import ConfigurationError

from .redaction import install_log_redaction

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from .worker import Worker

log = logging.getLogger(__name__)

#: Seconds to wait for running jobs when the server stops.
SHUTDOWN_GRACE = 30.0


def find_registry(app: Any) -> Registry:
    """The Pyramid registry behind a WSGI app (a Router, possibly wrapped)."""
    seen = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        registry = getattr(app, "registry", None)
        if registry is not None:
            return registry
        app = getattr(app, "app", None) or getattr(app, "application", None)
    raise ConfigurationError(
        "egg:pyramid_pyncette#main serves Pyramid applications only; the WSGI app given to it "
        "has no registry (is it wrapped by middleware without an .app attribute?)"
    )


def start_worker(registry: Registry) -> tuple[Worker, threading.Thread]:
    """Start a :class:`~pyramid_pyncette.worker.Worker` in a daemon thread."""
    from .worker import Worker

    if getattr(registry, "scheduler", None) is None:
        raise ConfigurationError(
            "egg:pyramid_pyncette#main needs an app that includes pyramid_pyncette; add "
            "'pyramid.includes = pyramid_pyncette' or config.include('pyramid_pyncette')"
        )
    worker = Worker(registry)
    registry.pyncette_worker = worker
    registry.scheduler.wake_listeners.append(worker.wake)
    thread = threading.Thread(target=worker.run, name="pyncette-worker", daemon=True)
    thread.start()
    return worker, thread


def stop_worker(worker: Worker, thread: threading.Thread, grace: float = SHUTDOWN_GRACE) -> None:
    """Stop claiming and wait up to ``grace`` seconds for running jobs."""
    worker.stop()
    thread.join(grace)
    if thread.is_alive():
        log.warning("jobs still running after %.0fs; their leases will expire", grace)
    with contextlib.suppress(ValueError):
        worker.registry.scheduler.wake_listeners.remove(worker.wake)
    if getattr(worker.registry, "pyncette_worker", None) is worker:
        worker.registry.pyncette_worker = None


def _stop_on_sigterm() -> None:
    """Turn SIGTERM (sent by ``pserve --reload`` on a code change) into a clean stop."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def server_factory(global_conf: dict[str, Any], **settings: Any) -> Callable[[Any], int]:
    """``paste.server_factory``: waitress plus an in-process worker."""

    def serve(app: Any) -> int:
        import waitress

        registry = find_registry(app)
        # As pscheduler does: no log line of this process shows a store password.
        install_log_redaction()
        worker, thread = start_worker(registry)
        _stop_on_sigterm()
        try:
            waitress.serve(app, **settings)
        except KeyboardInterrupt:
            pass
        finally:
            stop_worker(worker, thread)
        return 0

    return serve
