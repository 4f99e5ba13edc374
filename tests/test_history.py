"""The run history the worker writes: one record per run, in the store call that completes it.

Every test runs on every store through ``make_app`` and the fake clock; the
records are read back with ``Repository.list_runs`` (newest first).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette import ILeaseLost
from pyramid_pyncette import worker as worker_module
from pyramid_pyncette.execution import LeaseTakenOver
from pyramid_pyncette.jobs import MAX_RUN_ERROR_LENGTH, RunRecord, new_run_record
from pyramid_pyncette.settings import parse_settings
from pyramid_pyncette.worker import Worker
from tests.garbage import store_kind, write_garbage
from tests.test_worker_leases import HeldThreads, Loop, counting, recorder


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def use_settings(app, **ini):
    """Give ``app`` the ``pyncette.*`` settings ``ini`` (INI strings) and a new daemon."""
    parsed = parse_settings({f"pyncette.{key}": value for key, value in ini.items()})
    changes = {key: getattr(parsed, key) for key in ini}
    app.scheduler.settings = dataclasses.replace(app.scheduler.settings, **changes)
    app.worker = Worker(app.registry, clock=app.clock)
    return app.worker


def runs(app, **filters):
    """Every run record of ``app``'s store, newest first."""
    return list(app.repository.list_runs(limit=1000, **filters))


def summary(records):
    """``(job id, outcome, attempt)`` of each record."""
    return [(record.job_id, record.outcome, record.attempt) for record in records]


class StoreCalls:
    """The worker's own calls of ``complete_and_claim`` and ``complete`` on ``repository``.

    A store may complete inside ``complete_and_claim`` through its own
    ``complete``: only the outermost call is one the worker made. Each call
    is kept as ``(name, outcome job ids, record job ids)``.
    """

    def __init__(self, repository):
        self.calls = []
        self._depth = 0
        real_claim = repository.complete_and_claim
        real_complete = repository.complete

        def complete_and_claim(outcomes, now, limit, token, lease, queues, records):
            self._note("complete_and_claim", outcomes, records)
            return self._nested(real_claim, outcomes, now, limit, token, lease, queues, records)

        def complete(outcomes, records):
            self._note("complete", outcomes, records)
            return self._nested(real_complete, outcomes, records)

        repository.complete_and_claim = complete_and_claim
        repository.complete = complete

    def _note(self, name, outcomes, records):
        if not self._depth:
            ids = [outcome.lease.job.id for outcome in outcomes]
            self.calls.append((name, ids, [record.job_id for record in records]))

    def _nested(self, method, *args):
        self._depth += 1
        try:
            return method(*args)
        finally:
            self._depth -= 1

    def named(self, name):
        return [call[1:] for call in self.calls if call[0] == name]


def old_record(app, job_id, age):
    """A record of a run that finished ``age`` seconds ago."""
    finished = app.clock() - seconds(age)
    return RunRecord(
        job_id=job_id,
        task="record",
        queue="default",
        scheduled_at=finished,
        started_at=finished,
        finished_at=finished,
        attempt=1,
        outcome="succeeded",
    )


# --------------------------------------------------------------------------- the record


def test_a_run_record_built_cheaply_is_the_one_the_class_builds():
    times = [datetime(2030, 1, 1, tzinfo=timezone.utc) + seconds(n) for n in range(3)]
    values = ["job", "task", "emails", *times, 2, "failed", "ValueError: no", "box", 42, "w-1"]
    fields = [field.name for field in dataclasses.fields(RunRecord) if field.name != "id"]

    cheap = new_run_record(*values)
    built = RunRecord(**dict(zip(fields, values, strict=True)))

    assert cheap == built
    assert hash(cheap) == hash(built)
    assert repr(cheap) == repr(built)
    assert vars(cheap) == vars(built)
    assert cheap.id is None
    assert cheap.duration == 1  # started 1 s in, finished 2 s in
    with pytest.raises(dataclasses.FrozenInstanceError):
        cheap.outcome = "succeeded"  # type: ignore[misc]


# --------------------------------------------------------------------------- what is recorded


def test_a_successful_run_is_recorded_with_its_times_attempt_and_daemon(make_app):
    def slow(request):
        request.registry.scheduler.clock.advance(3)

    app = make_app(tasks={"slow": slow})
    job = app.scheduler.add_async_job("slow", job_id="slow-1")
    app.clock.advance(2)
    started = app.clock()

    app.worker.run(until_idle=True)

    (record,) = runs(app)
    assert record.id is not None
    assert dataclasses.replace(record, id=None) == RunRecord(
        job_id=job.id,
        task="slow",
        queue="default",
        scheduled_at=app.start,
        started_at=started,
        finished_at=started + seconds(3),
        attempt=1,
        outcome="succeeded",
        error=None,
        host=socket.gethostname(),
        pid=os.getpid(),
        worker=app.worker.id,
    )
    assert record.duration == 3


def test_a_failing_job_is_recorded_at_every_attempt_until_it_is_parked(make_app):
    app = make_app()
    job = app.scheduler.add_async_job(
        "fail", job_id="doomed", max_retries=2, retry_backoff=1, retry_backoff_max=1
    )

    assert app.run_pending() == 1
    for _ in range(2):
        app.clock.advance(1)
        assert app.run_pending() == 1

    assert app.scheduler.get_job(job.id).state == "failed"
    records = runs(app)
    assert summary(records) == [
        ("doomed", "failed", 3),
        ("doomed", "failed", 2),
        ("doomed", "failed", 1),
    ]
    assert [record.started_at for record in records] == [
        app.start + seconds(2),
        app.start + seconds(1),
        app.start,
    ]
    assert {record.scheduled_at for record in records} == {app.start}
    # The first line says what went wrong; the frames follow.
    assert [record.error.splitlines()[0] for record in records] == [
        f"tests.conftest.TaskError: boom from fail attempt {n}" for n in (3, 2, 1)
    ]
    assert all("Traceback" in record.error for record in records)


def test_a_failed_run_then_a_successful_retry_are_both_recorded(make_app):
    failing = [True]

    def flaky(request):
        if failing[0]:
            raise RuntimeError("not yet")

    app = make_app(tasks={"flaky": flaky})
    app.scheduler.add_async_job("flaky", job_id="flaky", retry_backoff=1, retry_backoff_max=1)
    app.run_pending()
    failing[0] = False
    app.clock.advance(1)
    app.run_pending()

    assert summary(runs(app)) == [("flaky", "succeeded", 2), ("flaky", "failed", 1)]
    assert runs(app)[0].error is None


def test_a_misfired_run_is_recorded_as_skipped_at_its_claim(make_app):
    app = make_app()
    job = app.scheduler.add_async_job("record", job_id="late", misfire_grace_time=1)
    app.clock.advance(5)

    assert app.run_pending() == 0

    (record,) = runs(app)
    assert (record.job_id, record.outcome, record.attempt) == (job.id, "skipped", 1)
    assert record.scheduled_at == app.start
    assert record.started_at == record.finished_at == app.start + seconds(5)
    assert record.error is None
    assert app.calls == []


def test_an_unreadable_job_parked_at_its_claim_is_recorded_as_failed_with_its_problem(make_app):
    app = make_app()
    # A row the daemon cannot run: its stored arguments are cut-off JSON.
    if store_kind(app) == "redis":  # one JSON document per job: the whole definition is cut
        write_garbage(app, "broken", definition='{"task": "record", "args": [1, ')
    else:
        write_garbage(app, "broken", args='{"args": [1, ')

    app.run_pending()

    stored = app.scheduler.get_job("broken")
    assert stored.state == "failed"
    (record,) = runs(app)
    assert (record.job_id, record.outcome, record.attempt) == ("broken", "failed", 1)
    assert record.started_at == record.finished_at == app.clock()
    assert record.error == stored.last_error
    assert record.error.startswith("the stored job 'broken' cannot be run: ")
    assert "not valid JSON" in record.error
    assert app.calls == []


def test_a_job_paused_during_its_run_records_the_run_and_nothing_for_its_pause(make_app):
    app = make_app()
    app.scheduler.add_interval_job("record", seconds=10, job_id="tick")
    app.clock.advance(10)
    loop = Loop(app)
    loop.turn()
    (running,) = loop.threads.submitted
    app.scheduler.pause_job("tick")
    loop.worker._run_one(running)
    loop.turn()  # writes the run: the job is due again at its next time...
    app.clock.advance(10)
    loop.turn()  # ...where the claim takes it off the schedule

    stored = app.scheduler.get_job("tick")
    assert (stored.state, stored.due_at, stored.locked_by) == ("paused", None, None)
    assert summary(runs(app)) == [("tick", "succeeded", 1)]
    assert len(app.calls) == 1


def test_a_run_whose_lease_was_taken_over_is_recorded_as_lease_lost(make_app):
    app = make_app()
    job = app.scheduler.add_async_job("record", job_id="taken")
    first = Loop(app)
    second = Loop(app)
    first.turn()
    (lost,) = first.threads.submitted

    # The first daemon is paused longer than the lease; the second takes the job.
    app.clock.advance(61)
    second.turn()
    (taken,) = second.threads.submitted
    second.worker._run_one(taken)
    second.turn()
    # Resumed, the first daemon's run ends and finds its lease gone.
    first.worker._run_one(lost)
    first.turn()

    records = runs(app)
    assert summary(records) == [("taken", "lease_lost", 1), ("taken", "succeeded", 2)]
    assert [record.worker for record in records] == [first.worker.id, second.worker.id]
    assert records[0].error == (
        "lost its lease before its result was written; its result was discarded"
    )
    assert first.worker.stats["lease_lost"] == 1
    assert app.scheduler.get_job(job.id) is None


def test_a_run_found_lost_by_a_heartbeat_is_recorded_once_it_ends(make_app):
    app = make_app()
    app.scheduler.add_async_job("record", job_id="stolen", lease_duration=10)
    loop = Loop(app)
    loop.turn()
    (running,) = loop.threads.submitted
    app.clock.advance(11)
    app.repository.claim(app.clock(), 10, "other-daemon", 60)
    loop.turn()  # the renewal finds the lease lost: nothing recorded while it runs
    assert running.info.lease_lost
    assert runs(app) == []

    loop.worker._run_one(running)
    loop.turn()

    (record,) = runs(app)
    assert (record.outcome, record.attempt) == ("lease_lost", 1)
    assert record.error == "lost its lease while running; its result was discarded"


@pytest.mark.parametrize("drive", ["run_pending", "loop"])
def test_a_transactional_run_that_finds_its_lease_taken_over_is_recorded_as_lease_lost(
    make_app, drive
):
    def taken_over(request):
        raise LeaseTakenOver(f"job {request.job.id!r} lost its lease before it could commit")

    events, configure = recorder(ILeaseLost)
    app = make_app(tasks={"taken_over": taken_over}, configure=configure)
    job = app.scheduler.add_async_job("taken_over", job_id="tx")
    worker = app.worker
    if drive == "run_pending":
        assert app.run_pending() == 1
    else:
        loop = Loop(app)
        worker = loop.worker
        loop.turn()
        (running,) = loop.threads.submitted
        worker._run_one(running)
        loop.turn()

    (record,) = runs(app)
    assert (record.outcome, record.attempt) == ("lease_lost", 1)
    assert record.error == (
        "lost its lease before its transaction could commit; its result was discarded"
    )
    assert (worker.stats["lease_lost"], worker.stats["failed"]) == (1, 0)
    assert [event.job.id for event in events] == [job.id]
    # Its outcome is not written: the daemon holding the lease now completes the job.
    assert app.scheduler.get_job(job.id).state == "running"


# --------------------------------------------------------------------------- pyncette.history


def test_history_failures_keeps_only_failed_runs_and_lost_leases(make_app):
    app = make_app()
    use_settings(app, history="failures")
    app.scheduler.add_async_job("record", job_id="ok")
    app.scheduler.add_async_job("fail", job_id="bad", max_retries=0)
    app.scheduler.add_async_job("record", job_id="late", misfire_grace_time=1)
    app.clock.advance(5)

    app.run_pending()

    assert summary(runs(app)) == [("bad", "failed", 1)]


def test_history_none_records_nothing(make_app):
    app = make_app()
    worker = use_settings(app, history="none")
    complete = counting(app.repository, "complete")
    app.scheduler.add_async_job("record", job_id="ok")
    app.scheduler.add_async_job("fail", job_id="bad", max_retries=0)

    app.run_pending()

    assert runs(app) == []
    assert [[record for record in call[1]] for call in complete] == [[]]
    assert worker.stats["failed"] == 1


def test_history_all_is_the_default(app):
    assert app.worker.history == "all"
    app.scheduler.add_async_job("record", job_id="ok")
    app.run_pending()
    assert summary(runs(app)) == [("ok", "succeeded", 1)]


# --------------------------------------------------------------------------- bounded errors


def test_a_huge_error_is_recorded_bounded_and_starting_with_the_exception(make_app):
    def huge(request):
        raise ValueError("first line of a long story\n" + "more detail\n" * 1000)

    app = make_app(tasks={"huge": huge})
    job = app.scheduler.add_async_job("huge", job_id="huge", max_retries=0)

    app.run_pending()

    (record,) = runs(app)
    assert len(record.error) <= MAX_RUN_ERROR_LENGTH
    assert record.error.splitlines()[0] == "ValueError: first line of a long story"
    assert record.error.endswith("\n...")
    # The job keeps more of it, as before: the traceback's end.
    last_error = app.scheduler.get_job(job.id).last_error
    assert len(last_error) > MAX_RUN_ERROR_LENGTH
    assert last_error.rstrip().endswith("more detail")


# --------------------------------------------------------------------------- written with outcomes


def test_the_loop_writes_each_record_in_the_call_that_completes_its_run(app):
    ids = [app.scheduler.add_async_job("record", job_id=f"job-{i:02d}").id for i in range(25)]
    app.worker.batch_size = 10
    store = StoreCalls(app.repository)

    app.worker.run(until_idle=True)

    written = store.named("complete_and_claim")
    assert store.named("complete") == []
    assert all(sorted(outcomes) == sorted(records) for outcomes, records in written)
    assert sorted(job_id for _, records in written for job_id in records) == ids
    assert sorted(record.job_id for record in runs(app)) == ids


def test_run_pending_writes_records_with_the_outcomes_of_each_batch(app):
    for i in range(5):
        app.scheduler.add_async_job("record", job_id=f"job-{i}")
    app.worker.batch_size = 2
    store = StoreCalls(app.repository)

    assert app.run_pending() == 5

    assert store.calls == [
        ("complete", ["job-0", "job-1"], ["job-0", "job-1"]),
        ("complete", ["job-2", "job-3"], ["job-2", "job-3"]),
        ("complete", ["job-4"], ["job-4"]),
    ]


def test_a_skip_is_recorded_by_the_next_call_that_writes_outcomes(app):
    """A misfire has no outcome to write: its record waits for the loop's next write."""
    app.scheduler.add_async_job("record", job_id="late", misfire_grace_time=1)
    app.clock.advance(5)
    loop = Loop(app)
    store = StoreCalls(app.repository)

    loop.turn()
    assert runs(app) == []
    loop.turn()

    assert summary(runs(app)) == [("late", "skipped", 1)]
    assert store.calls == [
        ("complete_and_claim", [], []),
        ("complete_and_claim", [], ["late"]),
    ]


class FlakyStore:
    """Makes ``complete_and_claim`` and ``complete`` of a repository fail while ``down``."""

    def __init__(self, repository):
        self.down = False
        for name in ("complete_and_claim", "complete"):
            real = getattr(repository, name)
            setattr(repository, name, self._wrap(real))

    def _wrap(self, real):
        def call(*args, **kwargs):
            if self.down:
                raise ConnectionError("store down")
            return real(*args, **kwargs)

        return call


def test_records_pending_while_the_store_is_down_are_written_once_with_their_outcomes(app, caplog):
    for i in range(3):
        app.scheduler.add_async_job("record", job_id=f"job-{i}")
    loop = Loop(app, concurrency=3)
    loop.worker._backoff = worker_module.Backoff(first=1e-6, cap=1e-6)
    store = FlakyStore(app.repository)
    loop.turn()
    store.down = True
    for running in loop.threads.submitted:
        loop.worker._run_one(running)
    with caplog.at_level(logging.ERROR, logger="pyramid_pyncette.worker"):
        loop.turn()
        loop.turn()
    assert runs(app) == []

    store.down = False
    loop.turn()

    assert sorted(summary(runs(app))) == [(f"job-{i}", "succeeded", 1) for i in range(3)]
    assert list(app.scheduler.get_jobs()) == []


def test_records_beyond_the_cap_while_the_store_is_down_drop_the_oldest_with_one_warning(
    app, caplog
):
    for i in range(5):
        app.scheduler.add_async_job("record", job_id=f"job-{i}")
    loop = Loop(app, concurrency=5)
    loop.worker._backoff = worker_module.Backoff(first=1e-6, cap=1e-6)
    loop.worker.max_pending_runs = 3
    store = FlakyStore(app.repository)
    loop.turn()
    store.down = True
    submitted = loop.threads.submitted
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.worker"):
        for running in submitted[:2]:
            loop.worker._run_one(running)
        loop.turn()
        for running in submitted[2:]:
            loop.worker._run_one(running)
        loop.turn()
        loop.turn()
    dropped = [r for r in caplog.records if "no run records" in r.getMessage()]

    store.down = False
    loop.turn()

    assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
    assert sorted(record.job_id for record in runs(app)) == [
        running.lease.job.id for running in submitted[2:]
    ]
    assert loop.worker.stats["runs_dropped"] == 2
    # The outcomes are never dropped: every job completed.
    assert list(app.scheduler.get_jobs()) == []


# --------------------------------------------------------------------------- retention


def test_old_records_are_pruned_a_few_small_batches_per_turn(app, monkeypatch):
    monkeypatch.setattr(worker_module, "PRUNE_BATCH", 10)
    app.repository.complete([], [old_record(app, f"old-{i:02d}", 8 * 86400) for i in range(75)])
    app.repository.complete([], [old_record(app, "recent", 3600)])
    loop = Loop(app)
    prunes = counting(app.repository, "prune_runs")
    retention_start = app.clock() - timedelta(days=7)

    per_turn = []
    for _ in range(4):
        before = len(prunes)
        loop.turn()
        per_turn.append(len(prunes) - before)

    # 75 old records, 10 per call, at most 3 calls a turn: 30, 30, then 15 and done.
    assert per_turn == [3, 3, 2, 0]
    assert set(prunes) == {(retention_start, 10)}
    assert [record.job_id for record in runs(app)] == ["recent"]


def test_the_history_is_pruned_every_tenth_of_the_retention_by_the_worker_clock(app):
    worker = use_settings(app, history_retention="60s")
    prunes = counting(app.repository, "prune_runs")
    threads = HeldThreads()

    worker._cycle(threads)
    app.clock.advance(5.9)
    worker._cycle(threads)
    app.clock.advance(0.1)
    worker._cycle(threads)

    assert prunes == [
        (app.start - seconds(60), 1000),
        (app.start + seconds(6) - seconds(60), 1000),
    ]


def test_a_failing_prune_is_logged_and_tried_again_later_without_stopping_the_loop(app, caplog):
    worker = use_settings(app, history_retention="60s")
    real = app.repository.prune_runs
    calls = []

    def broken(before, limit):
        calls.append(before)
        if len(calls) == 1:
            raise ConnectionError("store gone")
        return real(before, limit)

    app.repository.prune_runs = broken
    app.scheduler.add_async_job("record", job_id="runs-anyway")
    threads = HeldThreads()
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.worker"):
        assert worker._cycle(threads) is not None
    app.clock.advance(6)
    worker._cycle(threads)

    assert len(calls) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "could not prune the run history (ConnectionError: store gone); trying again in 6s"
    ]
    assert [running.lease.job.id for running in threads.submitted] == ["runs-anyway"]
    assert worker._backoff.failures == 0


def test_a_daemon_keeps_about_one_retention_of_records(make_app):
    app = make_app()
    worker = use_settings(app, history_retention="60s")
    threads = HeldThreads()
    for second in range(200):
        app.scheduler.add_async_job("record", job_id=f"job-{second:03d}")
        worker._cycle(threads)
        for running in threads.submitted:
            worker._run_one(running)
        threads.submitted.clear()
        worker._cycle(threads)
        app.clock.advance(1)

    # One run a second for 200 s; pruned every 6 s, last at 198 s: what finished
    # from 138 s on is kept, about one retention.
    records = runs(app)
    assert [record.job_id for record in records] == [f"job-{n:03d}" for n in range(199, 137, -1)]
    assert worker.stats["runs_pruned"] == 138


def test_run_records_of_a_job_in_a_queue_name_that_queue(make_app):
    app = make_app()
    app.scheduler.add_async_job("record", job_id="mail", queue="emails")

    app.run_pending()

    (record,) = runs(app, queue="emails")
    assert (record.job_id, record.queue) == ("mail", "emails")


def test_a_history_argument_overrides_the_setting_and_a_bad_one_is_refused(app):
    assert Worker(app.registry, history="failures").history == "failures"
    with pytest.raises(ValueError, match="history 'some' is not one of all, failures, none"):
        Worker(app.registry, history="some")


def test_a_run_that_completed_its_own_row_is_still_recorded(app, monkeypatch):
    """A ``transactional=True`` run writes its completion itself: the worker writes only
    its record (the outcome is left out), in the call that would have completed it."""
    real = worker_module.run_job
    complete = app.repository.complete

    def completing(*args, **kwargs):
        outcome = real(*args, **kwargs)
        complete([outcome])  # what the run's own transaction does
        return dataclasses.replace(outcome, completed=True)

    monkeypatch.setattr(worker_module, "run_job", completing)
    app.scheduler.add_async_job("record", job_id="tx")
    store = StoreCalls(app.repository)

    assert app.run_pending() == 1

    assert store.calls == [("complete", [], ["tx"])]
    assert summary(runs(app)) == [("tx", "succeeded", 1)]


def test_a_transactional_run_in_the_apps_database_is_recorded(tmp_path, clock):
    from tests import txapp

    config = txapp.configurator(tmp_path, shared=True)
    config.add_pyncette_task(txapp.write_note, name="write_note", transactional=True)
    registry = config.make_wsgi_app().registry
    registry.scheduler.clock = clock
    try:
        job = registry.scheduler.add_async_job("write_note", args=["from job"])

        assert Worker(registry).run_pending() == 1

        assert txapp.note_bodies(registry) == ["from job"]
        assert registry.scheduler.get_job(job.id) is None
        records = list(registry.scheduler.repository.list_runs())
        assert [(r.job_id, r.outcome, r.attempt) for r in records] == [(job.id, "succeeded", 1)]
    finally:
        registry.scheduler.repository.close()
        registry.txapp_engine.dispose()
