"""Retries, misfires and lost leases, on every store, on a fake clock.

Each test runs once per entry of ``conftest.STORES``. Retry delays carry a
jitter derived from ``(job id, attempt)``, so the tests compute them with
the same function the stores use and every count and time below is exact.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import transaction

from pyramid_pyncette import (
    IJobFailed,
    IJobSkipped,
    ILeaseLost,
    InvalidJobError,
    JobSkipped,
    LeaseLost,
    UnknownJobError,
)
from pyramid_pyncette.execution import JobInfo
from pyramid_pyncette.repository.base import retry_delay
from pyramid_pyncette.worker import _Running

MICROSECOND = timedelta(microseconds=1)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def delays(job_id, count, backoff=10.0, backoff_max=3600.0):
    """The pauses before retries 1..count of ``job_id``."""
    return [retry_delay(job_id, attempt, backoff, backoff_max) for attempt in range(1, count + 1)]


def recorder(*interfaces):
    """A ``configure`` hook collecting the events of ``interfaces`` into a list."""
    events = []

    def configure(config, calls):
        for interface in interfaces:
            config.add_subscriber(events.append, interface)

    return events, configure


class Flaky:
    """A task that fails while ``failing`` is true."""

    def __init__(self):
        self.failing = True
        self.attempts = []

    def __call__(self, request):
        self.attempts.append(request.job.attempt)
        if self.failing:
            raise RuntimeError(f"flaky attempt {request.job.attempt}")
        return "ok"


# --------------------------------------------------------------------------- the delay


def test_retry_delay_is_deterministic_jittered_exponential_and_capped():
    for attempt in range(1, 12):
        ceiling = min(10.0 * 2 ** (attempt - 1), 300.0)
        delay = retry_delay("job", attempt, 10.0, 300.0).total_seconds()
        assert ceiling / 2 <= delay <= ceiling
        assert retry_delay("job", attempt, 10.0, 300.0) == retry_delay("job", attempt, 10, 300)
    spread = {retry_delay(f"job-{n}", 1, 10.0, 300.0) for n in range(50)}
    assert len(spread) == 50  # jobs failing together do not retry together
    assert retry_delay("job", 10_000, 1.0, 3600.0) <= seconds(3600)


# --------------------------------------------------------------------------- retries


def test_max_retries_runs_one_plus_three_attempts_at_the_backoff_times_then_fails(make_app):
    events, configure = recorder(IJobFailed)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("fail", job_id="flaky", max_retries=3, retry_backoff="10s")
    d1, d2, d3 = delays("flaky", 3)
    times = [app.start, app.start + d1, app.start + d1 + d2, app.start + d1 + d2 + d3]

    assert app.run_pending(times[0]) == 1
    for due in times[1:]:
        assert app.run_pending(due - MICROSECOND) == 0
        stored = app.scheduler.get_job(job.id)
        assert (stored.state, stored.due_at, stored.next_run_at) == ("retrying", due, app.start)
        assert stored.last_status == "failed"
        app.clock.set(due)
        assert app.run_pending() == 1
    assert app.run_pending(times[-1] + seconds(7200)) == 0

    assert [call.attempt for call in app.calls] == [1, 2, 3, 4]
    assert [call.at for call in app.calls] == times
    assert {call.scheduled_at for call in app.calls} == {app.start}
    assert [event.attempt for event in events] == [1, 2, 3, 4]
    failed = app.scheduler.get_job(job.id)
    assert failed.state == "failed"
    assert (failed.due_at, failed.locked_by, failed.attempts) == (None, None, 4)
    assert failed.last_status == "failed"
    assert "boom from fail attempt 4" in failed.last_error
    assert failed.last_run_at == times[-1]
    assert [(j.id, j.state) for j in app.scheduler.get_jobs()] == [(job.id, "failed")]


def test_max_retries_zero_fails_at_once(app):
    job = app.scheduler.add_async_job("fail", max_retries=0)

    assert app.run_pending() == 1
    assert app.run_pending(app.start + seconds(3600)) == 0

    stored = app.scheduler.get_job(job.id)
    assert (stored.state, stored.attempts) == ("failed", 1)


def test_a_run_that_succeeds_on_a_retry_is_done(make_app):
    flaky = Flaky()
    app = make_app(tasks={"flaky": flaky})
    app.scheduler.add_async_job("flaky", job_id="j", max_retries=5, retry_backoff=2)
    (d1,) = delays("j", 1, backoff=2)

    assert app.run_pending() == 1
    flaky.failing = False
    assert app.run_pending(app.start + d1) == 1
    assert app.run_pending(app.start + seconds(3600)) == 0

    assert flaky.attempts == [1, 2]
    assert app.scheduler.get_job("j") is None


def test_retry_job_runs_a_failed_job_exactly_once_more(make_app):
    flaky = Flaky()
    app = make_app(tasks={"flaky": flaky})
    app.scheduler.add_async_job("flaky", job_id="j", max_retries=1, retry_backoff=5)
    (d1,) = delays("j", 1, backoff=5)
    assert app.run_pending() == 1
    assert app.run_pending(app.start + d1) == 1
    assert app.scheduler.get_job("j").state == "failed"

    app.clock.advance(600)
    flaky.failing = False
    retried = app.scheduler.retry_job("j")

    assert (retried.state, retried.due_at, retried.attempts) == ("scheduled", app.clock(), 0)
    stored = app.scheduler.get_job("j")
    assert (stored.state, stored.due_at, stored.attempts) == ("scheduled", app.clock(), 0)
    assert app.run_pending() == 1
    assert app.run_pending(app.clock() + seconds(3600)) == 0
    assert flaky.attempts == [1, 2, 1]
    assert app.scheduler.get_job("j") is None


def test_retry_job_of_an_unknown_id_is_a_clear_error(app):
    with pytest.raises(UnknownJobError, match="retry_job: no job has the id 'nope'"):
        app.scheduler.retry_job("nope")
    with pytest.raises(InvalidJobError, match="job_id must be a string"):
        app.scheduler.retry_job(5)
    assert list(app.scheduler.get_jobs()) == []


def test_retry_job_through_a_transaction_applies_only_on_commit(app):
    job = app.scheduler.add_async_job("fail", max_retries=0)
    assert app.run_pending() == 1
    manager = transaction.TransactionManager(explicit=True)
    bound = app.scheduler.bind(manager)

    manager.begin()
    bound.retry_job(job.id)
    assert bound.get_job(job.id).state == "scheduled"
    assert app.scheduler.get_job(job.id).state == "failed"  # not written yet
    manager.abort()
    assert app.scheduler.get_job(job.id).state == "failed"

    with manager:
        bound.retry_job(job.id)
    assert app.scheduler.get_job(job.id).state == "scheduled"
    assert app.run_pending() == 1
    assert [call.attempt for call in app.calls] == [1, 1]


def test_recurring_job_with_retries_exhausted_advances_to_its_next_run(app):
    job = app.scheduler.add_interval_job(
        "fail", hours=1, job_id="hourly", max_retries=2, retry_backoff="10s"
    )
    first = app.start + seconds(3600)
    d1, d2 = delays("hourly", 2)

    assert app.run_pending(first) == 1
    assert app.run_pending(first + d1) == 1
    assert app.run_pending(first + d1 + d2) == 1

    stored = app.scheduler.get_job(job.id)
    assert stored.state == "scheduled"
    assert (stored.due_at, stored.next_run_at) == (first + seconds(3600), first + seconds(3600))
    assert (stored.attempts, stored.last_status) == (0, "failed")
    assert app.run_pending(first + seconds(3600) - MICROSECOND) == 0
    assert app.run_pending(first + seconds(3600)) == 1
    assert [call.attempt for call in app.calls] == [1, 2, 3, 1]
    assert [call.scheduled_at for call in app.calls] == [first] * 3 + [first + seconds(3600)]


def test_recurring_job_with_retry_exhausted_park_stays_failed(app):
    job = app.scheduler.add_interval_job(
        "fail", minutes=1, max_retries=1, retry_backoff=1, retry_exhausted="park"
    )
    first = app.start + seconds(60)
    (d1,) = delays(job.id, 1, backoff=1)

    assert app.run_pending(first) == 1
    assert app.run_pending(first + d1) == 1
    assert app.run_pending(first + seconds(3600)) == 0

    stored = app.scheduler.get_job(job.id)
    assert (stored.state, stored.due_at, stored.attempts) == ("failed", None, 2)


def test_task_options_give_every_job_its_retries(make_app):
    app = make_app(tasks={"retried": (lambda request: 1 / 0, {"max_retries": 2})})
    job = app.scheduler.add_async_job("retried")
    d1, d2 = delays(job.id, 2)  # no retry_backoff of its own: pyncette.retry_backoff (10s)

    assert app.run_pending() == 1
    assert app.run_pending(app.start + d1) == 1
    assert app.run_pending(app.start + d1 + d2) == 1
    assert app.run_pending(app.start + seconds(3600)) == 0
    stored = app.scheduler.get_job(job.id)
    assert (stored.state, stored.attempts) == ("failed", 3)
    assert "ZeroDivisionError" in stored.last_error


def test_a_retry_later_than_the_misfire_grace_time_still_runs(app):
    # Only a run's first try can misfire; its retries are seen through.
    job = app.scheduler.add_async_job(
        "fail", max_retries=1, retry_backoff="100s", misfire_grace_time=5
    )
    (d1,) = delays(job.id, 1, backoff=100)

    assert app.run_pending() == 1
    assert app.run_pending(app.start + d1 + seconds(20)) == 1
    assert [call.attempt for call in app.calls] == [1, 2]


# --------------------------------------------------------------------------- misfires


def test_one_off_job_claimed_after_its_grace_time_is_skipped_and_deleted(make_app, caplog):
    events, configure = recorder(IJobSkipped)
    app = make_app(configure=configure)
    due = app.start - seconds(120)
    job = app.scheduler.add_date_job("record", due, job_id="late", misfire_grace_time=60)

    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette"):
        assert app.run_pending() == 0
    assert app.run_pending() == 0

    assert app.calls == []
    assert app.scheduler.get_job(job.id) is None
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, JobSkipped)
    assert (event.job.id, event.scheduled_at, event.lateness) == ("late", due, 120.0)
    assert event.registry is app.registry
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'late'" in message and "'record'" in message and "120.000s late" in message
    assert due.isoformat() in message
    assert app.worker.stats["skipped"] == 1


def test_recurring_job_claimed_after_its_grace_time_skips_to_its_next_run(make_app):
    events, configure = recorder(IJobSkipped)
    app = make_app(configure=configure)
    job = app.scheduler.add_interval_job("record", minutes=1, misfire_grace_time="30s")
    first = app.start + seconds(60)

    assert app.run_pending(first + seconds(45)) == 0

    stored = app.scheduler.get_job(job.id)
    assert (stored.due_at, stored.next_run_at, stored.state) == (
        first + seconds(60),
        first + seconds(60),
        "scheduled",
    )
    assert [(e.job.id, e.scheduled_at, e.lateness) for e in events] == [(job.id, first, 45.0)]
    assert app.run_pending(first + seconds(60)) == 1
    assert [call.scheduled_at for call in app.calls] == [first + seconds(60)]


def test_runs_within_their_grace_time_run(make_app):
    events, configure = recorder(IJobSkipped)
    app = make_app(configure=configure)
    app.scheduler.add_date_job("record", app.start - seconds(30), misfire_grace_time=60)
    app.scheduler.add_date_job("record", app.start - seconds(60), misfire_grace_time=60)
    app.scheduler.add_interval_job("record", minutes=1, misfire_grace_time=60)

    assert app.run_pending() == 2
    assert app.run_pending(app.start + seconds(120)) == 1
    assert events == []


def test_at_most_once_jobs_misfire_too(make_app):
    events, configure = recorder(IJobSkipped)
    app = make_app(configure=configure)
    app.scheduler.add_date_job(
        "record", app.start - seconds(10), execution_mode="at_most_once", misfire_grace_time=1
    )

    assert app.run_pending() == 0
    assert len(events) == 1
    assert list(app.scheduler.get_jobs()) == []


def test_misfires_do_not_stop_the_other_due_jobs(app):
    for n in range(5):
        app.scheduler.add_date_job(
            "record", app.start - seconds(100), job_id=f"late-{n}", misfire_grace_time=1
        )
    for n in range(3):
        app.scheduler.add_date_job("record", app.start - seconds(100), job_id=f"ok-{n}")
    app.worker.batch_size = 2

    assert app.run_pending() == 3
    assert sorted(call.job_id for call in app.calls) == ["ok-0", "ok-1", "ok-2"]
    assert list(app.scheduler.get_jobs()) == []


# --------------------------------------------------------------------------- lost leases


def test_a_lost_lease_fires_lease_lost(make_app):
    events, configure = recorder(ILeaseLost)
    app = make_app(configure=configure)
    job = app.scheduler.add_async_job("record", lease_duration=10)
    (lease,) = app.repository.claim(app.clock(), 10, "mine", 60)
    app.worker._running[(job.id, "mine")] = _Running(
        lease, JobInfo.for_lease(lease), (job.id, "mine")
    )
    app.clock.advance(11)
    assert [stolen.job.id for stolen in app.repository.claim(app.clock(), 10, "theirs", 60)] == [
        job.id
    ]

    app.worker._heartbeat()

    assert app.worker._running[(job.id, "mine")].info.lease_lost
    assert len(events) == 1
    assert isinstance(events[0], LeaseLost)
    assert (events[0].job.id, events[0].scheduled_at) == (job.id, app.start)
    assert events[0].registry is app.registry
