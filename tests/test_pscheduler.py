"""The ``pscheduler`` command, in process and as real processes."""

from __future__ import annotations

import signal
import textwrap
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from tests.daemon import (
    add_due_jobs,
    bootstrap_registry,
    leased,
    pscheduler_output,
    run_pscheduler,
    spawn,
    write_ini,
)
from tests.inifiles import logging_sections


def test_once_runs_due_jobs_and_exits_zero(tmp_path):
    from tests.procapp import read_runs

    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    registry.scheduler.add_async_job("record", job_id="a")
    registry.scheduler.add_date_job(
        "record", datetime(2000, 1, 1, tzinfo=timezone.utc), job_id="past"
    )
    registry.scheduler.add_interval_job("record", "1h", job_id="hourly")

    assert run_pscheduler("--once", ini) == 0

    runs = read_runs(records)
    assert sorted(job_id for job_id, _, _ in runs) == ["a", "past"]
    remaining = [job.id for job in registry.scheduler.iter_jobs()]
    assert remaining == ["hourly"]


def test_list_prints_a_table_of_jobs(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    registry.scheduler.add_cron_job("record", "*/5 * * * *", job_id="every-five")
    registry.scheduler.add_interval_job("record", "30s", job_id="thirty")

    assert run_pscheduler("--list", ini) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "ID",
        "TASK",
        "QUEUE",
        "SCHEDULE",
        "NEXT",
        "RUN",
        "STATE",
        "LAST",
        "LAST",
        "ERROR",
    ]
    assert out[1].startswith("every-five  record  default")
    assert "cron */5 * * * *" in out[1]
    assert "scheduled" in out[1]
    assert out[2].startswith("thirty")
    assert "every 30s" in out[2]


def test_list_with_no_jobs_says_so(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    assert run_pscheduler("--list", ini) == 0
    assert capsys.readouterr().out.strip() == "no jobs"


def test_missing_include_is_a_one_line_error(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, "memory://", include=False)
    assert run_pscheduler("--once", ini) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "does not include pyramid_pyncette" in err[0]
    assert "pyramid.includes" in err[0]


def test_missing_ini_is_a_one_line_error(tmp_path, capsys):
    assert run_pscheduler("--once", str(tmp_path / "nope.ini")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("pscheduler: cannot load")


def test_bad_setting_is_a_one_line_error(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, "memory://", extra="pyncette.batch_size = lots")
    assert run_pscheduler("--once", ini) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pyncette.batch_size" in err[0]


def test_bad_config_var_is_a_usage_error(tmp_path, capsys):
    ini, _ = write_ini(tmp_path, "memory://")
    assert run_pscheduler(ini, "novalue") == 2
    assert "novalue" in capsys.readouterr().err


def test_config_vars_reach_the_ini(tmp_path):
    ini, _ = write_ini(tmp_path, "%(store)s")
    url = f"sqlite:///{tmp_path}/vars.sqlite"
    assert run_pscheduler("--once", ini, f"store={url}") == 0
    assert (tmp_path / "vars.sqlite").exists()


@pytest.mark.slow
def test_two_daemons_drain_2000_jobs_without_duplicates_or_locks(tmp_path):
    from tests.procapp import read_runs

    ini, records = write_ini(
        tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra="pyncette.batch_size = 50"
    )
    registry = bootstrap_registry(ini)
    expected = add_due_jobs(registry, 2000)

    daemons = [spawn(ini, "--once") for _ in range(2)]
    outputs = [daemon.communicate(timeout=300) for daemon in daemons]

    for daemon, (_, err) in zip(daemons, outputs, strict=True):
        assert daemon.returncode == 0, err
        assert "database is locked" not in err
        assert "Traceback" not in err
    counts = Counter(job_id for job_id, _, _ in read_runs(records))
    duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
    assert duplicates == {}
    assert set(counts) == expected  # nothing lost
    assert list(registry.scheduler.iter_jobs()) == []


@pytest.mark.slow
def test_sigterm_mid_drain_exits_zero_and_leaves_no_lease(tmp_path):
    from tests.procapp import read_runs

    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    add_due_jobs(registry, 400, seconds=0.05)

    daemon = spawn(ini)
    deadline = time.monotonic() + 60
    while len(read_runs(records)) < 20:
        assert time.monotonic() < deadline, "the daemon ran nothing"
        assert daemon.poll() is None, daemon.communicate()
        time.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)

    assert daemon.returncode == 0, err
    assert leased(registry) == []
    done = {job_id for job_id, _, _ in read_runs(records)}
    left = {job.id for job in registry.scheduler.iter_jobs()}
    assert not done & left  # every finished run was completed
    assert len(done) + len(left) == 400  # and nothing lost
    assert left  # it really stopped mid-drain


@pytest.mark.slow
def test_second_signal_exits_at_once_with_non_zero_status(tmp_path):
    from tests.procapp import read_runs

    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    add_due_jobs(registry, 4, seconds=30)

    daemon = spawn(ini)
    deadline = time.monotonic() + 30
    while len(leased(registry)) < 4:
        assert time.monotonic() < deadline, "the daemon claimed nothing"
        time.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert daemon.poll() is None  # still waiting for the running jobs
    started = time.monotonic()
    daemon.send_signal(signal.SIGINT)
    daemon.communicate(timeout=10)

    assert daemon.returncode not in (0, None)
    assert time.monotonic() - started < 5
    assert read_runs(records) == []


# --------------------------------------------------------------------------- credentials


def _write_talking_ini(tmp_path, url, extra=""):
    """An INI for :mod:`tests.redactapp`; ``url`` is written as is (``%`` doubled)."""
    ini = tmp_path / "talk.ini"
    ini.write_text(
        textwrap.dedent(
            f"""\
            [app:main]
            use = call:tests.redactapp:main
            pyncette.url = {url.replace("%", "%%")}
            pyncette.poll_interval = 0.2s
            EXTRA

            LOGGING
            """
        )
        .replace("EXTRA", textwrap.dedent(extra).strip())
        .replace(
            "LOGGING", logging_sections("%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s")
        )
    )
    return str(ini)


def _assert_app_lines_intact(output):
    from tests.redactapp import ORDINARY

    assert f"app says: {ORDINARY}" in output, output


def _server_url(url, user, password):
    """``url`` of a test server with ``user:password`` as its credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.rpartition('@')[2]}"


@pytest.mark.slow
@pytest.mark.parametrize("password", ["e", "postgres", "pass", "%40"])
def test_pscheduler_output_hides_only_the_postgresql_password(
    tmp_path, postgresql_server, password
):
    from tests.redactapp import ORDINARY

    # The test server trusts local connections: the password is sent and ignored.
    url = _server_url(postgresql_server.url, "postgres", password)
    ini = _write_talking_ini(tmp_path, url, extra=f"pyncette.table_name = talk_{len(password)}")
    registry = bootstrap_registry(ini)
    registry.scheduler.add_async_job("talk", job_id="talk")

    status, output = pscheduler_output(ini, "--once", "-v", timeout=120)

    assert status == 0, output
    _assert_app_lines_intact(output)
    assert f"job says: {ORDINARY}" in output
    shown = _server_url(postgresql_server.url, "postgres", "***")
    assert f"store {shown})" in output  # the worker's start line names its store
    assert f"postgres:{password}@" not in output


@pytest.mark.slow
def test_pscheduler_output_hides_the_password_of_a_user_named_like_the_scheme(
    tmp_path, postgresql_server, redis_server
):
    from tests.redactapp import ORDINARY

    with postgresql_server.connect("postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgresql'").fetchone():
            conn.execute("CREATE ROLE postgresql LOGIN SUPERUSER")
    with redis_server.client() as client:
        client.execute_command("ACL", "SETUSER", "redis", "on", ">secret", "~*", "&*", "+@all")
    urls = [
        _server_url(postgresql_server.url, "postgresql", "secret"),
        _server_url(redis_server.url, "redis", "secret"),
    ]
    for url in urls:
        ini = _write_talking_ini(tmp_path, url, extra="pyncette.table_name = talk_scheme")
        registry = bootstrap_registry(ini)
        registry.scheduler.add_async_job("talk", job_id="talk")

        status, output = pscheduler_output(ini, "--once", "-v", timeout=120)

        assert status == 0, output
        _assert_app_lines_intact(output)
        assert f"job says: {ORDINARY}" in output
        scheme, _, rest = url.partition("://")
        user = rest.partition(":")[0]
        assert f"store {scheme}://{user}:***@{rest.partition('@')[2]})" in output, output
        assert ":secret@" not in output


@pytest.mark.slow
def test_pscheduler_error_line_hides_only_the_mariadb_password(tmp_path, mariadb_server):
    # root has no password on the test server: 'p' is refused, and said so once.
    url = _server_url(mariadb_server.url, "root", "p")
    ini = _write_talking_ini(tmp_path, url)

    status, output = pscheduler_output(ini, "--once", timeout=120)

    assert status == 2, output
    _assert_app_lines_intact(output)
    errors = [line for line in output.splitlines() if line.startswith("pscheduler:")]
    shown = _server_url(mariadb_server.url, "root", "***")
    assert len(errors) == 1 and errors[0].startswith(f"pscheduler: store {shown}: "), output
    assert "root:p@" not in output


# --------------------------------------------------------------------------- queues served


class _RecordingWorker:
    """Stands in for the worker: records the queues it would serve, runs nothing."""

    served: list[frozenset[str] | None] = []

    def __init__(self, registry):
        _RecordingWorker.served.append(registry.scheduler.settings.queues)

    def run(self, until_idle=False):
        pass

    def stop(self):
        pass


@pytest.fixture
def recording_worker(monkeypatch):
    from pyramid_pyncette import worker

    monkeypatch.setattr(worker, "Worker", _RecordingWorker)
    _RecordingWorker.served = []
    return _RecordingWorker.served


def test_queue_flags_become_the_daemons_queues(tmp_path, recording_worker):
    ini, _ = write_ini(tmp_path, "memory://", extra="pyncette.queues = reports")
    assert run_pscheduler("--once", "--queue", "emails", "--queue", "default", ini) == 0
    assert recording_worker == [frozenset({"emails", "default"})]


def test_without_queue_flags_the_daemon_serves_the_queues_setting(tmp_path, recording_worker):
    ini, _ = write_ini(tmp_path, "memory://", extra="pyncette.queues = reports emails")
    assert run_pscheduler("--once", ini) == 0
    ini, _ = write_ini(tmp_path, "memory://")  # no pyncette.queues: every queue
    assert run_pscheduler("--once", ini) == 0
    assert recording_worker == [frozenset({"reports", "emails"}), None]


def test_a_bad_queue_name_stops_the_daemon_before_it_starts(tmp_path, capsys, recording_worker):
    ini, _ = write_ini(tmp_path, "memory://")
    with pytest.raises(SystemExit) as exited:
        run_pscheduler("--queue", "emails", "--queue", "bad/name", ini)
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("pscheduler: argument --queue: 'bad/name' is not a queue name")
    assert recording_worker == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "args", "line"),
    [
        (
            "",
            ["--queue", "emails", "--queue", "default"],
            "serving the queues default, emails (--queue)",
        ),
        ("pyncette.queues = reports", [], "serving the queues reports (pyncette.queues)"),
        ("", [], "serving every queue"),
    ],
)
def test_the_daemon_logs_which_queues_it_serves(tmp_path, extra, args, line):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite", extra=extra)
    status, output = pscheduler_output(ini, "--once", *args)
    assert status == 0, output
    assert line in output, output
