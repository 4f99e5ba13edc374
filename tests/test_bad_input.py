"""Bad input: refused with a clear error, nothing stored, and the daemon carries on.

The matrix and the tests after it run on every store. Then the credentials
of store URLs: whatever goes wrong, a password never shows in an error, a
log line or ``pscheduler`` output.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_pyncette import InvalidJobError, UnknownTaskError
from pyramid_pyncette.schedules import DateSchedule
from tests.conftest import include_pyncette
from tests.daemon import PSCHEDULER, process_env, pscheduler_output, write_ini
from tests.garbage import store_kind, write_garbage

SECRET = "S3cr3tPassw0rd"


@dataclass(frozen=True)
class Case:
    """One bad input: ``act(app, tmp_path)`` must fail with ``error`` matching ``text``.

    ``kind`` is ``'call'`` (the scheduler API refuses it), ``'include'`` (the
    configuration refuses it) or ``'stored'`` (a stored row the worker must
    park as failed, its error matching ``text``).
    """

    act: Any
    text: str
    error: type[Exception] = InvalidJobError
    kind: str = "call"


def _write_unknown_task(app, tmp_path):
    job = app.scheduler.build_job("record", DateSchedule(app.clock()), job_id="bad")
    app.repository.add([job.replace(task="myapp.jobs:deleted_task")])


def _write_invalid_json(app, tmp_path):
    if store_kind(app) in ("redis", "dynamodb"):  # one JSON definition per job: it is cut
        write_garbage(app, "bad", definition='{"schedule": {"kind": "date", "run_at": ')
    else:
        write_garbage(app, "bad", schedule='{"kind": "date", "run_at": ')


CASES = {
    "naive-datetime": Case(
        lambda app, _: app.scheduler.add_date_job("record", datetime(2030, 1, 2)),
        r"naive datetime",
    ),
    "invalid-cron": Case(
        lambda app, _: app.scheduler.add_cron_job("record", "61 * * * *"),
        r"invalid cron expression '61 \* \* \* \*': minute 61 is out of range 0-59$",
    ),
    "unknown-timezone": Case(
        lambda app, _: app.scheduler.add_cron_job("record", "0 3 * * *", timezone="Mars/Olympus"),
        r"unknown timezone 'Mars/Olympus'",
    ),
    "non-json-arguments": Case(
        lambda app, _: app.scheduler.add_async_job("record", kwargs={"when": datetime(2030, 1, 1)}),
        r"job arguments must be JSON: kwargs\['when'\] = .* is a datetime",
    ),
    "unregistered-task": Case(
        lambda app, _: app.scheduler.add_async_job("recrod"),
        r"no task is registered as 'recrod' \(did you mean 'record'\?\)",
        UnknownTaskError,
    ),
    "job-id-not-a-string": Case(
        lambda app, _: app.scheduler.add_async_job("record", job_id=42),
        r"job_id must be a string, got int 42",
    ),
    "job-id-too-long": Case(
        lambda app, _: app.scheduler.add_async_job("record", job_id="x" * 201),
        r"job_id must be 1 to 200 characters, got 201",
    ),
    "negative-lease-duration": Case(
        lambda app, _: app.scheduler.add_async_job("record", lease_duration=-5),
        r"lease_duration: -5 is not a duration \(it must be greater than zero\)",
    ),
    "zero-interval": Case(
        lambda app, _: app.scheduler.add_interval_job("record", interval=0),
        r"interval: 0 is not a duration",
    ),
    "zero-retry-backoff": Case(
        lambda app, _: app.scheduler.add_async_job("record", max_retries=2, retry_backoff="0s"),
        r"retry_backoff: '0s' is not a duration \(it must be greater than zero\)",
    ),
    "negative-retry-backoff-max": Case(
        lambda app, _: app.scheduler.add_async_job("record", retry_backoff_max=-1),
        r"retry_backoff_max: -1 is not a duration",
    ),
    "negative-misfire-grace-time": Case(
        lambda app, _: app.scheduler.add_async_job("record", misfire_grace_time="-1m"),
        r"misfire_grace_time: '-1m' is not a duration",
    ),
    "max-retries-not-a-count": Case(
        lambda app, _: app.scheduler.add_async_job("record", max_retries=-1),
        r"max_retries must be a whole number from 0 to 1000, got -1",
    ),
    "max-retries-a-bool": Case(
        lambda app, _: app.scheduler.add_async_job("record", max_retries=True),
        r"max_retries must be a whole number",
    ),
    "retries-of-an-at-most-once-job": Case(
        lambda app, _: app.scheduler.add_async_job(
            "record", max_retries=3, execution_mode="at_most_once"
        ),
        r"max_retries needs execution_mode='at_least_once'",
    ),
    "unknown-retry-exhausted": Case(
        lambda app, _: app.scheduler.add_async_job("record", retry_exhausted="explode"),
        r"retry_exhausted 'explode' is not one of advance, park",
    ),
    "retry-option-typo": Case(
        lambda app, _: app.scheduler.add_async_job("record", max_retry=3),
        r"unknown option 'max_retry' \(did you mean 'max_retries'\?\)",
    ),
    "endless-lease": Case(
        lambda app, _: app.scheduler.add_async_job("record", lease_duration="99999w"),
        r"lease_duration of .*s is too long",
    ),
    "endless-lease-setting": Case(
        lambda app, tmp_path: include_pyncette(
            {
                "pyncette.url": f"sqlite:///{tmp_path}/other.sqlite",
                "pyncette.lease_duration": "420000w",
            }
        ),
        r"pyncette.lease_duration: '420000w' is too long .*at most ten years",
        ConfigurationError,
        "include",
    ),
    "unknown-url-scheme": Case(
        lambda app, tmp_path: include_pyncette({"pyncette.url": f"ftp://user:{SECRET}@host/jobs"}),
        r"unsupported store scheme 'ftp'",
        ConfigurationError,
        "include",
    ),
    "bad-table-name": Case(
        lambda app, tmp_path: include_pyncette(
            {
                "pyncette.url": f"sqlite:///{tmp_path}/other.sqlite",
                "pyncette.table_name": "jobs; DROP TABLE x",
            }
        ),
        r"pyncette.table_name: 'jobs; DROP TABLE x' is not allowed",
        ConfigurationError,
        "include",
    ),
    "quoted-table-name": Case(
        lambda app, tmp_path: include_pyncette(
            {
                "pyncette.url": f"sqlite:///{tmp_path}/other.sqlite",
                "pyncette.table_name": 'jobs" --',
            }
        ),
        r"pyncette.table_name: .* is not allowed",
        ConfigurationError,
        "include",
    ),
    "stored-row-with-invalid-json": Case(
        _write_invalid_json,
        r"the stored job 'bad' cannot be run: (schedule|the job definition) is not valid JSON",
        kind="stored",
    ),
    "stored-row-of-an-unknown-task": Case(
        _write_unknown_task,
        r"task 'myapp.jobs:deleted_task' is not registered in this application",
        kind="stored",
    ),
}


def _snapshot(app):
    return sorted((job.id, job.due_at, job.state, job.attempts) for job in app.scheduler.get_jobs())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_clearly_stores_nothing_and_the_worker_carries_on(make_app, tmp_path, name):
    case = CASES[name]
    app = make_app()
    app.scheduler.add_interval_job("record", seconds=10, job_id="sentinel")
    before = _snapshot(app)

    if case.kind == "stored":
        case.act(app, tmp_path)
    else:
        with pytest.raises(case.error, match=case.text) as raised:
            case.act(app, tmp_path)
        assert SECRET not in str(raised.value)
        assert _snapshot(app) == before
        assert not (tmp_path / "other.sqlite").exists()

    app.clock.advance(10)
    app.run_pending()
    app.clock.advance(10)
    assert app.run_pending() == 1
    assert [call.job_id for call in app.calls] == ["sentinel", "sentinel"]
    if case.kind == "stored":
        bad = app.scheduler.get_job("bad")
        assert (bad.state, bad.last_status) == ("failed", "failed")
        assert re.search(case.text, bad.last_error), bad.last_error
        assert "cancel" in bad.last_error  # and it says what to do


# --------------------------------------------------------------------------- refused at add time


def strict_report(request, report_id, *, fmt="pdf"):
    return report_id


def _assert_refused(app, call, text, error=InvalidJobError):
    """``call(scheduler)`` raises ``error`` matching ``text``; the store stays empty."""
    with pytest.raises(error) as raised:
        call(app.scheduler)
    assert re.search(text, str(raised.value)), str(raised.value)
    assert list(app.scheduler.iter_jobs()) == []
    app.clock.advance(3600)
    assert app.run_pending() == 0
    assert app.calls == []
    return raised.value


@pytest.mark.parametrize("option", [{"failure_mode": "unlock"}, {"retry_backoff": "5s"}])
def test_an_at_most_once_job_with_a_retry_option_is_refused(make_app, option):
    (key,) = option
    _assert_refused(
        make_app(),
        lambda s: s.add_async_job("record", execution_mode="at_most_once", **option),
        rf"add_async_job: {key} needs execution_mode='at_least_once' \(it is .*\): an "
        rf"at-most-once run is never repeated.*drop {key}, or use execution_mode='at_least_once'",
    )


@pytest.mark.parametrize(
    ("job_id", "problem"),
    [
        ("a\x00b", r"contains a NUL character \(at position 1\)"),
        ("a\udc80b", r"contains the lone surrogate '\\udc80' \(at position 1\)"),
    ],
    ids=["nul", "lone-surrogate"],
)
def test_a_job_id_with_a_nul_or_a_lone_surrogate_is_refused(make_app, job_id, problem):
    _assert_refused(
        make_app(),
        lambda s: s.add_interval_job("record", "1m", job_id=job_id),
        rf"^job_id {re.escape(repr(job_id))} {problem}.*; remove that character from the id$",
    )


def test_arguments_nested_5000_deep_are_refused(make_app):
    deep = []
    for _ in range(5000):
        deep = [deep]
    _assert_refused(
        make_app(),
        lambda s: s.add_async_job("record", kwargs={"tree": deep}),
        r"^job arguments must be JSON: kwargs\['tree'\]\[0\]\[0\].* is nested more than 100 "
        r"lists or dicts deep",
    )


def test_arguments_over_one_mebibyte_of_json_are_refused(make_app):
    _assert_refused(
        make_app(),
        lambda s: s.add_async_job("record", args=["x" * 1024 * 1024]),
        r"^job arguments are 1,048,601 bytes as JSON, over the limit of 1,048,576 bytes "
        r"\(1 MiB\); store large data elsewhere",
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "text"),
    [
        (["a\x00b"], {}, r"the text args\[0\] contains a NUL character \(at position 1\)"),
        ([], {"name": "\udcff"}, r"the text kwargs\['name'\] contains the lone surrogate"),
        ([{"k\x00": 1}], {}, r"args\[0\] has the key 'k\\x00', which contains a NUL"),
    ],
    ids=["nul", "lone-surrogate", "nul-in-key"],
)
def test_argument_text_with_a_nul_or_a_lone_surrogate_is_refused(make_app, args, kwargs, text):
    _assert_refused(
        make_app(),
        lambda s: s.add_async_job("record", args=args, kwargs=kwargs),
        rf"^job arguments must be JSON: {text}",
    )


@pytest.mark.parametrize("interval", [0.000001, "500ms"])
def test_an_interval_below_one_second_is_refused(make_app, interval):
    _assert_refused(
        make_app(),
        lambda s: s.add_interval_job("record", interval, job_id="busy"),
        r"^add_interval_job: interval: .* is shorter than the minimum of 1s",
    )


def test_a_request_keyword_argument_is_refused(make_app):
    _assert_refused(
        make_app(),
        lambda s: s.add_date_job("record", 0, kwargs={"request": 1}),
        r"^add_date_job: kwargs must not contain 'request': task 'record' is called as "
        r"func\(request, \*args, \*\*kwargs\)",
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        ([], {}, "missing a required argument: 'report_id'"),
        ([1], {"format": "csv"}, "got an unexpected keyword argument 'format'"),
    ],
    ids=["missing", "unknown-keyword"],
)
def test_arguments_the_task_can_never_be_called_with_are_refused(make_app, args, kwargs, problem):
    app = make_app(tasks={"strict": strict_report})
    _assert_refused(
        app,
        lambda s: s.add_async_job("strict", args=args, kwargs=kwargs),
        rf"^add_async_job: task 'strict' cannot be called .*: {problem}; its function takes "
        r"\(request, report_id, \*, fmt='pdf'\)",
    )


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (
            lambda s: s.add_cron_job("record", "0 0 * * * 61"),
            r"invalid cron expression '0 0 \* \* \* 61': second 61 is out of range 0-59$",
        ),
        (lambda s: s.add_cron_job("record", "5-2 * * * *"), r"minute range 5-2 runs backwards"),
        (lambda s: s.add_cron_job("record", minute=61), r"^add_cron_job: minute 61 is out of"),
    ],
    ids=["six-fields", "backwards-range", "keyword"],
)
def test_cron_range_errors_name_the_field(make_app, call, text):
    _assert_refused(make_app(), call, text)


def test_refused_input_in_a_transaction_stages_nothing(make_app):
    import transaction

    app = make_app()
    manager = transaction.TransactionManager()
    manager.begin()
    bound = app.scheduler.bind(manager)
    with pytest.raises(InvalidJobError, match="contains a NUL character"):
        bound.add_async_job("record", job_id="nul\x00")
    with pytest.raises(InvalidJobError, match="is shorter than the minimum of 1s"):
        bound.add_interval_job("record", "10ms")
    bound.add_async_job("record", job_id="good")
    manager.commit()
    assert [job.id for job in app.scheduler.iter_jobs()] == ["good"]


def test_arguments_up_to_the_size_limit_are_stored_and_read_back(make_app):
    from pyramid_pyncette.scheduler import MAX_ARGUMENTS_SIZE

    app = make_app()
    overhead = len('{"args":[""],"kwargs":{}}')
    text = "é" * ((MAX_ARGUMENTS_SIZE - overhead) // 6)  # '\\u00e9' in JSON
    job = app.scheduler.add_async_job("record", args=[text], job_id="big")
    assert app.scheduler.get_job("big").args == [text]
    assert app.run_pending() == 1
    assert app.calls[0].args == (text,)
    assert job.id == "big"


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://app:{SECRET}@db.example:notaport/jobs",
        f"postgresql+psycopg://app:{SECRET}@[::1/jobs",
        f"postgresql+nodriver://app:{SECRET}@db.example/jobs",
        f"mysql+pymysql://app:{SECRET}@db.example:notaport/jobs",
        f"redis://:{SECRET}@cache.example:notaport/0",
        f"redis://app:{SECRET}@cache.example:6379/0?socket_timeout=soon",
        f"rediss://app:{SECRET}@[::1/0",
        f"sqlite://app:{SECRET}@/jobs.sqlite?mode=bogus",
        f"ftp://app:{SECRET}@host/",
    ],
)
def test_include_errors_never_show_the_password(url):
    with pytest.raises(ConfigurationError) as raised:
        include_pyncette({"pyncette.url": url})
    assert SECRET not in str(raised.value)
    assert "pyncette.url" in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        f"rediss://{SECRET}@[::1/0",
        f"postgresql+nodriver://app@db.example/jobs?password={SECRET}",
        f"app:{SECRET}@host/jobs",
    ],
)
def test_include_errors_never_show_the_password_in_other_places(url):
    with pytest.raises(ConfigurationError) as raised:
        include_pyncette({"pyncette.url": url})
    assert SECRET not in str(raised.value)


def _with_password(url, user, password=SECRET):
    scheme, _, rest = url.partition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}://{user}:{password}@{host}"


def _assert_clean(output):
    assert SECRET not in output, output
    assert "Traceback" not in output, output


@pytest.mark.slow
def test_pscheduler_never_prints_a_postgresql_password(tmp_path, postgresql_server):
    # The test server trusts every local connection: the password is sent and ignored.
    url = _with_password(postgresql_server.url, "postgres")
    ini, _ = write_ini(tmp_path, url, extra="pyncette.table_name = creds_ok")
    for args in (["--list"], ["--once"], ["--once", "-v"]):
        status, output = pscheduler_output(ini, *args)
        assert status == 0, output
        _assert_clean(output)
    assert "postgres:***@" in output  # the worker names its store, redacted

    # An unknown role: a misconfiguration, reported at start.
    ini, _ = write_ini(tmp_path, _with_password(postgresql_server.url, "nobody"))
    for args in (["--list"], ["--once"]):
        status, output = pscheduler_output(ini, *args)
        assert status == 2, output
        assert 'role "nobody" does not exist' in output
        _assert_clean(output)


@pytest.mark.slow
def test_pscheduler_never_prints_a_mariadb_password(tmp_path, mariadb_server):
    # root has no password on the test server: one that is given is wrong.
    ini, _ = write_ini(tmp_path, _with_password(mariadb_server.url, "root"))
    for args in (["--list"], ["--once"]):
        status, output = pscheduler_output(ini, *args)
        assert status == 2, output
        assert "Access denied" in output
        _assert_clean(output)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["user-and-password", "password-only", "query"])
def test_pscheduler_never_prints_a_redis_password_the_server_rejects(
    tmp_path, form, redis_requiring_a_password
):
    address = redis_requiring_a_password.url.partition("://")[2]
    url = {
        "user-and-password": f"redis://default:{SECRET}@{address}",
        "password-only": f"redis://:{SECRET}@{address}",
        "query": f"redis://{address}?password={SECRET}",
    }[form]
    ini, _ = write_ini(tmp_path, url)
    for args in (["--list"], ["--once"]):
        status, output = pscheduler_output(ini, *args)
        assert status == 2, output
        _assert_clean(output)


@pytest.mark.slow
def test_pscheduler_never_prints_a_redis_password_the_server_does_not_expect(
    tmp_path, redis_server
):
    # Depending on the server version the password is ignored or refused.
    address = redis_server.url.partition("://")[2]
    ini, _ = write_ini(tmp_path, f"redis://:{SECRET}@{address}")
    for args in (["--list"], ["--once", "-v"]):
        status, output = pscheduler_output(ini, *args)
        assert status in (0, 2), output
        _assert_clean(output)


@pytest.mark.slow
def test_the_daemon_waiting_out_a_refused_store_never_logs_the_password(tmp_path):
    from tests.servers import free_port

    # Nothing listens on the port: an outage the daemon waits out.
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/jobs"
    ini, _ = write_ini(tmp_path, url)
    daemon = subprocess.Popen(
        [*PSCHEDULER, ini],
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        assert daemon.poll() is None  # it waits for the store, it does not exit
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "store unavailable" in err or "store error" in err
    _assert_clean(out + err)


# --------------------------------------------------------------------------- missing tasks


@pytest.mark.slow
def test_pscheduler_once_parks_a_job_whose_task_is_gone_and_runs_the_rest(tmp_path, capsys):
    from tests.daemon import add_due_jobs, bootstrap_registry, run_pscheduler
    from tests.procapp import read_runs

    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    expected = add_due_jobs(registry, 3)
    orphan = registry.scheduler.build_job(
        "record", DateSchedule(datetime.now().astimezone() - timedelta(seconds=1)), job_id="orphan"
    )
    registry.scheduler.repository.add([orphan.replace(task="tests.procapp:gone")])

    status, output = pscheduler_output(ini, "--once")

    assert status == 0, output
    assert (
        "job 'orphan' (task 'tests.procapp:gone') failed on attempt 1: task "
        "'tests.procapp:gone' is not registered in this application"
    ) in output
    assert "; parked as failed (see retry_job)" in output
    assert {job_id for job_id, _, _ in read_runs(records)} == expected
    job = registry.scheduler.get_job("orphan")
    assert (job.state, job.last_status) == ("failed", "failed")
    assert "is not registered in this application" in job.last_error

    assert run_pscheduler("--list", ini) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:2] == ["orphan", "tests.procapp:gone"]
    assert "failed" in lines[1].split()


def test_pscheduler_exit_status_for_an_unreachable_store_is_three(tmp_path, capsys):
    from tests.daemon import run_pscheduler

    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/missing-dir/jobs.sqlite")
    assert run_pscheduler("--list", ini) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("pscheduler: cannot list the jobs of the store")
    assert run_pscheduler("--once", ini) == 3
    assert "cannot reach the store" in capsys.readouterr().err
