"""The run policy on plain jobs: what claiming, finishing, failing and misfiring write.

No store is involved: each test builds a Job, asks the policy for its plan,
and checks the exact plan.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette.jobs import (
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    Job,
    Lease,
    Outcome,
    RetryDefaults,
)
from pyramid_pyncette.schedules import DateSchedule, IntervalSchedule

UTC = timezone.utc
NOON = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TOKEN = "daemon-1"
DEFAULT_LEASE = 60.0


def _policy():
    from pyramid_pyncette import policy

    return policy


def one_off(**changes) -> Job:
    job = Job(
        id="once",
        task="tasks:send",
        schedule=DateSchedule(NOON).to_json(),
        due_at=NOON,
        next_run_at=NOON,
    )
    return job.replace(**changes)


def every_minute(**changes) -> Job:
    job = Job(
        id="tick",
        task="tasks:tick",
        schedule=IntervalSchedule(timedelta(minutes=1), start_date=NOON).to_json(),
        due_at=NOON,
        next_run_at=NOON,
    )
    return job.replace(**changes)


def claimed(job: Job, now: datetime = NOON) -> Lease:
    """The lease an at-least-once claim of ``job`` at ``now`` gives."""
    return _policy().plan_claim(job, now, TOKEN, DEFAULT_LEASE).lease


def outcome(lease: Lease, succeeded: bool, at: datetime, **extra) -> Outcome:
    return Outcome(
        lease, succeeded=succeeded, finished_at=at, error=extra.pop("error", None), **extra
    )


# --------------------------------------------------------------------------- claims


def test_claiming_a_job_leases_it_for_the_default_lease_and_counts_the_attempt():
    now = NOON + timedelta(seconds=3)
    plan = _policy().plan_claim(one_off(), now, TOKEN, DEFAULT_LEASE)
    assert plan.action == "lease"
    assert plan.job.locked_by == TOKEN
    assert plan.job.due_at == now + timedelta(seconds=60)
    assert plan.job.next_run_at == NOON
    assert plan.job.attempts == 1
    assert plan.lease == Lease(job=plan.job, scheduled_at=NOON, token=TOKEN)
    assert plan.lease.runnable


def test_claiming_a_job_with_its_own_lease_duration_leases_it_that_long():
    plan = _policy().plan_claim(one_off(options={"lease_duration": 5.0}), NOON, TOKEN, 60.0)
    assert plan.job.due_at == NOON + timedelta(seconds=5)


def test_claiming_an_at_most_once_one_off_job_deletes_it_before_it_runs():
    job = one_off(options={"execution_mode": "at_most_once"})
    plan = _policy().plan_claim(job, NOON, TOKEN, DEFAULT_LEASE)
    assert plan.action == "delete"
    assert plan.lease.token is None
    assert plan.lease.job.attempts == 1
    assert plan.lease.runnable


def test_claiming_an_at_most_once_recurring_job_moves_it_to_its_next_run_unlocked():
    job = every_minute(options={"execution_mode": "at_most_once"})
    now = NOON + timedelta(seconds=90)
    plan = _policy().plan_claim(job, now, TOKEN, DEFAULT_LEASE)
    assert plan.action == "advance"
    assert (plan.job.due_at, plan.job.next_run_at) == (NOON + timedelta(minutes=2),) * 2
    assert plan.job.locked_by is None
    assert plan.job.attempts == 0
    assert plan.lease.token is None
    assert plan.lease.scheduled_at == NOON


def test_a_one_off_run_claimed_later_than_its_grace_time_misfires_and_is_deleted():
    job = one_off(options={"misfire_grace_time": 10.0})
    plan = _policy().plan_claim(job, NOON + timedelta(seconds=25), TOKEN, DEFAULT_LEASE)
    assert plan.action == "delete"
    assert plan.lease.skipped
    assert plan.lease.lateness == 25.0
    assert plan.lease.token is None
    assert not plan.lease.runnable


def test_a_recurring_run_claimed_later_than_its_grace_time_misfires_and_moves_on():
    job = every_minute(options={"misfire_grace_time": 10.0})
    plan = _policy().plan_claim(job, NOON + timedelta(seconds=25), TOKEN, DEFAULT_LEASE)
    assert plan.action == "advance"
    assert plan.job.due_at == NOON + timedelta(minutes=1)
    assert plan.lease.skipped
    assert plan.lease.lateness == 25.0


def test_a_run_claimed_within_its_grace_time_is_leased():
    job = one_off(options={"misfire_grace_time": 10.0})
    plan = _policy().plan_claim(job, NOON + timedelta(seconds=10), TOKEN, DEFAULT_LEASE)
    assert plan.action == "lease"
    assert not plan.lease.skipped


def test_a_retry_never_misfires_however_late_it_is_claimed():
    job = one_off(options={"misfire_grace_time": 10.0}, attempts=1)
    plan = _policy().plan_claim(job, NOON + timedelta(hours=1), TOKEN, DEFAULT_LEASE)
    assert plan.action == "lease"
    assert plan.job.attempts == 2


def test_a_job_with_an_unreadable_option_is_leased_skipped_with_the_problem():
    job = one_off(options={"failure_mode": "explode"})
    plan = _policy().plan_claim(job, NOON, TOKEN, DEFAULT_LEASE)
    assert plan.action == "lease"
    assert plan.lease.skipped
    assert plan.job.problem == (
        "the stored job 'once' cannot be run: option failure_mode is 'explode'; add it again "
        "with the same job_id to replace it, or cancel it"
    )


def test_a_checked_claim_trusts_the_decoders_verdict():
    job = one_off(options={"failure_mode": "explode"})
    plan = _policy().plan_claim(job, NOON, TOKEN, DEFAULT_LEASE, checked=True)
    assert plan.action == "lease"
    assert not plan.lease.skipped


# --------------------------------------------------------------------------- completions


def test_a_finished_one_off_run_deletes_its_job_under_its_lease():
    lease = claimed(one_off())
    plan = _policy().plan_completion(outcome(lease, True, NOON + timedelta(seconds=1)))
    assert (plan.action, plan.job_id, plan.token, plan.values) == ("delete", "once", TOKEN, {})


def test_a_finished_recurring_run_moves_its_job_to_the_next_run():
    lease = claimed(every_minute())
    done = NOON + timedelta(seconds=5)
    plan = _policy().plan_completion(outcome(lease, True, done))
    assert plan.action == "settle"
    assert plan.token == TOKEN
    assert plan.values == {
        "due_at": NOON + timedelta(minutes=1),
        "next_run_at": NOON + timedelta(minutes=1),
        "attempts": 0,
        "last_run_at": done,
        "last_status": STATUS_SUCCEEDED,
        "last_error": None,
    }


def test_a_failed_run_is_retried_after_the_backoff_of_its_attempt():
    policy = _policy()
    lease = claimed(one_off())
    done = NOON + timedelta(seconds=2)
    plan = policy.plan_completion(outcome(lease, False, done, error="boom"))
    assert plan.action == "settle"
    assert plan.values == {
        "due_at": done + policy.retry_delay("once", 1, 10.0, 3600.0),
        "next_run_at": NOON,
        "attempts": 1,
        "last_run_at": done,
        "last_status": STATUS_FAILED,
        "last_error": "boom",
    }


def test_a_failed_run_follows_the_daemons_retry_defaults_when_the_job_sets_none():
    policy = _policy()
    lease = claimed(one_off())
    defaults = RetryDefaults(max_retries=2, retry_backoff=1.0, retry_backoff_max=4.0)
    plan = policy.plan_completion(outcome(lease, False, NOON, retry_defaults=defaults))
    assert plan.values["due_at"] == NOON + policy.retry_delay("once", 1, 1.0, 4.0)


def test_a_one_off_job_whose_last_retry_failed_is_parked():
    lease = claimed(one_off(options={"max_retries": 2}, attempts=2))
    assert lease.attempt == 3
    plan = _policy().plan_completion(outcome(lease, False, NOON, error="boom"))
    assert plan.action == "settle"
    assert (plan.values["due_at"], plan.values["next_run_at"]) == (None, None)
    assert plan.values["attempts"] == 3


def test_a_recurring_job_whose_last_retry_failed_moves_to_its_next_run():
    lease = claimed(every_minute(options={"max_retries": 0}))
    plan = _policy().plan_completion(outcome(lease, False, NOON + timedelta(seconds=1)))
    assert plan.values["due_at"] == NOON + timedelta(minutes=1)
    assert plan.values["attempts"] == 0
    assert plan.values["last_status"] == STATUS_FAILED


def test_a_recurring_job_that_parks_when_retries_run_out_is_parked():
    job = every_minute(options={"max_retries": 0, "retry_exhausted": "park"})
    plan = _policy().plan_completion(outcome(claimed(job), False, NOON))
    assert (plan.values["due_at"], plan.values["next_run_at"]) == (None, None)


def test_failure_mode_unlock_makes_the_run_due_again_at_once():
    lease = claimed(one_off(options={"failure_mode": "unlock"}, attempts=7))
    done = NOON + timedelta(seconds=4)
    plan = _policy().plan_completion(outcome(lease, False, done))
    assert plan.action == "settle"
    assert (plan.values["due_at"], plan.values["next_run_at"]) == (done, NOON)
    assert plan.values["attempts"] == 8


def test_failure_mode_commit_counts_a_failed_one_off_run_as_done():
    lease = claimed(one_off(options={"failure_mode": "commit"}))
    plan = _policy().plan_completion(outcome(lease, False, NOON))
    assert (plan.action, plan.token) == ("delete", TOKEN)


def test_failure_mode_none_keeps_the_lease_and_only_notes_the_failure():
    lease = claimed(one_off(options={"failure_mode": "none"}))
    plan = _policy().plan_completion(outcome(lease, False, NOON, error="boom"))
    assert plan.action == "note"
    assert plan.values == {"last_run_at": NOON, "last_status": STATUS_FAILED, "last_error": "boom"}


def test_an_at_most_once_run_only_notes_its_status_by_id():
    job = every_minute(options={"execution_mode": "at_most_once"})
    lease = _policy().plan_claim(job, NOON, TOKEN, DEFAULT_LEASE).lease
    plan = _policy().plan_completion(outcome(lease, False, NOON))
    assert (plan.action, plan.token) == ("note", None)


def test_a_permanent_failure_parks_the_job_without_retries():
    lease = claimed(one_off())
    plan = _policy().plan_completion(outcome(lease, False, NOON, error="gone", permanent=True))
    assert plan.action == "settle"
    assert (plan.values["due_at"], plan.values["attempts"]) == (None, 1)


def test_a_long_error_is_stored_with_its_end_kept():
    lease = claimed(one_off(options={"failure_mode": "none"}))
    plan = _policy().plan_completion(outcome(lease, False, NOON, error="x" * 5000 + "END"))
    assert len(plan.values["last_error"]) == 4000
    assert plan.values["last_error"].startswith("...")
    assert plan.values["last_error"].endswith("END")


def test_split_finished_separates_finished_one_off_runs_from_the_rest():
    done = outcome(claimed(one_off()), True, NOON)
    recurring = outcome(claimed(every_minute()), True, NOON)
    failed = outcome(claimed(one_off(id="other")), False, NOON)
    finished, others = _policy().split_finished([done, recurring, failed])
    assert [(plan.action, item) for plan, item in finished] == [("delete", done)]
    assert others == [recurring, failed]


# --------------------------------------------------------------------------- describing


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        pytest.param(one_off(), ("attempt 1 of 6", "retrying at 12:00:"), id="retry"),
        pytest.param(
            one_off(options={"max_retries": 0}),
            ("attempt 1 of 1", "parked as failed (see retry_job)"),
            id="parked",
        ),
        pytest.param(
            one_off(options={"failure_mode": "none"}),
            ("attempt 1", "retrying once its lease expires (failure_mode='none')"),
            id="keep-lease",
        ),
        pytest.param(
            one_off(options={"failure_mode": "unlock"}),
            ("attempt 1", "retrying at the next poll (failure_mode='unlock')"),
            id="unlock",
        ),
        pytest.param(
            one_off(options={"failure_mode": "commit"}),
            ("attempt 1", "counted as done and deleted (failure_mode='commit')"),
            id="commit",
        ),
        pytest.param(
            every_minute(options={"max_retries": 0}),
            ("attempt 1 of 1", "moved to its next run at 12:01:00 UTC"),
            id="next-run",
        ),
    ],
)
def test_describe_failure_says_the_attempt_and_the_next_step(job, expected):
    policy = _policy()
    failed = outcome(claimed(job), False, NOON)
    attempt, step = policy.describe_failure(failed, policy.plan_completion(failed))
    assert attempt == expected[0]
    assert step.startswith(expected[1])


def test_describe_failure_names_the_exact_retry_time():
    policy = _policy()
    failed = outcome(claimed(one_off()), False, NOON)
    due = NOON + policy.retry_delay("once", 1, 10.0, 3600.0)
    assert policy.describe_failure(failed, policy.plan_completion(failed)) == (
        "attempt 1 of 6",
        f"retrying at {due.strftime('%H:%M:%S')} UTC",
    )


def test_describe_failure_of_an_at_most_once_run_says_it_is_not_retried():
    policy = _policy()
    job = one_off(options={"execution_mode": "at_most_once"})
    failed = outcome(policy.plan_claim(job, NOON, TOKEN, DEFAULT_LEASE).lease, False, NOON)
    assert policy.describe_failure(failed, policy.plan_completion(failed)) == (
        "attempt 1",
        "not retried: it is at-most-once (execution_mode='at_most_once')",
    )


# --------------------------------------------------------------------------- retry delay


def test_retry_delay_doubles_per_attempt_between_half_and_all_of_its_ceiling():
    policy = _policy()
    for attempt, ceiling in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)]:
        delay = policy.retry_delay("job", attempt, 10.0, 3600.0).total_seconds()
        assert ceiling / 2 <= delay <= ceiling


def test_retry_delay_never_exceeds_the_maximum():
    delay = _policy().retry_delay("job", 40, 10.0, 30.0).total_seconds()
    assert 15.0 <= delay <= 30.0
