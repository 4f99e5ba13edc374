"""``request.scheduler`` and the request's transaction, end to end through real requests.

Every app here is a small Pyramid application (see :mod:`tests.txapp`): pyramid_tm, an app
database in a SQLite file reached through zope.sqlalchemy, and pyramid_pyncette with its
job store in another SQLite file (or, in the shared-database tests, in the same one).
"""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.httpexceptions import HTTPBadRequest
from pyramid.response import Response
from pyramid.scripting import prepare
from transaction.interfaces import TransientError

from pyramid_pyncette import IJobScheduled, NoTransactionError, StoreUnavailable
from pyramid_pyncette.pshell import setup as pshell_setup
from pyramid_pyncette.testing import RecordingScheduler, run_pending
from pyramid_pyncette.transaction import StagingDataManager
from pyramid_pyncette.worker import Worker
from tests import txapp
from tests.txapp import CommitFailed, Note, SavepointResource, VoteFailure, calls_of, note_bodies

EXPLICIT = "pyramid_tm.explicit_manager"

# pyramid_tm's two kinds of request.tm: one explicit manager per request (the cookiecutter
# setting), or the thread-local transaction.manager (pyramid_tm's default).
MANAGERS = pytest.mark.parametrize(
    "manager_hook", [EXPLICIT, None], ids=["explicit", "threadlocal"]
)


@pytest.fixture(params=["sqlite", "postgresql"])
def build(request, tmp_path, clock):
    """``build(views, tasks=..., configure=..., **configurator options) -> (TestApp, registry)``.

    ``views`` maps a route name (also its path) to a view callable; ``tasks`` maps task names
    to functions or ``(function, directive keywords)``. The task ``noop`` is always there.
    Each app gets its own folder, so a test may build several. Every test runs twice: with
    SQLite files, and with PostgreSQL as the app database and the store (fresh databases).
    """
    server = request.getfixturevalue("postgresql_server") if request.param != "sqlite" else None
    registries = []
    folders = itertools.count()

    def factory(views=None, tasks=None, configure=None, **options):
        folder = tmp_path / f"app{next(folders)}"
        folder.mkdir()
        if server is not None:
            app_url = server.create_database()
            options.setdefault("sqlalchemy.url", app_url)
            shared = options.get("shared", False)
            options.setdefault("pyncette.url", app_url if shared else server.create_database())
        config = txapp.configurator(folder, **options)
        config.add_pyncette_task(txapp.noop, name="noop")
        for name, spec in (tasks or {}).items():
            func, keywords = spec if isinstance(spec, tuple) else (spec, {})
            config.add_pyncette_task(func, name=name, **keywords)
        for name, view in (views or {}).items():
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name)
        if configure is not None:
            configure(config)
        wsgi = config.make_wsgi_app()
        registry = wsgi.registry
        registries.append(registry)
        registry.scheduler.clock = clock
        # Created before any request (this also creates the table); time is the fake clock's.
        registry.scheduler.repository.store_clock = False
        return webtest.TestApp(wsgi), registry

    yield factory

    for registry in registries:
        registry.scheduler.repository.close()
        registry.txapp_engine.dispose()


def job_ids(registry) -> list[str]:
    return sorted(job.id for job in registry.scheduler.iter_jobs())


def noop_calls(registry) -> list[tuple]:
    return [call for call in calls_of(registry) if call[0] == "noop"]


# --------------------------------------------------------------------------- commit and run


@MANAGERS
def test_job_added_in_a_view_is_stored_after_the_response_and_the_worker_runs_it(
    build, manager_hook
):
    seen = []

    def schedule(request):
        job = request.scheduler.add_async_job("noop", args=["hello"])
        seen.append(request.registry.scheduler.get_job(job.id))
        return Response(job.id)

    app, registry = build({"schedule": schedule}, **{"tm.manager_hook": manager_hook})
    job_id = app.post("/schedule").text

    assert seen == [None], "the job must not be written before the transaction commits"
    stored = registry.scheduler.get_job(job_id)
    assert stored is not None
    assert stored.task == "noop"
    assert stored.args == ["hello"]

    assert Worker(registry).run_pending() == 1
    assert noop_calls(registry) == [("noop", job_id, "hello")]
    assert registry.scheduler.get_job(job_id) is None
    assert Worker(registry).run_pending() == 0


# --------------------------------------------------------------------------- abort


def test_view_that_raises_after_scheduling_leaves_no_job_and_no_row(build):
    def schedule_then_fail(request):
        request.dbsession.add(Note(body="lost"))
        request.scheduler.add_async_job("noop", job_id="doomed")
        raise RuntimeError("the view failed")

    app, registry = build({"fail": schedule_then_fail})
    with pytest.raises(RuntimeError, match="the view failed"):
        app.post("/fail")

    assert job_ids(registry) == []
    assert note_bodies(registry) == []


def test_view_that_raises_an_http_exception_after_scheduling_leaves_no_job(build):
    def schedule_then_reject(request):
        request.scheduler.add_async_job("noop", job_id="doomed")
        raise HTTPBadRequest()

    app, registry = build({"reject": schedule_then_reject})
    app.post("/reject", status=400)

    assert job_ids(registry) == []


def test_returned_4xx_response_leaves_no_job_with_the_default_commit_veto(build):
    def schedule(request):
        status = request.params["status"]
        request.scheduler.add_async_job("noop", job_id=f"job-{status}")
        return HTTPBadRequest() if status == "400" else Response("ok")

    app, registry = build(
        {"schedule": schedule}, **{"tm.commit_veto": "pyramid_tm.default_commit_veto"}
    )
    app.post("/schedule", {"status": "400"}, status=400)
    app.post("/schedule", {"status": "200"}, status=200)

    assert job_ids(registry) == ["job-200"]


def test_returned_4xx_response_commits_the_job_without_a_commit_veto(build):
    """pyramid_tm only aborts on a raised exception unless ``tm.commit_veto`` is set: a 4xx
    response that the view *returns* commits, and so do the jobs it scheduled."""

    def schedule(request):
        request.scheduler.add_async_job("noop", job_id="kept")
        return HTTPBadRequest()

    app, registry = build({"schedule": schedule})
    app.post("/schedule", status=400)

    assert job_ids(registry) == ["kept"]


# --------------------------------------------------------------------------- lazy join


def test_request_that_schedules_nothing_joins_no_data_manager(build, monkeypatch):
    created = []
    original = StagingDataManager.__init__

    def counting(self, *args, **kwargs):
        created.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(StagingDataManager, "__init__", counting)

    def idle(request):
        # Using the bound scheduler for reads must not join the transaction either.
        assert request.scheduler.get_job("missing") is None
        return Response("idle")

    def busy(request):
        request.scheduler.add_async_job("noop", job_id="one")
        request.scheduler.add_async_job("noop", job_id="two")
        request.scheduler.cancel_job("one")
        return Response("busy")

    app, registry = build({"idle": idle, "busy": busy})
    app.get("/idle")
    assert created == []

    app.post("/busy")
    assert len(created) == 1, "one data manager per transaction, however many writes"
    assert job_ids(registry) == ["two"]


# --------------------------------------------------------------------------- no transaction


def test_request_scheduler_without_pyramid_tm_raises_no_transaction_error(build):
    def schedule(request):
        try:
            request.scheduler.add_async_job("noop", job_id="never")
        except NoTransactionError as exc:
            return Response(str(exc))
        return Response("scheduled")

    app, registry = build({"schedule": schedule}, tm=False)
    message = app.post("/schedule").text

    assert "pyramid_tm" in message
    assert "registry.scheduler" in message
    assert job_ids(registry) == []


def test_request_scheduler_never_begins_the_thread_local_transaction(build):
    """An app without pyramid_tm whose ``request.tm`` is the thread-local
    ``transaction.manager``: scheduling raises instead of silently beginning a transaction
    that the next, unrelated commit in this thread would carry."""

    def configure(config):
        config.add_request_method(lambda request: transaction.manager, "tm", reify=True)

    def schedule(request):
        with pytest.raises(NoTransactionError):
            request.scheduler.add_async_job("noop", job_id="leaked")
        return Response("ok")

    app, registry = build({"schedule": schedule}, configure=configure, tm=False)
    try:
        app.post("/schedule")
        transaction.commit()  # whatever the thread commits next must not carry the job
    finally:
        transaction.abort()

    assert job_ids(registry) == []


def test_request_scheduler_in_a_script_needs_the_transaction_begun(build):
    """A script's request (``pyramid.scripting.prepare``) with pyramid_tm's default
    ``request.tm`` (the thread-local manager): no implicit transaction, then
    ``with request.tm:`` writes on exit."""
    _app, registry = build({}, **{"tm.manager_hook": None})
    env = prepare(registry=registry)
    try:
        request = env["request"]
        with pytest.raises(NoTransactionError):
            request.scheduler.add_async_job("noop", job_id="outside")
        with request.tm:
            request.scheduler.add_async_job("noop", job_id="inside")
    finally:
        transaction.abort()
        env["closer"]()

    assert job_ids(registry) == ["inside"]


# --------------------------------------------------------------------------- savepoints


def test_savepoint_rollback_discards_only_the_jobs_added_after_it(build):
    seen = {}

    def schedule(request):
        scheduler = request.scheduler
        scheduler.add_async_job("noop", job_id="a")
        savepoint = request.tm.savepoint()
        scheduler.add_async_job("noop", job_id="b")
        savepoint.rollback()
        seen["b"] = scheduler.get_job("b")
        scheduler.add_async_job("noop", job_id="c")
        return Response("ok")

    app, registry = build({"schedule": schedule})
    app.post("/schedule")

    assert seen == {"b": None}
    assert job_ids(registry) == ["a", "c"]


def test_savepoint_taken_before_the_first_job_keeps_jobs_added_after_its_rollback(build):
    """The scheduler's data manager joins after the savepoint, so rolling the savepoint back
    aborts it and takes it out of the transaction; jobs added afterwards must still be
    written (the scheduler has to join the transaction again)."""

    def schedule(request):
        savepoint = request.tm.savepoint()
        request.scheduler.add_async_job("noop", job_id="b")
        savepoint.rollback()
        request.scheduler.add_async_job("noop", job_id="c")
        return Response("ok")

    app, registry = build({"schedule": schedule})
    app.post("/schedule")

    assert job_ids(registry) == ["c"]


def test_savepoint_rollback_with_an_app_resource_joined(build):
    """Savepoints across the scheduler and another savepoint-aware data manager.

    The app resource is :class:`tests.txapp.SavepointResource`, not the SQLite session:
    zope.sqlalchemy refuses savepoints for SQLite sessions (``NO_SAVEPOINT_SUPPORT``), so
    ``request.tm.savepoint()`` would raise with one joined.
    """
    resource = SavepointResource()

    def schedule(request):
        txn = request.tm.get()
        resource.add(txn, "one")
        request.scheduler.add_async_job("noop", job_id="a")
        savepoint = request.tm.savepoint()
        resource.add(txn, "two")
        request.scheduler.add_async_job("noop", job_id="b")
        savepoint.rollback()
        resource.add(txn, "three")
        request.scheduler.add_async_job("noop", job_id="c")
        return Response("ok")

    app, registry = build({"schedule": schedule})
    app.post("/schedule")

    assert resource.committed == ["one", "three"]
    assert job_ids(registry) == ["a", "c"]


# --------------------------------------------------------------------------- store failure


def _fail_stage(monkeypatch, registry, times):
    """Make the store's staging write fail ``times`` times as a locked SQLite database does."""
    repository = registry.scheduler.repository
    original = repository.stage
    failures = []

    def stage(jobs, removes, *args):
        if len(failures) < times:
            failures.append((list(jobs), list(removes)))
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return original(jobs, removes, *args)

    monkeypatch.setattr(repository, "stage", stage)
    return failures


def test_store_failure_at_vote_raises_store_unavailable_and_aborts_the_app_row(build, monkeypatch):
    def schedule(request):
        request.dbsession.add(Note(body="with job"))
        request.scheduler.add_async_job("noop")
        return Response("ok")

    app, registry = build({"schedule": schedule})
    failures = _fail_stage(monkeypatch, registry, times=1)

    with pytest.raises(StoreUnavailable) as excinfo:
        app.post("/schedule")

    assert len(failures) == 1
    assert isinstance(excinfo.value, TransientError)
    assert "database is locked" in str(excinfo.value)
    assert note_bodies(registry) == []
    assert job_ids(registry) == []


def test_store_unavailable_hides_the_password_the_driver_error_echoes(build, monkeypatch):
    def schedule(request):
        request.scheduler.add_async_job("noop")
        return Response("ok")

    app, registry = build({"schedule": schedule})
    repository = registry.scheduler.repository

    def stage(*args):
        raise ConnectionError("cannot reach redis://:hunter2@10.0.0.9:6379/0 (refused)")

    monkeypatch.setattr(repository, "stage", stage)
    with pytest.raises(StoreUnavailable) as excinfo:
        app.post("/schedule")

    assert "hunter2" not in str(excinfo.value)
    assert "redis://:***@10.0.0.9:6379/0 (refused)" in str(excinfo.value)


def test_store_failure_at_vote_is_retried_by_pyramid_retry(build, monkeypatch):
    attempts = []

    def schedule(request):
        attempts.append(request)
        request.dbsession.add(Note(body="with job"))
        job = request.scheduler.add_async_job("noop")
        return Response(job.id)

    app, registry = build({"schedule": schedule}, retry=True)
    failures = _fail_stage(monkeypatch, registry, times=1)

    job_id = app.post("/schedule").text

    assert len(failures) == 1
    assert len(attempts) == 2
    assert note_bodies(registry) == ["with job"]
    assert job_ids(registry) == [job_id]


# --------------------------------------------------------------------------- later failure


def _vote_failure(registry, job_id, seen):
    """A data manager that fails after the scheduler voted, recording what was stored."""
    return VoteFailure(
        "the app database failed to commit",
        on_vote=lambda: seen.append(registry.scheduler.get_job(job_id)),
    )


def test_failure_after_the_scheduler_voted_removes_the_added_job(build):
    seen = []

    def schedule(request):
        request.dbsession.add(Note(body="lost"))
        job = request.scheduler.add_async_job("noop", job_id="added")
        request.tm.get().join(_vote_failure(request.registry, job.id, seen))
        return Response("ok")

    app, registry = build({"schedule": schedule})
    with pytest.raises(CommitFailed):
        app.post("/schedule")

    assert seen[0] is not None, "the job was written at vote time"
    assert seen[0].locked_by.startswith("staged:"), "but staged: no daemon can claim it"
    assert job_ids(registry) == []
    assert note_bodies(registry) == []


def test_failure_after_the_scheduler_voted_restores_the_replaced_job(build):
    seen = []

    def replace(request):
        request.scheduler.add_interval_job("noop", "1h", args=["new"], job_id="report")
        request.tm.get().join(_vote_failure(request.registry, "report", seen))
        return Response("ok")

    app, registry = build({"replace": replace})
    registry.scheduler.add_async_job("noop", args=["old"], job_id="report")
    previous = registry.scheduler.get_job("report")

    with pytest.raises(CommitFailed):
        app.post("/replace")

    assert seen[0].args == ["new"], "the replacement was written at vote time"
    assert seen[0].locked_by.startswith("staged:"), "but staged: no daemon can claim it"
    assert registry.scheduler.get_job("report") == previous
    assert job_ids(registry) == ["report"]


def test_failure_after_the_scheduler_voted_restores_the_cancelled_job(build):
    seen = []

    def cancel(request):
        assert request.scheduler.cancel_job("report") is True
        request.tm.get().join(_vote_failure(request.registry, "report", seen))
        return Response("ok")

    app, registry = build({"cancel": cancel})
    registry.scheduler.add_async_job("noop", args=["old"], job_id="report")
    previous = registry.scheduler.get_job("report")

    with pytest.raises(CommitFailed):
        app.post("/cancel")

    assert seen == [None], "the cancel was applied at vote time"
    assert registry.scheduler.get_job("report") == previous


# --------------------------------------------------------------------------- cancel and read


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_cancel_job_through_request_scheduler_applies_only_if_the_request_commits(build, shared):
    results = []

    def cancel(request):
        results.append(request.scheduler.cancel_job("report"))
        results.append(request.scheduler.cancel_job("missing"))
        if request.params.get("fail"):
            raise RuntimeError("the view failed")
        return Response("ok")

    app, registry = build({"cancel": cancel}, shared=shared)
    registry.scheduler.add_async_job("noop", job_id="report")

    with pytest.raises(RuntimeError):
        app.post("/cancel", {"fail": "1"})
    assert results == [True, False]
    assert job_ids(registry) == ["report"]

    app.post("/cancel")
    assert results == [True, False, True, False]
    assert job_ids(registry) == []


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_get_job_in_the_same_request_sees_staged_adds_and_cancels(build, shared):
    seen = {}

    def stage(request):
        scheduler = request.scheduler
        added = scheduler.add_async_job("noop", args=["staged"], job_id="new")
        seen["new"] = scheduler.get_job("new") == added
        seen["new elsewhere"] = request.registry.scheduler.get_job("new")
        seen["cancel old"] = scheduler.cancel_job("old")
        seen["old"] = scheduler.get_job("old")
        seen["cancel old again"] = scheduler.cancel_job("old")
        seen["cancel new"] = scheduler.cancel_job("new")
        seen["new after cancel"] = scheduler.get_job("new")
        return Response("ok")

    app, registry = build({"stage": stage}, shared=shared)
    registry.scheduler.add_async_job("noop", job_id="old")
    app.post("/stage")

    assert seen == {
        "new": True,
        "new elsewhere": None,
        "cancel old": True,
        "old": None,
        "cancel old again": False,
        "cancel new": True,
        "new after cancel": None,
    }
    assert job_ids(registry) == []


# --------------------------------------------------------------------------- shared database


def test_shared_database_commits_the_job_row_and_the_app_row_together(build):
    def schedule(request):
        request.dbsession.add(Note(body="with job"))
        job = request.scheduler.add_async_job("noop", job_id="together")
        return Response(job.id)

    app, registry = build({"schedule": schedule}, shared=True)
    app.post("/schedule")

    assert note_bodies(registry) == ["with job"]
    assert job_ids(registry) == ["together"]
    with registry.txapp_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM pyncette_jobs")).scalars().all()
    assert rows == ["together"], "the job row lives in the app's own database"


def test_shared_database_view_that_raises_keeps_neither_row(build):
    def schedule(request):
        request.dbsession.add(Note(body="lost"))
        request.scheduler.add_async_job("noop", job_id="lost")
        request.dbsession.flush()
        raise RuntimeError("the view failed")

    app, registry = build({"schedule": schedule}, shared=True)
    with pytest.raises(RuntimeError):
        app.post("/schedule")

    assert note_bodies(registry) == []
    assert job_ids(registry) == []


def test_shared_database_view_that_only_schedules_still_commits(build):
    """No ORM change in the session: the scheduler marks it changed, otherwise
    zope.sqlalchemy would roll the session back at commit."""

    def schedule(request):
        request.scheduler.add_async_job("noop", job_id="only-a-job")
        return Response("ok")

    app, registry = build({"schedule": schedule}, shared=True)
    app.post("/schedule")

    assert job_ids(registry) == ["only-a-job"]
    assert note_bodies(registry) == []


# --------------------------------------------------------------------------- transactional tasks


def test_transactional_task_commits_its_row_and_its_completion_together(build):
    _app, registry = build(
        tasks={"write_note": (txapp.write_note, {"transactional": True})}, shared=True
    )
    job = registry.scheduler.add_async_job("write_note", args=["from job"])

    assert Worker(registry).run_pending() == 1
    assert note_bodies(registry) == ["from job"]
    assert registry.scheduler.get_job(job.id) is None

    assert Worker(registry).run_pending() == 0
    assert calls_of(registry) == [("write_note", job.id, "from job")]


def test_transactional_task_whose_commit_fails_runs_again_after_its_lease_expires(build, clock):
    """The commit fails after the task body (as if the process died before COMMIT): neither
    the row nor the completion is written, the job stays leased, and once the lease expires
    the next run writes both, exactly once."""
    _app, registry = build(
        tasks={"write_note": (txapp.write_note, {"transactional": True})}, shared=True
    )
    registry.txapp_crashes = 1
    # failure_mode='none' keeps the lease after the failed commit, as a dead process would.
    job = registry.scheduler.add_async_job("write_note", args=["from job"], failure_mode="none")

    assert Worker(registry).run_pending() == 1
    assert note_bodies(registry) == []
    stored = registry.scheduler.get_job(job.id)
    assert stored is not None
    assert stored.locked_by is not None
    assert Worker(registry).run_pending() == 0, "still leased"

    clock.advance(registry.pyncette_settings.lease_duration + 1)
    assert Worker(registry).run_pending() == 1
    assert note_bodies(registry) == ["from job"]
    assert registry.scheduler.get_job(job.id) is None
    assert [call[0] for call in calls_of(registry)] == ["write_note", "write_note"]


def test_transactional_task_is_complete_once_its_transaction_commits(build, clock, monkeypatch):
    """The worker dies right after the job's transaction committed, before writing any
    outcome of its own: the job is already complete, so it never runs a second time."""
    _app, registry = build(
        tasks={"write_note": (txapp.write_note, {"transactional": True})}, shared=True
    )
    job = registry.scheduler.add_async_job("write_note", args=["from job"])
    repository = registry.scheduler.repository
    original = repository.complete

    def die_before_completing(outcomes, runs=()):
        if outcomes:
            raise RuntimeError("the worker died before writing the outcome")
        return original(outcomes, runs)

    monkeypatch.setattr(repository, "complete", die_before_completing)
    Worker(registry).run_pending()
    monkeypatch.setattr(repository, "complete", original)

    clock.advance(registry.pyncette_settings.lease_duration + 1)
    assert Worker(registry).run_pending() == 0
    assert note_bodies(registry) == ["from job"]
    assert registry.scheduler.get_job(job.id) is None
    assert len(calls_of(registry)) == 1


def test_transactional_task_without_session_hook_is_a_configuration_error(tmp_path):
    config = txapp.configurator(tmp_path)
    config.add_pyncette_task(txapp.write_note, name="write_note", transactional=True)
    try:
        with pytest.raises(ConfigurationError, match="session_hook"):
            config.commit()
    finally:
        config.registry.txapp_engine.dispose()


# --------------------------------------------------------------------------- jobs scheduling jobs


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_job_schedules_a_follow_up_only_if_it_succeeds(build, shared):
    _app, registry = build(tasks={"chain": txapp.chain}, shared=shared)
    registry.scheduler.add_async_job("chain", args=["child-of-ok"])
    registry.scheduler.add_async_job("chain", args=["child-of-failed"], kwargs={"fail": True})

    Worker(registry).run_pending()

    assert sorted(call[2] for call in calls_of(registry) if call[0] == "chain") == [
        "child-of-failed",
        "child-of-ok",
    ]
    assert [call[2] for call in noop_calls(registry)] == ["child-of-ok"]
    assert registry.scheduler.get_job("child-of-ok") is None, "it ran and was deleted"
    assert registry.scheduler.get_job("child-of-failed") is None


# --------------------------------------------------------------------------- testing include


@pytest.fixture
def recording_app(tmp_path, clock):
    config = Configurator(settings={"pyncette.url": f"sqlite:///{tmp_path}/unused.sqlite"})
    config.include("pyramid_tm")
    config.include("pyramid_pyncette.testing")
    config.add_pyncette_task(txapp.noop, name="noop")

    def schedule(request):
        job = request.scheduler.add_async_job("noop", job_id=request.params["id"])
        request.registry.during_view.append(list(request.registry.scheduler.scheduled))
        if request.params.get("fail"):
            raise RuntimeError("the view failed")
        return Response(job.id)

    def cancel(request):
        existed = request.scheduler.cancel_job(request.params["id"])
        if request.params.get("fail"):
            raise RuntimeError("the view failed")
        if request.params.get("fail_commit"):
            request.tm.get().join(VoteFailure("a later data manager failed"))
        return Response(str(existed))

    for name, view in {"schedule": schedule, "cancel": cancel}.items():
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name)
    wsgi = config.make_wsgi_app()
    registry = wsgi.registry
    registry.during_view = []
    registry.scheduler.clock = clock
    return webtest.TestApp(wsgi), registry


def test_testing_include_records_jobs_scheduled_by_views_after_commit(
    recording_app, clock, tmp_path
):
    app, registry = recording_app
    assert isinstance(registry.scheduler, RecordingScheduler)

    app.post("/schedule", {"id": "kept"})
    with pytest.raises(RuntimeError):
        app.post("/schedule", {"id": "dropped", "fail": "1"})

    assert registry.during_view == [[], [registry.scheduler.scheduled[0]]]
    assert [job.id for job in registry.scheduler.scheduled] == ["kept"]
    assert run_pending(registry, clock()) == 1
    assert noop_calls(registry) == [("noop", "kept")]
    assert not (tmp_path / "unused.sqlite").exists(), "the configured store is never used"


def test_testing_include_records_cancels_of_committed_requests(recording_app):
    app, registry = recording_app
    registry.scheduler.add_async_job("noop", job_id="a")
    registry.scheduler.add_async_job("noop", job_id="b")

    with pytest.raises(RuntimeError):
        app.post("/cancel", {"id": "a", "fail": "1"})
    assert registry.scheduler.cancelled == []

    assert app.post("/cancel", {"id": "b"}).text == "True"
    assert registry.scheduler.cancelled == ["b"]
    assert registry.scheduler.get_job("b") is None
    assert registry.scheduler.get_job("a") is not None


def test_testing_include_does_not_record_a_cancel_of_a_missing_job(recording_app):
    """``cancelled`` lists the job ids deleted: cancelling an id that does not exist
    returns False and records nothing, through ``request.scheduler`` as through
    ``registry.scheduler``."""
    app, registry = recording_app

    assert registry.scheduler.cancel_job("ghost") is False
    assert registry.scheduler.cancelled == []

    assert app.post("/cancel", {"id": "ghost"}).text == "False"
    assert registry.scheduler.cancelled == []


def test_testing_include_does_not_record_a_cancel_undone_by_a_failed_commit(recording_app):
    """The cancel reaches the store at vote time, a later data manager fails, the job is
    restored: nothing was deleted, so nothing is recorded."""
    app, registry = recording_app
    registry.scheduler.add_async_job("noop", job_id="a")

    with pytest.raises(CommitFailed):
        app.post("/cancel", {"id": "a", "fail_commit": "1"})

    assert registry.scheduler.get_job("a") is not None
    assert registry.scheduler.cancelled == []


# --------------------------------------------------------------------------- pshell


@MANAGERS
def test_pshell_setup_writes_jobs_on_tm_commit(build, manager_hook):
    _app, registry = build(**{"tm.manager_hook": manager_hook})
    env = prepare(registry=registry)
    shell = pshell_setup(env)
    try:
        next(shell)
        assert env["immediate_scheduler"] is registry.scheduler
        env["scheduler"].add_async_job("noop", job_id="from-shell")
        assert registry.scheduler.get_job("from-shell") is None
        env["tm"].commit()
        shell.close()
    finally:
        env["closer"]()

    assert job_ids(registry) == ["from-shell"]


@MANAGERS
def test_pshell_setup_discards_uncommitted_jobs_when_the_shell_exits(build, manager_hook):
    _app, registry = build(**{"tm.manager_hook": manager_hook})
    env = prepare(registry=registry)
    shell = pshell_setup(env)
    try:
        next(shell)
        env["scheduler"].add_async_job("noop", job_id="never-committed")
        shell.close()
        transaction.commit()  # a later commit in this thread must not write it either
    finally:
        transaction.abort()
        env["closer"]()

    assert job_ids(registry) == []


# --------------------------------------------------------------------------- events


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_job_scheduled_events_fire_only_after_commit(build, shared):
    events = []
    during = []

    def configure(config):
        config.add_subscriber(lambda event: events.append(event.job.id), IJobScheduled)

    def schedule(request):
        request.scheduler.add_async_job("noop", job_id=request.params["id"])
        during.append(list(events))
        if request.params.get("fail"):
            raise RuntimeError("the view failed")
        return Response("ok")

    app, _registry = build({"schedule": schedule}, configure=configure, shared=shared)
    with pytest.raises(RuntimeError):
        app.post("/schedule", {"id": "dropped", "fail": "1"})
    assert events == []

    app.post("/schedule", {"id": "kept"})
    assert during == [[], []]
    assert events == ["kept"]
