"""The benchmark application: one no-op task, a few views, cheap run records.

``pscheduler`` loads it with ``use = call:benchmarks.app:main``. The task
``bench.noop`` only appends ``(job id, start time)`` to a list in memory; the
list is written once, at exit, to ``runs-<pid>.tsv`` in ``bench.record_dir``
(when that setting is given), so recording costs a list append per run.

The file starts with one JSON line of process facts (pid, when the worker
loop started, peak RSS from ``/proc/self/status``) followed by one
``job_id<TAB>started_at`` line per run. :func:`read_records` reads a folder
of them. When the worker loop starts, ``ready-<pid>`` is written too, so the
harness knows the daemon is up.

With ``bench.record_mode = counts`` (the memory workload) runs are counted
instead, in a ``bytearray`` indexed by the number in ``job-<number>`` (one
byte per job, so the recording itself does not grow the process), and saved
as ``counts-<pid>.bin``.

Views (all under pyramid_tm):

``/noop``
    does nothing (the baseline of W4);
``/add``
    ``request.scheduler.add_date_job`` one hour from now (W4);
``/async?id=...``
    ``request.scheduler.add_async_job`` with that id (W3);
``/note`` and ``/note_add``
    write a row of the app's own table, and also add a job (shared-database
    mode, when ``sqlalchemy.url`` is set).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_pyncette import WorkerStarting, task

NOOP_TASK = "bench.noop"

#: ``(job_id, started_at)`` of every run in this process.
RUNS: list[tuple[str, float]] = []
#: Runs per job number (``counts`` mode), and the first and last start.
COUNTS = bytearray()
_SPAN = [0.0, 0.0]
#: Facts written with the runs.
_FACTS: dict[str, float | int | None] = {"ready_at": None}
_RECORDING = threading.Lock()
_record_dir: str | None = None


def _note_run(job_id: str, now: float) -> None:
    RUNS.append((job_id, now))


def _count_run(job_id: str, now: float) -> None:
    index = int(job_id.rpartition("-")[2])
    with _RECORDING:
        if COUNTS[index] < 255:
            COUNTS[index] += 1
        if not _SPAN[0]:
            _SPAN[0] = now
        _SPAN[1] = now


_record = _note_run


@task(name=NOOP_TASK)
def noop(request) -> None:
    """Do nothing but note the run (``list.append`` is atomic under the GIL)."""
    _record(request.job.id, time.time())


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """``VmHWM`` (peak resident set size, kB) of a process, or None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _on_worker_starting(event) -> None:
    _FACTS["ready_at"] = now = time.time()
    if _record_dir is not None:
        with open(os.path.join(_record_dir, f"ready-{os.getpid()}"), "w") as out:
            out.write(f"{now:.6f}\n")


def _flush() -> None:
    """Write this process's runs (called once, at exit)."""
    if _record_dir is None:
        return
    with _RECORDING:
        facts = {
            "pid": os.getpid(),
            "ready_at": _FACTS["ready_at"],
            "exit_at": time.time(),
            "peak_rss_kb": peak_rss_kb(),
            "runs": len(RUNS) if _record is _note_run else sum(COUNTS),
        }
        if _record is _count_run:
            facts.update(first_run=_SPAN[0] or None, last_run=_SPAN[1] or None)
            with open(os.path.join(_record_dir, f"counts-{os.getpid()}.bin"), "wb") as out:
                out.write(COUNTS)
        path = os.path.join(_record_dir, f"runs-{os.getpid()}.tsv")
        with open(path, "w") as out:
            out.write(json.dumps(facts) + "\n")
            out.writelines(f"{job_id}\t{started:.6f}\n" for job_id, started in RUNS)


# --------------------------------------------------------------------------- reading


@dataclass
class Records:
    """Every run recorded in one folder, plus each process's facts."""

    runs: list[tuple[str, float, int]] = field(default_factory=list)  # (job_id, started, pid)
    processes: list[dict] = field(default_factory=list)
    #: Runs per job number, summed over processes (``counts`` mode only).
    counts: list[int] | None = None

    @property
    def first_run(self) -> float | None:
        if self.counts is not None:
            return min((p["first_run"] for p in self.processes if p.get("first_run")), default=None)
        return min((started for _, started, _ in self.runs), default=None)

    @property
    def last_run(self) -> float | None:
        if self.counts is not None:
            return max((p["last_run"] for p in self.processes if p.get("last_run")), default=None)
        return max((started for _, started, _ in self.runs), default=None)

    @property
    def ready_at(self) -> float | None:
        """When the first worker loop started."""
        return min((p["ready_at"] for p in self.processes if p.get("ready_at")), default=None)

    @property
    def total(self) -> int:
        return sum(self.counts) if self.counts is not None else len(self.runs)

    def starts(self) -> dict[str, float]:
        """The first start time of each job id."""
        first: dict[str, float] = {}
        for job_id, started, _ in self.runs:
            if job_id not in first or started < first[job_id]:
                first[job_id] = started
        return first

    def check(self, expected: set[str] | int) -> tuple[int, int]:
        """``(duplicates, lost)``: extra runs of a job, and expected jobs never run.

        ``expected`` is a set of ids, or (``counts`` mode) the number of jobs.
        """
        if self.counts is not None:
            wanted = expected if isinstance(expected, int) else len(expected)
            counts = self.counts[:wanted]
            return sum(c - 1 for c in counts if c > 1), sum(1 for c in counts if c == 0)
        seen: dict[str, int] = {}
        for job_id, _, _ in self.runs:
            seen[job_id] = seen.get(job_id, 0) + 1
        duplicates = sum(count - 1 for count in seen.values())
        lost = len(expected - seen.keys())
        return duplicates, lost


def read_records(folder: str) -> Records:
    """Read every ``runs-*.tsv`` (and ``counts-*.bin``) file in ``folder``."""
    records = Records()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("counts-") and name.endswith(".bin"):
            with open(path, "rb") as data:
                counts = data.read()
            if records.counts is None:
                records.counts = [0] * len(counts)
            for index, count in enumerate(counts):
                records.counts[index] += count
            continue
        if not (name.startswith("runs-") and name.endswith(".tsv")):
            continue
        with open(path) as lines:
            facts = json.loads(next(lines))
            records.processes.append(facts)
            pid = facts["pid"]
            for line in lines:
                job_id, started = line.rstrip("\n").split("\t")
                records.runs.append((job_id, float(started), pid))
    return records


def ready_pids(folder: str) -> list[int]:
    """Pids whose worker loop has started (``ready-<pid>`` files)."""
    return [int(name[6:]) for name in os.listdir(folder) if name.startswith("ready-")]


# --------------------------------------------------------------------------- views


def _in_an_hour() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def noop_view(request):
    return Response("ok")


def add_view(request):
    job = request.scheduler.add_date_job(NOOP_TASK, _in_an_hour())
    return Response(job.id)


def async_view(request):
    job = request.scheduler.add_async_job(NOOP_TASK, job_id=request.params["id"])
    return Response(job.id)


def _write_note(request) -> None:
    from zope.sqlalchemy import mark_changed

    request.dbsession.execute(_notes().insert().values(body="note"))
    mark_changed(request.dbsession)  # a Core statement: tell zope.sqlalchemy to commit


def note_view(request):
    _write_note(request)
    return Response("ok")


def note_add_view(request):
    _write_note(request)
    job = request.scheduler.add_date_job(NOOP_TASK, _in_an_hour())
    return Response(job.id)


# --------------------------------------------------------------------------- the app's own database

_NOTES = None


def _notes():
    global _NOTES
    if _NOTES is None:
        import sqlalchemy as sa

        _NOTES = sa.Table(
            "bench_notes",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("body", sa.String(50)),
        )
    return _NOTES


def get_dbsession(request):
    """The ``pyncette.session_hook`` of the shared-database mode."""
    return request.dbsession


def _include_database(config: Configurator, url: str) -> None:
    """A cookiecutter-style ``request.dbsession`` bound to ``request.tm``."""
    import sqlalchemy as sa
    import zope.sqlalchemy
    from sqlalchemy.orm import sessionmaker

    engine = sa.create_engine(url)
    _notes().metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    config.registry.bench_engine = engine

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, "dbsession", reify=True)


def main(global_config, **settings):
    """The app factory (``use = call:benchmarks.app:main``)."""
    global _record, _record_dir
    record_dir = settings.get("bench.record_dir")
    if record_dir and _record_dir is None:
        _record_dir = record_dir
        if settings.get("bench.record_mode") == "counts":
            COUNTS.extend(bytes(int(settings["bench.expected"])))
            _record = _count_run
        atexit.register(_flush)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        if settings.get("sqlalchemy.url"):
            _include_database(config, settings["sqlalchemy.url"])
        config.include("pyramid_pyncette")
        config.add_subscriber(_on_worker_starting, WorkerStarting)
        for name, view in [
            ("noop", noop_view),
            ("add", add_view),
            ("async", async_view),
            ("note", note_view),
            ("note_add", note_add_view),
        ]:
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name)
        config.scan("benchmarks.app")
    return config.make_wsgi_app()
