"""Showing jobs to operators (:mod:`pyramid_pyncette.operate`), without a store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "app/jobs.py", line 12, in send\n'
    "    raise RuntimeError('smtp refused')\n"
    "RuntimeError: smtp refused\n"
)


def _job(**fields):
    from pyramid_pyncette.jobs import Job

    values = {
        "id": "nightly",
        "task": "report",
        "schedule": {"kind": "interval", "microseconds": 30_000_000, "start": T0.isoformat()},
        "due_at": T0,
        "next_run_at": T0,
        "created_at": T0 - timedelta(days=1),
    }
    values.update(fields)
    return Job(**values)


def _operate():
    from pyramid_pyncette import operate

    return operate


# --------------------------------------------------------------------------- terminal text


def test_terminal_text_escapes_escape_sequences_and_line_breaks():
    text = _operate().terminal_text("a\x1b[2Jb\nc\rd\te\x9bf")
    assert text == "a\\x1b[2Jb\\x0ac\\x0dd\\x09e\\x9bf"


def test_terminal_text_escapes_bidirectional_overrides():
    assert _operate().terminal_text("abc\u202edef\u2066") == "abc\\u202edef\\u2066"


def test_multiline_terminal_text_keeps_newlines_and_tabs_only():
    text = _operate().terminal_text("one\n\ttwo\r\nthree\rfour\x1b]0;title\x07", multiline=True)
    assert text == "one\n\ttwo\nthree\\x0dfour\\x1b]0;title\\x07"


def test_terminal_text_of_a_value_that_cannot_be_shown_names_its_type():
    class Unprintable:
        def __str__(self):
            raise ValueError("no")

    assert _operate().terminal_text(Unprintable()) == "<unprintable Unprintable>"


# --------------------------------------------------------------------------- error headline


def test_error_headline_of_a_traceback_is_its_exception_line():
    assert _operate().error_headline(TRACEBACK) == "RuntimeError: smtp refused"


def test_error_headline_of_a_traceback_cut_from_the_front_is_its_exception_line():
    cut = "..." + TRACEBACK[40:]
    assert _operate().error_headline(cut) == "RuntimeError: smtp refused"


def test_error_headline_of_other_text_is_its_first_line():
    assert _operate().error_headline("\nlease lost before start\nmore") == "lease lost before start"


def test_error_headline_is_shortened_to_its_width():
    headline = _operate().error_headline("x" * 100, width=20)
    assert headline == "x" * 17 + "..."


def test_error_headline_escapes_control_characters_and_hides_credentials():
    error = "OperationalError: \x1b[31m postgresql://app:hunter2@db/jobs refused"
    headline = _operate().error_headline(error, width=200)
    assert headline == "OperationalError: \\x1b[31m postgresql://app:***@db/jobs refused"


@pytest.mark.parametrize("error", [None, "", "\n \n"])
def test_error_headline_of_no_error_is_a_dash(error):
    assert _operate().error_headline(error) == "-"


# --------------------------------------------------------------------------- --list


def test_jobs_table_has_a_header_and_one_aligned_line_per_job():
    operate = _operate()
    jobs = [_job(), _job(id="a-much-longer-id", task="t", queue="emails")]
    lines = operate.jobs_table(jobs)
    assert len(lines) == 3
    assert lines[0].startswith("ID                TASK    QUEUE    SCHEDULE")
    assert lines[0].endswith("LAST ERROR")
    assert lines[1].startswith("nightly           report  default  every 30s")
    assert lines[2].startswith("a-much-longer-id  t       emails   every 30s")
    assert lines[1].index("scheduled") == lines[0].index("STATE")


def test_jobs_table_without_jobs_says_so():
    assert _operate().jobs_table([]) == ["no jobs"]


def test_jobs_table_shows_the_headline_of_the_last_error():
    job = _job(due_at=None, attempts=3, last_status="failed", last_error=TRACEBACK)
    row = _operate().job_row(job)
    assert row[5:] == ("failed", "failed (attempt 3)", "RuntimeError: smtp refused")


def test_jobs_table_keeps_a_stored_newline_or_escape_on_its_line():
    job = _job(id="evil\n\x1b[31mred", task="t\r", last_error="bad\x1b[2J\nsecond line")
    lines = _operate().jobs_table([job])
    assert len(lines) == 2
    assert "\x1b" not in lines[1] and "\r" not in lines[1]
    assert lines[1].startswith("evil\\x0a\\x1b[31mred  t\\x0d  default")
    assert lines[1].endswith("bad\\x1b[2J")


def test_a_retrying_job_shows_its_retry_time_as_next_run():
    retry_at = T0 + timedelta(seconds=40)
    job = _job(attempts=2, due_at=retry_at, last_status="failed")
    row = _operate().job_row(job)
    assert row[4] == "2026-03-04 05:06:47 UTC"
    assert row[5] == "retrying"


# --------------------------------------------------------------------------- --show


def _details(job):
    lines = _operate().job_details(job)
    return lines, dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in lines)
        if not name.startswith(" ")
    )


def test_job_details_show_every_field():
    job = _job(
        args=[1, "two"],
        kwargs={"to": "ops@example.com"},
        options={"max_retries": 3},
        attempts=1,
        due_at=T0 + timedelta(seconds=10),
        last_run_at=T0 - timedelta(seconds=5),
        last_status="failed",
    )
    _, fields = _details(job)
    assert fields == {
        "id": "nightly",
        "task": "report",
        "queue": "default",
        "state": "retrying",
        "paused": "no",
        "schedule": f"every 30s from {T0.isoformat()}",
        "next run": "2026-03-04 05:06:17 UTC",
        "args": '[1, "two"]',
        "kwargs": '{"to": "ops@example.com"}',
        "options": '{"max_retries": 3}',
        "attempts": "1",
        "last run": "2026-03-04 05:06:02 UTC",
        "last status": "failed",
        "created at": "2026-03-03 05:06:07 UTC",
        "last error": "-",
    }


def test_job_details_show_the_last_error_in_full_with_escapes():
    error = TRACEBACK + "\x1b]0;pwned\x07 see postgresql://u:hunter2@db/x\n"
    lines, _ = _details(_job(due_at=None, last_status="failed", last_error=error))
    start = lines.index("last error:")
    assert lines[start + 1 :] == [
        "    Traceback (most recent call last):",
        '      File "app/jobs.py", line 12, in send',
        "        raise RuntimeError('smtp refused')",
        "    RuntimeError: smtp refused",
        "    \\x1b]0;pwned\\x07 see postgresql://u:***@db/x",
    ]


def test_job_details_name_the_lease_holder_only_while_running():
    _, running = _details(_job(locked_by="host-1:42:abc"))
    _, staged = _details(_job(locked_by="staged:xyz"))
    assert running["state"] == "running"
    assert running["lease holder"] == "host-1:42:abc"
    assert "lease holder" not in staged


def test_job_details_name_the_problem_of_an_unreadable_row():
    from pyramid_pyncette.repository.rows import UnreadableJSON

    job = _job(
        schedule=UnreadableJSON("{nope", ValueError("bad")),
        args=UnreadableJSON("[", ValueError("bad")),
        attempts="x",
        created_at="yesterday",
        problem="the stored job 'nightly' cannot be run: schedule is not valid JSON",
    )
    _, fields = _details(job)
    assert fields["problem"] == job.problem
    assert fields["schedule"].startswith("unreadable")
    assert fields["args"] == "\"<unreadable JSON '['>\""
    assert fields["created at"] == "'yesterday'"


# --------------------------------------------------------------------------- JSON


JSON_KEYS = {
    "id",
    "task",
    "queue",
    "state",
    "paused",
    "schedule",
    "schedule_description",
    "next_attempt_at",
    "next_run_at",
    "args",
    "kwargs",
    "options",
    "attempts",
    "last_run_at",
    "last_status",
    "last_error",
    "created_at",
    "lease_holder",
    "problem",
}


def test_job_document_has_the_documented_keys():
    assert set(_operate().job_document(_job())) == JSON_KEYS


def test_job_document_gives_times_in_iso_8601_utc():
    paris = timezone(timedelta(hours=1))
    job = _job(
        last_run_at=datetime(2026, 3, 4, 6, 0, tzinfo=paris),
        created_at=datetime(2026, 3, 1, 12, 0),  # naive times are UTC
        attempts=1,
        due_at=T0 + timedelta(seconds=10),
    )
    document = _operate().job_document(job)
    assert document["last_run_at"] == "2026-03-04T05:00:00+00:00"
    assert document["created_at"] == "2026-03-01T12:00:00+00:00"
    assert document["next_attempt_at"] == "2026-03-04T05:06:17+00:00"
    assert document["next_run_at"] == "2026-03-04T05:06:07+00:00"


def test_job_document_keeps_the_full_error_with_credentials_hidden():
    job = _job(due_at=None, last_error=TRACEBACK + "redis://:hunter2@cache/0\n")
    document = _operate().job_document(job)
    assert document["last_error"] == TRACEBACK + "redis://:***@cache/0\n"
    assert document["state"] == "failed"


def test_job_document_of_an_unreadable_row_is_still_json():
    from pyramid_pyncette.repository.rows import UnreadableJSON

    job = _job(kwargs=UnreadableJSON("{", ValueError("bad")), attempts="x", problem="bad row")
    operate = _operate()
    document = json.loads(operate.dump_json({"job": operate.job_document(job)}))["job"]
    assert document["kwargs"] == "<unreadable JSON '{'>"
    assert document["attempts"] is None
    assert document["problem"] == "bad row"


def test_dump_json_is_ascii_so_stored_escapes_cannot_reach_the_terminal():
    operate = _operate()
    job = _job(id="caf\u00e9\x1b[31m", last_error="\x9b2J")
    text = operate.dump_json(operate.jobs_document([job]))
    assert text.isascii()
    assert "\x1b" not in text
    assert json.loads(text)["jobs"][0]["id"] == "caf\u00e9\x1b[31m"


# --------------------------------------------------------------------------- queues and pauses


def _paused_job(**fields):
    return _job(options={"paused": True}, due_at=None, **fields)


def test_list_states_include_paused():
    assert _operate().JOB_STATES == ("scheduled", "running", "retrying", "failed", "paused")


def test_jobs_table_names_each_jobs_queue():
    operate = _operate()
    lines = operate.jobs_table([_job(queue="emails")])
    assert lines[0].split()[:4] == ["ID", "TASK", "QUEUE", "SCHEDULE"]
    assert lines[1].split()[:3] == ["nightly", "report", "emails"]
    assert lines[1][lines[0].index("QUEUE") :].startswith("emails ")


def test_jobs_table_shows_a_paused_job_as_paused_with_no_next_run():
    row = _operate().job_row(_paused_job())
    assert row[4:6] == ("-", "paused")


def test_job_details_show_the_queue_and_the_paused_state():
    _, paused = _details(_paused_job(queue="emails"))
    _, running = _details(_job(locked_by="host-1:42:abc"))
    assert (paused["queue"], paused["state"], paused["paused"]) == ("emails", "paused", "yes")
    assert (running["queue"], running["state"], running["paused"]) == ("default", "running", "no")


def test_job_details_say_when_the_jobs_queue_is_paused():
    lines = _operate().job_details(_job(queue="emails"), queue_paused=True)
    assert "queue:       emails (paused)" in lines
    assert "queue:       emails" in _operate().job_details(_job(queue="emails"))


def test_job_change_names_the_new_state_and_next_run():
    operate = _operate()
    assert operate.job_change(_paused_job(), "paused") == (
        "job 'nightly' paused: state paused, next run -"
    )
    assert operate.job_change(_job(), "resumed") == (
        "job 'nightly' resumed: state scheduled, next run 2026-03-04 05:06:07 UTC"
    )


def test_job_change_escapes_a_stored_escape_in_the_id():
    line = _operate().job_change(_job(id="x\x1b[2J"), "resumed")
    assert line.startswith("job 'x\\x1b[2J' resumed")
    assert "\x1b" not in line


def test_job_document_has_the_queue_and_the_paused_flag():
    operate = _operate()
    paused = operate.job_document(_paused_job(queue="emails"))
    scheduled = operate.job_document(_job())
    assert (paused["queue"], paused["state"], paused["paused"]) == ("emails", "paused", True)
    assert (scheduled["queue"], scheduled["paused"]) == ("default", False)


# --------------------------------------------------------------------------- runs


def _run(**fields):
    from pyramid_pyncette.jobs import RunRecord

    values = {
        "job_id": "nightly",
        "task": "report",
        "queue": "default",
        "scheduled_at": T0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=1, milliseconds=250),
        "attempt": 1,
        "outcome": "succeeded",
        "host": "web-1",
        "pid": 4242,
        "worker": "a1b2c3d4e5f6",
        "id": "0000000000000002",
    }
    values.update(fields)
    return RunRecord(**values)


RUN_KEYS = {
    "id",
    "job_id",
    "task",
    "queue",
    "scheduled_at",
    "started_at",
    "finished_at",
    "duration",
    "attempt",
    "outcome",
    "error",
    "host",
    "pid",
    "worker",
}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "0.250s"),
        (9.9994, "9.999s"),
        (12.34, "12.3s"),
        (245, "4m05s"),
        (7380, "2h03m"),
        (None, "-"),
        (-1, "-"),
    ],
)
def test_format_duration_is_short_and_readable(seconds, text):
    assert _operate().format_duration(seconds) == text


def test_runs_table_has_every_column_of_a_run():
    operate = _operate()
    failed = _run(
        id="0000000000000003",
        attempt=2,
        outcome="failed",
        finished_at=T0 + timedelta(seconds=13),
        error=TRACEBACK,
    )
    lines = operate.runs_table([failed, _run()])
    assert lines[0].split() == [
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
    assert operate.run_row(failed) == (
        "2026-03-04 05:06:08 UTC",
        "nightly",
        "report",
        "default",
        "2",
        "failed",
        "12.0s",
        "web-1:4242",
        "RuntimeError: smtp refused",
    )
    assert lines[1].endswith("web-1:4242  RuntimeError: smtp refused")
    assert lines[2].endswith("web-1:4242  -")
    assert lines[2].index("succeeded") == lines[0].index("OUTCOME")


def test_runs_table_without_runs_says_so():
    assert _operate().runs_table([]) == ["no runs"]


def test_runs_table_keeps_stored_escapes_on_their_line():
    run = _run(job_id="evil\n\x1b[31m", error="bad\x1b]0;x\x07\nmore", host="h\r")
    lines = _operate().runs_table([run])
    assert len(lines) == 2
    assert "\x1b" not in lines[1] and "\r" not in lines[1]
    assert "evil\\x0a\\x1b[31m" in lines[1]
    assert lines[1].endswith("h\\x0d:4242  bad\\x1b]0;x\\x07")


def test_run_document_has_the_documented_keys_and_iso_times():
    run = _run(outcome="lease_lost", error="lost to redis://:hunter2@cache/0")
    document = _operate().run_document(run)
    assert set(document) == RUN_KEYS
    assert document["started_at"] == "2026-03-04T05:06:08+00:00"
    assert document["finished_at"] == "2026-03-04T05:06:08.250000+00:00"
    assert document["duration"] == 0.25
    assert document["error"] == "lost to redis://:***@cache/0"
    assert (document["host"], document["pid"], document["worker"]) == (
        "web-1",
        4242,
        "a1b2c3d4e5f6",
    )


def test_runs_document_is_ascii_json_newest_first():
    operate = _operate()
    runs = [_run(id="2", job_id="caf\u00e9\x1b"), _run(id="1")]
    text = operate.dump_json(operate.runs_document(runs))
    assert text.isascii()
    assert [run["id"] for run in json.loads(text)["runs"]] == ["2", "1"]
    assert json.loads(text)["runs"][0]["job_id"] == "caf\u00e9\x1b"


def test_job_details_list_the_given_runs_as_a_table_before_the_last_error():
    operate = _operate()
    runs = [_run(outcome="failed", error="boom"), _run()]
    lines = operate.job_details(_job(last_error="boom"), runs=runs)
    start = lines.index("runs (last 2, newest first):")
    assert lines[start + 1 :] == [
        "    WHEN                     ATTEMPT  OUTCOME    DURATION  DAEMON      ERROR",
        "    2026-03-04 05:06:08 UTC  1        failed     0.250s    web-1:4242  boom",
        "    2026-03-04 05:06:08 UTC  1        succeeded  0.250s    web-1:4242  -",
        "last error:",
        "    boom",
    ]


def test_job_details_without_runs_say_so():
    lines = _operate().job_details(_job(), runs=[])
    assert lines[-2:] == ["runs:        -", "last error:  -"]


def test_error_headline_of_a_run_error_is_its_exception_line_before_the_traceback():
    error = "RuntimeError: smtp refused\n" + TRACEBACK
    assert _operate().error_headline(error) == "RuntimeError: smtp refused"


# --------------------------------------------------------------------------- queues


def _queue(name, paused=False, due=0, running=0, jobs=None, oldest_due_at=None):
    from pyramid_pyncette.jobs import QueueInfo

    return QueueInfo(
        name=name,
        paused=paused,
        due=due,
        running=running,
        jobs=jobs or {},
        oldest_due_at=oldest_due_at,
    )


def _counts(scheduled=0, running=0, retrying=0, failed=0, paused=0):
    return {
        "scheduled": scheduled,
        "running": running,
        "retrying": retrying,
        "failed": failed,
        "paused": paused,
    }


def test_queues_table_has_a_line_per_queue_with_its_jobs_by_state():
    late = datetime(2026, 5, 4, 9, 30, tzinfo=timezone.utc)
    default = _queue("default", due=12, running=3, jobs=_counts(40, 3, 2, 1), oldest_due_at=late)
    emails = _queue("emails", True, jobs=_counts(paused=5))
    lines = _operate().queues_table([default, emails])
    assert lines == [
        "NAME     PAUSED  DUE  RUNNING  SCHEDULED  RETRYING  FAILED  PAUSED JOBS  FIRST DUE",
        "default  no      12   3        40         2         1       0            "
        "2026-05-04 09:30:00 UTC",
        "emails   yes     0    0        0          0         0       5            -",
    ]


def test_queues_table_shows_counts_it_was_not_given_as_a_dash():
    lines = _operate().queues_table([_queue("default", due=1)])
    assert lines[1].split() == ["default", "no", "1", "0", "-", "-", "-", "-", "-"]


def test_queues_table_without_queues_says_so():
    assert _operate().queues_table([]) == ["no queues"]


def test_queues_document_gives_every_count():
    operate = _operate()
    late = datetime(2026, 5, 4, 9, 30, tzinfo=timezone.utc)
    queue = _queue("emails", True, 4, 1, jobs=_counts(4, 1, failed=2), oldest_due_at=late)
    document = json.loads(operate.dump_json(operate.queues_document([queue])))
    assert document == {
        "queues": [
            {
                "name": "emails",
                "paused": True,
                "due": 4,
                "running": 1,
                "jobs": {"scheduled": 4, "running": 1, "retrying": 0, "failed": 2, "paused": 0},
                "oldest_due_at": "2026-05-04T09:30:00+00:00",
            }
        ]
    }
