"""Claims ahead of a due time: an idle daemon of a slow store starts jobs on time.

A store whose claims take several round trips (DynamoDB reads the due index
of every partition) would start each job the length of a claim after it was
due if the daemon began claiming only then. A store that says
``claims_ahead`` is claimed from a little before the next known due time,
with ``now`` set to that time, and the runs are queued at their due time.

The tests run on the stores that can claim ahead (DynamoDB, and the memory
store, told to) through ``make_app`` and the fake clock; claims and next-due
reads are made slow by moving the fake clock inside them.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette.execution import JobInfo
from pyramid_pyncette.jobs import Job, Lease, Outcome
from pyramid_pyncette.worker import (
    CLAIM_LEAD_FACTOR,
    CLAIM_LEAD_MARGIN,
    MAX_CLAIM_LEAD,
    Worker,
    _JobThreads,
    _Running,
)
from tests.conftest import STORES

#: The stores whose claims can take jobs ahead of their due time.
AHEAD_STORES = [name for name in ("memory", "dynamodb") if name in STORES]


@pytest.fixture(params=AHEAD_STORES)
def store_settings(request, tmp_path):
    """The settings of a fresh store that can claim ahead (``make_app`` uses it)."""
    return dict(STORES[request.param](request, tmp_path))


#: How long each claim of the slowed store takes (seconds of fake time).
CLAIM_TAKES = 0.05


class TimedThreads:
    """Stands in for the job threads: keeps each submitted run with the time a thread
    would start it (when submitted, or the run's ``not_before`` if later)."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.submitted = []

    def submit(self, items) -> None:
        now = self.worker.clock()
        for running in items:
            wait = 0.0
            if running.not_before is not None:
                wait = max(0.0, running.not_before - self.worker.monotonic())
            self.submitted.append((now + timedelta(seconds=wait), running))

    def take_unstarted(self):
        """The runs whose start time has not come (a thread still holds them)."""
        now = self.worker.clock()
        taken = [running for at, running in self.submitted if at > now]
        self.submitted = [(at, running) for at, running in self.submitted if at <= now]
        return taken

    def shutdown(self) -> None:
        pass

    def started(self):
        """``{job id: when a thread starts it}``."""
        return {running.lease.job.id: at for at, running in self.submitted}


def slow_claims(app, seconds=CLAIM_TAKES):
    """Make every claim of ``app``'s store take ``seconds`` of fake time; return the
    list of how far each claim took jobs (its ``now``, or ``until`` when ahead)."""
    repository = app.repository
    claim, claim_ahead = repository.complete_and_claim, repository.complete_and_claim_ahead
    asked = []

    def slow(outcomes, now, *args, **kwargs):
        asked.append(now)
        app.clock.advance(seconds)
        return claim(outcomes, now, *args, **kwargs)

    def slow_ahead(outcomes, now, until, *args, **kwargs):
        assert now < until
        asked.append(until)
        app.clock.advance(seconds)
        return claim_ahead(outcomes, now, until, *args, **kwargs)

    repository.complete_and_claim = slow
    repository.complete_and_claim_ahead = slow_ahead
    return asked


def worker_of(app, ahead=True, **options):
    """A worker of ``app`` whose monotonic clock follows the fake clock; its store claims
    ahead when ``ahead``."""
    app.repository.claims_ahead = ahead
    epoch = app.clock()
    return Worker(
        app.registry,
        clock=app.clock,
        monotonic=lambda: (app.clock() - epoch).total_seconds(),
        poll_interval=30,
        **options,
    )


def turn_until(app, worker, threads, end):
    """Turn the loop, sleeping as long as it asks, until the fake clock reaches ``end``."""
    turns = 0
    while app.clock() < end:
        timeout = worker._cycle(threads)
        assert timeout is not None
        turns += 1
        assert turns < 1000, "the loop spins"
        app.clock.advance(max(timeout, 0.001) if timeout > 0 else 0.001)
    return turns


def ahead(app, threads=None):
    """``(worker, threads)``: a worker of ``app`` whose claims take :data:`CLAIM_TAKES`
    and which has timed one already (so it knows its lead)."""
    asked = slow_claims(app)
    worker = worker_of(app)
    worker._claim_times.append(CLAIM_TAKES)
    return worker, (threads or TimedThreads)(worker), asked


def turn_until_claimed(app, worker, threads, due):
    """Turn the loop until it holds a run (claimed ahead), never reaching ``due``."""
    while True:
        timeout = worker._cycle(threads)
        if worker._running:
            return
        app.clock.advance(max(timeout, 0.001))
        assert app.clock() < due


def add_job(app, job_id, at):
    return app.scheduler.add_date_job("record", at, job_id=job_id)


def test_an_idle_worker_of_a_slow_store_starts_a_job_at_its_due_time(make_app):
    app = make_app()
    asked = slow_claims(app)
    worker = worker_of(app)
    threads = TimedThreads(worker)
    due = app.clock() + timedelta(seconds=10)
    add_job(app, "on-time", due)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    # Queued at its due time, not a claim's length after it...
    assert threads.started() == {"on-time": due}
    # ...by a claim made before it was due, that took jobs due up to that time or later.
    assert any(until >= due for until in asked)
    assert worker._claim_lead() == pytest.approx(
        CLAIM_TAKES * CLAIM_LEAD_FACTOR + CLAIM_LEAD_MARGIN
    )


def test_a_store_that_does_not_claim_ahead_starts_the_job_a_claim_late(make_app):
    app = make_app()
    asked = slow_claims(app)
    worker = worker_of(app, ahead=False)
    threads = TimedThreads(worker)
    due = app.clock() + timedelta(seconds=10)
    add_job(app, "late", due)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert threads.started() == {"late": due + timedelta(seconds=CLAIM_TAKES)}
    assert all(now < due for now in asked[:-1])
    assert worker._claim_lead() == 0.0


def test_a_run_claimed_ahead_waits_for_its_due_time_holding_its_lease(make_app):
    app = make_app()
    worker, threads, _ = ahead(app)
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "held", due)
    lead = worker._claim_lead()

    turn_until_claimed(app, worker, threads, due)

    assert due - app.clock() <= timedelta(seconds=lead)
    # Handed to a thread that starts it at its due time, not before.
    assert threads.started() == {"held": due}
    # Another daemon polling meanwhile finds nothing to take: the lease is held.
    assert app.repository.claim(due + timedelta(seconds=1), 10, "other", 60) == []


def test_a_claim_ahead_that_finds_nothing_waits_for_the_due_time_without_spinning(make_app):
    app = make_app()
    worker, threads, asked = ahead(app)
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "taken", due)
    # The worker learns the due time and sleeps until the lead before it; meanwhile
    # another daemon takes the job.
    timeout = worker._cycle(threads)
    assert worker._next_due_at == due
    app.clock.advance(timeout)
    assert app.clock() < due
    assert app.repository.claim(due, 10, "other", 60) != []
    asked.clear()

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert "taken" not in threads.started()
    # One claim ahead reaching the due time, then nothing before it (no spinning).
    assert sum(1 for until in asked if until >= due) <= 2
    assert len(asked) <= 4


def test_a_stopping_worker_gives_back_runs_claimed_ahead(make_app):
    app = make_app()
    worker, threads, _ = ahead(app)
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "given-back", due)
    turn_until_claimed(app, worker, threads, due)

    worker._stopping.set()
    worker._shutdown(threads)

    assert worker.stats["released"] == 1
    assert app.calls == []
    claimed = app.repository.claim(due, 10, "other", 60)
    assert [lease.job.id for lease in claimed] == ["given-back"]


def test_the_claim_lead_is_bounded_by_the_lease_and_the_poll_interval(make_app):
    app = make_app()
    worker = worker_of(app, lease_duration=3)
    worker._claim_times.extend([0.2, 0.9, 0.4])
    assert worker._claim_lead() == pytest.approx(3 / 10)
    worker.lease_duration = 600
    worker.poll_interval = 1.0
    assert worker._claim_lead() == pytest.approx(1.0 / 2)
    worker.poll_interval = 30
    assert worker._claim_lead() == MAX_CLAIM_LEAD
    worker._claim_times.clear()
    worker._claim_times.append(0.1)
    assert worker._claim_lead() == pytest.approx(0.1 * CLAIM_LEAD_FACTOR + CLAIM_LEAD_MARGIN)


def test_the_wait_for_the_next_due_time_leaves_out_the_time_the_store_took_to_answer(make_app):
    app = make_app()
    worker = worker_of(app, ahead=False)
    repository = app.repository
    next_due_delay = repository.next_due_delay

    def slow(now, queues=None):
        app.clock.advance(0.25)
        return next_due_delay(now, queues)

    repository.next_due_delay = slow
    add_job(app, "later", app.clock() + timedelta(seconds=10))

    assert worker._until_next_due() == pytest.approx(10 - 0.25)


def test_jobs_due_close_together_are_each_started_at_their_due_time(make_app):
    app = make_app()
    worker, threads, _ = ahead(app)
    first = app.clock() + timedelta(seconds=5)
    # Closer together than a claim takes: one claim ahead cannot wait for each.
    due = {f"close-{i}": first + timedelta(seconds=0.02 * i) for i in range(8)}
    for job_id, when in due.items():
        add_job(app, job_id, when)

    turn_until(app, worker, threads, first + timedelta(seconds=2))

    assert threads.started() == due


def test_a_job_claimed_ahead_is_not_a_misfire_however_short_its_grace_time(make_app):
    app = make_app()
    worker, threads, _ = ahead(app)
    due = app.clock() + timedelta(seconds=5)
    # A grace time shorter than the claim lead: claimed ahead, it is still on time.
    app.scheduler.add_date_job("record", due, job_id="punctual", misfire_grace_time=0.01)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert threads.started() == {"punctual": due}
    assert worker.stats["skipped"] == 0


def test_a_claim_ahead_takes_the_jobs_due_by_until_each_leased_from_its_due_time(make_app):
    app = make_app()
    now = app.clock()
    for job_id, offset in (("overdue", -1), ("soon", 0.2), ("later", 0.6)):
        add_job(app, job_id, now + timedelta(seconds=offset))

    leases = app.repository.claim_ahead(now, now + timedelta(seconds=0.5), 10, "tok", 60)

    assert sorted(lease.job.id for lease in leases) == ["overdue", "soon"]
    expiry = {lease.job.id: lease.job.due_at for lease in leases}
    # The overdue job is leased from now, the one claimed ahead from its due time.
    assert expiry == {
        "overdue": now + timedelta(seconds=60),
        "soon": now + timedelta(seconds=60.2),
    }
    assert all(not lease.skipped for lease in leases)
    # The job due after ``until`` is left for a later claim.
    later = app.repository.claim(now + timedelta(seconds=0.6), 10, "other", 60)
    assert [lease.job.id for lease in later] == ["later"]


def test_stores_that_cannot_claim_ahead_say_so(make_config):
    config = make_config({"pyncette.url": "sqlite://"})
    config.commit()
    repository = config.registry.scheduler.repository
    now = datetime.now(timezone.utc)

    assert repository.claims_ahead is False
    with pytest.raises(NotImplementedError, match="does not claim ahead"):
        repository.claim_ahead(now, now + timedelta(seconds=1), 1, "tok", 60)


def test_a_job_thread_starts_a_run_claimed_ahead_no_earlier_than_its_time():
    ran = []
    threads = _JobThreads(1, lambda running: ran.append((time.monotonic(), running)))
    start = time.monotonic() + 0.05
    # One thread; shutting down lets the held run start at its time first.
    threads.submit([_run("held", not_before=start), _run("now")])
    threads.shutdown()

    # The run due now goes first: the held one waits for its time without a thread.
    assert [running.key[0] for _, running in ran] == ["now", "held"]
    assert ran[1][0] >= start


def test_a_job_thread_gives_back_a_run_claimed_ahead_when_the_worker_stops():
    ran = []
    threads = _JobThreads(1, ran.append)
    held = _run("held", not_before=time.monotonic() + 60)
    threads.submit([held])

    taken = threads.take_unstarted()
    threads.shutdown()

    assert taken == [held]
    assert ran == []


def _run(job_id, not_before=None):
    """A claimed run of a job ``job_id`` for the job threads."""
    job = Job(id=job_id, task="record", schedule={"kind": "date"})
    lease = Lease(job=job, scheduled_at=datetime.now(timezone.utc), token="tok")
    return _Running(lease, JobInfo.for_lease(lease), (job_id, "tok"), not_before=not_before)


def test_a_run_claimed_ahead_never_starts_early_when_the_loop_is_slow_to_read_the_clock(
    make_app,
):
    app = make_app()
    worker, threads, _ = ahead(app)
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "never-early", due)
    # Every read of the wall clock comes 30 ms after the loop asked (a busy host).
    worker.clock = lambda: app.clock.advance(0.03)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert threads.started()["never-early"] >= due


def test_a_claim_ahead_leaves_a_job_whose_lease_its_holder_may_still_renew(make_app):
    app = make_app()
    repository = app.repository
    now = app.clock()
    add_job(app, "leased", now)
    (held,) = repository.claim(now, 10, "holder", 60)
    expiry = held.job.due_at
    at = expiry - timedelta(seconds=0.3)

    # Another daemon claims ahead past the lease's end, before it ends.
    taken = repository.claim_ahead(at, at + timedelta(seconds=0.5), 10, "other", 60)

    assert taken == []
    assert repository.extend(at + timedelta(seconds=0.1), [("leased", "holder", 60)]) == {"leased"}


def test_a_retry_claimed_ahead_and_given_back_is_due_at_its_retry_time(make_app):
    app = make_app()
    repository = app.repository
    now = app.clock()
    app.scheduler.add_date_job("fail", now, job_id="retried", max_retries=3, retry_backoff=30)
    (first,) = repository.claim(now, 10, "first", 60)
    repository.complete([Outcome(first, False, now, error="boom")])
    retry_at = app.scheduler.get_job("retried").due_at
    assert retry_at > now
    at = retry_at - timedelta(seconds=0.4)
    (ahead,) = repository.claim_ahead(at, at + timedelta(seconds=0.5), 10, "ahead", 60)

    repository.release([ahead])  # the daemon stopped before the retry time

    assert repository.claim(retry_at - timedelta(seconds=0.1), 10, "early", 60) == []
    (again,) = repository.claim(retry_at, 10, "on-time", 60)
    assert again.job.id == "retried"


def test_a_run_due_now_does_not_wait_behind_a_run_claimed_ahead():
    ran = []
    due_now_ran = threading.Event()

    def run(running):
        ran.append(running.key[0])
        if running.key[0] == "due-now":
            due_now_ran.set()

    threads = _JobThreads(1, run)
    held = _run("held", not_before=time.monotonic() + 60)
    threads.submit([held])
    threads.submit([_run("due-now")])

    assert due_now_ran.wait(10)
    assert threads.take_unstarted() == [held]
    threads.shutdown()
    assert ran == ["due-now"]


class RunningThreads(TimedThreads):
    """Job threads that, once ``running`` is set, run each run submitted at once (on the
    test's thread)."""

    running = False

    def submit(self, items) -> None:
        super().submit(items)
        for running in items if self.running else ():
            self.worker._run_one(running)


def test_an_at_most_once_run_claimed_ahead_runs_before_the_worker_stops(make_app):
    app = make_app()
    worker, threads, _ = ahead(app, RunningThreads)
    due = app.clock() + timedelta(seconds=5)
    app.scheduler.add_date_job("record", due, job_id="once", execution_mode="at_most_once")
    turn_until_claimed(app, worker, threads, due)
    # The claim already deleted the one-off job: giving the run back would lose it.
    assert app.scheduler.get_job("once") is None

    worker._stopping.set()
    threads.running = True
    worker._shutdown(threads)

    assert [call.job_id for call in app.calls] == ["once"]
    assert worker.stats["released"] == 0


def test_the_claim_lead_holds_after_the_wall_clock_steps_back(make_app):
    app = make_app()
    worker, threads, _ = ahead(app)
    first = app.clock() + timedelta(seconds=5)
    add_job(app, "before", first)
    turn_until(app, worker, threads, first + timedelta(seconds=1))
    assert threads.started()["before"] == first
    # The wall clock is set back a minute; the monotonic clock goes on.
    resumed = worker.monotonic()
    app.clock.advance(-60)
    base = app.clock()
    worker._monotonic = lambda: resumed + (app.clock() - base).total_seconds()
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "after", due)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert threads.started()["after"] == due
