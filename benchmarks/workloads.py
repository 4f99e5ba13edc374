"""The workloads. Each takes a :class:`Context` and a store and returns table rows.

W1 drain
    N due no-op jobs drained by 1 and by 2 ``pscheduler --once`` processes,
    beside the raw claim-and-delete loop (:mod:`benchmarks.raw`) and, with
    peers, pyncette and APScheduler draining the same N in one process.
W2 idle
    M jobs due in an hour: one poll's cost in process (the loop's
    ``complete_and_claim`` finding nothing, ``next_due``) and an idle
    daemon's CPU, each beside an empty store.
W3 lateness
    a running daemon: (a) jobs added through a real request (webtest,
    pyramid_tm, ``request.scheduler.add_async_job``): start minus commit;
    (b) jobs due 1-5 s ahead: start minus due time (peers beside it).
W4 enqueue
    requests/s of a view that adds a job beside a no-op view; the SQL a
    request's add costs (and, on PostgreSQL, in shared-database mode); bulk
    ``repository.add`` jobs/s.
W5 memory
    a daemon's peak RSS draining N jobs beside draining N/10; the big drain
    keeps its run history for a minute (``pyncette.history_retention``), and
    the history left afterwards is measured.
W6 history
    W1's drain by one daemon with ``pyncette.history = all`` beside the same
    drain with ``none``, alternating which goes first.
W7 metrics
    W1's drain by one daemon serving Prometheus metrics
    (``pyncette.metrics_port = 0``) beside the same drain without, alternating
    which goes first.
W1 on the Redis Cluster
    N due no-op jobs drained by 4 ``pscheduler --once`` processes on a
    three-master cluster beside 1 process, with the keys each master holds
    before the drain (the cluster runs this and W3).

Every drain of ours is checked: a job run twice (duplicate) or never (lost)
is recorded in :attr:`Context.failures`, which makes ``run.py`` exit non-zero.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from benchmarks.app import NOOP_TASK, read_records, ready_pids
from benchmarks.common import (
    Daemon,
    Settings,
    child_env,
    cpu_seconds,
    insert_due_jobs,
    job_ids,
    make_registry,
    median,
    percentile,
    rate,
    ratio,
    wait_for,
    write_ini,
)
from benchmarks.peers import PeerError, Peers
from benchmarks.stores import RedisClusterStore, Store, Target, count_jobs, run_history

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")


@dataclass(frozen=True)
class Sizes:
    """How big each workload is (``--quick`` or full)."""

    drain_n: int
    idle_m: int
    idle_seconds: float
    request_k: int
    due_k: int
    requests: int
    bulk_n: int
    memory_n: int
    repeat: int


QUICK = Sizes(
    drain_n=2_000,
    idle_m=20_000,
    idle_seconds=5,
    request_k=100,
    due_k=20,
    requests=300,
    bulk_n=2_000,
    memory_n=20_000,
    repeat=3,
)
FULL = Sizes(
    drain_n=20_000,
    idle_m=1_000_000,
    idle_seconds=30,
    request_k=500,
    due_k=50,
    requests=2_000,
    bulk_n=20_000,
    memory_n=200_000,
    repeat=3,
)


@dataclass
class Row:
    """One line of the table: ``ours`` beside a reference (raw loop, peer, baseline)."""

    store: str
    workload: str
    metric: str
    ours: Any
    reference: Any = None
    reference_name: str = ""
    ratio: float | None = None
    unit: str = ""
    note: str = ""


@dataclass
class Context:
    """What every workload needs: sizes, settings, stores, where to write, what went wrong."""

    sizes: Sizes
    settings: Settings
    workdir: Path
    peers: Peers | None = None
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print

    def folder(self, label: str) -> Path:
        """A new, empty folder for one measurement."""
        path = self.workdir / f"{label}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def detail(self, store: str, workload: str, value: Any) -> None:
        self.details.setdefault(store, {})[workload] = value

    def check(self, what: str, duplicates: int, lost: int) -> None:
        if duplicates or lost:
            self.failures.append(f"{what}: {duplicates} duplicate run(s), {lost} lost job(s)")


def _paired_ratio(ours: list[float | None], reference: list[float | None]) -> float | None:
    """Median of the per-repeat ratios (each pair measured side by side)."""
    return median(ratio(o, r) for o, r in zip(ours, reference, strict=False))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# --------------------------------------------------------------------------- drains


def _fill(store: Store, settings: Settings, count: int, due: datetime | None = None) -> Target:
    """A fresh target holding ``count`` jobs (due a second ago unless ``due``)."""
    target = store.fresh()
    registry = make_registry(settings.app_settings(target.url))
    try:
        insert_due_jobs(registry.scheduler.repository, count, due=due)
    finally:
        registry.scheduler.repository.close()
    return target


def _left_in_store(settings: Settings, target: Target) -> int:
    registry = make_registry(settings.app_settings(target.url))
    try:
        return count_jobs(registry.scheduler.repository)
    finally:
        registry.scheduler.repository.close()


def _drain_result(n: int, spawned: float, exited: float, records: Any) -> dict[str, Any]:
    first, last, ready = records.first_run, records.last_run, records.ready_at
    return {
        "n": n,
        "runs": records.total,
        "wall_seconds": exited - spawned,
        "exec_per_s_wall": rate(n, exited - spawned),
        "exec_per_s_loop": rate(n, last - ready) if last and ready else None,
        "exec_per_s_active": rate(n, last - first) if last and first else None,
        "startup_seconds": ready - spawned if ready else None,
        "runs_per_process": [p["runs"] for p in records.processes],
        "processes": records.processes,
        "peak_rss_kb": [p.get("peak_rss_kb") for p in records.processes],
    }


def _log_problems(folder: Path) -> list[str]:
    """Warning and error lines the daemons logged (store errors, deadlocks, retries)."""
    found = []
    for log in sorted(folder.glob("daemon-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " WARNI " in line or " ERROR " in line or "Traceback" in line:
                found.append(line.strip()[:300])
    return found


def drain_ours(
    ctx: Context,
    store: Store,
    n: int,
    procs: int,
    *,
    counts: bool = False,
    settings: dict[str, str] | None = None,
    inspect: Callable[[Any], dict[str, Any]] | None = None,
    filled: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """N due jobs drained by ``procs`` ``pscheduler --once`` processes.

    ``settings`` adds ``pyncette.*`` settings; ``inspect(repository)`` runs on
    the store after the drain and its result is merged into the result;
    ``filled()`` runs once the jobs are stored, before the daemons start, and
    its result is merged too.
    """
    target = _fill(store, ctx.settings, n)
    before = filled() if filled is not None else {}
    folder = ctx.folder(f"{store.name}-drain{procs}")
    extra = {"bench.record_dir": str(folder), **(settings or {})}
    if counts:
        extra.update({"bench.record_mode": "counts", "bench.expected": str(n)})
    ini = write_ini(folder, ctx.settings.app_settings(target.url, **extra))
    timeout = 300 + n / 50
    try:
        spawned = time.time()
        daemons = [Daemon(ini, "--once", log=folder / f"daemon-{i}.log") for i in range(procs)]
        try:
            for daemon in daemons:
                daemon.check(daemon.wait(timeout))
        finally:
            for daemon in daemons:
                daemon.kill()
        exited = time.time()
        records = read_records(str(folder))
        result = _drain_result(n, spawned, exited, records)
        result.update(before)
        duplicates, lost = records.check(n if counts else job_ids(n))
        result.update(duplicates=duplicates, lost=lost, left=_left_in_store(ctx.settings, target))
        result["log_problems"] = _log_problems(folder)
        if inspect is not None:
            registry = make_registry(ctx.settings.app_settings(target.url))
            try:
                result.update(inspect(registry.scheduler.repository))
            finally:
                registry.scheduler.repository.close()
    finally:
        store.drop(target)
        shutil.rmtree(folder, ignore_errors=True)
    ctx.check(f"{store.name} drain of {n} by {procs} process(es)", duplicates, lost)
    return result


def drain_raw(ctx: Context, store: Store, n: int, procs: int) -> dict[str, Any]:
    """The same N jobs drained by ``procs`` raw claim-and-delete loops."""
    target = _fill(store, ctx.settings, n)
    folder = ctx.folder(f"{store.name}-raw{procs}")
    command = [
        sys.executable,
        "-m",
        "benchmarks.raw",
        "--url",
        target.url,
        "--out",
        str(folder),
        "--batch",
        str(ctx.settings.batch_size),
    ]
    loops: list[subprocess.Popen] = []
    try:
        spawned = time.time()
        loops = [subprocess.Popen(command, env=child_env()) for _ in range(procs)]
        try:
            codes = [loop.wait(300 + n / 100) for loop in loops]
        finally:
            for loop in loops:
                if loop.poll() is None:
                    loop.kill()
                    loop.wait()
        exited = time.time()
        if any(codes):
            raise RuntimeError(f"raw loop exited with {codes}")
        records = read_records(str(folder))
        result = _drain_result(n, spawned, exited, records)
        duplicates, lost = records.check(job_ids(n))
        result.update(duplicates=duplicates, lost=lost)
    finally:
        store.drop(target)
        shutil.rmtree(folder, ignore_errors=True)
    if lost:
        # A loop that missed jobs (keys it does not know) would be a bogus reference.
        raise RuntimeError(f"the raw loop left {lost} of {n} jobs undrained")
    return result


def drain_peer(ctx: Context, store: Store, system: str, n: int) -> dict[str, Any]:
    """N due jobs drained by a peer scheduler in one process."""
    assert ctx.peers is not None
    target = store.fresh()
    try:
        found = ctx.peers.run("drain", system, target, n, ctx.settings, timeout=300 + n / 20)
    finally:
        store.drop(target)
    last, loop_start, first = found["last_run"], found["loop_start"], found["first_run"]
    found["exec_per_s_loop"] = rate(n, last - loop_start) if last else None
    found["exec_per_s_active"] = rate(n, last - first) if last and first else None
    return found


def _peer_systems(ctx: Context, store: Store) -> list[str]:
    if ctx.peers is None or not ctx.peers.ensure():
        return []
    return [s for s in ("pyncette", "apscheduler") if Peers.supports(s, store.name)]


def w1_drain(ctx: Context, store: Store) -> list[Row]:
    """W1: executions/s of 1 and 2 daemons, beside the raw loop and the peers."""
    n = ctx.sizes.drain_n
    ours: dict[int, list[dict]] = {1: [], 2: []}
    raw: dict[int, list[dict]] = {1: [], 2: []}
    systems = _peer_systems(ctx, store)
    peers: dict[str, list[dict | None]] = {system: [] for system in systems}
    peer_errors: dict[str, str] = {}
    for repeat in range(ctx.sizes.repeat):
        for procs in (1, 2):
            ctx.log(f"  W1 {store.name}: {n} jobs, {procs} process(es), repeat {repeat + 1}")
            ours[procs].append(drain_ours(ctx, store, n, procs))
            raw[procs].append(drain_raw(ctx, store, n, procs))
        for system in systems:
            ctx.log(f"  W1 {store.name}: {system}, repeat {repeat + 1}")
            try:
                peers[system].append(drain_peer(ctx, store, system, n))
            except (PeerError, subprocess.TimeoutExpired) as exc:
                peers[system].append(None)
                peer_errors[system] = str(exc)
    ctx.detail(store.name, "W1", {"ours": ours, "raw": raw, "peers": peers, "errors": peer_errors})

    rows = []
    for procs in (1, 2):
        name = f"W1 drain {n:,} x{procs}"
        rows += _side_by_side_rates(store, name, ours[procs], raw[procs], "raw loop")
        if procs == 1:
            for system, results in peers.items():
                o = [r["exec_per_s_loop"] for r in ours[1]]
                x = [r["exec_per_s_loop"] if r else None for r in results]
                bad = [r for r in results if r and (r["duplicates"] or r["lost"])]
                note = peer_errors.get(system, "")
                if bad:
                    note = f"peer dup/lost {bad[0]['duplicates']}/{bad[0]['lost']}"
                rows.append(
                    Row(
                        store.name,
                        name,
                        "exec/s, loop start->last run",
                        median(o),
                        median(x),
                        ctx.peers.label(system),
                        _paired_ratio(o, x),
                        "/s",
                        note=note[:120],
                    )
                )
        dup = sum(r["duplicates"] for r in ours[procs])
        lost = sum(r["lost"] for r in ours[procs])
        left = sum(r["left"] for r in ours[procs])
        problems = [line for r in ours[procs] for line in r["log_problems"]]
        notes = [f"{left} job(s) left in store"] if left else []
        if problems:
            notes.append(f"{len(problems)} warning/error log line(s): {problems[0][24:110]}")
        raw_retries = sum(p.get("retries", 0) for r in raw[procs] for p in r["processes"])
        if raw_retries:
            notes.append(f"raw loop retried {raw_retries} deadlock(s)")
        rows.append(
            Row(
                store.name,
                name,
                "duplicates / lost (all repeats)",
                f"{dup} / {lost}",
                note="; ".join(notes),
            )
        )
    if ctx.peers is not None and ctx.peers.error:
        rows.append(Row(store.name, "W1 peers", "not run", ctx.peers.error[:100]))
    return rows


# --------------------------------------------------------------------------- W2 idle


#: W2 spreads its stored jobs over this many queues; one daemon serves the first.
W2_QUEUES = 20
W2_SERVED = frozenset({"q0"})


def _time_polls(repository: Any, times: int = 50) -> dict[str, float | None]:
    """Median milliseconds of a claim that finds nothing, of one served queue's claim
    (:data:`W2_SERVED` of :data:`W2_QUEUES`), and of ``next_due``.

    The claims are the call the worker's loop makes (``complete_and_claim``, on
    the connection the loop keeps).
    """
    try:
        return _time_polls_in_thread(repository, times)
    finally:
        repository.release_thread_connection()


def _time_polls_in_thread(repository: Any, times: int) -> dict[str, float | None]:
    now = datetime.now(timezone.utc)
    for _ in range(5):  # connections, prepared statements, script cache
        repository.complete_and_claim((), now, 100, "bench-poll", 60)
        repository.complete_and_claim((), now, 100, "bench-poll", 60, W2_SERVED)
        repository.next_due()
    claims, queue_claims, next_dues = [], [], []
    for _ in range(times):
        now = datetime.now(timezone.utc)
        began = time.perf_counter()
        leases = repository.complete_and_claim((), now, 100, "bench-poll", 60)
        claims.append(time.perf_counter() - began)
        began = time.perf_counter()
        leases += repository.complete_and_claim((), now, 100, "bench-poll", 60, W2_SERVED)
        queue_claims.append(time.perf_counter() - began)
        if leases:
            raise RuntimeError(f"the idle store had {len(leases)} due job(s)")
        began = time.perf_counter()
        repository.next_due()
        next_dues.append(time.perf_counter() - began)
    return {
        "claim_ms": _ms(median(claims)),
        "queue_claim_ms": _ms(median(queue_claims)),
        "next_due_ms": _ms(median(next_dues)),
    }


def _idle_cpu(ctx: Context, target: Target, seconds: float) -> float:
    """CPU % of a ``pscheduler`` daemon with nothing due, over ``seconds``."""
    folder = ctx.folder(f"{target.store}-idle")
    ini = write_ini(
        folder, ctx.settings.app_settings(target.url, **{"bench.record_dir": str(folder)})
    )
    daemon = Daemon(ini, log=folder / "daemon.log")
    try:
        wait_for(lambda: ready_pids(str(folder)), 120, "the daemon to start")
        time.sleep(1.0)  # let start-up work finish
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        daemon.check(daemon.stop())
    finally:
        daemon.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return 100 * (cpu1 - cpu0) / (t1 - t0)


def w2_idle(ctx: Context, store: Store, most: int | None = None) -> list[Row]:
    """W2: poll cost and idle CPU with M jobs stored, none due, beside M/100 stored.

    The baseline holds jobs too (an empty store skips work a non-empty one
    does, such as reading the first job), so the ratio isolates the number
    stored. ``most`` caps M (an emulator that cannot hold M jobs).
    """
    m, seconds = ctx.sizes.idle_m, ctx.sizes.idle_seconds
    if most is not None:
        m = min(m, most)
    small_m = max(100, m // 100)
    target = store.fresh()
    registry = make_registry(ctx.settings.app_settings(target.url))
    repository = registry.scheduler.repository
    in_an_hour = datetime.now(timezone.utc) + timedelta(hours=1)
    try:
        ctx.log(f"  W2 {store.name}: {small_m} jobs due in an hour")
        insert_due_jobs(repository, small_m, due=in_an_hour, queues=W2_QUEUES)
        small_polls = _time_polls(repository)
        small_cpu = _idle_cpu(ctx, target, seconds)
        ctx.log(f"  W2 {store.name}: inserting up to {m} jobs due in an hour")
        insert_seconds = insert_due_jobs(
            repository, m, due=in_an_hour, start=small_m, queues=W2_QUEUES
        )
        full_polls = _time_polls(repository)
        ctx.log(f"  W2 {store.name}: idle daemon for {seconds:g}s")
        full_cpu = _idle_cpu(ctx, target, seconds)
    finally:
        repository.close()
        store.drop(target)
    inserted = m - small_m
    result = {
        "m": m,
        "small_m": small_m,
        "seconds": seconds,
        "insert_seconds": insert_seconds,
        "inserted": inserted,
        "small": {**small_polls, "cpu_percent": small_cpu},
        "full": {**full_polls, "cpu_percent": full_cpu},
    }
    ctx.detail(store.name, "W2", result)
    name = f"W2 idle {m:,} stored"
    ref = f"{small_m:,} stored"
    rows = []
    for key, label, unit in [
        ("claim_ms", "claim() finding nothing (median of 50)", "ms"),
        ("queue_claim_ms", f"claim() of 1 of {W2_QUEUES} queues finding nothing", "ms"),
        ("next_due_ms", "next_due() (median of 50)", "ms"),
        ("cpu_percent", f"idle daemon CPU over {seconds:g}s", "%"),
    ]:
        o, x = result["full"][key], result["small"][key]
        rows.append(Row(store.name, name, label, o, x, ref, ratio(o, x), unit))
    rows.append(
        Row(
            store.name,
            name,
            "bulk insert (repository.add, 10k chunks)",
            rate(inserted, insert_seconds),
            unit="/s",
        )
    )
    return rows


# --------------------------------------------------------------------------- W3 lateness


def _spread(count: int, start: float = 1.0, end: float = 5.0) -> list[float]:
    """``count`` offsets spread evenly over ``start``..``end`` seconds."""
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _trio(stats: dict[str, float | None]) -> str:
    """``p50 / p99 / max`` in milliseconds, as one cell."""

    def one(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3g}" if value < 100 else f"{value:,.0f}"

    return " / ".join(one(stats[key]) for key in ("p50_ms", "p99_ms", "max_ms"))


def _stats_ms(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(max(values) if values else None),
        "mean_ms": _ms(statistics.fmean(values) if values else None),
    }


def w3_lateness(ctx: Context, store: Store) -> list[Row]:
    """W3: how late jobs start with a daemon running."""
    import webtest

    from benchmarks.app import main as app_main

    k, due_k = ctx.sizes.request_k, ctx.sizes.due_k
    target = store.fresh()
    folder = ctx.folder(f"{store.name}-late")
    settings = ctx.settings.app_settings(target.url)
    ini = write_ini(folder, {**settings, "bench.record_dir": str(folder)})
    wsgi = app_main({}, **settings)
    registry = wsgi.registry
    app = webtest.TestApp(wsgi)
    repository = registry.scheduler.repository
    daemon = Daemon(ini, log=folder / "daemon.log")
    try:
        wait_for(lambda: ready_pids(str(folder)), 120, "the daemon to start")
        ctx.log(f"  W3 {store.name}: {k} jobs through requests, 20 ms apart")
        committed: dict[str, float] = {}
        for i in range(k):
            job_id = f"req-{i:05d}"
            app.get("/async", params={"id": job_id})
            committed[job_id] = time.time()
            time.sleep(0.02)
        wait_for(lambda: repository.next_due() is None, 60, "the request jobs to run", 0.1)
        ctx.log(f"  W3 {store.name}: {due_k} jobs due 1-5 s ahead")
        due: dict[str, float] = {}
        base = datetime.now(timezone.utc)
        for i, offset in enumerate(_spread(due_k)):
            when = base + timedelta(seconds=offset)
            registry.scheduler.add_date_job(NOOP_TASK, when, job_id=f"due-{i:05d}")
            due[f"due-{i:05d}"] = when.timestamp()
        # Keep off the store until the last job is due: polling it meanwhile would
        # load the store the daemon is claiming from (on moto, which answers one
        # request at a time, the daemon's claims would queue behind the polls).
        time.sleep(max(0.0, max(due.values()) - time.time()) + 0.5)
        wait_for(lambda: repository.next_due() is None, 60, "the due jobs to run", 0.1)
        daemon.check(daemon.stop())
        records = read_records(str(folder))
    finally:
        daemon.kill()
        repository.close()
        store.drop(target)
    starts = records.starts()
    late_a = [starts[j] - t for j, t in committed.items() if j in starts]
    late_b = [starts[j] - t for j, t in due.items() if j in starts]
    duplicates, lost = records.check(set(committed) | set(due))
    ctx.check(f"{store.name} lateness jobs", duplicates, lost)
    shutil.rmtree(folder, ignore_errors=True)

    peers: dict[str, Any] = {}
    for system in _peer_systems(ctx, store):
        ctx.log(f"  W3 {store.name}: {system}, {due_k} jobs due 1-5 s ahead")
        peer_target = store.fresh()
        try:
            found = ctx.peers.run("lateness", system, peer_target, due_k, ctx.settings, 120)
            peers[system] = {**_stats_ms(found["lateness"]), **found}
        except (PeerError, subprocess.TimeoutExpired) as exc:
            peers[system] = {"error": str(exc)}
        finally:
            store.drop(peer_target)

    a, b = _stats_ms(late_a), _stats_ms(late_b)
    ctx.detail(
        store.name,
        "W3",
        {
            "request": {**a, "values": late_a},
            "due": {**b, "values": late_b},
            "peers": peers,
            "duplicates": duplicates,
            "lost": lost,
        },
    )
    poll = f"poll interval {ctx.settings.poll_interval:g}s"
    metric = "p50 / p99 / max"
    rows = [
        Row(
            store.name,
            f"W3a request->start x{k}",
            f"start - commit {metric}",
            _trio(a),
            unit="ms",
            note=poll,
        ),
        Row(store.name, f"W3b due->start x{due_k}", f"start - due {metric}", _trio(b), unit="ms"),
    ]
    for system, found in peers.items():
        label = ctx.peers.label(system)
        if "error" in found:
            rows.append(
                Row(
                    store.name,
                    f"W3b due->start x{due_k}",
                    f"start - due {metric}",
                    _trio(b),
                    "not run",
                    label,
                    unit="ms",
                    note=found["error"][:100],
                )
            )
            continue
        rows.append(
            Row(
                store.name,
                f"W3b due->start x{due_k}",
                f"start - due {metric}",
                _trio(b),
                _trio(found),
                label,
                ratio(b["p50_ms"], found["p50_ms"]),
                "ms",
                note="ratio of p50; the peer adds in its own process",
            )
        )
    rows.append(Row(store.name, "W3 lateness", "duplicates / lost", f"{duplicates} / {lost}"))
    return rows


# --------------------------------------------------------------------------- W4 enqueue


class StatementCounter:
    """SQL statements and commits per engine, from SQLAlchemy events."""

    def __init__(self, engines: dict[str, Any]) -> None:
        import sqlalchemy as sa

        self.statements: list[tuple[str, str]] = []
        self.commits: list[str] = []
        self.checkouts: list[str] = []
        self._listeners = []
        for label, engine in engines.items():

            def on_execute(conn, cursor, statement, params, context, executemany, label=label):
                self.statements.append((label, " ".join(statement.split())))

            def on_commit(conn, label=label):
                self.commits.append(label)

            def on_checkout(dbapi_conn, record, proxy, label=label):
                self.checkouts.append(label)

            for target, name, fn in (
                (engine, "before_cursor_execute", on_execute),
                (engine, "commit", on_commit),
                (engine.pool, "checkout", on_checkout),
            ):
                sa.event.listen(target, name, fn)
                self._listeners.append((target, name, fn))

    def reset(self) -> None:
        self.statements.clear()
        self.commits.clear()
        self.checkouts.clear()

    def close(self) -> None:
        import sqlalchemy as sa

        for engine, name, fn in self._listeners:
            sa.event.remove(engine, name, fn)

    def summary(self) -> dict[str, Any]:
        verbs: dict[str, int] = {}
        for _, statement in self.statements:
            verb = statement.split(" ", 1)[0].upper()
            verbs[verb] = verbs.get(verb, 0) + 1
        return {
            "statements": len(self.statements),
            "verbs": verbs,
            "commits": len(self.commits),
            "commits_by_engine": {label: self.commits.count(label) for label in set(self.commits)},
            # Each checkout of a pool_pre_ping engine costs one more round trip (a ping).
            "pool_checkouts": len(self.checkouts),
            "sql": [f"[{label}] {text[:160]}" for label, text in self.statements],
        }


def _requests_per_second(app: Any, path: str, count: int) -> float:
    began = time.perf_counter()
    for _ in range(count):
        app.get(path)
    return count / (time.perf_counter() - began)


def _per_request(app: Any, counter: StatementCounter, path: str) -> dict[str, Any]:
    counter.reset()
    app.get(path)
    return counter.summary()


def _rps_pair(ctx: Context, app: Any, base: str, path: str) -> tuple[list[float], list[float]]:
    for _ in range(20):
        app.get(base)
        app.get(path)
    bases, adds = [], []
    for _ in range(max(ctx.sizes.repeat, 1)):
        bases.append(_requests_per_second(app, base, ctx.sizes.requests))
        adds.append(_requests_per_second(app, path, ctx.sizes.requests))
    return bases, adds


def _bulk_add(ctx: Context, store: Store) -> dict[str, Any]:
    """Jobs/s of adding ``bulk_n`` jobs at once (a public bulk API if the scheduler has one)."""
    from pyramid_pyncette.schedules import DateSchedule

    n = ctx.sizes.bulk_n
    rates, build_rates, api = [], [], "registry.scheduler.repository.add(jobs)"
    for _ in range(max(ctx.sizes.repeat, 1)):
        target = store.fresh()
        registry = make_registry(ctx.settings.app_settings(target.url))
        scheduler = registry.scheduler
        try:
            scheduler.repository.setup()
            when = DateSchedule(datetime.now(timezone.utc) + timedelta(hours=1))
            began = time.perf_counter()
            jobs = [scheduler.build_job(NOOP_TASK, when) for _ in range(n)]
            build_rates.append(rate(n, time.perf_counter() - began))
            bulk = getattr(scheduler, "add_jobs", None)
            began = time.perf_counter()
            if callable(bulk):
                api = "registry.scheduler.add_jobs(jobs)"
                bulk(jobs)
            else:
                scheduler.repository.add(jobs)
            rates.append(rate(n, time.perf_counter() - began))
            stored = count_jobs(scheduler.repository)
            if stored != n:
                raise RuntimeError(f"bulk add stored {stored} of {n} jobs")
        finally:
            scheduler.repository.close()
            store.drop(target)
    return {"n": n, "api": api, "jobs_per_s": rates, "build_jobs_per_s": build_rates}


def w4_enqueue(ctx: Context, store: Store) -> list[Row]:
    """W4: what adding a job costs a request, and bulk adds."""
    import webtest

    from benchmarks.app import main as app_main

    detail: dict[str, Any] = {}
    rows = []
    target = store.fresh()
    wsgi = app_main({}, **ctx.settings.app_settings(target.url))
    repository = wsgi.registry.scheduler.repository
    try:
        app = webtest.TestApp(wsgi)
        ctx.log(f"  W4 {store.name}: {ctx.sizes.requests} requests per view")
        noop, add = _rps_pair(ctx, app, "/noop", "/add")
        detail["separate"] = {"noop_rps": noop, "add_rps": add}
        name = "W4 enqueue (separate store)"
        rows.append(
            Row(
                store.name,
                name,
                "requests/s, view with add_date_job",
                median(add),
                median(noop),
                "no-op view",
                _paired_ratio(add, noop),
                "/s",
            )
        )
        if hasattr(repository, "engine"):
            counter = StatementCounter({"store": repository.engine})
            try:
                sql = _per_request(app, counter, "/add")
            finally:
                counter.close()
            detail["separate"]["add_sql"] = sql
            rows.append(
                Row(
                    store.name,
                    name,
                    "store statements per add request",
                    sql["statements"],
                    note=f"{_verbs(sql)}; {sql['commits']} COMMIT; "
                    f"{sql['pool_checkouts']} pool checkout(s)",
                )
            )
    finally:
        repository.close()
        store.drop(target)

    if store.name == "postgresql":
        rows += _shared_mode(ctx, store, detail)

    ctx.log(f"  W4 {store.name}: bulk add of {ctx.sizes.bulk_n} jobs")
    bulk = _bulk_add(ctx, store)
    detail["bulk"] = bulk
    rows.append(
        Row(
            store.name,
            f"W4 bulk add {bulk['n']:,}",
            "jobs/s",
            median(bulk["jobs_per_s"]),
            unit="/s",
            note=bulk["api"],
        )
    )
    ctx.detail(store.name, "W4", detail)
    return rows


def _verbs(sql: dict[str, Any]) -> str:
    return ", ".join(f"{verb}x{count}" for verb, count in sorted(sql["verbs"].items()))


def _shared_mode(ctx: Context, store: Store, detail: dict[str, Any]) -> list[Row]:
    """The job rows in the app's own database: statements, commits, requests/s."""
    import webtest

    from benchmarks.app import main as app_main

    target = store.fresh()
    settings = ctx.settings.app_settings(
        target.url,
        **{"sqlalchemy.url": target.url, "pyncette.session_hook": "benchmarks.app:get_dbsession"},
    )
    wsgi = app_main({}, **settings)
    registry = wsgi.registry
    repository = registry.scheduler.repository
    app = webtest.TestApp(wsgi)
    rows = []
    try:
        repository.setup()
        ctx.log(f"  W4 {store.name}: shared-database mode")
        note_rps, add_rps = _rps_pair(ctx, app, "/note", "/note_add")
        counter = StatementCounter({"app": registry.bench_engine, "store": repository.engine})
        try:
            note_sql = _per_request(app, counter, "/note")
            add_sql = _per_request(app, counter, "/note_add")
        finally:
            counter.close()
    finally:
        repository.close()
        registry.bench_engine.dispose()
        store.drop(target)
    detail["shared"] = {
        "note_rps": note_rps,
        "note_add_rps": add_rps,
        "note_sql": note_sql,
        "note_add_sql": add_sql,
    }
    name = "W4 enqueue (shared database)"
    ref = "app row only"
    extra_commits = add_sql["commits"] - note_sql["commits"]
    rows += [
        Row(
            store.name,
            name,
            "requests/s, app row + add_date_job",
            median(add_rps),
            median(note_rps),
            ref,
            _paired_ratio(add_rps, note_rps),
            "/s",
        ),
        Row(
            store.name,
            name,
            "SQL statements per request",
            add_sql["statements"],
            note_sql["statements"],
            ref,
            ratio(add_sql["statements"], note_sql["statements"]),
            note=_verbs(add_sql),
        ),
        Row(
            store.name,
            name,
            "INSERTs per request",
            add_sql["verbs"].get("INSERT", 0),
            note_sql["verbs"].get("INSERT", 0),
            ref,
        ),
        Row(
            store.name,
            name,
            "COMMITs per request (all engines)",
            add_sql["commits"],
            note_sql["commits"],
            ref,
            note="no extra COMMIT" if extra_commits == 0 else f"{extra_commits} extra COMMIT",
        ),
    ]
    return rows


# --------------------------------------------------------------------------- W5 memory


def w5_memory(ctx: Context, store: Store) -> list[Row]:
    """W5: peak RSS of a daemon draining N jobs beside draining N/10."""
    n = ctx.sizes.memory_n
    small_n = max(1, n // 10)
    ctx.log(f"  W5 {store.name}: draining {small_n} jobs")
    small = drain_ours(ctx, store, small_n, 1, counts=True)
    ctx.log(f"  W5 {store.name}: draining {n} jobs, run history kept {W5_RETENTION:g}s")
    big = drain_ours(
        ctx,
        store,
        n,
        1,
        counts=True,
        settings={"pyncette.history_retention": f"{W5_RETENTION:g}s"},
        inspect=_history_left,
    )
    ctx.detail(store.name, "W5", {"small": small, "big": big})
    small_mb = small["peak_rss_kb"][0] / 1024
    big_mb = big["peak_rss_kb"][0] / 1024
    name = f"W5 memory {n:,} vs {small_n:,}"
    ref = f"N/10 = {small_n:,}"
    return [
        Row(
            store.name,
            name,
            "daemon peak RSS (VmHWM)",
            big_mb,
            small_mb,
            ref,
            ratio(big_mb, small_mb),
            "MB",
        ),
        Row(
            store.name,
            name,
            "exec/s, loop start->last run",
            big["exec_per_s_loop"],
            small["exec_per_s_loop"],
            ref,
            ratio(big["exec_per_s_loop"], small["exec_per_s_loop"]),
            "/s",
        ),
        Row(
            store.name,
            name,
            "duplicates / lost",
            f"{big['duplicates'] + small['duplicates']} / {big['lost'] + small['lost']}",
        ),
        Row(
            store.name,
            name,
            "run records kept after the drain",
            big["runs_kept"],
            unit="",
        ),
        Row(
            store.name,
            name,
            "age of the oldest kept run at the last run",
            big["history_span"],
            W5_RETENTION,
            "pyncette.history_retention",
            ratio(big["history_span"], W5_RETENTION),
            "s",
        ),
    ]


#: W5's big drain keeps its run history this many seconds (short enough that its
#: drain, tens of seconds, is pruned as it goes).
W5_RETENTION = 10.0


def _history_left(repository: Any) -> dict[str, Any]:
    """How many run records are stored, and how old the oldest was when the newest finished."""
    count, oldest, newest = run_history(repository)
    span = (newest - oldest).total_seconds() if oldest and newest else None
    return {"runs_kept": count, "history_span": span}


# --------------------------------------------------------------------------- W6 history


def _side_by_side_rates(
    store: Store,
    name: str,
    measured: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    baseline_label: str,
) -> list[Row]:
    """The drain rates of ``measured`` beside ``baseline`` (repeats run alternately):
    medians and the paired ratio, spawn to exit and loop start to last run."""
    rows = []
    for key, label in [
        ("exec_per_s_wall", "exec/s, spawn->last exit"),
        ("exec_per_s_loop", "exec/s, loop start->last run"),
    ]:
        o = [r[key] for r in measured]
        x = [r[key] for r in baseline]
        rows.append(
            Row(
                store.name,
                name,
                label,
                median(o),
                median(x),
                baseline_label,
                _paired_ratio(o, x),
                "/s",
            )
        )
    return rows


def w6_history(ctx: Context, store: Store) -> list[Row]:
    """W6: a drain recording every run beside one recording none (side by side)."""
    n = ctx.sizes.drain_n
    results: dict[str, list[dict[str, Any]]] = {"all": [], "none": []}
    for repeat in range(ctx.sizes.repeat):
        order = ("none", "all") if repeat % 2 == 0 else ("all", "none")
        for mode in order:
            ctx.log(f"  W6 {store.name}: {n} jobs, history {mode}, repeat {repeat + 1}")
            results[mode].append(
                drain_ours(
                    ctx,
                    store,
                    n,
                    1,
                    settings={"pyncette.history": mode},
                    inspect=_history_left,
                )
            )
    ctx.detail(store.name, "W6", results)
    name = f"W6 history {n:,}"
    rows = _side_by_side_rates(store, name, results["all"], results["none"], "history none")
    kept = [r["runs_kept"] for r in results["all"]]
    unrecorded = [r["runs_kept"] for r in results["none"]]
    dup = sum(r["duplicates"] for mode in results.values() for r in mode)
    lost = sum(r["lost"] for mode in results.values() for r in mode)
    note = (
        ""
        if all(k == n for k in kept) and not any(unrecorded)
        else (f"history all kept {kept}, none kept {unrecorded} (expected {n} and 0)")
    )
    if note:
        ctx.failures.append(f"{store.name} W6: {note}")
    rows.append(
        Row(
            store.name,
            name,
            "run records kept (all: min-max / none: max)",
            f"{min(kept)}-{max(kept)} / {max(unrecorded)}",
            note=note,
        )
    )
    rows.append(Row(store.name, name, "duplicates / lost (all repeats)", f"{dup} / {lost}"))
    return rows


# --------------------------------------------------------------------------- W7 metrics


def w7_metrics(ctx: Context, store: Store) -> list[Row]:
    """W7: a drain by a daemon serving its metrics beside one serving none (side by side)."""
    n = ctx.sizes.drain_n
    modes = {"on": {"pyncette.metrics_port": "0"}, "off": {}}
    results: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for repeat in range(ctx.sizes.repeat):
        order = ("off", "on") if repeat % 2 == 0 else ("on", "off")
        for mode in order:
            ctx.log(f"  W7 {store.name}: {n} jobs, metrics {mode}, repeat {repeat + 1}")
            results[mode].append(drain_ours(ctx, store, n, 1, settings=modes[mode]))
    ctx.detail(store.name, "W7", results)
    name = f"W7 metrics {n:,}"
    rows = _side_by_side_rates(store, name, results["on"], results["off"], "metrics off")
    dup = sum(r["duplicates"] for mode in results.values() for r in mode)
    lost = sum(r["lost"] for mode in results.values() for r in mode)
    rows.append(Row(store.name, name, "duplicates / lost (all repeats)", f"{dup} / {lost}"))
    return rows


# --------------------------------------------------------------------------- the cluster

#: Daemons draining the Redis Cluster in its W1 (beside one).
CLUSTER_DAEMONS = 4


def w1_cluster(ctx: Context, store: Store) -> list[Row]:
    """W1 on the Redis Cluster: 4 daemons beside 1, the keys on each master, no
    duplicate and no lost job."""
    assert isinstance(store, RedisClusterStore)
    n = ctx.sizes.drain_n
    runs: dict[int, list[dict[str, Any]]] = {1: [], CLUSTER_DAEMONS: []}

    def shards() -> dict[str, Any]:
        return {"shards": store.shard_keys(job_ids(n))}

    for repeat in range(ctx.sizes.repeat):
        # Alternate which goes first: the machine's load drifts over a run.
        order = (1, CLUSTER_DAEMONS) if repeat % 2 == 0 else (CLUSTER_DAEMONS, 1)
        for procs in order:
            ctx.log(f"  W1 {store.name}: {n} jobs, {procs} process(es), repeat {repeat + 1}")
            runs[procs].append(drain_ours(ctx, store, n, procs, filled=shards))
    ctx.detail(store.name, "W1", runs)

    masters = len(runs[1][0]["shards"])
    name = f"W1 drain {n:,} x{CLUSTER_DAEMONS}, {masters} masters"
    rows = _side_by_side_rates(store, name, runs[CLUSTER_DAEMONS], runs[1], "1 daemon")
    shards_seen = runs[CLUSTER_DAEMONS][0]["shards"]
    empty = [shard["port"] for shard in shards_seen if not shard["keys"]]
    if empty:
        ctx.failures.append(f"{store.name} W1: masters on ports {empty} held no key")
    rows.append(
        Row(
            store.name,
            name,
            "jobs per master before the drain",
            " / ".join(f"{shard['jobs']:,}" for shard in shards_seen),
            note=f"keys (DBSIZE) {' / '.join(str(shard['keys']) for shard in shards_seen)}; "
            f"partitions {' / '.join(str(shard['partitions']) for shard in shards_seen)}"
            + (f"; EMPTY masters {empty}" if empty else ""),
        )
    )
    for procs in (CLUSTER_DAEMONS, 1):
        dup = sum(r["duplicates"] for r in runs[procs])
        lost = sum(r["lost"] for r in runs[procs])
        left = sum(r["left"] for r in runs[procs])
        problems = [line for r in runs[procs] for line in r["log_problems"]]
        notes = [f"{left} job(s) left in store"] if left else []
        if problems:
            notes.append(f"{len(problems)} warning/error log line(s): {problems[0][24:110]}")
        rows.append(
            Row(
                store.name,
                f"W1 drain {n:,} x{procs}, {masters} masters",
                "duplicates / lost (all repeats)",
                f"{dup} / {lost}",
                note="; ".join(notes),
            )
        )
    return rows


# --------------------------------------------------------------------------- DynamoDB

#: Daemons draining DynamoDB in its W1 (beside one).
DYNAMODB_DAEMONS = 2


def w1_dynamodb(ctx: Context, store: Store) -> list[Row]:
    """W1 on DynamoDB as moto emulates it: 2 daemons beside 1, no duplicate and no
    lost job. The rates are the emulator's, reported but not compared with anything."""
    n = ctx.sizes.drain_n
    runs: dict[int, list[dict[str, Any]]] = {1: [], DYNAMODB_DAEMONS: []}
    for repeat in range(ctx.sizes.repeat):
        order = (1, DYNAMODB_DAEMONS) if repeat % 2 == 0 else (DYNAMODB_DAEMONS, 1)
        for procs in order:
            ctx.log(f"  W1 {store.name}: {n} jobs, {procs} process(es), repeat {repeat + 1}")
            runs[procs].append(drain_ours(ctx, store, n, procs))
    ctx.detail(store.name, "W1", runs)
    name = f"W1 drain {n:,} x{DYNAMODB_DAEMONS} (moto)"
    rows = _side_by_side_rates(store, name, runs[DYNAMODB_DAEMONS], runs[1], "1 daemon")
    for procs in (DYNAMODB_DAEMONS, 1):
        dup = sum(r["duplicates"] for r in runs[procs])
        lost = sum(r["lost"] for r in runs[procs])
        left = sum(r["left"] for r in runs[procs])
        rows.append(
            Row(
                store.name,
                f"W1 drain {n:,} x{procs} (moto)",
                "duplicates / lost (all repeats)",
                f"{dup} / {lost}",
                note=f"{left} job(s) left in store" if left else "",
            )
        )
    return rows


#: Most jobs W2 stores in moto's emulation (it keeps every item in a Python dict and
#: answers one request at a time: a million would take hours to insert).
DYNAMODB_IDLE_M = 20_000


def w2_dynamodb(ctx: Context, store: Store) -> list[Row]:
    """W2 on DynamoDB (moto): the daemon's idle polls, with at most
    :data:`DYNAMODB_IDLE_M` jobs stored (a poll's Queries read index heads only, so
    the number stored does not change their cost on DynamoDB)."""
    return w2_idle(ctx, store, most=DYNAMODB_IDLE_M)


#: The workloads run on a store when it does not run them all.
STORE_RUNNERS: dict[str, dict[str, Callable[[Context, Store], list[Row]]]] = {
    "redis-cluster": {"W1": w1_cluster, "W2": w2_idle, "W3": w3_lateness},
    # moto's speed says nothing about DynamoDB's: W1 checks correctness, W3 lateness,
    # W2 the idle daemon's cost (its CPU is mostly the client's, as on DynamoDB).
    "dynamodb": {"W1": w1_dynamodb, "W2": w2_dynamodb, "W3": w3_lateness},
}


RUNNERS: dict[str, Callable[[Context, Store], list[Row]]] = {
    "W1": w1_drain,
    "W2": w2_idle,
    "W3": w3_lateness,
    "W4": w4_enqueue,
    "W5": w5_memory,
    "W6": w6_history,
    "W7": w7_metrics,
}
