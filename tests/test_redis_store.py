"""The Redis store, against a real ``redis-server`` (the session's ``redis_server``).

Besides one test per contract method, a randomised comparison drives the
same operations through :class:`MemoryRepository` (the reference) and
:class:`RedisRepository` and requires identical results.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

redis = pytest.importorskip("redis", reason="the Redis store tests need redis-py")

from redis.crc import key_slot  # noqa: E402

from pyramid_pyncette.jobs import Job, Lease, Outcome, QueueInfo, RunRecord  # noqa: E402
from pyramid_pyncette.options import FailureMode  # noqa: E402
from pyramid_pyncette.policy import plan_claim  # noqa: E402
from pyramid_pyncette.repository.base import RepositoryError  # noqa: E402
from pyramid_pyncette.repository.memory import MemoryRepository  # noqa: E402
from pyramid_pyncette.repository.redis import RedisRepository, redact_url  # noqa: E402
from pyramid_pyncette.schedules import CronSchedule, DateSchedule, IntervalSchedule  # noqa: E402
from tests.queue_counts import backlog  # noqa: E402
from tests.servers import RedisServer, start_redis  # noqa: E402

UTC = timezone.utc
NOW = datetime(2030, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)


def micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // MICROSECOND


def date_job(job_id: str, due: datetime | None = NOW, task: str = "record", **changes) -> Job:
    run_at = due or NOW
    job = Job(
        id=job_id,
        task=task,
        schedule=DateSchedule(run_at).to_json(),
        due_at=due,
        next_run_at=due,
        created_at=NOW,
    )
    return job.replace(**changes)


def interval_job(job_id: str, seconds: float = 10, due: datetime = NOW, **changes) -> Job:
    schedule = IntervalSchedule(timedelta(seconds=seconds), start_date=due).to_json()
    job = Job(
        id=job_id,
        task="record",
        schedule=schedule,
        due_at=due,
        next_run_at=due,
        created_at=NOW,
    )
    return job.replace(**changes)


def namespace_keys(client, namespace: str) -> set[str]:
    return {key.decode() for key in client.scan_iter(match="{" + namespace + "}:*")}


def meta_key(namespace: str) -> str:
    """The key recording the namespace's partition count: it stays when the jobs go."""
    return "{" + namespace + "}:meta"


@pytest.fixture
def server(redis_server):
    redis_server.start()  # a no-op unless an earlier test stopped it
    return redis_server


@pytest.fixture
def raw(server):
    """A plain client of the test server (bytes in, bytes out)."""
    with server.client() as client:
        yield client


@pytest.fixture
def make_repo(server, raw):
    """``make_repo(namespace=None, **kwargs)``: a set-up store in a namespace of its own.

    One partition unless ``partitions`` says otherwise: these tests read and
    write the keys the module docstring names (``{ns}:jobs``...), the layout
    of a store of one partition; tests/test_redis_partitions.py covers stores
    of several (and the conformance suite runs on the default 16).
    """
    made: list[RedisRepository] = []

    def make(namespace: str | None = None, **kwargs) -> RedisRepository:
        kwargs.setdefault("store_clock", False)
        kwargs.setdefault("partitions", 1)
        repo = RedisRepository(
            server.url, namespace=namespace or f"t_{uuid.uuid4().hex[:10]}", **kwargs
        )
        repo.setup()
        made.append(repo)
        return repo

    yield make

    for repo in made:
        for key in raw.scan_iter(match="{" + repo.namespace + "[}:]*"):
            raw.delete(key)
        repo.close()


@pytest.fixture
def repo(make_repo) -> RedisRepository:
    return make_repo()


# --------------------------------------------------------------------------- encoding


def test_every_job_field_round_trips_exactly(repo, raw):
    job = Job(
        id="every/field é 😀",
        task="pkg.module:task",
        schedule=CronSchedule("*/5 * * * *", timezone="Europe/Ljubljana").to_json(),
        args=[[], {}, 0.1, 1e-300, 2**70, -(2**63), None, True, 'ü\n"/\\', {"": [{}]}],
        kwargs={"z": 1, "a": {"nested": []}, "uni": "😀"},
        options={
            "execution_mode": "at_least_once",
            "failure_mode": "unlock",
            "lease_duration": 0.5,
        },
        due_at=datetime(2030, 5, 6, 7, 8, 9, 123457, tzinfo=UTC),
        next_run_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        locked_by="token-1",
        attempts=3,
        last_run_at=datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        last_status="failed",
        last_error='Traceback ...\nValueError: "bad" / ünïcode 😀\t\x01',
        created_at=datetime(2029, 12, 31, 23, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2))),
        partition=7,
    )
    repo.add([job])

    stored = repo.get(job.id)
    assert stored == job
    assert stored.kwargs == job.kwargs and list(stored.kwargs) == list(job.kwargs)
    for name in ("due_at", "next_run_at", "last_run_at", "created_at"):
        assert getattr(stored, name).tzinfo is UTC
    assert stored.created_at == datetime(2029, 12, 31, 21, 0, 0, 654321, tzinfo=UTC)

    # Datetimes are integer microseconds (as strings), the rest of the job is a JSON string.
    doc = json.loads(raw.hget("{" + repo.namespace + "}:jobs", job.id))
    assert doc["due_at"] == str(micros(job.due_at))
    assert doc["lease_us"] == 500_000
    assert json.loads(doc["job"])["args"] == job.args

    # A script rewrites the document (claim, then a note): everything is still exact.
    job = job.replace(locked_by=None, due_at=NOW)
    repo.add([job])
    (lease,) = repo.claim(NOW, 10, "tok", 60)
    assert lease.job.next_run_at == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert (
        repo.get(job.id)
        == lease.job
        == job.replace(locked_by="tok", attempts=4, due_at=NOW + timedelta(seconds=0.5))
    )
    repo.complete([Outcome(lease, False, NOW, error="again 😀")])  # unlock: settles the row
    assert repo.get(job.id) == lease.job.replace(
        locked_by=None,
        due_at=NOW,
        last_run_at=NOW,
        last_status="failed",
        last_error="again 😀",
    )


def test_naive_datetimes_are_refused_before_anything_is_written(repo):
    good = date_job("good")
    naive = date_job("naive").replace(due_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.add([good, naive])
    assert repo.get("good") is None


def test_lone_surrogates_in_error_text_do_not_break_the_store(repo):
    repo.add([date_job("a")])
    (lease,) = repo.claim(NOW, 1, "t", 60)
    repo.complete([Outcome(lease, False, NOW, error="bad \ud800 text")])
    assert repo.get("a").last_error == "bad \ufffd text"
    assert [lease.job.id for lease in repo.claim(NOW + 61 * SECOND, 1, "t2", 60)] == ["a"]


# --------------------------------------------------------------------------- add / remove


def test_add_writes_the_job_and_every_index(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("b", NOW + SECOND), date_job("a", None, task="other")])

    assert raw.zrange(f"{ns}:ids", 0, -1, withscores=True) == [(b"a", 0.0), (b"b", 0.0)]
    assert raw.zrange(f"{ns}:due", 0, -1, withscores=True) == [(b"b", float(micros(NOW + SECOND)))]
    assert raw.zrange(f"{ns}:task:record", 0, -1) == [b"b"]
    assert raw.zrange(f"{ns}:task:other", 0, -1) == [b"a"]
    assert sorted(raw.hkeys(f"{ns}:jobs")) == [b"a", b"b"]


def test_add_replaces_or_keeps_existing_jobs(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("a", NOW, args=["old"])])

    repo.add([date_job("a", NOW, args=["kept?"])], replace=False)
    assert repo.get("a").args == ["old"]

    repo.add([date_job("a", None, task="moved", args=["new"])])
    assert repo.get("a") == date_job("a", None, task="moved", args=["new"])
    assert raw.exists(f"{ns}:task:record") == 0
    assert raw.zrange(f"{ns}:task:moved", 0, -1) == [b"a"]
    assert raw.zscore(f"{ns}:due", "a") is None
    assert repo.next_due() is None


def test_later_duplicates_in_one_batch_win_only_when_replacing(repo):
    memory = MemoryRepository()
    for store in (memory, repo):
        store.add([date_job("a", args=[1]), date_job("a", args=[2])], replace=False)
        store.add([date_job("b", args=[1]), date_job("b", args=[2], task="x")])
    for job_id in ("a", "b"):
        assert repo.get(job_id) == memory.get(job_id)
    assert repo.get("a").args == [1]
    assert repo.get("b").task == "x"


def test_remove_returns_the_ids_that_existed_and_clears_every_index(repo, raw):
    repo.add([date_job("a"), date_job("b", task="other"), date_job("c", None)])

    assert repo.remove(["a", "b", "c", "missing", "a"]) == {"a", "b", "c"}
    assert repo.remove(["a"]) == set()
    assert repo.remove([]) == set()
    assert namespace_keys(raw, repo.namespace) == {meta_key(repo.namespace)}


def test_apply_removes_then_adds_in_one_atomic_write(repo):
    repo.add([date_job("gone"), date_job("same", args=["old"]), date_job("kept")])

    repo.apply([date_job("same", task="new", args=["new"]), date_job("fresh")], ["gone", "same"])

    assert sorted(job.id for job in repo.list()) == ["fresh", "kept", "same"]
    assert repo.get("same").args == ["new"]
    assert [job.id for job in repo.list(task="new")] == ["same"]
    repo.apply([], [])


def test_a_write_missing_a_task_key_changes_nothing_and_names_the_task(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("a", task="hidden")])
    before = {key: raw.dump(key) for key in namespace_keys(raw, repo.namespace)}

    payload = json.dumps([{"o": "del", "id": "a"}])
    keys = [f"{ns}:jobs", f"{ns}:due", f"{ns}:ids"]
    result = repo._write_ops(keys=keys, args=[f"{ns}:task:", payload])

    assert result == ["missing", "hidden"]
    assert {key: raw.dump(key) for key in namespace_keys(raw, repo.namespace)} == before
    assert repo.remove(["a"]) == {"a"}


def test_a_write_that_never_finds_its_task_keys_gives_up(repo, monkeypatch):
    repo.add([date_job("a")])
    monkeypatch.setattr(repo, "_write_ops", lambda keys, args: ["missing", "always-another"])
    with pytest.raises(RepositoryError, match="nothing was written"):
        repo.remove(["a"])


# --------------------------------------------------------------------------- reads


def test_get_and_get_many(repo):
    a, b = date_job("a"), date_job("b", None)
    repo.add([a, b])

    assert repo.get("a") == a
    assert repo.get("nope") is None
    assert repo.get_many(["b", "nope", "a", "b"]) == {"a": a, "b": b}
    assert repo.get_many([]) == {}


def test_list_pages_in_id_order_with_an_exclusive_cursor_and_a_task_filter(repo):
    ids = ["a", "B", "b", "b-1", "é", "Z", "zz", "😀", "0"]
    repo.add([date_job(job_id, task="even" if n % 2 else "odd") for n, job_id in enumerate(ids)])
    ordered = sorted(ids)

    seen, cursor, pages = [], None, 0
    while True:
        page = repo.list(cursor=cursor, limit=4)
        seen.extend(job.id for job in page)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ordered
    assert pages == 3

    page = repo.list(cursor="b", limit=100)
    assert [job.id for job in page] == [i for i in ordered if i > "b"]
    assert page.next_cursor is None

    odd = [i for n, i in enumerate(ids) if n % 2 == 0]
    first = repo.list(task="odd", limit=2)
    assert [job.id for job in first] == sorted(odd)[:2]
    assert first.next_cursor == sorted(odd)[1]
    rest = repo.list(task="odd", cursor=first.next_cursor, limit=10)
    assert [job.id for job in rest] == sorted(odd)[2:]
    assert rest.next_cursor is None
    assert list(repo.list(task="none")) == []
    exact = repo.list(limit=len(ids))
    assert len(exact) == len(ids) and exact.next_cursor is None


def test_next_due_is_the_earliest_due_time_exactly(repo):
    assert repo.next_due() is None
    far = datetime(9000, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    repo.add([date_job("far", far), date_job("parked", None)])
    assert repo.next_due() == far
    repo.add([date_job("soon", NOW + MICROSECOND)])
    assert repo.next_due() == NOW + MICROSECOND
    repo.remove(["soon"])
    assert repo.next_due() == far


# --------------------------------------------------------------------------- claim


def test_claim_leases_due_jobs_in_due_order(repo):
    repo.add(
        [
            date_job("late", NOW),
            date_job("b", NOW - SECOND),
            date_job("a", NOW - SECOND),
            date_job("future", NOW + MICROSECOND),
            date_job("own-lease", NOW - 2 * SECOND, options={"lease_duration": 12.3456789}),
        ]
    )
    before = repo.get_many(["own-lease", "a", "b", "late"])

    leases = repo.claim(NOW, 3, "tok", 60)

    assert [lease.job.id for lease in leases] == ["own-lease", "a", "b"]
    for lease in leases:
        expected = plan_claim(before[lease.job.id], NOW, "tok", 60).lease
        assert lease == expected
        assert repo.get(lease.job.id) == lease.job
        assert (lease.token, lease.attempt, lease.job.locked_by) == ("tok", 1, "tok")
    assert leases[0].job.due_at == NOW + timedelta(microseconds=12_345_679)
    assert leases[1].job.due_at == NOW + 60 * SECOND
    assert leases[1].scheduled_at == NOW - SECOND

    assert [lease.job.id for lease in repo.claim(NOW, 10, "tok2", 60)] == ["late"]
    assert repo.claim(NOW, 10, "tok3", 60) == []
    assert repo.claim(NOW + 100 * SECOND, 0, "tok4", 60) == []


def test_an_expired_lease_is_claimed_again_for_the_same_run(repo):
    repo.add([date_job("a")])
    repo.claim(NOW, 1, "first", 30)

    assert repo.claim(NOW + 30 * SECOND - MICROSECOND, 1, "second", 30) == []
    (lease,) = repo.claim(NOW + 30 * SECOND, 1, "second", 30)

    assert (lease.token, lease.attempt, lease.scheduled_at) == ("second", 2, NOW)
    assert repo.get("a").due_at == NOW + 60 * SECOND


def test_at_most_once_jobs_are_advanced_or_deleted_before_they_run(repo, raw):
    ns = "{" + repo.namespace + "}"
    once = {"execution_mode": "at_most_once"}
    repo.add([date_job("one-off", options=once), interval_job("recurring", 10, options=once)])

    leases = {lease.job.id: lease for lease in repo.claim(NOW + 25 * SECOND, 10, "tok", 60)}

    one_off, recurring = leases["one-off"], leases["recurring"]
    assert (one_off.token, one_off.attempt, one_off.scheduled_at) == (None, 1, NOW)
    assert one_off.job.locked_by is None
    assert repo.get("one-off") is None
    assert raw.zscore(f"{ns}:ids", "one-off") is None
    assert raw.zscore(f"{ns}:task:record", "one-off") is None

    assert (recurring.token, recurring.attempt, recurring.scheduled_at) == (None, 1, NOW)
    stored = repo.get("recurring")
    following = NOW + 30 * SECOND
    assert (stored.due_at, stored.next_run_at, stored.attempts, stored.locked_by) == (
        following,
        following,
        0,
        None,
    )
    assert raw.zscore(f"{ns}:due", "recurring") == micros(following)

    # Completing an at-most-once run only notes its status, by id alone.
    repo.complete([Outcome(recurring, False, NOW + 26 * SECOND, error="x")])
    noted = repo.get("recurring")
    assert (noted.last_status, noted.last_error, noted.due_at) == ("failed", "x", following)


def test_an_at_most_once_job_replaced_between_the_two_calls_is_not_run(
    repo, make_repo, monkeypatch
):
    once = {"execution_mode": "at_most_once"}
    repo.add([date_job("taken", options=once), date_job("mine", options=once)])
    other_process = make_repo(namespace=repo.namespace)
    write = repo._write

    def racing(ops, tasks, *args, **kwargs):
        other_process.add([date_job("taken", NOW + 3600 * SECOND, options=once)])
        return write(ops, tasks, *args, **kwargs)

    monkeypatch.setattr(repo, "_write", racing)
    leases = repo.claim(NOW, 10, "tok", 60)

    assert [lease.job.id for lease in leases] == ["mine"]
    assert repo.get("taken").due_at == NOW + 3600 * SECOND
    assert repo.get("mine") is None


# --------------------------------------------------------------------------- complete


def test_complete_applies_every_kind_of_plan_in_one_call(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add(
        [
            date_job("done"),
            interval_job("recurring", 10),
            date_job("unlock", options={"failure_mode": "unlock"}),
            date_job("keep", options={"failure_mode": "none"}),
            date_job("parked", task="other"),
            date_job("stolen"),
        ]
    )
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 10, "tok", 60)}
    later = NOW + 5 * SECOND
    forged = Lease(leases["stolen"].job, NOW, "someone-else")

    repo.complete(
        [
            Outcome(leases["done"], True, later),
            Outcome(leases["recurring"], True, later),
            Outcome(leases["unlock"], False, later, error="boom"),
            Outcome(leases["keep"], False, later, error="kept"),
            Outcome(leases["parked"], False, later, error="no task", permanent=True),
            Outcome(forged, True, later),
        ]
    )

    assert repo.get("done") is None
    recurring = repo.get("recurring")
    assert (recurring.due_at, recurring.next_run_at, recurring.attempts) == (
        NOW + 10 * SECOND,
        NOW + 10 * SECOND,
        0,
    )
    assert (recurring.locked_by, recurring.last_status, recurring.last_run_at) == (
        None,
        "succeeded",
        later,
    )
    unlock = repo.get("unlock")
    assert (unlock.locked_by, unlock.due_at, unlock.attempts, unlock.last_error) == (
        None,
        later,
        1,
        "boom",
    )
    keep = repo.get("keep")
    assert (keep.locked_by, keep.due_at, keep.last_error) == ("tok", NOW + 60 * SECOND, "kept")
    parked = repo.get("parked")
    assert (parked.state, parked.due_at, parked.next_run_at, parked.locked_by) == (
        "failed",
        None,
        None,
        None,
    )
    assert raw.zscore(f"{ns}:due", "parked") is None
    assert raw.zscore(f"{ns}:task:other", "parked") == 0
    assert repo.get("stolen") == leases["stolen"].job
    repo.complete([])


# --------------------------------------------------------------------------- extend / release


def test_extend_renews_only_leases_still_held(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("a"), date_job("b")])
    repo.claim(NOW, 10, "tok", 60)

    held = repo.extend(
        NOW + SECOND, [("a", "tok", 90), ("b", "intruder", 500), ("missing", "tok", 5)]
    )

    assert held == {"a"}
    assert repo.get("a").due_at == NOW + 91 * SECOND
    assert raw.zscore(f"{ns}:due", "a") == micros(NOW + 91 * SECOND)
    assert repo.get("b").due_at == NOW + 60 * SECOND
    assert repo.extend(NOW, []) == set()


def test_release_gives_back_unstarted_runs(repo):
    repo.add([date_job("a", NOW - SECOND), date_job("b", NOW - SECOND)])
    leases = repo.claim(NOW, 10, "tok", 60)
    forged = Lease(leases[1].job, leases[1].scheduled_at, "other")

    repo.release([leases[0], forged, Lease(leases[1].job, NOW, None)])

    a = repo.get("a")
    assert (a.locked_by, a.due_at, a.attempts, a.next_run_at) == (None, NOW - SECOND, 0, a.due_at)
    assert repo.get("b") == leases[1].job
    assert repo.next_due() == NOW - SECOND
    repo.release([])


# --------------------------------------------------------------------------- garbage queues


def edit_document(raw, repo, job_id: str, **changes) -> None:
    """Overwrite fields of the stored document of ``job_id``, bypassing the store."""
    key = "{" + repo.namespace + "}:jobs"
    doc = json.loads(raw.hget(key, job_id))
    doc.update(changes)
    raw.hset(key, job_id, json.dumps(doc))


@pytest.mark.parametrize(
    ("queue", "words"),
    [
        pytest.param(5, "queue is 5 (int)", id="number"),
        pytest.param(["emails"], "queue is ['emails'] (list)", id="list"),
        pytest.param("a}b{c", "queue is 'a}b{c' (str)", id="brace"),
        pytest.param("two words", "queue is 'two words' (str)", id="space"),
        pytest.param("", "queue is '' (str)", id="empty"),
        pytest.param("q" * 65, "not a queue name", id="too-long"),
    ],
)
def test_a_document_whose_queue_is_garbage_is_parked_and_the_others_run(repo, raw, queue, words):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("garbage", NOW - SECOND), date_job("good"), date_job("mail", queue="q")])
    edit_document(raw, repo, "garbage", queue=queue)

    listed = repo.get("garbage")
    assert listed.queue == "default" and words in listed.problem
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 10, "t", 60)}
    assert sorted(leases) == ["garbage", "good", "mail"]
    assert words in leases["garbage"].job.problem and not leases["garbage"].runnable
    assert leases["good"].job.problem is None and leases["mail"].job.problem is None
    assert backlog(repo.queue_stats(NOW)) == [
        QueueInfo("default", False, 0, 2),
        QueueInfo("q", False, 0, 1),
    ]

    # The worker parks it: counted in the default queue, whose keys it used all along.
    garbage = leases["garbage"]
    repo.complete([Outcome(garbage, False, NOW, error=garbage.job.problem, permanent=True)])
    assert repo.get("garbage").due_at is None
    assert raw.zscore(f"{ns}:due", "garbage") is None
    assert raw.hexists(f"{ns}:locked", "garbage") == 0
    assert repo.remove(["garbage", "good", "mail"]) == {"garbage", "good", "mail"}
    assert namespace_keys(raw, repo.namespace) == {meta_key(repo.namespace)}


def test_a_job_whose_document_left_its_queue_is_not_claimed_from_it(repo, raw):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("moved", NOW - SECOND, queue="emails"), date_job("mail", queue="emails")])
    edit_document(raw, repo, "moved", queue=7)

    assert [lease.job.id for lease in repo.claim(NOW, 10, "t", 60, frozenset({"emails"}))] == [
        "mail"
    ]
    # The stale entries are gone: the job counts in the default queue now.
    assert raw.zscore(f"{ns}:due:emails", "moved") is None
    assert raw.zrange(f"{ns}:queue:emails", 0, -1) == [b"mail"]
    assert "queue is 7" in repo.get("moved").problem
    assert backlog(repo.queue_stats(NOW)) == [
        QueueInfo("default", False, 0, 0),
        QueueInfo("emails", False, 0, 1),
    ]
    assert repo.remove(["moved", "mail"]) == {"moved", "mail"}
    assert namespace_keys(raw, repo.namespace) == {meta_key(repo.namespace)}


def test_a_queue_missing_from_the_known_queues_costs_only_its_jobs(repo, raw, make_repo):
    ns = "{" + repo.namespace + "}"
    repo.add([date_job("lost", queue="emails"), date_job("d")])
    raw.srem(f"{ns}:queues", "emails")  # as a hand edit or a bad restore leaves it
    daemon = make_repo(namespace=repo.namespace)

    assert [lease.job.id for lease in daemon.claim(NOW, 10, "t1", 60)] == ["d"]
    assert [lease.job.id for lease in daemon.claim(NOW, 10, "t2", 60, frozenset({"emails"}))] == [
        "lost"
    ]
    assert daemon.remove(["lost"]) == {"lost"}
    assert raw.exists(f"{ns}:due:emails", f"{ns}:queue:emails", f"{ns}:locked") == 1  # d's lock

    repo.add([date_job("back", queue="emails")])  # a write to the queue makes it known again
    assert [lease.job.id for lease in daemon.claim(NOW, 10, "t3", 60)] == ["back"]


# --------------------------------------------------------------------------- comparison


TASKS = ("alpha", "beta", "gamma", 'd\u00e9l"ta')  # the last one is escaped in JSON
IDS = (*(f"job-{i:02d}" for i in range(10)), "é", "Z")
#: Random operations, weighted by repetition.
OPERATIONS = (
    *("add", "add", "remove", "apply"),
    *("claim", "claim", "claim", "complete", "complete", "complete"),
    *("complete_and_claim", "complete_and_claim"),
    *("extend", "release", "tick", "tick"),
)
#: Queues of the random jobs of a run that uses queues, and the claims' choices.
QUEUES = ("default", "emails", "reports")
QUEUE_CHOICES = (
    None,
    frozenset({"default"}),
    frozenset({"emails"}),
    frozenset({"emails", "reports"}),
    frozenset({"unknown"}),
)


def random_job(rng: random.Random, now: datetime, queues: bool = False) -> Job:
    due = now + timedelta(seconds=rng.randint(-20, 40), microseconds=rng.randint(0, 999_999))
    kind = rng.choice(("date", "interval", "cron"))
    if kind == "date":
        schedule = DateSchedule(due).to_json()
    elif kind == "interval":
        interval = timedelta(seconds=rng.choice((3, 7.5, 30)))
        schedule = IntervalSchedule(interval, start_date=due).to_json()
    else:
        schedule = CronSchedule("* * * * * */10").to_json()
    options = {}
    if rng.random() < 0.3:
        options["execution_mode"] = "at_most_once"
    if rng.random() < 0.6:
        options["failure_mode"] = rng.choice([mode.value for mode in FailureMode])
    if rng.random() < 0.3:
        options["lease_duration"] = rng.choice((0.5, 10, 12.3456789))
    parked = rng.random() < 0.1
    if queues and rng.random() < 0.15:
        options["paused"] = True
    job = Job(
        id=rng.choice(IDS),
        task=rng.choice(TASKS),
        schedule=schedule,
        args=[rng.random()],
        kwargs={"n": rng.randint(0, 9)},
        options=options,
        due_at=None if parked else due,
        next_run_at=None if parked else due,
        created_at=now,
    )
    return job.replace(queue=rng.choice(QUEUES)) if queues else job


def run_of(lease: Lease, outcome: str, now: datetime, error: str | None = None) -> RunRecord:
    """The run record of ``lease``'s run, finished at ``now``."""
    return RunRecord(
        job_id=lease.job.id,
        task=lease.job.task,
        queue=lease.job.queue,
        scheduled_at=lease.scheduled_at,
        started_at=now - SECOND,
        finished_at=now,
        attempt=lease.attempt,
        outcome=outcome,
        error=error,
        host="host-1",
        pid=1234,
        worker="w-1",
    )


def all_runs(store, **filters) -> list[RunRecord]:
    """Every run record matching ``filters``, newest first, paged 3 at a time, ids left out."""
    runs, cursor = [], None
    while True:
        page = store.list_runs(cursor=cursor, limit=3, **filters)
        runs.extend(dataclasses.replace(run, id=None) for run in page)
        cursor = page.next_cursor
        if cursor is None:
            return runs


def snapshot(store, now: datetime = NOW, queues: bool = False) -> dict:
    pages = []
    cursor = None
    while True:
        page = store.list(cursor=cursor, limit=3)
        pages.append((list(page), page.next_cursor))
        cursor = page.next_cursor
        if cursor is None:
            break
    by_task = {task: store.list(task=task, limit=4) for task in TASKS}
    state = {
        "pages": pages,
        "tasks": {t: (list(p), p.next_cursor) for t, p in by_task.items()},
        "next_due": store.next_due(),
        "jobs": store.get_many(IDS),
    }
    if queues:
        state["next_due_of"] = [store.next_due(choice) for choice in QUEUE_CHOICES]
        state["paused"] = store.paused_queues()
        state["stats"] = store.queue_stats(now)
        state["runs"] = all_runs(store)
        state["failed_runs"] = all_runs(store, outcomes={"failed"}, queue="emails")
    return state


def drive(seed: int, stores: tuple, steps: int = 150, queues: bool = False) -> None:
    """Run one random sequence of operations on both ``stores``, requiring equal results.

    With ``queues``, jobs are spread over :data:`QUEUES` (some paused), claims
    choose their queues, queues are paused and resumed, and completions write
    run records.
    """
    rng = random.Random(seed)
    operations = (*OPERATIONS, "pause", "prune") if queues else OPERATIONS
    now = NOW
    outstanding: list[tuple[Lease, Lease]] = []  # the same runs, as each store leased them

    def both(method, *args):
        results = [getattr(store, method)(*args) for store in stores]
        assert results[0] == results[1], (seed, step, method, args)
        return results

    for step in range(steps):
        op = rng.choice(operations)
        if op == "add":
            jobs = [random_job(rng, now, queues) for _ in range(rng.randint(1, 4))]
            both("add", jobs, rng.random() < 0.7)
        elif op == "remove":
            both("remove", rng.sample(IDS, rng.randint(1, 3)))
        elif op == "apply":
            adds = [random_job(rng, now, queues) for _ in range(rng.randint(0, 2))]
            both("apply", adds, rng.sample(IDS, rng.randint(0, 2)))
        elif op == "claim":
            args = (now, rng.randint(1, 4), f"tok-{step}", rng.choice((30, 60)))
            if queues:
                args += (rng.choice(QUEUE_CHOICES),)
            first, second = both("claim", *args)
            outstanding.extend(zip(first, second, strict=True))
        elif op == "complete_and_claim":
            # Finished runs (mostly successes: deleted inside the claim) and a claim, in one call.
            chosen = rng.sample(outstanding, rng.randint(0, len(outstanding)))
            kinds = [rng.choice(("ok", "ok", "ok", "fail")) for _ in chosen]
            args = (now, rng.randint(0, 4), f"tok-{step}", rng.choice((30, 60)))
            if queues:
                args += (rng.choice(QUEUE_CHOICES),)
            results = []
            for index, store in enumerate(stores):
                outcomes = [
                    Outcome(pair[index], kind == "ok", now, error=None if kind == "ok" else "x")
                    for pair, kind in zip(chosen, kinds, strict=True)
                ]
                runs = [
                    run_of(pair[index], "succeeded" if kind == "ok" else "failed", now)
                    for pair, kind in zip(chosen, kinds, strict=True)
                ]
                if queues:
                    args = (*args[:5], runs)
                results.append(store.complete_and_claim(outcomes, *args))
            assert results[0] == results[1], (seed, step, op)
            outstanding = [pair for pair in outstanding if pair not in chosen]
            outstanding.extend(zip(*results, strict=True))
        elif op in ("complete", "release") and outstanding:
            chosen = rng.sample(outstanding, rng.randint(1, len(outstanding)))
            kinds = [rng.choice(("ok", "fail", "permanent")) for _ in chosen]
            for index, store in enumerate(stores):
                leases = [pair[index] for pair in chosen]
                if op == "release":
                    store.release(leases)
                    continue
                runs = [
                    run_of(lease, "succeeded" if kind == "ok" else "failed", now, f"error {step}")
                    for lease, kind in zip(leases, kinds, strict=True)
                ]
                store.complete(
                    [
                        Outcome(
                            lease,
                            kind == "ok",
                            now,
                            error=None if kind == "ok" else f"error {step}",
                            permanent=kind == "permanent",
                        )
                        for lease, kind in zip(leases, kinds, strict=True)
                    ],
                    runs if queues else (),
                )
            outstanding = [pair for pair in outstanding if pair not in chosen]
        elif op == "extend" and outstanding:
            chosen = rng.sample(outstanding, rng.randint(1, len(outstanding)))
            seconds = rng.choice((5, 60, 0.25))
            bogus = (rng.choice(IDS), "bogus", 5)
            held = [
                store.extend(
                    now,
                    [
                        *((p[i].job.id, p[i].token, seconds) for p in chosen if p[i].token),
                        bogus,
                    ],
                )
                for i, store in enumerate(stores)
            ]
            assert held[0] == held[1], (seed, step)
        elif op == "pause":
            both("set_queue_paused", rng.choice((*QUEUES, "idle")), rng.random() < 0.5)
        elif op == "prune":
            both("prune_runs", now - timedelta(seconds=rng.randint(0, 60)), rng.randint(1, 5))
        else:
            now += timedelta(seconds=rng.randint(0, 40), microseconds=rng.randint(0, 999_999))
        states = [snapshot(store, now, queues) for store in stores]
        assert states[0] == states[1], (seed, step, op)


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_match_the_memory_store(make_repo, seed):
    drive(seed, (MemoryRepository(), make_repo()))


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_over_queues_pauses_and_runs_match_the_memory_store(make_repo, seed):
    drive(seed, (MemoryRepository(), make_repo()), queues=True)


# --------------------------------------------------------------------------- layout


def test_every_key_shares_the_namespace_hash_tag_and_nothing_else_is_touched(make_repo, raw):
    outsiders = {"pyncette:jobs": b"plain", "{other}:jobs": b"other", "jobs": b"bare"}
    for key, value in outsiders.items():
        raw.set(key, value)
    try:
        repo = make_repo(namespace="layout.test:ns")
        repo.add([date_job("a", task="t1"), date_job("b", None, task="t 2"), interval_job("c")])
        (lease,) = repo.claim(NOW, 1, "tok", 60)
        repo.extend(NOW, [(lease.job.id, "tok", 30)])
        repo.complete([Outcome(lease, True, NOW)])

        keys = namespace_keys(raw, "layout.test:ns")
        tag = "{layout.test:ns}"
        assert keys == {
            f"{tag}:jobs",
            f"{tag}:due",
            f"{tag}:ids",
            f"{tag}:task:t 2",
            f"{tag}:task:record",
            f"{tag}:meta",
        }
        assert {key_slot(key.encode()) for key in keys} == {key_slot(tag.encode())}
        assert set(repo.keys()) < keys
        assert repo.task_key("t 2") in keys
        everything = {key.decode() for key in raw.scan_iter()}
        assert everything - keys >= set(outsiders)
        assert {key: raw.get(key) for key in outsiders} == outsiders
    finally:
        raw.delete(*outsiders)


@pytest.mark.parametrize("queues", [False, True], ids=["one-queue", "queues-and-runs"])
def test_scripts_touch_only_the_keys_they_declare(make_repo, server, queues):
    """What Redis Cluster requires: every key a script uses is one of its KEYS."""
    repo = make_repo()
    tag = "{" + repo.namespace + "}:"
    events: list[dict] = []
    ready = threading.Event()

    def watch() -> None:
        with server.client(socket_timeout=60) as client, client.monitor() as monitor:
            ready.set()
            while True:
                event = monitor.next_command()
                events.append(event)
                if event["command"] == "ECHO monitor-done":
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)
    try:
        drive(101, (MemoryRepository(), repo), steps=120, queues=queues)
        repo.get_many(IDS)
        repo.get("Z")
    finally:
        repo.client.echo("monitor-done")
        watcher.join(30)

    declared: set[str] | None = None
    scripts = script_commands = 0
    for event in events:
        words = event["command"].split(" ")
        name = words[0].upper()
        if event["client_type"] == "lua":
            if name == "TIME":
                continue
            if name == "PUBLISH":  # a channel, not a key: it must be the namespace's own
                assert words[1] == repo.channel, event
                continue
            script_commands += 1
            assert declared is not None and words[1] in declared, event
        elif name in ("EVALSHA", "EVAL"):
            scripts += 1
            declared = set(words[3 : 3 + int(words[2])])
            assert all(key.startswith(tag) for key in declared), event
        else:
            declared = None
            if name in ("HGET", "HMGET"):
                assert words[1].startswith(tag), event
    assert scripts > 100 and script_commands > scripts


def test_namespaces_are_isolated(make_repo):
    one, two = make_repo(), make_repo()
    one.add([date_job("same", task="a", args=[1])])
    two.add([date_job("same", task="b", args=[2]), date_job("only-two")])

    assert [lease.job.id for lease in one.claim(NOW, 10, "t1", 60)] == ["same"]
    assert two.get("same").locked_by is None
    assert one.remove(["only-two"]) == set()
    assert [job.id for job in two.list()] == ["only-two", "same"]
    assert [job.id for job in two.list(task="a")] == []
    assert one.next_due() == NOW + 60 * SECOND
    assert two.next_due() == NOW


def test_namespace_must_not_break_the_hash_tag(server):
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError, match="namespace"):
            RedisRepository(server.url, namespace=bad)


# --------------------------------------------------------------------------- store clock


def server_now(repo: RedisRepository) -> datetime:
    seconds, microseconds = repo.client.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)


def test_the_store_clock_ignores_a_callers_clock_that_runs_ahead(make_repo):
    repo = make_repo(store_clock=True)
    assert repo.store_clock is True
    real = server_now(repo)
    ahead = real + timedelta(hours=1)
    repo.add([date_job("later", real + timedelta(minutes=30)), date_job("due", real)])

    (lease,) = repo.claim(ahead, 10, "honest", 60)
    after = server_now(repo)

    assert lease.job.id == "due"
    assert real + 60 * SECOND <= lease.job.due_at <= after + 60 * SECOND
    assert repo.get("due") == lease.job
    # Neither the job that is not due yet nor the live lease can be taken from the future.
    assert repo.claim(ahead, 10, "ahead", 60) == []
    assert repo.get("due").locked_by == "honest"

    assert repo.extend(ahead, [("due", "honest", 10)]) == {"due"}
    assert repo.get("due").due_at <= server_now(repo) + 10 * SECOND


def test_without_the_store_clock_the_callers_time_is_used(repo):
    assert repo.store_clock is False
    repo.add([date_job("a", NOW + 3600 * SECOND)])
    (lease,) = repo.claim(NOW + 3600 * SECOND, 1, "t", 60)
    assert lease.job.due_at == NOW + 3660 * SECOND


# --------------------------------------------------------------------------- connections


def test_a_stopped_server_raises_transient_errors():
    try:
        server = start_redis()
    except Exception as exc:  # BackendUnavailable or a start failure
        pytest.skip(f"could not start a second redis-server: {exc}")
    with server:
        repo = RedisRepository(server.url, namespace="gone")
        repo.setup()
        repo.add([date_job("a")])
        server.stop(save=False)
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            repo.get("a")
        assert repo.is_transient(caught.value)
        repo.close()


def test_is_transient_classifies_errors(repo):
    errors = redis.exceptions
    for exc in (
        errors.ConnectionError("x"),
        errors.TimeoutError("x"),
        errors.BusyLoadingError("x"),
        errors.TryAgainError("x"),
        errors.ClusterDownError("x"),
        errors.ReadOnlyError("x"),
        RepositoryError("x"),
        ConnectionResetError("x"),
    ):
        assert repo.is_transient(exc), exc
    for exc in (
        errors.AuthenticationError("x"),
        errors.ResponseError("x"),
        errors.DataError("x"),
        ValueError("x"),
    ):
        assert not repo.is_transient(exc), exc


def test_passwords_never_appear_in_errors_or_reprs():
    secret = "s3cr3t-pa55"
    closed = RedisRepository(f"redis://user:{secret}@127.0.0.1:1/0", namespace="x")
    assert secret not in repr(closed) and secret not in closed.redacted_url
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        closed.get("a")
    assert secret not in str(caught.value)
    closed.close()

    with pytest.raises(ValueError) as bad:
        RedisRepository(f"redis://:{secret}@127.0.0.1:notaport/0")
    assert secret not in str(bad.value)
    assert redact_url(f"rediss://{secret}@host:6380/0") == "rediss://***@host:6380/0"
    assert redact_url(f"unix:///tmp/r.sock?password={secret}&db=1") == (
        "unix:///tmp/r.sock?password=***&db=1"
    )

    try:
        server = start_redis()
    except Exception as exc:
        pytest.skip(f"could not start a second redis-server: {exc}")
    with server:
        with server.client() as admin:
            admin.config_set("requirepass", "right-one")
        url = f"redis://:{secret}@{server.host}:{server.port}/0"
        wrong = RedisRepository(url, namespace="x")
        with pytest.raises(redis.exceptions.AuthenticationError) as denied:
            wrong.setup()
        assert secret not in str(denied.value)
        assert not wrong.is_transient(denied.value)
        wrong.close()
        right = RedisRepository(f"redis://:right-one@{server.host}:{server.port}/0", namespace="x")
        right.setup()
        right.add([date_job("a")])
        assert right.get("a") is not None
        right.close()


def test_a_small_blocking_pool_makes_bursts_wait_instead_of_failing(server, raw):
    repo = RedisRepository(server.url, namespace=f"t_{uuid.uuid4().hex[:10]}", max_connections=2)
    assert isinstance(repo.client.connection_pool, redis.BlockingConnectionPool)
    assert repo.client.connection_pool.max_connections == 2
    repo.store_clock = False
    errors: list[BaseException] = []

    def burst(n: int) -> None:
        try:
            for i in range(20):
                repo.add([date_job(f"job-{n}-{i}")])
                repo.get(f"job-{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert len(repo.get_many(f"job-{n}-{i}" for n in range(8) for i in range(20))) == 160
    finally:
        for key in raw.scan_iter(match="{" + repo.namespace + "}:*"):
            raw.delete(key)
        repo.close()


class _UnixRedisServer(RedisServer):
    """The test server, also listening on a unix socket in its directory."""

    @property
    def socket_path(self):
        return self.base_dir / "redis.sock"

    def _command(self):
        return [
            *super()._command(),
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
        ]


def test_unix_socket_urls_work():
    try:
        server = _UnixRedisServer()
        server.start()
    except Exception as exc:
        pytest.skip(f"could not start a redis-server on a unix socket: {exc}")
    with server:
        repo = RedisRepository(f"unix://{server.socket_path}?db=2", namespace="u")
        repo.store_clock = False
        repo.setup()
        repo.add([date_job("a")])
        assert [lease.job.id for lease in repo.claim(NOW, 5, "t", 60)] == ["a"]
        with redis.Redis(unix_socket_path=str(server.socket_path), db=2) as admin:
            assert admin.hexists(repo.job_keys("a").jobs, "a")
        repo.close()


def test_a_caller_supplied_client_without_decoding_works_and_stays_open(server, raw):
    client = redis.Redis(host=server.host, port=server.port, db=0)
    repo = RedisRepository(client=client, namespace=f"t_{uuid.uuid4().hex[:10]}")
    repo.store_clock = False
    try:
        repo.setup()
        repo.setup()  # idempotent
        repo.add([date_job("a"), date_job("b", task="other")])
        assert [job.id for job in repo.list()] == ["a", "b"]
        assert [lease.job.id for lease in repo.claim(NOW, 5, "t", 60)] == ["a", "b"]
        assert repo.extend(NOW, [("a", "t", 5)]) == {"a"}
        assert repo.next_due() == NOW + 5 * SECOND
        assert repo.remove(["a", "b"]) == {"a", "b"}
        repo.close()
        assert client.ping()
    finally:
        for key in raw.scan_iter(match="{" + repo.namespace + "}:*"):
            raw.delete(key)
        client.close()
