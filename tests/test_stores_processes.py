"""Real ``pscheduler`` processes against every persistent store.

Several daemons drain one store with no duplicate and no lost run; a daemon
whose clock runs ahead does not take a live lease; a store restarted
mid-drain costs nothing.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.daemon import (
    DYNAMODB,
    PERSISTENT_STORES,
    add_due_jobs,
    bootstrap_registry,
    persistent_store,
    spawn,
    wait_for,
    write_ini,
)

pytestmark = pytest.mark.slow

#: Jobs the daemons drain in the work-sharing test.
DRAIN_JOBS = 5000
#: Stores that serve one request at a time get fewer, so a drain stays within
#: a minute or so: moto's DynamoDB server runs about 60 claims and completions
#: a second, however many daemons ask.
DRAIN_JOBS_OF = {DYNAMODB: 600}


@pytest.fixture(params=PERSISTENT_STORES)
def store(request, tmp_path):
    """``(kind, url, extra INI lines)`` of a fresh store of each persistent kind."""
    return (request.param, *persistent_store(request, tmp_path, request.param))


def _runs(records):
    from tests.procapp import read_runs

    return read_runs(records)


@pytest.mark.parametrize("daemons", [2, 4])
def test_daemons_share_the_work_without_duplicates_or_losses(tmp_path, store, daemons):
    kind, url, extra = store
    ini, records = write_ini(tmp_path, url, extra=f"{extra}\npyncette.batch_size = 25")
    registry = bootstrap_registry(ini)
    # Every daemon is up before the jobs arrive: a drain can be over before a
    # late starter claims anything.
    processes = [spawn(ini, stdout=subprocess.DEVNULL) for _ in range(daemons)]
    try:
        wait_for(lambda: len(list(Path(records).glob("ready-*"))) == daemons, 120, "the daemons")
        # Runs of 2 ms: the drain lasts long enough for every daemon to claim,
        # even on SQLite, where one writer at a time holds the lock.
        expected = add_due_jobs(registry, DRAIN_JOBS_OF.get(kind, DRAIN_JOBS), seconds=0.002)
        started = time.monotonic()
        # Watched through the run records, which cost the store nothing: listing
        # every job 20 times a second would take much of a one-request-at-a-time
        # server's time from the daemons. Then the completions empty the store.
        wait_for(lambda: {job_id for job_id, _, _ in _runs(records)} >= expected, 300, "the drain")
        wait_for(lambda: not registry.scheduler.get_jobs(limit=1).jobs, 60, "the completions")
        drained = time.monotonic() - started
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
    errors = [process.communicate(timeout=60)[1] for process in processes]

    for process, err in zip(processes, errors, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
    runs = _runs(records)
    counts = Counter(job_id for job_id, _, _ in runs)
    duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
    by_process = Counter(pid for _, _, pid in runs)
    print(
        f"{kind}, {daemons} daemons: {len(runs)} runs in {drained:.1f}s, "
        f"{len(duplicates)} duplicates, per daemon {sorted(by_process.values())}"
    )
    assert duplicates == {}
    assert set(counts) == expected
    assert len(by_process) == daemons, f"some daemon did no work: {dict(by_process)} {errors}"
    assert list(registry.scheduler.iter_jobs()) == []


@pytest.mark.parametrize("kind", ["postgresql", "mariadb", "redis"])
def test_a_daemon_whose_clock_runs_ahead_does_not_take_a_live_lease(request, tmp_path, kind):
    from pyramid_pyncette.worker import Worker

    url, extra = persistent_store(request, tmp_path, kind)
    ini, _ = write_ini(tmp_path, url, extra=extra)
    registry = bootstrap_registry(ini)
    repository = registry.scheduler.repository
    assert repository.store_clock, "stores with a clock use it by default"
    now = datetime.now(timezone.utc)
    registry.scheduler.add_date_job("record", now - timedelta(seconds=1), job_id="live")

    (lease,) = repository.claim(now, 10, "honest-daemon", 60)
    assert lease.job.id == "live"

    ahead = Worker(registry, clock=lambda: datetime.now(timezone.utc) + timedelta(seconds=30))
    assert repository.claim(ahead.clock(), 10, "fast-clock-daemon", 60) == []
    assert ahead.run_pending() == 0
    # Its heartbeat cannot stretch a lease it does not hold either.
    assert repository.extend(ahead.clock(), [("live", "fast-clock-daemon", 600)]) == set()
    job = registry.scheduler.get_job("live")
    assert job.locked_by == "honest-daemon"
    lease_left = (job.due_at - datetime.now(timezone.utc)).total_seconds()
    assert 50 < lease_left <= 61  # set by the store's clock, not the caller's


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_store_restart_mid_drain_loses_nothing_and_the_daemon_carries_on(request, tmp_path, kind):
    url, extra = persistent_store(request, tmp_path, kind)
    ini, records = write_ini(tmp_path, url, extra=extra)
    registry = bootstrap_registry(ini)
    expected = add_due_jobs(registry, 600, seconds=0.01)
    server = request.getfixturevalue(f"{kind}_server")

    daemon = spawn(ini, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_runs(records)) < 100:
            assert time.monotonic() < deadline, "the daemon ran nothing"
            assert daemon.poll() is None
            time.sleep(0.05)
        # Down long enough that the daemon must notice (a quick restart can be
        # invisible: pooled connections are checked and replaced on use).
        server.stop()
        time.sleep(1.5)
        assert daemon.poll() is None, "the daemon exited when the store went away"
        server.start()
        while {job_id for job_id, _, _ in _runs(records)} != expected:
            assert time.monotonic() < deadline, "jobs were lost in the outage"
            assert daemon.poll() is None, "the daemon exited during the outage"
            time.sleep(0.1)
        # Completions written after the outage leave nothing behind.
        while list(registry.scheduler.iter_jobs()):
            assert time.monotonic() < deadline, "completed jobs stayed in the store"
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert "store unavailable" in err
    assert "store reachable again" in err
    counts = Counter(job_id for job_id, _, _ in _runs(records))
    print(f"{kind} restart: {sum(counts.values())} runs of {len(expected)} jobs")
    assert set(counts) == expected
