"""A separate store and the request's transaction: staged jobs stay invisible until commit.

``request.scheduler`` writes a transaction's jobs in ``tpc_vote``, but staged: locked by a
token of the transaction and due no earlier than the staging window, so no daemon claims
them. ``tpc_finish`` makes them claimable and announces them; ``tpc_abort`` takes back the
rows that still carry the token. Every test runs on every store, driving the two-phase
commit with a data manager that votes after the scheduler's (where zope.sqlalchemy commits
the app's database) and can fail there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import transaction

from pyramid_pyncette.scheduler import utcnow
from pyramid_pyncette.schedules import DateSchedule
from pyramid_pyncette.worker import Worker
from tests.conftest import App

LATER_SORT_KEY = "~sqlalchemy:later-voter"  # after "pyramid_pyncette:..."


class CommitFailed(Exception):
    """What :class:`LaterVoter` raises when told to fail."""


class LaterVoter:
    """A data manager voting after the scheduler's: runs ``on_vote``, then maybe fails."""

    def __init__(self, on_vote: Callable[[], None] | None = None, fail: bool = False) -> None:
        self.on_vote = on_vote
        self.fail = fail
        self.transaction_manager = None
        self.outcome: str | None = None

    def sortKey(self) -> str:
        return LATER_SORT_KEY

    def abort(self, txn: Any) -> None:
        self.outcome = "abort"

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        if self.on_vote is not None:
            self.on_vote()
        if self.fail:
            raise CommitFailed("the app database failed to commit")

    def tpc_finish(self, txn: Any) -> None:
        self.outcome = "commit"

    def tpc_abort(self, txn: Any) -> None:
        self.outcome = "abort"


def in_transaction(
    app: App,
    work: Callable[[Any], None],
    *,
    on_vote: Callable[[], None] | None = None,
    fail: bool = False,
) -> LaterVoter:
    """Run ``work(request_scheduler)`` in a transaction, then commit it (or fail its vote)."""
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    work(app.scheduler.bind(tm))
    voter = LaterVoter(on_vote, fail)
    tm.get().join(voter)
    if fail:
        with pytest.raises(CommitFailed):
            tm.commit()
        tm.abort()
    else:
        tm.commit()
    return voter


def vote_and_die(app: App, work: Callable[[Any], None]) -> None:
    """Stage ``work``'s jobs (the scheduler votes) and never finish: the process died."""
    tm = transaction.TransactionManager(explicit=True)
    txn = tm.begin()
    scheduler = app.scheduler.bind(tm)
    work(scheduler)
    data_manager = scheduler.writer.data_manager()
    data_manager.tpc_begin(txn)
    data_manager.commit(txn)
    data_manager.tpc_vote(txn)
    # Nothing after the vote runs in a dead process: no tpc_finish, no tpc_abort.


def claimable(app: App) -> list[str]:
    """The ids a daemon could claim now (they are released again, unrun)."""
    leases = app.repository.claim(app.clock(), 100, "probe-token", 60.0)
    app.repository.release(leases)
    return sorted(lease.job.id for lease in leases)


class Announcements:
    """Counts the announcements daemons would receive: the in-process wake-up listeners,
    and the store's own channel (PostgreSQL NOTIFY, Redis PUBLISH) where it has one."""

    def __init__(self, app: App) -> None:
        self.wakes = 0
        app.scheduler.wake_listeners.append(self._wake)
        self.repository = app.repository
        self.store = 0
        self._drain: Callable[[], int] | None = None
        self._close: Callable[[], None] = lambda: None
        dialect = getattr(getattr(self.repository, "engine", None), "dialect", None)
        if dialect is not None and dialect.name == "postgresql":
            self._listen_postgresql()
        elif hasattr(self.repository, "client"):
            self._listen_redis()

    def _wake(self) -> None:
        self.wakes += 1

    def _listen_postgresql(self) -> None:
        engine = self.repository.engine
        channel = self.repository.channel
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f'LISTEN "{channel}"')
        raw = conn.connection.dbapi_connection

        def drain() -> int:
            # Notifications arrive in commit order: all before the sentinel are counted.
            with engine.connect() as other:
                other = other.execution_options(isolation_level="AUTOCOMMIT")
                other.execute(sa.text("SELECT pg_notify(:c, 'sentinel')"), {"c": channel})
            for count, note in enumerate(raw.notifies(timeout=10.0)):
                if note.payload == "sentinel":
                    return count
            raise AssertionError("the sentinel notification never arrived")

        self._drain = drain
        self._close = conn.close

    def _listen_redis(self) -> None:
        client = self.repository.client
        channel = self.repository.channel
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(channel)

        def drain() -> int:
            # Messages on one channel arrive in order: all before the sentinel are counted.
            client.publish(channel, "sentinel")
            count = 0
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message["data"] in ("sentinel", b"sentinel"):
                    return count
                count += 1
            raise AssertionError("the sentinel message never arrived")

        self._drain = drain
        self._close = pubsub.close

    @property
    def has_store_channel(self) -> bool:
        return self._drain is not None

    def total(self) -> tuple[int, int]:
        """(wake-up listener calls, store announcements) so far."""
        if self._drain is not None:
            self.store += self._drain()
        return self.wakes, self.store

    def close(self) -> None:
        self._close()


@pytest.fixture
def announcements(app: App):
    counter = Announcements(app)
    yield counter
    counter.close()


def window(app: App) -> float:
    return app.registry.pyncette_settings.lease_duration


# --------------------------------------------------------------------------- a later vote fails


def test_job_is_not_claimable_while_a_later_data_manager_votes_and_is_gone_after_it_fails(app):
    during = {}

    def look() -> None:
        during["claimable"] = claimable(app)
        during["ran"] = app.run_pending()

    in_transaction(
        app, lambda s: s.add_async_job("record", job_id="doomed"), on_vote=look, fail=True
    )

    assert during == {"claimable": [], "ran": 0}
    assert app.scheduler.get_job("doomed") is None
    app.clock.advance(window(app) + 1)
    assert app.run_pending() == 0
    assert app.calls == []


def test_replaced_job_is_restored_and_its_new_version_never_runs_when_a_later_vote_fails(app):
    app.scheduler.add_async_job("record", args=["old"], job_id="report")
    previous = app.scheduler.get_job("report")
    during = {}

    def look() -> None:
        during["ran"] = app.run_pending()

    in_transaction(
        app,
        lambda s: s.add_async_job("async_record", args=["new"], job_id="report"),
        on_vote=look,
        fail=True,
    )

    assert during == {"ran": 0}
    assert app.scheduler.get_job("report") == previous
    assert [job.id for job in app.scheduler.get_jobs(task="record")] == ["report"]
    assert list(app.scheduler.get_jobs(task="async_record")) == []
    assert app.run_pending() == 1
    assert [(call.task, call.args) for call in app.calls] == [("record", ("old",))]


def test_replaced_job_runs_only_in_its_new_version_once_the_transaction_commits(app):
    app.scheduler.add_async_job("record", args=["old"], job_id="report")
    during = {}

    def look() -> None:
        during["ran"] = app.run_pending()

    in_transaction(
        app,
        lambda s: s.add_async_job("async_record", args=["new"], job_id="report"),
        on_vote=look,
    )

    assert during == {"ran": 0}
    assert list(app.scheduler.get_jobs(task="record")) == []
    assert app.run_pending() == 1
    assert [(call.task, call.args) for call in app.calls] == [("async_record", ("new",))]
    assert app.run_pending() == 0


def test_abort_keeps_jobs_written_by_another_writer_since_the_vote(app):
    """Between the vote and the abort, another writer (here the immediate scheduler) writes
    the ids the transaction added and cancelled: the abort must not clobber them."""
    app.scheduler.add_async_job("record", args=["old"], job_id="cancelled")

    def work(scheduler) -> None:
        scheduler.add_async_job("record", args=["staged"], job_id="added")
        scheduler.cancel_job("cancelled")

    def write_meanwhile() -> None:
        app.scheduler.add_async_job("record", args=["other added"], job_id="added")
        app.scheduler.add_async_job("record", args=["other cancelled"], job_id="cancelled")

    in_transaction(app, work, on_vote=write_meanwhile, fail=True)

    assert app.scheduler.get_job("added").args == ["other added"]
    assert app.scheduler.get_job("cancelled").args == ["other cancelled"]
    assert app.run_pending() == 2
    assert sorted(call.args for call in app.calls) == [("other added",), ("other cancelled",)]


# --------------------------------------------------------------------------- commit


def test_job_becomes_claimable_only_when_its_transaction_commits_and_then_at_once(app):
    during = {}

    def look() -> None:
        during["claimable"] = claimable(app)

    in_transaction(app, lambda s: s.add_async_job("record", job_id="now"), on_vote=look)

    assert during == {"claimable": []}
    stored = app.scheduler.get_job("now")
    assert stored.locked_by is None
    assert stored.due_at == app.clock()
    assert app.run_pending() == 1, "claimable at once, the clock has not moved"
    assert [call.job_id for call in app.calls] == ["now"]


def test_jobs_are_announced_only_after_commit(app, announcements):
    during = {}

    def look() -> None:
        during["announced"] = announcements.total()

    in_transaction(
        app, lambda s: s.add_async_job("record", job_id="dropped"), on_vote=look, fail=True
    )
    assert during["announced"] == (0, 0)
    assert announcements.total() == (0, 0), "nothing to announce for an aborted transaction"

    in_transaction(app, lambda s: s.add_async_job("record", job_id="kept"), on_vote=look)
    assert during["announced"] == (0, 0)
    wakes, store = announcements.total()
    assert wakes == 1
    if announcements.has_store_channel:
        assert store >= 1, "the daemons listening on the store are told after commit"


def test_commit_after_the_staging_window_leaves_a_daemons_lease_alone(app):
    """The data managers after ours took longer than the staging window: a daemon claimed
    the staged row meanwhile. Making the job claimable must not release that lease (another
    daemon would then start the same run)."""
    leases = []

    def slow_commit() -> None:
        app.clock.advance(window(app) + 1)
        leases.extend(app.repository.claim(app.clock(), 10, "daemon-token", 60.0))

    in_transaction(app, lambda s: s.add_async_job("record", job_id="slow"), on_vote=slow_commit)

    assert [lease.job.id for lease in leases] == ["slow"]
    assert app.scheduler.get_job("slow").locked_by == "daemon-token"
    assert app.repository.claim(app.clock(), 10, "other-token", 60.0) == []


def test_store_failure_while_publishing_is_logged_and_the_job_runs_after_the_staging_window(
    app, monkeypatch, caplog
):
    def unavailable(token, jobs):
        raise ConnectionError("the store went away")

    monkeypatch.setattr(app.repository, "publish", unavailable)
    with caplog.at_level(logging.ERROR, logger="pyramid_pyncette.transaction"):
        voter = in_transaction(app, lambda s: s.add_async_job("record", job_id="late"))

    assert voter.outcome == "commit", "tpc_finish must not raise"
    assert "could not make 1 committed job(s) claimable" in caplog.text
    assert app.run_pending() == 0
    app.clock.advance(window(app) - 1)
    assert app.run_pending() == 0
    app.clock.advance(2)
    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["late"]


# --------------------------------------------------------------------------- the process died


def test_staged_job_of_a_process_that_died_before_commit_runs_once_after_the_staging_window(
    app,
):
    """The documented rule: such a job runs once its staging window expires, like a job
    whose lease expired; one due later than that keeps its own first run."""
    start = app.clock()
    later = start + timedelta(hours=1)

    def work(scheduler) -> None:
        scheduler.add_async_job("record", job_id="now")
        scheduler.add_date_job("record", later, job_id="later")

    vote_and_die(app, work)

    assert app.run_pending() == 0
    app.clock.advance(window(app) - 1)
    assert app.run_pending() == 0, "not before the staging window expires"
    app.clock.advance(2)
    assert app.run_pending() == 1
    assert [(call.job_id, call.attempt) for call in app.calls] == [("now", 1)]
    assert app.scheduler.get_job("now") is None, "it ran once and is done"

    app.clock.set(later - timedelta(seconds=1))
    assert app.run_pending() == 0, "a job due after the window keeps its own first run"
    app.clock.set(later)
    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["now", "later"]
    assert app.calls[-1].scheduled_at == later


@pytest.mark.parametrize("store_settings", ["postgresql", "mariadb", "redis"], indirect=True)
def test_staging_window_is_measured_by_the_store_clock_where_claims_use_it(app):
    """PostgreSQL, MariaDB and Redis claim by their own clock: the window must end by that
    clock too, or a staged row written by a process whose clock runs behind is claimable at
    once."""
    app.repository.store_clock = True
    app.clock.set(utcnow() - timedelta(days=1))  # this process runs a day behind the store
    before = utcnow()
    vote_and_die(app, lambda s: s.add_async_job("record", job_id="staged"))
    after = utcnow()

    staged = app.scheduler.get_job("staged")
    assert staged.next_run_at == app.clock(), "the real first run is kept"
    span = timedelta(seconds=window(app))
    slack = timedelta(seconds=5)  # the store server's clock against this process's
    assert before + span - slack <= staged.due_at <= after + span + slack
    assert app.repository.claim(utcnow(), 10, "probe-token", 60.0) == []


# --------------------------------------------------------------------------- the store calls


def test_publish_makes_each_job_due_at_its_own_due_time(app):
    """Not every job is due at its first run (a retry waits for its backoff, a parked job
    is due never): publishing restores each job's own due time, not its next run."""
    now = app.clock()
    build = app.scheduler.build_job
    plain = build("record", DateSchedule(now), job_id="plain")
    waiting = build("record", DateSchedule(now), job_id="waiting").replace(
        due_at=now + timedelta(hours=2)
    )
    parked = build("record", DateSchedule(now), job_id="parked").replace(due_at=None)
    jobs = [plain, waiting, parked]

    assert app.repository.stage(jobs, [], "staged:test", 60.0, now) == {}
    staged = app.repository.get_many([job.id for job in jobs])
    assert {job.locked_by for job in staged.values()} == {"staged:test"}
    assert staged["plain"].due_at == now + timedelta(seconds=60)
    assert staged["parked"].due_at is None

    app.repository.publish("staged:test", jobs)
    published = app.repository.get_many([job.id for job in jobs])
    assert {job_id: job.due_at for job_id, job in published.items()} == {
        "plain": now,
        "waiting": now + timedelta(hours=2),
        "parked": None,
    }
    assert {job.locked_by for job in published.values()} == {None}
    assert {job.next_run_at for job in published.values()} == {now}


# --------------------------------------------------------------------------- a real daemon


@pytest.mark.slow
def test_a_running_daemon_never_runs_jobs_of_transactions_whose_later_vote_fails(app):
    """The report this guards against: a daemon polling every 50 ms (and woken by the
    store's announcements) ran jobs while a later data manager was still voting, before
    that data manager failed and the transaction was aborted."""
    app.scheduler.clock = utcnow
    worker = Worker(app.registry, clock=utcnow, poll_interval=0.05)
    app.scheduler.wake_listeners.append(worker.wake)
    thread = threading.Thread(target=worker.run, name="test-daemon", daemon=True)
    thread.start()
    try:
        for number in range(10):
            in_transaction(
                app,
                lambda s, n=number: s.add_async_job("record", job_id=f"doomed-{n}"),
                on_vote=lambda: time.sleep(0.3),  # the app database takes its time, then fails
                fail=True,
            )
        in_transaction(app, lambda s: s.add_async_job("record", job_id="kept"))
        deadline = time.monotonic() + 10
        while not app.calls and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
        thread.join(10)

    assert [call.job_id for call in app.calls] == ["kept"]
    assert [job.id for job in app.scheduler.iter_jobs()] == []
