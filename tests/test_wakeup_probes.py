"""Daemons on stores without a notification channel wake on a cheap change probe."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from pyramid_pyncette.repository import filewatch
from pyramid_pyncette.repository import sql as sql_module
from pyramid_pyncette.repository.filewatch import watch_file
from pyramid_pyncette.repository.listener import probe_receive, watched_receive
from pyramid_pyncette.repository.sql import SQLRepository
from pyramid_pyncette.schedules import DateSchedule

#: Bound on every wait for a listener thread (never reached when all is well).
WAIT = 10.0

#: Seconds a test may take to catch the MariaDB probe's statement in the process list.
KILL_DEADLINE = 30.0


class Marker:
    """A change marker whose reads are counted; ``fail`` makes the next read raise."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.fail = False

    def read(self) -> object:
        self.reads += 1
        if self.fail:
            self.fail = False
            raise ConnectionError("store away")
        return self.value


def test_probe_receive_waits_its_interval_then_answers_whether_the_marker_changed():
    marker = Marker()
    waits: list[float] = []
    receive = probe_receive(marker.read, 0.005, sleep=waits.append)
    assert receive(1.0) is False
    marker.value = 1
    assert receive(1.0) is True
    assert receive(1.0) is False  # one change, one wake
    assert waits == [0.005, 0.005, 0.005]
    assert marker.reads == 4  # the first read, at subscription, sets the baseline


def test_probe_receive_never_waits_longer_than_the_listeners_timeout():
    waits: list[float] = []
    receive = probe_receive(Marker().read, 5.0, sleep=waits.append)
    receive(0.25)
    assert waits == [0.25]


def test_probe_receive_lets_a_failed_read_reach_the_listener():
    marker = Marker()
    receive = probe_receive(marker.read, 0.0, sleep=lambda _: None)
    marker.fail = True
    with pytest.raises(ConnectionError):
        receive(1.0)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@linux_only
def test_a_watched_file_reports_each_write_once(tmp_path):
    path = tmp_path / "watched"
    path.write_bytes(b"")
    watch = watch_file(str(path))
    assert watch is not None
    try:
        assert watch.wait(0.0) is False
        with path.open("ab") as file:
            file.write(b"x")
        assert watch.wait(0.0) is True
        assert watch.wait(0.0) is False
    finally:
        watch.close()


@linux_only
def test_a_watch_ends_with_an_error_when_its_file_is_deleted(tmp_path):
    path = tmp_path / "watched"
    path.write_bytes(b"")
    watch = watch_file(str(path))
    assert watch is not None
    try:
        path.unlink()
        with pytest.raises(FileNotFoundError):
            watch.wait(0.0)
    finally:
        watch.close()


def test_watch_file_is_none_where_inotify_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(filewatch, "_inotify", lambda: None)
    assert watch_file(str(tmp_path)) is None


def test_watch_file_is_none_without_inotify_simple(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "inotify_simple", None)  # any import of it fails
    assert watch_file(str(tmp_path)) is None


@linux_only
def test_watching_a_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(OSError, match="missing"):
        watch_file(missing)


class Writes:
    """A fake file watch: ``wait`` answers whether a write was queued, and records its waits."""

    def __init__(self) -> None:
        self.pending = 0
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        written, self.pending = self.pending > 0, 0
        return written


def test_watched_receive_waits_for_a_write_and_wakes_when_the_marker_changed():
    marker, writes = Marker(), Writes()
    receive = watched_receive(marker.read, writes.wait, 0.25, sleep=lambda _: None)
    assert receive(1.0) is False
    writes.pending, marker.value = 1, 1
    assert receive(1.0) is True
    assert receive(0.1) is False
    assert writes.waits == [0.25, 0.25, 0.1]


def test_watched_receive_rereads_shortly_after_a_write_whose_commit_was_not_visible_yet():
    marker, writes, pauses = Marker(), Writes(), []
    receive = watched_receive(
        marker.read, writes.wait, 0.25, settle=0.001, settle_reads=3, sleep=pauses.append
    )
    writes.pending = 1  # the write lands, its commit is not visible yet
    assert receive(1.0) is False
    marker.value = 1  # now it is
    assert receive(1.0) is True
    assert pauses == [0.001]
    assert writes.waits == [0.25]


def test_watched_receive_goes_back_to_waiting_for_writes_after_its_rereads():
    marker, writes, pauses = Marker(), Writes(), []
    receive = watched_receive(
        marker.read, writes.wait, 0.25, settle=0.001, settle_reads=3, sleep=pauses.append
    )
    writes.pending = 1  # a write that commits nothing (a rollback, a checkpoint)
    results = [receive(1.0) for _ in range(5)]
    assert results == [False] * 5
    assert pauses == [0.001] * 3
    assert writes.waits == [0.25, 0.25]


def _add_from_another_process(app, job_id: str) -> None:
    """Write a due job the way another process would: its own connections to the path."""
    other = SQLRepository(app.repository.engine.url, table_name=app.repository.table.name)
    try:
        other.add([app.scheduler.build_job("record", DateSchedule(app.clock()), job_id=job_id)])
    finally:
        other.close()


class Wakes:
    """A listener callback that counts its calls and lets a test wait for the next."""

    def __init__(self) -> None:
        self.count = 0
        self.semaphore = threading.Semaphore(0)

    def __call__(self) -> None:
        self.count += 1
        self.semaphore.release()

    def wait(self) -> None:
        assert self.semaphore.acquire(timeout=WAIT)


@pytest.mark.parametrize("store_settings", ["sqlite"], indirect=True)
class TestSQLiteProbe:
    def test_a_commit_from_another_connection_changes_the_sqlite_probe(self, app):
        repository = app.repository
        repository.wakeup_probe_interval = 0.0
        with repository._probe_sqlite() as receive:
            assert receive(0.0) is False
            _add_from_another_process(app, "other")
            assert receive(0.0) is True
            assert receive(0.0) is False

    def test_a_job_committed_by_another_process_wakes_the_sqlite_daemon(self, app):
        wakes = Wakes()
        stop = app.repository.start_listener(wakes)
        assert stop is not None
        try:
            wakes.wait()  # the call after subscribing
            _add_from_another_process(app, "other")
            wakes.wait()
        finally:
            stop()
        assert wakes.count >= 2

    def test_the_daemons_own_writes_wake_it_once_and_its_idle_claim_not_again(self, app):
        repository = app.repository
        repository.wakeup_probe_interval = 0.0
        app.scheduler.add_async_job("record", job_id="mine")
        with repository._probe_sqlite() as receive:
            assert app.run_pending() == 1
            assert receive(0.0) is True  # the daemon's completion was a commit
            # The wake leads to a claim that finds nothing: it changes nothing,
            # so the probe stays quiet (no loop of wakes).
            assert app.run_pending() == 0
            assert receive(0.0) is False
            assert app.run_pending() == 0
            assert receive(0.0) is False

    def test_the_sqlite_probe_reads_data_version_at_its_interval_where_the_log_cannot_be_watched(
        self, app, monkeypatch
    ):
        repository = app.repository
        repository.wakeup_probe_interval = 0.0
        repository.probe_idle_after = 3600.0  # never idle within the test
        monkeypatch.setattr(sql_module, "watch_file", lambda path: None)
        waits: list[float] = []

        def recorded(read, interval, **kwargs):
            assert "sleep" not in kwargs  # no watch: waits of its own
            return probe_receive(read, interval, sleep=waits.append, **kwargs)

        monkeypatch.setattr(sql_module, "probe_receive", recorded)
        with repository._probe_sqlite() as receive:
            assert receive(1.0) is False
            _add_from_another_process(app, "other")
            assert receive(1.0) is True
        assert waits == [0.0, 0.0]

    def test_the_sqlite_probe_reopens_when_the_store_moves_to_a_replacing_file(self, app):
        repository = app.repository
        repository.wakeup_probe_interval = 0.0
        with repository._probe_sqlite() as receive:
            assert receive(0.0) is False
            repository._generation += 1  # what noticing a replaced file does
            with pytest.raises(ConnectionResetError):
                receive(0.0)

    def test_a_failing_sqlite_probe_reconnects_and_wakes_the_daemon_again(self, app, monkeypatch):
        real = sql_module.watched_receive
        subscriptions = 0

        def flaky(read, *args, **kwargs):
            nonlocal subscriptions
            subscriptions += 1
            reads = 0

            def read_or_fail() -> object:
                nonlocal reads
                reads += 1
                # The first subscription loses its connection at its first probe.
                if subscriptions == 1 and reads == 2:
                    raise sql_module.sa.exc.OperationalError("PRAGMA", {}, Exception("gone"))
                return read()

            return real(read_or_fail, *args, **kwargs)

        monkeypatch.setattr(sql_module, "watched_receive", flaky)
        wakes = Wakes()
        stop = app.repository.start_listener(wakes)
        assert stop is not None
        try:
            wakes.wait()  # the first subscription's call, then its read fails
            wakes.wait()  # reconnected after the backoff: called back again
            assert subscriptions >= 2
            _add_from_another_process(app, "after")
            wakes.wait()
        finally:
            stop()
        # Meanwhile, and after, the poll still finds the job.
        assert app.run_pending() == 1


def test_an_in_memory_sqlite_store_has_no_probe():
    repository = SQLRepository("sqlite://")
    try:
        assert repository.start_listener(lambda: None) is None
    finally:
        repository.close()


def test_probe_receive_stretches_its_interval_once_idle_and_shrinks_it_at_a_change():
    marker, waits, now = Marker(), [], [0.0]
    receive = probe_receive(
        marker.read,
        0.005,
        sleep=waits.append,
        idle_interval=0.02,
        idle_after=2.0,
        monotonic=lambda: now[0],
    )
    assert receive(1.0) is False
    now[0] = 2.5  # quiet for longer than idle_after
    assert receive(1.0) is False
    marker.value = 1
    assert receive(1.0) is True  # seen at the idle interval
    assert receive(1.0) is False  # and back to the short one
    assert waits == [0.005, 0.02, 0.02, 0.005]


def _add_through_another_engine(app, job_id: str) -> None:
    """Add a due job through connections of its own, as a web process would."""
    other = SQLRepository(app.repository.engine.url, table_name=app.repository.table.name)
    other.store_clock = False
    try:
        other.add([app.scheduler.build_job("record", DateSchedule(app.clock()), job_id=job_id)])
    finally:
        other.close()


@pytest.mark.parametrize("store_settings", ["mariadb"], indirect=True)
class TestMySQLProbe:
    def _probe(self, app):
        app.repository.wakeup_probe_interval = 0.0
        app.repository.idle_probe_interval = 0.0
        return app.repository._probe_mysql()

    def test_an_add_from_another_connection_changes_the_counters_the_probe_reads(self, app):
        with self._probe(app) as receive:
            assert receive(1.0) is False
            _add_through_another_engine(app, "other")
            assert receive(1.0) is True
            assert receive(1.0) is False

    def test_the_mariadb_probe_statement_returns_once_another_connection_commits(self, app):
        app.repository.wakeup_probe_interval = 0.002
        with app.repository._probe_mysql() as receive:
            results: list[bool] = []

            def wait_for_change() -> None:
                for _ in range(20):  # bounded: 20 statements of at most 0.5 s
                    if receive(0.5):
                        results.append(True)
                        return
                results.append(False)

            waiting = threading.Thread(target=wait_for_change)
            waiting.start()
            _add_through_another_engine(app, "other")
            waiting.join(WAIT + 5)
        assert results == [True]

    def test_on_mysql_the_daemon_reads_the_counters_at_its_interval(self, app, monkeypatch):
        monkeypatch.setattr(app.repository.engine.dialect, "is_mariadb", False)
        waits: list[float] = []

        def recorded(read, interval, **kwargs):
            return probe_receive(read, interval, sleep=waits.append, **kwargs)

        monkeypatch.setattr(sql_module, "probe_receive", recorded)
        app.repository.wakeup_probe_interval = 0.002
        app.repository.probe_idle_after = 3600.0  # never idle within the test
        with app.repository._probe_mysql() as receive:
            assert receive(1.0) is False
            _add_through_another_engine(app, "other")
            assert receive(1.0) is True
        assert waits == [0.002, 0.002]

    def test_a_job_added_by_another_process_wakes_the_mysql_daemon(self, app):
        app.repository.wakeup_probe_interval = 0.001
        wakes = Wakes()
        stop = app.repository.start_listener(wakes)
        assert stop is not None
        try:
            wakes.wait()  # the call after subscribing
            _add_through_another_engine(app, "other")
            wakes.wait()
        finally:
            stop()

    def test_the_daemons_claims_and_completions_leave_the_counters_alone(self, app):
        app.scheduler.add_async_job("record", job_id="mine")
        with self._probe(app) as receive:
            assert app.run_pending() == 1
            assert app.run_pending() == 0
            assert receive(1.0) is False

    def test_retry_job_and_resume_queue_change_the_counters(self, app):
        app.scheduler.add_async_job("record", job_id="mine")
        app.scheduler.pause_queue("mail")
        with self._probe(app) as receive:
            app.scheduler.retry_job("mine")
            assert receive(1.0) is True
            app.scheduler.resume_queue("mail")
            assert receive(1.0) is True

    def test_garbage_in_the_counters_neither_fails_an_add_nor_stops_the_probe(self, app):
        changes = app.repository.changes
        app.scheduler.add_async_job("record", job_id="first")  # the table is there
        with app.repository.engine.begin() as conn:
            conn.execute(sa.delete(changes))
            conn.execute(
                sa.insert(changes),
                [
                    {"slot": slot, "version": 9_223_372_036_854_775_807}
                    for slot in range(sql_module.CHANGE_SLOTS)
                ]
                + [{"slot": -3, "version": -7}, {"slot": 4_000, "version": 1}],
            )
        with self._probe(app) as receive:
            _add_through_another_engine(app, "other")
            assert receive(1.0) is True
        with app.repository.engine.connect() as conn:
            versions = conn.execute(sa.select(changes.c.version)).scalars().all()
        assert 0 in versions  # the bumped slot started again
        assert app.run_pending(app.clock()) == 2

    def test_a_killed_mariadb_probe_reconnects_and_wakes_the_daemon_again(self, app):
        app.repository.wakeup_probe_interval = 0.002
        engine = app.repository.engine

        def kill_probe() -> bool:
            with engine.connect() as conn:
                ids = conn.execute(
                    sa.text(
                        "SELECT id FROM information_schema.PROCESSLIST "
                        "WHERE info LIKE 'BEGIN NOT ATOMIC%'"
                    )
                ).scalars()
                killed = False
                for probe_id in ids:
                    conn.execute(sa.text(f"KILL CONNECTION {int(probe_id)}"))
                    killed = True
                return killed

        wakes = Wakes()
        stop = app.repository.start_listener(wakes)
        assert stop is not None
        try:
            wakes.wait()  # the call after subscribing
            # Its statement runs most of the time: kill it as soon as it shows (on a
            # busy host the listener may take a while to send it: a deadline, not a
            # number of tries).
            deadline = time.monotonic() + KILL_DEADLINE
            while not kill_probe():
                assert time.monotonic() < deadline, "the probe's statement never showed"
            wakes.wait()  # reconnected after the backoff: called back again
            _add_through_another_engine(app, "after")
            wakes.wait()
        finally:
            stop()
        assert app.run_pending() == 1


@pytest.mark.parametrize("store_settings", ["mariadb"], indirect=True)
def test_without_the_changes_table_mysql_adds_work_and_daemons_poll(app):
    name = f"nochanges_{uuid.uuid4().hex[:8]}"
    SQLRepository(engine=app.repository.engine, table_name=name).setup()
    with app.repository.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {name}_changes")
    repository = SQLRepository(engine=app.repository.engine, table_name=name, create_table=False)
    repository.store_clock = False
    repository.setup()
    repository.add([app.scheduler.build_job("record", DateSchedule(app.clock()), job_id="j")])
    assert repository.start_listener(lambda: None) is None
    leases = repository.claim(app.clock(), 10, "t", 60.0)
    assert [lease.job.id for lease in leases] == ["j"]
