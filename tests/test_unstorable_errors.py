"""An error text of any content, or a row the store refuses, costs that one job only.

A job's exception message is written to its row. Whatever it holds (a lone
surrogate no driver can encode, a NUL PostgreSQL refuses, an emoji a
``latin1``/``utf8mb3`` MySQL column cannot hold), the store writes what it
can and the other jobs' results are written too. A row the database still
refuses (a constraint, a number out of range) is parked as failed with an
error saying why; it is never handled as an outage of the store.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from pyramid_pyncette.jobs import MAX_ERROR_LENGTH
from pyramid_pyncette.worker import Worker
from tests.conftest import STORES

#: Exception messages some store cannot hold as they are.
MESSAGES = {
    "lone-surrogate": "boom \ud800 end",
    "nul": "boom \x00 end",
    "emoji": "boom \U0001f600 end",
}
#: A message the tests' databases are made to refuse (see _refuse_errors_saying).
MESSAGES["poison"] = "poison pill"

SQL_STORES = [name for name in STORES if name in ("sqlite", "postgresql", "mariadb")]


def _raise_message(request, kind):
    # The message is made by the task: such text is refused as a job's arguments.
    raise RuntimeError(MESSAGES[kind])


def _make(make_app):
    app = make_app(tasks={"raise_message": _raise_message})
    if app.scheduler.settings.url.startswith("mysql"):
        # A column of a pre-utf8mb4 database: it cannot hold 4-byte characters.
        repository = app.repository
        repository.setup()
        table = repository.engine.dialect.identifier_preparer.format_table(repository.table)
        with repository.engine.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE {table} MODIFY last_error TEXT CHARACTER SET utf8mb3 "
                "COLLATE utf8mb3_general_ci"
            )
    return app


def _add_bad_and_goods(app, message, count=50):
    kind = next(kind for kind, text in MESSAGES.items() if text == message)
    app.scheduler.add_async_job("raise_message", job_id="bad", kwargs={"kind": kind})
    goods = [f"good-{n:02d}" for n in range(count)]
    for job_id in goods:
        app.scheduler.add_async_job("record", job_id=job_id)
    return goods


def _assert_error_kept(app, message):
    job = app.scheduler.get_job("bad")
    assert job.last_status == "failed", job
    error = job.last_error
    assert "boom" in error and "end" in error, error
    assert "\x00" not in error and not any("\ud800" <= c <= "\udfff" for c in error), error
    if "\U0001f600" in message:
        # Kept where the column can hold it, else escaped.
        assert "\U0001f600" in error or "\\U0001f600" in error, error


UNSTORABLE = ["lone-surrogate", "nul", "emoji"]


@pytest.mark.parametrize("message", [MESSAGES[kind] for kind in UNSTORABLE], ids=UNSTORABLE)
def test_a_job_whose_error_text_the_store_cannot_hold_does_not_stop_50_others(make_app, message):
    app = _make(make_app)
    goods = _add_bad_and_goods(app, message)

    assert app.run_pending() == 51
    assert sorted(call.job_id for call in app.calls) == goods
    _assert_error_kept(app, message)

    # Later jobs run too: the daemon is not stuck on the result it could not write.
    for n in range(50):
        app.scheduler.add_async_job("record", job_id=f"later-{n:02d}")
    app.clock.advance(1)
    assert app.run_pending() >= 50
    assert len([c for c in app.calls if c.job_id.startswith("later-")]) == 50


def _run_until_idle(worker, timeout=60.0):
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        pytest.fail(f"the worker loop did not go idle within {timeout}s")


@pytest.mark.parametrize(
    "message", [MESSAGES["lone-surrogate"], MESSAGES["emoji"]], ids=["lone-surrogate", "emoji"]
)
def test_the_worker_loop_goes_on_after_an_error_text_the_store_cannot_hold(make_app, message):
    app = _make(make_app)
    goods = _add_bad_and_goods(app, message)

    worker = Worker(app.registry, clock=app.clock, concurrency=4, batch_size=20)
    _run_until_idle(worker)

    assert sorted(call.job_id for call in app.calls) == goods
    _assert_error_kept(app, message)
    assert worker.stats["succeeded"] == 50


# --------------------------------------------------------------------------- refused rows


def _refuse_errors_saying(app, word):
    """Make the database refuse any last_error containing ``word`` (a constraint of the app)."""
    repository = app.repository
    repository.setup()
    table = repository.engine.dialect.identifier_preparer.format_table(repository.table)
    with repository.engine.begin() as conn:
        if repository.engine.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER clean_errors BEFORE UPDATE OF last_error ON {table} "
                    f"WHEN NEW.last_error LIKE '%{word}%' "
                    "BEGIN SELECT RAISE(ABORT, 'error text refused'); END"
                )
            )
        else:
            conn.execute(
                sa.text(
                    f"ALTER TABLE {table} ADD CONSTRAINT clean_errors "
                    f"CHECK (last_error NOT LIKE '%{word}%')"
                )
            )


@pytest.mark.parametrize("store_settings", SQL_STORES, indirect=True)
def test_a_result_the_database_refuses_parks_that_job_and_the_others_complete(make_app, caplog):
    app = _make(make_app)
    _refuse_errors_saying(app, "poison")
    goods = _add_bad_and_goods(app, MESSAGES["poison"])

    assert app.run_pending() == 51
    assert app.run_pending(app.clock() + timedelta(days=1)) == 0

    assert sorted(call.job_id for call in app.calls) == goods
    assert [job.id for job in app.scheduler.get_jobs()] == ["bad"]
    job = app.scheduler.get_job("bad")
    assert (job.state, job.last_status, job.locked_by) == ("failed", "failed", None)
    assert "the store refused to write this job's row" in job.last_error
    assert job.last_error.isascii()
    assert any(
        "'bad' is parked as failed" in r.getMessage() and r.levelname == "ERROR"
        for r in caplog.records
    )


def _refuse_to_lease(app, job_id):
    """Make the database refuse to lease ``job_id`` (a constraint of the app)."""
    repository = app.repository
    repository.setup()
    table = repository.engine.dialect.identifier_preparer.format_table(repository.table)
    with repository.engine.begin() as conn:
        if repository.engine.dialect.name == "sqlite":
            statement = (
                f"CREATE TRIGGER never_lease BEFORE UPDATE OF locked_by ON {table} "
                f"WHEN NEW.id = '{job_id}' AND NEW.locked_by IS NOT NULL "
                "BEGIN SELECT RAISE(ABORT, 'lease refused'); END"
            )
        else:
            statement = (
                f"ALTER TABLE {table} ADD CONSTRAINT never_lease "
                f"CHECK (id <> '{job_id}' OR locked_by IS NULL)"
            )
        conn.execute(sa.text(statement))


@pytest.mark.parametrize("store_settings", SQL_STORES, indirect=True)
def test_a_row_the_database_refuses_to_lease_is_parked_and_its_batch_mates_run(make_app):
    app = make_app()
    _refuse_to_lease(app, "refused")
    goods = [f"good-{n:02d}" for n in range(30)]
    for job_id in goods[:15]:
        app.scheduler.add_async_job("record", job_id=job_id)
    app.scheduler.add_async_job("record", job_id="refused")
    for job_id in goods[15:]:
        app.scheduler.add_async_job("record", job_id=job_id)

    assert app.run_pending() == 30
    assert app.run_pending(app.clock() + timedelta(days=1)) == 0

    assert sorted(call.job_id for call in app.calls) == goods
    job = app.scheduler.get_job("refused")
    assert (job.state, job.last_status, job.due_at) == ("failed", "failed", None)
    assert "the store refused to write this job's row" in job.last_error


#: The largest value of the attempts column: a claim's attempts + 1 overflows it.
MAX_ATTEMPTS = {"sqlite": 2**63 - 1, "postgresql": 2**31 - 1, "mysql": 2**31 - 1}


@pytest.mark.parametrize("store_settings", SQL_STORES, indirect=True)
def test_a_row_the_database_refuses_to_claim_or_complete_is_parked_and_its_batch_mates_run(
    make_app,
):
    app = make_app()
    goods = [f"good-{n:02d}" for n in range(30)]
    for job_id in goods[:15]:
        app.scheduler.add_async_job("record", job_id=job_id)
    app.scheduler.add_async_job("record", job_id="garbage")
    for job_id in goods[15:]:
        app.scheduler.add_async_job("record", job_id=job_id)
    repository = app.repository
    kind = repository.engine.dialect.name
    with repository.engine.begin() as conn:
        table = repository.table
        conn.execute(
            sa.update(table).where(table.c.id == "garbage").values(attempts=MAX_ATTEMPTS[kind])
        )

    app.run_pending()
    assert app.run_pending(app.clock() + timedelta(days=1)) == 0

    assert sorted(c.job_id for c in app.calls if c.job_id != "garbage") == goods
    job = app.scheduler.get_job("garbage")
    if job is not None:  # else the claim could write it (SQLite): it ran and is gone
        assert (job.state, job.last_status) == ("failed", "failed")
        assert "the store refused to write this job's row" in job.last_error
    assert [job.id for job in app.scheduler.get_jobs()] in ([], ["garbage"])


@pytest.mark.parametrize("store_settings", ["redis"] if "redis" in STORES else [], indirect=True)
def test_a_redis_document_that_turns_unreadable_while_its_job_runs_costs_only_that_job(
    make_app, caplog
):
    def corrupt_own_document(request):
        repository = request.registry.scheduler.repository
        repository.client.hset(
            repository.job_keys(request.job.id).jobs, request.job.id, "{not json"
        )
        raise RuntimeError("after corrupting my own document")

    app = make_app(tasks={"corrupt_own_document": corrupt_own_document})
    app.scheduler.add_async_job("corrupt_own_document", job_id="bad")
    goods = [f"good-{n:02d}" for n in range(50)]
    for job_id in goods:
        app.scheduler.add_async_job("fail", job_id=job_id)  # failures write their error too

    assert app.run_pending() == 51
    assert sorted(call.job_id for call in app.calls) == goods
    jobs = {job.id: job for job in app.scheduler.get_jobs()}
    assert all(jobs[job_id].last_status == "failed" for job_id in goods)
    assert jobs["bad"].problem is not None
    assert any("'bad'" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


# --------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\ufffdb"),
        ("a\ud800b\udfffc", "a\ufffdb\ufffdc"),
        ("caf\u00e9 \U0001f600", "caf\u00e9 \U0001f600"),
        (None, None),
    ],
)
def test_storable_text_replaces_what_no_store_can_hold(text, stored):
    from pyramid_pyncette.repository.rows import storable_text

    assert storable_text(text) == stored


def test_storable_text_keeps_the_end_of_long_text():
    from pyramid_pyncette.repository.rows import storable_text

    text = "x" * MAX_ERROR_LENGTH + "the exception line"
    stored = storable_text(text)
    assert len(stored) == MAX_ERROR_LENGTH
    assert stored.startswith("...") and stored.endswith("the exception line")


def test_ascii_text_escapes_what_a_narrow_charset_cannot_hold():
    from pyramid_pyncette.repository.rows import ascii_text

    assert ascii_text("caf\u00e9 \U0001f600 \ud800\x00") == "caf\\xe9 \\U0001f600 \\ufffd\\ufffd"
    long = ascii_text("\U0001f600" * MAX_ERROR_LENGTH)
    assert long.isascii() and len(long) == MAX_ERROR_LENGTH
