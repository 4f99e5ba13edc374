"""The run policy: what happens to a job when it is claimed, succeeds, fails or misfires.

Pure functions of a :class:`~pyramid_pyncette.jobs.Job` (or an
:class:`~pyramid_pyncette.jobs.Outcome`) and a time, testable without any
store. :func:`plan_claim` decides what claiming a due job writes (lease it,
advance it, delete it, or park a job that cannot run), :func:`plan_completion`
what finishing a run writes (delete a finished one-off job, move a recurring
one on, retry after a backoff, keep the lease, unlock, park); every store
applies these plans in as few statements as it can, so all stores behave
alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .jobs import STATUS_FAILED, STATUS_SUCCEEDED, Job, Lease, Outcome
from .options import ExecutionMode, FailureMode, RetryExhausted
from .repository.rows import job_problem, problem_text, truncate_error
from .schedules import ScheduleError, schedule_from_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimPlan:
    """What a claim does to one due row.

    ``action`` is ``'lease'`` (at-least-once: lock it until ``due_at``),
    ``'advance'`` (at-most-once recurring, or a misfired recurring run: move
    it to its next run, unlocked; a paused job: unlocked without a due
    time, its lease marked ``paused`` and never run) or ``'delete'`` (at-most-once one-off, or a
    misfired one-off run: remove it before it runs).
    """

    action: str
    job: Job
    lease: Lease


@dataclass(frozen=True)
class CompletionPlan:
    """What completing one run does to its row.

    ``action`` is ``'delete'`` (a finished one-off job), ``'settle'`` (write
    ``values`` and release the lock), or ``'note'`` (only record the last
    status, keeping any lease). ``token`` guards every write: ``None`` means
    the row is addressed by id alone (at-most-once runs hold no lease).
    """

    action: str
    job_id: str
    token: str | None
    values: dict[str, Any]


# --------------------------------------------------------------------------- retries


def retry_delay(job_id: str, attempt: int, backoff: float, backoff_max: float) -> timedelta:
    """The pause before retrying ``attempt`` (the failed try: 1 for the first).

    Exponential backoff, ``ceiling = min(backoff * 2 ** (attempt - 1),
    backoff_max)``, jittered to between ``ceiling / 2`` and ``ceiling``. The
    jitter is derived from a hash of
    ``(job_id, attempt)`` rather than a random generator, so every daemon and
    every store computes the same delay (and tests can predict it), while
    jobs that fail together still spread their retries.
    """
    exponent = min(max(attempt - 1, 0), 64)
    ceiling = min(backoff * 2.0**exponent, backoff_max)
    key = f"{job_id}\0{attempt}".encode("utf-8", "surrogatepass")
    fraction = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return timedelta(seconds=ceiling / 2 + fraction * ceiling / 2)


# --------------------------------------------------------------------------- claims


def plan_claim(
    job: Job, now: datetime, token: str, default_lease: float, checked: bool = False
) -> ClaimPlan:
    """Decide what claiming the due ``job`` at ``now`` writes. Never raises.

    A job that cannot be run as stored (see :func:`job_problem`) is leased
    like any other, with a skipped lease carrying the problem: the worker
    parks it as failed instead of running it. ``checked`` says the job was
    just decoded by :func:`~pyramid_pyncette.repository.rows.decode_job_fields` or
    :func:`~pyramid_pyncette.repository.rows.well_formed_job`,
    which already did that check (``job.problem`` holds its verdict).
    """
    try:
        if job.paused:
            return _hold_paused(job, now)
        problem = job.problem if checked else job_problem(job)
        if problem is None:
            return _plan_claim(job, now, token, default_lease)
    except Exception as exc:
        problem = problem_text(job.id, [f"it cannot be claimed ({type(exc).__name__}: {exc})"])
    return _unrunnable_claim(job, now, token, default_lease, problem)


def claimed_at(due: object, now: datetime, until: datetime | None) -> datetime:
    """The time a job due at ``due`` is claimed at by a claim at ``now`` that takes the
    jobs due by ``until`` (a claim ahead): its due time when that is between the two
    (it is started then), else ``now``."""
    if until is None or not isinstance(due, datetime) or due <= now:
        return now
    return min(due, until)


def _plan_claim(job: Job, now: datetime, token: str, default_lease: float) -> ClaimPlan:
    scheduled_at = job.next_run_at or job.due_at or now
    if job.options:
        grace, mode, seconds = job.misfire_grace_time, job.execution_mode, job.lease_duration
    else:  # the common case, without reading each option
        grace, mode, seconds = None, ExecutionMode.AT_LEAST_ONCE, None
    if grace is not None and job.attempts == 0:
        # Only a run's first try can misfire: a retry, or a run whose lease
        # expired, already started and is seen through.
        lateness = (now - scheduled_at).total_seconds()
        if lateness > grace:
            return _misfire_claim(job, now, token, default_lease, scheduled_at, lateness)
    attempts = job.attempts + 1
    if mode is ExecutionMode.AT_MOST_ONCE:
        claimed = job.replace(attempts=attempts, locked_by=None)
        lease = Lease(job=claimed, scheduled_at=scheduled_at, token=None, due_at=job.due_at)
        return _move_past(job, claimed, lease, now, token, default_lease)
    leased = job.replace(
        locked_by=token,
        due_at=now + timedelta(seconds=seconds or default_lease),
        next_run_at=scheduled_at,
        attempts=attempts,
    )
    lease = Lease(job=leased, scheduled_at=scheduled_at, token=token, due_at=job.due_at)
    return ClaimPlan("lease", leased, lease)


def _hold_paused(job: Job, now: datetime) -> ClaimPlan:
    """Take a paused job off the schedule instead of running it.

    A job paused while a run of it was in progress is due again once that
    run completes (or its lease expires); its claim unlocks it and clears its
    due time, keeping its next run time and attempts for
    :meth:`~pyramid_pyncette.scheduler.Scheduler.resume_job`.
    """
    scheduled_at = next((t for t in (job.next_run_at, job.due_at) if isinstance(t, datetime)), now)
    held = job.replace(due_at=None, locked_by=None, next_run_at=scheduled_at)
    return ClaimPlan(
        "advance", held, Lease(job=held, scheduled_at=scheduled_at, token=None, paused=True)
    )


def _misfire_claim(
    job: Job,
    now: datetime,
    token: str,
    default_lease: float,
    scheduled_at: datetime,
    lateness: float,
) -> ClaimPlan:
    """Skip a run claimed too late: delete a one-off job, advance a recurring one."""
    lease = Lease(job=job, scheduled_at=scheduled_at, token=None, skipped=True, lateness=lateness)
    return _move_past(job, job, lease, now, token, default_lease)


def _move_past(
    job: Job, run: Job, lease: Lease, now: datetime, token: str, default_lease: float
) -> ClaimPlan:
    """Take the run ``lease`` describes off the schedule before it runs (or instead).

    A one-off job is deleted; a recurring one moves, unlocked, to its first
    run after ``now``. ``run`` is the row as the plan leaves it, ``job`` as it
    was stored (an unreadable schedule parks that).
    """
    if not job.recurring:
        return ClaimPlan("delete", run, lease)
    try:
        following = schedule_from_json(job.schedule).next_run(lease.scheduled_at, now)
    except ScheduleError as exc:
        problem = problem_text(job.id, [f"schedule is unreadable ({exc})"])
        return _unrunnable_claim(job, now, token, default_lease, problem)
    if following is None:
        return ClaimPlan("delete", run, lease)
    advanced = run.replace(due_at=following, next_run_at=following, attempts=0, locked_by=None)
    return ClaimPlan("advance", advanced, lease)


def _unrunnable_claim(
    job: Job, now: datetime, token: str, default_lease: float, problem: str | None
) -> ClaimPlan:
    """Lease a job that cannot run (as any at-least-once claim would), flagged with ``problem``."""
    scheduled_at = next((t for t in (job.next_run_at, job.due_at) if isinstance(t, datetime)), now)
    attempts = job.attempts if isinstance(job.attempts, int) else 0
    leased = job.replace(
        locked_by=token,
        due_at=now + timedelta(seconds=default_lease),
        next_run_at=scheduled_at,
        attempts=max(attempts, 0) + 1,
        problem=problem or problem_text(job.id, ["it cannot be run"]),
    )
    lease = Lease(job=leased, scheduled_at=scheduled_at, token=token, skipped=True)
    return ClaimPlan("lease", leased, lease)


# --------------------------------------------------------------------------- completions


def plan_completion(outcome: Outcome) -> CompletionPlan:
    """Decide what finishing a run writes to its row. Never raises.

    A pure function of ``outcome``: a failed run of a job that sets neither
    ``max_retries`` nor ``failure_mode`` follows ``outcome.retry_defaults``
    (bounded retries with backoff, then parked or moved to its next run); a
    job's own ``max_retries`` wins; an explicit ``failure_mode`` alone keeps
    the lease (``'none'``), unlocks (``'unlock'``) or counts the run as done
    (``'commit'``), without limit.
    """
    lease = outcome.lease
    job = lease.job
    if outcome.succeeded and lease.token is not None and not job.recurring:
        return CompletionPlan("delete", job.id, lease.token, {})  # a finished one-off run
    now = outcome.finished_at
    status = STATUS_SUCCEEDED if outcome.succeeded else STATUS_FAILED
    last = {
        "last_run_at": now,
        "last_status": status,
        "last_error": None if outcome.succeeded else truncate_error(outcome.error),
    }
    if lease.token is None:
        # At-most-once: the row was already advanced or deleted by the claim.
        return CompletionPlan("note", job.id, None, last)
    try:
        return _plan_completion(outcome, last)
    except Exception as exc:
        error = f"the run ended but its job could not be settled ({type(exc).__name__}: {exc})"
        return _park(job, lease, now, error)


def split_finished(
    outcomes: Iterable[Outcome],
) -> tuple[list[tuple[CompletionPlan, Outcome]], list[Outcome]]:
    """Outcomes whose plan deletes the row under its lease (finished one-off runs), and the rest.

    Stores fold the first kind into their claim call; the rest take
    :meth:`~pyramid_pyncette.repository.base.Repository.complete`.
    """
    finished, others = [], []
    for outcome in outcomes:
        plan = plan_completion(outcome)
        if plan.action == "delete" and plan.token is not None:
            finished.append((plan, outcome))
        else:
            others.append(outcome)
    return finished, others


def _plan_completion(outcome: Outcome, last: dict[str, Any]) -> CompletionPlan:
    lease = outcome.lease
    job = lease.job
    now = outcome.finished_at
    if outcome.permanent and not outcome.succeeded:
        # Parked: no due time, so no daemon claims it until it is retried or replaced.
        values = {"due_at": None, "next_run_at": None, "attempts": job.attempts, **last}
        return CompletionPlan("settle", job.id, lease.token, values)
    if outcome.succeeded:
        return _finish(job, lease, now, last)
    defaults = outcome.retry_defaults
    retries = job.retry_limit(defaults)
    if retries is None:
        # The job chose a failure_mode and no max_retries: that mode decides, unbounded.
        return _plan_failure_mode(job, lease, now, last)
    attempt = job.attempts
    if attempt <= retries:
        backoff, backoff_max = job.backoff(defaults)
        values = {
            "due_at": now + retry_delay(job.id, attempt, backoff, backoff_max),
            "next_run_at": lease.scheduled_at,
            "attempts": attempt,
            **last,
        }
        return CompletionPlan("settle", job.id, lease.token, values)
    if job.recurring and job.retry_exhausted is RetryExhausted.ADVANCE:
        return _finish(job, lease, now, last)
    values = {"due_at": None, "next_run_at": None, "attempts": attempt, **last}
    return CompletionPlan("settle", job.id, lease.token, values)


def _plan_failure_mode(
    job: Job, lease: Lease, now: datetime, last: dict[str, Any]
) -> CompletionPlan:
    """A failed run of a job whose explicit ``failure_mode`` decides what follows."""
    mode = job.failure_mode
    if mode is FailureMode.COMMIT:
        return _finish(job, lease, now, last)
    if mode is FailureMode.UNLOCK:
        values = {
            "due_at": now,
            "next_run_at": lease.scheduled_at,
            "attempts": job.attempts,
            **last,
        }
        return CompletionPlan("settle", job.id, lease.token, values)
    # failure_mode 'none': keep the lease; the run is retried once it expires.
    return CompletionPlan("note", job.id, lease.token, last)


def describe_failure(outcome: Outcome, plan: CompletionPlan) -> tuple[str, str]:
    """``(attempt, next step)`` of a failed run, as the log line says them.

    ``attempt`` is ``'attempt 2 of 6'`` (``'attempt 2'`` when retries are
    unbounded or impossible); the next step is read from ``plan``, the plan
    :func:`plan_completion` made for ``outcome``: ``'retrying at 12:00:05
    UTC'``, ``'parked as failed'``, ``'moved to its next run at ...'``, ...
    """
    lease = outcome.lease
    job = lease.job
    now = outcome.finished_at
    attempt = f"attempt {lease.attempt}"
    if plan.token is None:
        return attempt, "not retried: it is at-most-once (execution_mode='at_most_once')"
    retries = None if outcome.permanent else job.retry_limit(outcome.retry_defaults)
    if retries is not None:
        attempt = f"{attempt} of {retries + 1}"
    values = plan.values
    if plan.action == "delete":
        if job.recurring:
            return attempt, "deleted: its schedule has no further run"
        return attempt, "counted as done and deleted (failure_mode='commit')"
    if plan.action == "note":
        return attempt, "retrying once its lease expires (failure_mode='none')"
    due_at = values.get("due_at")
    if due_at is None:
        return attempt, "parked as failed (see retry_job)"
    if not values.get("attempts"):
        return attempt, f"moved to its next run at {_clock_time(due_at, now)}"
    if retries is None:
        return attempt, "retrying at the next poll (failure_mode='unlock')"
    return attempt, f"retrying at {_clock_time(due_at, now)}"


def _clock_time(when: datetime, now: datetime) -> str:
    """``12:00:05 UTC``, with the date in front when it is not ``now``'s day."""
    when = when.astimezone(timezone.utc)
    if when.date() == now.astimezone(timezone.utc).date():
        return when.strftime("%H:%M:%S UTC")
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _finish(job: Job, lease: Lease, now: datetime, last: dict[str, Any]) -> CompletionPlan:
    """The run is over: delete a one-off job, move a recurring one to its next run."""
    if not job.recurring:
        return CompletionPlan("delete", job.id, lease.token, {})
    try:
        following = schedule_from_json(job.schedule).next_run(lease.scheduled_at, now)
    except ScheduleError as exc:
        error = (
            f"the schedule of job {job.id!r} is unreadable ({exc}); it is parked: add it again "
            "with the same job_id to replace it, or cancel it"
        )
        log.error("%s", error)
        return _park(job, lease, now, error)
    if following is None:
        return CompletionPlan("delete", job.id, lease.token, {})
    values = {"due_at": following, "next_run_at": following, "attempts": 0, **last}
    return CompletionPlan("settle", job.id, lease.token, values)


def _park(job: Job, lease: Lease, now: datetime, error: str) -> CompletionPlan:
    attempts = job.attempts if isinstance(job.attempts, int) else 0
    values = {
        "due_at": None,
        "next_run_at": None,
        "attempts": attempts,
        "last_run_at": now,
        "last_status": STATUS_FAILED,
        "last_error": truncate_error(error),
    }
    return CompletionPlan("settle", job.id, lease.token, values)


# --------------------------------------------------------------------------- unknown tasks


def unknown_task_error(task: str, job_id: str) -> str:
    """The error a job is parked with when the daemon that claimed it has no task ``task``.

    :func:`parked_for_unknown_task` recognises it, so that a daemon that
    does know the task revives the job when it syncs (a rolling deploy in
    which an older daemon claimed a job of a new task).
    """
    return (
        f"task {task!r} is not registered in this application; register it or "
        f"cancel the job {job_id!r}"
    )


def parked_for_unknown_task(job: Job) -> bool:
    """Whether ``job`` is parked as failed because the daemon that claimed it knew no
    task of its name (and for no other reason). Never raises."""
    return (
        isinstance(job.task, str)
        and isinstance(job.id, str)
        and job.state == "failed"
        and job.last_error == unknown_task_error(job.task, job.id)
    )


def revive_parked(job: Job, now: datetime) -> Job | None:
    """``job``, parked, put back on its schedule at ``now``; None if it has no run left.

    A recurring job's next run is its first schedule time after ``now``
    (no burst of missed runs); a one-off job runs at its date, or now when
    that has passed. The attempts are reset and the parking error cleared.
    Raises :class:`~pyramid_pyncette.schedules.ScheduleError` for an
    unreadable schedule.
    """
    schedule = schedule_from_json(job.schedule)
    if job.recurring:
        at = schedule.next_run(now, now)
    else:
        first = schedule.first_run(now)
        at = None if first is None else max(first, now)
    if at is None:
        return None
    return job.replace(due_at=at, next_run_at=at, attempts=0, locked_by=None, last_error=None)
