"""The SQL store (SQLAlchemy Core): SQLite, PostgreSQL and MySQL/MariaDB.

One table, one row per job, an index on ``due_at``: "what can I claim now"
is an index range scan, so polling costs O(due), never O(stored). A daemon
serving one queue reads the ``(queue, due_at)`` index instead, so other
queues' backlogs cost it nothing. Beside the jobs table, ``<table>_runs``
holds the run history (appended by the statements that complete runs) and
``<table>_queues`` the paused queues, which every claim reads.

PostgreSQL and MySQL/MariaDB claim with ``SELECT ... FOR UPDATE SKIP
LOCKED`` (PostgreSQL in one ``UPDATE ... RETURNING``) and decide what is due
by the database server's clock. SQLite is made safe for several processes:
WAL journal, a busy timeout, and every writing transaction opened with
``BEGIN IMMEDIATE`` so two daemons never deadlock upgrading a read lock to a
write lock; its claims use the caller's clock (one machine shares one clock).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement

from ..jobs import (
    DEFAULT_QUEUE,
    MAX_JOB_ID_LENGTH,
    MAX_RUN_ERROR_LENGTH,
    STAGED_PREFIX,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
    job_state_counts,
)
from ..options import PAUSED_MARKER
from ..policy import ClaimPlan, CompletionPlan, plan_claim, plan_completion, split_finished
from ..redaction import redact_text
from .base import (
    Claim,
    JobPage,
    Repository,
    RepositoryError,
    RunPage,
    published_lock,
    staged_job,
)
from .filewatch import watch_file
from .listener import Receive, probe_receive, start_listener_thread, watched_receive
from .rows import (
    ascii_text,
    decode_job_fields,
    loads_stored,
    storable_text,
    storable_values,
    unwritable_row_values,
    utc,
    well_formed_job,
)

if TYPE_CHECKING:
    from .base import DBConnection

log = logging.getLogger(__name__)

#: MetaData holding the default tables (jobs, runs, queues), for apps that manage them
#: with Alembic.
metadata = sa.MetaData()

DEFAULT_TABLE_NAME = "pyncette_jobs"

# Seconds SQLite waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT = 60

# Seconds between checks that a SQLite file is still the one the connections opened.
SQLITE_FILE_CHECK_INTERVAL = 2.0
# SQLite result codes of a row the database refuses (a constraint, a value too big).
_SQLITE_ROW_ERRORS = ("SQLITE_CONSTRAINT", "SQLITE_TOOBIG", "SQLITE_MISMATCH")

#: MySQL/MariaDB error codes of a row's values refused (data and integrity
#: errors, SQLSTATE classes 22 and 23): NOT NULL, duplicate key, out of range,
#: truncated, bad date or string value, too long, foreign keys, a CHECK
#: constraint (MySQL 3819, MariaDB 4025).
_MYSQL_ROW_ERRORS = frozenset(
    {1048, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 1690, 3819, 4025}
)


#: Dialects whose timestamps carry no time zone: values are stored as naive UTC.
NAIVE_UTC_DIALECTS = ("sqlite", "mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps are UTC-aware in Python and UTC in the store.

    PostgreSQL stores ``timestamptz``. SQLite and MySQL have no time zone
    type, so values are stored naive (UTC): with one fixed format SQLite's
    string comparison orders them correctly, and MySQL keeps microseconds
    (``DATETIME(6)``).

    Reading never fails on a stored value: one that is not a time Python can
    hold (SQLite text that is no date, a MySQL zero date, a PostgreSQL
    ``infinity``, a year past 9999 or before 1) is returned as the store's
    text (or whatever the driver made of it), and the job decoder names it
    as the row's problem: that job is parked, the others are read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        if dialect.name in NAIVE_UTC_DIALECTS:
            return value.replace(tzinfo=None)
        return value

    def column_expression(self, colexpr: ColumnElement[datetime]) -> ColumnElement[datetime]:
        return _readable_time(colexpr, self)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        process = super().result_processor(dialect, coltype)
        if process is None:
            return None

        def tolerant(value: Any) -> Any:
            try:
                return process(value)
            except (ValueError, TypeError, OverflowError):
                return value  # not a time: the job decoder reports it

        return tolerant

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if type(value) is str and dialect.name == "postgresql":
            # _readable_time's text: ISO 8601 in UTC, or the text of a value out of range.
            try:
                return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            except ValueError:
                return value
        if not isinstance(value, datetime):
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _long_text() -> sa.types.TypeEngine[str]:
    """A text column for JSON and error text: MySQL's ``TEXT`` holds only 64 KiB, so MEDIUMTEXT."""
    from sqlalchemy.dialects.mysql import MEDIUMTEXT

    return sa.Text().with_variant(MEDIUMTEXT(), "mysql", "mariadb")


class _readable_time(sa.sql.functions.FunctionElement[datetime]):
    """A selected time column, as a value the driver can always load (see UTCDateTime).

    Only PostgreSQL needs it: psycopg fails the whole result on a time
    outside Python's years 1-9999 (``infinity`` among them), so such
    values are selected as text. Times in range are selected as ISO 8601
    text in UTC too, whatever the session's ``DateStyle`` and time zone.
    """

    inherit_cache = True
    name = "pyncette_readable_time"

    def __init__(self, column: ColumnElement[datetime], type_: UTCDateTime) -> None:
        super().__init__(column)
        self.type = type_


@compiles(_readable_time)
def _compile_readable_time(element: _readable_time, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return compiler.process(column, **kw)


@compiles(_readable_time, "postgresql")
def _compile_readable_time_postgresql(
    element: _readable_time, compiler: SQLCompiler, **kw: Any
) -> str:
    (column,) = element.clauses
    value = compiler.process(column, **kw)
    return (
        f"CASE WHEN {value} >= '0001-01-01 00:00:00+00' AND {value} < '10000-01-01 00:00:00+00' "
        f"THEN to_char({value} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
        f"ELSE CAST({value} AS TEXT) END"
    )


class JSONText(sa.types.TypeDecorator[Any]):
    """Compact JSON in a text column (portable, and what we write is what we read).

    MySQL stores it in a MEDIUMTEXT (16 MiB): its TEXT would cap arguments at 64 KiB.
    """

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import MEDIUMTEXT

            return dialect.type_descriptor(MEDIUMTEXT())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return loads_stored(value)


#: MySQL / MariaDB table options: job ids (and task names) compare byte for
#: byte, and hold any Unicode text, whatever the server's or database's
#: defaults (often latin1 or a case- and accent-insensitive collation, under
#: which ``'Plain'`` and ``'plain'`` would be one job). An id of 200
#: characters takes 800 bytes, within InnoDB's 3072-byte key limit.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    f"{dialect}_{option}": value
    for dialect in ("mysql", "mariadb")
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}


#: Seconds between two reads of a change marker by a daemon's probe where it
#: cannot be woken by the write itself, while changes come: a job committed by
#: another process starts about half of it later, on average.
WAKEUP_PROBE_INTERVAL = 0.002

#: Seconds between two reads of a change marker once no change came for
#: :data:`PROBE_IDLE_AFTER` seconds: the first job after a quiet spell starts
#: about half of it later, on average.
IDLE_PROBE_INTERVAL = 0.02

#: Seconds without a change after which a probe reads at the idle interval.
PROBE_IDLE_AFTER = 2.0

#: Seconds between two reads of SQLite's marker when writes to its log wake the probe.
WATCHED_PROBE_INTERVAL = 0.25


def make_table(name: str = DEFAULT_TABLE_NAME, meta: sa.MetaData | None = None) -> sa.Table:
    """Define the jobs table called ``name`` in ``meta`` (default: :data:`metadata`).

    The store's other tables are defined in ``meta`` too, so a migration
    tool (Alembic's ``target_metadata``) sees all four: ``<name>_runs``, the
    run history (see :func:`runs_table_of`), ``<name>_queues``, the paused
    queues (see :func:`queues_table_of`), and ``<name>_changes``, the
    counters that wake MySQL/MariaDB daemons (see :func:`changes_table_of`).
    Jobs are claimed by the ``due_at`` index, or by the ``(queue, due_at)``
    index when a daemon serves given queues.

    On MySQL and MariaDB the tables are ``utf8mb4`` with the binary collation
    ``utf8mb4_bin`` (see :data:`MYSQL_TABLE_OPTIONS`).
    """
    meta = metadata if meta is None else meta
    if name in meta.tables:
        return meta.tables[name]
    table = sa.Table(
        name,
        meta,
        sa.Column("id", sa.String(MAX_JOB_ID_LENGTH), primary_key=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("schedule", JSONText, nullable=False),
        sa.Column("args", JSONText, nullable=False),
        sa.Column("options", JSONText, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=True),
        sa.Column("next_run_at", UTCDateTime, nullable=True),
        sa.Column("locked_by", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_run_at", UTCDateTime, nullable=True),
        sa.Column("last_status", sa.String(16), nullable=True),
        sa.Column("last_error", _long_text(), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=True),
        sa.Column("partition", sa.Integer, nullable=False, default=0),
        sa.Column(
            "queue",
            sa.String(MAX_QUEUE_LENGTH),
            nullable=False,
            default=DEFAULT_QUEUE,
            server_default=DEFAULT_QUEUE,
        ),
        sa.Index(f"ix_{name}_due_at", "due_at"),
        sa.Index(f"ix_{name}_task", "task"),
        sa.Index(f"ix_{name}_queue_due_at", "queue", "due_at"),
        **MYSQL_TABLE_OPTIONS,
    )
    _make_runs_table(f"{name}_runs", meta)
    _make_queues_table(f"{name}_queues", meta)
    _make_changes_table(f"{name}_changes", meta)
    return table


#: Longest queue name a column holds (see :data:`~pyramid_pyncette.jobs.QUEUE_NAME`).
MAX_QUEUE_LENGTH = 64

# Widths of the run history's text columns; longer values are cut on write.
_RUN_TEXT_LENGTHS = {
    "job_id": MAX_JOB_ID_LENGTH,
    "task": 200,
    "queue": MAX_QUEUE_LENGTH,
    "outcome": 16,
    "host": 255,
    "worker": 200,
}


def _make_runs_table(name: str, meta: sa.MetaData) -> sa.Table:
    """The run history: one row per run, ids in write order (newest first is ``id DESC``)."""
    return sa.Table(
        name,
        meta,
        # BIGINT, but SQLite's autoincrement needs its INTEGER PRIMARY KEY; AUTOINCREMENT
        # there so that an id is never reused once the newest records were pruned.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("job_id", sa.String(_RUN_TEXT_LENGTHS["job_id"]), nullable=False),
        sa.Column("task", sa.String(_RUN_TEXT_LENGTHS["task"]), nullable=False),
        sa.Column("queue", sa.String(_RUN_TEXT_LENGTHS["queue"]), nullable=False),
        sa.Column("scheduled_at", UTCDateTime, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(_RUN_TEXT_LENGTHS["outcome"]), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("host", sa.String(_RUN_TEXT_LENGTHS["host"]), nullable=False),
        sa.Column("pid", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.String(_RUN_TEXT_LENGTHS["worker"]), nullable=False),
        # The history of a job, newest first. One index only: each costs every
        # recorded run its upkeep; the other filters read the newest ids back to
        # their matches, and retention reads the oldest ids.
        sa.Index(f"ix_{name}_job_id", "job_id", "id"),
        sqlite_autoincrement=True,
        **MYSQL_TABLE_OPTIONS,
    )


def _make_queues_table(name: str, meta: sa.MetaData) -> sa.Table:
    """The queues paused for every daemon: a row whose ``paused`` is true."""
    return sa.Table(
        name,
        meta,
        sa.Column("name", sa.String(MAX_QUEUE_LENGTH), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False, default=True),
        **MYSQL_TABLE_OPTIONS,
    )


#: How many counter rows MySQL/MariaDB writers spread their bumps over: a single
#: row would make concurrent adds wait for each other's commits.
CHANGE_SLOTS = 16

#: A counter's value after its largest (then it starts again at 0).
_CHANGE_WRAP = 999_999_999


def _make_changes_table(name: str, meta: sa.MetaData) -> sa.Table:
    """Counters bumped by every MySQL/MariaDB write that makes a job due sooner.

    Daemons read them (one primary-key range of :data:`CHANGE_SLOTS` rows) at
    a short interval and claim when they changed. Other databases leave the
    table empty (they have their own wakeups).
    """
    return sa.Table(
        name,
        meta,
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False, default=0),
        **MYSQL_TABLE_OPTIONS,
    )


def changes_table_of(jobs: sa.Table) -> sa.Table:
    """The change counters table :func:`make_table` defined beside ``jobs``."""
    return jobs.metadata.tables[f"{jobs.name}_changes"]


#: Longest wait of MariaDB's probe statement for a change (and how long
#: stopping the daemon may wait for its thread).
SERVER_WAIT = 0.5


def _mariadb_wait_statement(table: str, where: str) -> str:
    """One MariaDB statement: read the counters' sum until it differs from ``last``.

    Reads every ``pause`` seconds, at most ``rounds`` times, and returns the
    sum it saw last (PyMySQL parameters ``rounds``, ``pause``, ``last``).
    """
    read = f"SELECT SUM(version) INTO marker FROM {table} {where};"
    return (
        "BEGIN NOT ATOMIC "
        "DECLARE marker DECIMAL(40) DEFAULT NULL; "
        "DECLARE rounds INT DEFAULT 0; "
        f"{read} "
        "WHILE rounds < %(rounds)s AND marker <=> %(last)s DO "
        f"DO SLEEP(%(pause)s); {read} SET rounds = rounds + 1; "
        "END WHILE; "
        "SELECT marker; "
        "END"
    )


def runs_table_of(jobs: sa.Table) -> sa.Table:
    """The run history table :func:`make_table` defined beside ``jobs``."""
    return jobs.metadata.tables[f"{jobs.name}_runs"]


def queues_table_of(jobs: sa.Table) -> sa.Table:
    """The paused queues table :func:`make_table` defined beside ``jobs``."""
    return jobs.metadata.tables[f"{jobs.name}_queues"]


#: The default table, importable for Alembic: ``target_metadata = [..., metadata]``
#: (which holds :data:`runs_table` and :data:`queues_table` too).
jobs_table = make_table()

#: The default run history table.
runs_table = runs_table_of(jobs_table)

#: The default paused queues table.
queues_table = queues_table_of(jobs_table)


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """Bounded IN lists: every database caps the number of bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: The columns of the jobs table, in the order :func:`make_table` defines them.
COLUMNS = tuple(column.name for column in jobs_table.c)


# Position of locked_by in a row of ``select(table)``.
_LOCKED_BY = COLUMNS.index("locked_by")

# Positions of the JSON and time columns in COLUMNS, and of "args".
_JSON_COLUMNS = tuple(COLUMNS.index(name) for name in ("schedule", "args", "options"))
_TIME_COLUMNS = tuple(
    COLUMNS.index(name) for name in ("due_at", "next_run_at", "last_run_at", "created_at")
)
_ARGS = COLUMNS.index("args")

# Positions in a row of the PostgreSQL claim (the clock, then COLUMNS).
_DUE_AT, _NEXT_RUN_AT, _ATTEMPTS = (
    1 + COLUMNS.index(name) for name in ("due_at", "next_run_at", "attempts")
)


def _row_to_job(row: Sequence[Any]) -> Job:
    """The job in a row of ``select(table)`` (its columns in :data:`COLUMNS` order)."""
    return _job_from_columns(tuple(row), raw=False)


def _job_from_columns(values: tuple[Any, ...], raw: bool) -> Job:
    """A job from one row's values in :data:`COLUMNS` order. Never raises.

    ``raw`` values come straight from the driver (JSON still text, times in
    the session's time zone), as a textual statement returns them. A row
    that cannot be read becomes a job that is parked, not run.
    """
    if raw:
        values = _decode_raw(values)
    args = values[_ARGS]
    if type(args) is dict and len(args) == 2:
        # well_formed_job takes the columns in order, "args" split in two.
        fields = [*values[:_ARGS], args.get("args"), args.get("kwargs"), *values[_ARGS + 1 :]]
        job = well_formed_job(*fields)
        if job is not None:
            return job
    return decode_job_fields(dict(zip(COLUMNS, values, strict=True)))


def _decode_raw(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A driver's row as ``select(table)`` returns it: JSON loaded, times in UTC.

    On the claim path, once per claimed job: only the JSON and time columns
    are touched.
    """
    decoded = list(values)
    for index in _JSON_COLUMNS:
        decoded[index] = loads_stored(decoded[index])
    for index in _TIME_COLUMNS:
        decoded[index] = utc(decoded[index])
    return tuple(decoded)


def _job_to_row(job: Job) -> dict[str, Any]:
    row = _job_columns(job)
    if job.last_error is not None or job.last_status is not None:
        row.update(storable_values({"last_status": job.last_status, "last_error": job.last_error}))
    return row


def _job_columns(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "task": job.task,
        "schedule": job.schedule,
        "args": {"args": list(job.args), "kwargs": dict(job.kwargs)},
        "options": job.options,
        "due_at": job.due_at,
        "next_run_at": job.next_run_at,
        "locked_by": job.locked_by,
        "attempts": job.attempts,
        "last_run_at": job.last_run_at,
        "last_status": job.last_status,
        "last_error": job.last_error,
        "created_at": job.created_at,
        "partition": job.partition,
        "queue": job.queue,
    }


#: The columns of a run record the store writes (the id is the database's).
_RUN_COLUMNS = tuple(column.name for column in runs_table.c if column.name != "id")

# The run columns that are times.
_RUN_TIMES = ("scheduled_at", "started_at", "finished_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# The run columns that name the daemon that ran it: the same for every record a
# worker writes, so PostgreSQL binds them once per statement when they are.
_RUN_DAEMON = ("host", "pid", "worker")
_RUN_DAEMON_AT = len(_RUN_COLUMNS) - len(_RUN_DAEMON)
assert _RUN_COLUMNS[_RUN_DAEMON_AT:] == _RUN_DAEMON  # the last columns of the table

# PostgreSQL element types of the run columns that are not text, as the insert
# receives them (times as microseconds since the epoch; see _pg_runs_insert_sql).
_RUN_PG_TYPES = {**dict.fromkeys(_RUN_TIMES, "bigint"), "attempt": "integer", "pid": "bigint"}

# Whole numbers a run record's integer columns hold (a bigger one is clamped).
_INT_MAX = 2**31 - 1
_BIGINT_MAX = 2**63 - 1

_JOB_ID_WIDTH = _RUN_TEXT_LENGTHS["job_id"]
_TASK_WIDTH = _RUN_TEXT_LENGTHS["task"]
_QUEUE_WIDTH = _RUN_TEXT_LENGTHS["queue"]
_OUTCOME_WIDTH = _RUN_TEXT_LENGTHS["outcome"]
_HOST_WIDTH = _RUN_TEXT_LENGTHS["host"]
_WORKER_WIDTH = _RUN_TEXT_LENGTHS["worker"]


def _run_row(run: RunRecord) -> dict[str, Any]:
    """The values of ``run`` as every database accepts them. Never raises.

    Text is made storable and cut to its column's width (an error to
    :data:`~pyramid_pyncette.jobs.MAX_RUN_ERROR_LENGTH`): a record's text
    never fails the batch that writes it.
    """
    row: dict[str, Any] = {
        name: _column_text(getattr(run, name), width) for name, width in _RUN_TEXT_LENGTHS.items()
    }
    row["error"] = storable_text(run.error, MAX_RUN_ERROR_LENGTH)
    row["scheduled_at"] = run.scheduled_at
    row["started_at"] = run.started_at
    row["finished_at"] = run.finished_at
    row["attempt"] = _clamp(run.attempt, _INT_MAX)
    row["pid"] = _clamp(run.pid, _BIGINT_MAX)
    return row


def _run_values(run: RunRecord, bind_time: Callable[[Any], Any]) -> tuple[Any, ...]:
    """:func:`_run_row`'s values of ``run`` in :data:`_RUN_COLUMNS` order, each time
    bound by ``bind_time``. Never raises.

    The worker writes a record per run: one whose texts are plain (ASCII, no
    NUL, each within its column) and whose numbers fit skips the general
    cleaning, which costs several times the rest.
    """
    job_id, task, queue, outcome = run.job_id, run.task, run.queue, run.outcome
    host, worker, attempt, pid = run.host, run.worker, run.attempt, run.pid
    try:
        texts = job_id + task + queue + outcome + host + worker
    except TypeError:  # not all text
        texts = None
    if (
        type(texts) is str
        and texts.isascii()
        and "\x00" not in texts
        and len(job_id) <= _JOB_ID_WIDTH
        and len(task) <= _TASK_WIDTH
        and len(queue) <= _QUEUE_WIDTH
        and len(outcome) <= _OUTCOME_WIDTH
        and len(host) <= _HOST_WIDTH
        and len(worker) <= _WORKER_WIDTH
        and type(attempt) is int
        and 0 <= attempt <= _INT_MAX
        and type(pid) is int
        and 0 <= pid <= _BIGINT_MAX
    ):
        error = run.error
        return (
            job_id,
            task,
            queue,
            bind_time(run.scheduled_at),
            bind_time(run.started_at),
            bind_time(run.finished_at),
            attempt,
            outcome,
            None if error is None else storable_text(error, MAX_RUN_ERROR_LENGTH),
            host,
            pid,
            worker,
        )
    row = _run_row(run)
    return tuple(bind_time(row[name]) if name in _RUN_TIMES else row[name] for name in _RUN_COLUMNS)


def _unchanged(value: Any) -> Any:
    """A value bound as it is."""
    return value


def _sqlite_utc_text(value: Any) -> Any:
    """An aware datetime as the naive UTC text SQLite's columns hold (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - the fastest here
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _epoch_micros(value: Any) -> Any:
    """A datetime as whole microseconds since the epoch, a naive one read as UTC, as
    the other stores read it (None and anything else stay as they are)."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // _MICROSECOND


#: Times :func:`_binds_like` compares binders on.
_SAMPLE_TIMES = (
    datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=2))),
    datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
    None,
)


def _binds_like(process: Callable[[Any], Any], candidate: Callable[[Any], Any]) -> bool:
    """Whether ``candidate`` binds a time exactly as the column's own ``process`` does."""
    try:
        return all(process(value) == candidate(value) for value in _SAMPLE_TIMES)
    except Exception:
        return False


def _column_text(value: Any, width: int) -> str:
    """``value`` as text a column of ``width`` characters holds (see :func:`storable_text`)."""
    if type(value) is str and len(value) <= width and value.isascii() and "\x00" not in value:
        return value  # the common case, without the general cleaning
    return (storable_text(value, None) or "")[:width]


def _pg_text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of ``values`` (text, None for NULL), every element quoted."""
    if None not in values:
        strings = cast("Sequence[str]", values)
        if '"' not in (joined := "".join(strings)) and "\\" not in joined:
            return '{"' + '","'.join(strings) + '"}'
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def _pg_number_array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of whole numbers (None for NULL)."""
    if None in values:
        return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"
    return "{" + ",".join(map(str, values)) + "}"


def _pg_run_params(runs: Sequence[RunRecord]) -> tuple[dict[str, Any], bool]:
    """The parameters of :func:`_pg_runs_insert_sql` that append ``runs``, and whether
    their daemon columns are shared (one value each) rather than one per record.

    Each column travels as one array literal: the server reads it several
    times faster than a JSON array of records, and the driver sends it as
    the text it is (a list of values it adapts one by one).
    """
    rows = [_run_values(run, _epoch_micros) for run in runs]
    daemon = rows[0][_RUN_DAEMON_AT:]
    shared = all(row[_RUN_DAEMON_AT:] == daemon for row in rows)
    params: dict[str, Any] = {}
    for name, values in zip(_RUN_COLUMNS, zip(*rows, strict=True), strict=True):
        key = f"run_{name}"
        if shared and name in _RUN_DAEMON:
            params[key] = values[0]
        elif name in _RUN_PG_TYPES:
            params[key] = _pg_number_array(values)
        else:
            params[key] = _pg_text_array(values)
    return params, shared


def _pg_runs_insert_sql(runs: str, shared: bool) -> str:
    """PostgreSQL's insert of run records into the table ``runs`` (quoted) from the
    parameters of :func:`_pg_run_params`."""
    arrays = [name for name in _RUN_COLUMNS if not (shared and name in _RUN_DAEMON)]
    unnest = ", ".join(f"%(run_{name})s::{_RUN_PG_TYPES.get(name, 'text')}[]" for name in arrays)
    values = []
    for name in _RUN_COLUMNS:
        if name not in arrays:
            values.append(f"%(run_{name})s::{_RUN_PG_TYPES.get(name, 'text')}")
        elif name in _RUN_TIMES:
            values.append(f"timestamptz 'epoch' + r.{name} * interval '1 microsecond'")
        else:
            values.append(f"r.{name}")
    return (
        f"INSERT INTO {runs} ({', '.join(_RUN_COLUMNS)})\n"
        f"    SELECT {', '.join(values)}\n"
        f"    FROM unnest({unnest}) AS r({', '.join(arrays)})"
    )


def _clamp(value: Any, largest: int) -> int:
    """``value`` as a whole number in ``[0, largest]`` (0 when it is none)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), largest)


def _run_from_row(row: Any) -> RunRecord:
    """A :class:`RunRecord` from a row of the run history; its id is the row's, as text."""
    return RunRecord(
        id=str(row.id),
        job_id=row.job_id,
        task=row.task,
        queue=row.queue,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempt=row.attempt,
        outcome=row.outcome,
        error=row.error,
        host=row.host,
        pid=row.pid,
        worker=row.worker,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, connection_record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: durable against process crashes, fsync only at checkpoints.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("pyncette_sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class SQLRepository(Repository):
    """A :class:`Repository` over one SQL table (``sqlite://`` and other SQLAlchemy URLs)."""

    def __init__(
        self,
        url: str | sa.URL | None = None,
        *,
        engine: Engine | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        create_table: bool = True,
    ) -> None:
        owned = engine is None
        if engine is None:
            if url is None:
                raise ValueError("SQLRepository needs a url or an engine")
            engine = create_engine(url)
        self.engine = engine
        self.table = make_table(table_name, sa.MetaData())
        #: The run history and the paused queues, beside the jobs table.
        self.runs = runs_table_of(self.table)
        self.queues = queues_table_of(self.table)
        #: Counters bumped with each add on MySQL/MariaDB (see :meth:`start_listener`).
        self.changes = changes_table_of(self.table)
        self.create_table = create_table
        self._setup_lock = threading.Lock()
        self._ready = False
        self._local = threading.local()
        self._held_lock = threading.Lock()
        self._held: list[Connection] = []
        self._dialect = engine.dialect.name
        self.store_clock = self._dialect in ("postgresql", "mysql", "mariadb")
        # Skip rows another daemon has locked instead of waiting for them.
        self._skip_locked = self._dialect in ("postgresql", "mysql", "mariadb")
        self._due_index = f"ix_{table_name}_due_at"
        self._queue_index = f"ix_{table_name}_queue_due_at"
        self._claim_sqls: dict[tuple[int | None, str | None], str] = {}
        #: PostgreSQL notification channel announcing new jobs.
        self.channel = table_name
        #: Seconds between two reads of a change marker while changes come.
        self.wakeup_probe_interval = WAKEUP_PROBE_INTERVAL
        #: Seconds between two reads of a change marker once idle.
        self.idle_probe_interval = IDLE_PROBE_INTERVAL
        #: Seconds without a change after which the probe reads at the idle interval.
        self.probe_idle_after = PROBE_IDLE_AFTER
        # False while the change counters table is missing (MySQL/MariaDB, see setup).
        self._counting_changes = True
        # Connections this thread keeps are reopened when this number changes.
        self._generation = 0
        #: Seconds between checks that the SQLite file was not deleted or replaced.
        self.sqlite_file_check_interval = SQLITE_FILE_CHECK_INTERVAL
        self._sqlite_path = _sqlite_file_path(engine) if owned else None
        self._sqlite_file: tuple[int, int] | None = None
        self._sqlite_checked = time.monotonic()
        if self._sqlite_path is not None:
            event.listen(engine, "connect", self._remember_sqlite_file)

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        with self._setup_lock:
            if self._ready:
                return
            mysql = self._dialect in ("mysql", "mariadb")
            if self.create_table:
                if mysql:
                    self._choose_mysql_collation()
                try:
                    self.table.metadata.create_all(self.engine, checkfirst=True)
                except sa.exc.DBAPIError as exc:
                    # Two processes racing to create the table: the loser sees it exists.
                    text = str(exc).lower()
                    if "already exists" not in text and "duplicate" not in text:
                        raise
            self._upgrade_schema()
            if mysql:
                self._check_mysql_collation()
                if not self.create_table:
                    # A table left for migrations to make: adds skip the bump (and
                    # daemons poll) until it exists, rather than fail.
                    self._counting_changes = self._has_table(self.changes)
            self._ready = True

    def _has_table(self, table: sa.Table) -> bool:
        """Whether ``table`` exists (True when that cannot be told: its users say why)."""
        try:
            with self.engine.connect() as conn:
                return sa.inspect(conn).has_table(table.name)
        except sa.exc.DBAPIError:
            return True

    def schema_upgrade_statements(self) -> builtins.list[str]:
        """The statements that bring tables made by an older version up to date.

        Empty when they are. A jobs table without the ``queue`` column gets
        it (every existing job in the queue ``'default'``); a missing index of
        an existing table (the queue's, or one that processes racing to
        create the tables left out) and a missing run history or queues
        table are created. Nothing is listed while the jobs table itself
        does not exist.
        """
        with self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self.table.name):
                return []
            columns = {column["name"] for column in inspector.get_columns(self.table.name)}
            missing_tables = [
                t for t in (self.runs, self.queues, self.changes) if not inspector.has_table(t.name)
            ]
            # Every index of the tables that exist: an older table lacks the queue's,
            # and processes racing to create the tables may each stop at the first
            # index the other made, leaving the rest to this.
            missing_indexes = []
            for table in (self.table, self.runs, self.queues, self.changes):
                if table in missing_tables:
                    continue
                present = {index["name"] for index in inspector.get_indexes(table.name)}
                missing_indexes += [
                    index
                    for index in sorted(table.indexes, key=lambda index: str(index.name))
                    if index.name not in present
                ]
        dialect = self.engine.dialect
        preparer = dialect.identifier_preparer
        statements = []
        if "queue" not in columns:
            column = self.table.c.queue
            statements.append(
                f"ALTER TABLE {preparer.format_table(self.table)} "
                f"ADD COLUMN {preparer.format_column(column)} "
                f"{column.type.compile(dialect=dialect)} NOT NULL DEFAULT '{DEFAULT_QUEUE}'"
            )
        for index in missing_indexes:
            statements.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)))
        for table in missing_tables:
            statements.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip())
            statements.extend(
                str(sa.schema.CreateIndex(index).compile(dialect=dialect))
                for index in sorted(table.indexes, key=lambda index: str(index.name))
            )
        # One line each (a log line, an error line), the same statements.
        return [" ".join(statement.split()) for statement in statements]

    def _upgrade_hint(self) -> str:
        """`` (run: ...)`` naming :meth:`schema_upgrade_statements`, or ``''`` if none."""
        try:
            statements = self.schema_upgrade_statements()
        except Exception:
            return ""
        return f" (run: {'; '.join(statements)})" if statements else ""

    def _upgrade_schema(self) -> None:
        """Bring a jobs table made by an older version up to date (see
        :meth:`schema_upgrade_statements`); with ``pyncette.skip_table_create``,
        only warn, naming the statements to run."""
        try:
            statements = self.schema_upgrade_statements()
        except sa.exc.DBAPIError:
            return  # the table cannot be read: the first real statement says why
        if not statements:
            return
        if not self.create_table:
            log.warning(
                "table %s was made by an older version of pyramid_pyncette; with "
                "pyncette.skip_table_create it is left as it is, and the store fails until "
                "your migrations run: %s",
                self.table.name,
                "; ".join(statements),
            )
            return
        log.info("upgrading table %s: %s", self.table.name, "; ".join(statements))
        for statement in statements:
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
            except sa.exc.DBAPIError as exc:
                # Another process upgrading at the same time got there first.
                text = str(exc).lower()
                if "already exists" not in text and "duplicate" not in text:
                    raise

    def _choose_mysql_collation(self) -> None:
        """Create the table with the server's binary collation that also keeps trailing spaces.

        ``utf8mb4_bin`` pads: ``'a'`` and ``'a '`` would be one id. MariaDB
        (10.2+) has ``utf8mb4_nopad_bin``, MySQL (8.0.17+) ``utf8mb4_0900_bin``.
        """
        from sqlalchemy.dialects.mysql.base import MySQLDialect

        with self.engine.connect():
            pass  # the first connection tells the dialect what the server is
        dialect = self.engine.dialect
        assert isinstance(dialect, MySQLDialect)  # only called for mysql and mariadb URLs
        version = dialect.server_version_info or ()
        if dialect.is_mariadb:
            collation = "utf8mb4_nopad_bin"
        elif version >= (8, 0, 17):
            collation = "utf8mb4_0900_bin"
        else:
            return
        for table in (self.table, self.runs, self.queues, self.changes):
            for prefix in ("mysql", "mariadb"):
                table.dialect_kwargs[f"{prefix}_collate"] = collation

    def _check_mysql_collation(self) -> None:
        """Warn when an existing table compares job ids loosely (made before ids were binary)."""
        query = sa.text(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table AND COLUMN_NAME = 'id'"
        )
        try:
            with self.engine.connect() as conn:
                collation = conn.execute(query, {"table": self.table.name}).scalar()
        except sa.exc.DBAPIError:
            return
        if collation is None or (collation.startswith("utf8mb4_") and collation.endswith("bin")):
            return
        log.warning(
            "table %s compares job ids with the collation %s, so ids differing only in case, "
            "accents or trailing spaces are one job (and some characters cannot be stored); "
            "convert it: ALTER TABLE %s CONVERT TO CHARACTER SET utf8mb4 COLLATE %s",
            self.table.name,
            collation,
            self.table.name,
            self.table.dialect_kwargs.get("mysql_collate", "utf8mb4_bin"),
        )

    def close(self) -> None:
        with self._held_lock:
            held, self._held = self._held, []
        for conn in held:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def _connection(self, autocommit: bool, keep: bool) -> Iterator[Connection]:
        """A connection for claiming: the calling thread's kept one, or one from the pool.

        A kept connection that fails is closed, and replaced at the next call.
        PostgreSQL claims in autocommit mode, the others in transactions.
        """
        self._check_sqlite_file()
        if not self._ready:
            self.setup()
        if not keep:
            with self.engine.connect() as pooled:
                if autocommit:
                    pooled = pooled.execution_options(isolation_level="AUTOCOMMIT")
                yield pooled
            return
        name = "autocommit_conn" if autocommit else "conn"
        conn: Connection | None = getattr(self._local, name, None)
        if conn is not None and getattr(self._local, "generation", None) != self._generation:
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            setattr(self._local, name, conn)
            self._local.generation = self._generation
            with self._held_lock:
                self._held = [c for c in self._held if not c.closed]
                self._held.append(conn)
        try:
            yield conn
        except BaseException:
            setattr(self._local, name, None)
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _remember_sqlite_file(self, dbapi_connection: Any, connection_record: Any) -> None:
        """On each new connection: note which file the path names, if not known yet."""
        assert self._sqlite_path is not None  # listened for only when there is a file
        if self._sqlite_file is None:
            self._sqlite_file = _file_identity(self._sqlite_path)

    def _check_sqlite_file(self) -> None:
        """Reconnect if the SQLite file was deleted or replaced since it was opened.

        Open connections keep using the old file (an unlinked one, after a
        delete) while other processes write to the new file at that path:
        their jobs would never run. Checked at most every
        :attr:`sqlite_file_check_interval` seconds (one ``stat``).
        """
        if self._sqlite_path is None or self._sqlite_file is None:
            return
        now = time.monotonic()
        if now - self._sqlite_checked < self.sqlite_file_check_interval:
            return
        self._sqlite_checked = now
        current = _file_identity(self._sqlite_path)
        if current == self._sqlite_file:
            return
        log.warning(
            "the SQLite file %s was %s while this process had it open; reconnecting to the "
            "file now at that path (jobs that were only in the old file are gone with it)",
            self._sqlite_path,
            "deleted" if current is None else "replaced",
        )
        with self._setup_lock:
            self._sqlite_file = None
            self._ready = False  # the new file may need the table
            self._generation += 1  # threads reopen their kept connections
        self.engine.dispose()

    def release_thread_connection(self) -> None:
        """Give back the connection this thread kept for :meth:`complete_and_claim`."""
        for name in ("autocommit_conn", "conn"):
            conn = getattr(self._local, name, None)
            setattr(self._local, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        with self._held_lock:
            self._held = [c for c in self._held if not c.closed]

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        self._check_sqlite_file()
        if not self._ready:
            self.setup()
        return self.engine.begin()

    def _read(self) -> Connection:
        self._check_sqlite_file()
        if not self._ready:
            self.setup()
        conn = self.engine.connect()
        if self._dialect == "sqlite":
            conn = conn.execution_options(pyncette_sqlite_begin="DEFERRED")
        return conn

    # -- contract ---------------------------------------------------------

    def add(self, jobs: Sequence[Job], replace: bool = True) -> None:
        if not jobs:
            return
        with self._write() as conn:
            if not replace:
                existing = self._existing(conn, [job.id for job in jobs])
                jobs = [job for job in jobs if job.id not in existing]
            self.write_on(conn, jobs, ())

    def get_many(self, ids: Iterable[str]) -> dict[str, Job]:
        ids = list(ids)
        found: dict[str, Job] = {}
        if not ids:
            return found
        with self._read() as conn:
            for chunk in _chunks(ids):
                rows = conn.execute(sa.select(self.table).where(self.table.c.id.in_(chunk)))
                found.update((row.id, _row_to_job(row)) for row in rows)
        return found

    def apply(self, adds: Sequence[Job], removes: Sequence[str]) -> None:
        if not adds and not removes:
            return
        with self._write() as conn:
            self.write_on(conn, adds, removes)

    def write_on(
        self, conn: DBConnection, adds: Sequence[Job], removes: Sequence[str], announce: bool = True
    ) -> set[str]:
        """Write jobs through ``conn`` (a Connection or an ORM Session) in its transaction.

        Replaces existing ids; returns which of ``removes`` existed.
        ``announce=False`` leaves the listening daemons alone (staged rows).
        """
        table = self.table
        removed = self._existing(conn, removes) if removes else set()
        for chunk in _chunks(list(removed)):
            conn.execute(sa.delete(table).where(table.c.id.in_(chunk)))
        if adds:
            # Later duplicates of one id in the same batch win.
            rows = list({job.id: _job_to_row(job) for job in adds}.values())
            conn.execute(self._upsert, rows)
            if announce:
                self._announce(conn)
        return removed

    def _announce(self, conn: DBConnection) -> None:
        if self._dialect == "postgresql":
            # Delivered at commit, to the daemons LISTENing (see start_listener).
            conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})
        elif self._dialect in ("mysql", "mariadb") and self._counting_changes:
            # Seen at commit by the daemons' probes (see start_listener). The row
            # stays locked until then: one slot per thread, so a transaction bumps
            # one row however often it adds, and concurrent ones rarely share it.
            slot = hash((os.getpid(), threading.get_ident())) % CHANGE_SLOTS
            conn.execute(self._bump_change, {"slot": slot})

    @functools.cached_property
    def _bump_change(self) -> sa.TextClause:
        """Add 1 to a change counter, creating its row; garbage in it starts again at 0."""
        preparer = self.engine.dialect.identifier_preparer
        return sa.text(
            f"INSERT INTO {preparer.format_table(self.changes)} (slot, version) "
            "VALUES (:slot, 1) ON DUPLICATE KEY UPDATE "
            f"version = IF(version >= 0 AND version < {_CHANGE_WRAP}, version + 1, 0)"
        )

    def stage(
        self, jobs: Sequence[Job], removes: Sequence[str], token: str, window: float, now: datetime
    ) -> dict[str, Job]:
        table = self.table
        ids = list(dict.fromkeys([job.id for job in jobs] + list(removes)))
        previous: dict[str, Job] = {}
        with self._write() as conn:
            until = self._now(conn, now) + timedelta(seconds=window)
            for chunk in _chunks(ids):
                query = sa.select(table).where(table.c.id.in_(chunk))
                if self._dialect == "postgresql":
                    # Read what is replaced as it is when it is replaced (SQLite's
                    # write transaction already excludes other writers; MySQL's
                    # FOR UPDATE would gap-lock absent ids and deadlock inserts).
                    query = query.with_for_update()
                for row in conn.execute(query):
                    job = _row_to_job(row)
                    previous[job.id] = job
            staged = [staged_job(job, token, until) for job in jobs]
            self.write_on(conn, staged, removes, announce=False)
        return previous

    def publish(self, token: str, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        table = self.table
        # A job is usually due at its first run, which the staged row keeps in
        # next_run_at, and unlocked once published: those are published by
        # set-based statements.
        plain = [
            job.id for job in jobs if job.due_at == job.next_run_at and published_lock(job) is None
        ]
        published = set(plain)
        params = [
            {
                "b_id": job.id,
                "b_token": token,
                "locked_by": published_lock(job),
                "due_at": job.due_at,
            }
            for job in jobs
            if job.id not in published
        ]
        with self._write() as conn:
            for chunk in _chunks(plain):
                conn.execute(
                    sa.update(table)
                    .where(table.c.id.in_(chunk), table.c.locked_by == token)
                    .values(locked_by=None, due_at=table.c.next_run_at)
                )
            if params:
                conn.execute(self._update_locked, params)
            self._announce(conn)

    def withdraw(self, token: str, ids: Sequence[str], previous: Mapping[str, Job]) -> None:
        table = self.table
        staged = list(dict.fromkeys(ids))
        created = [job_id for job_id in staged if job_id not in previous]
        replaced = [previous[job_id] for job_id in staged if job_id in previous]
        removed = [job for job_id, job in previous.items() if job_id not in set(staged)]
        if not (created or replaced or removed):
            return
        with self._write() as conn:
            for chunk in _chunks(created):
                conn.execute(
                    sa.delete(table).where(table.c.id.in_(chunk), table.c.locked_by == token)
                )
            if replaced:
                rows = []
                for job in replaced:
                    row = _job_to_row(job)
                    row["b_id"] = row.pop("id")
                    row["b_token"] = token
                    rows.append(row)
                conn.execute(self._update_locked, rows)
            if removed:
                existing = self._existing(conn, [job.id for job in removed])
                removed = [job for job in removed if job.id not in existing]
                self.write_on(conn, removed, (), announce=False)
            if replaced or removed:
                self._announce(conn)

    @functools.cached_property
    def _update_locked(self) -> sa.Update:
        """An UPDATE of the row ``b_id`` only while it is locked by ``b_token``."""
        table = self.table
        return sa.update(table).where(
            table.c.id == sa.bindparam("b_id"), table.c.locked_by == sa.bindparam("b_token")
        )

    @functools.cached_property
    def _upsert(self) -> sa.Insert:
        """One INSERT that replaces an existing id (the dialect's upsert)."""
        table = self.table
        columns = [column.name for column in table.c if column.name != "id"]
        if self._dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            insert: postgresql.Insert | sqlite.Insert = (
                postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)
            )
            return insert.on_conflict_do_update(
                index_elements=[table.c.id],
                set_={name: insert.excluded[name] for name in columns},
            )
        if self._dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            statement = mysql.insert(table)
            return statement.on_duplicate_key_update(
                {name: statement.inserted[name] for name in columns}
            )
        raise NotImplementedError(f"no upsert for {self._dialect}")

    def _existing(self, conn: DBConnection, ids: Sequence[str]) -> set[str]:
        table = self.table
        found: set[str] = set()
        for chunk in _chunks(list(ids)):
            found.update(conn.execute(sa.select(table.c.id).where(table.c.id.in_(chunk))).scalars())
        return found

    def start_listener(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` when another connection may have added a job.

        PostgreSQL: LISTEN/NOTIFY. A SQLite file: a probe reads ``PRAGMA
        data_version`` on a connection it keeps when the file's log is
        written to (see :meth:`_probe_sqlite`). MySQL/MariaDB: a probe reads
        the change counters every add bumps (see :meth:`_probe_mysql`).
        Returns a function that stops listening; None where there is nothing
        to hear (an in-memory SQLite database: its daemon is in this process).
        """
        if self._dialect == "postgresql":
            return start_listener_thread(self._subscribe, callback)
        if self._dialect in ("mysql", "mariadb"):
            if self._ready and not self._counting_changes:
                return None  # no counters to read (see setup): daemons poll
            return start_listener_thread(self._probe_mysql, callback, name="pyncette-mysql-probe")
        if self._dialect == "sqlite" and _sqlite_file_path(self.engine) is not None:
            return start_listener_thread(self._probe_sqlite, callback, name="pyncette-sqlite-probe")
        return None

    @contextlib.contextmanager
    def _probe_sqlite(self) -> Iterator[Receive]:
        """A kept connection whose ``PRAGMA data_version`` tells of others' commits.

        The number is local to the connection: it changes when any other
        connection (this daemon's own included) commits a change to the
        file, and costs a few microseconds to read. It is read when the
        write-ahead log is written to (inotify, see
        :mod:`~pyramid_pyncette.repository.filewatch`: nothing runs while
        nothing is written), or, where the log cannot be watched, every
        :attr:`wakeup_probe_interval` seconds while changes come and every
        :attr:`idle_probe_interval` once idle (as MySQL's counters). Closed on exit.
        """
        if not self._ready:
            self.setup()
        path = _sqlite_file_path(self.engine)
        assert path is not None  # probed only for a file (see start_listener)
        with self.engine.connect() as conn, contextlib.ExitStack() as stack:
            try:
                raw: Any = conn.connection.dbapi_connection
                cursor = raw.cursor()
                generation = self._generation

                def read() -> object:
                    if self._generation != generation:
                        # The file was deleted or replaced: probe the one now at the path.
                        raise ConnectionResetError("the SQLite file changed; reopening the probe")
                    return cursor.execute("PRAGMA data_version").fetchone()

                read()  # the first read opens the write-ahead log, which is then watched
                try:
                    watch = watch_file(path + "-wal")
                except OSError as exc:
                    log.debug(
                        "cannot watch %s-wal (%s); probing every %ss",
                        path,
                        exc,
                        self.wakeup_probe_interval,
                    )
                    watch = None
                if watch is None:
                    yield probe_receive(
                        read,
                        self.wakeup_probe_interval,
                        idle_interval=self.idle_probe_interval,
                        idle_after=self.probe_idle_after,
                    )
                else:
                    stack.callback(watch.close)
                    # Woken by writes; the longer interval bounds a lost event and how
                    # long stopping the daemon waits for this thread.
                    yield watched_receive(read, watch.wait, WATCHED_PROBE_INTERVAL)
            finally:
                # Its cursor stays with it: never hand it back to the pool.
                conn.invalidate()

    @contextlib.contextmanager
    def _probe_mysql(self) -> Iterator[Receive]:
        """A kept autocommit connection reading the change counters (MySQL/MariaDB).

        Each read sums one primary-key range of :data:`CHANGE_SLOTS` rows
        (READ COMMITTED: every read sees the latest commits). MariaDB runs
        the reads in the server (see :func:`_mariadb_wait_statement`): one
        statement reads at the interval and returns at the first change, or
        after :data:`SERVER_WAIT` seconds, so the daemon's thread wakes only
        then. MySQL, without compound statements outside stored routines,
        reads from the daemon. Both read every :attr:`wakeup_probe_interval`
        seconds while changes come, stretching to :attr:`idle_probe_interval`
        after :attr:`probe_idle_after` seconds without one. Closed on exit.
        """
        if not self._ready:
            self.setup()
        if not self._counting_changes:
            raise RuntimeError(f"no table {self.changes.name} to read changes from")
        changes = self.changes
        table = self.engine.dialect.identifier_preparer.format_table(changes)
        where = f"WHERE slot >= 0 AND slot < {CHANGE_SLOTS}"
        query = f"SELECT SUM(version) FROM {table} {where}"
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                raw: Any = conn.connection.dbapi_connection
                cursor = raw.cursor()
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

                def read() -> object:
                    cursor.execute(query)
                    return cursor.fetchone()[0]

                if getattr(self.engine.dialect, "is_mariadb", False):
                    yield self._mariadb_receive(cursor, read(), table, where)
                else:
                    yield probe_receive(
                        read,
                        self.wakeup_probe_interval,
                        idle_interval=self.idle_probe_interval,
                        idle_after=self.probe_idle_after,
                    )
            finally:
                # Its cursor stays with it: never hand it back to the pool.
                conn.invalidate()

    def _mariadb_receive(self, cursor: Any, last: object, table: str, where: str) -> Receive:
        """A :data:`Receive` whose wait runs in the MariaDB server (see :meth:`_probe_mysql`)."""
        statement = _mariadb_wait_statement(table, where)
        changed_at = time.monotonic()

        def receive(timeout: float) -> bool:
            nonlocal last, changed_at
            pause = self.wakeup_probe_interval
            if time.monotonic() - changed_at >= self.probe_idle_after:
                pause = self.idle_probe_interval  # each read costs the server too
            wait = min(timeout, SERVER_WAIT)
            rounds = max(1, int(wait / pause)) if pause > 0 else 1
            cursor.execute(statement, {"rounds": rounds, "pause": pause, "last": last})
            value = cursor.fetchone()[0]
            if value == last:
                return False
            last, changed_at = value, time.monotonic()
            return True

        return receive

    @contextlib.contextmanager
    def _subscribe(self) -> Iterator[Receive]:
        """A connection LISTENing on :attr:`channel` (PostgreSQL), closed on exit."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                conn.exec_driver_sql(f'LISTEN "{self.channel}"')
                # psycopg 3's own connection: its notifies() waits for NOTIFY.
                raw: Any = conn.connection.dbapi_connection

                def receive(timeout: float) -> bool:
                    return any(True for _ in raw.notifies(timeout=timeout, stop_after=1))

                yield receive
            finally:
                # Never hand a LISTENing session back to the pool.
                conn.invalidate()

    def is_transient(self, exc: BaseException) -> bool:
        if self.describe_setup_error(exc) is not None:
            return False
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
            return True
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        return super().is_transient(exc)

    # Errors that no retry fixes, by driver: SQLSTATE (psycopg), error number
    # (PyMySQL) or, where the driver gives no code, the server's message
    # (libpq reports refused logins without a SQLSTATE).
    _SQLSTATE_PROBLEMS = {
        "28P01": "credentials",
        "28000": "credentials",
        "3D000": "database",
        "42P01": "table",
        "42501": "permission",
        "42703": "schema",
    }
    _MYSQL_PROBLEMS = {
        1045: "credentials",
        1698: "credentials",
        1044: "permission",
        1142: "permission",
        1049: "database",
        1146: "table",
        1054: "schema",
    }
    _MESSAGE_PROBLEMS = (
        (re.compile("password authentication failed|no password supplied"), "credentials"),
        (re.compile('no pg_hba.conf entry|role "[^"]*" does not exist'), "credentials"),
        (re.compile('database "[^"]*" does not exist'), "database"),
        (re.compile("no such table"), "table"),  # SQLite
        (re.compile("no such column"), "schema"),  # SQLite
    )

    def describe_setup_error(self, exc: BaseException) -> str | None:
        orig = getattr(exc, "orig", None) or exc
        problem = None
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        args: tuple[Any, ...] = getattr(orig, "args", ())
        if "pymysql" in type(orig).__module__ or "MySQLdb" in type(orig).__module__:
            if args and isinstance(args[0], int):
                problem = self._MYSQL_PROBLEMS.get(args[0])
        elif code:
            problem = self._SQLSTATE_PROBLEMS.get(code)
        elif isinstance(exc, sa.exc.DBAPIError):
            text = str(orig)
            if self._dialect == "sqlite" or "FATAL:" in text:
                problem = next((p for rx, p in self._MESSAGE_PROBLEMS if rx.search(text)), None)
        if problem is None:
            return super().describe_setup_error(exc)
        detail = str(orig).strip()
        if "FATAL:" in detail:  # libpq: "connection to server at ... failed: FATAL:  ..."
            detail = detail.rpartition("FATAL:")[2]
        if len(args) == 2 and isinstance(args[1], str):  # PyMySQL: (number, message)
            detail = f"{args[0]} {args[1]}"
        detail = " ".join(redact_text(detail.strip().split("\n")[0]).split())
        table = self.table.name
        upgrade = self._upgrade_hint() if problem in ("table", "schema") else ""
        if problem == "table" and upgrade:
            # The jobs table is there, the tables beside it are not: an older version's.
            problem = "schema"
        fix = {
            "credentials": "the store refused the login; fix the user and password in pyncette.url",
            "database": "the database does not exist; create it or fix its name in pyncette.url",
            "permission": f"the store's user may not use the database or the {table!r} table; "
            "grant it the rights or use another user in pyncette.url",
            "table": f"the {table!r} table does not exist"
            + (
                f"; create it with your migrations{upgrade} or set "
                "pyncette.skip_table_create = false"
                if not self.create_table
                else "; check pyncette.table_name"
            ),
            "schema": f"the {self.table.name!r} table was made by an older version of "
            f"pyramid_pyncette; bring it up to date with your migrations{upgrade} or set "
            "pyncette.skip_table_create = false",
        }[problem]
        return f"{fix} ({detail})"

    def is_row_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing the values of a row, not a store failure.

        A data or integrity error (SQLSTATE classes 22 and 23, which MySQL
        drivers report as operational errors too), or a value the driver
        could not send (text with a lone surrogate).
        """
        if isinstance(exc, sa.exc.DBAPIError):
            if exc.connection_invalidated:
                return False
            if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
                return True
            orig = exc.orig
            state = getattr(orig, "sqlstate", None)
            if isinstance(state, str) and state[:2] in ("22", "23"):
                return True
            name = getattr(orig, "sqlite_errorname", None)
            if isinstance(name, str) and name.startswith(_SQLITE_ROW_ERRORS):
                return True
            # PyMySQL carries no SQLSTATE, and older releases report some data
            # and constraint errors (MariaDB's 4025) as OperationalError.
            args: tuple[Any, ...] = getattr(orig, "args", ())
            return bool(args) and args[0] in _MYSQL_ROW_ERRORS
        if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
            # Raised before the statement reached the database: a value the driver refused.
            exc = exc.orig
        return super().is_row_error(exc)

    def remove(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        with self._write() as conn:
            return self.write_on(conn, (), ids)

    def get(self, job_id: str) -> Job | None:
        with self._read() as conn:
            return self.get_on(conn, job_id)

    def get_on(self, conn: DBConnection, job_id: str) -> Job | None:
        """One job read through ``conn`` (a Connection or the app's Session)."""
        row = conn.execute(sa.select(self.table).where(self.table.c.id == job_id)).first()
        return None if row is None else _row_to_job(row)

    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        table = self.table
        return self._page(None if task is None else table.c.task == task, cursor, limit)

    def list_for_sync(self, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Parked jobs (found by the ``due_at`` index) and jobs named after their task."""
        table = self.table
        candidates = sa.or_(table.c.due_at.is_(None), table.c.id == table.c.task)
        return self._page(candidates, cursor, limit)

    def _page(
        self, condition: ColumnElement[bool] | None, cursor: str | None, limit: int
    ) -> JobPage:
        table = self.table
        query = sa.select(table).order_by(table.c.id).limit(limit + 1)
        if condition is not None:
            query = query.where(condition)
        if cursor is not None:
            query = query.where(table.c.id > cursor)
        with self._read() as conn:
            jobs = [_row_to_job(row) for row in conn.execute(query)]
        return JobPage.read_ahead(jobs, limit)

    def _now(self, conn: Connection, now: datetime) -> datetime:
        """The store's clock when it has one (and it is in use), else ``now``."""
        if not self.store_clock:
            return now
        if self._dialect == "postgresql":
            value = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        else:
            value = conn.execute(sa.text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def claim(
        self,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        claim = Claim(now, limit, token, default_lease, queues)
        return self._write_and_claim((), claim, (), keep=False)

    def _complete_then_claim(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord] = ()
    ) -> builtins.list[Lease]:
        """Write ``outcomes`` and claim, on a connection the calling thread keeps.

        PostgreSQL deletes finished one-off runs and appends ``runs`` inside
        its claim statement; the other databases write the outcomes and the
        runs and claim in one transaction.
        A worker's loop calls this many times a second: keeping its
        connection spares a pool checkout (and its liveness ping) per call.
        :meth:`release_thread_connection` gives it back.
        """
        return self._write_and_claim(outcomes, claim, runs, keep=True)

    def _write_and_claim(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord], keep: bool
    ) -> builtins.list[Lease]:
        try:
            return self._complete_and_claim_batch(outcomes, claim, runs, keep)
        except Exception as exc:
            if not self.is_row_error(exc):
                raise
            # One row's values, not the store: nothing of the batch was written.
            log.warning("the store refused a row of a batch (%s); writing row by row", exc)
        return self._complete_and_claim_row_by_row(outcomes, claim, runs)

    def _complete_and_claim_batch(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord], keep: bool
    ) -> builtins.list[Lease]:
        if self._dialect == "postgresql":
            finished, others = split_finished(outcomes)
            if others:
                self.complete(others)
            done = []
            for plan, _ in finished:
                assert plan.token is not None  # split_finished keeps lease-guarded deletes only
                done.append((plan.job_id, plan.token))
            return self._claim_postgresql(claim, done, runs, keep)
        with self._connection(autocommit=False, keep=keep) as conn, conn.begin():
            if outcomes:
                self.complete_on(conn, outcomes)
            if runs:
                self._insert_runs(conn, runs)
            if claim.limit <= 0:
                return []
            return self._claim_on(conn, claim)

    def _complete_and_claim_row_by_row(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord]
    ) -> builtins.list[Lease]:
        """:meth:`complete_and_claim` after the database refused a row of the batch.

        The outcomes are written one by one (see :meth:`complete`), then the
        claim writes each row in a savepoint of its own: a row the database
        still refuses is parked, the others are claimed as usual.
        """
        if outcomes or runs:
            self.complete(outcomes, runs)
        if claim.limit <= 0:
            return []
        with self._write() as conn:
            if self._dialect == "postgresql" and self.store_clock:
                claim = claim._replace(now=self._now(conn, claim.now))
            return self._claim_on(conn, claim, row_by_row=True)

    def _claimable(self, queues: frozenset[str] | None) -> ColumnElement[bool]:
        """Jobs of ``queues`` (None: every queue) that are not in a paused queue."""
        queue = self.table.c.queue
        name: ColumnElement[str] = self.queues.c.name
        if self._dialect in ("mysql", "mariadb"):
            # The queue column of a table made before the queues table may have
            # another binary collation (utf8mb4_bin, utf8mb4_nopad_bin): MySQL
            # refuses to compare two columns whose collations differ.
            name = name.collate("utf8mb4_bin")
        paused = sa.select(name).where(self.queues.c.paused)
        condition: ColumnElement[bool] = queue.not_in(paused)
        if queues is not None:
            condition = sa.and_(queue.in_(sorted(queues)), condition)
        return condition

    def _claim_on(
        self, conn: Connection, claim: Claim, row_by_row: bool = False
    ) -> builtins.list[Lease]:
        """SQLite and MySQL: select due rows (``SKIP LOCKED`` on MySQL), then write their plans.

        ``row_by_row`` writes each plan in a savepoint of its own and parks a
        row the database refuses (any dialect: PostgreSQL's claim falls back
        to this too).
        """
        now, limit, token, default_lease, queues = claim
        table = self.table
        mysql = self._dialect in ("mysql", "mariadb")
        clock = sa.func.utc_timestamp(6) if mysql and self.store_clock else None
        if clock is not None:
            # The server's clock, read by the same statement that picks the rows.
            query = sa.select(table, clock.label("pyncette_clock")).where(table.c.due_at <= clock)
        else:
            query = sa.select(table).where(table.c.due_at <= now)
        query = query.where(self._claimable(queues)).order_by(table.c.due_at).limit(limit)
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        if mysql:
            # Without the index InnoDB may scan and sort the whole table,
            # locking every due row until commit: other daemons would
            # then skip them all and find nothing to claim. A daemon serving
            # one queue reads only its rows, in order, by the index that leads
            # with the queue; for several, that index would need a sort of all
            # their due rows (each locked until commit), so they walk due_at.
            index = (
                self._queue_index if queues is not None and len(queues) == 1 else self._due_index
            )
            hint = f"FORCE INDEX ({index})"
            query = query.with_hint(table, hint, "mysql").with_hint(table, hint, "mariadb")
        rows: Sequence[Sequence[Any]] = conn.execute(query).all()
        if not rows:
            return []
        if clock is not None:
            now = utc(rows[0][-1])
            rows = [row[:-1] for row in rows]
        plans = [
            plan_claim(_row_to_job(row), now, token, default_lease, checked=True) for row in rows
        ]
        keys = [(row[0], row[_LOCKED_BY]) for row in rows]
        if not row_by_row:
            self._apply_claim(conn, plans, token, keys)
            return [plan.lease for plan in plans]
        leases = []
        for plan, key in zip(plans, keys, strict=True):
            try:
                with conn.begin_nested():
                    self._apply_claim(conn, [plan], token, [key])
            except Exception as exc:
                if not self.is_row_error(exc):
                    raise
                self._park_unwritable(conn, plan.job.id, None, now, exc)
            else:
                leases.append(plan.lease)
        return leases

    def _park_unwritable(
        self, conn: Connection, job_id: str, token: str | None, now: datetime, exc: BaseException
    ) -> None:
        """Park the row the database refused to write (see :func:`unwritable_row_values`).

        ``token`` guards the write (``None``: the caller holds the row).
        """
        values = unwritable_row_values(now, exc)
        log.error("job %r is parked as failed: %s", job_id, values["last_error"])
        table = self.table
        where = table.c.id == job_id
        if token is not None:
            where = sa.and_(where, table.c.locked_by == token)
        with conn.begin_nested():
            conn.execute(sa.update(table).where(where).values(locked_by=None, **values))

    @property
    def _claim_sql(self) -> str:
        """PostgreSQL's claim of every queue that writes no run record (see
        :meth:`_claim_sql_for`)."""
        return self._claim_sql_for(None, None)

    def _claim_sql_for(self, served: int | None, record: str | None) -> str:
        """PostgreSQL's claim: one statement, run outside any explicit transaction.

        It reads the clock once (the server's, unless the caller's ``now`` is
        given), deletes the rows of finished one-off runs still locked by
        their claim, appends the run records (``record``: None for none, ``'shared'``
        when their daemon columns are bound once, ``'each'`` when each record has
        its own; see :func:`_pg_run_params`), and leases up
        to ``limit`` due rows picked with ``FOR UPDATE SKIP LOCKED``, of the
        ``served`` queues given (their number; None: every queue) that are
        not paused, doing to each what :func:`plan_claim` does to an
        at-least-once job. It returns that clock and the leased rows as they are now;
        driver values, no type processing.
        """
        served = None if served is None else min(served, 2)  # none, one, several
        key = (served, record)
        if key not in self._claim_sqls:
            self._claim_sqls[key] = self._build_claim_sql(served, record)
        return self._claim_sqls[key]

    def _build_claim_sql(self, served: int | None, record: str | None) -> str:
        preparer = self.engine.dialect.identifier_preparer
        table = preparer.format_table(self.table)
        queues = preparer.format_table(self.queues)
        columns = ", ".join(f"j.{preparer.quote(name)}" for name in COLUMNS)
        served_only = "" if served is None else "AND j.queue = ANY(%(queues)s::text[])"
        # One queue: ordered by (queue, due_at), the order of the index that leads with the
        # queue (the same order, the queue being one), so that the planner reads that
        # index from the first due row of the queue, whatever other queues hold.
        order = "j.queue, j.due_at" if served == 1 else "j.due_at"
        recorded = ""
        if record is not None:
            runs = _pg_runs_insert_sql(preparer.format_table(self.runs), record == "shared")
            recorded = f"""
), recorded AS (
    {runs}"""
        return f"""
WITH clock AS MATERIALIZED (
    SELECT COALESCE(%(now)s::timestamptz, clock_timestamp()) AS now
), finished AS (
    DELETE FROM {table} AS f
    USING unnest(%(done_ids)s::text[], %(done_tokens)s::text[]) AS d(id, token)
    WHERE f.id = d.id AND f.locked_by = d.token{recorded}
), due AS (
    -- A scalar subquery, so that the time bounds an index range scan (on
    -- (queue, due_at) when the queues are given).
    SELECT j.id, j.due_at FROM {table} AS j
    WHERE j.due_at <= (SELECT now FROM clock) AND j.id <> ALL(%(done_ids)s::text[])
        {served_only}
        AND j.queue NOT IN (SELECT q.name FROM {queues} AS q WHERE q.paused)
    ORDER BY {order}
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET locked_by = %(token)s,
    attempts = j.attempts + 1,
    next_run_at = COALESCE(j.next_run_at, j.due_at),
    due_at = clock.now + %(lease_us)s * interval '1 microsecond'
FROM clock
WHERE j.id = ANY(ARRAY(SELECT id FROM due))
RETURNING clock.now, {columns}, (SELECT d.due_at FROM due AS d WHERE d.id = j.id)
"""

    def _claim_postgresql(
        self,
        claim: Claim,
        finished: Sequence[tuple[str, str]],
        runs: Sequence[RunRecord],
        keep: bool,
    ) -> builtins.list[Lease]:
        """Claim (delete ``finished`` ``(id, token)`` rows, append ``runs``) in one round trip.

        Rows whose plan is not a plain lease (at-most-once, misfires,
        unreadable rows, a lease of their own length) are then rewritten from
        their plans by a second statement, before anything runs them: a crash
        in between leaves them leased and unrun, to be claimed again when the
        lease expires. That statement only touches rows still locked by this
        claim's ``token``: a row replaced or re-claimed in between (this
        process paused longer than the lease) is left alone, and its run is
        dropped from the result, never run.
        """
        now, limit, token, default_lease, queues = claim
        lease_us = _micros(default_lease)
        params: dict[str, Any] = {
            "now": None if self.store_clock else now,
            "done_ids": [job_id for job_id, _ in finished],
            "done_tokens": [done_token for _, done_token in finished],
            "limit": max(limit, 0),
            "token": token,
            "lease_us": lease_us,
        }
        if queues is not None:
            params["queues"] = sorted(queues)
        record = None
        if runs:
            run_params, shared = _pg_run_params(runs)
            params.update(run_params)
            record = "shared" if shared else "each"
        sql = self._claim_sql_for(None if queues is None else len(queues), record)
        with self._connection(autocommit=True, keep=keep) as conn:
            result = conn.exec_driver_sql(sql, params)
            rows: Sequence[Sequence[Any]]
            try:
                rows = result.all()
            except sa.exc.DataError:
                # A stored time psycopg cannot load (infinity, a year past 9999): the
                # statement is done, so its rows are read again, tolerantly.
                rows = self._claimed_rows(conn, token, lease_us)
        leases = []
        rewrites = []
        for row in rows:
            now = utc(row[0])
            values = list(row[: 1 + len(COLUMNS)])
            # The row as it was before the statement, for plan_claim: one
            # attempt less, due when it was (a retry's time; the scheduled time
            # when the rows were read again).
            if type(values[_ATTEMPTS]) is int:
                values[_ATTEMPTS] -= 1
            was_due = row[1 + len(COLUMNS)] if len(row) > 1 + len(COLUMNS) else None
            values[_DUE_AT] = values[_NEXT_RUN_AT] if was_due is None else was_due
            before = _job_from_columns(tuple(values[1:]), raw=True)
            plan = plan_claim(before, now, token, default_lease, checked=True)
            leases.append(plan.lease)
            if plan.action != "lease" or (
                before.options and _micros(before.lease_duration or default_lease) != lease_us
            ):
                rewrites.append(plan)
        if not rewrites:
            return leases
        with self._connection(autocommit=True, keep=keep) as conn:
            written = self._apply_claim_postgresql(conn, rewrites, token)
        lost = {plan.job.id for plan in rewrites} - written
        if lost:
            log.debug("claim %s lost %d row(s) to a replacement or another claim", token, len(lost))
            leases = [lease for lease in leases if lease.job.id not in lost]
        return leases

    @functools.cached_property
    def _rewrite_claim_sql(self) -> str:
        """PostgreSQL: write claim plans to rows still locked by the claim; return their ids."""
        preparer = self.engine.dialect.identifier_preparer
        table = preparer.format_table(self.table)
        return f"""
WITH gone AS (
    DELETE FROM {table} AS j
    WHERE j.id = ANY(%(delete_ids)s::text[]) AND j.locked_by = %(token)s
    RETURNING j.id
), moved AS (
    UPDATE {table} AS j
    SET due_at = v.due_at, next_run_at = v.next_run_at,
        locked_by = v.locked_by, attempts = v.attempts
    FROM unnest(
        %(ids)s::text[], %(due_at)s::timestamptz[], %(next_run_at)s::timestamptz[],
        %(locked_by)s::text[], %(attempts)s::integer[]
    ) AS v(id, due_at, next_run_at, locked_by, attempts)
    WHERE j.id = v.id AND j.locked_by = %(token)s
    RETURNING j.id
)
SELECT id FROM gone UNION ALL SELECT id FROM moved
"""

    def _apply_claim_postgresql(
        self, conn: Connection, plans: Sequence[Any], token: str
    ) -> set[str]:
        """Write ``plans`` in one statement guarded by ``token``; return the ids it wrote."""
        deletes = [plan.job.id for plan in plans if plan.action == "delete"]
        moves = [plan.job for plan in plans if plan.action != "delete"]
        params = {
            "token": token,
            "delete_ids": deletes,
            "ids": [job.id for job in moves],
            "due_at": [job.due_at for job in moves],
            "next_run_at": [job.next_run_at for job in moves],
            "locked_by": [job.locked_by for job in moves],
            "attempts": [job.attempts for job in moves],
        }
        return set(conn.exec_driver_sql(self._rewrite_claim_sql, params).scalars())

    def _claimed_rows(
        self, conn: Connection, token: str, lease_us: int
    ) -> builtins.list[tuple[Any, ...]]:
        """The rows PostgreSQL's claim statement just leased with ``token``, as it returns them.

        JSON stays text and times are read by :class:`UTCDateTime` (an
        unreadable one is its text), so no value can fail the read. The
        statement's clock is the leases' start: it set every ``due_at`` to
        that clock plus ``lease_us``.
        """
        table = self.table
        columns = [
            sa.type_coerce(column, sa.Text) if isinstance(column.type, JSONText) else column
            for column in table.c
        ]
        rows = conn.execute(sa.select(*columns).where(table.c.locked_by == token)).all()
        claimed = []
        for row in rows:
            due_at = row[COLUMNS.index("due_at")]
            clock = (
                due_at - timedelta(microseconds=lease_us) if isinstance(due_at, datetime) else None
            )
            claimed.append((clock, *row))
        return claimed

    def _apply_claim(
        self,
        conn: Connection,
        plans: Sequence[ClaimPlan],
        token: str,
        keys: Sequence[tuple[Any, Any]],
    ) -> None:
        """SQLite and MySQL: write claim plans set-based, in the claim's own transaction.

        ``keys`` holds each plan's ``(id, locked_by)`` as the claim read them:
        every statement matches both, so nothing but the rows just read is
        written. They stay locked until commit, so a mismatch means that
        promise was broken: the whole claim is undone rather than run.
        """
        table = self.table
        leases: dict[tuple[datetime | None, Any], list[Any]] = {}
        deletes: dict[Any, list[Any]] = {}
        advances: list[dict[str, Any]] = []
        for plan, (job_id, lock) in zip(plans, keys, strict=True):
            if plan.action == "lease":
                leases.setdefault((plan.job.due_at, lock), []).append(job_id)
            elif plan.action == "delete":
                deletes.setdefault(lock, []).append(job_id)
            else:
                advances.append(
                    {
                        "b_id": job_id,
                        "b_lock": lock,
                        "due_at": plan.job.due_at,
                        "next_run_at": plan.job.next_run_at,
                        "locked_by": plan.job.locked_by,
                        "attempts": plan.job.attempts,
                    }
                )
        written = 0
        # The same values plan_claim computed for each leased row: the scheduled
        # time kept in next_run_at, one more attempt, the lock and its expiry.
        for (until, lock), ids in leases.items():
            statement = (
                sa.update(table)
                .where(table.c.id.in_(ids), table.c.locked_by.is_not_distinct_from(lock))
                .values(
                    locked_by=token,
                    attempts=table.c.attempts + 1,
                    next_run_at=sa.func.coalesce(table.c.next_run_at, table.c.due_at),
                    due_at=until,
                )
            )
            written += conn.execute(statement).rowcount
        for lock, ids in deletes.items():
            removal = sa.delete(table).where(
                table.c.id.in_(ids), table.c.locked_by.is_not_distinct_from(lock)
            )
            written += conn.execute(removal).rowcount
        if advances:
            statement = sa.update(table).where(
                table.c.id == sa.bindparam("b_id"),
                table.c.locked_by.is_not_distinct_from(sa.bindparam("b_lock")),
            )
            written += conn.execute(statement, advances).rowcount
        if written != len(plans):
            raise RepositoryError(
                f"claim {token} found {len(plans) - written} of its {len(plans)} locked rows "
                "changed before it wrote them; nothing was claimed, the next poll tries again"
            )

    def complete(self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()) -> None:
        """Apply ``outcomes`` and append ``runs`` in one transaction; row by row if the
        database refuses a row.

        A row it still refuses, even with its text in ASCII, is parked as
        failed with an error saying why: one job's values never stop the
        others' results from being written. Run records are written with
        the batch (one insert), or on their own after a refused row.
        """
        if not outcomes and not runs:
            return
        try:
            with self._write() as conn:
                if outcomes:
                    self.complete_on(conn, outcomes)
                if runs:
                    self._insert_runs(conn, runs)
            return
        except Exception as exc:
            if not self.is_row_error(exc):
                raise
            log.warning("the store refused a result of a batch (%s); writing one by one", exc)
        for outcome in outcomes:
            self._complete_one(plan_completion(outcome), outcome.finished_at)
        if runs:
            self._insert_runs_alone(runs)

    def _insert_runs(self, conn: Connection, runs: Sequence[RunRecord]) -> None:
        """Append ``runs`` to the run history through ``conn``: one insert statement."""
        if self._dialect == "postgresql":
            params, shared = _pg_run_params(runs)
            conn.exec_driver_sql(self._pg_runs_insert(shared), params)
            return
        fast = self._runs_insert
        if fast is None:
            conn.execute(sa.insert(self.runs), [_run_row(run) for run in runs])
            return
        # The statement compiled once and each time bound by the columns' own
        # processor: the worker's loop writes a record per run, and the generic
        # executemany path costs several times the insert itself.
        sql, bind_time, named = fast
        values = [_run_values(run, bind_time) for run in runs]
        if named:
            conn.exec_driver_sql(sql, [dict(zip(_RUN_COLUMNS, row, strict=True)) for row in values])
        else:
            conn.exec_driver_sql(sql, values)

    def _pg_runs_insert(self, shared: bool) -> str:
        """PostgreSQL's insert of run records (see :func:`_pg_runs_insert_sql`)."""
        preparer = self.engine.dialect.identifier_preparer
        return _pg_runs_insert_sql(preparer.format_table(self.runs), shared)

    @functools.cached_property
    def _runs_insert(self) -> tuple[str, Callable[[Any], Any], bool] | None:
        """The run history's INSERT for the driver, the binder of its times, and whether
        its parameters are named (else positional, in :data:`_RUN_COLUMNS` order); None
        where a column other than the times has a binder of its own, or the parameters
        are neither (the generic insert is used)."""
        dialect = self.engine.dialect
        compiled = sa.insert(self.runs).compile(dialect=dialect, column_keys=list(_RUN_COLUMNS))
        if compiled.positional:
            if tuple(compiled.positiontup or ()) != _RUN_COLUMNS:
                return None
        elif set(compiled.params) != set(_RUN_COLUMNS):
            return None
        binders = {
            name: self.runs.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in _RUN_COLUMNS
        }
        if any(binders[name] is not None for name in _RUN_COLUMNS if name not in _RUN_TIMES):
            return None
        process = binders["finished_at"] or _unchanged
        if _binds_like(process, _sqlite_utc_text):
            process = _sqlite_utc_text
        return str(compiled), process, not compiled.positional

    def _insert_runs_alone(self, runs: Sequence[RunRecord]) -> None:
        """Append ``runs`` in a transaction of their own; a record the database still
        refuses is logged and dropped (the history is a record, never a reason to stop)."""
        try:
            with self._write() as conn:
                self._insert_runs(conn, runs)
            return
        except Exception as exc:
            if not self.is_row_error(exc):
                raise
        for run in runs:
            try:
                with self._write() as conn:
                    self._insert_runs(conn, [run])
            except Exception as exc:
                if not self.is_row_error(exc):
                    raise
                log.error("a run of job %r could not be recorded: %s", run.job_id, exc)

    def _complete_one(self, plan: CompletionPlan, now: datetime) -> None:
        """Write one completion plan alone; a row the database refuses is parked."""
        refused: BaseException | None = None
        for text in (storable_text, ascii_text):
            try:
                with self._write() as conn:
                    self._write_completions(conn, [plan], text)
                return
            except Exception as exc:
                if not self.is_row_error(exc):
                    raise
                refused = exc
        assert refused is not None
        if plan.token is None:
            # At-most-once: the claim already moved the row on; only the note is lost.
            log.error("job %r: its last result could not be stored (%s)", plan.job_id, refused)
            return
        with self._write() as conn:
            self._park_unwritable(conn, plan.job_id, plan.token, now, refused)

    def complete_on(self, conn: DBConnection, outcomes: Sequence[Outcome]) -> int:
        """Apply outcomes through ``conn`` (a Connection or the app's Session).

        Returns how many lease-guarded rows matched: 0 for a lost lease.
        Run records are not written here: the worker appends them with its
        next batch (:meth:`complete_and_claim`).
        """
        return self._write_completions(conn, [plan_completion(o) for o in outcomes])

    def _write_completions(
        self,
        conn: DBConnection,
        plans: Sequence[CompletionPlan],
        text: Callable[..., Any] = storable_text,
    ) -> int:
        """Write completion plans, their error text made storable by ``text``."""
        table = self.table
        deletes: dict[str | None, list[str]] = {}
        settles: list[dict[str, Any]] = []
        notes: list[dict[str, Any]] = []
        unguarded: list[dict[str, Any]] = []
        for plan in plans:
            params = {
                "b_id": plan.job_id,
                "b_token": plan.token,
                **storable_values(plan.values, text),
            }
            if plan.action == "delete":
                deletes.setdefault(plan.token, []).append(plan.job_id)
            elif plan.action == "settle":
                settles.append(params)
            elif plan.token is None:
                unguarded.append(params)
            else:
                notes.append(params)
        guard = sa.and_(
            table.c.id == sa.bindparam("b_id"), table.c.locked_by == sa.bindparam("b_token")
        )
        matched = 0
        # Finished one-off jobs, the bulk of a drain: one DELETE per claim token.
        for token, ids in deletes.items():
            for chunk in _chunks(ids):
                removal = sa.delete(table).where(table.c.locked_by == token, table.c.id.in_(chunk))
                matched += _rowcount(conn, removal)
        if settles:
            settle = sa.update(table).where(guard).values(locked_by=None)
            matched += _rowcount(conn, settle, settles)
        if notes:
            matched += _rowcount(conn, sa.update(table).where(guard), notes)
        if unguarded:
            unguarded = [{k: v for k, v in p.items() if k != "b_token"} for p in unguarded]
            conn.execute(sa.update(table).where(table.c.id == sa.bindparam("b_id")), unguarded)
        return matched

    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        if not leases:
            return set()
        table = self.table
        with self._write() as conn:
            now = self._now(conn, now)
            params = [
                {"b_id": i, "b_token": t, "due_at": now + timedelta(seconds=s)}
                for i, t, s in leases
            ]
            conn.execute(
                sa.update(table).where(
                    table.c.id == sa.bindparam("b_id"),
                    table.c.locked_by == sa.bindparam("b_token"),
                ),
                params,
            )
            tokens = {t for _, t, _ in leases}
            held = conn.execute(
                sa.select(table.c.id, table.c.locked_by).where(
                    table.c.id.in_([i for i, _, _ in leases]), table.c.locked_by.in_(tokens)
                )
            ).all()
        wanted = {(i, t) for i, t, _ in leases}
        return {row.id for row in held if (row.id, row.locked_by) in wanted}

    def release(self, leases: Sequence[Lease]) -> None:
        params = [
            {
                "b_id": lease.job.id,
                "b_token": lease.token,
                "due_at": lease.attempt_due_at,
                "attempts": max(lease.job.attempts - 1, 0),
            }
            for lease in leases
            if lease.token is not None
        ]
        if not params:
            return
        table = self.table
        with self._write() as conn:
            conn.execute(
                sa.update(table)
                .where(
                    table.c.id == sa.bindparam("b_id"),
                    table.c.locked_by == sa.bindparam("b_token"),
                )
                .values(locked_by=None),
                params,
            )

    def next_due(self, queues: frozenset[str] | None = None) -> datetime | None:
        with self._read() as conn:
            value, _ = self._earliest_due(conn, queues, None)
        # An unreadable time is no due time (the claim parks such a job if it is due).
        return value if isinstance(value, datetime) else None

    def next_due_delay(self, now: datetime, queues: frozenset[str] | None = None) -> float | None:
        if not self.store_clock:
            return super().next_due_delay(now, queues)
        # The server's clock, read by the same statement as the earliest due time.
        if self._dialect == "postgresql":
            clock = sa.func.clock_timestamp()
        else:
            clock = sa.func.utc_timestamp(6)
        with self._read() as conn:
            due, server_now = self._earliest_due(conn, queues, clock)
        if not isinstance(due, datetime):
            return None  # none, or unreadable (see next_due)
        return (due - utc(server_now)).total_seconds()

    def _earliest_due(
        self, conn: Connection, queues: frozenset[str] | None, clock: Any
    ) -> tuple[Any, Any]:
        """``(earliest due_at, clock)`` of the jobs of ``queues`` (None: all) not paused.

        The paused queues are read first, so that each served queue's
        earliest time is one index lookup (``MIN`` over ``(queue, due_at)``),
        and every queue's is the ``due_at`` index's first entry (the first
        not paused, when some queue is). ``clock`` (a SQL expression, or None)
        is read by the same statement as the time.
        """
        table = self.table
        paused_names = sa.select(self.queues.c.name).where(self.queues.c.paused)
        paused = set(conn.execute(paused_names).scalars())
        earliest = sa.func.min(table.c.due_at)
        selects: builtins.list[sa.Select[Any]] = []
        if queues is None and not paused:
            selects.append(sa.select(earliest.label("due_at")))
        elif queues is None:
            # MIN with a filter on another column would read a whole index on
            # MySQL: walk the due_at index instead, skipping the paused queues' rows.
            query = (
                sa.select(table.c.due_at)
                .where(table.c.due_at.is_not(None), table.c.queue.not_in(sorted(paused)))
                .order_by(table.c.due_at)
                .limit(1)
            )
            if self._dialect in ("mysql", "mariadb"):
                hint = f"FORCE INDEX ({self._due_index})"
                query = query.with_hint(table, hint, "mysql").with_hint(table, hint, "mariadb")
            selects.append(query)
        else:
            selects.extend(
                sa.select(earliest.label("due_at")).where(table.c.queue == name)
                for name in sorted(queues - paused)
            )
        if not selects:
            return None, None
        if len(selects) == 1 and clock is None:
            return conn.execute(selects[0]).scalar(), None
        each = selects[0].subquery() if len(selects) == 1 else sa.union_all(*selects).subquery()
        columns = [sa.func.min(each.c.due_at)] + ([clock] if clock is not None else [])
        row = conn.execute(sa.select(*columns)).one()
        return row[0], (row[1] if clock is not None else None)

    # -- queues ------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool) -> bool:
        queues = self.queues
        with self._write() as conn:
            was = conn.execute(
                sa.select(queues.c.paused).where(queues.c.name == name)
            ).scalar_one_or_none()
            if bool(was) == paused:
                return False
            if not paused:
                conn.execute(sa.delete(queues).where(queues.c.name == name))
                self._announce(conn)  # its jobs may be due now
            elif was is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(queues).values(name=name, paused=True))
                except sa.exc.IntegrityError:
                    # Another process paused it at the same moment: paused, by that call.
                    return False
            else:
                conn.execute(sa.update(queues).where(queues.c.name == name).values(paused=True))
            return True

    def paused_queues(self) -> builtins.set[str]:
        queues = self.queues
        with self._read() as conn:
            return set(conn.execute(sa.select(queues.c.name).where(queues.c.paused)).scalars())

    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        """Counts by one ``GROUP BY queue`` over the jobs table (reads every job).

        ``running`` counts the jobs in the state ``'running'`` (a job paused
        while it runs is ``'paused'``); the states follow :attr:`Job.state`,
        decided in the same order.
        """
        table = self.table
        locked_by = table.c.locked_by
        due_at = table.c.due_at
        # A paused job's options, stored as compact JSON with sorted keys, carry the marker.
        marker = json.dumps({PAUSED_MARKER: True}, separators=(",", ":"))[1:-1]
        paused_job = sa.type_coerce(table.c.options, sa.Text).contains(marker, autoescape=True)
        leased = sa.and_(
            locked_by.is_not(None),
            sa.not_(locked_by.startswith(STAGED_PREFIX, autoescape=True)),
        )
        due = sa.and_(locked_by.is_(None), due_at <= now)
        running = sa.and_(leased, sa.not_(paused_job))
        # Job.state: paused, running, failed (no due time), retrying (attempts), scheduled.
        state = sa.case(
            (paused_job, 0),
            (leased, 1),
            (due_at.is_(None), 2),
            (table.c.attempts > 0, 3),
            else_=4,
        )
        waiting = sa.and_(locked_by.is_(None), due_at.is_not(None), sa.not_(paused_job))
        names_of_states = ("paused", "running", "failed", "retrying", "scheduled")
        query = sa.select(
            table.c.queue,
            sa.func.sum(sa.case((due, 1), else_=0)),
            sa.func.sum(sa.case((running, 1), else_=0)),
            *(sa.func.sum(sa.case((state == i, 1), else_=0)) for i in range(5)),
            sa.func.min(sa.case((waiting, due_at), else_=None), type_=due_at.type),
        ).group_by(table.c.queue)
        with self._read() as conn:
            rows = {row[0]: row[1:] for row in conn.execute(query)}
            paused = set(
                conn.execute(sa.select(self.queues.c.name).where(self.queues.c.paused)).scalars()
            )
        rows.pop(None, None)  # no queue (a hand-written NULL): a job parked when claimed
        infos = []
        for name in sorted(set(rows) | paused):
            row = rows.get(name)
            if row is None:
                infos.append(QueueInfo(str(name), name in paused, 0, 0, job_state_counts()))
                continue
            jobs = job_state_counts()
            for state_name, count in zip(names_of_states, row[2:7], strict=True):
                jobs[state_name] = int(count or 0)
            infos.append(
                QueueInfo(
                    str(name),
                    name in paused,
                    int(row[0] or 0),
                    int(row[1] or 0),
                    jobs,
                    row[7] if isinstance(row[7], datetime) else None,
                )
            )
        return infos

    # -- run history -------------------------------------------------------

    def list_runs(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        runs = self.runs
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit + 1)
        if cursor is not None:
            query = query.where(runs.c.id < _run_cursor(cursor))
        if job_id is not None:
            query = query.where(runs.c.job_id == job_id)
        if task is not None:
            query = query.where(runs.c.task == task)
        if queue is not None:
            query = query.where(runs.c.queue == queue)
        if outcomes is not None:
            query = query.where(runs.c.outcome.in_(sorted(outcomes)))
        with self._read() as conn:
            found = [_run_from_row(row) for row in conn.execute(query)]
        return RunPage.read_ahead(found, limit)

    def prune_runs(self, before: datetime, limit: int) -> int:
        """Delete the records that finished before ``before`` among the ``limit`` oldest
        written (by id).

        Records are written about in the order their runs finish, so the
        oldest ids are the old records; reading only the ``limit`` oldest
        keeps each call small whatever the history holds, and spares the
        table an index on ``finished_at`` that every recorded run would
        pay for. A record written after newer ones goes once those before
        it went.
        """
        if limit <= 0:
            return 0
        runs = self.runs
        window = sa.select(runs.c.id, runs.c.finished_at).order_by(runs.c.id).limit(limit)
        oldest = window.subquery("oldest")
        old = sa.select(oldest.c.id).where(oldest.c.finished_at < before)
        if self._dialect in ("mysql", "mariadb"):
            # MySQL refuses LIMIT in an IN subquery, but not in a derived table inside it.
            old = sa.select(old.subquery("old").c.id)
        statement = sa.delete(runs).where(runs.c.id.in_(old.scalar_subquery()))
        with self._write() as conn:
            return _rowcount(conn, statement)


def _run_cursor(cursor: str) -> int:
    """The record id a :meth:`SQLRepository.list_runs` cursor names, or an error saying so."""
    # Record ids are written as plain ASCII digits (int() would take other digits too).
    if not (isinstance(cursor, str) and cursor.isascii() and cursor.isdigit()):
        raise ValueError(
            f"{cursor!r} is not a run cursor of this store: pass the next_cursor of a page"
        )
    return int(cursor)


def _sqlite_file_path(engine: Engine) -> str | None:
    """The absolute path of a SQLite engine's database file (None: memory, URI, other dialects)."""
    url = engine.url
    if engine.dialect.name != "sqlite" or url.query.get("uri"):
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``, or None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _rowcount(
    conn: DBConnection, statement: sa.Executable, params: list[dict[str, Any]] | None = None
) -> int:
    """How many rows the UPDATE or DELETE ``statement`` matched, run through ``conn``."""
    # Both return a CursorResult for such a statement; SQLAlchemy's annotations
    # say so for Connection.execute only, and a plain Result for Session.execute.
    result = cast("CursorResult[Any]", conn.execute(statement, params))
    return result.rowcount


def _micros(seconds: float) -> int:
    """Whole microseconds in ``seconds``, rounded as ``timedelta(seconds=...)`` rounds."""
    return timedelta(seconds=seconds) // timedelta(microseconds=1)


def create_engine(url: str | sa.URL, **kwargs: Any) -> Engine:
    """An engine configured for the scheduler's access pattern."""
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        engine = sa.create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.get_backend_name() in ("mysql", "mariadb"):
        # READ COMMITTED: no gap locks, so concurrent claims do not deadlock.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
        if "charset" not in url.query and url.get_driver_name() == "pymysql":
            # Any Unicode text (the table is utf8mb4), whatever the driver's default.
            kwargs.setdefault("connect_args", {}).setdefault("charset", "utf8mb4")
    return sa.create_engine(url, **kwargs)
