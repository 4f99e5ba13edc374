"""Garbage in, no crash out: fuzzing the settings parser, the stored-row decoder and the worker.

A store is shared: anything may end up in its rows (a hand-edited row, a
bad migration, another version of the app). Whatever a row holds, the
worker must never crash on it: a job that cannot be read is parked as
failed with an error naming the problem, and every other job keeps running.
``get_jobs`` and ``pscheduler --list`` must keep working too.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import warnings
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyramid.exceptions import ConfigurationError

from pyramid_pyncette.jobs import Job, Lease, Outcome
from pyramid_pyncette.policy import plan_claim, plan_completion
from pyramid_pyncette.repository.rows import (
    UnreadableJSON,
    decode_job_fields,
    load_json,
    time_of_micros,
    well_formed_document,
    well_formed_job,
)
from pyramid_pyncette.schedules import DateSchedule
from pyramid_pyncette.settings import KNOWN_KEYS, parse_settings
from pyramid_pyncette.worker import Worker
from tests.conftest import STORES
from tests.garbage import (
    GOOD_VALUES,
    GOOD_VALUES_TIME,
    good_document,
    store_kind,
    write_column_garbage,
    write_garbage,
)

NOW = GOOD_VALUES_TIME  # the due time of GOOD_VALUES


# --------------------------------------------------------------------------- garbage cases


def assert_parked_with(app, job_id, *words):
    job = app.scheduler.get_job(job_id)
    assert job is not None
    assert job.state == "failed", job
    assert job.last_status == "failed"
    assert "cannot be run" in job.last_error or "not registered" in job.last_error
    for word in words:
        assert word in job.last_error, job.last_error


#: (stored column values, words the error names).
GARBAGE = {
    "schedule-not-json": ({"schedule": "{not json"}, ["schedule", "not valid JSON"]),
    "schedule-number": ({"schedule": "5"}, ["schedule is 5"]),
    "schedule-unknown-kind": ({"schedule": '{"kind": "weekly"}'}, ["unknown kind 'weekly'"]),
    "schedule-missing-keys": (
        {"schedule": '{"kind": "cron"}'},
        ["cron schedule is malformed"],
    ),
    "schedule-bad-cron": (
        {"schedule": '{"kind": "cron", "expression": "not a cron", "timezone": "UTC"}'},
        ["invalid cron expression"],
    ),
    "args-string": ({"args": '"x"'}, ["arguments are 'x'"]),
    "args-not-json": ({"args": "[1,"}, ["arguments are", "not valid JSON"]),
    "args-list-is-number": ({"args": '{"args": 5, "kwargs": {}}'}, ["args are 5"]),
    "args-list-is-string": ({"args": '{"args": "ab", "kwargs": {}}'}, ["args are 'ab'"]),
    "kwargs-list": ({"args": '{"args": [], "kwargs": [["a", 1]]}'}, ["kwargs are"]),
    "options-list": ({"options": "[1]"}, ["options are [1]"]),
    "options-not-json": ({"options": "{'a': 1}"}, ["options are", "not valid JSON"]),
    "options-bad-mode": (
        {"options": '{"execution_mode": "sometimes"}'},
        ["execution_mode is 'sometimes'"],
    ),
    "options-bad-lease": (
        {"options": '{"lease_duration": "abc"}'},
        ["lease_duration is 'abc'"],
    ),
}

#: The same garbage, as the Redis document's job definition holds it.
REDIS_GARBAGE = {
    "definition-not-json": ({"definition": "{not json"}, ["job definition", "not valid JSON"]),
    "definition-list": ({"definition": "[1, 2]"}, ["job definition is [1, 2]"]),
    "schedule-number": ({"schedule": "5"}, ["schedule is 5"]),
    "args-string": ({"args": '"ab"'}, ["args are 'ab'"]),
    "kwargs-list": ({"kwargs": '[["a", 1]]'}, ["kwargs are"]),
    "options-list": ({"options": "[]"}, ["options are []"]),
}


def _garbage_cases():
    for name, (columns, words) in GARBAGE.items():
        yield pytest.param(columns, words, id=name)


#: The stores whose jobs are rows with columns (Redis, Redis Cluster and DynamoDB keep one
#: document per job).
ROW_STORES = [name for name in STORES if not name.startswith("redis") and name != "dynamodb"]
DOCUMENT_STORES = [name for name in STORES if name.startswith("redis") or name == "dynamodb"]


@pytest.mark.parametrize("store_settings", ROW_STORES, indirect=True)
@pytest.mark.parametrize(("columns", "words"), list(_garbage_cases()))
def test_a_garbage_row_is_parked_as_failed_and_the_others_run(request, make_app, columns, words):
    app = make_app()
    app.scheduler.add_async_job("record", job_id="a-good")
    write_garbage(app, "garbage", **columns)
    app.scheduler.add_async_job("record", job_id="z-good")

    assert app.run_pending() == 2
    assert app.run_pending(app.clock() + timedelta(hours=1)) == 0

    assert sorted(call.job_id for call in app.calls) == ["a-good", "z-good"]
    assert_parked_with(app, "garbage", "'garbage'", *words)
    assert [job.id for job in app.scheduler.get_jobs()] == ["garbage"]
    assert app.worker.stats["failed"] == 1


@pytest.mark.parametrize("store_settings", DOCUMENT_STORES, indirect=True)
@pytest.mark.parametrize(
    ("columns", "words"), [pytest.param(*case, id=name) for name, case in REDIS_GARBAGE.items()]
)
def test_a_garbage_redis_document_is_parked_as_failed_and_the_others_run(make_app, columns, words):
    app = make_app()
    app.scheduler.add_async_job("record", job_id="a-good")
    write_garbage(app, "garbage", **columns)

    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["a-good"]
    assert_parked_with(app, "garbage", *words)
    assert [job.id for job in app.scheduler.get_jobs()] == ["garbage"]


def test_a_job_of_an_unknown_task_is_parked_as_failed_and_the_others_run(app, caplog):
    good = app.scheduler.build_job("record", DateSchedule(app.clock()), job_id="orphan")
    app.repository.add([good.replace(task="tasks:removed_in_the_last_release")])
    app.scheduler.add_async_job("record", job_id="fine")

    assert app.run_pending() == 2  # the orphan's run fails at once
    assert app.run_pending(app.clock() + timedelta(days=1)) == 0

    assert [call.job_id for call in app.calls] == ["fine"]
    job = app.scheduler.get_job("orphan")
    assert (job.state, job.last_status) == ("failed", "failed")
    assert "'tasks:removed_in_the_last_release' is not registered" in job.last_error
    assert any(
        "removed_in_the_last_release" in r.getMessage() and r.levelname == "ERROR"
        for r in caplog.records
    )


def test_retry_job_of_a_garbage_row_parks_it_again(app):
    write_garbage(app, "garbage", schedule='{"kind": "weekly"}')
    app.run_pending()

    app.scheduler.retry_job("garbage")
    assert app.scheduler.get_job("garbage").state == "scheduled"
    assert app.run_pending() == 0
    assert app.scheduler.get_job("garbage").state == "failed"
    assert app.calls == []


# --------------------------------------------------------------------------- unreadable times

#: Stored time values no decoder can read, per store: (column, value, words the
#: problem names). SQL values are SQL literals; Redis values are what the
#: document (or, for ``created_at``, its job definition) holds; memory values
#: are what a decoder would be handed.
TIME_GARBAGE = {
    "memory": [
        ("next_run_at", "garbage", ["next_run_at is 'garbage'"]),
        ("last_run_at", 0, ["last_run_at is 0"]),
        ("created_at", b"\xff", ["created_at is"]),
    ],
    "sqlite": [
        ("due_at", "'x'", ["due_at is 'x'"]),
        ("due_at", "'0'", ["due_at is 0"]),  # a DATETIME column makes it a number
        ("next_run_at", "'garbage'", ["next_run_at is 'garbage'"]),
        ("last_run_at", "'2030-13-45 99:00:00'", ["last_run_at is"]),
        ("created_at", "x'00ff'", ["created_at is"]),
    ],
    "postgresql": [
        ("due_at", "'-infinity'", ["-infinity"]),
        ("next_run_at", "'infinity'", ["next_run_at is", "infinity"]),
        ("next_run_at", "'20000-01-01 00:00:00+00'", ["next_run_at is", "20000"]),
        ("last_run_at", "'0044-03-15 00:00:00+00 BC'", ["last_run_at is", "BC"]),
        ("created_at", "'infinity'", ["created_at is", "infinity"]),
    ],
    "mariadb": [
        ("due_at", "'0000-00-00 00:00:00'", ["due_at is '0000-00-00"]),
        ("next_run_at", "'0000-00-00 00:00:00'", ["next_run_at is '0000-00-00"]),
        ("last_run_at", "'2030-02-31 12:00:00'", ["last_run_at is '2030-02-31"]),
        ("created_at", "'0000-00-00 00:00:00'", ["created_at is '0000-00-00"]),
    ],
    "redis": [
        ("due_at", "garbage", ["due_at is 'garbage'"]),
        ("next_run_at", "1e400", ["next_run_at is '1e400'"]),
        ("last_run_at", str(10**30), ["last_run_at is"]),
        ("created_at", [1], ["created_at is [1]"]),
    ],
    "dynamodb": [
        ("due_at", "garbage", ["due_at is 'garbage'"]),
        ("next_run_at", 10**30, ["next_run_at is 1000000000000000000000000000000"]),
        ("last_run_at", [1, 2], ["last_run_at is"]),
        ("created_at", "x", ["created_at is 'x'"]),
    ],
}


#: Other typed columns holding what they should not, per store (as TIME_GARBAGE).
COLUMN_GARBAGE = {
    "memory": [
        ("attempts", "many", ["attempts is 'many'"]),
        ("partition", 1.5, ["partition is 1.5"]),
    ],
    "sqlite": [
        ("task", "x'00ff'", ["task is b'\\x00\\xff'"]),
        ("attempts", "'many'", ["attempts is 'many'"]),
        ("attempts", "-5", ["attempts is"]),
        ("partition", "'p'", ["partition is 'p'"]),
    ],
    "postgresql": [("attempts", "-5", ["attempts is"])],
    "mariadb": [("attempts", "-5", ["attempts is"])],
    "redis": [
        ("task", 5, ["task is 5"]),
        ("task", True, ["task is True"]),
        ("attempts", "many", ["attempts is 'many'"]),
        ("partition", "p", ["partition is 'p'"]),
    ],
    "dynamodb": [
        ("task", 5, ["task is 5"]),
        ("task", True, ["task is True"]),
        ("attempts", "many", ["attempts is 'many'"]),
        ("partition", "p", ["partition is 'p'"]),
    ],
}


def _column_garbage_cases(garbage):
    for kind in STORES:
        for column, value, words in garbage.get(kind, []):
            case = f"{column}-{value if isinstance(value, str) else type(value).__name__}"
            yield pytest.param(kind, column, value, words, id=f"{kind}-{case}")


@pytest.mark.parametrize(
    ("store_settings", "column", "value", "words"),
    [
        *_column_garbage_cases(TIME_GARBAGE),
        *_column_garbage_cases(COLUMN_GARBAGE),
    ],
    indirect=["store_settings"],
)
def test_a_row_with_an_unreadable_time_or_count_is_parked_and_its_batch_mates_run(
    make_app, column, value, words
):
    app = make_app()
    goods = [f"good-{n:02d}" for n in range(30)]
    for job_id in goods[:15]:
        app.scheduler.add_async_job("record", job_id=job_id)
    write_column_garbage(app, "garbage", column, value)
    for job_id in goods[15:]:
        app.scheduler.add_async_job("record", job_id=job_id)

    listed = {job.id: job for job in app.scheduler.get_jobs()}
    assert sorted(listed) == sorted([*goods, "garbage"])
    assert listed["garbage"].problem is not None
    for word in words:
        assert word in listed["garbage"].problem, listed["garbage"].problem
    assert app.scheduler.get_job("garbage").problem == listed["garbage"].problem
    found = app.repository.get_many(["garbage", "good-00"])
    assert found["garbage"].problem == listed["garbage"].problem
    assert found["good-00"].problem is None

    app.run_pending()
    assert app.run_pending(app.clock() + timedelta(hours=1)) == 0

    assert sorted(call.job_id for call in app.calls) == goods
    job = app.scheduler.get_job("garbage")
    if column == "due_at" and job.last_status is None:
        # Never due (no readable due time): listed as failed, never claimed.
        assert job.state == "failed"
    else:
        assert_parked_with(app, "garbage", *words)
    assert [job.id for job in app.scheduler.get_jobs()] == ["garbage"]


# --------------------------------------------------------------------------- pscheduler --list


#: The stores a separate process can list (a memory store lives in one process).
SHARED_STORES = [name for name in STORES if name != "memory"]


@pytest.mark.parametrize("store_settings", SHARED_STORES, indirect=True)
def test_list_shows_garbage_rows_without_crashing(tmp_path, capsys, store_settings):
    from tests.daemon import bootstrap_registry, run_pscheduler, write_ini

    extra = "\n".join(f"{k} = {v}" for k, v in store_settings.items() if k != "pyncette.url")
    ini, _ = write_ini(tmp_path, store_settings["pyncette.url"], extra=extra)
    registry = bootstrap_registry(ini)
    registry.scheduler.add_async_job("record", job_id="good")

    class Handle:
        scheduler = registry.scheduler
        repository = registry.scheduler.repository

        @staticmethod
        def clock():
            return datetime.now(timezone.utc)

    kind = store_kind(Handle)
    garbage = REDIS_GARBAGE if kind in ("redis", "dynamodb") else GARBAGE
    for name, (columns, _) in garbage.items():
        write_garbage(Handle, name, **columns)
    typed = [*TIME_GARBAGE[kind], *COLUMN_GARBAGE[kind]]
    for n, (column, value, _) in enumerate(typed):
        write_column_garbage(Handle, f"typed-{n}-{column}", column, value)
    names = [*garbage, *(f"typed-{n}-{column}" for n, (column, _, _) in enumerate(typed))]

    listed = {job.id: job for job in registry.scheduler.get_jobs()}
    assert sorted(listed) == sorted([*names, "good"])
    assert all(listed[name].problem for name in names if name.startswith("typed-"))
    assert all(registry.scheduler.get_job(name).id == name for name in names)

    assert run_pscheduler("--list", ini) == 0
    out = capsys.readouterr().out
    for name in [*names, "good"]:
        assert name in out

    assert run_pscheduler("--once", ini) == 0
    capsys.readouterr()
    assert run_pscheduler("--list", ini) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line for line in lines[1:]}
    assert "good" not in states  # it ran and was deleted
    for name in names:
        assert "failed" in states[name], states[name]
    registry.scheduler.repository.close()


# --------------------------------------------------------------------------- the decoder


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ANY_VALUE = JSON | st.binary(max_size=20) | st.datetimes() | st.builds(object)
FIELDS = [
    "id",
    "task",
    "schedule",
    "args",
    "kwargs",
    "options",
    "due_at",
    "next_run_at",
    "locked_by",
    "attempts",
    "last_run_at",
    "last_status",
    "last_error",
    "created_at",
    "partition",
    "job",
]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE) | ANY_VALUE)
def test_decode_job_fields_never_raises(fields):
    job = decode_job_fields(fields)
    assert isinstance(job, Job)
    assert isinstance(job.id, str) and isinstance(job.task, str)
    assert isinstance(job.schedule, dict) and isinstance(job.options, dict)
    assert isinstance(job.args, list) and isinstance(job.kwargs, dict)
    for name in ("due_at", "next_run_at", "last_run_at", "created_at"):
        value = getattr(job, name)
        assert value is None or (isinstance(value, datetime) and value.tzinfo is not None)
    lease = plan_claim(job, NOW, "tok", 60).lease
    assert lease.runnable == (job.problem is None)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(list(GOOD_VALUES)), ANY_VALUE, max_size=2))
def test_the_claim_path_decoder_accepts_only_what_decode_job_fields_accepts(changes):
    values = {**GOOD_VALUES, **changes}  # a good row with up to two values of anything
    fast = well_formed_job(*values.values())
    careful = decode_job_fields(values)
    if fast is not None:
        assert careful.problem is None
        assert fast == careful
        assert plan_claim(fast, NOW, "t", 60, checked=True) == plan_claim(careful, NOW, "t", 60)


#: Stands for a key left out of a document.
MISSING = object()


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["task", "due_at", "locked_by", "attempts", "last_error", "queue", "job"]),
        ANY_VALUE | st.just(MISSING),
        max_size=2,
    ),
    st.dictionaries(
        st.sampled_from(["schedule", "args", "kwargs", "options", "created_at", "partition"]),
        JSON | st.just(MISSING),
        max_size=2,
    ),
)
def test_the_document_decoder_accepts_only_what_decode_job_fields_accepts(changes, definition):
    document = good_document()
    inner = {**json.loads(document["job"]), **definition}
    document["job"] = json.dumps({k: v for k, v in inner.items() if v is not MISSING})
    document.update(changes)
    document = {k: v for k, v in document.items() if v is not MISSING}
    fast = well_formed_document("j", document, time_of_micros)
    careful = decode_job_fields(
        document, job_id="j", decode_time=time_of_micros, check_queue_name=True
    )
    if fast is not None:
        assert careful.problem is None
        assert fast == careful
        assert plan_claim(fast, NOW, "t", 60, checked=True) == plan_claim(careful, NOW, "t", 60)


def test_the_claim_path_decoder_builds_the_job_of_a_good_row():
    values = dict(GOOD_VALUES)
    job = well_formed_job(*values.values())
    assert job == decode_job_fields(values) == Job(**values)
    assert well_formed_job(*{**values, "due_at": NOW.replace(tzinfo=None)}.values()) is None
    assert well_formed_job(*{**values, "options": {"max_retries": -1}}.values()) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_load_json_never_raises(text):
    value = load_json(text)
    if isinstance(value, UnreadableJSON):
        assert "not valid JSON" in value.describe()


def test_decode_job_fields_reads_what_the_stores_write():
    job = decode_job_fields(
        {
            "id": "j",
            "task": "record",
            "schedule": {"kind": "interval", "microseconds": 5_000_000, "start": None},
            "args": {"args": [1, "two"], "kwargs": {"k": None}},
            "options": {"max_retries": 3, "retry_backoff": 2.5},
            "due_at": NOW,
            "next_run_at": NOW,
            "attempts": 2,
            "partition": 0,
        }
    )
    assert job.problem is None
    assert (job.args, job.kwargs, job.attempts, job.max_retries) == ([1, "two"], {"k": None}, 2, 3)

    micros = str(int((NOW - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)))
    redis_doc = {
        "task": "record",
        "due_at": micros,
        "attempts": 1,
        "job": json.dumps(
            {
                "id": "r",
                "schedule": {"kind": "date", "run_at": NOW.isoformat()},
                "args": [],
                "kwargs": {},
                "options": {},
                "created_at": None,
                "partition": 0,
            }
        ),
    }
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    job = decode_job_fields(
        redis_doc, job_id="r", decode_time=lambda v: epoch + timedelta(microseconds=int(v))
    )
    assert job.problem is None
    assert (job.id, job.due_at, job.attempts) == ("r", NOW, 1)


# --------------------------------------------------------------------------- plans


SCHEDULES = (
    st.sampled_from(
        [
            {"kind": "date", "run_at": NOW.isoformat()},
            {"kind": "interval", "microseconds": 60_000_000, "start": NOW.isoformat()},
            {"kind": "cron", "expression": "*/5 * * * *", "timezone": "UTC", "start": None},
        ]
    )
    | JSON
)
TIMES = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)
OPTIONS = (
    st.dictionaries(
        st.sampled_from(
            [
                "execution_mode",
                "failure_mode",
                "lease_duration",
                "max_retries",
                "retry_backoff",
                "retry_backoff_max",
                "retry_exhausted",
                "misfire_grace_time",
            ]
        ),
        st.sampled_from(["at_most_once", "at_least_once", "unlock", "commit", "park", "advance"])
        | st.integers(-5, 10**12)
        | st.floats(allow_nan=True)
        | JSON,
    )
    | JSON
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=SCHEDULES,
    args=JSON,
    kwargs=JSON,
    options=OPTIONS,
    due_at=TIMES,
    next_run_at=TIMES,
    attempts=st.integers(0, 10**6) | JSON,
    succeeded=st.booleans(),
    permanent=st.booleans(),
)
def test_plans_never_raise(
    schedule, args, kwargs, options, due_at, next_run_at, attempts, succeeded, permanent
):
    job = Job(
        id="j",
        task="record",
        schedule=schedule,
        args=args,
        kwargs=kwargs,
        options=options,
        due_at=due_at,
        next_run_at=next_run_at,
        attempts=attempts,
    )
    plan = plan_claim(job, NOW, "tok", 60)
    assert plan.action in ("lease", "advance", "delete")
    if not plan.lease.runnable:
        return
    if plan.lease.token is not None:
        assert plan.job.locked_by == "tok"
    done = plan_completion(Outcome(plan.lease, succeeded, NOW, "err", permanent=permanent))
    assert done.action in ("delete", "settle", "note")
    due = done.values.get("due_at")
    assert due is None or isinstance(due, datetime)


@settings(max_examples=200, deadline=None)
@given(
    job_id=st.text(min_size=1, max_size=20),
    attempts=st.integers(1, 2000),
    backoff=st.floats(0.001, 3600),
    cap=st.floats(0.001, 86400),
)
def test_retries_are_settled_within_their_backoff(job_id, attempts, backoff, cap):
    job = Job(
        id=job_id,
        task="record",
        schedule={"kind": "date", "run_at": NOW.isoformat()},
        options={"max_retries": 5000, "retry_backoff": backoff, "retry_backoff_max": cap},
        attempts=attempts,
        locked_by="tok",
    )
    plan = plan_completion(Outcome(Lease(job, NOW, "tok"), False, NOW, "boom"))
    assert plan.action == "settle"
    ceiling = min(backoff * 2.0 ** min(attempts - 1, 64), cap)
    delay = (plan.values["due_at"] - NOW).total_seconds()
    assert ceiling / 2 - 1e-6 <= delay <= ceiling + 1e-6
    assert plan.values["next_run_at"] == NOW
    assert plan.values["attempts"] == attempts


# --------------------------------------------------------------------------- settings


SETTING_VALUES = (
    st.text(max_size=30)
    | st.sampled_from(
        ["0", "-1", "1e9", "30s", "5m", "1h30m", "nan", "inf", "  ", "true", "sqlite://", "://x"]
    )
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.none()
    | st.builds(timedelta, seconds=st.floats(-1e6, 1e6))
)


@settings(max_examples=1000, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(KNOWN_KEYS)).map(lambda key: f"pyncette.{key}")
        | st.text(max_size=12).map(lambda key: f"pyncette.{key}")
        | st.text(max_size=12),
        SETTING_VALUES,
        max_size=6,
    )
)
def test_parse_settings_accepts_or_raises_configuration_error_only(raw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = parse_settings(raw)
        except ConfigurationError as exc:
            assert "pyncette." in str(exc)
            return
    assert result.poll_interval > 0 and math.isfinite(result.poll_interval)
    assert result.lease_duration > 0
    assert result.batch_size >= 1 and result.concurrency >= 1
    if result.heartbeat_interval is not None:
        assert result.heartbeat_interval < result.lease_duration


# --------------------------------------------------------------------------- the worker on SQLite


COLUMN_TEXT = st.one_of(
    JSON.map(json.dumps),
    st.text(max_size=30),
    st.sampled_from(["{", "[1,", "null", '{"kind": "cron"}', '{"args": "x"}', "[]", '"x"']),
)


@contextlib.contextmanager
def _sqlite_worker(tmp_path_factory):
    """A handle on an app over a fresh SQLite file, whose ``record`` task notes the job ids run."""
    from pyramid import testing as pyramid_testing

    from pyramid_pyncette.testing import FakeClock
    from pyramid_pyncette.worker import Worker

    path = tmp_path_factory.mktemp("fuzz") / "jobs.sqlite"
    config = pyramid_testing.setUp(settings={"pyncette.url": f"sqlite:///{path}"})
    ran = []
    config.include("pyramid_pyncette")
    config.add_pyncette_task(
        lambda request, *args, **kwargs: ran.append(request.job.id), name="record"
    )
    config.commit()
    clock = FakeClock()
    scheduler = config.registry.scheduler
    scheduler.clock = clock

    class Handle:
        pass

    Handle.scheduler = scheduler
    Handle.repository = scheduler.repository
    Handle.clock = clock
    Handle.ran = ran
    Handle.worker = Worker(config.registry, clock=clock)
    try:
        yield Handle
    finally:
        scheduler.repository.close()
        pyramid_testing.tearDown()


def _assert_good_ran_and_garbage_parked(handle):
    assert "good" in handle.ran
    listed = {job.id: job for job in handle.scheduler.get_jobs()}
    assert "good" not in listed
    job = listed.get("garbage")
    if "garbage" not in handle.ran and job.state != "failed":
        # Not claimed yet: only a readable due time still to come allows that.
        assert job.due_at is not None and job.due_at > handle.clock(), job
    elif "garbage" not in handle.ran and job.last_status is not None:  # claimed and parked
        assert "cannot be run" in job.last_error


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    columns=st.dictionaries(
        st.sampled_from(["schedule", "args", "options"]), COLUMN_TEXT, min_size=1
    )
)
def test_the_worker_survives_any_json_column_text_on_sqlite(tmp_path_factory, columns):
    if "null" in columns.values():
        columns = {k: v for k, v in columns.items() if v != "null"}  # NOT NULL columns
    if not columns:
        return
    with _sqlite_worker(tmp_path_factory) as handle:
        handle.scheduler.add_async_job("record", job_id="good")
        write_garbage(handle, "garbage", **columns)
        handle.worker.run_pending()
        _assert_good_ran_and_garbage_parked(handle)


TIME_VALUE = st.one_of(
    st.text(max_size=30),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.binary(max_size=10),
    st.datetimes().map(str),
    st.sampled_from(["0", "", "2030-02-30 00:00:00", "9999-12-31 23:59:59.999999", "now"]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    columns=st.dictionaries(
        st.sampled_from(["due_at", "next_run_at", "last_run_at", "created_at"]),
        TIME_VALUE,
        min_size=1,
    )
)
def test_the_worker_and_the_listing_survive_any_time_column_value_on_sqlite(
    tmp_path_factory, columns
):
    with _sqlite_worker(tmp_path_factory) as handle:
        handle.scheduler.add_async_job("record", job_id="good")
        good = handle.scheduler.build_job("record", DateSchedule(handle.clock()), job_id="garbage")
        repository = handle.repository
        repository.add([good])
        table = repository.table
        with repository.engine.begin() as conn:
            raw = sa.table(table.name, *(sa.column(name) for name in columns), sa.column("id"))
            conn.execute(sa.update(raw).where(raw.c.id == "garbage").values(**columns))

        assert {job.id for job in handle.scheduler.get_jobs()} == {"good", "garbage"}
        assert handle.scheduler.get_job("garbage") is not None
        handle.worker.run_pending()
        _assert_good_ran_and_garbage_parked(handle)
        handle.worker.run_pending(handle.clock() + timedelta(days=1))
        assert handle.ran.count("good") == 1


#: MySQL 8's default sql_mode: zero dates are refused as new values.
MYSQL8_SQL_MODE = (
    "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)


@pytest.mark.parametrize(
    "store_settings", [name for name in STORES if name == "mariadb"], indirect=True
)
@pytest.mark.parametrize("column", ["due_at", "next_run_at"])
def test_a_zero_date_under_a_strict_sql_mode_is_parked_and_the_others_run(make_app, column):
    app = make_app()
    engine = app.repository.engine

    @sa.event.listens_for(engine, "connect")
    def strict(dbapi_connection, connection_record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET SESSION sql_mode = '{MYSQL8_SQL_MODE}'")

    engine.dispose()  # every connection from now on is strict
    with engine.connect() as conn:
        assert "NO_ZERO_DATE" in conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
    goods = [f"good-{n:02d}" for n in range(20)]
    for job_id in goods[:10]:
        app.scheduler.add_async_job("record", job_id=job_id)
    write_column_garbage(app, "garbage", column, "'0000-00-00 00:00:00'")
    for job_id in goods[10:]:
        app.scheduler.add_async_job("record", job_id=job_id)

    assert "0000-00-00" in app.scheduler.get_job("garbage").problem
    app.run_pending()
    assert app.run_pending(app.clock() + timedelta(hours=1)) == 0

    assert sorted(call.job_id for call in app.calls) == goods
    job = app.scheduler.get_job("garbage")
    assert (job.state, job.last_status) == ("failed", "failed")
    assert job.due_at is None


def _write_every_garbage(app):
    """Write every garbage row the store can hold; return their ids."""
    kind = store_kind(app)
    names = []
    if kind in ("memory", "sqlite", "postgresql", "mariadb"):
        for name, (columns, _) in GARBAGE.items():
            write_garbage(app, name, **columns)
            names.append(name)
    else:
        for name, (columns, _) in REDIS_GARBAGE.items():
            write_garbage(app, name, **columns)
            names.append(name)
    for n, (column, value, _) in enumerate([*TIME_GARBAGE[kind], *COLUMN_GARBAGE[kind]]):
        write_column_garbage(app, f"typed-{n}-{column}", column, value)
        names.append(f"typed-{n}-{column}")
    return names


@pytest.mark.parametrize("store_settings", list(STORES), indirect=True)
def test_the_worker_loop_goes_idle_past_every_garbage_row_and_runs_the_others(make_app):
    app = make_app()
    goods = [f"good-{n:02d}" for n in range(20)]
    for job_id in goods:
        app.scheduler.add_async_job("record", job_id=job_id)
    names = _write_every_garbage(app)
    if store_kind(app) == "redis":
        # Documents the next-due probe reads first (the lowest scores).
        client = app.repository.client
        for name, text in (("later-not-json", "{not json"), ("later-bad-due", None)):
            key = app.repository.job_keys(name).jobs
            app.scheduler.add_date_job("record", app.clock() - timedelta(days=1), job_id=name)
            doc = (
                text
                if text is not None
                else json.dumps({**json.loads(client.hget(key, name)), "due_at": "garbage"})
            )
            client.hset(key, name, doc)
            client.zadd(app.repository.job_keys(name).due, {name: 0})
            names.append(name)
    due = app.repository.next_due()
    assert due is None or isinstance(due, datetime)
    has_clock = store_kind(app) in ("postgresql", "mariadb", "redis")
    for store_clock in (True, False) if has_clock else (False,):  # the store's clock, the test's
        app.repository.store_clock = store_clock
        delay = app.repository.next_due_delay(app.clock())
        assert delay is None or isinstance(delay, float)

    worker = Worker(app.registry, clock=app.clock, concurrency=2, batch_size=8)
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        pytest.fail("the worker loop did not go idle")

    assert sorted(call.job_id for call in app.calls) == goods
    listed = {job.id: job for job in app.scheduler.get_jobs(limit=1000)}
    assert sorted(listed) == sorted(names)
    assert all(job.state == "failed" for job in listed.values()), listed
    due = app.repository.next_due()
    assert due is None or isinstance(due, datetime)


@pytest.mark.parametrize(
    ("store_settings", "column", "value", "words"),
    [*_column_garbage_cases(TIME_GARBAGE), *_column_garbage_cases(COLUMN_GARBAGE)],
    indirect=["store_settings"],
)
def test_a_garbage_row_is_replaced_by_adding_its_job_again_in_a_transaction(
    make_app, column, value, words
):
    import transaction

    app = make_app()
    write_column_garbage(app, "garbage", column, value)

    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    app.scheduler.bind(tm).add_async_job("record", job_id="garbage", args=[1])
    tm.commit()

    job = app.scheduler.get_job("garbage")
    assert (job.problem, job.args) == (None, [1])
    assert app.run_pending() == 1
    assert [(call.job_id, call.args) for call in app.calls] == [("garbage", (1,))]
