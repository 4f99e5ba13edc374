"""The SQL stores' side of queues, paused queues and the run history.

Run against real servers (SQLite, PostgreSQL, MariaDB): queue-restricted and
paused-queue claims, the run records written with the completion, their
listing and pruning, queue counts, the upgrade of a table made by an older
version, and garbage in the ``queue`` column.
"""

from __future__ import annotations

from pyramid_pyncette.jobs import DEFAULT_QUEUE
from pyramid_pyncette.repository.rows import decode_job_fields, well_formed_job

from .test_fuzz import GOOD_VALUES

# --------------------------------------------------------------------------- decoding


def test_a_row_without_a_queue_is_in_the_default_queue():
    assert decode_job_fields(dict(GOOD_VALUES)).queue == DEFAULT_QUEUE
    assert well_formed_job(*GOOD_VALUES.values()).queue == DEFAULT_QUEUE


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
