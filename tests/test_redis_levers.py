"""The Redis store's queues, paused queues and run history, against a real ``redis-server``.

The randomised comparison with the memory store (tests/test_redis_store.py)
covers the same contract broadly; these tests pin down each behaviour and
the keys behind it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("redis", reason="the Redis store tests need redis-py")

from pyramid_pyncette.jobs import MAX_RUN_ERROR_LENGTH, Outcome, QueueInfo
from pyramid_pyncette.repository import redis as redis_store
from pyramid_pyncette.repository.memory import MemoryRepository
from tests import test_redis_store as store_tests
from tests.queue_counts import backlog
from tests.test_redis_store import (
    NOW,
    SECOND,
    all_runs,
    date_job,
    interval_job,
    meta_key,
    micros,
    namespace_keys,
    run_of,
)

# The fixtures of the store's own tests: a server, a raw client, stores in namespaces of their own.
server = store_tests.server
raw = store_tests.raw
make_repo = store_tests.make_repo
repo = store_tests.repo

EMAILS = frozenset({"emails"})


def keys_of(repo) -> dict[str, str]:
    ns = "{" + repo.namespace + "}"
    return {
        "due": f"{ns}:due",
        "due:emails": f"{ns}:due:emails",
        "queue:emails": f"{ns}:queue:emails",
        "queues": f"{ns}:queues",
        "paused": f"{ns}:paused",
        "locked": f"{ns}:locked",
        "runs": f"{ns}:runs",
        "jobs": f"{ns}:jobs",
    }


def claimed(leases) -> list[str]:
    return [lease.job.id for lease in leases]


# --------------------------------------------------------------------------- layout


def test_a_job_is_indexed_in_the_due_set_and_index_of_its_queue(repo, raw):
    keys = keys_of(repo)
    repo.add([date_job("mail", queue="emails"), date_job("plain", NOW + SECOND)])

    assert raw.zrange(keys["due:emails"], 0, -1, withscores=True) == [(b"mail", micros(NOW))]
    assert raw.zrange(keys["due"], 0, -1) == [b"plain"]
    assert raw.zrange(keys["queue:emails"], 0, -1) == [b"mail"]
    assert raw.smembers(keys["queues"]) == {b"emails"}  # the default queue is implied
    assert json.loads(raw.hget(keys["jobs"], "mail"))["queue"] == "emails"
    assert repo.get("mail").queue == "emails"
    assert repo.get("plain").queue == "default"


def test_a_job_moved_to_another_queue_leaves_its_old_queue(repo, raw):
    keys = keys_of(repo)
    repo.add([date_job("a", queue="emails")])
    repo.add([date_job("a", queue="reports")])

    assert raw.exists(keys["due:emails"], keys["queue:emails"]) == 0
    assert raw.smembers(keys["queues"]) == {b"reports"}
    assert claimed(repo.claim(NOW, 10, "t", 60, frozenset({"reports"}))) == ["a"]

    repo.add([date_job("a")])  # back to the default queue, while leased
    assert raw.exists(keys["queues"], keys["locked"]) == 0
    assert raw.zrange(keys["due"], 0, -1) == [b"a"]


def test_removing_the_last_jobs_of_queues_leaves_no_key_behind(repo, raw):
    repo.add([date_job("a", queue="emails"), date_job("b", None, queue="reports"), date_job("c")])
    assert len(repo.claim(NOW, 1, "t", 60, EMAILS)) == 1
    repo.stage([date_job("d", queue="emails")], [], "staged:x", 30, NOW)

    assert repo.remove(["a", "b", "c", "d"]) == {"a", "b", "c", "d"}
    assert namespace_keys(raw, repo.namespace) == {meta_key(repo.namespace)}


def test_a_job_with_an_invalid_queue_name_is_refused_before_anything_is_written(repo):
    with pytest.raises(ValueError, match="not a queue name"):
        repo.add([date_job("good"), date_job("bad", queue="a}b")])
    assert repo.get("good") is None
    with pytest.raises(ValueError, match="not a queue name"):
        repo.claim(NOW, 1, "t", 60, frozenset({"no spaces"}))
    with pytest.raises(ValueError, match="not a queue name"):
        repo.set_queue_paused("", True)


# --------------------------------------------------------------------------- claims


def test_a_claim_restricted_to_queues_takes_only_their_jobs(repo):
    repo.add(
        [
            date_job("d1", NOW - 3 * SECOND),
            date_job("e1", NOW - 2 * SECOND, queue="emails"),
            date_job("r1", NOW - 4 * SECOND, queue="reports"),
            date_job("e2", NOW, queue="emails"),
        ]
    )

    assert claimed(repo.claim(NOW, 10, "t1", 60, EMAILS)) == ["e1", "e2"]
    assert claimed(repo.claim(NOW, 10, "t2", 60, frozenset({"nothing-here"}))) == []
    assert claimed(repo.claim(NOW, 10, "t3", 60, frozenset({"default"}))) == ["d1"]
    assert claimed(repo.claim(NOW, 10, "t4", 60)) == ["r1"]


def test_a_claim_over_every_queue_takes_the_earliest_due_across_queues_up_to_the_limit(repo):
    repo.add(
        [
            date_job("d-late", NOW - SECOND),
            date_job("e-first", NOW - 5 * SECOND, queue="emails"),
            date_job("r-second", NOW - 4 * SECOND, queue="reports"),
            date_job("d-third", NOW - 3 * SECOND),
            date_job("e-later", NOW + SECOND, queue="emails"),
        ]
    )

    assert claimed(repo.claim(NOW, 3, "t", 60)) == ["e-first", "r-second", "d-third"]
    assert claimed(repo.claim(NOW, 3, "t", 60)) == ["d-late"]


def test_a_claim_over_every_queue_finds_a_queue_another_process_created(repo, make_repo):
    repo.add([date_job("d")])
    assert claimed(repo.claim(NOW, 10, "t1", 60)) == ["d"]  # knows only the default queue

    make_repo(namespace=repo.namespace).add([date_job("new", queue="fresh")])

    calls = []
    script = repo._claim
    repo._claim = lambda **kw: calls.append(kw) or script(**kw)
    assert claimed(repo.claim(NOW, 10, "t2", 60)) == ["new"]
    assert len(calls) == 2  # the first call named the queue it lacked
    assert claimed(repo.claim(NOW, 10, "t3", 60)) == []
    assert len(calls) == 3  # and it is known from then on


def test_existing_data_written_without_queues_is_claimed_in_the_default_queue(repo, raw):
    """Documents written before there were queues have no queue field: no migration."""
    keys = keys_of(repo)
    old = {"old-1": date_job("old-1", NOW - SECOND), "old-2": interval_job("old-2", due=NOW)}
    for job_id, job in old.items():
        doc = json.loads(redis_store._encode_job(job))
        del doc["queue"]
        raw.hset(keys["jobs"], job_id, json.dumps(doc, separators=(",", ":")))
        raw.zadd(keys["due"], {job_id: micros(job.due_at)})
        raw.zadd("{" + repo.namespace + "}:ids", {job_id: 0})
        raw.zadd(repo.task_key(job.task), {job_id: 0})

    assert repo.get("old-1") == old["old-1"]
    assert repo.next_due(frozenset({"default"})) == NOW - SECOND
    assert backlog(repo.queue_stats(NOW)) == [QueueInfo("default", False, 2, 0)]
    leases = repo.claim(NOW, 10, "t", 60, frozenset({"default"}))
    assert claimed(leases) == ["old-1", "old-2"]
    assert all(lease.job.queue == "default" and lease.job.problem is None for lease in leases)
    assert backlog(repo.queue_stats(NOW)) == [QueueInfo("default", False, 0, 2)]
    repo.complete([Outcome(lease, True, NOW) for lease in leases])
    assert repo.get("old-1") is None
    assert repo.get("old-2").due_at == NOW + 10 * SECOND
    assert raw.exists(keys["locked"]) == 0


# --------------------------------------------------------------------------- paused queues


def test_a_paused_queue_is_not_claimed_from_the_next_claim_on(repo, make_repo):
    other = make_repo(namespace=repo.namespace)  # another daemon's store
    repo.add([date_job("d", NOW - SECOND), date_job("e", NOW - 2 * SECOND, queue="emails")])

    assert other.set_queue_paused("emails", True) is True
    assert other.set_queue_paused("emails", True) is False
    assert repo.paused_queues() == {"emails"}
    assert claimed(repo.claim(NOW, 10, "t1", 60, EMAILS)) == []
    assert claimed(repo.claim(NOW, 10, "t2", 60)) == ["d"]

    assert other.set_queue_paused("emails", False) is True
    assert other.set_queue_paused("emails", False) is False
    assert repo.paused_queues() == set()
    assert claimed(repo.claim(NOW, 10, "t3", 60)) == ["e"]


def test_the_default_queue_can_be_paused_too(repo):
    repo.add([date_job("d"), date_job("e", queue="emails")])
    repo.set_queue_paused("default", True)
    assert claimed(repo.claim(NOW, 10, "t", 60)) == ["e"]
    assert repo.next_due() == NOW + 60 * SECOND  # e's lease; d does not count


def test_next_due_counts_only_served_queues_that_are_not_paused(repo):
    repo.add(
        [
            date_job("d", NOW + 3 * SECOND),
            date_job("e", NOW + SECOND, queue="emails"),
            date_job("r", NOW + 2 * SECOND, queue="reports"),
        ]
    )

    assert repo.next_due() == NOW + SECOND
    assert repo.next_due(frozenset({"reports", "default"})) == NOW + 2 * SECOND
    assert repo.next_due(frozenset({"nothing"})) is None
    assert repo.next_due_delay(NOW, EMAILS) == 1.0

    repo.set_queue_paused("emails", True)
    assert repo.next_due() == NOW + 2 * SECOND
    assert repo.next_due(EMAILS) is None
    assert repo.next_due_delay(NOW, EMAILS) is None
    assert repo.next_due_delay(NOW) == 2.0


def test_next_due_over_every_queue_finds_a_queue_another_process_created(repo, make_repo):
    repo.add([date_job("d", NOW + 5 * SECOND)])
    assert repo.next_due() == NOW + 5 * SECOND
    make_repo(namespace=repo.namespace).add([date_job("new", NOW, queue="fresh")])
    assert repo.next_due() == NOW


def test_heartbeats_renew_leases_in_every_queue(repo, make_repo):
    repo.add([date_job("e", queue="emails")])
    other = make_repo(namespace=repo.namespace)  # knows no queue yet
    (lease,) = other.claim(NOW, 1, "t", 60, EMAILS)
    fresh = make_repo(namespace=repo.namespace)

    assert fresh.extend(NOW, [("e", "t", 300), ("e-missing", "t", 300)]) == {"e"}
    assert repo.get("e").due_at == NOW + 300 * SECOND
    assert repo.next_due(EMAILS) == NOW + 300 * SECOND
    assert lease.job.queue == "emails"


# --------------------------------------------------------------------------- queue stats


def test_queue_stats_count_due_and_running_jobs_of_every_queue_exactly(repo):
    memory = MemoryRepository()
    jobs = [
        date_job("d-due-1", NOW - SECOND),
        date_job("d-due-2", NOW),
        date_job("d-later", NOW + SECOND),
        date_job("d-parked", None),
        date_job("d-leased", NOW - 2 * SECOND),
        date_job("e-due", NOW - SECOND, queue="emails"),
        date_job("e-leased", NOW - 2 * SECOND, queue="emails"),
        date_job("r-paused-job", None, queue="reports", options={"paused": True}),
    ]
    for store in (memory, repo):
        store.add(jobs)
        store.claim(NOW, 1, "t1", 0.5, EMAILS)  # e-leased, lease expired at NOW + 1 s
        store.claim(NOW, 1, "t2", 60, frozenset({"default"}))  # d-leased
        store.stage([date_job("d-staged", NOW - SECOND)], [], "staged:tx", 0, NOW)
        store.set_queue_paused("emails", True)
        store.set_queue_paused("idle", True)

    expected = [
        QueueInfo("default", False, 2, 1),
        QueueInfo("emails", True, 1, 1),
        QueueInfo("idle", True, 0, 0),
        QueueInfo("reports", False, 0, 0),
    ]
    assert backlog(memory.queue_stats(NOW)) == expected
    assert backlog(repo.queue_stats(NOW)) == expected
    later = NOW + 2 * SECOND  # e-leased's lease has expired: still running (locked)
    assert repo.queue_stats(later) == memory.queue_stats(later)
    assert backlog(repo.queue_stats(later))[0] == QueueInfo("default", False, 3, 1)

    for store in (memory, repo):
        store.remove(["r-paused-job"])
        store.set_queue_paused("idle", False)
    assert [info.name for info in repo.queue_stats(NOW)] == ["default", "emails"]
    assert repo.queue_stats(NOW) == memory.queue_stats(NOW)


def test_queue_stats_read_locked_jobs_not_every_job(repo, monkeypatch):
    repo.add([date_job(f"j{i}", NOW + i * SECOND) for i in range(50)])
    repo.claim(NOW + 60 * SECOND, 3, "t", 60)
    calls = []
    pipeline = repo.client.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        zscore = pipe.zscore
        pipe.zscore = lambda *a: calls.append(a) or zscore(*a)
        return pipe

    monkeypatch.setattr(repo.client, "pipeline", counting_pipeline)
    assert backlog(repo.queue_stats(NOW + 60 * SECOND)) == [QueueInfo("default", False, 47, 3)]
    assert len(calls) == 3


# --------------------------------------------------------------------------- run history


def _lease(repo, job_id: str, token: str = "t"):
    (lease,) = [lease for lease in repo.claim(NOW, 10, token, 60) if lease.job.id == job_id]
    return lease


def test_runs_are_appended_by_the_completing_call_with_every_field(repo):
    repo.add([date_job("ok", queue="emails"), interval_job("fail")])
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 10, "t", 60)}
    runs = [
        run_of(leases["ok"], "succeeded", NOW + SECOND),
        run_of(leases["fail"], "failed", NOW + 2 * SECOND, error="Traceback\nValueError: x"),
    ]
    scripts = []
    for name in ("_claim", "_write_ops"):
        script = getattr(repo, name)
        setattr(repo, name, lambda _s=script, _n=name, **kw: scripts.append(_n) or _s(**kw))

    outcomes = [
        Outcome(leases["ok"], True, NOW + SECOND),
        Outcome(leases["fail"], False, NOW + 2 * SECOND, error="x"),
    ]
    repo.complete_and_claim(outcomes, NOW, 0, "t2", 60, runs=runs)

    assert scripts == ["_write_ops", "_claim"]  # the failure's write, the deletion and claim
    page = repo.list_runs()
    assert page.next_cursor is None
    assert [dataclass_without_id(run) for run in page] == list(reversed(runs))
    assert page[0].id > page[1].id
    assert page[1].queue == "emails" and page[0].error == "Traceback\nValueError: x"

    repo.complete([], [run_of(leases["ok"], "lease_lost", NOW + 3 * SECOND)])
    assert [run.outcome for run in repo.list_runs()] == ["lease_lost", "failed", "succeeded"]


def dataclass_without_id(run):
    return dataclasses.replace(run, id=None)


def test_run_errors_of_any_content_are_stored_bounded(repo):
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    errors = ["nul \x00 byte", "lone \ud800 surrogate", "x" * 100_000 + "\nValueError: end", "😀"]
    repo.complete([], [run_of(lease, "failed", NOW, error=error) for error in errors])

    stored = [run.error for run in reversed(repo.list_runs().runs)]
    assert stored[0] == "nul \ufffd byte"
    assert stored[1] == "lone \ufffd surrogate"
    assert len(stored[2]) == MAX_RUN_ERROR_LENGTH and stored[2].endswith("ValueError: end")
    assert stored[3] == "😀"


def test_list_runs_filters_and_pages_newest_first_like_the_memory_store(repo, monkeypatch):
    monkeypatch.setattr(redis_store, "_RUNS_CHUNK", 4)  # several reads per page
    memory = MemoryRepository()
    jobs = [date_job(f"job-{i}", queue=("emails", "default")[i % 2]) for i in range(4)]
    for store in (memory, repo):
        store.add(jobs)
        leases = store.claim(NOW, 10, "t", 60)
        for n in range(30):
            lease = leases[n % 4]
            outcome = ("succeeded", "failed", "lease_lost", "skipped")[n % 3]
            store.complete([], [run_of(lease, outcome, NOW + n * SECOND, error=f"e{n}")])

    for filters in (
        {},
        {"job_id": "job-1"},
        {"task": "record", "queue": "emails"},
        {"outcomes": {"failed", "lease_lost"}},
        {"job_id": "job-2", "outcomes": {"succeeded"}},
        {"queue": "nothing"},
    ):
        assert all_runs(repo, **filters) == all_runs(memory, **filters), filters
    page = repo.list_runs(limit=30)
    assert len(page) == 30 and page.next_cursor is None
    first = repo.list_runs(job_id="job-3", limit=2)
    rest = repo.list_runs(job_id="job-3", cursor=first.next_cursor, limit=100)
    assert [run.finished_at for run in [*first, *rest]] == [
        NOW + n * SECOND for n in range(29, -1, -1) if n % 4 == 3
    ]
    with pytest.raises(ValueError, match="invalid run cursor"):
        repo.list_runs(cursor="yesterday")


def test_a_filtered_listing_reads_a_bounded_number_of_records_and_says_where_to_go_on(
    repo, monkeypatch
):
    repo.add([date_job("rare"), date_job("common")])
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 10, "t", 60)}
    runs = [run_of(leases["rare"], "failed", NOW)]
    runs += [run_of(leases["common"], "succeeded", NOW + n * SECOND) for n in range(25)]
    repo.complete([], runs)
    monkeypatch.setattr(redis_store, "MAX_RUNS_SCANNED", 10)
    monkeypatch.setattr(redis_store, "_RUNS_CHUNK", 4)

    pages = []
    cursor = None
    while True:
        page = repo.list_runs(job_id="rare", cursor=cursor)
        pages.append(len(page))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [0, 0, 1]  # 10, 10 and the last 6 records read
    assert repo.list_runs(job_id="common", limit=30).next_cursor is not None


def test_run_ids_sort_as_text_in_the_order_they_were_written(repo):
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    # One call writes them all within the same millisecond or two: sequence numbers past 9.
    repo.complete([], [run_of(lease, "succeeded", NOW + n * SECOND) for n in range(120)])

    ids = [run.id for run in repo.list_runs(limit=200)]
    assert len(set(ids)) == 120
    assert ids == sorted(ids, reverse=True)
    assert repo.list_runs(limit=200)[0].finished_at == NOW + 119 * SECOND
    page = repo.list_runs(limit=50)
    assert [run.id for run in repo.list_runs(cursor=page.next_cursor, limit=200)] == ids[50:]


def test_prune_runs_deletes_the_oldest_finished_before_in_bounded_batches(repo, monkeypatch):
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    repo.complete([], [run_of(lease, "succeeded", NOW + n * SECOND) for n in range(10)])
    read = []
    xrange = repo.client.xrange
    monkeypatch.setattr(repo.client, "xrange", lambda *a, **kw: read.append(kw) or xrange(*a, **kw))

    assert repo.prune_runs(NOW + 5 * SECOND, 3) == 3
    assert read[-1]["count"] == 3 + redis_store.PRUNE_LOOKAHEAD
    assert repo.prune_runs(NOW + 5 * SECOND, 3) == 2
    assert repo.prune_runs(NOW + 5 * SECOND, 3) == 0
    assert repo.prune_runs(NOW + 60 * SECOND, 0) == 0
    left = [run.finished_at for run in repo.list_runs()]
    assert left == [NOW + n * SECOND for n in range(9, 4, -1)]
    assert repo.prune_runs(NOW + 60 * SECOND, 100) == 5
    assert repo.list_runs().runs == []


def test_prune_runs_finds_old_records_written_after_newer_ones_within_its_lookahead(
    repo, monkeypatch
):
    monkeypatch.setattr(redis_store, "PRUNE_LOOKAHEAD", 3)
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    late = [NOW + 100 * SECOND, NOW, NOW + 100 * SECOND, NOW + 1 * SECOND, NOW + 2 * SECOND]
    late += [NOW + 100 * SECOND] * 3 + [NOW + 3 * SECOND]  # the last one past the lookahead
    repo.complete([], [run_of(lease, "succeeded", finished) for finished in late])

    assert repo.prune_runs(NOW + 50 * SECOND, 2) == 2  # the 2 oldest written of 5 read
    assert repo.prune_runs(NOW + 50 * SECOND, 2) == 1  # 5 read: 4 new, 1 old
    assert sorted(run.finished_at for run in repo.list_runs()) == [
        NOW + 3 * SECOND,
        *[NOW + 100 * SECOND] * 5,
    ]
    assert repo.prune_runs(NOW + 50 * SECOND, 5) == 1  # 8 read: the last one at last


def test_the_run_history_is_capped(repo, raw, monkeypatch):
    monkeypatch.setattr(redis_store, "MAX_REDIS_RUNS", 50)
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    for _ in range(6):
        repo.complete([], [run_of(lease, "succeeded", NOW)] * 100)
    # Trimmed about (whole nodes of the stream at a time), never below the cap.
    assert 50 <= raw.xlen(keys_of(repo)["runs"]) < 300


def test_stream_entries_that_are_not_run_records_are_skipped_and_pruned(repo, raw):
    repo.add([date_job("a")])
    lease = _lease(repo, "a")
    raw.xadd(keys_of(repo)["runs"], {"something": "else"})
    repo.complete([], [run_of(lease, "succeeded", NOW)])
    raw.xadd(keys_of(repo)["runs"], {"finished_at": "soon", "job_id": "x"})

    assert [run.job_id for run in repo.list_runs()] == ["a"]
    assert repo.prune_runs(NOW, 10) == 2  # the garbage; the record finished at NOW stays
    assert [run.job_id for run in repo.list_runs()] == ["a"]
    assert repo.prune_runs(NOW + SECOND, 10) == 1
    assert raw.xlen(keys_of(repo)["runs"]) == 0
