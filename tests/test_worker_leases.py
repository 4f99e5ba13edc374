"""The worker's lease loop: renewals by each job's own lease, waits by one clock, lost leases.

The unit tests drive the loop one turn at a time (``Worker._cycle``) on the
fake clock, over every store: the worker's monotonic clock follows the fake
clock, job threads are replaced by a list the test finishes runs from, and
time moves by at most :data:`STEP` at once, so a second daemon polling the
store at every step would see a lease that ran out. The tests marked
``slow`` use real time: a worker thread whose clock runs ahead of the
store's, and real ``pscheduler`` daemons paused with SIGSTOP.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette import ILeaseLost
from pyramid_pyncette.repository import create_repository
from pyramid_pyncette.settings import PyncetteSettings
from pyramid_pyncette.testing import FakeClock
from pyramid_pyncette.worker import Worker
from tests.daemon import PERSISTENT_STORES

#: The longest the simulated loop sleeps at once (seconds).
STEP = 0.1


class HeldThreads:
    """Stands in for the job threads: keeps the submitted runs for the test to finish."""

    def __init__(self) -> None:
        self.submitted = []

    def submit(self, items) -> None:
        self.submitted.extend(items)

    def take_unstarted(self):
        return []


class Loop:
    """A worker whose loop turns on the fake clock: each turn at the time it asked for."""

    def __init__(self, app, **options) -> None:
        self.app = app
        epoch = app.clock()
        self.worker = Worker(
            app.registry,
            clock=app.clock,
            monotonic=lambda: (app.clock() - epoch).total_seconds(),
            **options,
        )
        self.threads = HeldThreads()
        self.next_turn = app.clock()
        #: ``(wait asked for, whether a lease was held)`` of every turn.
        self.timeouts = []
        self._started = {}
        self._ended = set()

    def turn(self) -> float:
        """One turn of the loop, now; return the wait it asked for."""
        timeout = self.worker._cycle(self.threads)
        assert timeout is not None
        for running in self.threads.submitted:
            self._started.setdefault(running.key, self.app.clock())
        self.timeouts.append((timeout, bool(self.worker._held())))
        self.next_turn = self.app.clock() + timedelta(seconds=timeout)
        return timeout

    def run_for(self, seconds: float, every_step=None, finish=None) -> None:
        """Let ``seconds`` of fake time pass, turning the loop whenever it asked to.

        ``every_step()`` runs at each step after the loop's turn (another
        daemon's poll); ``finish`` maps a job id to how long its runs take
        (the others do not end).
        """
        finish = finish or {}
        end = self.app.clock() + timedelta(seconds=seconds)
        while self.app.clock() < end:
            now = self.app.clock()
            for running in self.threads.submitted:
                took = finish.get(running.lease.job.id)
                if took is None or running.key in self._ended:
                    continue
                if now - self._started[running.key] >= timedelta(seconds=took):
                    self._ended.add(running.key)
                    self.worker._run_one(running)
            # The loop is woken by a finished run, else it sleeps as long as it asked.
            if now >= self.next_turn or not self.worker._finished.empty():
                self.turn()
            if every_step is not None:
                every_step()
            self.app.clock.advance(min(STEP, (end - now).total_seconds()))


def recorder(interface):
    """``(events, configure)``: ``configure`` subscribes ``events.append`` to ``interface``."""
    events = []

    def configure(config, calls):
        config.add_subscriber(events.append, interface)

    return events, configure


def other_daemon_claims(app, token="other-daemon"):
    """Poll the store as a second daemon would, now; return what it took."""
    return app.repository.claim(app.clock(), 10, token, 60)


def counting(target, name):
    """Wrap ``target.name`` to record its calls' arguments; return that list."""
    calls = []
    method = getattr(target, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return method(*args, **kwargs)

    setattr(target, name, wrapper)
    return calls


def _has_store_clock(store_settings) -> bool:
    """Whether the store of ``store_settings`` keeps its own clock (when not switched off)."""
    settings = PyncetteSettings(url=store_settings["pyncette.url"])
    return create_repository(settings).store_clock


# --------------------------------------------------------------------------- 1. renewals


def test_a_job_lease_shorter_than_the_heartbeat_period_is_renewed_before_it_expires(make_app):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_interval_job("record", seconds=3, lease_duration=2)
    app.clock.advance(3)
    # The daemon's own lease is 60 s: by it alone, renewals would come every 20 s.
    loop = Loop(app)
    assert loop.worker.heartbeat_interval == 20
    stolen = []

    def poll():
        stolen.extend(other_daemon_claims(app))

    loop.run_for(5.9, every_step=poll)
    assert stolen == []
    assert [running.lease.job.id for running in loop.threads.submitted] == [job.id]
    # While the run holds its lease, the loop never sleeps past its renewal.
    assert max(timeout for timeout, held in loop.timeouts if held) <= 2 / 3 + 1e-9

    # The run takes 6 s, three times its own lease.
    loop.run_for(0.5, every_step=poll, finish={job.id: 6})
    assert stolen == []
    assert [call.job_id for call in app.calls] == [job.id]
    assert events == []
    assert loop.worker.stats["succeeded"] == 1


def test_leases_due_for_renewal_together_are_renewed_in_one_call(make_app):
    app = make_app()
    short = [app.scheduler.add_async_job("record", lease_duration=3) for _ in range(3)]
    long = app.scheduler.add_async_job("record")
    loop = Loop(app)
    extends = counting(app.repository, "extend")

    loop.run_for(6)

    assert len(loop.threads.submitted) == 4
    assert other_daemon_claims(app) == []
    renewed = [sorted(job_id for job_id, _, _ in leases) for _, leases in extends]
    # A 3 s lease is renewed every second; the 60 s one (every 20 s) is not due.
    assert 5 <= len(renewed) <= 7
    assert all(ids == sorted(job.id for job in short) for ids in renewed)
    assert long.id not in {job_id for ids in renewed for job_id in ids}


def test_the_default_lease_is_renewed_by_the_daemon_heartbeat_period(make_app):
    app = make_app()
    job = app.scheduler.add_async_job("record")
    loop = Loop(app, lease_duration=3)
    extends = counting(app.repository, "extend")

    loop.run_for(10)

    assert other_daemon_claims(app) == []
    assert {leases[0][0] for _, leases in extends} == {job.id}
    assert {leases[0][2] for _, leases in extends} == {3}
    assert 9 <= len(extends) <= 11


# --------------------------------------------------------------------------- 10. one clock


def test_next_due_delay_counts_from_the_given_time_on_a_store_without_its_clock(app):
    assert app.repository.next_due_delay(app.start) is None
    app.scheduler.add_date_job("record", app.start + timedelta(seconds=10))
    app.scheduler.add_date_job("record", app.start + timedelta(seconds=40))

    assert app.repository.next_due_delay(app.start) == 10.0
    assert app.repository.next_due_delay(app.start + timedelta(seconds=15)) == -5.0
    assert app.repository.next_due() == app.start + timedelta(seconds=10)


#: The stores with a clock of their own (on the others the daemon's clock is the store's).
clocked_stores = pytest.mark.parametrize(
    "store_settings", ["postgresql", "mariadb", "redis"], indirect=True
)


def _clock_ahead_app(make_app, store_settings):
    """An app on the real time whose store keeps its own clock."""
    assert _has_store_clock(store_settings)
    app = make_app()
    app.repository.store_clock = True
    app.clock.set(datetime.now(timezone.utc))
    return app


@clocked_stores
def test_a_daemon_clock_ahead_of_the_store_waits_by_the_store_clock(make_app, store_settings):
    app = _clock_ahead_app(make_app, store_settings)
    job = app.scheduler.add_date_job("record", app.clock() + timedelta(seconds=30))
    worker_clock = FakeClock(app.clock() + timedelta(hours=1))
    worker = Worker(app.registry, clock=worker_clock, poll_interval=60, lease_duration=120)

    assert 25 < app.repository.next_due_delay(worker_clock()) <= 30
    assert 25 < worker._until_next_due() <= 30
    # A whole turn of the loop: nothing is due by the store's clock, so it waits.
    claims = counting(app.repository, "complete_and_claim")
    threads = HeldThreads()
    assert worker._cycle(threads) >= min(25, worker.heartbeat_interval)
    assert len(claims) == 1
    assert threads.submitted == []
    assert app.scheduler.get_job(job.id).locked_by is None


@pytest.mark.slow
@clocked_stores
def test_an_idle_daemon_whose_clock_runs_ahead_of_the_store_does_not_spin(make_app, store_settings):
    app = _clock_ahead_app(make_app, store_settings)
    # Due in ten minutes by the store's clock, fifty minutes ago by the daemon's.
    app.scheduler.add_date_job("record", app.clock() + timedelta(minutes=10))
    worker = Worker(
        app.registry,
        clock=lambda: datetime.now(timezone.utc) + timedelta(hours=1),
        poll_interval=0.5,
    )
    claims = counting(app.repository, "complete_and_claim")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(2.0)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    print(f"clock ahead: {len(claims)} claims in 2 s")
    # About one claim per poll interval (0.5 s), not one per turn of a spinning loop.
    assert 1 <= len(claims) <= 8
    assert app.calls == []


# --------------------------------------------------------------------------- 11. lost leases


def test_a_run_whose_lease_ran_out_and_was_taken_is_reported_and_not_written(make_app, caplog):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("record")
    loop = Loop(app)
    loop.turn()
    (running,) = loop.threads.submitted

    # The daemon is paused longer than the lease; another daemon takes the job.
    app.clock.advance(61)
    assert [lease.job.id for lease in other_daemon_claims(app)] == [job.id]
    # Resumed: the run ends before any renewal was tried.
    loop.worker._run_one(running)
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.worker"):
        loop.turn()

    assert [event.job.id for event in events] == [job.id]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost its lease" in warnings[0].getMessage()
    assert loop.worker.stats["succeeded"] == 0
    assert loop.worker.stats["failed"] == 0
    stored = app.scheduler.get_job(job.id)
    assert stored is not None and stored.locked_by == "other-daemon"
    assert running.key not in loop.worker._running


def test_a_run_whose_lease_ran_out_but_was_not_taken_is_written(make_app, caplog):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("record")
    loop = Loop(app)
    loop.turn()
    (running,) = loop.threads.submitted
    extends = counting(app.repository, "extend")

    app.clock.advance(61)
    loop.worker._run_one(running)
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.worker"):
        loop.turn()

    # Checked with the store first (the lease was still held), then completed.
    assert [[job_id for job_id, _, _ in leases] for _, leases in extends] == [[job.id]]
    assert events == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert loop.worker.stats["succeeded"] == 1
    assert app.scheduler.get_job(job.id) is None


def test_a_run_renewed_on_time_is_written_without_an_extra_check(make_app):
    app = make_app()
    job = app.scheduler.add_async_job("record")
    loop = Loop(app, lease_duration=3)
    extends = counting(app.repository, "extend")

    loop.run_for(2.8, finish={job.id: 2.4})

    # Renewals only (every second): none right before the completion.
    assert len(extends) == 2
    assert loop.worker.stats["succeeded"] == 1
    assert app.scheduler.get_job(job.id) is None


def test_a_run_whose_job_this_daemon_claimed_again_reports_its_lost_lease(make_app, caplog):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("record")
    loop = Loop(app, concurrency=2)
    loop.turn()
    (first,) = loop.threads.submitted
    extends = counting(app.repository, "extend")

    app.scheduler.retry_job(job.id)
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.worker"):
        loop.turn()
        first_run, second_run = loop.threads.submitted
        assert second_run.lease.token != first.lease.token
        assert [event.job.id for event in events] == [job.id]
        # The old run is not renewed any more; the new one is.
        loop.run_for(25)
        loop.worker._run_one(first_run)
        loop.turn()
        loop.worker._run_one(second_run)
        loop.turn()

    assert len(events) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost its lease" in warnings[0].getMessage()
    assert extends and all(
        [token for _, token, _ in leases] == [second_run.lease.token] for _, leases in extends
    )
    assert loop.worker.stats["succeeded"] == 1
    assert app.scheduler.get_job(job.id) is None


def test_a_queued_run_that_lost_its_lease_is_not_started(make_app):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("record")
    loop = Loop(app, concurrency=2)
    loop.turn()
    app.scheduler.retry_job(job.id)
    loop.turn()
    queued, again = loop.threads.submitted
    assert queued.info.lease_lost and not again.info.lease_lost

    # A thread takes the lost run from the queue first: it does not call the task.
    loop.worker._run_one(queued)
    assert app.calls == []
    loop.worker._run_one(again)
    loop.turn()

    assert [call.job_id for call in app.calls] == [job.id]
    assert len(events) == 1
    assert loop.worker.stats["succeeded"] == 1
    assert loop.worker.stats["failed"] == 0
    assert app.scheduler.get_job(job.id) is None


# --------------------------------------------------------------------------- real daemons


def _daemon(request, tmp_path, kind, settings=""):
    """A running ``pscheduler`` on a fresh store of ``kind``: ``(process, registry, records)``."""
    from tests.daemon import bootstrap_registry, persistent_store, spawn, wait_for, write_ini

    url, extra = persistent_store(request, tmp_path, kind)
    ini, records = write_ini(tmp_path, url, extra=f"{extra}\n{settings}")
    registry = bootstrap_registry(ini)
    daemon = spawn(ini, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(n.startswith("ready-") for n in os.listdir(records)), 60, "ready")
    except BaseException:
        daemon.kill()
        daemon.communicate(timeout=60)
        raise
    return daemon, registry, records


@pytest.mark.slow
@pytest.mark.parametrize("kind", PERSISTENT_STORES)
def test_a_job_lease_shorter_than_the_heartbeat_period_runs_once_on_a_healthy_daemon(
    request, tmp_path, kind
):
    from tests.daemon import wait_for
    from tests.procapp import read_lines, read_runs

    # The daemon's lease is the default 60 s (renewals every 20 s by it alone).
    daemon, registry, records = _daemon(request, tmp_path, kind)
    try:
        job = registry.scheduler.add_async_job(
            "long_run", kwargs={"seconds": 3.0}, lease_duration=1
        )
        wait_for(lambda: read_runs(records), 30, "the run to end")
        time.sleep(1.5)  # a lease and a poll: time for a wrong second start
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err

    assert read_lines(records, "started") == [job.id]
    assert [job_id for job_id, _, _ in read_runs(records)] == [job.id]
    assert "lost its lease" not in err
    assert "(1 succeeded, 0 failed)" in err
    assert registry.scheduler.get_job(job.id) is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", PERSISTENT_STORES)
def test_a_daemon_paused_longer_than_the_lease_reports_every_run_it_lost(request, tmp_path, kind):
    from tests.daemon import wait_for
    from tests.procapp import read_lines, read_runs

    daemon, registry, records = _daemon(request, tmp_path, kind, "pyncette.lease_duration = 1s")
    try:
        ids = [f"paused-{n}-{uuid.uuid4().hex[:6]}" for n in range(4)]
        for job_id in ids:
            registry.scheduler.add_async_job("long_run", kwargs={"seconds": 1.0}, job_id=job_id)
        wait_for(lambda: len(read_lines(records, "started")) == 4, 30, "the runs to start")

        # Paused through the end of the lease; meanwhile another daemon takes the jobs.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            taken = []
            wait_for(
                lambda: (
                    taken.extend(
                        registry.scheduler.repository.claim(
                            datetime.now(timezone.utc), 10, "other-daemon", 60
                        )
                    )
                    or len(taken) == 4
                ),
                10,
                "the leases to run out",
            )
            time.sleep(0.5)  # the paused runs are over by the time it resumes
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        wait_for(lambda: len(read_lines(records, "lost")) >= 4, 20, "the lost leases")
        time.sleep(0.5)  # anything else it would report or write
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err

    assert sorted(job_id for job_id, _, _ in read_runs(records)) == sorted(ids)
    assert sorted(read_lines(records, "lost")) == sorted(ids)
    warnings = [line for line in err.splitlines() if "WARN" in line]
    for job_id in ids:
        mentions = [line for line in warnings if repr(job_id) in line]
        assert len(mentions) == 1 and "lost its lease" in mentions[0], err
    assert "(0 succeeded, 0 failed)" in err
    # The results were discarded: the jobs stay with the daemon that took them.
    for job_id in ids:
        assert registry.scheduler.get_job(job_id).locked_by == "other-daemon"
