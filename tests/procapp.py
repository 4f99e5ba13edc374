"""A tiny application for tests that run real ``pscheduler`` processes.

Every run appends ``job_id attempt pid`` to a per-process file in the folder
named by ``record_dir`` in the app settings, so a test can count executions
across processes without sharing a store. A daemon whose worker loop has
started writes ``ready-<pid>`` there; the task ``long_run`` also writes
``started-<pid>.log`` lines when it starts, and every ``LeaseLost`` event
appends the job id to ``lost-<pid>.log``.
"""

from __future__ import annotations

import os
import time

from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_pyncette import LeaseLost, WorkerStarting, task


def _append(request, line: str, prefix: str = "runs") -> None:
    folder = request.registry.settings["record_dir"]
    with open(os.path.join(folder, f"{prefix}-{os.getpid()}.log"), "a") as out:
        out.write(line + "\n")


@task(name="record")
def record(request, seconds: float = 0.0):
    """Record the run, optionally taking ``seconds``."""
    if seconds:
        time.sleep(seconds)
    _append(request, f"{request.job.id} {request.job.attempt} {os.getpid()}")


@task(name="long_run")
def long_run(request, seconds: float):
    """Record the start, take ``seconds``, then record the run like ``record``."""
    _append(request, request.job.id, prefix="started")
    time.sleep(seconds)
    _append(request, f"{request.job.id} {request.job.attempt} {os.getpid()}")


@task(name="fail")
def fail(request):
    """Always fail."""
    raise RuntimeError("failing on purpose")


def _announce_ready(event) -> None:
    """Write ``ready-<pid>`` in ``record_dir`` once the worker loop starts."""
    folder = event.registry.settings.get("record_dir")
    if folder:
        with open(os.path.join(folder, f"ready-{os.getpid()}"), "w"):
            pass


def _record_lost_lease(event) -> None:
    """Append the job id of a ``LeaseLost`` event to ``lost-<pid>.log``."""
    folder = event.registry.settings["record_dir"]
    with open(os.path.join(folder, f"lost-{os.getpid()}.log"), "a") as out:
        out.write(event.job.id + "\n")


def add_view(request):
    """Schedule ``record`` through the request's transaction."""
    job = request.scheduler.add_async_job("record", job_id=request.params["id"])
    return Response(job.id)


def main(global_config, **settings):
    """The app factory (``use = call:tests.procapp:main``)."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_pyncette")
        config.add_route("add", "/add")
        config.add_view(add_view, route_name="add")
        config.add_subscriber(_announce_ready, WorkerStarting)
        config.add_subscriber(_record_lost_lease, LeaseLost)
        config.scan("tests.procapp")
    return config.make_wsgi_app()


def read_runs(folder: str) -> list[tuple[str, int, int]]:
    """Every recorded run as ``(job_id, attempt, pid)``."""
    runs = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("runs-"):
            with open(os.path.join(folder, name)) as lines:
                for line in lines:
                    job_id, attempt, pid = line.split()
                    runs.append((job_id, int(attempt), int(pid)))
    return runs


def read_lines(folder: str, prefix: str) -> list[str]:
    """The lines of every ``<prefix>-<pid>.log`` file in ``folder``."""
    lines = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix + "-") and name.endswith(".log"):
            with open(os.path.join(folder, name)) as text:
                lines.extend(line.strip() for line in text if line.endswith("\n"))
    return lines
