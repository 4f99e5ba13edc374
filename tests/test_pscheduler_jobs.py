"""``pscheduler``'s actions on jobs: ``--list`` filters, ``--show``, ``--retry``,
``--cancel`` and ``--json``, in process and as real processes on several stores."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from datetime import datetime, timezone

import pytest

from tests.daemon import (
    PSCHEDULER,
    bootstrap_registry,
    persistent_store,
    process_env,
    pscheduler_output,
    run_pscheduler,
    write_ini,
)
from tests.servers import free_port

#: The stores the process tests run on: a file, a SQL server and Redis.
STORES = ["sqlite", "postgresql", "redis"]

UNKNOWN = "pscheduler: no job has the id 'nope'"


def _failing_store(tmp_path, url, extra=""):
    """An INI on ``url`` whose store holds ``broken`` (failed, parked; queue ``default``) and
    ``hourly`` (queue ``reports``), and the runs of ``broken`` and ``done`` (a one-off job
    of the queue ``emails``, finished and gone)."""
    ini, _ = write_ini(tmp_path, url, extra=extra)
    registry = bootstrap_registry(ini)
    registry.scheduler.add_async_job("fail", job_id="broken", max_retries=0)
    registry.scheduler.add_interval_job("record", "1h", job_id="hourly", queue="reports")
    registry.scheduler.add_async_job("record", job_id="done", queue="emails")
    assert run_pscheduler("--once", ini) == 0
    assert registry.scheduler.get_job("broken").state == "failed"
    assert registry.scheduler.get_job("done") is None
    return ini, registry


@pytest.fixture
def sqlite_ini(tmp_path):
    """``(ini, registry)`` of a SQLite store with a failed and a scheduled job."""
    return _failing_store(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")


@pytest.fixture(params=STORES)
def store_ini(request, tmp_path):
    """``(ini, registry)`` of each store of :data:`STORES`, holding the same two jobs."""
    url, extra = persistent_store(request, tmp_path, request.param)
    return _failing_store(tmp_path, url, extra)


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _errors(output):
    return [line for line in output.splitlines() if line.startswith("pscheduler:")]


# --------------------------------------------------------------------------- in process


def test_list_shows_the_headline_of_the_last_error(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--list", ini) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("LAST ERROR")
    broken = next(line for line in lines if line.startswith("broken"))
    assert "failed" in broken
    assert broken.endswith("RuntimeError: failing on purpose")
    hourly = next(line for line in lines if line.startswith("hourly"))
    assert hourly.endswith("-")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "failed"], ["broken"]),
        (["--state", "scheduled"], ["hourly"]),
        (["--state", "running"], []),
        (["--task", "record"], ["hourly"]),
        (["--task", "fail", "--state", "scheduled"], []),
        (["--queue", "reports"], ["hourly"]),
        (["--queue", "default", "--queue", "reports"], ["broken", "hourly"]),
        (["--queue", "emails", "--queue", "reports", "--state", "failed"], []),
    ],
)
def test_list_filters_by_state_and_task(sqlite_ini, capsys, args, expected):
    ini, _ = sqlite_ini
    assert run_pscheduler("--list", *args, ini) == 0
    lines = capsys.readouterr().out.splitlines()
    if expected:
        assert [line.split()[0] for line in lines[1:]] == expected
    else:
        assert lines == ["no jobs"]


def test_list_of_an_unregistered_task_is_a_usage_error(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--list", "--task", "fial", ini) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "no task is registered as 'fial' (did you mean 'fail'?)" in err[0]


def test_list_finds_the_stored_jobs_of_a_task_no_longer_registered(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    hourly = registry.scheduler.get_job("hourly")
    registry.scheduler.repository.add([hourly.replace(id="orphan", task="gone")])
    assert run_pscheduler("--list", "--task", "gone", ini) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["orphan", "gone"]]


def test_show_prints_every_field_and_the_last_error_in_full(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--show", "broken", ini) == 0
    lines = capsys.readouterr().out.splitlines()
    fields = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert fields == [
        "id",
        "task",
        "queue",
        "state",
        "paused",
        "schedule",
        "next run",
        "args",
        "kwargs",
        "options",
        "attempts",
        "last run",
        "last status",
        "created at",
        "runs (last 1, newest first)",
        "last error",
    ]
    assert "state:       failed" in lines
    assert 'options:     {"max_retries": 0}' in lines
    error = lines[lines.index("last error:") + 1 :]
    assert error[0] == "    Traceback (most recent call last):"
    assert error[-1] == "    RuntimeError: failing on purpose"
    assert any("raise RuntimeError" in line for line in error)


def test_show_json_is_one_document_with_iso_times(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    assert run_pscheduler("--show", "broken", "--json", ini) == 0
    document = json.loads(capsys.readouterr().out)
    job = document["job"]
    stored = registry.scheduler.get_job("broken")
    assert job["state"] == "failed"
    assert job["last_error"] == stored.last_error
    assert job["last_error"].rstrip().endswith("RuntimeError: failing on purpose")
    assert job["last_run_at"] == stored.last_run_at.isoformat()
    assert job["last_run_at"].endswith("+00:00")


def test_list_json_is_one_document_of_the_filtered_jobs(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--list", "--json", "--state", "scheduled", ini) == 0
    document = json.loads(capsys.readouterr().out)
    assert [job["id"] for job in document["jobs"]] == ["hourly"]
    assert document["jobs"][0]["schedule_description"].startswith("every 1h")


def test_retry_queues_a_failed_job_to_run_now(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    assert run_pscheduler("--retry", "broken", ini) == 0
    assert capsys.readouterr().out.strip() == "job 'broken' queued to run now"
    job = registry.scheduler.get_job("broken")
    assert job.state == "scheduled"
    assert job.attempts == 0


def test_cancel_deletes_the_job(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    assert run_pscheduler("--cancel", "hourly", ini) == 0
    assert capsys.readouterr().out.strip() == "job 'hourly' cancelled"
    assert registry.scheduler.get_job("hourly") is None


@pytest.mark.parametrize("action", ["--show", "--retry", "--cancel"])
def test_an_unknown_job_id_is_a_one_line_usage_error(sqlite_ini, capsys, action):
    ini, registry = sqlite_ini
    assert run_pscheduler(action, "nope", ini) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(UNKNOWN)
    assert "pscheduler --list" in err[0]
    assert sorted(job.id for job in registry.scheduler.iter_jobs()) == ["broken", "hourly"]


def test_a_cancel_the_scheduler_refuses_passes_its_reason_on(sqlite_ini, capsys, monkeypatch):
    from pyramid_pyncette import InvalidJobError
    from pyramid_pyncette.scheduler import Scheduler

    def refuse(self, job_id):
        raise InvalidJobError(f"cancel_job: {job_id!r} is declared in code; pause it instead")

    monkeypatch.setattr(Scheduler, "cancel_job", refuse)
    ini, _ = sqlite_ini
    assert run_pscheduler("--cancel", "hourly", ini) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["pscheduler: cancel_job: 'hourly' is declared in code; pause it instead"]


def test_an_invalid_job_id_is_a_usage_error(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--show", "x" * 300, ini) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "job_id must be 1 to 200 characters" in err[0]


def test_stored_control_characters_do_not_break_the_table(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    hourly = registry.scheduler.get_job("hourly")
    registry.scheduler.repository.add(
        [hourly.replace(id="evil\x1b[2J\r\nid", last_error="bad\x1b]0;owned\x07\r\nmore")]
    )
    assert run_pscheduler("--list", ini) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    lines = out.splitlines()
    assert len(lines) == 4
    evil = next(line for line in lines if line.startswith("evil"))
    assert evil.startswith("evil\\x1b[2J\\x0d\\x0aid  record")
    assert evil.endswith("bad\\x1b]0;owned\\x07")


def test_an_unreadable_row_is_listed_and_shown_with_its_problem(tmp_path, sqlite_ini, capsys):
    ini, _ = sqlite_ini
    with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:
        conn.execute("UPDATE pyncette_jobs SET args = '{nope' WHERE id = 'hourly'")
    assert run_pscheduler("--list", ini) == 0
    assert any(line.startswith("hourly") for line in capsys.readouterr().out.splitlines())
    assert run_pscheduler("--show", "hourly", ini) == 0
    problem = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem")]
    assert len(problem) == 1
    assert "cannot be run" in problem[0] and "not valid JSON" in problem[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--list"],
        ["--list", "--json"],
        ["--show", "x"],
        ["--retry", "x"],
        ["--cancel", "x"],
        ["--runs"],
        ["--runs", "x", "--json"],
        ["--queues"],
        ["--pause", "x"],
        ["--resume", "x"],
        ["--pause-queue", "q"],
        ["--resume-queue", "q"],
    ],
)
def test_an_unreachable_store_exits_3(tmp_path, capsys, args):
    # A missing directory may be a volume not mounted yet: an outage, not a misconfiguration.
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/missing-dir/jobs.sqlite")
    assert run_pscheduler(*args, ini) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("pscheduler: cannot")


# --------------------------------------------------------------------------- runs, pauses, queues


def _job_lines(output):
    """The first words of a table's lines after its header."""
    return [line.split()[0] for line in _lines(output)[1:]]


def _run_jobs(output):
    """The JOB column of a ``--runs`` table."""
    return [line.split()[3] for line in _lines(output)[1:]]


@pytest.mark.slow
def test_processes_show_the_queue_pause_state_and_last_runs(sqlite_ini):
    ini, _ = sqlite_ini
    status, output = _run(ini, "--show", "broken")
    assert status == 0, output
    lines = output.splitlines()
    assert "queue:       default" in lines
    assert "paused:      no" in lines
    start = lines.index("runs (last 1, newest first):")
    header, run = lines[start + 1 : lines.index("last error:")]
    assert header.split() == ["WHEN", "ATTEMPT", "OUTCOME", "DURATION", "DAEMON", "ERROR"]
    assert run.split()[3:5] == ["1", "failed"]
    assert run.endswith("RuntimeError: failing on purpose")


def test_show_keeps_the_last_10_runs_newest_first(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    for _ in range(11):
        registry.scheduler.retry_job("broken")
        assert run_pscheduler("--once", ini) == 0
    capsys.readouterr()
    assert run_pscheduler("--show", "broken", "--json", ini) == 0
    document = json.loads(capsys.readouterr().out)
    runs = document["runs"]
    stored = registry.scheduler.get_runs(job_id="broken").runs
    assert len(stored) == 12
    assert [run["id"] for run in runs] == [run.id for run in stored[:10]]
    assert {(run["job_id"], run["outcome"], run["attempt"]) for run in runs} == {
        ("broken", "failed", 1)
    }
    assert run_pscheduler("--show", "broken", ini) == 0
    assert "runs (last 10, newest first):" in capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_processes_show_json_has_the_job_its_queue_and_its_runs(sqlite_ini):
    from pyramid_pyncette import operate

    ini, _ = sqlite_ini
    status, output = _run(ini, "--show", "broken", "--json")
    assert status == 0, output
    document = json.loads(output)
    assert set(document) == {"job", "queue_paused", "runs"}
    assert (document["job"]["queue"], document["job"]["paused"]) == ("default", False)
    assert document["queue_paused"] is False
    [run] = document["runs"]
    assert (run["job_id"], run["outcome"], run["queue"], run["task"]) == (
        "broken",
        "failed",
        "default",
        "fail",
    )
    assert operate.error_headline(run["error"]) == "RuntimeError: failing on purpose"
    assert run["started_at"].endswith("+00:00") and run["duration"] >= 0


@pytest.mark.slow
def test_processes_show_says_when_the_jobs_queue_is_paused(sqlite_ini):
    ini, registry = sqlite_ini
    registry.scheduler.pause_queue("reports")
    status, output = _run(ini, "--show", "hourly")
    assert status == 0, output
    assert "queue:       reports (paused)" in output.splitlines()
    status, output = _run(ini, "--show", "hourly", "--json")
    assert json.loads(output)["queue_paused"] is True


@pytest.mark.slow
def test_processes_runs_lists_every_run_newest_first(sqlite_ini):
    ini, registry = sqlite_ini
    status, output = _run(ini, "--runs")
    assert status == 0, output
    table = _lines(output)
    assert table[0].split() == [
        "WHEN",
        "JOB",
        "TASK",
        "QUEUE",
        "ATTEMPT",
        "OUTCOME",
        "DURATION",
        "DAEMON",
        "ERROR",
    ]
    expected = [run.job_id for run in registry.scheduler.get_runs().runs]
    assert sorted(expected) == ["broken", "done"]
    assert _run_jobs(output) == expected
    broken = next(line for line in table if " broken " in line)
    assert broken.endswith("RuntimeError: failing on purpose")
    assert broken.split()[9].endswith(f":{os.getpid()}")  # the daemon (in this process)


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["broken"], ["broken"]),
        (["done"], ["done"]),  # finished and gone: its history stays
        (["--failed"], ["broken"]),
        (["--task", "record"], ["done"]),
        (["--queue", "emails"], ["done"]),
        (["--queue", "reports"], []),
        (["--failed", "--queue", "emails"], []),
        (["nope"], []),
    ],
)
def test_processes_runs_filters(sqlite_ini, args, expected):
    ini, _ = sqlite_ini
    status, output = _run(ini, "--runs", *args)
    assert status == 0, output
    if expected:
        assert _run_jobs(output) == expected
    else:
        assert _lines(output) == ["no runs"]


@pytest.mark.slow
def test_processes_runs_limit_keeps_the_newest(sqlite_ini):
    ini, registry = sqlite_ini
    newest = registry.scheduler.get_runs().runs[0]
    status, output = _run(ini, "--runs", "--limit", "1")
    assert status == 0, output
    assert _run_jobs(output) == [newest.job_id]


def test_runs_pages_through_the_history_up_to_the_limit(sqlite_ini, capsys):
    from pyramid_pyncette.scripts import pscheduler

    ini, registry = sqlite_ini
    for _ in range(4):
        registry.scheduler.retry_job("broken")
        assert run_pscheduler("--once", ini) == 0
    capsys.readouterr()
    old_page = pscheduler._RUNS_PAGE
    pscheduler._RUNS_PAGE = 2
    try:
        assert run_pscheduler("--runs", "--failed", "--limit", "3", "--json", ini) == 0
        three = json.loads(capsys.readouterr().out)["runs"]
        assert run_pscheduler("--runs", "--json", ini) == 0
        every = json.loads(capsys.readouterr().out)["runs"]
    finally:
        pscheduler._RUNS_PAGE = old_page
    stored = registry.scheduler.get_runs(outcome=("failed", "lease_lost")).runs
    assert [run["id"] for run in three] == [run.id for run in stored[:3]]
    assert len(every) == 6


def test_runs_filter_by_several_queues_page_by_page(sqlite_ini, capsys):
    from pyramid_pyncette.scripts import pscheduler

    ini, registry = sqlite_ini
    for _ in range(3):
        registry.scheduler.retry_job("broken")  # more runs of the queue default
        assert run_pscheduler("--once", ini) == 0
    registry.scheduler.add_async_job("record", job_id="report", queue="reports")
    assert run_pscheduler("--once", ini) == 0
    capsys.readouterr()
    old_page = pscheduler._RUNS_PAGE
    pscheduler._RUNS_PAGE = 2  # the matches are spread over several pages
    try:
        args = ("--runs", "--queue", "emails", "--queue", "reports", "--json", ini)
        assert run_pscheduler(*args) == 0
        runs = json.loads(capsys.readouterr().out)["runs"]
        assert run_pscheduler("--runs", "--queue", "emails", "--json", ini) == 0
        emails = json.loads(capsys.readouterr().out)["runs"]
    finally:
        pscheduler._RUNS_PAGE = old_page
    assert [run["job_id"] for run in runs] == ["report", "done"]
    assert [run["job_id"] for run in emails] == ["done"]


def test_runs_of_a_task_no_longer_registered_are_found(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    assert run_pscheduler("--runs", "--task", "gone", ini) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no task is registered as 'gone'" in err[0]
    # the job of a task the code dropped ran before: its history names it
    hourly = registry.scheduler.get_job("hourly")
    registry.scheduler.repository.add([hourly.replace(id="orphan", task="gone", due_at=None)])
    registry.scheduler.retry_job("orphan")
    assert run_pscheduler("--once", ini) == 0
    capsys.readouterr()
    assert run_pscheduler("--runs", "--task", "gone", ini) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[3:5] for line in table[1:]] == [["orphan", "gone"]]


def test_pausing_a_queue_twice_says_it_was_already_paused(sqlite_ini, capsys):
    ini, _ = sqlite_ini
    assert run_pscheduler("--pause-queue", "emails", ini) == 0
    assert run_pscheduler("--pause-queue", "emails", ini) == 0
    assert run_pscheduler("--resume-queue", "emails", ini) == 0
    assert run_pscheduler("--resume-queue", "emails", ini) == 0
    assert capsys.readouterr().out.splitlines() == [
        "queue 'emails' paused: no daemon claims its jobs until pscheduler --resume-queue emails",
        "queue 'emails' was already paused",
        "queue 'emails' resumed: the daemons serving it claim its jobs again",
        "queue 'emails' was not paused",
    ]


def test_retrying_a_paused_job_is_refused_in_one_line(sqlite_ini, capsys):
    ini, registry = sqlite_ini
    registry.scheduler.pause_job("hourly")
    assert run_pscheduler("--retry", "hourly", ini) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "resume_job" in err[0]
    assert registry.scheduler.get_job("hourly").state == "paused"


@pytest.mark.slow
def test_processes_runs_json_is_one_document(sqlite_ini):
    from tests.test_operate import RUN_KEYS

    ini, _ = sqlite_ini
    status, output = _run(ini, "--runs", "--failed", "--json")
    assert status == 0, output
    document = json.loads(output)
    assert list(document) == ["runs"]
    [run] = document["runs"]
    assert set(run) == RUN_KEYS
    assert (run["job_id"], run["outcome"], run["attempt"]) == ("broken", "failed", 1)
    assert run["host"] and isinstance(run["pid"], int) and run["worker"]


@pytest.mark.slow
def test_processes_pause_and_resume_a_job(sqlite_ini):
    ini, registry = sqlite_ini
    status, output = _run(ini, "--pause", "hourly")
    assert (status, _lines(output)) == (0, ["job 'hourly' paused: state paused, next run -"])
    assert registry.scheduler.get_job("hourly").state == "paused"

    status, output = _run(ini, "--list", "--state", "paused")
    assert status == 0, output
    assert _job_lines(output) == ["hourly"]

    status, output = _run(ini, "--resume", "hourly")
    assert status == 0, output
    job = registry.scheduler.get_job("hourly")
    assert job.state == "scheduled"
    next_run = job.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert _lines(output) == [f"job 'hourly' resumed: state scheduled, next run {next_run}"]


@pytest.mark.slow
@pytest.mark.parametrize("action", ["--pause", "--resume"])
def test_processes_pausing_an_unknown_job_is_one_line_and_writes_nothing(sqlite_ini, action):
    ini, registry = sqlite_ini
    before = list(registry.scheduler.iter_jobs())
    status, output = _run(ini, action, "nope")
    assert status == 2, output
    assert len(_lines(output)) == 1 and output.startswith(UNKNOWN), output
    assert list(registry.scheduler.iter_jobs()) == before


@pytest.mark.slow
def test_processes_queues_pause_and_resume(sqlite_ini):
    from pyramid_pyncette import operate

    ini, registry = sqlite_ini
    hourly_due = operate.format_time(registry.scheduler.get_job("hourly").due_at)
    status, output = _run(ini, "--queues")
    assert status == 0, output
    assert _lines(output) == [
        "NAME     PAUSED  DUE  RUNNING  SCHEDULED  RETRYING  FAILED  PAUSED JOBS  FIRST DUE",
        "default  no      0    0        0          0         1       0            -",
        f"reports  no      0    0        1          0         0       0            {hourly_due}",
    ]

    status, output = _run(ini, "--pause-queue", "emails")
    assert (status, _lines(output)) == (
        0,
        ["queue 'emails' paused: no daemon claims its jobs until pscheduler --resume-queue emails"],
    )
    status, output = _run(ini, "--queues", "--json")
    assert status == 0, output
    states = dict.fromkeys(("scheduled", "running", "retrying", "failed", "paused"), 0)
    hourly_due_at = operate.iso_time(registry.scheduler.get_job("hourly").due_at)
    assert json.loads(output) == {
        "queues": [
            {
                "name": "default",
                "paused": False,
                "due": 0,
                "running": 0,
                "jobs": {**states, "failed": 1},
                "oldest_due_at": None,
            },
            {
                "name": "emails",
                "paused": True,
                "due": 0,
                "running": 0,
                "jobs": states,
                "oldest_due_at": None,
            },
            {
                "name": "reports",
                "paused": False,
                "due": 0,
                "running": 0,
                "jobs": {**states, "scheduled": 1},
                "oldest_due_at": hourly_due_at,
            },
        ]
    }

    status, output = _run(ini, "--resume-queue", "emails")
    assert (status, _lines(output)) == (
        0,
        ["queue 'emails' resumed: the daemons serving it claim its jobs again"],
    )
    assert [queue.name for queue in registry.scheduler.get_queues() if queue.paused] == []


@pytest.mark.slow
def test_processes_list_shows_and_filters_queues(sqlite_ini):
    ini, _ = sqlite_ini
    status, output = _run(ini, "--list")
    assert status == 0, output
    table = _lines(output)
    assert table[0].split()[:3] == ["ID", "TASK", "QUEUE"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["broken", "fail", "default"],
        ["hourly", "record", "reports"],
    ]
    status, output = _run(ini, "--list", "--queue", "reports", "--json")
    assert status == 0, output
    assert [job["id"] for job in json.loads(output)["jobs"]] == ["hourly"]
    status, output = _run(ini, "--list", "--limit", "1")
    assert status == 0, output
    assert _job_lines(output) == ["broken"]


@pytest.mark.slow
def test_processes_daemon_serves_only_its_queues(tmp_path):
    from tests.procapp import read_runs

    ini, records = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    registry = bootstrap_registry(ini)
    registry.scheduler.add_async_job("record", job_id="mail", queue="emails")
    registry.scheduler.add_async_job("record", job_id="report", queue="reports")
    registry.scheduler.add_async_job("record", job_id="other")
    status, output = _run(ini, "--once", "--queue", "emails", "--queue", "reports")
    assert status == 0, output
    assert "serving the queues emails, reports (--queue)" in output
    assert sorted(job_id for job_id, _, _ in read_runs(records)) == ["mail", "report"]
    assert [job.id for job in registry.scheduler.iter_jobs()] == ["other"]


@pytest.mark.slow
def test_processes_runs_pause_and_queues_on_every_store(store_ini):
    ini, registry = store_ini
    status, output = _run(ini, "--runs", "--failed")
    assert status == 0, output
    assert _run_jobs(output) == ["broken"]
    assert _lines(output)[1].endswith("RuntimeError: failing on purpose")

    status, output = _run(ini, "--show", "broken", "--json")
    assert status == 0, output
    assert [run["outcome"] for run in json.loads(output)["runs"]] == ["failed"]

    status, output = _run(ini, "--pause", "hourly")
    assert status == 0, output
    assert registry.scheduler.get_job("hourly").state == "paused"
    status, output = _run(ini, "--resume", "hourly")
    assert status == 0, output
    assert registry.scheduler.get_job("hourly").state == "scheduled"

    status, output = _run(ini, "--pause-queue", "reports")
    assert status == 0, output
    status, output = _run(ini, "--queues", "--json")
    assert status == 0, output
    paused = [queue["name"] for queue in json.loads(output)["queues"] if queue["paused"]]
    assert paused == ["reports"]


# --------------------------------------------------------------------------- processes


def _run(ini, *args):
    status, output = pscheduler_output(ini, *args, timeout=120)
    return status, output


@pytest.mark.slow
def test_processes_list_filter_and_json_on_every_store(store_ini):
    ini, _ = store_ini
    status, output = _run(ini, "--list")
    assert status == 0, output
    table = _lines(output)
    assert table[0].split()[-2:] == ["LAST", "ERROR"]
    assert [line.split()[0] for line in table[1:]] == ["broken", "hourly"]
    assert table[1].endswith("RuntimeError: failing on purpose")

    status, output = _run(ini, "--list", "--state", "failed")
    assert status == 0, output
    assert [line.split()[0] for line in _lines(output)[1:]] == ["broken"]

    status, output = _run(ini, "--list", "--task", "record", "--json")
    assert status == 0, output
    assert [job["id"] for job in json.loads(output)["jobs"]] == ["hourly"]


@pytest.mark.slow
def test_processes_show_the_last_error_in_full_on_every_store(store_ini):
    ini, _ = store_ini
    status, output = _run(ini, "--show", "broken")
    assert status == 0, output
    lines = output.splitlines()
    assert "state:       failed" in lines
    error = lines[lines.index("last error:") + 1 :]
    assert error[0] == "    Traceback (most recent call last):"
    assert error[-1] == "    RuntimeError: failing on purpose"

    status, output = _run(ini, "--show", "broken", "--json")
    assert status == 0, output
    job = json.loads(output)["job"]
    assert (job["id"], job["state"], job["attempts"]) == ("broken", "failed", 1)
    assert job["last_error"].startswith("Traceback (most recent call last):")


@pytest.mark.slow
def test_processes_retry_and_cancel_on_every_store(store_ini):
    ini, registry = store_ini
    status, output = _run(ini, "--retry", "broken")
    assert (status, _lines(output)) == (0, ["job 'broken' queued to run now"])
    assert registry.scheduler.get_job("broken").state == "scheduled"

    status, output = _run(ini, "--cancel", "hourly")
    assert (status, _lines(output)) == (0, ["job 'hourly' cancelled"])
    assert registry.scheduler.get_job("hourly") is None

    for action in ("--show", "--retry", "--cancel"):
        status, output = _run(ini, action, "nope")
        assert status == 2, output
        assert len(_errors(output)) == 1 and _errors(output)[0].startswith(UNKNOWN), output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--list", "--state", "stuck"],
            "choose from 'scheduled', 'running', 'retrying', 'failed', 'paused'",
        ),
        (["--list", "--show", "a"], "argument --show: not allowed with argument --list"),
        (["--retry", "a", "--cancel", "a"], "argument --cancel: not allowed with argument --retry"),
        (["--once", "--list"], "argument --list: not allowed with argument --once"),
        (["--show", "a", "--state", "failed"], "--state only filters --list"),
        (["--task", "record"], "--task only filters --list and --runs"),
        (["--cancel", "a", "--json"], "--json only applies to --list, --show, --runs and --queues"),
        (["--json"], "--json only applies to --list, --show, --runs and --queues"),
        (["--pause", "a", "--json"], "--json only applies to --list, --show, --runs and --queues"),
        (["--pause", "a", "--resume", "a"], "argument --resume: not allowed with argument --pause"),
        (["--runs", "--queues"], "argument --queues: not allowed with argument --runs"),
        (["--list", "--failed"], "--failed only filters --runs"),
        (["--failed"], "--failed only filters --runs"),
        (["--show", "a", "--limit", "5"], "--limit only applies to --list and --runs"),
        (["--runs", "--limit", "0"], "argument --limit: '0' is not a positive whole number"),
        (["--list", "--limit", "many"], "argument --limit: 'many' is not a positive whole number"),
        (["--runs", "--state", "failed"], "--state only filters --list"),
        (["--pause", "a", "--queue", "emails"], "--queue only filters --list and --runs"),
        (["--queues", "--queue", "emails"], "--queue only filters --list and --runs"),
        (["--list", "--queue", "bad name"], "argument --queue: 'bad name' is not a queue name"),
        (["--queue", "-x"], "argument --queue: expected one argument"),
        (["--once", "--queue", "ok", "--queue", "no/pe"], "'no/pe' is not a queue name"),
        (["--pause-queue", "a b"], "argument --pause-queue: 'a b' is not a queue name"),
        (["--resume-queue", ".x"], "argument --resume-queue: '.x' is not a queue name"),
    ],
)
def test_processes_refuse_bad_flags_in_one_line_with_status_2(tmp_path, args, needle):
    ini, _ = write_ini(tmp_path, f"sqlite:///{tmp_path}/jobs.sqlite")
    status, output = _run(ini, *args)
    assert status == 2, output
    assert len(_lines(output)) == 1, output
    assert output.startswith("pscheduler: ") and needle in output, output
    assert not (tmp_path / "jobs.sqlite").exists()  # refused before touching the store


@pytest.mark.slow
def test_processes_exit_3_when_the_server_store_is_unreachable(tmp_path):
    ini, _ = write_ini(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    for args in (
        ["--list"],
        ["--show", "x"],
        ["--retry", "x"],
        ["--cancel", "x"],
        ["--runs", "--failed"],
        ["--queues", "--json"],
        ["--pause", "x"],
        ["--resume", "x"],
        ["--pause-queue", "q"],
        ["--resume-queue", "q"],
    ):
        status, output = _run(ini, *args)
        assert status == 3, (args, output)
        assert len(_errors(output)) == 1, output


@pytest.mark.slow
def test_help_explains_every_action_and_option():
    done = subprocess.run(
        [*PSCHEDULER, "--help"], env=process_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for flag in (
        "--once",
        "--list",
        "--show ID",
        "--runs [ID]",
        "--queues",
        "--pause ID",
        "--resume ID",
        "--retry ID",
        "--cancel ID",
        "--pause-queue NAME",
        "--resume-queue NAME",
        "--task NAME",
        "--queue NAME",
        "--failed",
        "--limit N",
    ):
        assert f"{flag} " in text, flag
    states = "scheduled, running, retrying, failed, paused"
    assert f"--state STATE With --list: only the jobs in STATE ({states})" in text
    assert "--task NAME With --list or --runs: only the jobs (runs) of the task NAME" in text
    assert "--queue NAME Repeatable. With --list or --runs: only the jobs (runs) of these" in text
    assert "serve these queues instead of those of pyncette.queues" in text
    assert "--failed With --runs: only the runs that failed or lost their lease" in text
    assert "--limit N With --list or --runs: print at most N" in text
    assert "--json Print --list, --show, --runs or --queues as one JSON document" in text
    assert "its last 10 runs" in text
    assert "At most one; without any, pscheduler runs the daemon" in text
    assert "3 the store cannot be reached" in text


# --------------------------------------------------------------------------- README


def _readme_section(title):
    from tests.daemon import ROOT

    with open(f"{ROOT}/README.md", encoding="utf-8") as readme:
        text = readme.read()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def _utc(*parts):
    return datetime(*parts, tzinfo=timezone.utc)


def _readme_jobs():
    """The jobs of the README's "Operating the scheduler" examples."""
    from pyramid_pyncette.jobs import Job

    utc = _utc
    error = (
        "Traceback (most recent call last):\n"
        '  File "/srv/myapp/myapp/jobs.py", line 16, in send_welcome\n'
        '    with smtplib.SMTP("mail.example.com") as smtp:\n'
        '  File "/usr/lib/python3.12/smtplib.py", line 255, in __init__\n'
        "    (code, msg) = self.connect(host, port)\n"
        "ConnectionRefusedError: [Errno 111] Connection refused\n"
    )
    return [
        Job(
            id="daily-42",
            task="myapp.jobs:send_welcome",
            schedule={
                "kind": "interval",
                "microseconds": 86400 * 10**6,
                "start": "2026-05-03T09:12:44+00:00",
            },
            args=[42],
            queue="emails",
            due_at=utc(2026, 5, 5, 9, 12, 44),
            next_run_at=utc(2026, 5, 5, 9, 12, 44),
            last_run_at=utc(2026, 5, 4, 9, 12, 44),
            last_status="succeeded",
            created_at=utc(2026, 5, 3, 9, 12, 44),
        ),
        Job(
            id="myapp.jobs:nightly_cleanup",
            task="myapp.jobs:nightly_cleanup",
            schedule={"kind": "cron", "expression": "0 3 * * *", "timezone": "Europe/Paris"},
            due_at=utc(2026, 5, 5, 1, 0),
            next_run_at=utc(2026, 5, 5, 1, 0),
            last_run_at=utc(2026, 5, 4, 1, 0),
            last_status="succeeded",
            created_at=utc(2026, 5, 1, 8, 0),
        ),
        Job(
            id="welcome-43",
            task="myapp.jobs:send_welcome",
            schedule={"kind": "date", "run_at": "2026-05-04T08:57:10+00:00"},
            args=[43],
            queue="emails",
            attempts=6,
            last_run_at=utc(2026, 5, 4, 9, 1, 52),
            last_status="failed",
            last_error=error,
            created_at=utc(2026, 5, 4, 8, 57, 10),
        ),
    ]


def _readme_runs():
    """The run history of the README's examples, newest first."""
    from datetime import timedelta

    from pyramid_pyncette.jobs import RunRecord

    jobs = {job.id: job for job in _readme_jobs()}
    # A run's error starts with its exception line, then the traceback.
    error = (
        "ConnectionRefusedError: [Errno 111] Connection refused\n" + jobs["welcome-43"].last_error
    )
    # (job id, attempt, start, seconds taken, outcome), oldest first
    runs = [
        ("daily-42", 1, _utc(2026, 5, 3, 9, 12, 44), 0.312, "succeeded"),
        ("myapp.jobs:nightly_cleanup", 1, _utc(2026, 5, 4, 1, 0, 0), 42.71, "succeeded"),
        ("welcome-43", 1, _utc(2026, 5, 4, 8, 57, 10), 0.021, "failed"),
        ("welcome-43", 2, _utc(2026, 5, 4, 8, 57, 19), 0.018, "failed"),
        ("welcome-43", 3, _utc(2026, 5, 4, 8, 57, 36), 0.019, "failed"),
        ("welcome-43", 4, _utc(2026, 5, 4, 8, 58, 11), 0.02, "failed"),
        ("welcome-43", 5, _utc(2026, 5, 4, 8, 59, 24), 0.017, "failed"),
        ("welcome-43", 6, _utc(2026, 5, 4, 9, 1, 52), 0.019, "failed"),
        ("daily-42", 1, _utc(2026, 5, 4, 9, 12, 44), 0.287, "succeeded"),
    ]
    records = [
        RunRecord(
            job_id=job_id,
            task=jobs[job_id].task,
            queue=jobs[job_id].queue,
            scheduled_at=jobs["welcome-43"].created_at if job_id == "welcome-43" else start,
            started_at=start,
            finished_at=start + timedelta(seconds=seconds),
            attempt=attempt,
            outcome=outcome,
            error=error if outcome == "failed" else None,
            host="jobs-1",
            pid=2817,
            worker="5f0c2a9e41b7",
            id=f"{number:016x}",
        )
        for number, (job_id, attempt, start, seconds, outcome) in enumerate(runs, 1)
    ]
    return records[::-1]


def _readme_queues():
    from pyramid_pyncette.jobs import QueueInfo

    def counts(scheduled, running=0, failed=0):
        states = dict.fromkeys(("scheduled", "running", "retrying", "failed", "paused"), 0)
        return {**states, "scheduled": scheduled, "running": running, "failed": failed}

    return [
        QueueInfo(
            "default",
            False,
            0,
            1,
            counts(25, 1, 1),
            datetime(2026, 5, 4, 10, 0, tzinfo=timezone.utc),
        ),
        QueueInfo(
            "emails", True, 12, 0, counts(12), datetime(2026, 5, 4, 9, 25, tzinfo=timezone.utc)
        ),
    ]


def test_readme_operating_examples_are_what_pscheduler_prints():
    from pyramid_pyncette import operate

    section = _readme_section("Operating the scheduler")
    jobs = _readme_jobs()
    runs = _readme_runs()
    welcome_runs = [run for run in runs if run.job_id == "welcome-43"]
    daily = jobs[0]
    paused = daily.replace(options={"paused": True}, due_at=None)
    for block in (
        operate.jobs_table(jobs),
        operate.jobs_table(jobs[2:]),
        operate.job_details(jobs[2], runs=welcome_runs),
        operate.runs_table(runs[:3]),
        operate.runs_table([run for run in runs if run.failed][:2]),
        operate.queues_table(_readme_queues()),
        [operate.job_change(paused, "paused")],
        [operate.job_change(daily, "resumed")],
    ):
        # The whole output: the console block or the next command follows it.
        text = "\n" + "\n".join(block) + "\n"
        assert text + "```" in section or text + "$ " in section, block


def test_readme_documents_every_json_key():
    from pyramid_pyncette import operate

    section = _readme_section("Operating the scheduler")
    documented = section[section.index("Each job has these keys") : section.index("Times\nare")]
    keys = set(re.findall(r"`([a-z_]+)`", documented)) - {"null"}
    assert keys == set(operate.job_document(_readme_jobs()[0]))


def _documented_keys(section, start):
    paragraph = section[section.index(start) :]
    return set(re.findall(r"`([a-z_]+)`", paragraph[: paragraph.index("\n\n")])) - {"null"}


def test_readme_documents_every_json_key_of_runs_and_queues():
    from pyramid_pyncette import operate

    section = _readme_section("Operating the scheduler")
    run = operate.run_document(_readme_runs()[0])
    queue = operate.queue_document(_readme_queues()[0])
    assert _documented_keys(section, "Each run has these keys") == set(run)
    assert _documented_keys(section, "Each queue has these keys") == set(queue)


# --------------------------------------------------------------------------- --runs [ID]


def _command(*argv):
    from pyramid_pyncette.scripts.pscheduler import PSchedulerCommand

    return PSchedulerCommand(["pscheduler", *argv]).args


@pytest.mark.parametrize(
    ("argv", "runs", "config_uri", "config_vars"),
    [
        (["--runs", "app.ini"], True, "app.ini", []),
        (["--runs", "app.ini", "a=b", "c=d"], True, "app.ini", ["a=b", "c=d"]),
        (["--runs", "job-1", "app.ini"], "job-1", "app.ini", []),
        (["--runs", "job-1", "app.ini", "a=b"], "job-1", "app.ini", ["a=b"]),
        (["app.ini", "--runs", "job-1"], "job-1", "app.ini", []),
        (["--runs", "--failed", "app.ini"], True, "app.ini", []),
    ],
)
def test_runs_takes_an_optional_job_id_before_the_config_file(argv, runs, config_uri, config_vars):
    args = _command(*argv)
    assert (args.runs, args.config_uri, list(args.config_vars)) == (runs, config_uri, config_vars)


def test_runs_without_a_config_file_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        _command("--runs")
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "pscheduler: the following arguments are required: config_uri (see pscheduler --help)"
    ]
