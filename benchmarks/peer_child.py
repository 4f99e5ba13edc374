"""Peer schedulers under the same workloads; runs inside the peers' virtualenv.

This file imports nothing from the project: :mod:`benchmarks.peers` runs it
with the virtualenv's interpreter, which has ``pyncette==1.1.0`` and
``APScheduler==3.11.*`` installed, and reads one JSON object from stdout.

Modes:

``drain``
    store ``n`` one-off no-op jobs that are already due, start the scheduler
    and time it until every job ran once (W1, one process);
``lateness``
    start the scheduler, add ``n`` jobs due 1 to 5 s from now in the same
    process, and report how late each started (W3 b).

Systems:

``pyncette``
    a ``dynamic_task`` whose instances are scheduled with ``execute_at``
    (pyncette's one-off jobs), run by ``PyncetteContext.run`` with the same
    ``batch_size`` and ``concurrency_limit`` as our daemon's batch size and
    concurrency;
``apscheduler``
    a ``BackgroundScheduler`` with a ``SQLAlchemyJobStore``, a
    ``ThreadPoolExecutor`` of ``concurrency`` threads, date-triggered jobs,
    ``coalesce=False`` and ``misfire_grace_time=None`` (so a backlog runs),
    added while the scheduler is paused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

#: ``(job name, started_at)`` of every run.
RUNS: list[tuple[str, float]] = []
#: Set when ``EXPECTED`` runs were recorded.
DONE = threading.Event()
EXPECTED = 0


def _record(name: str) -> None:
    RUNS.append((name, time.time()))
    if len(RUNS) >= EXPECTED:
        DONE.set()


def aps_noop(name: str) -> None:
    """The APScheduler job function (referenced as ``peer_child:aps_noop``)."""
    _record(name)


def _summary(runs: list[tuple[str, float]], expected: list[str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for name, _ in runs:
        counts[name] = counts.get(name, 0) + 1
    return {
        "runs": len(runs),
        "duplicates": sum(c - 1 for c in counts.values()),
        "lost": len(set(expected) - counts.keys()),
        "first_run": min((t for _, t in runs), default=None),
        "last_run": max((t for _, t in runs), default=None),
    }


# --------------------------------------------------------------------------- pyncette


def _pyncette_app(args: argparse.Namespace):
    from pyncette import Pyncette

    options: dict[str, Any] = {
        "batch_size": args.batch_size,
        "concurrency_limit": args.concurrency,
        "poll_interval": timedelta(seconds=args.poll_interval),
    }
    if args.store == "sqlite":
        from pyncette.sqlite import sqlite_repository

        options.update(repository_factory=sqlite_repository, sqlite_database=args.path)
    elif args.store == "postgresql":
        from pyncette.postgres import postgres_repository

        url = f"postgresql://{args.user}@{args.host}:{args.port}/{args.database}"
        options.update(repository_factory=postgres_repository, postgres_url=url)
    elif args.store == "mariadb":
        from pyncette.mysql import mysql_repository

        options.update(
            repository_factory=mysql_repository,
            mysql_host=args.host,
            mysql_port=args.port,
            mysql_user=args.user,
            mysql_database=args.database,
        )
    elif args.store == "redis":
        from pyncette.redis import redis_repository

        options.update(repository_factory=redis_repository, redis_url=args.url)
    else:
        raise SystemExit(f"pyncette: no store {args.store!r}")
    poll = options.pop("poll_interval")
    factory = options.pop("repository_factory")
    app = Pyncette(repository_factory=factory, poll_interval=poll, **options)

    @app.dynamic_task()
    async def noop(context) -> None:
        _record(context.task.name)

    return app, noop


async def _pyncette_schedule(ctx, task, names: list[str], when: list[datetime]) -> float:
    began = time.perf_counter()
    limit = asyncio.Semaphore(20)

    async def one(name: str, at: datetime) -> None:
        async with limit:
            await ctx.schedule_task(task, name, execute_at=at)

    await asyncio.gather(*(one(name, at) for name, at in zip(names, when, strict=True)))
    return time.perf_counter() - began


async def _pyncette_drain(args: argparse.Namespace) -> dict[str, Any]:
    app, task = _pyncette_app(args)
    names = [f"job-{i:07d}" for i in range(args.n)]
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    async with app.create() as ctx:
        insert_seconds = await _pyncette_schedule(ctx, task, names, [past] * args.n)
        loop_start = time.time()
        runner = asyncio.ensure_future(ctx.run())
        deadline = time.monotonic() + args.timeout
        while not DONE.is_set() and time.monotonic() < deadline and not runner.done():
            await asyncio.sleep(0.01)
        ctx.shutdown()
        await runner
    end = time.time()
    return {
        "insert_seconds": insert_seconds,
        "loop_start": loop_start,
        "end": end,
        "timed_out": not DONE.is_set(),
        **_summary(RUNS, names),
    }


async def _pyncette_lateness(args: argparse.Namespace) -> dict[str, Any]:
    app, task = _pyncette_app(args)
    names = [f"late-{i:05d}" for i in range(args.n)]
    async with app.create() as ctx:
        runner = asyncio.ensure_future(ctx.run())
        await asyncio.sleep(1.0)
        base = datetime.now(timezone.utc)
        when = [base + timedelta(seconds=1 + 4 * i / max(1, args.n - 1)) for i in range(args.n)]
        due = {name: at.timestamp() for name, at in zip(names, when, strict=True)}
        await _pyncette_schedule(ctx, task, names, when)
        deadline = time.monotonic() + 15 + args.poll_interval * 2
        while not DONE.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        ctx.shutdown()
        await runner
    return _lateness(due)


# --------------------------------------------------------------------------- APScheduler


def _apscheduler(args: argparse.Namespace):
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    if args.store not in ("sqlite", "postgresql", "mariadb"):
        raise SystemExit(f"apscheduler: no store {args.store!r}")
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=args.url)},
        executors={"default": ThreadPoolExecutor(args.concurrency)},
        job_defaults={"coalesce": False, "misfire_grace_time": None, "max_instances": 1},
        timezone=timezone.utc,
    )


def _aps_add(scheduler, names: list[str], when: list[datetime]) -> float:
    began = time.perf_counter()
    for name, at in zip(names, when, strict=True):
        scheduler.add_job(
            "peer_child:aps_noop", "date", run_date=at, args=[name], id=name, name=name
        )
    return time.perf_counter() - began


def _apscheduler_drain(args: argparse.Namespace) -> dict[str, Any]:
    scheduler = _apscheduler(args)
    names = [f"job-{i:07d}" for i in range(args.n)]
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    scheduler.start(paused=True)
    insert_seconds = _aps_add(scheduler, names, [past] * args.n)
    loop_start = time.time()
    scheduler.resume()
    DONE.wait(args.timeout)
    scheduler.shutdown(wait=True)
    end = time.time()
    return {
        "insert_seconds": insert_seconds,
        "loop_start": loop_start,
        "end": end,
        "timed_out": not DONE.is_set(),
        **_summary(RUNS, names),
    }


def _apscheduler_lateness(args: argparse.Namespace) -> dict[str, Any]:
    scheduler = _apscheduler(args)
    names = [f"late-{i:05d}" for i in range(args.n)]
    scheduler.start()
    time.sleep(1.0)
    base = datetime.now(timezone.utc)
    when = [base + timedelta(seconds=1 + 4 * i / max(1, args.n - 1)) for i in range(args.n)]
    due = {name: at.timestamp() for name, at in zip(names, when, strict=True)}
    _aps_add(scheduler, names, when)
    DONE.wait(15)
    scheduler.shutdown(wait=True)
    return _lateness(due)


# --------------------------------------------------------------------------- main


def _lateness(due: dict[str, float]) -> dict[str, Any]:
    late = []
    seen = set()
    for name, started in RUNS:
        if name in due and name not in seen:
            seen.add(name)
            late.append(started - due[name])
    return {"lateness": late, **_summary(RUNS, list(due))}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("pyncette", "APScheduler", "SQLAlchemy")}


def main(argv: list[str] | None = None) -> int:
    global EXPECTED
    parser = argparse.ArgumentParser(description="run a peer scheduler under a workload")
    parser.add_argument("mode", choices=["drain", "lateness", "versions"])
    parser.add_argument("--system", choices=["pyncette", "apscheduler"])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "mariadb", "redis"])
    parser.add_argument("--url", default="", help="SQLAlchemy URL (APScheduler) or redis://")
    parser.add_argument("--path", default="", help="SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="")
    parser.add_argument("--database", default="")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    if args.mode == "versions":
        result: dict[str, Any] = _versions()
    else:
        EXPECTED = args.n
        if args.system == "pyncette":
            runner = _pyncette_drain if args.mode == "drain" else _pyncette_lateness
            result = asyncio.run(runner(args))
        else:
            runner = _apscheduler_drain if args.mode == "drain" else _apscheduler_lateness
            result = runner(args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    # Run as the importable module ``peer_child`` so APScheduler's textual
    # reference ``peer_child:aps_noop`` finds the same RUNS list.
    import peer_child

    sys.exit(peer_child.main())
