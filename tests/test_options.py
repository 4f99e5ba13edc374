"""Job options: one typed object, parsed strictly at add time and leniently at read time."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pyramid_pyncette.exceptions import InvalidJobError
from pyramid_pyncette.jobs import Job
from pyramid_pyncette.options import (
    JOB_OPTIONS,
    NO_OPTIONS,
    ExecutionMode,
    FailureMode,
    JobOptions,
    RetryExhausted,
    options_from_arguments,
    options_from_json,
)


def test_given_options_become_typed_values():
    options = options_from_arguments(
        {
            "execution_mode": "at_most_once",
            "lease_duration": "1m30s",
            "misfire_grace_time": timedelta(seconds=5),
            "max_retries": 3,
            "retry_exhausted": "park",
        },
        where="add_date_job",
    )
    assert options == JobOptions(
        execution_mode=ExecutionMode.AT_MOST_ONCE,
        lease_duration=90.0,
        misfire_grace_time=5.0,
        max_retries=3,
        retry_exhausted=RetryExhausted.PARK,
    )


def test_options_are_stored_as_the_same_plain_json_as_before():
    options = options_from_arguments(
        {"failure_mode": FailureMode.UNLOCK, "retry_backoff": "2s", "max_retries": None},
        where="add_date_job",
    )
    stored = options.to_json()
    assert stored == {"failure_mode": "unlock", "retry_backoff": 2.0}
    assert json.dumps(stored) == '{"failure_mode": "unlock", "retry_backoff": 2.0}'
    assert type(stored["failure_mode"]) is str


def test_no_options_parse_to_the_shared_empty_options():
    assert options_from_arguments({}, where="add_date_job") is NO_OPTIONS
    assert options_from_json({}) == (NO_OPTIONS, None)
    assert NO_OPTIONS.to_json() == {}


def test_option_names_are_listed_in_one_order():
    assert JOB_OPTIONS == (
        "execution_mode",
        "failure_mode",
        "lease_duration",
        "max_retries",
        "retry_backoff",
        "retry_backoff_max",
        "retry_exhausted",
        "misfire_grace_time",
    )


def test_option_enums_compare_and_format_as_their_strings():
    assert ExecutionMode.AT_MOST_ONCE == "at_most_once"
    assert f"{FailureMode.COMMIT}" == "commit"
    assert str(RetryExhausted.ADVANCE) == "advance"
    assert json.dumps([ExecutionMode.AT_LEAST_ONCE]) == '["at_least_once"]'


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param(
            {"execution_mode": "sometimes"},
            "add_cron_job: execution_mode 'sometimes' is not one of at_least_once, at_most_once",
            id="execution-mode",
        ),
        pytest.param(
            {"max_retries": 1001},
            "add_cron_job: max_retries must be a whole number from 0 to 1000, got 1001; "
            "e.g. max_retries=3",
            id="max-retries",
        ),
        pytest.param(
            {"lease_duration": "11000d"},
            "add_cron_job: lease_duration of 9.504e+08s is too long; use a duration above 0 "
            "and at most ten years (315360000s)",
            id="too-long",
        ),
        pytest.param(
            {"lease_time": 5},
            "add_cron_job: unknown option 'lease_time' (did you mean 'lease_duration'?); "
            "allowed options are execution_mode, failure_mode, lease_duration, max_retries, "
            "retry_backoff, retry_backoff_max, retry_exhausted, misfire_grace_time",
            id="unknown",
        ),
    ],
)
def test_a_bad_given_option_raises_naming_the_caller_and_the_fix(given, message):
    with pytest.raises(InvalidJobError) as info:
        options_from_arguments(given, where="add_cron_job")
    assert str(info.value) == message


def test_extra_option_names_are_allowed_and_left_to_the_caller():
    options = options_from_arguments(
        {"timezone": "Europe/Paris", "max_retries": 1}, where="task 'x'", extra=("timezone",)
    )
    assert options == JobOptions(max_retries=1)


def test_stored_options_are_read_into_typed_values():
    stored = {"execution_mode": "at_most_once", "lease_duration": 30, "retry_exhausted": "park"}
    assert options_from_json(stored) == (
        JobOptions(
            execution_mode=ExecutionMode.AT_MOST_ONCE,
            lease_duration=30.0,
            retry_exhausted=RetryExhausted.PARK,
        ),
        None,
    )


def test_stored_options_round_trip():
    options = JobOptions(failure_mode=FailureMode.NONE, max_retries=0, retry_backoff_max=60.0)
    assert options_from_json(json.loads(json.dumps(options.to_json()))) == (options, None)


def test_an_unreadable_stored_option_is_unset_and_described():
    stored = {"max_retries": -1, "failure_mode": "unlock", "lease_duration": True}
    assert options_from_json(stored) == (
        JobOptions(failure_mode=FailureMode.UNLOCK),
        "option max_retries is -1, not a whole number >= 0",
    )


def test_stored_options_this_version_does_not_know_are_ignored():
    assert options_from_json({"priority": 3, "max_retries": 2}) == (JobOptions(max_retries=2), None)


def test_a_job_reads_its_options_once_and_again_after_they_change():
    job = Job(id="j", task="t", schedule={}, options={"failure_mode": "commit"})
    assert job.parsed_options is job.parsed_options
    assert job.failure_mode is FailureMode.COMMIT
    changed = job.replace(options={"max_retries": 4})
    assert changed.parsed_options == JobOptions(max_retries=4)
    assert changed.failure_mode is FailureMode.NONE
    assert job.replace(attempts=1).parsed_options is job.parsed_options


def test_a_job_that_sets_no_options_gets_the_defaults():
    job = Job(id="j", task="t", schedule={})
    assert job.execution_mode is ExecutionMode.AT_LEAST_ONCE
    assert job.failure_mode is FailureMode.NONE
    assert job.retry_exhausted is RetryExhausted.ADVANCE
    assert (job.lease_duration, job.max_retries, job.misfire_grace_time) == (None, None, None)
