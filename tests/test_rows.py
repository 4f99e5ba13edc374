"""The decoders the stores share: documents, times and run records as Redis and
DynamoDB keep them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette.jobs import DEFAULT_QUEUE, RunRecord
from pyramid_pyncette.repository.rows import (
    EPOCH,
    decode_job_fields,
    run_of_micros,
    time_of_micros,
    well_formed_document,
)
from tests.garbage import GOOD_VALUES, good_document

# --------------------------------------------------------------------------- times


def test_a_time_stored_as_microseconds_reads_back_as_that_utc_instant():
    when = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    count = (when - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    assert time_of_micros(count) == when
    assert time_of_micros(str(count)) == when
    assert time_of_micros(str(count)).tzinfo is timezone.utc
    assert time_of_micros(None) is None


@pytest.mark.parametrize(
    ("stored", "error"),
    [(True, TypeError), (1.5, TypeError), ([1], TypeError), ("1.5", ValueError), ("x", ValueError)],
)
def test_a_stored_time_that_is_not_a_whole_number_of_microseconds_is_refused(stored, error):
    with pytest.raises(error):
        time_of_micros(stored)


def test_a_stored_time_past_what_a_datetime_holds_is_refused():
    with pytest.raises(OverflowError):
        time_of_micros(10**20)


# --------------------------------------------------------------------------- documents


def test_a_well_formed_document_decodes_to_the_job_the_careful_decoder_reads():
    document = good_document()
    fast = well_formed_document("j", document, time_of_micros)
    careful = decode_job_fields(document, job_id="j", decode_time=time_of_micros)
    assert fast is not None
    assert careful.problem is None
    assert fast == careful
    assert fast.due_at == GOOD_VALUES["due_at"] and fast.queue == GOOD_VALUES["queue"]


def test_a_document_without_attempts_counts_none_as_the_careful_decoder_does():
    document = good_document()
    del document["attempts"]
    fast = well_formed_document("j", document, time_of_micros)
    assert fast is not None and fast.attempts == 0
    assert fast == decode_job_fields(document, job_id="j", decode_time=time_of_micros)


@pytest.mark.parametrize(
    "changes",
    [
        {"queue": "no queue name!"},
        {"queue": 5},
        {"job": "{not json"},
        {"job": "[1, 2]"},
        {"job": None},
        {"due_at": "soon"},
        {"last_run_at": 1.5},
        {"task": ""},
        {"attempts": -1},
    ],
    ids=repr,
)
def test_a_document_with_anything_wrong_is_left_to_the_careful_decoder(changes):
    document = good_document(**changes)
    assert well_formed_document("j", document, time_of_micros) is None
    careful = decode_job_fields(
        document, job_id="j", decode_time=time_of_micros, check_queue_name=True
    )
    assert careful.problem is not None


def test_a_document_takes_its_times_from_the_stores_own_decoder():
    def an_hour_late(value):
        return None if value is None else time_of_micros(value) + timedelta(hours=1)

    job = well_formed_document("j", good_document(), an_hour_late)
    assert job is not None
    assert job.due_at == GOOD_VALUES["due_at"] + timedelta(hours=1)
    assert job.created_at == GOOD_VALUES["created_at"] + timedelta(hours=1)


# --------------------------------------------------------------------------- queue names


def test_a_queue_that_is_no_queue_name_is_kept_unless_queue_names_are_checked():
    fields = {**GOOD_VALUES, "queue": "no queue name!"}
    job = decode_job_fields(fields)
    assert job.queue == "no queue name!"
    assert job.problem is None


def test_a_checked_queue_that_is_no_queue_name_moves_the_job_to_the_default_queue():
    fields = {**GOOD_VALUES, "queue": "no queue name!"}
    job = decode_job_fields(fields, check_queue_name=True)
    assert job.queue == DEFAULT_QUEUE
    assert job.problem is not None
    assert "queue is 'no queue name!' (str), not a queue name" in job.problem
    assert "cannot be run" in job.problem


def test_a_checked_queue_name_problem_gives_way_to_the_other_problems():
    fields = {**GOOD_VALUES, "queue": "no queue name!", "task": ""}
    alone = decode_job_fields({**GOOD_VALUES, "task": ""})
    job = decode_job_fields(fields, check_queue_name=True)
    assert job.queue == DEFAULT_QUEUE
    assert job.problem == alone.problem


def test_a_checked_queue_that_is_a_queue_name_stays():
    job = decode_job_fields(GOOD_VALUES, check_queue_name=True)
    assert job.queue == GOOD_VALUES["queue"]
    assert job.problem is None


# --------------------------------------------------------------------------- run records


def run_values(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "job_id": "j",
        "task": "record",
        "queue": "emails",
        "scheduled_at": 1_000_000,
        "started_at": 2_000_000,
        "finished_at": 3_500_000,
        "attempt": 2,
        "outcome": "failed",
        "error": "ValueError: x",
        "host": "h",
        "pid": 7,
        "worker": "w",
    }
    values.update(changes)
    return values


def test_a_run_record_reads_back_from_its_stored_microseconds():
    run = run_of_micros(run_values(), "r1")
    assert run == RunRecord(
        job_id="j",
        task="record",
        queue="emails",
        scheduled_at=EPOCH + timedelta(seconds=1),
        started_at=EPOCH + timedelta(seconds=2),
        finished_at=EPOCH + timedelta(seconds=3.5),
        attempt=2,
        outcome="failed",
        error="ValueError: x",
        host="h",
        pid=7,
        worker="w",
        id="r1",
    )


def test_a_run_record_without_the_optional_values_reads_back_with_their_defaults():
    values = run_values()
    for name in ("error", "host", "pid", "worker"):
        del values[name]
    run = run_of_micros(values, "r1")
    assert (run.error, run.host, run.pid, run.worker) == (None, "", 0, "")


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({k: v for k, v in run_values().items() if k != "outcome"}, KeyError),
        (run_values(started_at="2000000"), TypeError),
        (run_values(attempt="two"), ValueError),
        (run_values(finished_at=10**20), OverflowError),
    ],
    ids=["missing", "text-time", "attempt", "overflow"],
)
def test_stored_values_that_are_not_a_run_record_are_refused(values, error):
    with pytest.raises(error):
        run_of_micros(values, "r1")
