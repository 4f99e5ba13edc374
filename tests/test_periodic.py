"""The lifecycle of periodic jobs, on every store, on a fake clock.

A periodic task (``@periodic_task``, or ``config.add_pyncette_task`` with
``schedule=`` / ``interval=``) owns one job, written when a daemon syncs.
These tests play several deploys of one application against one store: each
``deploy`` is a daemon (or a web process) running some version of the code.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import transaction

from pyramid_pyncette import InvalidJobError, PeriodicJobError
from pyramid_pyncette.options import PERIODIC_MARKER, declared_periodic, options_from_json
from pyramid_pyncette.policy import parked_for_unknown_task, revive_parked, unknown_task_error
from pyramid_pyncette.repository.rows import job_problem
from pyramid_pyncette.scheduler import Scheduler
from pyramid_pyncette.schedules import DateSchedule
from pyramid_pyncette.worker import Worker

SECOND = timedelta(seconds=1)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def noop(request):
    return "ran"


def deploy(make_app, *others, tasks=None):
    """An application over the same store as ``others`` (the first of them).

    Every store but memory is shared through its settings; a memory store
    lives in its process, so the new application is pointed at the first one's.
    """
    app = make_app(tasks=tasks)
    if others and app.registry.pyncette_settings.url.startswith("memory"):
        first = others[0]
        registry = app.registry
        registry.scheduler = Scheduler(
            registry, registry.pyncette_settings, repository=first.repository, clock=app.clock
        )
        app = dataclasses.replace(
            app, scheduler=registry.scheduler, worker=Worker(registry, clock=app.clock)
        )
    return app


def periodic(interval="30s", func=noop):
    return (func, {"interval": interval})


def job_ids(app):
    return sorted(job.id for job in app.scheduler.iter_jobs())


# --------------------------------------------------------------------------- the marker


def test_periodic_jobs_are_stored_marked_and_other_jobs_unchanged(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    plain = app.scheduler.add_interval_job("record", seconds=30, job_id="plain")

    stored = app.repository.get("tick")
    assert stored.options == {PERIODIC_MARKER: True}
    assert declared_periodic(stored.options)
    assert stored.problem is None
    assert app.repository.get("plain").options == plain.options == {}
    assert not declared_periodic(app.repository.get("plain").options)


def test_add_job_refuses_the_periodic_marker_as_an_option(app):
    with pytest.raises(InvalidJobError, match="unknown option 'periodic'"):
        app.scheduler.add_async_job("record", job_id="sneaky", periodic=True)
    assert job_ids(app) == []


@pytest.mark.parametrize("stored", [None, [], "x", {}, {"periodic": False}, {"periodic": 1}])
def test_declared_periodic_is_true_only_for_a_true_marker(stored):
    assert declared_periodic(stored) is False
    assert declared_periodic({"periodic": True}) is True


def test_a_garbage_marker_is_a_problem_of_that_job_only():
    options, problem = options_from_json({"periodic": "yes", "max_retries": 2})
    assert problem == "option periodic is 'yes', not true or false"
    assert options.max_retries == 2
    assert options_from_json({"periodic": True, "max_retries": 2}) == (options, None)


def test_a_job_with_a_garbage_marker_is_parked_and_the_others_run(make_app):
    app = make_app()
    now = app.clock()
    good = app.scheduler.build_job("record", DateSchedule(now), job_id="good")
    bad = good.replace(id="bad", options={PERIODIC_MARKER: "yes"})
    app.repository.add([bad, good])

    assert app.scheduler.sync_periodic_jobs() == []  # not removed, not fatal
    assert job_ids(app) == ["bad", "good"]
    assert "option periodic is 'yes'" in job_problem(app.scheduler.get_job("bad"))

    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["good"]
    parked = app.scheduler.get_job("bad")
    assert parked.state == "failed"
    assert "option periodic is 'yes'" in parked.last_error


def test_sync_replaces_a_periodic_job_whose_marker_is_garbage(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    stored = app.repository.get("tick")
    app.repository.add([stored.replace(options={PERIODIC_MARKER: "yes"})])

    [written] = app.scheduler.sync_periodic_jobs()

    healed = app.scheduler.get_job("tick")
    assert written.id == "tick"
    assert healed.problem is None
    assert healed.options == {PERIODIC_MARKER: True}


# --------------------------------------------------------------------------- cancel


def test_cancel_of_a_periodic_job_is_refused_and_writes_nothing(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    before = app.scheduler.get_job("tick")

    with pytest.raises(PeriodicJobError) as excinfo:
        app.scheduler.cancel_job("tick")

    assert isinstance(excinfo.value, InvalidJobError)
    message = str(excinfo.value)
    assert "cancel_job: job 'tick' is the job of the periodic task 'tick'" in message
    assert "remove that declaration from the code" in message
    assert app.scheduler.get_job("tick") == before
    assert job_ids(app) == ["tick"]


def test_cancel_of_a_periodic_job_through_a_transaction_is_refused_at_call_time(
    make_app, data_manager
):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    before = app.scheduler.get_job("tick")
    tm = transaction.TransactionManager(explicit=True)
    txn = tm.begin()
    txn.join(data_manager)
    bound = app.scheduler.bind(transaction_manager=tm)

    with pytest.raises(PeriodicJobError, match="remove that declaration from the code"):
        bound.cancel_job("tick")

    assert txn._resources == [data_manager]  # the store did not join the transaction
    tm.commit()
    assert data_manager.outcome == "commit"
    assert app.scheduler.get_job("tick") == before


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_cancel_of_a_periodic_job_in_a_request_is_refused_and_the_request_commits(
    tmp_path, clock, shared
):
    import webtest
    from pyramid.response import Response

    from tests import txapp

    seen = []

    def cancel(request):
        try:
            request.scheduler.cancel_job("tick")
        except PeriodicJobError as exc:
            seen.append(str(exc))
        request.scheduler.add_async_job("noop", job_id="after")  # the request goes on
        return Response("ok")

    config = txapp.configurator(tmp_path, shared=shared)
    config.add_pyncette_task(txapp.noop, name="noop")
    config.add_pyncette_task(noop, name="tick", interval="30s")
    config.add_route("cancel", "/cancel")
    config.add_view(cancel, route_name="cancel")
    wsgi = config.make_wsgi_app()
    scheduler = wsgi.registry.scheduler
    scheduler.clock = clock
    try:
        scheduler.sync_periodic_jobs()
        before = scheduler.get_job("tick")

        webtest.TestApp(wsgi).get("/cancel")

        assert len(seen) == 1
        assert "remove that declaration from the code" in seen[0]
        assert scheduler.get_job("tick") == before
        assert sorted(job.id for job in scheduler.iter_jobs()) == ["after", "tick"]
    finally:
        scheduler.repository.close()


def test_periodic_jobs_run_on_schedule_after_a_refused_cancel(make_app, tick):
    runs = []
    app = make_app(tasks={"tick": periodic("30s", lambda request: runs.append(request.job.id))})
    app.scheduler.sync_periodic_jobs()
    with pytest.raises(PeriodicJobError):
        app.scheduler.cancel_job("tick")

    assert tick(app, 90, step=5) == 3
    assert runs == ["tick"] * 3


def test_a_job_that_only_shares_a_periodic_tasks_name_can_be_cancelled(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.add_interval_job("record", seconds=30, job_id="tick")

    assert app.scheduler.cancel_job("tick") is True
    assert job_ids(app) == []


def test_cancel_of_a_missing_periodic_job_returns_false(make_app):
    app = make_app(tasks={"tick": periodic()})
    assert app.scheduler.cancel_job("tick") is False


def test_the_job_of_a_task_that_is_no_longer_periodic_can_be_cancelled(make_app):
    old = make_app(tasks={"tick": periodic()})
    old.scheduler.sync_periodic_jobs()
    new = deploy(make_app, old, tasks={"tick": noop})  # the same task, no schedule

    assert new.scheduler.cancel_job("tick") is True
    assert job_ids(old) == []


# --------------------------------------------------------------------------- removal


def test_sync_removes_the_job_of_a_periodic_task_no_longer_declared(make_app):
    old = make_app(tasks={"tick": periodic(), "tock": periodic("1m")})
    old.scheduler.sync_periodic_jobs()
    old.scheduler.add_interval_job("record", seconds=30, job_id="ordinary")
    new = deploy(make_app, old, tasks={"tock": periodic("1m")})

    assert new.scheduler.sync_periodic_jobs() == []

    assert job_ids(new) == ["ordinary", "tock"]


def test_sync_removes_the_job_of_a_task_that_became_a_plain_task(make_app):
    old = make_app(tasks={"tick": periodic()})
    old.scheduler.sync_periodic_jobs()
    new = deploy(make_app, old, tasks={"tick": noop})

    new.scheduler.sync_periodic_jobs()

    assert job_ids(new) == []


def test_sync_keeps_unmarked_jobs_of_unknown_tasks(make_app):
    old = make_app(tasks={"tick": periodic(), "other": noop})
    old.scheduler.sync_periodic_jobs()
    old.scheduler.add_interval_job("other", seconds=30, job_id="other-job")
    # A periodic job written before the marker existed.
    stored = old.repository.get("tick")
    old.repository.add([stored.replace(options={})])
    new = deploy(make_app, old)  # knows neither task

    new.scheduler.sync_periodic_jobs()

    assert job_ids(new) == ["other-job", "tick"]


def test_sync_marks_an_unmarked_periodic_job_and_keeps_its_next_run(make_app):
    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    stored = app.repository.get("tick")
    app.repository.add([stored.replace(options={})])
    app.clock.advance(10)

    [written] = app.scheduler.sync_periodic_jobs()

    marked = app.scheduler.get_job("tick")
    assert written.id == "tick"
    assert marked.options == {PERIODIC_MARKER: True}
    assert marked.next_run_at == stored.next_run_at == app.start + seconds(30)
    assert app.scheduler.sync_periodic_jobs() == []


def test_an_older_daemon_adds_a_removed_periodic_job_back_at_its_sync(make_app, tick):
    runs = []
    old = make_app(tasks={"tick": periodic("30s", lambda request: runs.append(request.job.id))})
    new = deploy(make_app, old)
    old.scheduler.sync_periodic_jobs()

    new.scheduler.sync_periodic_jobs()
    assert job_ids(old) == []
    old.scheduler.sync_periodic_jobs()  # the older code still declares it
    assert job_ids(old) == ["tick"]
    new.scheduler.sync_periodic_jobs()  # the newest code wins once the old daemons are gone
    assert job_ids(old) == []
    assert tick(old, 90, step=5) == 0
    assert runs == []


def test_a_removed_periodic_job_stops_running(make_app, tick):
    runs = []
    old = make_app(tasks={"tick": periodic("30s", lambda request: runs.append(request.job.id))})
    old.scheduler.sync_periodic_jobs()
    assert tick(old, 60, step=5) == 2
    new = deploy(make_app, old)

    new.scheduler.sync_periodic_jobs()

    assert tick(new, 120, step=5) == 0
    assert runs == ["tick", "tick"]


# --------------------------------------------------------------------------- revival


def test_unknown_task_parking_is_recognised_only_for_that_reason(make_app):
    app = make_app()
    job = app.scheduler.build_job("record", DateSchedule(app.clock()), job_id="j")
    parked = job.replace(
        due_at=None,
        next_run_at=None,
        attempts=1,
        last_status="failed",
        last_error=unknown_task_error("record", "j"),
    )
    assert parked_for_unknown_task(parked)
    assert not parked_for_unknown_task(parked.replace(last_error="boom"))
    assert not parked_for_unknown_task(parked.replace(due_at=app.clock()))  # not parked
    assert not parked_for_unknown_task(parked.replace(id="other"))  # another job's text
    assert not parked_for_unknown_task(job)


def test_revive_parked_puts_a_job_back_on_its_schedule(app):
    now = app.clock()
    one_off = app.scheduler.build_job("record", DateSchedule(now - seconds(60)), job_id="late")
    future = app.scheduler.build_job("record", DateSchedule(now + seconds(60)), job_id="later")
    recurring = app.scheduler.add_interval_job("record", seconds=30, job_id="every")
    parked = {"due_at": None, "next_run_at": None, "attempts": 3, "last_error": "x"}
    app.clock.advance(100)
    now = app.clock()

    late = revive_parked(one_off.replace(**parked), now)
    later = revive_parked(future.replace(**parked), now - seconds(100))
    every = revive_parked(recurring.replace(**parked), now)

    assert (late.due_at, late.next_run_at, late.attempts, late.last_error) == (now, now, 0, None)
    assert later.due_at == later.next_run_at == app.start + seconds(60)
    # Anchored at the add, every 30 s: the first run after 100 s is at 120 s.
    assert every.due_at == every.next_run_at == app.start + seconds(120)
    assert every.attempts == 0


def test_a_job_parked_for_an_unknown_task_is_revived_by_a_daemon_that_knows_it(make_app, tick):
    runs = []
    record = (lambda request: runs.append(request.job.id), {})
    new = make_app(tasks={"fresh": record})
    old = deploy(make_app, new)  # an older daemon, without the task "fresh"
    new.scheduler.add_async_job("fresh", job_id="once")
    new.scheduler.add_interval_job("fresh", seconds=30, job_id="every")
    new.clock.advance(30)

    assert old.run_pending() == 2  # claimed, parked: old knows no task "fresh"
    for job_id in ("once", "every"):
        parked = old.scheduler.get_job(job_id)
        assert parked.state == "failed"
        assert parked.last_error == unknown_task_error("fresh", job_id)
    assert runs == []
    new.clock.advance(50)  # 80 s after the start

    assert new.scheduler.sync_periodic_jobs() == []  # it returns periodic jobs only

    once, every = new.scheduler.get_job("once"), new.scheduler.get_job("every")
    assert (once.state, once.next_run_at, once.attempts, once.last_error) == (
        "scheduled",
        new.clock(),
        0,
        None,
    )
    assert (every.state, every.next_run_at, every.attempts, every.last_error) == (
        "scheduled",
        new.start + seconds(90),
        0,
        None,
    )
    assert new.run_pending() == 1
    assert tick(new, 60, step=5) == 2  # at 90 s and 120 s
    assert runs == ["once", "every", "every"]


def test_a_periodic_job_parked_by_an_older_daemon_is_revived_at_the_next_sync(make_app, tick):
    runs = []
    new = make_app(tasks={"tick": periodic("30s", lambda request: runs.append(request.job.id))})
    old = deploy(make_app, new)
    new.scheduler.sync_periodic_jobs()
    new.clock.advance(30)
    assert old.run_pending() == 1
    assert old.scheduler.get_job("tick").state == "failed"
    new.clock.advance(15)  # 45 s after the start

    [revived] = new.scheduler.sync_periodic_jobs()

    assert revived.id == "tick"
    stored = new.scheduler.get_job("tick")
    assert stored.options == {PERIODIC_MARKER: True}
    assert (stored.state, stored.next_run_at) == ("scheduled", new.start + seconds(60))
    assert tick(new, 60, step=5) == 2  # at 60 s and 90 s (until 105 s)
    assert runs == ["tick", "tick"]


def test_jobs_parked_for_other_reasons_stay_parked(make_app):
    app = make_app()
    app.scheduler.add_async_job("fail", job_id="broken", max_retries=0)
    assert app.run_pending() == 1
    assert app.scheduler.get_job("broken").state == "failed"

    assert app.scheduler.sync_periodic_jobs() == []

    assert app.scheduler.get_job("broken").state == "failed"
    assert app.run_pending() == 0


def test_a_job_parked_for_an_unknown_task_stays_parked_where_the_task_is_unknown(make_app):
    new = make_app(tasks={"fresh": noop})
    old = deploy(make_app, new)
    new.scheduler.add_async_job("fresh", job_id="once")
    assert old.run_pending() == 1

    assert old.scheduler.sync_periodic_jobs() == []

    assert old.scheduler.get_job("once").state == "failed"
    assert old.run_pending() == 0


def test_a_job_parked_for_an_unknown_task_with_an_unreadable_row_stays_parked(make_app):
    app = make_app(tasks={"fresh": noop})
    job = app.scheduler.build_job("fresh", DateSchedule(app.clock()), job_id="odd")
    parked = job.replace(
        options={"max_retries": "lots"},
        due_at=None,
        next_run_at=None,
        attempts=1,
        last_status="failed",
        last_error=unknown_task_error("fresh", "odd"),
    )
    app.repository.add([parked])
    assert job_problem(app.scheduler.get_job("odd")) is not None

    assert app.scheduler.sync_periodic_jobs() == []

    assert app.scheduler.get_job("odd").state == "failed"
    assert app.run_pending() == 0


def test_a_store_offers_sync_every_parked_job_and_every_job_named_after_its_task(make_app):
    from pyramid_pyncette.repository.sql import SQLRepository

    app = make_app(tasks={"tick": periodic()})
    app.scheduler.sync_periodic_jobs()
    app.scheduler.add_interval_job("record", seconds=30, job_id="ordinary")
    app.scheduler.add_interval_job("record", seconds=30, job_id="parked")
    app.repository.add([app.repository.get("parked").replace(due_at=None)])

    offered, cursor = [], None
    while True:  # one job a page: the cursor must carry the filter along
        page = app.repository.list_for_sync(cursor=cursor, limit=1)
        offered.extend(job.id for job in page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert {"tick", "parked"} <= set(offered)
    assert offered == sorted(offered)
    if isinstance(app.repository, SQLRepository):
        assert offered == ["parked", "tick"]
    else:
        assert offered == ["ordinary", "parked", "tick"]
