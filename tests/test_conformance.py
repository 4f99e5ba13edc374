"""The conformance suite: every store behaves the same, on a fake clock.

Each test runs once per entry of ``conftest.STORES``. Time only moves through
``FakeClock``; ``Worker.run_pending`` runs what is due synchronously, so every
count below is exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import transaction

from pyramid_pyncette import IJobFailed, IJobScheduled, IJobStarted, IJobSucceeded
from pyramid_pyncette.jobs import Outcome
from pyramid_pyncette.schedules import DateSchedule

SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)


class Rollback(Exception):
    """Raised by a test task to make its transaction abort."""


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def add_due_jobs(app, count, *, prefix="job", task="record", first=()):
    """Write ``count`` one-off jobs due now in one batch; ``first`` ids are written before them."""
    now = app.clock()
    ids = [*first, *(f"{prefix}-{i:03d}" for i in range(count))]
    jobs = [app.scheduler.build_job(task, DateSchedule(now), job_id=job_id) for job_id in ids]
    app.repository.add(jobs)
    return ids


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_interval_job_runs_once_per_interval(app, step, tick):
    app.scheduler.add_interval_job("record", seconds=2)

    assert tick(app, 10, step=step) == 5

    assert [call.scheduled_at - app.start for call in app.calls] == [
        seconds(2),
        seconds(4),
        seconds(6),
        seconds(8),
        seconds(10),
    ]


def test_cron_every_minute_runs_once_a_minute(app, tick):
    app.scheduler.add_cron_job("record", "* * * * *")

    assert tick(app, 600, step=15) == 10

    assert [call.scheduled_at - app.start for call in app.calls] == [
        seconds(60 * minute) for minute in range(1, 11)
    ]


@pytest.mark.parametrize(
    "cron",
    [{"schedule": "* * * * * */15"}, {"second": "*/15"}],
    ids=["six-fields", "second-keyword"],
)
def test_seconds_cron_runs_every_fifteen_seconds(app, tick, cron):
    # Six-field cron strings carry the seconds field last.
    app.scheduler.add_cron_job("record", **cron)

    assert tick(app, 60, step=1) == 4

    assert [call.scheduled_at - app.start for call in app.calls] == [
        seconds(15),
        seconds(30),
        seconds(45),
        seconds(60),
    ]


def test_six_field_cron_reads_first_field_as_minutes(app, tick):
    # '*/15 * * * * *' is "every second of minutes 0, 15, 30 and 45".
    app.scheduler.add_cron_job("record", "*/15 * * * * *")

    assert tick(app, 120, step=1) == 59
    assert app.calls[-1].scheduled_at == app.start + seconds(59)


def test_date_job_runs_once_at_its_time_and_is_deleted(app):
    when = app.start + seconds(30)
    job = app.scheduler.add_date_job("record", when, args=[1], kwargs={"k": "v"})

    assert app.run_pending(when - MICROSECOND) == 0
    assert app.calls == []
    assert app.run_pending(when) == 1
    assert app.run_pending(when + seconds(120)) == 0

    assert len(app.calls) == 1
    call = app.calls[0]
    assert (call.job_id, call.args, call.kwargs, call.scheduled_at) == (
        job.id,
        (1,),
        {"k": "v"},
        when,
    )
    assert app.scheduler.get_job(job.id) is None


def test_async_job_runs_at_next_run_pending(app):
    job = app.scheduler.add_async_job("record", args=["now"])

    assert app.run_pending() == 1

    assert [(call.job_id, call.args) for call in app.calls] == [(job.id, ("now",))]
    assert app.scheduler.get_job(job.id) is None
    assert app.run_pending() == 0


def test_replacing_job_id_keeps_one_job_running_new_arguments(app, tick):
    app.scheduler.add_interval_job("record", seconds=5, job_id="same", args=["old"])
    app.scheduler.add_interval_job("record", seconds=5, job_id="same", args=["new"])

    jobs = app.scheduler.get_jobs()
    assert [job.id for job in jobs] == ["same"]
    assert jobs[0].args == ["new"]

    assert tick(app, 10, step=1) == 2
    assert [call.args for call in app.calls] == [("new",), ("new",)]


def test_replacing_job_id_with_another_schedule_drops_the_old_one(app, tick):
    app.scheduler.add_date_job("record", app.start + seconds(5), job_id="same", args=["old"])
    app.scheduler.add_date_job("record", app.start + seconds(8), job_id="same", args=["new"])

    assert tick(app, 20, step=1) == 1
    assert [(call.args, call.scheduled_at - app.start) for call in app.calls] == [
        (("new",), seconds(8))
    ]


def test_cancel_job_returns_true_then_false_and_job_never_runs(app, tick):
    app.scheduler.add_date_job("record", app.start + seconds(5), job_id="doomed")

    assert app.scheduler.cancel_job("doomed") is True
    assert app.scheduler.cancel_job("doomed") is False

    assert tick(app, 20, step=1) == 0
    assert app.calls == []
    assert app.scheduler.get_job("doomed") is None


def test_missed_runs_coalesce_into_one(app):
    job = app.scheduler.add_interval_job("record", seconds=10)
    assert job.next_run_at == app.start + seconds(10)

    app.clock.advance(95)
    assert app.run_pending() == 1

    assert app.calls[0].scheduled_at == app.start + seconds(10)
    stored = app.scheduler.get_job(job.id)
    assert stored.next_run_at == app.start + seconds(100)
    assert stored.due_at == app.start + seconds(100)
    assert stored.state == "scheduled"
    assert app.run_pending(app.start + seconds(100) - MICROSECOND) == 0
    assert app.run_pending(app.start + seconds(100)) == 1
    assert len(app.calls) == 2


# --------------------------------------------------------------------------- failure modes


def test_failure_mode_none_keeps_lease_until_it_expires(app, tick):
    lease = app.worker.lease_duration
    job = app.scheduler.add_date_job("fail", app.start + seconds(5), failure_mode="none")

    assert tick(app, 5) == 1
    failed_at = app.clock()

    stored = app.scheduler.get_job(job.id)
    assert stored.state == "running"  # it keeps its lease until the lease expires
    assert stored.last_status == "failed"
    assert "boom from fail attempt 1" in stored.last_error
    assert stored.attempts == 1
    assert stored.due_at == failed_at + seconds(lease)

    assert tick(app, lease - 1) == 0
    assert tick(app, 1) == 1

    assert [call.attempt for call in app.calls] == [1, 2]
    assert {call.scheduled_at for call in app.calls} == {app.start + seconds(5)}
    stored = app.scheduler.get_job(job.id)
    assert stored.attempts == 2
    assert "boom from fail attempt 2" in stored.last_error
    assert stored.state == "running"


def test_failure_mode_unlock_retries_at_next_run_pending(app):
    job = app.scheduler.add_date_job("fail", app.start, failure_mode="unlock")

    assert app.run_pending() == 1
    stored = app.scheduler.get_job(job.id)
    assert stored.state == "retrying"
    assert stored.last_status == "failed"
    assert stored.attempts == 1
    assert stored.due_at == app.start

    assert app.run_pending() == 1
    assert app.run_pending() == 1
    assert [call.attempt for call in app.calls] == [1, 2, 3]
    assert {call.scheduled_at for call in app.calls} == {app.start}


def test_failure_mode_commit_deletes_failed_one_off_job(app, tick):
    job = app.scheduler.add_date_job("fail", app.start, failure_mode="commit")

    assert app.run_pending() == 1
    assert app.scheduler.get_job(job.id) is None
    assert tick(app, 120, step=10) == 0
    assert len(app.calls) == 1


def test_failure_mode_commit_moves_failed_recurring_job_to_next_run(app, tick):
    job = app.scheduler.add_interval_job("fail", seconds=10, failure_mode="commit")

    assert tick(app, 10) == 1
    stored = app.scheduler.get_job(job.id)
    assert stored.state == "scheduled"
    assert stored.last_status == "failed"
    assert stored.attempts == 0
    assert stored.next_run_at == stored.due_at == app.start + seconds(20)

    assert tick(app, 9) == 0
    assert tick(app, 1) == 1
    assert [call.attempt for call in app.calls] == [1, 1]
    assert [call.scheduled_at - app.start for call in app.calls] == [seconds(10), seconds(20)]


# --------------------------------------------------------------------------- execution modes


def test_at_most_once_one_off_job_is_deleted_at_claim_and_not_retried(app):
    job = app.scheduler.add_date_job("fail", app.start, execution_mode="at_most_once")

    leases = app.repository.claim(app.start, 10, "crashed-daemon", 60)
    assert [(lease.job.id, lease.token) for lease in leases] == [(job.id, None)]
    assert app.scheduler.get_job(job.id) is None


def test_at_most_once_failed_one_off_job_is_not_retried(app, tick):
    job = app.scheduler.add_date_job("fail", app.start, execution_mode="at_most_once")

    assert app.run_pending() == 1
    assert app.scheduler.get_job(job.id) is None
    assert tick(app, 300, step=10) == 0
    assert len(app.calls) == 1


def test_at_most_once_recurring_job_is_advanced_at_claim(app):
    job = app.scheduler.add_interval_job("fail", seconds=10, execution_mode="at_most_once")
    first = app.start + seconds(10)

    leases = app.repository.claim(first, 10, "crashed-daemon", 60)
    assert [(lease.job.id, lease.token, lease.scheduled_at) for lease in leases] == [
        (job.id, None, first)
    ]
    stored = app.scheduler.get_job(job.id)
    assert stored.state == "scheduled"
    assert stored.locked_by is None
    assert stored.attempts == 0
    assert stored.next_run_at == stored.due_at == app.start + seconds(20)

    # The claimed run never reported back; it is not run again.
    assert app.run_pending(app.start + seconds(20) - MICROSECOND) == 0
    assert app.run_pending(app.start + seconds(20)) == 1
    assert [call.scheduled_at for call in app.calls] == [app.start + seconds(20)]
    assert app.calls[0].attempt == 1


def test_at_most_once_failed_recurring_job_waits_for_next_run(app, tick):
    job = app.scheduler.add_interval_job("fail", seconds=10, execution_mode="at_most_once")

    assert tick(app, 10) == 1
    stored = app.scheduler.get_job(job.id)
    assert stored.state == "scheduled"
    assert stored.last_status == "failed"
    assert stored.next_run_at == app.start + seconds(20)

    assert tick(app, 9) == 0
    assert tick(app, 1) == 1


# --------------------------------------------------------------------------- leases


def test_expired_lease_of_dead_daemon_is_taken_over_once(app, tick):
    lease_seconds = 60
    job = app.scheduler.add_interval_job("record", seconds=10)
    first = app.start + seconds(10)
    app.clock.set(first)

    (dead,) = app.repository.claim(first, 10, "dead-daemon", lease_seconds)
    assert dead.token == "dead-daemon"
    assert dead.attempt == 1
    assert app.scheduler.get_job(job.id).state == "running"

    assert app.run_pending() == 0
    assert tick(app, lease_seconds - 1) == 0
    assert app.calls == []

    assert tick(app, 1) == 1
    taken_over_at = app.clock()
    assert [(call.scheduled_at, call.attempt) for call in app.calls] == [(first, 2)]
    after_takeover = app.scheduler.get_job(job.id)
    assert after_takeover.state == "scheduled"
    assert after_takeover.last_run_at == taken_over_at
    assert after_takeover.next_run_at == first + seconds(lease_seconds + 10)

    # The dead daemon wakes up and reports its run: nothing changes.
    app.repository.complete([Outcome(dead, True, taken_over_at + seconds(5))])
    assert app.scheduler.get_job(job.id) == after_takeover


def test_stale_completion_does_not_delete_job_claimed_by_another_token(app):
    job = app.scheduler.add_date_job("record", app.start)

    (dead,) = app.repository.claim(app.start, 10, "dead-daemon", 60)
    later = app.start + seconds(60)
    (alive,) = app.repository.claim(later, 10, "live-daemon", 60)
    assert alive.attempt == 2

    app.repository.complete([Outcome(dead, True, later)])
    stored = app.scheduler.get_job(job.id)
    assert stored is not None
    assert stored.locked_by == "live-daemon"
    assert stored.due_at == later + seconds(60)

    app.repository.complete([Outcome(alive, True, later)])
    assert app.scheduler.get_job(job.id) is None


def test_heartbeat_extends_only_a_held_lease(app):
    job = app.scheduler.add_date_job("record", app.start)
    app.repository.claim(app.start, 10, "holder", 60)

    until = app.start + seconds(120)
    assert app.repository.extend(app.start, [(job.id, "holder", 120)]) == {job.id}
    assert app.scheduler.get_job(job.id).due_at == until

    assert app.repository.extend(app.start, [(job.id, "intruder", 500)]) == set()
    assert app.scheduler.get_job(job.id).due_at == until
    assert app.repository.extend(app.start, []) == set()

    assert app.run_pending(until - MICROSECOND) == 0
    assert app.run_pending(until) == 1
    assert app.calls[0].attempt == 2


def test_heartbeat_after_takeover_reports_lease_lost(app):
    job = app.scheduler.add_date_job("record", app.start)
    app.repository.claim(app.start, 10, "slow", 60)
    app.repository.claim(app.start + seconds(60), 10, "fast", 60)

    assert app.repository.extend(app.start, [(job.id, "slow", 200)]) == set()
    assert app.scheduler.get_job(job.id).locked_by == "fast"
    assert app.scheduler.get_job(job.id).due_at == app.start + seconds(120)


def test_released_leases_are_due_again_with_attempts_restored(app):
    ids = add_due_jobs(app, 3)
    leases = app.repository.claim(app.start, 10, "shutting-down", 60)
    assert sorted(lease.job.id for lease in leases) == ids
    assert {app.scheduler.get_job(job_id).attempts for job_id in ids} == {1}

    app.repository.release(leases)

    for job_id in ids:
        stored = app.scheduler.get_job(job_id)
        assert stored.state == "scheduled"
        assert stored.attempts == 0
        assert stored.due_at == app.start
    assert app.repository.next_due() == app.start
    assert app.run_pending() == 3
    assert sorted((call.job_id, call.attempt) for call in app.calls) == [(i, 1) for i in ids]


def test_a_released_retry_is_due_again_at_its_retry_time(app):
    app.scheduler.add_date_job("fail", app.start, job_id="retried", max_retries=3, retry_backoff=30)
    (first,) = app.repository.claim(app.start, 10, "first", 60)
    app.repository.complete([Outcome(first, False, app.start, error="boom")])
    retry_at = app.scheduler.get_job("retried").due_at
    assert retry_at > app.start
    (retry,) = app.repository.claim(retry_at, 10, "stopping", 60)
    assert retry.scheduled_at == app.start  # the run's own time, not the retry's

    app.repository.release([retry])

    stored = app.scheduler.get_job("retried")
    assert stored.due_at == retry_at
    assert stored.attempts == 1
    assert app.repository.claim(retry_at - seconds(1), 10, "early", 60) == []


def test_release_with_a_foreign_token_changes_nothing(app):
    add_due_jobs(app, 1)
    (lease,) = app.repository.claim(app.start, 10, "owner", 60)
    before = app.scheduler.get_job(lease.job.id)

    forged = type(lease)(job=lease.job, scheduled_at=lease.scheduled_at, token="someone-else")
    app.repository.release([forged])

    assert app.scheduler.get_job(lease.job.id) == before
    assert app.run_pending() == 0


# --------------------------------------------------------------------------- batch claims


def test_batch_claim_returns_distinct_jobs_up_to_limit(app):
    ids = add_due_jobs(app, 250)

    sizes = []
    claimed: list[str] = []
    for token in ("t1", "t2", "t3", "t4"):
        leases = app.repository.claim(app.start, 100, token, 60)
        assert {lease.token for lease in leases} <= {token}
        sizes.append(len(leases))
        claimed.extend(lease.job.id for lease in leases)

    assert sizes == [100, 100, 50, 0]
    assert len(claimed) == len(set(claimed)) == 250
    assert sorted(claimed) == ids
    assert app.repository.next_due() == app.start + seconds(60)


def test_interleaved_claims_never_share_a_job(app):
    ids = add_due_jobs(app, 250)

    by_token: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        got = 0
        for token in ("a", "b"):
            leases = app.repository.claim(app.start, 30, token, 60)
            by_token[token].extend(lease.job.id for lease in leases)
            got += len(leases)
        if not got:
            break

    assert not set(by_token["a"]) & set(by_token["b"])
    assert sorted(by_token["a"] + by_token["b"]) == ids
    for token, claimed in by_token.items():
        assert {app.scheduler.get_job(job_id).locked_by for job_id in claimed} == {token}


def test_concurrent_claims_never_share_a_job(app):
    ids = add_due_jobs(app, 250)
    app.repository.next_due()  # the store is set up before the threads race
    barrier = threading.Barrier(4)
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(token: str) -> None:
        mine: list[str] = []
        try:
            barrier.wait()
            while leases := app.repository.claim(app.start, 7, token, 60):
                mine.extend(lease.job.id for lease in leases)
        except BaseException as exc:
            errors.append(exc)
        results[token] = mine

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert errors == []
    claimed = [job_id for mine in results.values() for job_id in mine]
    assert len(claimed) == len(set(claimed)) == 250
    assert sorted(claimed) == ids


def test_run_pending_runs_every_due_job_when_an_unlock_retry_shares_a_batch(app):
    """A job that fails with 'unlock' is due again at once; run_pending must still
    run every other job that was due, even past the first batch."""
    app.scheduler.add_async_job("fail", job_id="a-flaky", failure_mode="unlock")
    ids = add_due_jobs(app, 250)
    assert app.worker.batch_size == 100

    app.run_pending()

    assert len(app.calls_of("fail")) == 1
    ran = [call.job_id for call in app.calls_of("record")]
    missing = sorted(set(ids) - set(ran))
    assert missing == [], f"{len(missing)} due jobs were left for a later run_pending call"
    assert sorted(ran) == ids
    assert app.scheduler.get_job("a-flaky").attempts == 1


# --------------------------------------------------------------------------- listing


def test_get_jobs_pages_in_id_order_and_filters_by_task(app):
    ids = [f"job-{i:02d}" for i in range(25)]
    future = app.start + seconds(3600)
    for i in [7, 3, 19, 0, 24, 12, 5, 1, 22, 9, 15, 2, 11, 20, 4, 6, 8, 10, 13, 14, 16, 17]:
        task = "fail" if i % 5 == 0 else "record"
        app.scheduler.add_date_job(task, future, job_id=ids[i])
    for i in [18, 21, 23]:
        app.scheduler.add_date_job("record", future, job_id=ids[i])

    pages = []
    cursor = None
    while True:
        page = app.scheduler.get_jobs(limit=10, cursor=cursor)
        pages.append([job.id for job in page])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [job_id for page in pages for job_id in page] == ids

    failing = app.scheduler.get_jobs(task="fail", limit=10)
    assert [job.id for job in failing] == ["job-00", "job-05", "job-10", "job-15", "job-20"]
    assert failing.next_cursor is None

    first = app.scheduler.get_jobs(task="record", limit=10)
    second = app.scheduler.get_jobs(task="record", limit=10, cursor=first.next_cursor)
    assert len(first) == len(second) == 10
    assert second.next_cursor is None
    assert [job.id for job in [*first, *second]] == [i for n, i in enumerate(ids) if n % 5]
    assert [job.id for job in app.scheduler.iter_jobs(page_size=4)] == ids


def test_next_due_tracks_the_earliest_due_time_and_lease_expiry(app):
    assert app.repository.next_due() is None

    later = app.scheduler.add_date_job("record", app.start + seconds(30))
    sooner = app.scheduler.add_date_job("record", app.start + seconds(10))
    assert app.repository.next_due() == app.start + seconds(10)

    (lease,) = app.repository.claim(app.start + seconds(10), 10, "holder", 60)
    assert lease.job.id == sooner.id
    assert app.repository.next_due() == app.start + seconds(30)

    assert app.scheduler.cancel_job(later.id) is True
    assert app.repository.next_due() == app.start + seconds(70)

    app.repository.extend(app.start, [(sooner.id, "holder", 90)])
    assert app.repository.next_due() == app.start + seconds(90)

    assert app.scheduler.cancel_job(sooner.id) is True
    assert app.repository.next_due() is None


# --------------------------------------------------------------------------- running a job


def test_task_sees_request_job_and_transaction_that_commits(make_app, tick, data_manager):
    seen = {}
    dm = data_manager

    def probe(request, *args, **kwargs):
        seen["job"] = request.job
        seen["tm"] = request.tm
        seen["registry"] = request.registry
        request.tm.get().join(dm)

    app = make_app(tasks={"probe": probe})
    app.scheduler.add_interval_job("probe", seconds=5, job_id="p", args=[1], kwargs={"x": 2})

    assert tick(app, 5) == 1

    info = seen["job"]
    assert (info.id, info.task, info.attempt) == ("p", "probe", 1)
    assert info.scheduled_at == app.start + seconds(5)
    assert (info.args, info.kwargs) == ([1], {"x": 2})
    assert isinstance(seen["tm"], transaction.TransactionManager)
    assert seen["registry"] is app.registry
    assert dm.outcome == "commit"
    assert "abort" not in dm.events


def test_transaction_aborts_when_task_raises(make_app, data_manager):
    dm = data_manager

    def explode(request):
        request.tm.get().join(dm)
        raise Rollback("rolled back")

    app = make_app(tasks={"explode": explode})
    job = app.scheduler.add_async_job("explode", failure_mode="unlock")

    assert app.run_pending() == 1

    assert dm.outcome == "abort"
    assert "commit" not in dm.events
    stored = app.scheduler.get_job(job.id)
    assert stored.last_status == "failed"
    assert "rolled back" in stored.last_error


def test_async_task_function_runs_and_succeeds(app, tick):
    job = app.scheduler.add_interval_job("async_record", seconds=5, args=["a"])

    assert tick(app, 10) == 2

    assert [(call.task, call.args, call.attempt) for call in app.calls] == [
        ("async_record", ("a",), 1),
        ("async_record", ("a",), 1),
    ]
    stored = app.scheduler.get_job(job.id)
    assert stored.last_status == "succeeded"
    assert stored.last_error is None
    assert stored.state == "scheduled"
    assert stored.attempts == 0


# --------------------------------------------------------------------------- periodic tasks


def test_periodic_tasks_are_synced_idempotently_and_run_on_schedule(make_app, tick):
    runs: Counter[str] = Counter()

    def every_minute(request):
        runs[request.job.id] += 1

    def every_half_minute(request):
        runs[request.job.id] += 1

    app = make_app(
        tasks={
            "every-minute": (every_minute, {"schedule": "* * * * *"}),
            "every-30s": (every_half_minute, {"interval": "30s"}),
        }
    )
    assert list(app.scheduler.get_jobs()) == []

    written = app.scheduler.sync_periodic_jobs()
    assert sorted(job.id for job in written) == ["every-30s", "every-minute"]
    minute_job = app.scheduler.get_job("every-minute")
    half_job = app.scheduler.get_job("every-30s")
    assert (minute_job.task, minute_job.next_run_at) == ("every-minute", app.start + seconds(60))
    assert (half_job.task, half_job.next_run_at) == ("every-30s", app.start + seconds(30))

    app.clock.advance(10)
    assert app.scheduler.sync_periodic_jobs() == []
    assert app.scheduler.get_job("every-minute").next_run_at == minute_job.next_run_at
    assert app.scheduler.get_job("every-30s").next_run_at == half_job.next_run_at
    assert len(app.scheduler.get_jobs()) == 2

    assert tick(app, 590, step=10) == 30
    assert runs == {"every-minute": 10, "every-30s": 20}


# --------------------------------------------------------------------------- events


def test_job_events_are_fired(make_app):
    events = []

    def configure(config, calls):
        for iface in (IJobScheduled, IJobStarted, IJobSucceeded, IJobFailed):
            config.add_subscriber(events.append, iface)

    app = make_app(configure=configure)
    app.scheduler.add_date_job("record", app.start, job_id="good")
    app.scheduler.add_date_job("fail", app.start, job_id="bad", failure_mode="commit")

    scheduled = [(type(e).__name__, e.job.id) for e in events]
    assert scheduled == [("JobScheduled", "good"), ("JobScheduled", "bad")]
    assert all(e.registry is app.registry for e in events)
    events.clear()

    assert app.run_pending() == 2

    assert Counter((type(e).__name__, e.job.id) for e in events) == Counter(
        [
            ("JobStarted", "good"),
            ("JobSucceeded", "good"),
            ("JobStarted", "bad"),
            ("JobFailed", "bad"),
        ]
    )
    by_kind = {(type(e).__name__, e.job.id): e for e in events}
    assert by_kind[("JobSucceeded", "good")].result == "ok"
    failure = by_kind[("JobFailed", "bad")].exception
    assert isinstance(failure, RuntimeError)
    assert str(failure) == "boom from fail attempt 1"
    for event in events:
        assert event.scheduled_at == app.start
        assert event.attempt == 1
        assert event.request.job.id == event.job.id


def test_raising_subscriber_stops_neither_job_nor_worker(make_app, tick):
    def explode(event):
        raise RuntimeError("subscriber bug")

    def configure(config, calls):
        for iface in (IJobScheduled, IJobStarted, IJobSucceeded, IJobFailed):
            config.add_subscriber(explode, iface)

    app = make_app(configure=configure)
    first = app.scheduler.add_interval_job("record", seconds=5, job_id="first")
    app.scheduler.add_interval_job("record", seconds=5, job_id="second")
    assert app.scheduler.get_job(first.id) is not None

    assert tick(app, 10) == 4

    assert sorted(call.job_id for call in app.calls) == ["first", "first", "second", "second"]
    for job_id in ("first", "second"):
        stored = app.scheduler.get_job(job_id)
        assert stored.last_status == "succeeded"
        assert stored.attempts == 0
        assert stored.next_run_at == app.start + seconds(15)


# --------------------------------------------------------------------------- unknown tasks


def test_job_of_unregistered_task_is_parked_and_others_keep_running(app, tick):
    orphan = app.scheduler.build_job("record", DateSchedule(app.start), job_id="orphan")
    app.repository.add([orphan.replace(task="gone.module:vanished")])
    app.scheduler.add_interval_job("record", seconds=10, job_id="healthy")

    app.run_pending()

    parked = app.scheduler.get_job("orphan")
    assert parked.state == "failed"
    assert parked.last_status == "failed"
    assert "gone.module:vanished" in parked.last_error
    assert parked.due_at is None
    assert parked.locked_by is None
    assert app.calls == []

    assert tick(app, 200, step=10) == 20
    assert [call.job_id for call in app.calls] == ["healthy"] * 20
    assert app.scheduler.get_job("orphan") == parked
    assert app.repository.next_due() == app.start + seconds(210)


# --------------------------------------------------------------------------- after a claim


@pytest.fixture
def after_claim(monkeypatch):
    """``after_claim(app, action)``: run ``action()`` once, as soon as another writer can
    reach the rows a daemon just claimed, as if that daemon paused there.

    PostgreSQL claims in one statement and rewrites what is not a plain
    lease (at-most-once runs, misfires, leases of a job's own length) in a
    second one: ``action`` runs between the two. The other stores claim and
    write in one transaction (or one script): ``action`` runs once the claim
    has returned, before anything runs.
    """

    def install(app, action):
        repository = app.repository
        fired = []
        postgresql = getattr(repository, "_dialect", None) == "postgresql"
        name = "_apply_claim_postgresql" if postgresql else "claim"
        real = getattr(repository, name)

        def hooked(*args, **kwargs):
            if not fired:
                fired.append(True)
                if postgresql:
                    action()
                else:
                    result = real(*args, **kwargs)
                    action()
                    return result
            return real(*args, **kwargs)

        monkeypatch.setattr(repository, name, hooked)
        return fired

    return install


@pytest.mark.parametrize("recurring", [False, True], ids=["one-off", "recurring"])
def test_an_at_most_once_run_claimed_again_while_its_daemon_paused_runs_once(
    app, after_claim, recurring
):
    """A daemon paused between its claim and what the claim writes, past the lease:
    another daemon takes the run; the paused one must not run it too."""
    lease = app.worker.lease_duration
    if recurring:
        app.scheduler.add_interval_job(
            "record", seconds=3600, job_id="once", execution_mode="at_most_once"
        )
        app.clock.advance(3600)
    else:
        app.scheduler.add_date_job(
            "record", app.start, job_id="once", execution_mode="at_most_once"
        )
    scheduled = app.clock()
    other = []

    def other_daemon_claims():
        later = scheduled + seconds(lease + 1)
        other.extend(app.repository.claim(later, 10, "other-daemon", lease))

    fired = after_claim(app, other_daemon_claims)
    app.run_pending()

    assert fired
    runs = [(call.job_id, call.scheduled_at) for call in app.calls]
    runs += [(lease.job.id, lease.scheduled_at) for lease in other if lease.runnable]
    assert runs == [("once", scheduled)]
    stored = app.scheduler.get_job("once")
    if recurring:
        assert stored.state == "scheduled"
        assert stored.next_run_at == scheduled + seconds(3600)
    else:
        assert stored is None


def test_a_job_re_added_while_its_at_most_once_run_is_claimed_keeps_the_replacement(
    app, after_claim
):
    options = {"job_id": "same", "execution_mode": "at_most_once"}
    app.scheduler.add_date_job("record", app.start, args=["old"], **options)

    # Due a second later, so that the first run_pending cannot claim it too.
    later = app.start + SECOND
    fired = after_claim(
        app, lambda: app.scheduler.add_date_job("record", later, args=["new"], **options)
    )
    app.run_pending()
    app.run_pending(later)
    app.run_pending(later + SECOND)

    assert fired
    args = [call.args for call in app.calls]
    # The old version runs only if its claim was complete before the replacement.
    assert args.count(("new",)) == 1
    assert args.count(("old",)) <= 1
    assert app.scheduler.get_job("same") is None


def test_a_job_re_added_while_its_own_length_lease_is_written_keeps_its_due_time(
    app, after_claim, tick
):
    tomorrow = app.start + timedelta(days=1)
    options = {"job_id": "same", "lease_duration": 20}
    app.scheduler.add_date_job("record", app.start, args=["old"], **options)

    fired = after_claim(
        app, lambda: app.scheduler.add_date_job("record", tomorrow, args=["new"], **options)
    )
    app.run_pending()

    assert fired
    stored = app.scheduler.get_job("same")
    assert (stored.args, stored.state, stored.due_at) == (["new"], "scheduled", tomorrow)
    assert [call.args for call in app.calls] in ([], [("old",)])
    app.calls.clear()
    assert tick(app, 60, step=20) == 0
    assert app.run_pending(tomorrow) == 1
    assert [(call.args, call.scheduled_at) for call in app.calls] == [(("new",), tomorrow)]


@pytest.mark.parametrize("store_settings", ["sqlite", "mariadb"], indirect=True)
def test_a_claim_whose_locked_rows_changed_before_its_writes_is_undone(app, monkeypatch):
    """SQLite and MariaDB write a claim in the transaction that read (and locked) its rows;
    every write still matches the row as read, and a mismatch undoes the claim."""
    from pyramid_pyncette.repository import RepositoryError

    app.scheduler.add_date_job("record", app.start, job_id="a")
    app.scheduler.add_date_job("record", app.start, job_id="b", execution_mode="at_most_once")
    repository = app.repository
    real = repository._apply_claim
    table = repository.table

    def tampered(conn, *args, **kwargs):
        conn.execute(table.update().where(table.c.id == "b").values(locked_by="someone"))
        return real(conn, *args, **kwargs)

    monkeypatch.setattr(repository, "_apply_claim", tampered)
    with pytest.raises(RepositoryError, match="changed before it wrote them"):
        repository.claim(app.start, 10, "t", 60)

    monkeypatch.undo()
    assert {job.id: job.state for job in app.scheduler.get_jobs()} == {
        "a": "scheduled",
        "b": "scheduled",
    }
    assert app.run_pending() == 2


# --------------------------------------------------------------------------- the worker loop


def test_the_worker_loop_drains_with_combined_calls_and_gives_its_connection_back(app):
    """``Worker.run`` writes finished runs in its claiming call and keeps one connection."""
    ids = add_due_jobs(app, 25)
    app.worker.batch_size = 10
    calls = []
    real = app.repository.complete_and_claim

    def spy(outcomes, *args):
        calls.append(len(outcomes))
        return real(outcomes, *args)

    app.repository.complete_and_claim = spy
    app.worker.run(until_idle=True)

    assert sorted(call.job_id for call in app.calls) == ids
    assert list(app.scheduler.get_jobs()) == []
    assert sum(calls) == 25  # every run was completed through a claiming call
    pool = getattr(getattr(app.repository, "engine", None), "pool", None)
    if pool is not None and hasattr(pool, "checkedout"):
        assert pool.checkedout() == 0


@pytest.mark.parametrize("store_settings", ["postgresql"], indirect=True)
def test_a_postgresql_claim_reads_only_due_rows_from_the_index(app):
    """The claim's time bound is an index condition: stored, not-due rows are never scanned."""
    repository = app.repository
    assert repository.engine.dialect.name == "postgresql"
    later = app.clock() + seconds(3600)
    app.repository.add(
        [
            app.scheduler.build_job("record", DateSchedule(later), job_id=f"later-{i:05d}")
            for i in range(2000)
        ]
    )
    params = {
        "now": app.clock(),
        "done_ids": [],
        "done_tokens": [],
        "limit": 100,
        "token": "t",
        "lease_us": 60_000_000,
    }
    with repository.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + repository._claim_sql, params)
        )
        conn.rollback()
    assert "Index Cond: (due_at <=" in plan, plan
    assert "Rows Removed" not in plan, plan
