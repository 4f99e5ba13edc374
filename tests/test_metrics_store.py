"""Store-wide counts behind the ``pyncette_jobs`` and ``pyncette_oldest_due_seconds``
gauges, on every store: :meth:`Repository.queue_stats` counts every job by state and
gives the oldest due time of the jobs waiting for a daemon.

Runs once per entry of ``conftest.STORES`` against a bare repository with the
store's own clock switched off (see tests/test_store_levers.py), so every
count is exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pyramid_pyncette.jobs import JOB_STATES, STAGED_PREFIX, Outcome, QueueInfo, job_state_counts
from pyramid_pyncette.options import PAUSED_MARKER
from pyramid_pyncette.repository.base import Repository
from tests.test_store_levers import (
    LEASE,
    NOW,
    _open_repository,
    claimed_ids,
    date_job,
    interval_job,
    seconds,
)


@pytest.fixture
def repo(store_settings) -> Iterator[Repository]:
    """A set-up, empty repository of the store under test, on the tests' clock."""
    repository = _open_repository(store_settings)
    yield repository
    repository.close()


def states(**counts: int) -> dict[str, int]:
    """Every state keyed, the ones named with their count."""
    return {**job_state_counts(), **counts}


def by_name(queues: list[QueueInfo]) -> dict[str, QueueInfo]:
    return {queue.name: queue for queue in queues}


def test_queue_stats_count_every_job_of_each_queue_by_state(repo):
    repo.add([date_job("e-leased", NOW - seconds(100), queue="emails")])
    assert claimed_ids(repo.claim(NOW, 1, "daemon-1", LEASE)) == ["e-leased"]
    repo.add(
        [
            date_job("e-due", NOW - seconds(5), queue="emails"),
            date_job("e-future", NOW + seconds(5), queue="emails"),
            date_job("e-retry", NOW + seconds(30), queue="emails").replace(attempts=2),
            date_job("d-due", NOW - seconds(1)),
            date_job("d-parked", None),
            interval_job("d-paused", options={PAUSED_MARKER: True}).replace(due_at=None),
            interval_job("d-paused-due", options={PAUSED_MARKER: True}),
        ]
    )
    repo.stage([date_job("r-staged", NOW, queue="reports")], [], f"{STAGED_PREFIX}tx-1", 30, NOW)
    repo.set_queue_paused("idle", True)

    queues = by_name(repo.queue_stats(NOW))

    assert {name: dict(queue.jobs) for name, queue in queues.items()} == {
        "default": states(scheduled=1, failed=1, paused=2),
        "emails": states(scheduled=2, running=1, retrying=1),
        "idle": states(),
        "reports": states(scheduled=1),
    }
    assert all(list(queue.jobs) == list(JOB_STATES) for queue in queues.values())


def test_queue_stats_give_the_oldest_due_time_of_the_jobs_waiting_for_a_daemon(repo):
    repo.add([date_job("e-leased", NOW - seconds(100), queue="emails")])
    assert claimed_ids(repo.claim(NOW, 1, "daemon-1", LEASE)) == ["e-leased"]
    repo.add(
        [
            date_job("e-future", NOW + seconds(5), queue="emails"),
            date_job("e-retry", NOW - seconds(7), queue="emails").replace(attempts=1),
            date_job("d-due", NOW - seconds(3)),
            date_job("d-parked", None),
            interval_job("d-paused", due=NOW - seconds(50), options={PAUSED_MARKER: True}),
            date_job("r-parked", None, queue="reports"),
        ]
    )
    repo.stage([date_job("s-staged", NOW - seconds(60), queue="staged")], [], "staged:t", 30, NOW)

    queues = by_name(repo.queue_stats(NOW))

    # Leased, paused, parked and staged jobs are not waiting; a retry is.
    assert queues["emails"].oldest_due_at == NOW - seconds(7)
    assert queues["default"].oldest_due_at == NOW - seconds(3)
    assert queues["reports"].oldest_due_at is None
    assert queues["staged"].oldest_due_at is None


def test_queue_stats_of_an_empty_paused_queue_count_no_job(repo):
    repo.set_queue_paused("idle", True)

    assert repo.queue_stats(NOW) == [QueueInfo("idle", True, 0, 0, states(), None)]


def test_queue_stats_follow_a_job_from_due_to_running_to_done(repo):
    repo.add([date_job("once", NOW - seconds(2), queue="emails")])
    assert by_name(repo.queue_stats(NOW))["emails"].jobs == states(scheduled=1)

    leases = repo.claim(NOW, 1, "daemon-1", LEASE)
    queue = by_name(repo.queue_stats(NOW))["emails"]
    assert (queue.jobs, queue.oldest_due_at) == (states(running=1), None)

    repo.complete([Outcome(leases[0], True, NOW)])
    assert repo.queue_stats(NOW) == []


def test_the_store_gauges_are_exact_on_every_store(app):
    from pyramid_pyncette.metrics import StoreCollector

    scheduler = app.scheduler
    scheduler.add_date_job("record", app.clock() - seconds(90), job_id="late")
    scheduler.add_date_job("record", app.clock() - seconds(30), job_id="late-mail", queue="emails")
    scheduler.add_date_job("record", app.clock() + seconds(60), job_id="later")
    scheduler.add_date_job("record", app.clock() - seconds(600), job_id="held")
    scheduler.pause_job("held")
    assert claimed_ids(app.repository.claim(app.clock(), 10, "daemon-1", LEASE, {"emails"})) == [
        "late-mail"
    ]

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in StoreCollector(scheduler).collect()
        for sample in family.samples
    }

    def jobs(queue: str) -> dict[str, float]:
        return {
            state: samples[("pyncette_jobs", (("queue", queue), ("state", state)))]
            for state in JOB_STATES
        }

    assert jobs("default") == states(scheduled=2, paused=1)
    assert jobs("emails") == states(running=1)
    assert samples[("pyncette_oldest_due_seconds", (("queue", "default"),))] == 90
    assert samples[("pyncette_oldest_due_seconds", (("queue", "emails"),))] == 0
    assert len(samples) == 2 * len(JOB_STATES) + 2


def test_redis_counts_a_store_of_many_chunks_as_the_memory_store_does(request):
    pytest.importorskip("redis")
    server = request.getfixturevalue("redis_server")
    server.start()
    redis_store = _open_repository(
        {"pyncette.url": server.url, "pyncette.redis_namespace": f"m{uuid.uuid4().hex[:8]}"}
    )
    memory = _open_repository({"pyncette.url": "memory://"})
    jobs = []
    for n in range(2500):  # several HSCAN chunks of queue_counts.lua
        job = date_job(f"j{n:05d}", NOW - seconds(n % 97), queue=("a", "b", "c")[n % 3])
        if n % 7 == 0:
            job = job.replace(options={PAUSED_MARKER: True})
        elif n % 5 == 0:
            job = job.replace(attempts=1)
        elif n % 11 == 0:
            job = job.replace(due_at=None)
        if n % 13 == 0:
            # The pause marker's text in the arguments pauses nothing.
            job = job.replace(kwargs={"paused": True, "note": '"paused":true'})
        jobs.append(job)
    try:
        held = []
        for store in (memory, redis_store):
            store.add(jobs)
            leases = store.claim(NOW, 40, "daemon-1", LEASE, frozenset({"b"}))
            held.append(len([lease for lease in leases if not lease.paused]))

        counted = redis_store.queue_stats(NOW)
        assert counted == memory.queue_stats(NOW)
        assert sum(sum(queue.jobs.values()) for queue in counted) == 2500
        # The claim took paused jobs off the schedule, and leased the others.
        assert held[0] == held[1] > 0
        assert by_name(counted)["b"].jobs["running"] == held[1]
    finally:
        redis_store.close()
        memory.close()
