"""Claims ahead of a due time: an idle daemon of a slow store starts jobs on time.

A store whose claims take several round trips (DynamoDB reads the due index
of every partition) would start each job the length of a claim after it was
due if the daemon began claiming only then. A store that says
``claims_ahead`` is claimed from a little before the next known due time,
with ``now`` set to that time, and the runs are queued at their due time.

Every test runs on every store through ``make_app`` and the fake clock (the
store is told to claim ahead, so each store's claim is shown to honour a
``now`` ahead of the clock); claims and next-due reads are made slow by
moving the fake clock inside them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from pyramid_pyncette.worker import CLAIM_LEAD_FACTOR, CLAIM_LEAD_MARGIN, MAX_CLAIM_LEAD, Worker

#: How long each claim of the slowed store takes (seconds of fake time).
CLAIM_TAKES = 0.05


class TimedThreads:
    """Stands in for the job threads: keeps each submitted run with the time it was queued."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.submitted = []

    def submit(self, items) -> None:
        self.submitted.extend((self.clock(), running) for running in items)

    def take_unstarted(self):
        return []

    def started(self):
        """``{job id: when it was queued}``."""
        return {running.lease.job.id: at for at, running in self.submitted}


def slow_claims(app, seconds=CLAIM_TAKES):
    """Make every claim of ``app``'s store take ``seconds`` of fake time; return the
    list of the ``now`` each claim was given."""
    repository = app.repository
    claim = repository.complete_and_claim
    asked = []

    def slow(outcomes, now, *args, **kwargs):
        asked.append(now)
        app.clock.advance(seconds)
        return claim(outcomes, now, *args, **kwargs)

    repository.complete_and_claim = slow
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


def add_job(app, job_id, at):
    return app.scheduler.add_date_job("record", at, job_id=job_id)


def test_an_idle_worker_of_a_slow_store_starts_a_job_at_its_due_time(make_app):
    app = make_app()
    asked = slow_claims(app)
    worker = worker_of(app)
    threads = TimedThreads(app.clock)
    due = app.clock() + timedelta(seconds=10)
    add_job(app, "on-time", due)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    # Queued at its due time, not a claim's length after it...
    assert threads.started() == {"on-time": due}
    # ...by a claim made before it was due, for that time.
    assert due in asked
    assert worker._claim_lead() == pytest.approx(
        CLAIM_TAKES * CLAIM_LEAD_FACTOR + CLAIM_LEAD_MARGIN
    )


def test_a_store_that_does_not_claim_ahead_starts_the_job_a_claim_late(make_app):
    app = make_app()
    asked = slow_claims(app)
    worker = worker_of(app, ahead=False)
    threads = TimedThreads(app.clock)
    due = app.clock() + timedelta(seconds=10)
    add_job(app, "late", due)

    turn_until(app, worker, threads, due + timedelta(seconds=1))

    assert threads.started() == {"late": due + timedelta(seconds=CLAIM_TAKES)}
    assert all(now <= app.clock() for now in asked)
    assert worker._claim_lead() == 0.0


def test_a_run_claimed_ahead_waits_for_its_due_time_holding_its_lease(make_app):
    app = make_app()
    slow_claims(app)
    worker = worker_of(app)
    threads = TimedThreads(app.clock)
    worker._claim_times.append(CLAIM_TAKES)  # as if it had claimed before
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "held", due)
    lead = worker._claim_lead()

    # Turn the loop until the claim ahead has taken the job.
    while True:
        timeout = worker._cycle(threads)
        if "held" in {running.lease.job.id for running in worker._running.values()}:
            break
        app.clock.advance(max(timeout, 0.001))
        assert app.clock() < due

    assert due - app.clock() <= timedelta(seconds=lead)
    assert "held" not in threads.started()
    # Another daemon polling now finds nothing to take: the lease is held.
    assert app.repository.claim(due + timedelta(seconds=1), 10, "other", 60) == []
    # The loop asks to be woken at the due time, not later.
    assert worker._cycle(threads) <= (due - app.clock()).total_seconds()
    turn_until(app, worker, threads, due + timedelta(seconds=1))
    assert threads.started()["held"] == due


def test_a_claim_ahead_that_finds_nothing_waits_for_the_due_time_without_spinning(make_app):
    app = make_app()
    asked = slow_claims(app)
    worker = worker_of(app)
    threads = TimedThreads(app.clock)
    worker._claim_times.append(CLAIM_TAKES)  # as if it had claimed before
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
    # One claim ahead for the due time, then nothing before it (no spinning).
    assert sum(1 for now in asked if now == due) == 1
    assert len(asked) <= 4


def test_a_stopping_worker_gives_back_runs_claimed_ahead(make_app):
    app = make_app()
    slow_claims(app)
    worker = worker_of(app)
    threads = TimedThreads(app.clock)
    worker._claim_times.append(CLAIM_TAKES)  # as if it had claimed before
    due = app.clock() + timedelta(seconds=5)
    add_job(app, "given-back", due)
    while True:
        timeout = worker._cycle(threads)
        if worker._early:
            break
        app.clock.advance(max(timeout, 0.001))
        assert app.clock() < due

    worker._stopping.set()
    worker._shutdown(_NoThreads())

    assert worker.stats["released"] == 1
    assert app.calls == []
    claimed = app.repository.claim(due, 10, "other", 60)
    assert [lease.job.id for lease in claimed] == ["given-back"]


class _NoThreads:
    def take_unstarted(self):
        return []

    def shutdown(self) -> None:
        pass


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
