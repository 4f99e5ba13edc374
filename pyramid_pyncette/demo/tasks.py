"""The demo's tasks.

Every run is logged to the ``pyramid_pyncette.demo`` logger and recorded in
the registry's ring buffer of recent runs (see :func:`recent_runs`). The
buffer lives in the process that ran the job: runs made by a separate
``pscheduler`` daemon show up in its log and in the job's stored
``last_status``, not in the web process's buffer.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from pyramid.request import Request

from pyramid_pyncette import periodic_task, task

if TYPE_CHECKING:
    from pyramid.registry import Registry

log = logging.getLogger("pyramid_pyncette.demo")

#: How many runs :func:`recent_runs` keeps.
RECENT_RUNS = 50


def recent_runs(registry: Registry) -> deque[dict[str, Any]]:
    """The ring buffer of the latest runs made in this process (newest last)."""
    runs = getattr(registry, "demo_runs", None)
    if runs is None:
        runs = registry.demo_runs = deque(maxlen=RECENT_RUNS)
    return runs


def _record(request: Request, outcome: str, detail: str) -> None:
    job = request.job
    recent_runs(request.registry).append(
        {
            "job_id": job.id,
            "task": job.task,
            "attempt": job.attempt,
            "scheduled_at": job.scheduled_at,
            "ran_at": request.registry.scheduler.now(),
            "outcome": outcome,
            "detail": detail,
        }
    )


@task(name="demo.say_hello")
def say_hello(request: Request, name: str = "world") -> str:
    """Greet ``name``."""
    greeting = f"Hello, {name}!"
    log.info("job %s (attempt %d): %s", request.job.id, request.job.attempt, greeting)
    _record(request, "succeeded", greeting)
    return greeting


class FlakyError(RuntimeError):
    """The deliberate failure of :func:`flaky`."""


@task(name="demo.flaky", failure_mode="unlock")
def flaky(request: Request) -> str:
    """Fail on the first attempt and succeed on any retry.

    ``failure_mode='unlock'`` makes a failed run due again at once, so the
    retry follows on the daemon's next poll instead of after the lease expires.
    """
    attempt = request.job.attempt
    if attempt == 1:
        message = f"flaky job {request.job.id} fails on its first attempt (on purpose)"
        log.warning(message)
        _record(request, "failed", message)
        raise FlakyError(message)
    detail = f"succeeded on attempt {attempt}"
    log.info("flaky job %s %s", request.job.id, detail)
    _record(request, "succeeded", detail)
    return detail


@periodic_task(interval="1m", name="demo.heartbeat")
def heartbeat(request: Request) -> None:
    """Log once a minute while a daemon runs."""
    log.info("heartbeat (scheduled for %s)", request.job.scheduled_at.isoformat())
    _record(request, "succeeded", "heartbeat")
