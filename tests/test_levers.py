"""The operator's levers, on every store, on a fake clock: queues, pause and resume
of jobs and queues, run now, the job states, the run history query and their events.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import transaction

from pyramid_pyncette import (
    IJobPaused,
    IJobResumed,
    IJobScheduled,
    InvalidJobError,
    IQueuePaused,
    IQueueResumed,
    JobPaused,
    JobResumed,
    PeriodicJobError,
    QueuePaused,
    QueueResumed,
    UnknownJobError,
    UnknownTaskError,
)
from pyramid_pyncette.jobs import DEFAULT_QUEUE, Outcome, QueueInfo, RunRecord
from pyramid_pyncette.options import PAUSED_MARKER, PERIODIC_MARKER
from tests.queue_counts import backlog
from tests.test_periodic import deploy, periodic


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def recorder(*interfaces):
    """A ``configure`` hook collecting the events of ``interfaces`` into a list."""
    events = []

    def configure(config, calls):
        for interface in interfaces:
            config.add_subscriber(events.append, interface)

    return events, configure


def stored(app, job_id):
    return app.repository.get(job_id)


def job_ids(app):
    return sorted(job.id for job in app.scheduler.iter_jobs())


BAD_QUEUES = ["", "bad name", "-dash-first", "x" * 65, "émails", 5, None]


# --------------------------------------------------------------------------- queues


def test_every_add_takes_a_queue_and_stores_it_outside_the_options(app):
    scheduler = app.scheduler
    jobs = [
        scheduler.add_date_job("record", app.start + seconds(5), job_id="d", queue="emails"),
        scheduler.add_interval_job("record", seconds=30, job_id="i", queue="emails"),
        scheduler.add_cron_job("record", "*/5 * * * *", job_id="c", queue="emails"),
        scheduler.add_async_job("record", job_id="a", queue="emails", max_retries=2),
    ]
    for job in jobs:
        assert job.queue == "emails"
        assert stored(app, job.id).queue == "emails"
        assert "queue" not in stored(app, job.id).options
    assert stored(app, "a").options == {"max_retries": 2}


def test_a_job_without_a_queue_is_in_the_default_queue(app):
    job = app.scheduler.add_async_job("record", job_id="plain")
    assert job.queue == DEFAULT_QUEUE == "default"
    assert stored(app, "plain").queue == "default"


def test_a_tasks_queue_is_its_jobs_queue_unless_the_job_names_another(make_app):
    app = make_app(tasks={"mail": (lambda request: None, {"queue": "emails"})})
    assert app.scheduler.tasks.get("mail").queue == "emails"
    assert app.scheduler.add_async_job("mail", job_id="m").queue == "emails"
    assert app.scheduler.add_async_job("mail", job_id="n", queue="bulk").queue == "bulk"
    assert stored(app, "m").queue == "emails"
    assert stored(app, "n").queue == "bulk"
    assert stored(app, "m").options == {}


def test_a_periodic_tasks_job_is_in_the_tasks_queue(make_app):
    app = make_app(tasks={"tick": (lambda request: None, {"interval": "30s", "queue": "ops"})})
    app.scheduler.sync_periodic_jobs()
    job = stored(app, "tick")
    assert job.queue == "ops"
    assert job.options == {PERIODIC_MARKER: True}


def test_a_changed_queue_replaces_the_periodic_job(make_app):
    def noop(request):
        return None

    old = deploy(make_app, tasks={"tick": (noop, {"interval": "30s"})})
    assert [job.id for job in old.scheduler.sync_periodic_jobs()] == ["tick"]
    assert old.scheduler.sync_periodic_jobs() == []  # unchanged: kept
    new = deploy(make_app, old, tasks={"tick": (noop, {"interval": "30s", "queue": "ops"})})
    written = new.scheduler.sync_periodic_jobs()
    assert [(job.id, job.queue) for job in written] == [("tick", "ops")]
    assert stored(new, "tick").queue == "ops"


@pytest.mark.parametrize("name", BAD_QUEUES)
def test_a_bad_queue_name_is_refused_naming_the_fix_and_nothing_is_written(app, name):
    scheduler = app.scheduler
    adds = [
        lambda: scheduler.add_async_job("record", job_id="x", queue=name),
        lambda: scheduler.add_date_job("record", app.start, job_id="x", queue=name),
        lambda: scheduler.add_interval_job("record", seconds=5, job_id="x", queue=name),
        lambda: scheduler.add_cron_job("record", "* * * * *", job_id="x", queue=name),
    ]
    for add in adds:
        if name is None:  # None means "the task's queue"
            add()
            assert stored(app, "x").queue == "default"
            scheduler.cancel_job("x")
            continue
        with pytest.raises(InvalidJobError, match=r"queue=.*(not a queue name|is a string)"):
            add()
    assert job_ids(app) == []
    if name is not None:
        for lever in (scheduler.pause_queue, scheduler.resume_queue):
            with pytest.raises(InvalidJobError, match=r"queue="):
                lever(name)
        assert app.repository.paused_queues() == set()


def test_the_queue_error_names_the_caller_and_an_example(app):
    with pytest.raises(InvalidJobError) as excinfo:
        app.scheduler.add_async_job("record", queue="bad name")
    message = str(excinfo.value)
    assert message.startswith("add_async_job: queue='bad name': 'bad name' is not a queue name")
    assert "(e.g. 'emails')" in message


def test_a_task_with_a_bad_queue_name_is_refused_when_it_is_registered(config):
    with pytest.raises(InvalidJobError, match="task 'mail': queue='a b': 'a b' is not a queue"):
        config.add_pyncette_task(lambda request: None, name="mail", queue="a b")


def test_a_claim_bound_to_a_queue_takes_only_that_queues_jobs(app):
    app.scheduler.add_async_job("record", job_id="d1")
    app.scheduler.add_async_job("record", job_id="e1", queue="emails")
    app.scheduler.add_async_job("record", job_id="e2", queue="emails")
    leases = app.repository.claim(app.clock(), 10, "t", 60, frozenset({"emails"}))
    assert sorted(lease.job.id for lease in leases) == ["e1", "e2"]
    assert [lease.job.id for lease in app.repository.claim(app.clock(), 10, "u", 60)] == ["d1"]


def test_two_claims_on_two_queues_drain_both(app):
    for n in range(3):
        app.scheduler.add_async_job("record", job_id=f"d{n}")
        app.scheduler.add_async_job("record", job_id=f"e{n}", queue="emails")
    now = app.clock()
    emails = app.repository.claim(now, 10, "a", 60, frozenset({"emails"}))
    default = app.repository.claim(now, 10, "b", 60, frozenset({"default"}))
    assert sorted(lease.job.id for lease in emails) == ["e0", "e1", "e2"]
    assert sorted(lease.job.id for lease in default) == ["d0", "d1", "d2"]


def test_jobs_of_a_paused_queue_do_not_run_until_it_is_resumed(app, tick):
    app.scheduler.add_interval_job("record", seconds=10, job_id="mail", queue="emails")
    app.scheduler.add_interval_job("record", seconds=10, job_id="other")
    assert app.scheduler.pause_queue("emails") is True
    assert tick(app, 30, step=10) == 3
    assert [call.job_id for call in app.calls] == ["other"] * 3
    assert app.scheduler.resume_queue("emails") is True
    assert app.run_pending() == 1  # the paused queue's missed runs coalesce into one
    assert tick(app, 20, step=10) == 4
    assert [call.job_id for call in app.calls].count("mail") == 3


def test_pausing_a_queue_twice_or_resuming_an_unpaused_one_changes_nothing(make_app):
    events, configure = recorder(IQueuePaused, IQueueResumed)
    app = make_app(configure=configure)
    assert app.scheduler.resume_queue("emails") is False
    assert app.scheduler.pause_queue("emails") is True
    assert app.scheduler.pause_queue("emails") is False
    assert app.repository.paused_queues() == {"emails"}
    assert [type(event) for event in events] == [QueuePaused]


def test_a_queue_pause_is_applied_at_once_even_when_the_transaction_aborts(app):
    manager = transaction.TransactionManager(explicit=True)
    bound = app.scheduler.bind(manager)
    manager.begin()
    bound.pause_queue("emails")
    assert app.repository.paused_queues() == {"emails"}
    manager.abort()
    assert app.repository.paused_queues() == {"emails"}


def test_get_paused_queues_names_the_paused_queues_without_counting_jobs(app):
    assert app.scheduler.get_paused_queues() == frozenset()
    app.scheduler.pause_queue("emails")
    app.scheduler.pause_queue("reports")
    app.scheduler.resume_queue("reports")
    assert app.scheduler.get_paused_queues() == frozenset({"emails"})


def test_get_queues_reports_each_queue_paused_due_and_running(app):
    scheduler = app.scheduler
    scheduler.add_async_job("record", job_id="d1")
    scheduler.add_async_job("record", job_id="e1", queue="emails")
    scheduler.add_async_job("record", job_id="e2", queue="emails")
    scheduler.add_date_job("record", app.start + seconds(60), job_id="e3", queue="emails")
    scheduler.pause_queue("idle")
    app.repository.claim(app.clock(), 1, "t", 60, frozenset({"emails"}))
    assert backlog(scheduler.get_queues()) == [
        QueueInfo("default", paused=False, due=1, running=0),
        QueueInfo("emails", paused=False, due=1, running=1),
        QueueInfo("idle", paused=True, due=0, running=0),
    ]


def test_a_daemon_bound_to_a_queue_never_runs_another_queues_job(make_app, store_settings):
    from pyramid_pyncette.worker import Worker

    store_settings["pyncette.queues"] = "emails"
    app = make_app()
    assert Worker(app.registry, clock=app.clock).queues == frozenset({"emails"})
    app.scheduler.add_async_job("record", job_id="d")
    app.scheduler.add_async_job("record", job_id="e", queue="emails")
    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["e"]
    assert app.scheduler.get_job("d").state == "scheduled"


# --------------------------------------------------------------------------- pause and resume


def test_a_paused_job_never_runs_and_keeps_its_definition(app, tick):
    job = app.scheduler.add_interval_job("record", seconds=10, job_id="j", kwargs={"n": 1})
    paused = app.scheduler.pause_job("j")
    assert (paused.state, paused.due_at, paused.paused) == ("paused", None, True)
    assert paused.options == {PAUSED_MARKER: True}
    assert stored(app, "j") == paused
    assert tick(app, 60, step=5) == 0
    assert app.calls == []
    kept = stored(app, "j")
    assert (kept.schedule, kept.kwargs, kept.next_run_at) == (
        job.schedule,
        {"n": 1},
        job.next_run_at,
    )


@pytest.mark.parametrize("kind", ["interval", "cron"])
def test_resuming_a_recurring_job_runs_it_next_at_its_first_time_after_now(app, tick, kind):
    if kind == "interval":
        app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    else:
        app.scheduler.add_cron_job("record", "* * * * * */10", job_id="j")
    app.scheduler.pause_job("j")
    app.clock.advance(35)  # runs at 10, 20 and 30 were missed
    resumed = app.scheduler.resume_job("j")
    assert (resumed.state, resumed.attempts) == ("scheduled", 0)
    assert resumed.next_run_at == resumed.due_at == app.start + seconds(40)
    assert PAUSED_MARKER not in resumed.options
    assert stored(app, "j") == resumed
    assert app.run_pending() == 0  # no burst of missed runs
    assert tick(app, 5) == 1
    assert tick(app, 20, step=5) == 2
    assert [call.scheduled_at for call in app.calls] == [
        app.start + seconds(40),
        app.start + seconds(50),
        app.start + seconds(60),
    ]


def test_resuming_a_one_off_job_whose_time_passed_runs_it_now(app):
    app.scheduler.add_date_job("record", app.start + seconds(10), job_id="j")
    app.scheduler.pause_job("j")
    app.clock.advance(30)
    assert app.run_pending() == 0
    resumed = app.scheduler.resume_job("j")
    assert resumed.due_at == resumed.next_run_at == app.clock()
    assert app.run_pending() == 1
    assert app.run_pending(app.clock() + seconds(3600)) == 0
    assert len(app.calls) == 1
    assert app.scheduler.get_job("j") is None


def test_resuming_a_one_off_job_whose_time_is_ahead_keeps_its_time(app):
    app.scheduler.add_date_job("record", app.start + seconds(60), job_id="j")
    app.scheduler.pause_job("j")
    app.clock.advance(10)
    resumed = app.scheduler.resume_job("j")
    assert resumed.due_at == resumed.next_run_at == app.start + seconds(60)
    assert app.run_pending() == 0
    assert app.run_pending(app.start + seconds(60)) == 1


def pausing_task(request):
    """A task that pauses its own job while it runs."""
    request.registry.scheduler.pause_job(request.job.id)
    return "ok"


def test_a_job_paused_during_its_run_finishes_it_and_is_not_claimed_again(make_app, tick):
    app = make_app(tasks={"pausing": pausing_task})
    app.scheduler.add_interval_job("pausing", seconds=10, job_id="j")
    assert tick(app, 10) == 1
    job = stored(app, "j")
    assert (job.state, job.last_status, job.locked_by) == ("paused", "succeeded", None)
    assert tick(app, 60, step=10) == 0
    # The claim that found it due took it off the schedule.
    held = stored(app, "j")
    assert (held.state, held.due_at, held.locked_by) == ("paused", None, None)
    resumed = app.scheduler.resume_job("j")
    assert resumed.next_run_at == app.start + seconds(80)
    assert tick(app, 10) == 1  # it pauses itself again


def test_a_one_off_job_paused_during_its_run_finishes_and_is_done(make_app):
    app = make_app(tasks={"pausing": pausing_task})
    app.scheduler.add_async_job("pausing", job_id="j")
    assert app.run_pending() == 1
    assert app.scheduler.get_job("j") is None


def test_a_running_job_keeps_its_lease_while_paused_and_after_its_resume(app):
    app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    app.clock.advance(10)
    [lease] = app.repository.claim(app.clock(), 10, "daemon", 60)
    paused = app.scheduler.pause_job("j")
    assert (paused.state, paused.locked_by, paused.due_at) == ("paused", "daemon", None)
    resumed = app.scheduler.resume_job("j")
    assert resumed.locked_by == "daemon"
    assert resumed.state == "running"
    assert resumed.due_at == app.clock() + seconds(app.scheduler.settings.lease_duration)
    assert app.run_pending() == 0  # still leased
    app.repository.complete([Outcome(lease, succeeded=True, finished_at=app.clock())])
    done = stored(app, "j")
    assert (done.state, done.locked_by, done.next_run_at) == (
        "scheduled",
        None,
        app.start + seconds(20),
    )
    assert app.run_pending(app.start + seconds(20)) == 1


def test_pause_and_resume_of_a_job_in_its_state_already_change_nothing(make_app):
    events, configure = recorder(IJobPaused, IJobResumed, IJobScheduled)
    app = make_app(configure=configure)
    writes = []
    app.scheduler.commit_listeners.append(lambda written, removed: writes.append(written))
    job = app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    assert app.scheduler.resume_job("j") == job
    paused = app.scheduler.pause_job("j")
    app.clock.advance(5)
    assert app.scheduler.pause_job("j") == paused
    assert stored(app, "j") == paused
    assert [type(event).__name__ for event in events] == ["JobScheduled", "JobPaused"]
    assert writes == [[job], [paused]]  # the no-op calls wrote nothing


@pytest.mark.parametrize("lever", ["pause_job", "resume_job", "retry_job"])
def test_a_lever_on_an_unknown_job_is_a_clear_error_and_writes_nothing(app, lever):
    app.scheduler.add_async_job("record", job_id="other")
    before = stored(app, "other")
    with pytest.raises(UnknownJobError, match=rf"{lever}: no job has the id 'nope'.*get_jobs"):
        getattr(app.scheduler, lever)("nope")
    with pytest.raises(InvalidJobError, match="job_id must be a string"):
        getattr(app.scheduler, lever)(5)
    assert job_ids(app) == ["other"]
    assert stored(app, "other") == before


def test_a_pause_through_a_transaction_is_written_only_when_it_commits(make_app):
    events, configure = recorder(IJobPaused, IJobResumed)
    app = make_app(configure=configure)
    app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    manager = transaction.TransactionManager(explicit=True)
    bound = app.scheduler.bind(manager)

    manager.begin()
    assert bound.pause_job("j").state == "paused"
    assert bound.get_job("j").state == "paused"
    assert stored(app, "j").state == "scheduled"
    manager.abort()
    assert stored(app, "j").state == "scheduled"
    assert events == []

    with manager:
        bound.pause_job("j")
        assert events == []  # announced after the commit
    assert stored(app, "j").state == "paused"
    assert [type(event) for event in events] == [JobPaused]
    assert app.run_pending(app.start + seconds(30)) == 0

    with manager:
        bound.resume_job("j")
    assert stored(app, "j").state == "scheduled"
    assert [type(event) for event in events] == [JobPaused, JobResumed]


def test_a_running_job_paused_through_a_transaction_keeps_its_daemons_lease(app):
    app.scheduler.add_async_job("record", job_id="j")
    [lease] = app.repository.claim(app.clock(), 10, "daemon", 60)
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        app.scheduler.bind(manager).pause_job("j")
    paused = stored(app, "j")
    assert (paused.state, paused.locked_by, paused.due_at) == ("paused", "daemon", None)
    # The run completes its row: a finished one-off job is gone, never run again.
    app.repository.complete([Outcome(lease, succeeded=True, finished_at=app.clock())])
    assert app.scheduler.get_job("j") is None


def test_retry_of_a_paused_job_is_refused_naming_resume_job(app):
    app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    paused = app.scheduler.pause_job("j")
    with pytest.raises(InvalidJobError, match=r"job 'j' is paused.*resume_job\('j'\)"):
        app.scheduler.retry_job("j")
    assert stored(app, "j") == paused


def test_a_paused_job_can_be_cancelled(app):
    app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    app.scheduler.pause_job("j")
    assert app.scheduler.cancel_job("j") is True
    assert job_ids(app) == []


# --------------------------------------------------------------------------- periodic jobs


def test_a_paused_periodic_job_stays_paused_across_syncs_and_restarts(make_app, tick):
    runs = []
    tasks = {"tick": periodic("10s", lambda request: runs.append(request.job.id))}
    app = deploy(make_app, tasks=tasks)
    app.scheduler.sync_periodic_jobs()
    paused = app.scheduler.pause_job("tick")
    assert app.scheduler.sync_periodic_jobs() == []
    again = deploy(make_app, app, tasks=tasks)  # a daemon restart
    assert again.scheduler.sync_periodic_jobs() == []
    assert stored(again, "tick") == paused
    assert tick(again, 60, step=10) == 0
    assert runs == []
    again.scheduler.resume_job("tick")
    assert tick(again, 20, step=10) == 2
    assert runs == ["tick", "tick"]


def test_a_paused_periodic_job_whose_definition_changed_is_replaced_and_stays_paused(make_app):
    def noop(request):
        return None

    old = deploy(make_app, tasks={"tick": (noop, {"interval": "10s"})})
    old.scheduler.sync_periodic_jobs()
    old.scheduler.pause_job("tick")
    new = deploy(make_app, old, tasks={"tick": (noop, {"interval": "20s", "queue": "ops"})})
    [written] = new.scheduler.sync_periodic_jobs()
    job = stored(new, "tick")
    assert job == written
    assert (job.state, job.queue, job.schedule["microseconds"]) == ("paused", "ops", 20_000_000)
    assert job.options == {PERIODIC_MARKER: True, PAUSED_MARKER: True}
    assert new.run_pending(new.start + seconds(100)) == 0


def test_cancel_of_a_periodic_job_names_pause_job_as_the_way_to_stop_it(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    with pytest.raises(PeriodicJobError, match=r"pause it with pause_job\('tick'\)"):
        app.scheduler.cancel_job("tick")
    assert job_ids(app) == ["tick"]


# --------------------------------------------------------------------------- run now


def test_run_now_queues_a_failed_job_again(app):
    app.scheduler.add_async_job("fail", job_id="j", max_retries=0)
    assert app.run_pending() == 1
    assert stored(app, "j").state == "failed"
    app.clock.advance(100)
    retried = app.scheduler.retry_job("j")
    assert (retried.state, retried.due_at, retried.attempts) == ("scheduled", app.clock(), 0)
    assert app.run_pending() == 1
    assert [call.attempt for call in app.calls] == [1, 1]


def test_run_now_runs_a_scheduled_one_off_job_now_and_only_now(app):
    app.scheduler.add_date_job("record", app.start + seconds(3600), job_id="j")
    app.clock.advance(5)
    app.scheduler.retry_job("j")
    assert app.run_pending() == 1
    assert app.scheduler.get_job("j") is None
    assert app.run_pending(app.start + seconds(7200)) == 0
    assert [call.scheduled_at for call in app.calls] == [app.start + seconds(5)]


@pytest.mark.parametrize("mode", ["at_least_once", "at_most_once"])
@pytest.mark.parametrize("kind", ["interval", "cron"])
def test_run_now_gives_a_recurring_job_one_extra_run_then_it_keeps_its_schedule(
    app, tick, kind, mode
):
    if kind == "interval":
        app.scheduler.add_interval_job("record", seconds=60, job_id="j", execution_mode=mode)
    else:
        app.scheduler.add_cron_job("record", "* * * * *", job_id="j", execution_mode=mode)
    app.clock.advance(10)
    app.scheduler.retry_job("j")
    assert app.run_pending() == 1
    job = stored(app, "j")
    assert (job.state, job.next_run_at) == ("scheduled", app.start + seconds(60))
    assert tick(app, 110, step=10) == 2
    assert [call.scheduled_at for call in app.calls] == [
        app.start + seconds(10),
        app.start + seconds(60),
        app.start + seconds(120),
    ]


def test_run_now_of_a_retrying_job_runs_it_now_with_its_attempts_reset(app):
    app.scheduler.add_async_job("fail", job_id="j", max_retries=3, retry_backoff=100)
    assert app.run_pending() == 1
    assert stored(app, "j").state == "retrying"
    app.clock.advance(1)
    app.scheduler.retry_job("j")
    assert app.run_pending() == 1
    assert [call.attempt for call in app.calls] == [1, 1]


# --------------------------------------------------------------------------- states


def test_a_job_goes_through_every_state_in_its_life(make_app):
    seen, failing = [], []

    def observe(request):
        seen.append(request.registry.scheduler.get_job(request.job.id).state)
        if failing:
            raise RuntimeError("boom")

    app = make_app(tasks={"observe": observe})
    scheduler = app.scheduler
    states = [scheduler.add_interval_job("observe", seconds=10, job_id="j").state]
    app.clock.advance(10)
    failing.append(True)
    app.run_pending()
    states.append(stored(app, "j").state)  # its run failed: a retry waits
    states.append(scheduler.pause_job("j").state)
    states.append(scheduler.resume_job("j").state)
    job = app.scheduler.add_interval_job(
        "observe", seconds=10, job_id="j", max_retries=0, retry_exhausted="park"
    )
    app.run_pending(job.next_run_at)
    states.append(stored(app, "j").state)  # parked
    states.append(scheduler.pause_job("j").state)
    failing.clear()
    states.append(scheduler.resume_job("j").state)
    app.run_pending(stored(app, "j").next_run_at)
    states.append(stored(app, "j").state)
    assert seen == ["running", "running", "running"]
    assert states == [
        "scheduled",
        "retrying",
        "paused",
        "scheduled",
        "failed",
        "paused",
        "scheduled",
        "scheduled",
    ]


# --------------------------------------------------------------------------- events


def test_pause_and_resume_fire_their_events_with_the_job_as_written(make_app):
    events, configure = recorder(IJobPaused, IJobResumed, IJobScheduled)
    app = make_app(configure=configure)
    app.scheduler.add_interval_job("record", seconds=10, job_id="j")
    events.clear()
    paused = app.scheduler.pause_job("j")
    resumed = app.scheduler.resume_job("j")
    assert [type(event) for event in events] == [JobPaused, JobResumed]
    assert IJobPaused.providedBy(events[0]) and not IJobScheduled.providedBy(events[0])
    assert IJobResumed.providedBy(events[1])
    assert (events[0].job, events[0].registry) == (paused, app.registry)
    assert (events[1].job, events[1].registry) == (resumed, app.registry)


def test_queue_pause_and_resume_fire_their_events_with_the_queue_name(make_app):
    events, configure = recorder(IQueuePaused, IQueueResumed)
    app = make_app(configure=configure)
    app.scheduler.pause_queue("emails")
    app.scheduler.resume_queue("emails")
    app.scheduler.resume_queue("emails")
    assert [type(event) for event in events] == [QueuePaused, QueueResumed]
    assert [(event.name, event.registry) for event in events] == [
        ("emails", app.registry),
        ("emails", app.registry),
    ]
    assert IQueuePaused.providedBy(events[0]) and IQueueResumed.providedBy(events[1])


def test_retry_fires_job_scheduled(make_app):
    events, configure = recorder(IJobScheduled, IJobResumed)
    app = make_app(configure=configure)
    app.scheduler.add_date_job("record", app.start + seconds(60), job_id="j")
    retried = app.scheduler.retry_job("j")
    assert [type(event).__name__ for event in events] == ["JobScheduled", "JobScheduled"]
    assert events[1].job == retried


# --------------------------------------------------------------------------- run history query


def record(start, job_id, n, outcome="succeeded", task="record", queue="default"):
    """A run record of ``job_id`` started ``n`` seconds after ``start``."""
    at = start + seconds(n)
    return RunRecord(
        job_id=job_id,
        task=task,
        queue=queue,
        scheduled_at=at,
        started_at=at,
        finished_at=at + seconds(1),
        attempt=1,
        outcome=outcome,
    )


def test_get_runs_filters_newest_first_and_pages(app):
    start = app.start
    runs = [
        record(start, "a", 1),
        record(start, "b", 2, outcome="failed", task="fail"),
        record(start, "a", 3, outcome="lease_lost", queue="emails"),
        record(start, "c", 4, outcome="skipped"),
    ]
    app.repository.complete([], runs)
    scheduler = app.scheduler

    def ids(page):
        return [(run.job_id, run.outcome) for run in page]

    assert ids(scheduler.get_runs()) == [
        ("c", "skipped"),
        ("a", "lease_lost"),
        ("b", "failed"),
        ("a", "succeeded"),
    ]
    assert ids(scheduler.get_runs(job_id="a")) == [("a", "lease_lost"), ("a", "succeeded")]
    assert ids(scheduler.get_runs(task="fail")) == [("b", "failed")]
    assert ids(scheduler.get_runs(queue="emails")) == [("a", "lease_lost")]
    assert ids(scheduler.get_runs(outcome="failed")) == [("b", "failed")]
    assert ids(scheduler.get_runs(outcome=["failed", "lease_lost"])) == [
        ("a", "lease_lost"),
        ("b", "failed"),
    ]
    first = scheduler.get_runs(limit=3)
    assert len(first) == 3 and first.next_cursor is not None
    rest = scheduler.get_runs(limit=3, cursor=first.next_cursor)
    assert ids(rest) == [("a", "succeeded")] and rest.next_cursor is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcome": "done"}, "get_runs: outcome 'done' is not a run outcome"),
        ({"outcome": ["failed", "oops"]}, "get_runs: outcome 'oops' is not a run outcome"),
        ({"outcome": []}, "get_runs: outcome is empty"),
        ({"limit": 0}, "get_runs: limit must be a positive integer, got 0"),
        ({"limit": True}, "get_runs: limit must be a positive integer, got True"),
        ({"limit": "5"}, "get_runs: limit must be a positive integer, got '5'"),
        ({"queue": "a b"}, "get_runs: queue='a b'"),
        ({"job_id": 5}, "job_id must be a string"),
        ({"cursor": 5}, "get_runs: cursor must be the next_cursor"),
    ],
)
def test_get_runs_refuses_bad_input_naming_the_fix(app, kwargs, message):
    with pytest.raises(InvalidJobError) as excinfo:
        app.scheduler.get_runs(**kwargs)
    assert message in str(excinfo.value)


def test_get_runs_resolves_a_task_by_its_function_or_refuses_an_unknown_one(app):
    runs = [record(app.start, "a", 1, task="record"), record(app.start, "b", 2, task="fail")]
    app.repository.complete([], runs)
    func = app.scheduler.tasks.get("record").func
    assert [run.job_id for run in app.scheduler.get_runs(task=func)] == ["a"]
    with pytest.raises(UnknownTaskError):
        app.scheduler.get_runs(task="nope")


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_a_pause_in_a_request_is_written_and_announced_when_it_commits(tmp_path, clock, shared):
    import webtest
    from pyramid.response import Response

    from tests import txapp

    events = []

    def pause(request):
        request.scheduler.pause_job("j")
        assert events == []  # not before the commit
        if request.params.get("fail"):
            raise RuntimeError("the request fails")
        return Response("ok")

    config = txapp.configurator(tmp_path, shared=shared)
    config.add_pyncette_task(txapp.noop, name="noop")
    config.add_route("pause", "/pause")
    config.add_view(pause, route_name="pause")
    config.add_subscriber(events.append, IJobPaused)
    wsgi = config.make_wsgi_app()
    scheduler = wsgi.registry.scheduler
    scheduler.clock = clock
    try:
        scheduler.add_interval_job("noop", seconds=10, job_id="j")
        app = webtest.TestApp(wsgi)
        with pytest.raises(RuntimeError):
            app.get("/pause", {"fail": "1"})
        assert scheduler.get_job("j").state == "scheduled"
        assert events == []
        app.get("/pause")
        assert scheduler.get_job("j").state == "paused"
        assert [(type(event), event.job.id, event.job.state) for event in events] == [
            (JobPaused, "j", "paused")
        ]
    finally:
        scheduler.repository.close()
