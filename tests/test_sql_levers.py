"""The SQL stores' side of queues, paused queues and the run history.

Run against real servers (SQLite, PostgreSQL, MariaDB): queue-restricted and
paused-queue claims, the run records written with the completion, their
listing and pruning, queue counts, the upgrade of a table made by an older
version, and garbage in the ``queue`` column.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from pyramid_pyncette.jobs import (
    DEFAULT_QUEUE,
    MAX_RUN_ERROR_LENGTH,
    RUN_FAILED,
    RUN_LEASE_LOST,
    RUN_SUCCEEDED,
    Outcome,
    QueueInfo,
    RunRecord,
)
from pyramid_pyncette.repository.base import Claim
from pyramid_pyncette.repository.rows import decode_job_fields, well_formed_job
from pyramid_pyncette.repository.sql import (
    _RUN_COLUMNS,
    _RUN_TIMES,
    MYSQL_TABLE_OPTIONS,
    SQLRepository,
    _epoch_micros,
    _job_to_row,
    _pg_run_params,
    _run_row,
    _run_values,
    _sqlite_utc_text,
    runs_table,
)
from pyramid_pyncette.schedules import DateSchedule
from tests.queue_counts import backlog

from .garbage import GOOD_VALUES, write_column_garbage

# --------------------------------------------------------------------------- decoding


def test_a_row_without_a_queue_is_in_the_default_queue():
    without = {name: value for name, value in GOOD_VALUES.items() if name != "queue"}
    assert decode_job_fields(without).queue == DEFAULT_QUEUE
    assert well_formed_job(*without.values()).queue == DEFAULT_QUEUE


def test_a_stored_queue_is_read_back():
    values = {**GOOD_VALUES, "queue": "emails"}
    assert decode_job_fields(values).queue == "emails"
    assert well_formed_job(*values.values()).queue == "emails"


def test_a_stored_queue_that_is_no_text_is_the_jobs_problem():
    for garbage in (None, 7, b"emails"):
        values = {**GOOD_VALUES, "queue": garbage}
        job = decode_job_fields(values)
        assert job.queue == DEFAULT_QUEUE
        assert job.problem is not None and "queue is" in job.problem, garbage
        assert well_formed_job(*values.values()) is None


# --------------------------------------------------------------------------- run values

#: Records the worker writes (plain) and records only the general cleaning
#: makes storable: every shortcut of :func:`_run_values` must agree with it.
ODD_RECORDS = {
    "plain": {},
    "failed": {"outcome": RUN_FAILED, "error": "Traceback...\nValueError: \x00 \ud800"},
    "non-ascii": {"job_id": "j\u00f6b", "host": "h\u00f4te", "error": "caf\u00e9"},
    "nul": {"task": "t\x00", "worker": "w\x00"},
    "lone surrogate": {"queue": "q\udfff"},
    "too long": {"job_id": "j" * 500, "host": "h" * 300, "worker": "w" * 300, "outcome": "o" * 20},
    "not text": {"task": 7, "host": None, "worker": b"bytes"},
    "big numbers": {"attempt": 2**40, "pid": 2**70},
    "negative numbers": {"attempt": -1, "pid": -5},
    "not numbers": {"attempt": True, "pid": "12"},
    "naive and other zone times": {
        "scheduled_at": datetime(2030, 1, 1, 12),
        "started_at": datetime(2030, 1, 1, 13, tzinfo=timezone(timedelta(hours=5))),
    },
}


@pytest.mark.parametrize("bind_time", [_sqlite_utc_text, _epoch_micros, lambda value: value])
@pytest.mark.parametrize("changes", list(ODD_RECORDS.values()), ids=list(ODD_RECORDS))
def test_a_run_records_values_are_those_of_the_general_cleaning(changes, bind_time):
    record = dataclasses.replace(_record("a", 1), **changes)
    row = _run_row(record)
    expected = tuple(
        bind_time(row[name]) if name in _RUN_TIMES else row[name] for name in _RUN_COLUMNS
    )

    assert _run_values(record, bind_time) == expected


def test_the_sqlite_time_text_is_the_one_its_columns_bind():
    engine = sa.create_engine("sqlite://")
    column = runs_table.c.finished_at
    process = column.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    times = [
        datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2030, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2030, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        None,
    ]

    assert [_sqlite_utc_text(value) for value in times] == [process(value) for value in times]


def test_postgresql_binds_the_daemon_of_a_batch_once_when_every_record_shares_it():
    same = [_record("a", 1), _record("b", 2)]
    params, shared = _pg_run_params(same)
    assert shared is True
    assert (params["run_host"], params["run_pid"], params["run_worker"]) == ("box-1", 4242, "w-1")
    assert params["run_job_id"] == '{"a","b"}'

    mixed = [_record("a", 1), _record("b", 2, pid=7)]
    params, shared = _pg_run_params(mixed)
    assert shared is False
    assert params["run_pid"] == "{4242,7}"
    assert params["run_host"] == '{"box-1","box-1"}'


# --------------------------------------------------------------------------- helpers

SQL_STORES = ["sqlite", "postgresql", "mariadb"]

on_every_sql_store = pytest.mark.parametrize("store_settings", SQL_STORES, indirect=True)


def _job(app, job_id, queue=DEFAULT_QUEUE, after=0.0, task="record"):
    """A one-off job ``job_id`` of ``queue``, due ``after`` seconds from the clock's now."""
    when = app.clock() + timedelta(seconds=after)
    return app.scheduler.build_job(task, DateSchedule(when), job_id=job_id).replace(queue=queue)


def _claimed(app, queues=None, limit=100, token="tok"):
    """The ids the store's claim takes now, from ``queues``."""
    leases = app.repository.claim(app.clock(), limit, token, 60.0, queues)
    return sorted(lease.job.id for lease in leases)


def _record(job_id, n, outcome=RUN_SUCCEEDED, task="record", queue=DEFAULT_QUEUE, **fields):
    """A run record of ``job_id`` finished ``n`` seconds after :data:`START`."""
    values = {
        "job_id": job_id,
        "task": task,
        "queue": queue,
        "scheduled_at": START,
        "started_at": START + timedelta(seconds=n) - timedelta(milliseconds=250),
        "finished_at": START + timedelta(seconds=n),
        "attempt": 1,
        "outcome": outcome,
        "error": None if outcome == RUN_SUCCEEDED else f"boom {n}",
        "host": "box-1",
        "pid": 4242,
        "worker": "w-1",
        **fields,
    }
    return RunRecord(**values)


START = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _stored(run: RunRecord) -> RunRecord:
    """``run`` as a store gives it back: with its id."""
    return dataclasses.replace(run, id=None)


# --------------------------------------------------------------------------- queues


@on_every_sql_store
def test_a_claim_of_given_queues_takes_only_their_jobs(app):
    app.repository.add(
        [
            _job(app, "d1"),
            _job(app, "e1", "emails"),
            _job(app, "e2", "emails"),
            _job(app, "r1", "reports"),
        ]
    )
    assert app.repository.get("e1").queue == "emails"
    assert _claimed(app, frozenset({"emails"})) == ["e1", "e2"]
    assert _claimed(app, frozenset({"emails", "reports", "other"})) == ["r1"]
    assert _claimed(app, frozenset()) == []
    assert _claimed(app) == ["d1"]


@on_every_sql_store
def test_a_paused_queue_is_not_claimed_until_it_is_resumed(app):
    repository = app.repository
    repository.add([_job(app, "d1"), _job(app, "e1", "emails"), _job(app, "e2", "emails")])
    assert repository.set_queue_paused("emails", True) is True
    assert repository.set_queue_paused("emails", True) is False
    assert repository.paused_queues() == {"emails"}
    assert _claimed(app, frozenset({"emails"})) == []
    assert _claimed(app) == ["d1"]
    assert repository.set_queue_paused("emails", False) is True
    assert repository.set_queue_paused("emails", False) is False
    assert repository.paused_queues() == set()
    assert _claimed(app, frozenset({"emails"}), limit=1) == ["e1"]
    assert _claimed(app) == ["e2"]


@on_every_sql_store
def test_a_queue_can_be_paused_before_it_holds_a_job(app):
    repository = app.repository
    assert repository.set_queue_paused("later", True) is True
    repository.add([_job(app, "l1", "later")])
    assert _claimed(app) == []
    assert [info.name for info in repository.queue_stats(app.clock())] == ["later"]


@on_every_sql_store
def test_the_worker_loops_claim_keeps_to_its_queues_and_skips_paused_ones(app):
    repository = app.repository
    repository.add([_job(app, "d1"), _job(app, "e1", "emails"), _job(app, "r1", "reports")])
    repository.set_queue_paused("reports", True)
    leases = repository.complete_and_claim([], app.clock(), 10, "tok", 60.0, frozenset({"emails"}))
    assert [lease.job.id for lease in leases] == ["e1"]
    leases = repository.complete_and_claim([], app.clock(), 10, "tok2", 60.0)
    assert [lease.job.id for lease in leases] == ["d1"]


@on_every_sql_store
def test_next_due_counts_only_served_queues_that_are_not_paused(app):
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "d1", after=10), _job(app, "e1", "emails", after=5)])
    assert repository.next_due() == now + timedelta(seconds=5)
    assert repository.next_due(frozenset({"default"})) == now + timedelta(seconds=10)
    assert repository.next_due_delay(now, frozenset({"default"})) == 10.0
    repository.set_queue_paused("emails", True)
    assert repository.next_due() == now + timedelta(seconds=10)
    assert repository.next_due(frozenset({"emails"})) is None
    assert repository.next_due_delay(now, frozenset({"emails"})) is None
    assert repository.next_due_delay(now) == 10.0


@pytest.mark.parametrize("store_settings", ["postgresql", "mariadb"], indirect=True)
def test_next_due_by_the_servers_clock_skips_paused_and_unserved_queues(app):
    repository = app.repository
    repository.store_clock = True
    repository.add([_job(app, "d1", after=10), _job(app, "e1", "emails", after=5)])
    assert repository.next_due_delay(app.clock(), frozenset({"reports"})) is None
    repository.set_queue_paused("emails", True)
    assert repository.next_due_delay(app.clock(), frozenset({"emails"})) is None
    # The fake clock is years ahead of the server's: the job is due far in the future.
    assert repository.next_due_delay(app.clock(), frozenset({"default"})) > 3600


@on_every_sql_store
def test_queue_stats_count_due_and_running_jobs_of_every_queue(app):
    repository = app.repository
    now = app.clock()
    repository.add(
        [
            _job(app, "d-due-1"),
            _job(app, "d-due-2"),
            _job(app, "d-later", after=60),
            _job(app, "d-running"),
            _job(app, "e-due", "emails"),
            _job(app, "e-running", "emails"),
        ]
    )
    repository.claim(now, 1, "t1", 60.0, frozenset({"emails"}))  # one of the two
    repository.stage([_job(app, "d-staged")], [], "staged:tx", 60.0, now)
    repository.set_queue_paused("reports", True)
    stats = repository.queue_stats(now)
    running = {info.name: info.running for info in stats}
    due = {info.name: info.due for info in stats}
    assert [info.name for info in stats] == ["default", "emails", "reports"]
    assert [info.paused for info in stats] == [False, False, True]
    assert running == {"default": 0, "emails": 1, "reports": 0}
    assert due == {"default": 3, "emails": 1, "reports": 0}
    repository.claim(now, 10, "t2", 60.0, frozenset({"default"}))
    stats = repository.queue_stats(now)
    assert [(i.name, i.due, i.running) for i in stats] == [
        ("default", 0, 3),
        ("emails", 1, 1),
        ("reports", 0, 0),
    ]


# --------------------------------------------------------------------------- run history


def _outcome(lease, finished_at, succeeded=True):
    return Outcome(lease=lease, succeeded=succeeded, finished_at=finished_at)


@on_every_sql_store
def test_runs_are_written_with_the_completion_and_read_back_exactly(app):
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "a"), _job(app, "b"), _job(app, "c", "emails")])
    (lease_a, lease_b) = repository.claim(now, 2, "t1", 60.0, frozenset({"default"}))
    runs = [
        _record("a", 1),
        _record("b", 2, RUN_FAILED, error="Traceback...\nValueError: no", attempt=3),
    ]
    # The worker's call: completes, records and claims (of its queues) at once.
    leases = repository.complete_and_claim(
        [_outcome(lease_a, now), _outcome(lease_b, now)],
        now,
        10,
        "t2",
        60.0,
        frozenset({"emails"}),
        runs,
    )
    assert [lease.job.id for lease in leases] == ["c"]
    assert repository.get("a") is None and repository.get("b") is None
    page = repository.list_runs()
    assert page.next_cursor is None
    assert [_stored(run) for run in page] == list(reversed(runs))
    assert all(run.id is not None and run.id.isdigit() for run in page)
    assert int(page[0].id) > int(page[1].id)
    # Without a claim: complete() records them in its transaction.
    repository.complete([_outcome(leases[0], now)], [_record("c", 3, queue="emails")])
    assert repository.get("c") is None
    assert [run.job_id for run in repository.list_runs()] == ["c", "b", "a"]


@on_every_sql_store
def test_a_run_is_recorded_even_when_its_lease_was_lost(app):
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "a")])
    (lease,) = repository.claim(now, 1, "t1", 60.0)
    repository.add([_job(app, "a", after=30)])  # replaced while it ran
    repository.complete([_outcome(lease, now)], [_record("a", 1, RUN_LEASE_LOST)])
    assert repository.get("a").due_at == now + timedelta(seconds=30)
    assert [run.outcome for run in repository.list_runs()] == [RUN_LEASE_LOST]


@on_every_sql_store
def test_runs_alone_are_recorded_by_the_worker_loops_call(app):
    repository = app.repository
    claimed = repository.complete_and_claim([], app.clock(), 0, "t", 60.0, None, [_record("x", 1)])
    assert claimed == []
    assert [run.job_id for run in repository.list_runs()] == ["x"]


@on_every_sql_store
def test_text_no_store_holds_in_a_run_record_never_fails_its_batch(app):
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "a"), _job(app, "b")])
    leases = repository.claim(now, 2, "t1", 60.0)
    huge = "x" * 50_000 + "\nValueError: the end"
    runs = [
        _record("a", 1, RUN_FAILED, error="nul\x00 and \ud800 lone", host="h\x00" * 500),
        _record("b", 2, RUN_FAILED, error=huge, worker="w" * 1000, queue="q" * 100),
    ]
    repository.complete_and_claim(
        [_outcome(lease, now) for lease in leases], now, 10, "t2", 60.0, None, runs
    )
    assert repository.get("a") is None and repository.get("b") is None
    second, first = repository.list_runs()
    assert first.error == "nul\ufffd and \ufffd lone"
    assert first.host == ("h\ufffd" * 500)[:255]
    assert len(second.error) == MAX_RUN_ERROR_LENGTH
    assert second.error.endswith("ValueError: the end")
    assert second.worker == "w" * 200
    assert second.queue == "q" * 64


@on_every_sql_store
def test_list_runs_filters_and_pages_newest_first(app):
    repository = app.repository
    runs = [
        _record(f"job-{n % 3}", n, RUN_FAILED if n % 4 == 0 else RUN_SUCCEEDED, task=f"t{n % 2}")
        for n in range(1, 13)
    ]
    runs.append(_record("mail", 13, queue="emails"))
    repository.complete([], runs)
    newest_first = list(reversed(runs))

    def listed(**filters):
        return [_stored(run) for run in repository.list_runs(**filters)]

    assert listed() == newest_first
    assert listed(job_id="job-1") == [r for r in newest_first if r.job_id == "job-1"]
    assert listed(task="t0") == [r for r in newest_first if r.task == "t0"]
    assert listed(queue="emails") == [runs[-1]]
    assert listed(outcomes={RUN_FAILED}) == [r for r in newest_first if r.outcome == RUN_FAILED]
    assert listed(outcomes={RUN_FAILED}, task="t1") == []
    assert listed(job_id="job-0", outcomes=[RUN_FAILED, RUN_SUCCEEDED], task="t1") == [
        r for r in newest_first if r.job_id == "job-0" and r.task == "t1"
    ]
    # Pages of 2 across ids 9 and 10: the cursor compares as a number, not as text.
    pages, cursor = [], None
    while True:
        page = repository.list_runs(cursor=cursor, limit=2)
        pages.append([_stored(run) for run in page])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(page) for page in pages] == [2, 2, 2, 2, 2, 2, 1]
    assert [run for page in pages for run in page] == newest_first
    page = repository.list_runs(job_id="job-1", limit=2)
    rest = repository.list_runs(job_id="job-1", cursor=page.next_cursor, limit=100)
    assert [_stored(run) for run in [*page, *rest]] == listed(job_id="job-1")
    assert rest.next_cursor is None


@on_every_sql_store
def test_a_run_cursor_that_is_no_record_id_is_refused_with_the_fix(app):
    with pytest.raises(ValueError, match=r"not a run cursor of this store.*next_cursor"):
        app.repository.list_runs(cursor="job-1")


@on_every_sql_store
def test_prune_runs_deletes_at_most_limit_records_finished_before_the_bound(app):
    repository = app.repository
    runs = [_record(f"j{n}", n) for n in range(1, 11)]
    repository.complete([], runs)
    before = START + timedelta(seconds=8)  # runs 1 to 7 finished before it
    assert [repository.prune_runs(before, 3) for _ in range(4)] == [3, 3, 1, 0]
    assert [run.job_id for run in repository.list_runs()] == ["j10", "j9", "j8"]
    assert repository.prune_runs(START + timedelta(seconds=60), 0) == 0
    assert repository.prune_runs(START + timedelta(seconds=60), 100) == 3
    assert list(repository.list_runs()) == []


# --------------------------------------------------------------------------- how claims read


@pytest.mark.parametrize("store_settings", ["postgresql"], indirect=True)
def test_a_postgresql_claim_of_one_queue_reads_its_index_whatever_other_queues_hold(app):
    repository = app.repository
    # Another queue's backlog, due before the served queue's job, as dense as can be.
    early = app.clock() - timedelta(hours=1)
    backlog = [
        _job(app, f"backlog-{i:05d}").replace(due_at=early + timedelta(milliseconds=i))
        for i in range(3000)
    ]
    repository.add([*backlog, _job(app, "e1", "emails")])
    params = {
        "now": app.clock(),
        "done_ids": [],
        "done_tokens": [],
        "limit": 100,
        "token": "t",
        "lease_us": 60_000_000,
        "queues": ["emails"],
    }
    with repository.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        statement = "EXPLAIN ANALYZE " + repository._claim_sql_for(1, None)
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(statement, params))
        conn.rollback()
    assert f"ix_{repository.table.name}_queue_due_at" in plan, plan
    assert "Rows Removed" not in plan, plan
    assert "Sort" not in plan, plan  # the index's order: it stops at the limit


@pytest.mark.parametrize("store_settings", ["mariadb"], indirect=True)
def test_a_mariadb_claim_forces_the_index_of_what_it_reads(app):
    repository = app.repository
    repository.add([_job(app, "d1"), _job(app, "e1", "emails"), _job(app, "r1", "reports")])
    statements = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    name = repository.table.name
    sa.event.listen(repository.engine, "before_cursor_execute", remember)
    try:
        assert _claimed(app, frozenset({"emails"})) == ["e1"]
        assert _claimed(app, frozenset({"reports", "other"})) == ["r1"]
        assert _claimed(app) == ["d1"]
    finally:
        sa.event.remove(repository.engine, "before_cursor_execute", remember)
    hints = [s for s in statements if "FORCE INDEX" in s]
    assert len(hints) == 3
    # One queue: its own rows, in order. Several: the due_at index, locking
    # only the rows it takes (a sort would lock every due row of those queues).
    assert f"FORCE INDEX (ix_{name}_queue_due_at)" in hints[0]
    assert f"FORCE INDEX (ix_{name}_due_at)" in hints[1]
    assert f"FORCE INDEX (ix_{name}_due_at)" in hints[2]


@pytest.mark.parametrize("store_settings", ["mariadb"], indirect=True)
def test_a_mariadb_claim_in_progress_hides_no_pause_from_another(app):
    """The claim's locks cover the jobs it takes, not the paused queues it reads."""
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "d1"), _job(app, "d2", after=-1), _job(app, "e1", "emails")])
    repository.set_queue_paused("emails", True)
    other = SQLRepository(engine=repository.engine, table_name=repository.table.name)
    other.store_clock = False
    with repository.engine.connect() as conn, conn.begin():
        first = repository._claim_on(conn, Claim(now, 1, "t1", 60.0))
        second = other.claim(now, 10, "t2", 60.0)
    assert [lease.job.id for lease in first] == ["d2"]
    assert [lease.job.id for lease in second] == ["d1"]


@pytest.mark.parametrize("store_settings", ["postgresql", "mariadb"], indirect=True)
def test_a_queue_paused_by_another_process_at_the_same_moment_is_no_error(app):
    """Two daemons pause a queue no one paused before: one pauses it, the other finds it done."""
    repository = app.repository
    other = SQLRepository(engine=repository.engine, table_name=repository.table.name)
    queues = repository.queues
    raced = []

    @sa.event.listens_for(repository.engine, "before_execute")
    def pause_first(conn, clause, *args):
        # Between this call's read (not paused) and its insert, the other process pauses it.
        if isinstance(clause, sa.Insert) and clause.table is queues and not raced:
            raced.append(other.set_queue_paused("emails", True))

    try:
        assert repository.set_queue_paused("emails", True) is False
    finally:
        sa.event.remove(repository.engine, "before_execute", pause_first)
    assert raced == [True]
    assert repository.paused_queues() == {"emails"}


# --------------------------------------------------------------------------- older tables


def _old_table(app, name):
    """Create the jobs table ``name`` as versions before queues made it; return it."""
    current = app.repository.table
    old = sa.Table(
        name,
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in current.c
            if c.name != "queue"
        ),
        sa.Index(f"ix_{name}_due_at", "due_at"),
        sa.Index(f"ix_{name}_task", "task"),
        **MYSQL_TABLE_OPTIONS,
    )
    old.create(app.repository.engine)
    return old


def _write_old_jobs(app, old, jobs):
    rows = [_job_to_row(job) for job in jobs]
    for row in rows:
        del row["queue"]
    with app.repository.engine.begin() as conn:
        conn.execute(sa.insert(old), rows)


def _schema(app, name):
    """``(columns, indexes, tables)`` of the jobs table ``name`` as the database has them."""
    with app.repository.engine.connect() as conn:
        inspector = sa.inspect(conn)
        columns = {column["name"] for column in inspector.get_columns(name)}
        indexes = {index["name"] for index in inspector.get_indexes(name)}
        tables = {
            t
            for t in (f"{name}_runs", f"{name}_queues", f"{name}_changes")
            if inspector.has_table(t)
        }
    return columns, indexes, tables


def _unique_table(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@on_every_sql_store
def test_an_older_table_gains_the_queue_column_and_its_jobs_stay_in_the_default_queue(app, caplog):
    name = _unique_table("old")
    old = _old_table(app, name)
    _write_old_jobs(app, old, [_job(app, "old-1"), _job(app, "old-2", after=60)])
    repository = SQLRepository(engine=app.repository.engine, table_name=name)
    repository.store_clock = False
    with caplog.at_level(logging.INFO, logger="pyramid_pyncette.repository.sql"):
        repository.setup()
    assert f"upgrading table {name}" in caplog.text
    columns, indexes, tables = _schema(app, name)
    assert "queue" in columns
    assert f"ix_{name}_queue_due_at" in indexes
    assert tables == {f"{name}_runs", f"{name}_queues", f"{name}_changes"}
    assert repository.schema_upgrade_statements() == []
    assert repository.get("old-2").queue == DEFAULT_QUEUE
    leases = repository.claim(app.clock(), 10, "t", 60.0, frozenset({DEFAULT_QUEUE}))
    assert [lease.job.id for lease in leases] == ["old-1"]
    repository.complete([], [_record("old-1", 1)])
    assert [run.job_id for run in repository.list_runs()] == ["old-1"]
    # A second process starting on the upgraded table changes nothing.
    again = SQLRepository(engine=app.repository.engine, table_name=name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyramid_pyncette.repository.sql"):
        again.setup()
    assert "upgrading" not in caplog.text


@on_every_sql_store
def test_indexes_left_out_by_processes_racing_to_create_the_tables_are_made_at_setup(app):
    # Racing processes each stop at the first index another one made: whatever
    # index is still missing, the next setup makes it (a claim forces the due index).
    name = _unique_table("race")
    first = SQLRepository(engine=app.repository.engine, table_name=name)
    first.setup()
    with app.repository.engine.begin() as conn:
        for index, table in [
            (f"ix_{name}_due_at", name),
            (f"ix_{name}_runs_job_id", f"{name}_runs"),
        ]:
            conn.execute(sa.text(_drop_index(conn, index, table)))
    assert len(first.schema_upgrade_statements()) == 2
    second = SQLRepository(engine=app.repository.engine, table_name=name)
    second.store_clock = False
    second.setup()
    _, indexes, _ = _schema(app, name)
    assert f"ix_{name}_due_at" in indexes
    assert second.schema_upgrade_statements() == []
    second.add([_job(app, "j")])
    assert [lease.job.id for lease in second.claim(app.clock(), 10, "t", 60.0)] == ["j"]


def _drop_index(conn, index, table):
    """The statement that drops ``index`` of ``table`` in ``conn``'s dialect."""
    if conn.dialect.name in ("mysql", "mariadb"):
        return f"DROP INDEX {index} ON {table}"
    return f"DROP INDEX {index}"


@on_every_sql_store
def test_with_skip_table_create_an_older_table_is_left_alone_with_a_warning_naming_the_fix(
    app, caplog
):
    name = _unique_table("old")
    old = _old_table(app, name)
    _write_old_jobs(app, old, [_job(app, "old-1")])
    repository = SQLRepository(engine=app.repository.engine, table_name=name, create_table=False)
    repository.store_clock = False
    with caplog.at_level(logging.WARNING, logger="pyramid_pyncette.repository.sql"):
        repository.setup()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "pyncette.skip_table_create" in warning
    quote = "`" if app.repository.engine.dialect.name in ("mysql", "mariadb") else '"'
    partition = f"{quote}partition{quote}"  # a reserved word on MySQL only
    assert f"ALTER TABLE {name} ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default'" in warning
    assert f"CREATE INDEX ix_{name}_queue_due_at ON {name} (queue, due_at)" in warning
    assert f"CREATE TABLE {name}_runs (" in warning
    assert f"CREATE TABLE {name}_queues (" in warning
    assert f"CREATE TABLE {name}_changes (" in warning
    assert f"CREATE INDEX ix_{name}_runs_job_id ON {name}_runs (job_id, id)" in warning
    assert partition not in warning or quote == "`"
    columns, _, tables = _schema(app, name)
    assert "queue" not in columns and tables == set()
    # The statements named are the whole fix: run them, and the store works.
    statements = warning.split(": ", 1)[1].split("; ")
    with app.repository.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    assert repository.schema_upgrade_statements() == []
    assert repository.get("old-1").queue == DEFAULT_QUEUE
    assert [lease.job.id for lease in repository.claim(app.clock(), 5, "t", 60.0)] == ["old-1"]


# --------------------------------------------------------------------------- garbage


def _queue_garbage(app):
    """``{job id: SQL literal}``: what each database's queue column can be made to hold."""
    kind = app.repository.engine.dialect.name
    table = app.repository.engine.dialect.identifier_preparer.format_table(app.repository.table)
    with app.repository.engine.begin() as conn:
        if kind == "postgresql":
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN queue DROP NOT NULL")
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN queue TYPE text")
        elif kind != "sqlite":
            conn.exec_driver_sql(f"ALTER TABLE {table} MODIFY queue VARCHAR(64) NULL")
    garbage = {"empty": "''"}
    if kind != "sqlite":  # SQLite keeps its NOT NULL
        garbage["null"] = "NULL"
    if kind == "sqlite":
        garbage["huge"] = "'" + "q" * 1_000_000 + "'"
    elif kind == "postgresql":
        garbage["huge"] = "'" + "q" * 2_000 + "'"  # what a btree index entry holds
    return garbage


@on_every_sql_store
def test_garbage_in_the_queue_column_costs_only_its_job(app):
    app.repository.setup()
    garbage = _queue_garbage(app)
    for job_id, literal in garbage.items():
        write_column_garbage(app, job_id, "queue", literal)
    app.repository.add([_job(app, "good")])
    huge = "q" * (1_000_000 if "huge" in garbage and len(garbage["huge"]) > 10_000 else 2_000)
    expected = {"", DEFAULT_QUEUE} | ({huge} if "huge" in garbage else set())
    # A job without a queue (NULL) is in none: it is parked when claimed.
    stats = app.repository.queue_stats(app.clock())
    assert {info.name for info in stats} == expected
    assert sum(info.due for info in stats) == len(garbage) + 1 - ("null" in garbage)
    app.run_pending()
    ran = sorted(call.job_id for call in app.calls)
    assert "good" in ran
    assert "null" not in ran
    if "null" in garbage:
        parked = app.repository.get("null")
        assert parked.due_at is None and parked.last_status == "failed"
        assert "queue is None" in parked.last_error
    # Text is a queue (an odd one): such a job is claimed by daemons serving every queue.
    assert {"empty", "huge"} & set(garbage) <= set(ran)
    assert app.repository.next_due() is None
    assert app.repository.queue_stats(app.clock()) == []


@on_every_sql_store
def test_an_older_table_with_skip_table_create_is_a_setup_error_naming_the_statements(app):
    name = _unique_table("old")
    _old_table(app, name)
    repository = SQLRepository(engine=app.repository.engine, table_name=name, create_table=False)
    with pytest.raises(Exception) as raised:
        repository.next_due()
    problem = repository.describe_setup_error(raised.value)
    assert problem is not None and not repository.is_transient(raised.value)
    assert f"the {name!r} table was made by an older version of pyramid_pyncette" in problem
    assert f"(run: ALTER TABLE {name} ADD COLUMN queue VARCHAR(64)" in problem
    assert "pyncette.skip_table_create = false" in problem
    alter, index, *_ = repository.schema_upgrade_statements()
    with app.repository.engine.begin() as conn:
        conn.exec_driver_sql(alter)
        conn.exec_driver_sql(index)
    # The tables beside it are still missing: the same problem, the statements left.
    for call in (repository.next_due, lambda: repository.complete([], [_record("x", 1)])):
        with pytest.raises(Exception) as raised:
            call()
        problem = repository.describe_setup_error(raised.value)
        assert problem.startswith(f"the {name!r} table was made by an older version")
        assert f"(run: CREATE TABLE {name}_runs (" in problem
        assert f"; CREATE TABLE {name}_queues (" in problem
        assert "ALTER TABLE" not in problem


@pytest.mark.parametrize("store_settings", ["postgresql", "mariadb"], indirect=True)
def test_next_due_reads_one_index_entry_per_served_queue(app):
    repository = app.repository
    later = [_job(app, f"later-{i:05d}", after=3600) for i in range(2000)]
    repository.add([*later, _job(app, "e1", "emails", after=5), _job(app, "r1", "reports")])
    repository.set_queue_paused("reports", True)
    statements = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        if "_queues" not in statement:  # not the read of the paused queues
            statements.append((statement, parameters))

    sa.event.listen(repository.engine, "before_cursor_execute", remember)
    try:
        assert repository.next_due(frozenset({"emails", "reports"})) == app.clock() + timedelta(
            seconds=5
        )
        assert repository.next_due() == app.clock() + timedelta(seconds=5)
    finally:
        sa.event.remove(repository.engine, "before_cursor_execute", remember)
    assert len(statements) == 2
    with repository.engine.connect() as conn:
        plans = []
        for statement, parameters in statements:
            if repository.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("ANALYZE")
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
            plans.append("\n".join(" ".join(str(value) for value in row) for row in rows))
    for plan in plans:
        assert "Seq Scan" not in plan and "ALL" not in plan.split(), plan
    if repository._dialect in ("mysql", "mariadb"):
        # Each queue's MIN is read from the index: nothing to scan; with a queue
        # paused, the due_at index is walked from its start.
        assert "Select tables optimized away" in plans[0], plans[0]
        assert f"ix_{repository.table.name}_due_at" in plans[1], plans[1]
    else:
        assert f"ix_{repository.table.name}_queue_due_at" in plans[0], plans[0]
        assert f"Index Scan using ix_{repository.table.name}_due_at" in plans[1], plans[1]


@on_every_sql_store
def test_queue_stats_count_a_job_paused_while_it_runs_as_paused_not_running(app):
    repository = app.repository
    now = app.clock()
    repository.add([_job(app, "a"), _job(app, "b"), _job(app, "c")])
    repository.claim(now, 3, "tok", 60.0)
    held = repository.get("b")
    repository.add([held.replace(options={**held.options, "paused": True})])
    assert repository.get("b").state == "paused"
    assert backlog(repository.queue_stats(now)) == [QueueInfo(DEFAULT_QUEUE, False, 0, 2)]
