"""The store contract of the operator levers, on every store: queues, paused queues,
paused jobs, queue counts and the run history.

Each test runs once per entry of ``conftest.STORES`` against a bare repository
(no scheduler, no worker) with the store's own clock switched off, so every
``now`` below is the one the store uses and every count is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from pyramid_pyncette.jobs import (
    DEFAULT_QUEUE,
    MAX_JOB_ID_LENGTH,
    MAX_RUN_ERROR_LENGTH,
    RUN_FAILED,
    RUN_LEASE_LOST,
    RUN_SKIPPED,
    RUN_SUCCEEDED,
    STAGED_PREFIX,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
)
from pyramid_pyncette.options import PAUSED_MARKER
from pyramid_pyncette.repository import create_repository
from pyramid_pyncette.repository.base import Repository
from pyramid_pyncette.repository.rows import storable_text
from pyramid_pyncette.schedules import DateSchedule, IntervalSchedule
from pyramid_pyncette.settings import parse_settings
from tests.queue_counts import backlog

UTC = timezone.utc
NOW = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 60.0


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def date_job(job_id: str, due: datetime | None = NOW, queue: str | None = None, **changes) -> Job:
    """A one-off job of task ``record`` due at ``due``, in ``queue`` (None: the default)."""
    job = Job(
        id=job_id,
        task="record",
        schedule=DateSchedule(due or NOW).to_json(),
        due_at=due,
        next_run_at=due,
        created_at=NOW - seconds(3600),
    )
    if queue is not None:
        changes["queue"] = queue
    return job.replace(**changes)


def interval_job(job_id: str, every: float = 60, due: datetime = NOW, **changes) -> Job:
    """A job of task ``record`` every ``every`` seconds, next due at ``due``."""
    job = Job(
        id=job_id,
        task="record",
        schedule=IntervalSchedule(seconds(every), start_date=due).to_json(),
        args=[1, "two"],
        kwargs={"three": [3]},
        due_at=due,
        next_run_at=due,
        created_at=NOW - seconds(3600),
    )
    return job.replace(**changes)


def run_record(
    job_id: str,
    finished_at: datetime = NOW,
    outcome: str = RUN_SUCCEEDED,
    task: str = "record",
    queue: str = DEFAULT_QUEUE,
    **changes,
) -> RunRecord:
    """A run of ``job_id`` that finished at ``finished_at`` after 1.5 s."""
    record = RunRecord(
        job_id=job_id,
        task=task,
        queue=queue,
        scheduled_at=finished_at - seconds(2),
        started_at=finished_at - seconds(1.5),
        finished_at=finished_at,
        attempt=1,
        outcome=outcome,
        error="ValueError: boom" if outcome in (RUN_FAILED, RUN_LEASE_LOST) else None,
        host="worker-host.example",
        pid=4242,
        worker="daemon-7f3a",
    )
    return dataclasses.replace(record, **changes)


def claimed_ids(leases: list[Lease]) -> list[str]:
    return sorted(lease.job.id for lease in leases)


def written(record: RunRecord) -> RunRecord:
    """A stored ``record`` without the id its store gave it, to compare with what was written."""
    return dataclasses.replace(record, id=None)


def run_pages(repo: Repository, limit: int, **filters) -> list[list[RunRecord]]:
    """Every page of :meth:`list_runs` matching ``filters``, following ``next_cursor``."""
    pages: list[list[RunRecord]] = []
    cursor = None
    for _ in range(1000):
        page = repo.list_runs(cursor=cursor, limit=limit, **filters)
        pages.append(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError(f"list_runs gave a next_cursor after {len(pages)} pages: no last page")


def all_runs(repo: Repository, **filters) -> list[RunRecord]:
    """Every run record matching ``filters``, newest first, read page by page."""
    return [run for page in run_pages(repo, 7, **filters) for run in page]


def _open_repository(store_settings: dict[str, str]) -> Repository:
    repository = create_repository(parse_settings(store_settings))
    # Claims and due times by the given ``now``, not the database's clock.
    repository.store_clock = False
    repository.setup()
    return repository


@pytest.fixture
def repo(store_settings) -> Iterator[Repository]:
    """A set-up, empty repository of the store under test."""
    repository = _open_repository(store_settings)
    yield repository
    repository.close()


@pytest.fixture
def other_repo(store_settings, repo) -> Iterator[Repository]:
    """A second repository on the same store as ``repo``, as another daemon opens it.

    The memory store lives in one process: there, ``repo`` itself.
    """
    if store_settings["pyncette.url"].startswith("memory:"):
        yield repo
        return
    repository = _open_repository(store_settings)
    yield repository
    repository.close()


# --------------------------------------------------------------------------- claims by queue


def test_a_claim_for_one_queue_never_returns_another_queues_job(repo):
    repo.add([date_job("plain", NOW - seconds(5)), date_job("mail", NOW, queue="emails")])

    assert claimed_ids(repo.claim(NOW, 10, "t1", LEASE, frozenset({"emails"}))) == ["mail"]
    assert repo.claim(NOW + seconds(1), 10, "t2", LEASE, frozenset({"emails"})) == []

    plain = repo.get("plain")
    assert plain is not None
    assert plain.locked_by is None
    assert plain.due_at == NOW - seconds(5)
    assert plain.attempts == 0


def test_a_claim_for_queues_without_jobs_claims_nothing(repo):
    repo.add([date_job("plain", NOW - seconds(5)), date_job("mail", NOW, queue="emails")])

    assert repo.claim(NOW, 10, "t1", LEASE, frozenset({"reports"})) == []
    assert repo.claim(NOW, 10, "t1", LEASE, frozenset()) == []
    assert all(job.locked_by is None for job in repo.list())


def test_two_claims_on_two_queues_drain_both_with_no_job_twice(repo, other_repo):
    emails = [f"e-{i}" for i in range(5)]
    defaults = [f"d-{i}" for i in range(5)]
    repo.add(
        [date_job(job_id, NOW - seconds(i), queue="emails") for i, job_id in enumerate(emails)]
    )
    repo.add([date_job(job_id, NOW - seconds(i)) for i, job_id in enumerate(defaults)])

    taken: dict[str, list[str]] = {"emails": [], "default": []}
    for _ in range(3):
        for store, queue in ((repo, "emails"), (other_repo, "default")):
            leases = store.claim(NOW, 2, f"daemon-{queue}", LEASE, frozenset({queue}))
            assert {lease.job.queue for lease in leases} <= {queue}
            taken[queue] += [lease.job.id for lease in leases]

    assert sorted(taken["emails"]) == emails
    assert sorted(taken["default"]) == defaults
    assert repo.claim(NOW, 10, "late", LEASE) == []


def test_a_claim_without_queues_takes_every_queue(repo):
    repo.add(
        [
            date_job("d", NOW - seconds(3)),
            date_job("e", NOW - seconds(2), queue="emails"),
            date_job("r", NOW - seconds(1), queue="reports.daily"),
            date_job("later", NOW + seconds(1), queue="emails"),
        ]
    )

    leases = repo.claim(NOW, 10, "t1", LEASE, None)

    assert claimed_ids(leases) == ["d", "e", "r"]
    assert {lease.job.id: lease.job.queue for lease in leases} == {
        "d": "default",
        "e": "emails",
        "r": "reports.daily",
    }


def test_a_claim_across_queues_takes_the_earliest_due_jobs_first(repo):
    due = {"a1": 50, "b1": 40, "c1": 30, "a2": 20, "b2": 10}
    repo.add([date_job(job_id, NOW - seconds(ago), queue=job_id[0]) for job_id, ago in due.items()])

    first = repo.claim(NOW, 3, "t1", LEASE, frozenset({"a", "b", "c"}))
    assert claimed_ids(first) == ["a1", "b1", "c1"]

    order = []
    for n in range(3):
        leases = repo.claim(NOW, 1, f"t{n + 2}", LEASE, frozenset({"a", "b", "c"}))
        order += [lease.job.id for lease in leases]
    assert order == ["a2", "b2"]


def test_a_claim_across_queues_respects_its_limit(repo):
    repo.add(
        [
            date_job(f"{queue}-{i}", NOW - seconds(i), queue=queue)
            for queue in ("a", "b", "c")
            for i in range(4)
        ]
    )
    served = frozenset({"a", "b"})

    first = repo.claim(NOW, 5, "t1", LEASE, served)
    second = repo.claim(NOW, 5, "t2", LEASE, served)
    third = repo.claim(NOW, 5, "t3", LEASE, served)

    assert (len(first), len(second), len(third)) == (5, 3, 0)
    assert claimed_ids(first + second) == [f"{q}-{i}" for q in ("a", "b") for i in range(4)]
    assert all(job.locked_by is None for job in repo.list() if job.queue == "c")


def test_a_job_moved_to_another_queue_is_claimed_only_from_its_new_queue(repo):
    repo.add([date_job("mover", NOW - seconds(1), queue="a")])
    repo.add([date_job("mover", NOW - seconds(1), queue="b")])

    assert repo.claim(NOW, 10, "t1", LEASE, frozenset({"a"})) == []
    assert claimed_ids(repo.claim(NOW, 10, "t2", LEASE, frozenset({"b"}))) == ["mover"]


# --------------------------------------------------------------------------- paused queues


def test_set_queue_paused_says_whether_it_changed_the_queue(repo):
    assert repo.set_queue_paused("emails", True) is True
    assert repo.set_queue_paused("emails", True) is False
    assert repo.set_queue_paused("emails", False) is True
    assert repo.set_queue_paused("emails", False) is False
    assert repo.set_queue_paused("never-paused", False) is False


def test_paused_queues_names_exactly_the_paused_queues(repo):
    assert repo.paused_queues() == set()

    repo.set_queue_paused("emails", True)
    repo.set_queue_paused("reports", True)
    assert repo.paused_queues() == {"emails", "reports"}

    repo.set_queue_paused("emails", False)
    assert repo.paused_queues() == {"reports"}

    repo.set_queue_paused("reports", False)
    assert repo.paused_queues() == set()


def test_a_paused_queues_due_jobs_are_not_claimed_but_other_queues_are(repo):
    repo.add([date_job("mail", NOW - seconds(5), queue="emails"), date_job("plain", NOW)])
    repo.set_queue_paused("emails", True)

    assert claimed_ids(repo.claim(NOW, 10, "t1", LEASE)) == ["plain"]
    assert repo.claim(NOW, 10, "t2", LEASE, frozenset({"emails"})) == []
    assert repo.claim(NOW + seconds(3600), 10, "t3", LEASE, frozenset({"emails"})) == []
    assert repo.get("mail") == date_job("mail", NOW - seconds(5), queue="emails")


def test_a_resumed_queues_due_jobs_are_claimed_again(repo):
    repo.add([date_job("mail", NOW - seconds(5), queue="emails")])
    repo.set_queue_paused("emails", True)
    assert repo.claim(NOW, 10, "t1", LEASE) == []

    repo.set_queue_paused("emails", False)

    leases = repo.claim(NOW, 10, "t2", LEASE, frozenset({"emails"}))
    assert claimed_ids(leases) == ["mail"]
    assert leases[0].token == "t2"


def test_a_queue_paused_through_one_repository_is_paused_for_every_repository_of_the_store(
    repo, other_repo
):
    repo.add([date_job("mail", NOW - seconds(5), queue="emails")])

    assert repo.set_queue_paused("emails", True) is True

    assert other_repo.paused_queues() == {"emails"}
    assert other_repo.claim(NOW, 10, "other", LEASE) == []
    assert other_repo.set_queue_paused("emails", False) is True
    assert claimed_ids(repo.claim(NOW, 10, "t1", LEASE)) == ["mail"]


def test_a_queue_without_jobs_can_be_paused_and_is_listed_while_paused(repo):
    repo.add([date_job("plain", NOW)])

    assert repo.set_queue_paused("later", True) is True

    assert repo.paused_queues() == {"later"}
    assert backlog(repo.queue_stats(NOW)) == [
        QueueInfo("default", False, 1, 0),
        QueueInfo("later", True, 0, 0),
    ]

    repo.set_queue_paused("later", False)
    assert backlog(repo.queue_stats(NOW)) == [QueueInfo("default", False, 1, 0)]


def test_a_job_added_to_a_paused_queue_is_not_claimed(repo):
    repo.set_queue_paused("emails", True)
    repo.add([date_job("mail", NOW - seconds(5), queue="emails")])

    assert repo.claim(NOW, 10, "t1", LEASE) == []
    repo.set_queue_paused("emails", False)
    assert claimed_ids(repo.claim(NOW, 10, "t2", LEASE)) == ["mail"]


# --------------------------------------------------------------------------- next due


def test_next_due_counts_only_the_given_queues(repo):
    repo.add(
        [date_job("mail", NOW + seconds(10), queue="emails"), date_job("plain", NOW + seconds(5))]
    )

    assert repo.next_due() == NOW + seconds(5)
    assert repo.next_due(None) == NOW + seconds(5)
    assert repo.next_due(frozenset({"emails"})) == NOW + seconds(10)
    assert repo.next_due(frozenset({"emails", "default"})) == NOW + seconds(5)
    assert repo.next_due(frozenset({"reports"})) is None
    assert repo.next_due_delay(NOW) == 5.0
    assert repo.next_due_delay(NOW, frozenset({"emails"})) == 10.0
    assert repo.next_due_delay(NOW + seconds(12), frozenset({"emails"})) == -2.0
    assert repo.next_due_delay(NOW, frozenset({"reports"})) is None


def test_a_due_job_in_a_paused_queue_does_not_count_for_next_due(repo):
    repo.add(
        [date_job("mail", NOW + seconds(10), queue="emails"), date_job("plain", NOW - seconds(5))]
    )

    repo.set_queue_paused("default", True)

    assert repo.next_due() == NOW + seconds(10)
    assert repo.next_due(frozenset({"default"})) is None
    assert repo.next_due_delay(NOW) == 10.0
    assert repo.next_due_delay(NOW, frozenset({"default"})) is None

    repo.set_queue_paused("emails", True)
    assert repo.next_due() is None
    assert repo.next_due_delay(NOW) is None

    repo.set_queue_paused("default", False)
    assert repo.next_due() == NOW - seconds(5)
    assert repo.next_due_delay(NOW) == -5.0


# --------------------------------------------------------------------------- paused jobs


def _paused_after_its_run(ending: str) -> Job:
    """A recurring job paused while a run of it was in progress, once it is due again.

    ``'completed'``: the run completed (unlocked, due at its next run);
    ``'lease expired'``: its daemon died, the lease (its due time) ran out.
    """
    job = interval_job(
        "held",
        due=NOW,
        options={PAUSED_MARKER: True, "max_retries": 2},
        attempts=0,
        last_run_at=NOW - seconds(55),
        last_status="succeeded",
        queue="emails",
    )
    if ending == "lease expired":
        job = job.replace(
            due_at=NOW - seconds(1), next_run_at=NOW - seconds(60), locked_by="dead", attempts=1
        )
    return job


@pytest.mark.parametrize("ending", ["completed", "lease expired"])
def test_a_due_paused_job_is_claimed_as_a_paused_lease_and_taken_off_the_schedule(repo, ending):
    paused = _paused_after_its_run(ending)
    repo.add([paused, date_job("plain", NOW - seconds(1), queue="emails")])

    leases = {lease.job.id: lease for lease in repo.claim(NOW, 10, "t1", LEASE)}

    assert sorted(leases) == ["held", "plain"]
    held = leases["held"]
    assert held.paused is True
    assert held.token is None
    assert held.runnable is False
    assert held.scheduled_at == paused.next_run_at
    assert leases["plain"].paused is False
    assert leases["plain"].token == "t1"

    stored = repo.get("held")
    assert stored == paused.replace(due_at=None, locked_by=None)
    assert stored == held.job
    assert stored.state == "paused"
    assert stored.next_run_at == paused.next_run_at


@pytest.mark.parametrize("ending", ["completed", "lease expired"])
def test_a_paused_job_once_taken_off_the_schedule_is_never_claimed_again(repo, ending):
    repo.add([_paused_after_its_run(ending)])
    assert len(repo.claim(NOW, 10, "t1", LEASE)) == 1
    stored = repo.get("held")

    assert repo.claim(NOW + seconds(86400), 10, "t2", LEASE) == []
    assert repo.next_due() is None
    assert repo.get("held") == stored
    assert backlog(repo.queue_stats(NOW + seconds(86400))) == [QueueInfo("emails", False, 0, 0)]


def test_a_paused_job_stored_without_a_due_time_is_never_claimed(repo):
    repo.add([interval_job("held", options={PAUSED_MARKER: True}).replace(due_at=None)])

    assert repo.claim(NOW + seconds(86400), 10, "t1", LEASE) == []
    assert repo.next_due() is None


# --------------------------------------------------------------------------- queue stats


def test_queue_stats_counts_due_and_running_jobs_per_queue(repo):
    repo.add([date_job("e-leased", NOW - seconds(100), queue="emails")])
    assert claimed_ids(repo.claim(NOW, 1, "daemon-1", LEASE)) == ["e-leased"]
    repo.add(
        [
            date_job("e-due-1", NOW - seconds(5), queue="emails"),
            date_job("e-due-2", NOW, queue="emails"),
            date_job("e-future", NOW + seconds(5), queue="emails"),
            date_job("d-due", NOW - seconds(1)),
            date_job("d-parked", None),
            interval_job("d-paused", options={PAUSED_MARKER: True}).replace(due_at=None),
        ]
    )
    staged = date_job("r-staged", NOW - seconds(1), queue="reports")
    repo.stage([staged], [], f"{STAGED_PREFIX}tx-1", 30, NOW)
    repo.set_queue_paused("idle", True)

    assert backlog(repo.queue_stats(NOW)) == [
        QueueInfo("default", False, 1, 0),
        QueueInfo("emails", False, 2, 1),
        QueueInfo("idle", True, 0, 0),
        QueueInfo("reports", False, 0, 0),
    ]
    # Past the staging window: the staged row is still neither due nor running.
    assert backlog(repo.queue_stats(NOW + seconds(40))) == [
        QueueInfo("default", False, 1, 0),
        QueueInfo("emails", False, 3, 1),
        QueueInfo("idle", True, 0, 0),
        QueueInfo("reports", False, 0, 0),
    ]


def test_queue_stats_of_a_paused_queue_keep_its_counts(repo):
    repo.add([date_job("a", NOW - seconds(2), queue="emails"), date_job("b", NOW, queue="emails")])
    repo.claim(NOW, 1, "daemon-1", LEASE)

    repo.set_queue_paused("emails", True)

    assert backlog(repo.queue_stats(NOW)) == [QueueInfo("emails", True, 1, 1)]


def test_queue_stats_of_an_empty_store_is_empty(repo):
    assert repo.queue_stats(NOW) == []


# --------------------------------------------------------------------------- writing runs


def _claim_one(repo: Repository, job: Job, token: str = "t1") -> Lease:
    repo.add([job])
    leases = repo.claim(NOW, 10, token, LEASE)
    assert claimed_ids(leases) == [job.id]
    return leases[0]


def test_complete_writes_its_run_records_with_every_field(repo):
    lease = _claim_one(repo, date_job("once", NOW - seconds(2), queue="emails"))
    record = run_record(
        "once",
        NOW + seconds(1) + timedelta(microseconds=123456),
        outcome=RUN_FAILED,
        queue="emails",
        attempt=3,
        error="ValueError: boom\n  at line 2",
    )

    repo.complete([Outcome(lease, True, NOW + seconds(1))], [record])

    runs = repo.list_runs().runs
    assert [written(run) for run in runs] == [record]
    assert isinstance(runs[0].id, str)
    assert runs[0].id != ""
    assert runs[0].duration == record.duration
    assert repo.get("once") is None  # the outcome was applied too


def test_complete_writes_every_run_record_of_a_batch(repo):
    lease = _claim_one(repo, date_job("once", NOW - seconds(2)))
    records = [
        run_record("once", NOW + seconds(1)),
        run_record("other", NOW - seconds(30), outcome=RUN_SKIPPED, task="cleanup"),
        run_record("third", NOW - seconds(20), outcome=RUN_LEASE_LOST, attempt=2),
    ]

    repo.complete([Outcome(lease, True, NOW + seconds(1))], records)

    runs = repo.list_runs().runs
    assert sorted(map(written, runs), key=records.index) == records
    assert len({run.id for run in runs}) == 3


def test_run_records_keep_empty_daemon_fields_and_long_non_ascii_values(repo):
    records = [
        run_record("anonymous", NOW, host="", pid=0, worker=""),
        run_record(
            "j\u00f6b-\u2713-" + "x" * (MAX_JOB_ID_LENGTH - 6),
            NOW + seconds(1),
            outcome=RUN_FAILED,
            task="myapp.tasks.send_welcome_email",
            queue="emails.high-priority_2",
            attempt=12,
            error="ValueError: caf\u00e9 \U0001f525\n" + "\u00e9" * (MAX_RUN_ERROR_LENGTH - 20),
            host="h\u00f4te-" + "n" * 100,
            pid=2**31 - 1,
            worker="w\u00f6rker-0123456789ab",
        ),
    ]
    assert len(records[1].job_id) == MAX_JOB_ID_LENGTH
    assert len(records[1].error) <= MAX_RUN_ERROR_LENGTH

    repo.complete([], records)

    runs = {run.job_id: run for run in repo.list_runs()}
    assert {job_id: written(run) for job_id, run in runs.items()} == {
        record.job_id: record for record in records
    }


def test_complete_without_outcomes_writes_its_run_records(repo):
    record = run_record("gone", NOW - seconds(10), outcome=RUN_SKIPPED)

    repo.complete([], [record])

    assert [written(run) for run in repo.list_runs()] == [record]


def test_complete_without_runs_writes_no_record(repo):
    lease = _claim_one(repo, date_job("once", NOW - seconds(2)))

    repo.complete([Outcome(lease, True, NOW)])

    assert repo.get("once") is None
    assert repo.list_runs().runs == []


def test_a_run_record_is_written_even_when_its_lease_was_lost(repo):
    job = date_job("contested", NOW - seconds(2))
    lost = _claim_one(repo, job, token="daemon-1")
    # The first lease expired: another daemon took the job over.
    taken = repo.claim(NOW + seconds(LEASE + 1), 10, "daemon-2", LEASE)
    assert claimed_ids(taken) == ["contested"]
    record = run_record("contested", NOW + seconds(LEASE + 2), outcome=RUN_LEASE_LOST)

    repo.complete([Outcome(lost, True, NOW + seconds(LEASE + 2))], [record])

    assert [written(run) for run in repo.list_runs()] == [record]
    stored = repo.get("contested")
    assert stored is not None
    assert stored.locked_by == "daemon-2"


def test_complete_and_claim_writes_its_run_records_and_claims(repo):
    lease = _claim_one(repo, date_job("first", NOW - seconds(2)))
    repo.add([date_job("second", NOW + seconds(1))])
    records = [
        run_record("first", NOW + seconds(1)),
        run_record("gone", NOW, outcome=RUN_FAILED),
    ]

    leases = repo.complete_and_claim(
        [Outcome(lease, True, NOW + seconds(1))], NOW + seconds(1), 10, "t2", LEASE, runs=records
    )

    assert claimed_ids(leases) == ["second"]
    assert repo.get("first") is None
    runs = repo.list_runs().runs
    assert sorted(map(written, runs), key=records.index) == records


def test_complete_and_claim_claims_only_its_queues(repo):
    lease = _claim_one(repo, date_job("first", NOW - seconds(2), queue="emails"))
    repo.add([date_job("mail", NOW, queue="emails"), date_job("plain", NOW - seconds(1))])
    record = run_record("first", NOW + seconds(1), queue="emails")

    leases = repo.complete_and_claim(
        [Outcome(lease, True, NOW + seconds(1))],
        NOW + seconds(1),
        10,
        "t2",
        LEASE,
        queues=frozenset({"emails"}),
        runs=[record],
    )

    assert claimed_ids(leases) == ["mail"]
    assert [written(run) for run in repo.list_runs()] == [record]


def test_complete_and_claim_without_outcomes_writes_its_run_records(repo):
    repo.add([date_job("due", NOW)])
    record = run_record("gone", NOW - seconds(10), outcome=RUN_FAILED)

    leases = repo.complete_and_claim([], NOW, 10, "t1", LEASE, runs=[record])

    assert claimed_ids(leases) == ["due"]
    assert [written(run) for run in repo.list_runs()] == [record]


def test_complete_and_claim_writes_a_run_record_of_a_lost_lease(repo):
    lost = _claim_one(repo, date_job("contested", NOW - seconds(2)), token="daemon-1")
    assert len(repo.claim(NOW + seconds(LEASE + 1), 10, "daemon-2", LEASE)) == 1
    record = run_record("contested", NOW + seconds(LEASE + 2), outcome=RUN_LEASE_LOST)

    leases = repo.complete_and_claim(
        [Outcome(lost, False, NOW + seconds(LEASE + 2), "boom")],
        NOW + seconds(LEASE + 2),
        10,
        "daemon-1",
        LEASE,
        runs=[record],
    )

    assert leases == []
    assert [written(run) for run in repo.list_runs()] == [record]
    assert repo.get("contested").locked_by == "daemon-2"


#: Texts that are syntax in the encodings stores write records in (quotes,
#: backslashes, braces, commas, separators, the word NULL, JSON and array syntax).
SYNTAX_TEXTS = [
    'a"b',
    "back\\slash\\",
    "{braces},commas",
    "NULL",
    "null",
    '["json", {"x": 1}]',
    "two words\nand a line\ttab",
    "",
]


def _syntax_records(start: datetime) -> list[RunRecord]:
    """A record per :data:`SYNTAX_TEXTS` text, in every text field, plus one with no error."""
    records = [
        run_record(
            f"id {text}",
            start + seconds(i),
            outcome=RUN_FAILED,
            task=f"task {text}",
            queue=f"q{i}",
            error=text,
            host=f"host {text}",
            worker=f"worker {text}",
        )
        for i, text in enumerate(SYNTAX_TEXTS)
    ]
    return [*records, run_record("no error", start + seconds(len(records)), error=None)]


def test_run_records_whose_text_is_syntax_of_any_encoding_are_written_exactly(repo):
    by_complete = _syntax_records(NOW - seconds(100))
    by_claim = _syntax_records(NOW - seconds(50))

    repo.complete([], by_complete)
    repo.complete_and_claim([], NOW, 10, "t1", LEASE, runs=by_claim)

    runs = repo.list_runs(limit=100).runs
    assert sorted(map(written, runs), key=repr) == sorted(by_complete + by_claim, key=repr)
    errors = [run.error for run in runs if run.job_id == "id NULL"]
    assert errors == ["NULL", "NULL"]  # the text, not a missing error
    assert [run.error for run in runs if run.job_id == "no error"] == [None, None]


def test_a_batch_of_run_records_from_several_daemons_keeps_each_ones_daemon(repo):
    daemons = [("box-1", 11, "w-1"), ("box-1", 12, "w-2"), ("box-2", 11, "w-1"), ("", 0, "")]
    by_complete = [
        run_record(f"c{i}", NOW + seconds(i), host=host, pid=pid, worker=worker)
        for i, (host, pid, worker) in enumerate(daemons)
    ]
    by_claim = [
        run_record(f"k{i}", NOW + seconds(i), host=host, pid=pid, worker=worker)
        for i, (host, pid, worker) in enumerate(daemons)
    ]

    repo.complete([], by_complete)
    repo.complete_and_claim([], NOW, 10, "t1", LEASE, runs=by_claim)

    stored = {run.job_id: written(run) for run in repo.list_runs()}
    assert stored == {record.job_id: record for record in by_complete + by_claim}


UNSTORABLE_ERRORS = {
    "nul": "ValueError: a\x00b\nsecond line",
    "lone surrogate": "UnicodeError: \ud800 alone\nsecond line",
    "100 kB": "RuntimeError: huge\n" + "x" * 100_000,
    "100 kB of lines": "".join(f"line {i} \x00 \udfff\n" for i in range(10_000)),
}


def _check_stored_error(stored: str | None) -> None:
    assert isinstance(stored, str)
    assert stored != ""
    assert len(stored) <= MAX_RUN_ERROR_LENGTH
    # Nothing a store cannot hold (NUL, lone surrogates) comes back.
    assert storable_text(stored, None) == stored


@pytest.mark.parametrize("error", list(UNSTORABLE_ERRORS.values()), ids=list(UNSTORABLE_ERRORS))
def test_a_run_records_error_is_stored_bounded(repo, error):
    repo.complete([], [run_record("bad", outcome=RUN_FAILED, error=error)])

    runs = repo.list_runs().runs
    assert len(runs) == 1
    _check_stored_error(runs[0].error)
    if len(error) <= MAX_RUN_ERROR_LENGTH:
        # Short text keeps every character a store can hold.
        assert runs[0].error == storable_text(error, None)
    assert written(runs[0]) == run_record("bad", outcome=RUN_FAILED, error=runs[0].error)


def test_unstorable_errors_never_fail_the_batch_they_are_written_in(repo):
    lease = _claim_one(repo, date_job("once", NOW - seconds(2)))
    good = run_record("once", NOW + seconds(1))
    bad = [
        run_record(f"bad-{name}", NOW, outcome=RUN_FAILED, error=error)
        for name, error in UNSTORABLE_ERRORS.items()
    ]

    repo.complete_and_claim(
        [Outcome(lease, True, NOW + seconds(1))], NOW, 10, "t2", LEASE, runs=[*bad, good]
    )

    runs = {run.job_id: run for run in repo.list_runs()}
    assert sorted(runs) == sorted(["once", *(record.job_id for record in bad)])
    assert written(runs["once"]) == good
    for record in bad:
        _check_stored_error(runs[record.job_id].error)
    assert repo.get("once") is None


# --------------------------------------------------------------------------- listing runs


def _write_one_by_one(repo: Repository, records: list[RunRecord]) -> None:
    """Write ``records`` in this order, one store call each."""
    for record in records:
        repo.complete([], [record])


def test_list_runs_returns_the_newest_first(repo):
    records = [run_record(f"job-{i}", NOW + seconds(i)) for i in range(5)]
    _write_one_by_one(repo, records)

    page = repo.list_runs()

    assert [written(run) for run in page] == records[::-1]
    assert page.next_cursor is None
    assert len({run.id for run in page}) == 5


def test_list_runs_orders_by_write_not_by_finish_time(repo):
    records = [
        run_record("late", NOW + seconds(100)),
        run_record("early", NOW - seconds(100)),
        run_record("middle", NOW),
    ]
    _write_one_by_one(repo, records)

    assert [run.job_id for run in repo.list_runs()] == ["middle", "early", "late"]


MIXED_RUNS = [
    run_record("a", NOW + seconds(1), task="t1", queue="q1"),
    run_record("b", NOW + seconds(2), outcome=RUN_FAILED, task="t1", queue="q2"),
    run_record("a", NOW + seconds(3), outcome=RUN_FAILED, task="t1", queue="q1", attempt=2),
    run_record("c", NOW + seconds(4), outcome=RUN_LEASE_LOST, task="t2", queue="q2"),
    run_record("b", NOW + seconds(5), outcome=RUN_SKIPPED, task="t1", queue="q2"),
    run_record("d", NOW + seconds(6), task="t2", queue="q1"),
    run_record("b", NOW + seconds(7), outcome=RUN_FAILED, task="t1", queue="q2", attempt=2),
]


def _expected(**filters) -> list[RunRecord]:
    """The records of :data:`MIXED_RUNS` matching ``filters``, newest first."""
    outcomes = filters.pop("outcomes", None)
    return [
        record
        for record in reversed(MIXED_RUNS)
        if all(getattr(record, name) == value for name, value in filters.items())
        and (outcomes is None or record.outcome in outcomes)
    ]


@pytest.mark.parametrize(
    "filters",
    [
        {"job_id": "b"},
        {"job_id": "a"},
        {"task": "t2"},
        {"queue": "q1"},
        {"outcomes": {RUN_FAILED}},
        {"outcomes": [RUN_FAILED, RUN_LEASE_LOST]},
        {"outcomes": (RUN_SUCCEEDED, RUN_SKIPPED)},
        {"task": "t1", "queue": "q2", "outcomes": {RUN_FAILED}},
        {"job_id": "b", "outcomes": {RUN_SKIPPED}},
        {"job_id": "a", "task": "t1", "queue": "q1"},
    ],
    ids=lambda filters: "-".join(sorted(filters)),
)
def test_list_runs_keeps_the_runs_matching_every_filter(repo, filters):
    _write_one_by_one(repo, MIXED_RUNS)

    page = repo.list_runs(**filters)

    assert [written(run) for run in page] == _expected(**dict(filters))
    assert page.next_cursor is None


@pytest.mark.parametrize(
    "filters",
    [{"job_id": "nobody"}, {"task": "t3"}, {"queue": "q3"}, {"outcomes": set()}],
    ids=["job_id", "task", "queue", "no-outcomes"],
)
def test_list_runs_matching_nothing_is_an_empty_last_page(repo, filters):
    _write_one_by_one(repo, MIXED_RUNS)

    page = repo.list_runs(**filters)

    assert page.runs == []
    assert page.next_cursor is None


def test_list_runs_of_an_empty_history_is_an_empty_last_page(repo):
    page = repo.list_runs()

    assert page.runs == []
    assert page.next_cursor is None


def test_list_runs_returns_at_most_limit_records_and_a_cursor_when_there_are_more(repo):
    _write_one_by_one(repo, MIXED_RUNS)

    page = repo.list_runs(limit=3)
    assert [written(run) for run in page] == _expected()[:3]
    assert page.next_cursor is not None

    whole = repo.list_runs(limit=len(MIXED_RUNS))
    assert [written(run) for run in whole] == _expected()
    assert whole.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage", "", "1.5", "-", "0x10", "\u0661"])
def test_list_runs_refuses_a_cursor_no_page_of_the_store_gave(repo, cursor):
    repo.complete([], [run_record("job-1", NOW)])
    with pytest.raises(ValueError, match="next_cursor of a page"):
        repo.list_runs(cursor=cursor)


def test_list_runs_pages_cover_every_record_exactly_once(repo):
    records = [run_record(f"job-{i:02d}", NOW + seconds(i)) for i in range(25)]
    for start in range(0, 25, 5):
        repo.complete([], records[start : start + 5])

    pages = run_pages(repo, 10)

    assert [len(page) for page in pages] == [10, 10, 5]
    runs = [run for page in pages for run in page]
    assert runs == repo.list_runs(limit=100).runs
    assert sorted(run.job_id for run in runs) == [record.job_id for record in records]
    assert len({run.id for run in runs}) == 25


def test_list_runs_pages_with_filters_cover_exactly_the_matching_records(repo):
    _write_one_by_one(repo, MIXED_RUNS * 3)
    expected = [
        record
        for record in reversed(MIXED_RUNS * 3)
        if record.queue == "q2" and record.outcome in (RUN_FAILED, RUN_LEASE_LOST)
    ]

    pages = run_pages(repo, 2, queue="q2", outcomes={RUN_FAILED, RUN_LEASE_LOST})

    assert [written(run) for page in pages for run in page] == expected
    assert [len(page) for page in pages] == [2, 2, 2, 2, 1]


def test_runs_written_after_a_page_was_read_do_not_appear_on_its_next_pages(repo):
    _write_one_by_one(repo, MIXED_RUNS)
    first = repo.list_runs(limit=4)

    repo.complete([], [run_record("newer", NOW + seconds(100))])
    page = repo.list_runs(cursor=first.next_cursor, limit=100)

    assert [written(run) for run in first] + [written(run) for run in page] == _expected()
    assert repo.list_runs(limit=1).runs[0].job_id == "newer"


# --------------------------------------------------------------------------- pruning runs


def test_prune_runs_deletes_at_most_limit_old_records_per_call(repo):
    before = NOW - seconds(3600)
    old = [run_record(f"old-{i}", before - seconds(100 - i)) for i in range(10)]
    kept = [
        run_record("boundary", before),
        run_record("new-1", NOW - seconds(10)),
        run_record("new-2", NOW),
    ]
    _write_one_by_one(repo, old + kept)

    counts = [repo.prune_runs(before, 4) for _ in range(4)]

    assert counts == [4, 4, 2, 0]
    assert [written(run) for run in all_runs(repo)] == kept[::-1]


def test_prune_runs_keeps_every_record_it_does_not_count(repo):
    before = NOW - seconds(3600)
    old = [run_record(f"old-{i}", before - seconds(100 - i)) for i in range(6)]
    new = [run_record(f"new-{i}", NOW + seconds(i)) for i in range(3)]
    _write_one_by_one(repo, old + new)

    pruned = repo.prune_runs(before, 4)

    remaining = all_runs(repo)
    assert pruned == 4
    assert len(remaining) == 9 - 4
    assert {run.job_id for run in remaining} >= {record.job_id for record in new}
    assert all(run.job_id.startswith(("old-", "new-")) for run in remaining)


def test_prune_runs_of_recent_records_deletes_nothing(repo):
    records = [run_record(f"new-{i}", NOW + seconds(i)) for i in range(3)]
    _write_one_by_one(repo, records)

    assert repo.prune_runs(NOW, 100) == 0
    assert [written(run) for run in all_runs(repo)] == records[::-1]


def test_prune_runs_of_an_empty_history_deletes_nothing(repo):
    assert repo.prune_runs(NOW, 100) == 0


# --------------------------------------------------------------------------- Job.queue


def test_a_jobs_queue_round_trips_through_add_get_and_list(repo):
    jobs = [
        date_job("a-mail", NOW, queue="emails"),
        interval_job("b-report", queue="reports.daily-2"),
        date_job("c-plain", NOW),
        date_job("d-explicit", NOW, queue=DEFAULT_QUEUE),
    ]
    repo.add(jobs)

    assert [repo.get(job.id) for job in jobs] == jobs
    assert [repo.get(job.id).queue for job in jobs] == [
        "emails",
        "reports.daily-2",
        "default",
        "default",
    ]
    assert repo.list().jobs == jobs
    assert repo.get_many([job.id for job in jobs]) == {job.id: job for job in jobs}


def test_a_job_without_a_queue_is_in_the_default_queue(repo):
    job = Job(id="plain", task="record", schedule=DateSchedule(NOW).to_json(), due_at=NOW)
    repo.add([job])

    stored = repo.get("plain")
    assert stored is not None
    assert stored.queue == DEFAULT_QUEUE == "default"
    leases = repo.claim(NOW, 10, "t1", LEASE, frozenset({"default"}))
    assert claimed_ids(leases) == ["plain"]
    assert leases[0].job.queue == "default"


def test_a_claimed_jobs_lease_and_row_keep_its_queue(repo):
    lease = _claim_one(repo, interval_job("every", due=NOW - seconds(1), queue="emails"))

    assert lease.job.queue == "emails"
    repo.complete([Outcome(lease, True, NOW)])
    stored = repo.get("every")
    assert stored.queue == "emails"
    assert stored.locked_by is None
    assert backlog(repo.queue_stats(NOW)) == [QueueInfo("emails", False, 0, 0)]


def test_a_staged_then_published_job_keeps_its_queue(repo):
    job = date_job("mail", NOW - seconds(1), queue="emails")
    token = f"{STAGED_PREFIX}tx-1"

    repo.stage([job], [], token, 30, NOW)
    assert repo.get("mail").queue == "emails"
    repo.publish(token, [job])

    assert repo.get("mail") == job
    assert repo.claim(NOW, 10, "t1", LEASE, frozenset({"default"})) == []
    assert claimed_ids(repo.claim(NOW, 10, "t2", LEASE, frozenset({"emails"}))) == ["mail"]


def test_a_failed_run_is_retried_from_its_own_queue(repo):
    lease = _claim_one(repo, date_job("mail", NOW - seconds(1), queue="emails"))

    repo.complete([Outcome(lease, False, NOW, "ValueError: boom")])

    retrying = repo.get("mail")
    assert retrying.state == "retrying"
    assert retrying.queue == "emails"
    later = retrying.due_at
    assert repo.claim(later, 10, "t2", LEASE, frozenset({"default"})) == []
    assert claimed_ids(repo.claim(later, 10, "t3", LEASE, frozenset({"emails"}))) == ["mail"]


def test_a_released_job_is_claimed_again_from_its_own_queue(repo):
    lease = _claim_one(repo, date_job("mail", NOW - seconds(1), queue="emails"))

    repo.release([lease])

    assert repo.get("mail") == date_job("mail", NOW - seconds(1), queue="emails")
    assert repo.claim(NOW, 10, "t2", LEASE, frozenset({"default"})) == []
    assert claimed_ids(repo.claim(NOW, 10, "t3", LEASE, frozenset({"emails"}))) == ["mail"]
