"""Retries, misfires and lost leases, on every store, on a fake clock.

Each test runs once per entry of ``conftest.STORES``. Retry delays carry a
jitter derived from ``(job id, attempt)``, so the tests compute them with
the same function the stores use and every count and time below is exact.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone

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
    execution,
)
from pyramid_pyncette.execution import JobInfo, RecentFailures, log_failure
from pyramid_pyncette.jobs import DEFAULT_RETRIES, Job, Lease, Outcome, RetryDefaults
from pyramid_pyncette.policy import retry_delay
from pyramid_pyncette.repository.base import staged_job
from pyramid_pyncette.schedules import IntervalSchedule
from pyramid_pyncette.scripts.pscheduler import PSchedulerCommand
from pyramid_pyncette.settings import parse_settings
from pyramid_pyncette.worker import Worker, _Running

MICROSECOND = timedelta(microseconds=1)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def delays(job_id, count, backoff=10.0, backoff_max=3600.0):
    """The pauses before retries 1..count of ``job_id``."""
    return [retry_delay(job_id, attempt, backoff, backoff_max) for attempt in range(1, count + 1)]


def use_settings(app, **ini):
    """Restart ``app``'s daemon with the ``pyncette.*`` settings ``ini`` (INI strings)."""
    parsed = parse_settings({f"pyncette.{key}": value for key, value in ini.items()})
    changes = {key: getattr(parsed, key) for key in ini}
    app.scheduler.settings = dataclasses.replace(app.scheduler.settings, **changes)
    app.worker = Worker(app.registry, clock=app.clock)


def failure_lines(caplog):
    """The messages of the one-line failure reports, in order."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pyramid_pyncette.execution" and r.levelno >= logging.WARNING
    ]


def clock_time(when):
    return when.strftime("%H:%M:%S UTC")


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


# --------------------------------------------------------------------------- default retries


def test_a_failing_one_off_job_is_retried_five_times_with_backoff_then_parked_by_default(
    app, caplog
):
    job = app.scheduler.add_async_job("fail", job_id="doomed")
    gaps = delays("doomed", 5)  # pyncette.retry_backoff 10s: about 5-10 s, 10-20 s, ...
    times = [app.start]
    for gap in gaps:
        times.append(times[-1] + gap)
    assert times[-1] - app.start <= seconds(310)  # surfaced within about five minutes

    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette"):
        assert app.run_pending(times[0]) == 1
        for due in times[1:]:
            assert app.run_pending(due - MICROSECOND) == 0
            waiting = app.scheduler.get_job(job.id)
            assert (waiting.state, waiting.due_at, waiting.next_run_at) == (
                "retrying",
                due,
                app.start,
            )
            assert waiting.locked_by is None
            app.clock.set(due)
            assert app.run_pending() == 1
        assert app.run_pending(times[-1] + seconds(86400)) == 0

    assert [call.attempt for call in app.calls] == [1, 2, 3, 4, 5, 6]
    assert [call.at for call in app.calls] == times
    parked = app.scheduler.get_job(job.id)
    assert (parked.state, parked.due_at, parked.attempts) == ("failed", None, 6)
    assert "boom from fail attempt 6" in parked.last_error
    lines = failure_lines(caplog)
    assert lines == [
        f"job 'doomed' (task 'fail') failed on attempt {n} of 6: "
        f"TaskError('boom from fail attempt {n}'); retrying at {clock_time(times[n])}"
        for n in range(1, 6)
    ] + [
        "job 'doomed' (task 'fail') failed on attempt 6 of 6: "
        "TaskError('boom from fail attempt 6'); parked as failed (see retry_job)"
    ]


def test_a_failing_recurring_job_retries_five_times_then_moves_to_its_next_run_by_default(
    app, caplog
):
    job = app.scheduler.add_interval_job("fail", hours=1, job_id="hourly")
    first = app.start + seconds(3600)
    times = [first]
    for gap in delays("hourly", 5):
        times.append(times[-1] + gap)

    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette"):
        for due in times:
            assert app.run_pending(due) == 1

    moved = app.scheduler.get_job(job.id)
    assert (moved.state, moved.attempts, moved.last_status) == ("scheduled", 0, "failed")
    assert moved.due_at == moved.next_run_at == first + seconds(3600)
    assert app.run_pending(first + seconds(3600) - MICROSECOND) == 0
    assert [call.attempt for call in app.calls] == [1, 2, 3, 4, 5, 6]
    assert failure_lines(caplog)[-1] == (
        "job 'hourly' (task 'fail') failed on attempt 6 of 6: TaskError('boom from fail "
        "attempt 6'); moved to its next run at 02:00:00 UTC"
    )


def test_pyncette_retry_settings_set_the_default_retries_and_backoff(app):
    use_settings(app, max_retries="2", retry_backoff="1m", retry_backoff_max="90s")
    job = app.scheduler.add_async_job("fail", job_id="set")
    d1, d2 = delays("set", 2, backoff=60, backoff_max=90)
    assert d2 <= seconds(90)

    times = [app.start, app.start + d1, app.start + d1 + d2]
    for due in times:
        assert app.run_pending(due - MICROSECOND) == 0
        app.clock.set(due)
        assert app.run_pending() == 1
    assert app.run_pending(app.start + seconds(86400)) == 0

    assert [call.at for call in app.calls] == times
    assert app.scheduler.get_job(job.id).state == "failed"


def test_pyncette_max_retries_zero_never_retries_by_default(app):
    once = app.scheduler.add_async_job("fail", job_id="once")
    hourly = app.scheduler.add_interval_job("fail", hours=1, job_id="hourly")
    use_settings(app, max_retries="0")  # jobs already stored follow the daemon's settings

    assert app.run_pending(app.start + seconds(3600)) == 2
    assert app.run_pending(app.start + seconds(7199)) == 0

    assert app.scheduler.get_job(once.id).state == "failed"
    moved = app.scheduler.get_job(hourly.id)
    assert (moved.state, moved.due_at) == ("scheduled", app.start + seconds(7200))
    assert [call.attempt for call in app.calls] == [1, 1]


def test_a_jobs_own_max_retries_wins_over_the_setting(app):
    use_settings(app, max_retries="0")
    job = app.scheduler.add_async_job("fail", job_id="own", max_retries=1)
    (d1,) = delays("own", 1)

    assert app.run_pending() == 1
    assert app.scheduler.get_job(job.id).state == "retrying"
    assert app.run_pending(app.start + d1) == 1
    assert app.scheduler.get_job(job.id).state == "failed"
    assert [call.attempt for call in app.calls] == [1, 2]


def test_an_explicit_failure_mode_none_retries_every_lease_period_without_limit(app):
    lease = app.worker.lease_duration
    job = app.scheduler.add_async_job("fail", failure_mode="none")

    for period in range(10):
        assert app.run_pending(app.start + seconds(period * lease)) == 1
        assert app.run_pending(app.start + seconds((period + 1) * lease) - MICROSECOND) == 0

    stored = app.scheduler.get_job(job.id)
    assert (stored.state, stored.attempts) == ("running", 10)  # it keeps the lease
    assert [call.attempt for call in app.calls] == list(range(1, 11))


def test_a_task_with_failure_mode_unlock_retries_at_every_poll_without_limit(make_app, caplog):
    calls = []

    def broken(request):
        calls.append(request.job.attempt)
        raise ValueError("still broken")

    app = make_app(tasks={"broken": (broken, {"failure_mode": "unlock"})})
    job = app.scheduler.add_async_job("broken", job_id="unlocked")

    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette"):
        for _ in range(10):
            assert app.run_pending() == 1

    stored = app.scheduler.get_job(job.id)
    assert (stored.state, stored.attempts, stored.due_at) == ("retrying", 10, app.start)
    assert calls == list(range(1, 11))
    assert failure_lines(caplog)[-1] == (
        "job 'unlocked' (task 'broken') failed on attempt 10: ValueError('still broken'); "
        "retrying at the next poll (failure_mode='unlock')"
    )


# --------------------------------------------------------------------------- states and --list


def _job(**fields):
    values = {"id": "j", "task": "t", "schedule": {"kind": "date", "run_at": "2030-01-01"}}
    return Job(**{**values, **fields})


def test_job_state_is_scheduled_running_retrying_or_failed():
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    later = at + seconds(7)

    fresh = _job(due_at=at, next_run_at=at)
    running = _job(due_at=at + seconds(60), next_run_at=at, locked_by="token", attempts=1)
    retrying = _job(due_at=later, next_run_at=at, attempts=1)
    parked = _job(due_at=None, next_run_at=None, attempts=6)

    assert [job.state for job in (fresh, running, retrying, parked)] == [
        "scheduled",
        "running",
        "retrying",
        "failed",
    ]
    assert [job.next_attempt_at for job in (fresh, running, retrying, parked)] == [
        at,
        at,
        later,
        None,
    ]


def test_a_job_staged_by_a_transaction_shows_the_state_it_will_have_not_running():
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    until = at + seconds(30)

    fresh = staged_job(_job(due_at=at, next_run_at=at), "staged:tx", until)
    retrying = staged_job(_job(due_at=at, next_run_at=at, attempts=2), "staged:tx", until)
    parked = staged_job(_job(due_at=None, next_run_at=None, attempts=6), "staged:tx", until)

    assert [job.state for job in (fresh, retrying, parked)] == ["scheduled", "retrying", "failed"]


def test_list_shows_a_retrying_job_at_its_retry_time_and_a_running_one_at_its_run(app, capsys):
    app.scheduler.add_async_job("fail", job_id="failing")
    (d1,) = delays("failing", 1)
    assert app.run_pending() == 1
    app.clock.advance(2)
    app.scheduler.add_async_job("record", job_id="taken")
    assert [lease.job.id for lease in app.repository.claim(app.clock(), 10, "other", 60)] == [
        "taken"
    ]
    capsys.readouterr()

    assert PSchedulerCommand(["pscheduler", "--list", "app.ini"]).list_jobs(app.registry) == 0

    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "ID",
        "TASK",
        "QUEUE",
        "SCHEDULE",
        "NEXT",
        "RUN",
        "STATE",
        "LAST",
        "LAST",
        "ERROR",
    ]
    rows = {line.split()[0]: line for line in lines}
    retry_at = (app.start + d1).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"{retry_at}  retrying  failed (attempt 1)" in rows["failing"]
    scheduled_at = app.clock().strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"{scheduled_at}  running" in rows["taken"]


# --------------------------------------------------------------------------- failure log lines

NOON = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def _failed_run(attempt, token="token", permanent=False, defaults=DEFAULT_RETRIES, **fields):
    job = _job(
        attempts=attempt,
        locked_by=token,
        due_at=NOON + seconds(60),
        next_run_at=NOON,
        **fields,
    )
    return Outcome(
        Lease(job, NOON, token),
        False,
        NOON,
        error="Traceback ...",
        permanent=permanent,
        retry_defaults=defaults,
    )


def _hourly(every=timedelta(hours=1)):
    return IntervalSchedule(every).anchored(NOON - every).to_json()


_RETRY_AT = clock_time(NOON + retry_delay("j", 2, 10.0, 3600.0))

LOG_LINE_CASES = {
    "retrying at its backoff time": (
        _failed_run(2),
        f"attempt 2 of 6: boom; retrying at {_RETRY_AT}",
    ),
    "parked as failed": (_failed_run(6), "attempt 6 of 6: boom; parked as failed (see retry_job)"),
    "moved to its next run": (
        _failed_run(6, schedule=_hourly()),
        "attempt 6 of 6: boom; moved to its next run at 13:00:00 UTC",
    ),
    "moved to a next run on another day": (
        _failed_run(1, schedule=_hourly(timedelta(days=1)), defaults=RetryDefaults(0)),
        "attempt 1 of 1: boom; moved to its next run at 2030-01-02 12:00:00 UTC",
    ),
    "failure_mode none": (
        _failed_run(3, options={"failure_mode": "none"}),
        "attempt 3: boom; retrying once its lease expires (failure_mode='none')",
    ),
    "failure_mode unlock": (
        _failed_run(3, options={"failure_mode": "unlock"}),
        "attempt 3: boom; retrying at the next poll (failure_mode='unlock')",
    ),
    "failure_mode commit": (
        _failed_run(1, options={"failure_mode": "commit"}),
        "attempt 1: boom; counted as done and deleted (failure_mode='commit')",
    ),
    "at most once": (
        _failed_run(1, token=None, options={"execution_mode": "at_most_once"}),
        "attempt 1: boom; not retried: it is at-most-once (execution_mode='at_most_once')",
    ),
    "permanent": (
        _failed_run(1, permanent=True),
        "attempt 1: boom; parked as failed (see retry_job)",
    ),
}


@pytest.mark.parametrize(("outcome", "expected"), LOG_LINE_CASES.values(), ids=LOG_LINE_CASES)
def test_a_failure_is_one_line_saying_the_attempt_and_what_happens_next(
    outcome, expected, caplog, monkeypatch
):
    monkeypatch.setattr(execution, "recent_failures", RecentFailures())
    with caplog.at_level(logging.DEBUG, logger="pyramid_pyncette"):
        log_failure(outcome, "boom")

    (record,) = caplog.records
    assert record.getMessage() == f"job 'j' (task 't') failed on {expected}"
    parked = "parked as failed" in expected
    assert record.levelno == (logging.ERROR if parked else logging.WARNING)


def test_a_multi_line_or_huge_error_is_logged_on_one_bounded_line(caplog, monkeypatch):
    monkeypatch.setattr(execution, "recent_failures", RecentFailures())
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette"):
        log_failure(_failed_run(6), "first\nsecond")
        log_failure(_failed_run(6), "x" * 100_000)

    short, huge = [r.getMessage() for r in caplog.records]
    assert short == (
        "job 'j' (task 't') failed on attempt 6 of 6: first second; parked as failed "
        "(see retry_job)"
    )
    assert huge == (
        f"job 'j' (task 't') failed on attempt 6 of 6: {'x' * 997}...; parked as failed "
        "(see retry_job)"
    )


def test_a_jobs_traceback_is_logged_with_its_first_failure_then_at_debug(
    make_app, caplog, monkeypatch
):
    monkeypatch.setattr(execution, "recent_failures", RecentFailures())
    flaky = Flaky()
    app = make_app(tasks={"flaky": (flaky, {"failure_mode": "unlock"})})
    app.scheduler.add_async_job("flaky", job_id="a")
    app.scheduler.add_async_job("fail", job_id="b", failure_mode="unlock")

    with caplog.at_level(logging.DEBUG, logger="pyramid_pyncette.execution"):
        for _ in range(3):
            assert app.run_pending() == 2
        flaky.failing = False
        assert app.run_pending() == 2  # 'a' succeeds: its next failure is news again
        app.scheduler.add_async_job("flaky", job_id="a")
        flaky.failing = True
        assert app.run_pending() == 2

    def traced(job_id, level):
        return [
            r.exc_info is not None
            for r in caplog.records
            if r.levelno == level and f"job '{job_id}'" in r.getMessage()
        ]

    assert traced("a", logging.WARNING) == [True, False, False, True]
    assert traced("b", logging.WARNING) == [True, False, False, False, False]
    assert traced("a", logging.DEBUG) == [True, True]
    assert traced("b", logging.DEBUG) == [True, True, True, True]


def test_the_memory_of_logged_tracebacks_is_bounded():
    recent = RecentFailures(size=2)

    assert [recent.first(job_id) for job_id in ("a", "b", "a", "c")] == [True, True, False, True]
    assert recent.first("b") is True  # the least recent was forgotten
    recent.forget("a")
    assert recent.first("a") is True
