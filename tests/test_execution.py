import asyncio
from datetime import datetime, timedelta, timezone

import pytest

UTC = timezone.utc
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class DummyDataManager:
    """A transaction data manager that records the calls it gets."""

    def __init__(self, log=None, vote_error=None):
        self.calls = [] if log is None else log
        self.vote_error = vote_error
        self.transaction_manager = None
        self.writes = []

    def write(self, value):
        self.writes.append(value)

    def abort(self, txn):
        self.calls.append("abort")

    def tpc_begin(self, txn):
        self.calls.append("tpc_begin")

    def commit(self, txn):
        self.calls.append("commit")

    def tpc_vote(self, txn):
        self.calls.append("tpc_vote")
        if self.vote_error is not None:
            raise self.vote_error

    def tpc_finish(self, txn):
        self.calls.append("tpc_finish")

    def tpc_abort(self, txn):
        self.calls.append("tpc_abort")

    def sortKey(self):
        return f"dummy-{id(self)}"


COMMITTED = ["tpc_begin", "commit", "tpc_vote", "tpc_finish"]


class VoteError(Exception):
    pass


def _dbsession(request):
    """Like a cookiecutter ``request.dbsession``: built from ``request.tm``."""
    session = DummyDataManager(log=request.registry.dm_calls)
    request.tm.get().join(session)
    request.registry.sessions.append(session)
    return session


def _job_app(config):
    """Add routes, a cookiecutter-like ``request.dbsession``, a run-event recorder, a fake clock."""
    from pyramid_pyncette import IJobFailed, IJobStarted, IJobSucceeded
    from pyramid_pyncette.testing import FakeClock

    config.commit()  # builds registry.scheduler, whose clock is set below
    config.add_route("home", "/")
    config.add_route("report", "/reports/{day}")
    config.add_request_method(_dbsession, "dbsession", reify=True)
    registry = config.registry
    registry.dm_calls = []
    registry.sessions = []
    registry.run_events = []
    for iface in (IJobStarted, IJobSucceeded, IJobFailed):
        config.add_subscriber(registry.run_events.append, iface)
    registry.scheduler.clock = FakeClock(NOW)
    return config


@pytest.fixture
def config(make_config):
    return _job_app(
        make_config({"pyncette.url": "memory://", "pyncette.base_url": "https://example.com"})
    )


def _run_now(config, func, args=None, kwargs=None, **options):
    """Register ``func``, add a job due now, run what is due; return (job, runs)."""
    from pyramid_pyncette.testing import run_pending

    config.add_pyncette_task(func)
    config.commit()
    scheduler = config.registry.scheduler
    job = scheduler.add_async_job(func, args=args, kwargs=kwargs, **options)
    runs = run_pending(config.registry, scheduler.now())
    return job, runs


def _events(config, kind):
    return [event for event in config.registry.run_events if type(event).__name__ == kind]


# --------------------------------------------------------------------------- the call


def test_job_is_called_with_a_request_then_its_arguments(config):
    from pyramid.request import Request

    calls = []

    def job(request, *args, **kwargs):
        calls.append((request, args, kwargs))

    _, runs = _run_now(config, job, args=[1, "two"], kwargs={"three": [3]})
    assert runs == 1
    [(request, args, kwargs)] = calls
    assert isinstance(request, Request)
    assert request.registry is config.registry
    assert args == (1, "two")
    assert kwargs == {"three": [3]}


def test_job_request_comes_from_the_app_request_factory(config):
    from pyramid.request import Request

    class AppRequest(Request):
        pass

    config.set_request_factory(AppRequest)
    seen = []
    _run_now(config, seen.append)
    assert isinstance(seen[0], AppRequest)


def test_job_request_describes_the_run(config):
    infos = []

    def job(request, day):
        infos.append(request.job)

    job_row, _ = _run_now(config, job, args=["monday"])
    [info] = infos
    assert info.id == job_row.id
    assert info.task == job_row.task
    assert info.scheduled_at == NOW
    assert info.attempt == 1
    assert info.args == ["monday"]
    assert info.kwargs == {}


def test_successful_one_off_job_is_removed(config):
    job, runs = _run_now(config, lambda request: None)
    assert runs == 1
    assert config.registry.scheduler.get_job(job.id) is None


# --------------------------------------------------------------------------- request extensions


def test_reified_request_method_works_inside_the_job(config):
    seen = []

    def job(request):
        request.dbsession.write("row")
        seen.append(request.dbsession is request.dbsession)

    _run_now(config, job)
    assert seen == [True]
    [session] = config.registry.sessions
    assert session.writes == ["row"]
    assert config.registry.dm_calls == COMMITTED


def test_route_url_uses_the_base_url_setting(config):
    urls = []

    def job(request):
        urls.append(request.route_url("home"))
        urls.append(request.route_url("report", day="monday"))

    _run_now(config, job)
    assert urls == ["https://example.com/", "https://example.com/reports/monday"]


def test_route_url_defaults_to_localhost(make_config):
    config = _job_app(make_config())
    urls = []
    _run_now(config, lambda request: urls.append(request.route_url("home")))
    assert urls == ["http://localhost/"]


def test_base_url_with_a_port(make_config):
    config = _job_app(
        make_config(
            {"pyncette.url": "memory://", "pyncette.base_url": "http://jobs.example.com:6543"}
        )
    )
    urls = []
    _run_now(config, lambda request: urls.append(request.route_url("home")))
    assert urls == ["http://jobs.example.com:6543/"]


# --------------------------------------------------------------------------- transactions


def test_request_tm_is_an_explicit_manager_per_job(config):
    import transaction

    from pyramid_pyncette.testing import run_pending

    managers = []

    def job(request):
        managers.append(request.tm)
        request.tm.get()  # a transaction is active (explicit managers raise otherwise)

    config.add_pyncette_task(job)
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_async_job(job)
    scheduler.add_async_job(job)
    assert run_pending(config.registry, NOW) == 2
    first, second = managers
    assert isinstance(first, transaction.TransactionManager)
    assert first.explicit
    assert second.explicit
    assert first is not second
    assert first is not transaction.manager
    assert second is not transaction.manager


def test_request_tm_stays_per_job_with_pyramid_tm_included(config):
    import transaction

    config.include("pyramid_tm")
    managers = []
    _run_now(config, lambda request: managers.append(request.tm))
    [manager] = managers
    assert manager is not transaction.manager
    assert manager.explicit


def test_data_manager_commits_when_the_job_returns(config):
    calls = []

    def job(request):
        request.tm.get().join(DummyDataManager(log=calls))
        return "ok"

    _run_now(config, job)
    assert calls == COMMITTED
    [succeeded] = _events(config, "JobSucceeded")
    assert succeeded.result == "ok"
    assert _events(config, "JobFailed") == []


def test_data_manager_aborts_when_the_job_raises(config):
    calls = []

    def job(request):
        request.tm.get().join(DummyDataManager(log=calls))
        raise RuntimeError("boom")

    job_row, runs = _run_now(config, job)
    assert runs == 1
    assert calls == ["abort"]
    stored = config.registry.scheduler.get_job(job_row.id)
    assert stored.last_status == "failed"
    assert "RuntimeError: boom" in stored.last_error
    assert _events(config, "JobSucceeded") == []


def test_failed_commit_marks_the_run_failed(config):
    calls = []
    error = VoteError("database said no")

    def job(request):
        request.tm.get().join(DummyDataManager(log=calls, vote_error=error))
        return "looked fine"

    job_row, _ = _run_now(config, job)
    assert "tpc_abort" in calls
    assert "tpc_finish" not in calls
    [failed] = _events(config, "JobFailed")
    assert failed.exception is error
    assert _events(config, "JobSucceeded") == []
    stored = config.registry.scheduler.get_job(job_row.id)
    assert stored.last_status == "failed"
    assert "database said no" in stored.last_error


def test_dbsession_write_is_aborted_when_the_job_raises(config):
    def job(request):
        request.dbsession.write("row")
        raise ValueError("bad data")

    _run_now(config, job)
    assert config.registry.dm_calls == ["abort"]


# --------------------------------------------------------------------------- threadlocals


def test_current_request_inside_the_job_is_the_job_request(config):
    from pyramid.threadlocal import get_current_registry, get_current_request

    seen = []

    def job(request):
        seen.append((request, get_current_request(), get_current_registry()))

    _run_now(config, job)
    [(request, current, registry)] = seen
    assert current is request
    assert registry is config.registry


def test_current_request_is_popped_after_the_job(config):
    from pyramid.threadlocal import get_current_registry, get_current_request

    before = (get_current_request(), get_current_registry())
    _run_now(config, lambda request: None)
    assert (get_current_request(), get_current_registry()) == before


def test_current_request_is_popped_after_a_failing_job(config):
    from pyramid.threadlocal import get_current_request

    before = get_current_request()

    def job(request):
        raise RuntimeError("boom")

    _run_now(config, job)
    assert get_current_request() is before


# --------------------------------------------------------------------------- finished callbacks


def test_finished_callbacks_run_after_the_job_and_its_commit(config):
    log = []

    def job(request):
        request.tm.get().join(DummyDataManager(log=log))
        request.add_finished_callback(lambda req: log.append(("finished", req)))
        log.append(("job", request))

    _run_now(config, job)
    request = log[0][1]
    assert log == [("job", request), *COMMITTED, ("finished", request)]


def test_finished_callbacks_run_when_the_job_raises(config):
    log = []

    def job(request):
        request.add_finished_callback(lambda req: log.append("finished"))
        raise RuntimeError("boom")

    _run_now(config, job)
    assert log == ["finished"]


def test_failing_finished_callback_does_not_change_the_outcome(config):
    def broken(request):
        raise RuntimeError("callback broke")

    def job(request):
        request.add_finished_callback(broken)
        return "done"

    job_row, runs = _run_now(config, job)
    assert runs == 1
    assert [event.result for event in _events(config, "JobSucceeded")] == ["done"]
    assert config.registry.scheduler.get_job(job_row.id) is None


# --------------------------------------------------------------------------- async tasks


def test_async_task_is_awaited(config):
    seen = []

    async def job(request, value):
        await asyncio.sleep(0)
        seen.append(value)
        return value * 2

    _, runs = _run_now(config, job, args=[21])
    assert runs == 1
    assert seen == [21]
    [succeeded] = _events(config, "JobSucceeded")
    assert succeeded.result == 42


def test_async_task_runs_in_the_job_transaction(config):
    calls = []

    async def job(request):
        request.tm.get().join(DummyDataManager(log=calls))
        await asyncio.sleep(0)

    _run_now(config, job)
    assert calls == COMMITTED


def test_async_task_that_raises_fails_the_run(config):
    calls = []

    async def job(request):
        request.tm.get().join(DummyDataManager(log=calls))
        await asyncio.sleep(0)
        raise KeyError("missing")

    _run_now(config, job)
    assert calls == ["abort"]
    [failed] = _events(config, "JobFailed")
    assert isinstance(failed.exception, KeyError)


def test_scanned_async_task_runs(config):
    from pyramid_pyncette.testing import run_pending

    config.scan("tests.scanpkg.sub")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_async_job("tests.scanpkg.sub.reports:build_report", args=["monday"])
    assert run_pending(config.registry, NOW) == 1
    [succeeded] = _events(config, "JobSucceeded")
    assert succeeded.result == "report for monday"


# --------------------------------------------------------------------------- events


def test_run_events_carry_job_request_schedule_and_attempt(config):
    from pyramid_pyncette import IJobStarted, IJobSucceeded
    from pyramid_pyncette.testing import run_pending

    requests = []

    def job(request):
        requests.append(request)
        return "result"

    config.add_pyncette_task(job)
    config.commit()
    scheduler = config.registry.scheduler
    due = NOW - timedelta(minutes=3)
    job_row = scheduler.add_date_job(job, due)
    assert run_pending(config.registry, NOW) == 1
    started, succeeded = config.registry.run_events
    assert IJobStarted.providedBy(started)
    assert IJobSucceeded.providedBy(succeeded)
    [request] = requests
    for event in (started, succeeded):
        assert event.job.id == job_row.id
        assert event.job.task == job_row.task
        assert event.request is request
        assert event.registry is config.registry
        assert event.scheduled_at == due
        assert event.attempt == 1
    assert succeeded.result == "result"
    assert succeeded.duration >= 0


def test_job_started_fires_inside_the_transaction_before_the_call(config):
    from pyramid_pyncette import IJobStarted

    order = []

    def on_started(event):
        order.append("started")
        event.request.tm.get()  # the job transaction is already open

    def job(request):
        order.append("job")

    config.add_subscriber(on_started, IJobStarted)
    _run_now(config, job)
    assert order == ["started", "job"]


def test_job_failed_carries_the_exception_and_the_attempt(config):
    from pyramid_pyncette import IJobFailed
    from pyramid_pyncette.testing import run_pending

    error = RuntimeError("boom")

    def job(request):
        raise error

    config.add_pyncette_task(job)
    config.commit()
    scheduler = config.registry.scheduler
    due = NOW - timedelta(seconds=10)
    job_row = scheduler.add_date_job(job, due, failure_mode="unlock")
    assert run_pending(config.registry, NOW) == 1
    assert run_pending(config.registry, NOW + timedelta(seconds=1)) == 1
    failures = _events(config, "JobFailed")
    assert [event.attempt for event in failures] == [1, 2]
    for event in failures:
        assert IJobFailed.providedBy(event)
        assert event.exception is error
        assert event.job.id == job_row.id
        assert event.scheduled_at == due
        assert event.request.registry is config.registry
        assert event.duration >= 0
    assert len(_events(config, "JobStarted")) == 2


def test_raising_subscriber_does_not_stop_the_job(config):
    from pyramid_pyncette import IJobStarted

    def broken(event):
        raise RuntimeError("subscriber broke")

    config.add_subscriber(broken, IJobStarted)
    ran = []
    _, runs = _run_now(config, lambda request: ran.append(True))
    assert runs == 1
    assert ran == [True]
    assert len(_events(config, "JobSucceeded")) == 1


def test_each_run_gets_a_new_request(config):
    from pyramid_pyncette.testing import run_pending

    requests = []
    config.add_pyncette_task(requests.append, name="collect")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_interval_job("collect", "1m")
    assert run_pending(config.registry, NOW + timedelta(minutes=1)) == 1
    assert run_pending(config.registry, NOW + timedelta(minutes=2)) == 1
    first, second = requests
    assert first is not second
    assert first.tm is not second.tm


def test_reified_values_and_request_methods_belong_to_their_own_run(config):
    from pyramid_pyncette.testing import run_pending

    seen = []

    def job(request):
        seen.append((request, request.dbsession, request.whoami()))

    config.add_request_method(lambda request: id(request), "whoami")
    config.add_pyncette_task(job, name="job")
    config.commit()
    config.registry.scheduler.add_interval_job("job", "1m")
    run_pending(config.registry, NOW + timedelta(minutes=1))
    run_pending(config.registry, NOW + timedelta(minutes=2))
    (first, first_session, first_id), (second, second_session, second_id) = seen
    assert first_session is not second_session
    assert (first_id, second_id) == (id(first), id(second))
    assert "dbsession" in type(first).__dict__  # the property sits on the class...
    assert first.__dict__["dbsession"] is first_session  # ...and its value on the instance


def test_a_request_factory_that_is_a_plain_function_is_used(config):
    from pyramid.request import Request

    made = []

    def factory(environ):
        request = Request(environ)
        made.append(request)
        return request

    config.set_request_factory(factory)
    seen = []
    _run_now(config, seen.append)
    assert made and seen[0] is made[0]
    assert seen[0].path == "/" and seen[0].host_url == "https://example.com"


# --------------------------------------------------------------------------- run records


def _traceback_of(exc):
    import traceback

    try:
        raise exc
    except Exception:
        return traceback.format_exc()


def test_run_error_puts_a_tracebacks_exception_first():
    from pyramid_pyncette.execution import run_error

    text = _traceback_of(ValueError("bad value\nsecond line of it"))
    lines = text.splitlines()

    error = run_error(text)

    assert error.splitlines()[:2] == ["ValueError: bad value", "second line of it"]
    assert error.splitlines()[2:] == lines[:-2]


def test_run_error_keeps_a_short_error_as_it_is():
    from pyramid_pyncette.execution import run_error

    assert run_error("the task 'x' is unknown\nregister it") == (
        "the task 'x' is unknown\nregister it"
    )


def test_run_error_keeps_whole_first_lines_within_the_limit_and_marks_the_cut():
    from pyramid_pyncette.execution import run_error

    text = "\n".join(f"line {n:02d}" for n in range(10))  # 7 characters a line

    assert run_error(text, limit=30) == "line 00\nline 01\nline 02\n..."
    assert len(run_error(text, limit=30)) <= 30
    assert run_error("x" * 50, limit=20) == "x" * 17 + "..."


def test_run_error_is_bounded_by_max_run_error_length_by_default():
    from pyramid_pyncette.execution import run_error
    from pyramid_pyncette.jobs import MAX_RUN_ERROR_LENGTH

    text = _traceback_of(RuntimeError("boom " * 2000))

    error = run_error(text)

    assert len(error) == MAX_RUN_ERROR_LENGTH
    assert error.startswith("RuntimeError: boom boom")


def test_a_lease_taken_over_at_commit_marks_the_run_lost_and_is_not_logged_as_a_failure(
    config, caplog
):
    import logging

    from pyramid_pyncette.execution import JobInfo, LeaseTakenOver, run_job

    def taken(request):
        raise LeaseTakenOver("lost before it could commit")

    config.add_pyncette_task(taken, name="taken")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.add_async_job("taken", job_id="taken")
    (lease,) = scheduler.repository.claim(scheduler.now(), 1, "token", 60)
    info = JobInfo.for_lease(lease)

    with caplog.at_level(logging.DEBUG, logger="pyramid_pyncette.execution"):
        outcome = run_job(config.registry, scheduler.tasks.get("taken"), lease, scheduler.now, info)

    assert info.lease_lost
    assert not outcome.succeeded
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
