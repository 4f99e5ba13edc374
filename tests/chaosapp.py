"""The application run by the daemons of ``tests/test_chaos.py``.

Every run of the task ``work`` leaves two lines in the folder named by the
``record_dir`` setting, in files of the running process:

* ``started-<pid>.log``: ``S job_id pid start_time`` when the run starts;
* ``runs-<pid>.log``: ``job_id attempt pid start_time end_time`` when it ends.

Both are flushed at once, so a process killed with SIGKILL leaves a
``started`` line and no ``runs`` line for every run it was in the middle of.
Times are ``time.time()`` of the running process. ``ready-<pid>`` appears
when the process's worker loop starts (its signal handlers are in place).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from pyramid.config import Configurator

from pyramid_pyncette import WorkerStarting, task

_lock = threading.Lock()
_files: dict[str, object] = {}


def _write(request, prefix: str, line: str) -> None:
    folder = request.registry.settings["record_dir"]
    path = os.path.join(folder, f"{prefix}-{os.getpid()}.log")
    with _lock:
        out = _files.get(path)
        if out is None:
            out = _files[path] = open(path, "a")  # noqa: SIM115 - kept open for the process
        out.write(line + "\n")
        out.flush()


@task(name="work")
def work(request, seconds: float = 0.0):
    """Record the start, take ``seconds``, record the end."""
    job_id = request.job.id
    pid = os.getpid()
    start = time.time()
    _write(request, "started", f"S {job_id} {pid} {start:.6f}")
    if seconds:
        time.sleep(seconds)
    end = time.time()
    _write(request, "runs", f"{job_id} {request.job.attempt} {pid} {start:.6f} {end:.6f}")


def _announce_ready(event) -> None:
    folder = event.registry.settings["record_dir"]
    with open(os.path.join(folder, f"ready-{os.getpid()}"), "w"):
        pass


def main(global_config, **settings):
    """The app factory (``use = call:tests.chaosapp:main``)."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_pyncette")
        config.scan("tests.chaosapp")
        config.add_subscriber(_announce_ready, WorkerStarting)
    return config.make_wsgi_app()


@dataclass(frozen=True)
class Run:
    """One finished run."""

    job_id: str
    attempt: int
    pid: int
    start: float
    end: float


@dataclass(frozen=True)
class Start:
    """One started run (finished or not)."""

    job_id: str
    pid: int
    start: float


def _lines(folder: str, prefix: str):
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix + "-"):
            with open(os.path.join(folder, name)) as lines:
                for line in lines:
                    if line.endswith("\n"):  # a line cut by a kill is not a record
                        yield line.split()


def read_runs(folder: str) -> list[Run]:
    """Every finished run, from every process."""
    return [
        Run(job_id, int(attempt), int(pid), float(start), float(end))
        for job_id, attempt, pid, start, end in _lines(folder, "runs")
    ]


def read_starts(folder: str) -> list[Start]:
    """Every started run, from every process."""
    return [
        Start(job_id, int(pid), float(start)) for _, job_id, pid, start in _lines(folder, "started")
    ]
