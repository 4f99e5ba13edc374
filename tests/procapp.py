"""A tiny application for tests that run real ``pscheduler`` processes.

Every run appends ``job_id attempt pid`` to a per-process file in the folder
named by ``record_dir`` in the app settings, so a test can count executions
across processes without sharing a store. A daemon whose worker loop has
started writes ``ready-<pid>`` there.
"""

from __future__ import annotations

import os
import time

from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_pyncette import WorkerStarting, task


def _append(request, line: str) -> None:
    folder = request.registry.settings["record_dir"]
    with open(os.path.join(folder, f"runs-{os.getpid()}.log"), "a") as out:
        out.write(line + "\n")


@task(name="record")
def record(request, seconds: float = 0.0):
    """Record the run, optionally taking ``seconds``."""
    if seconds:
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
