"""The Redis store split into partitions, and on Redis Cluster.

A namespace of N > 1 partitions keeps the keys of partition p under the hash
tag ``{ns:p}``; one of a single partition keeps the ``{ns}`` layout of the
store before there were partitions. Every script call touches one partition
(one slot), namespace-wide reads merge the partitions, and the count is
recorded at first setup, adopted later and never silently changed.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from datetime import timedelta

import pytest

redis = pytest.importorskip("redis", reason="the Redis store tests need redis-py")

from redis.crc import key_slot  # noqa: E402

from pyramid_pyncette.jobs import Outcome, partition_of  # noqa: E402
from pyramid_pyncette.repository.memory import MemoryRepository  # noqa: E402
from pyramid_pyncette.repository.redis import (  # noqa: E402
    PartitionCountError,
    RedisRepository,
)
from tests import test_redis_store as store_tests  # noqa: E402
from tests.daemon import write_ini  # noqa: E402
from tests.test_redis_store import (  # noqa: E402
    NOW,
    SECOND,
    all_runs,
    date_job,
    drive,
    interval_job,
    meta_key,
    run_of,
)

# The fixtures of the store's own tests: a server, a raw client.
server = store_tests.server
raw = store_tests.raw


@pytest.fixture
def make_repo(server, raw):
    """``make_repo(namespace=None, **kwargs)``: a set-up store of 16 partitions (unless
    ``partitions`` says otherwise) in a namespace of its own."""
    made: list[RedisRepository] = []

    def make(namespace: str | None = None, **kwargs) -> RedisRepository:
        kwargs.setdefault("store_clock", False)
        kwargs.setdefault("partitions", 16)
        repo = RedisRepository(
            server.url, namespace=namespace or f"p_{uuid.uuid4().hex[:10]}", **kwargs
        )
        repo.setup()
        made.append(repo)
        return repo

    yield make

    for repo in made:
        for key in raw.scan_iter(match="{" + repo.namespace + "[}:]*"):
            raw.delete(key)
        repo.close()


def tag_of(key: str) -> str:
    return key[: key.index("}") + 1]


def tags_in(raw, namespace: str) -> set[str]:
    return {tag_of(key.decode()) for key in raw.scan_iter(match="{" + namespace + "[}:]*")}


def spread_ids(count: int, partitions: int = 16) -> list[str]:
    """``count`` ids that cover every partition."""
    ids = [f"job-{i:03d}" for i in range(count)]
    assert {partition_of(job_id, partitions) for job_id in ids} == set(range(partitions))
    return ids


class ScriptCalls:
    """Records every script call of a store: (script name, keys)."""

    def __init__(self, repo: RedisRepository, monkeypatch) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        for name in ("_claim", "_extend", "_write_ops", "_list", "_queue_counts"):
            script = getattr(repo, name)
            monkeypatch.setattr(repo, name, self._wrap(name, script))
        pipelined = repo._pipelined

        def record_pipelined(script, calls):
            for keys, _ in calls:
                self.calls.append(("pipelined", list(keys)))
            return pipelined(script, calls)

        monkeypatch.setattr(repo, "_pipelined", record_pipelined)

    def _wrap(self, name, script):
        def call(keys=(), args=(), client=None):
            self.calls.append((name, list(keys)))
            return script(keys=keys, args=args)

        call.sha = script.sha  # type: ignore[attr-defined]
        call.script = script.script  # type: ignore[attr-defined]
        return call

    def named(self, name: str) -> list[list[str]]:
        return [keys for called, keys in self.calls if called == name]


# --------------------------------------------------------------------------- the count


def test_a_new_namespace_gets_sixteen_partitions_and_records_the_count(make_repo, raw):
    repo = make_repo(partitions=None)

    assert repo.partitions == 16
    assert raw.hget(meta_key(repo.namespace), "partitions") == b"16"


def test_a_later_store_adopts_the_count_the_namespace_was_set_up_with(make_repo):
    first = make_repo(partitions=4)
    first.add([date_job(job_id) for job_id in ("a", "b", "c", "d", "e")])

    later = make_repo(namespace=first.namespace, partitions=None)

    assert later.partitions == 4
    assert [job.id for job in later.list()] == ["a", "b", "c", "d", "e"]
    assert sorted(lease.job.id for lease in later.claim(NOW, 10, "t", 60)) == list("abcde")


def test_a_different_explicit_count_is_refused_naming_both_counts_and_the_fix(make_repo, server):
    first = make_repo(partitions=4)
    other = RedisRepository(server.url, namespace=first.namespace, partitions=8)

    with pytest.raises(PartitionCountError) as caught:
        other.setup()

    text = str(caught.value)
    assert "pyncette.partitions = 8" in text
    assert "set up with 4 partitions" in text
    assert "set pyncette.partitions = 4" in text
    assert "fresh namespace" in text
    assert other.describe_setup_error(caught.value) == text
    assert not other.is_transient(caught.value)
    other.close()


def test_an_unreadable_stored_count_is_refused_with_the_key_to_fix(make_repo, server, raw):
    first = make_repo(partitions=4)
    raw.hset(meta_key(first.namespace), "partitions", "many")
    other = RedisRepository(server.url, namespace=first.namespace)

    with pytest.raises(PartitionCountError, match=r"holds 'many'.*not a number from 1 to 1024"):
        other.setup()
    other.close()


def test_one_partition_keeps_the_layout_of_a_namespace_without_partitions(make_repo, raw):
    repo = make_repo(partitions=1)
    repo.add([date_job("a"), date_job("b", task="other")])

    tag = "{" + repo.namespace + "}"
    assert tags_in(raw, repo.namespace) == {tag}
    assert raw.hexists(f"{tag}:jobs", "a") and raw.hexists(f"{tag}:jobs", "b")
    assert raw.zrange(f"{tag}:due", 0, -1) == [b"a", b"b"]
    assert raw.hget(meta_key(repo.namespace), "partitions") == b"1"


def test_a_namespace_written_before_partitions_is_adopted_as_one_partition(make_repo, raw):
    old = make_repo(partitions=1)
    old.add([date_job("a"), interval_job("b")])
    raw.delete(meta_key(old.namespace))  # as a version without partitions left it

    repo = make_repo(namespace=old.namespace, partitions=None)

    assert repo.partitions == 1
    assert repo.get("a") is not None
    assert sorted(lease.job.id for lease in repo.claim(NOW, 5, "t", 60)) == ["a", "b"]
    assert raw.hget(meta_key(repo.namespace), "partitions") == b"1"
    assert tags_in(raw, repo.namespace) == {"{" + repo.namespace + "}"}


def test_a_namespace_written_before_partitions_refuses_another_explicit_count(
    make_repo, server, raw
):
    old = make_repo(partitions=1)
    old.add([date_job("a")])
    raw.delete(meta_key(old.namespace))

    other = RedisRepository(server.url, namespace=old.namespace, partitions=16)
    with pytest.raises(PartitionCountError, match=r"set pyncette\.partitions = 1 "):
        other.setup()
    other.close()


@pytest.mark.parametrize("bad", [0, 1025, "16", 2.0])
def test_a_partition_count_out_of_range_is_refused_when_the_store_is_built(server, bad):
    with pytest.raises(ValueError, match="partitions must be a whole number from 1 to 1024"):
        RedisRepository(server.url, namespace="x", partitions=bad)


def test_the_store_built_from_settings_takes_the_partitions_setting(server):
    from pyramid_pyncette.repository import create_repository
    from pyramid_pyncette.settings import parse_settings

    url = server.url
    fixed = create_repository(parse_settings({"pyncette.url": url, "pyncette.partitions": "4"}))
    adopting = create_repository(parse_settings({"pyncette.url": url}))

    assert isinstance(fixed, RedisRepository) and fixed.requested_partitions == 4
    assert isinstance(adopting, RedisRepository) and adopting.requested_partitions is None
    fixed.close()
    adopting.close()


@pytest.mark.slow
def test_pscheduler_stops_with_one_line_when_the_partition_count_differs(
    tmp_path, make_repo, server
):
    from tests.test_store_setup_errors import _assert_stops_with_one_line

    repo = make_repo(partitions=4)
    ini, _ = write_ini(
        tmp_path,
        server.url,
        extra=f"pyncette.redis_namespace = {repo.namespace}\npyncette.partitions = 8",
    )
    _assert_stops_with_one_line(
        ini, "pyncette.partitions = 8", "set up with 4 partitions", "set pyncette.partitions = 4"
    )


def test_pscheduler_stops_with_one_line_naming_the_fix_when_the_meta_key_has_the_wrong_type(
    tmp_path, make_repo, server, raw
):
    from tests.test_store_setup_errors import _assert_stops_with_one_line, _pscheduler

    repo = make_repo(partitions=4)
    raw.delete(meta_key(repo.namespace))
    raw.set(meta_key(repo.namespace), "4")
    ini, _ = write_ini(tmp_path, server.url, extra=f"pyncette.redis_namespace = {repo.namespace}")
    _assert_stops_with_one_line(ini, "is not a hash", f"HSET {meta_key(repo.namespace)}")
    status, _, err = _pscheduler(ini, "--check")
    assert status == 2 and "is not a hash" in err  # --check says what to fix


def test_a_meta_key_of_the_wrong_type_is_a_setup_error_naming_the_fix(make_repo, server, raw):
    first = make_repo(partitions=4)
    raw.delete(meta_key(first.namespace))
    raw.set(meta_key(first.namespace), "4")
    other = RedisRepository(server.url, namespace=first.namespace)

    with pytest.raises(PartitionCountError, match="is not a hash; delete it") as caught:
        other.setup()
    assert other.describe_setup_error(caught.value) == str(caught.value)
    assert not other.is_transient(caught.value)
    other.close()


def test_a_lost_meta_key_is_set_back_from_the_count_each_partition_keeps(make_repo, raw, caplog):
    first = make_repo(partitions=8)
    ids = spread_ids(40, 8)
    first.add([date_job(job_id) for job_id in ids])
    raw.delete(meta_key(first.namespace))  # evicted, or a node flushed

    later = make_repo(namespace=first.namespace, partitions=None)

    assert later.partitions == 8
    assert sorted(job.id for job in later.list(limit=100)) == sorted(ids)
    assert raw.hget(meta_key(first.namespace), "partitions") == b"8"
    assert "was missing" in caplog.text


def test_a_lost_meta_key_refuses_another_explicit_count(make_repo, server, raw):
    first = make_repo(partitions=16)
    first.add([date_job(job_id) for job_id in spread_ids(50)])
    raw.delete(meta_key(first.namespace))
    other = RedisRepository(server.url, namespace=first.namespace, partitions=4)

    with pytest.raises(PartitionCountError, match="set up with 16 partitions"):
        other.setup()
    other.close()


def test_a_lost_meta_key_with_partitioned_jobs_and_no_copy_of_the_count_is_refused(
    make_repo, server, raw
):
    first = make_repo(partitions=16)
    first.add([date_job(job_id) for job_id in spread_ids(50)])
    raw.delete(meta_key(first.namespace))
    for p in range(16):  # a namespace set up before the partitions kept a copy
        raw.delete(first._partition_meta_key(p))
    other = RedisRepository(server.url, namespace=first.namespace, partitions=4)

    with pytest.raises(PartitionCountError) as caught:
        other.setup()
    text = str(caught.value)
    assert f"{meta_key(first.namespace)!r} (the namespace's partition count) is missing" in text
    assert f"HSET {meta_key(first.namespace)} partitions 16" in text
    assert raw.hget(meta_key(first.namespace), "partitions") is None  # nothing recorded
    other.close()


def test_a_namespace_written_before_partitions_holding_only_a_paused_queue_keeps_its_pause(
    make_repo, raw
):
    namespace = f"p_{uuid.uuid4().hex[:10]}"
    raw.sadd("{" + namespace + "}:paused", "q2")  # no jobs, no runs: an old version left it

    repo = make_repo(namespace=namespace, partitions=None)

    assert repo.partitions == 1
    assert repo.paused_queues() == {"q2"}


def test_old_layout_jobs_beside_partitions_are_named_in_a_warning(make_repo, raw, caplog):
    first = make_repo(partitions=4)
    raw.hset("{" + first.namespace + "}:jobs", "stray", "{}")  # an old version still writing

    make_repo(namespace=first.namespace, partitions=None)

    assert "layout of one partition" in caplog.text
    assert "{" + first.namespace + "}:jobs" in caplog.text


# --------------------------------------------------------------------------- layout


def test_jobs_spread_over_the_hash_tags_of_their_partitions(make_repo, raw):
    repo = make_repo()
    ids = spread_ids(160)
    repo.add([date_job(job_id, task=f"t{i % 3}") for i, job_id in enumerate(ids)])

    tags = {"{" + f"{repo.namespace}:{p}" + "}" for p in range(16)}
    assert tags_in(raw, repo.namespace) == tags | {"{" + repo.namespace + "}"}  # and the meta key
    for job_id in ids:
        keys = repo.job_keys(job_id)
        assert keys.tag == "{" + f"{repo.namespace}:{partition_of(job_id, 16)}" + "}"
        assert raw.hexists(keys.jobs, job_id)
        assert raw.zscore(keys.due, job_id) is not None
        assert raw.zscore(keys.ids, job_id) == 0
    for tag in tags:
        keys = [key.decode() for key in raw.scan_iter(match=tag.replace("{", "[{]") + ":*")]
        assert keys and {key_slot(key.encode()) for key in keys} == {key_slot(tag.encode())}


def test_every_script_call_touches_the_keys_of_one_slot(make_repo, server, monkeypatch):
    """What Redis Cluster requires, over random operations on every partition: each
    script call's KEYS share one slot, and the script touches no other key."""
    repo = make_repo()
    calls = ScriptCalls(repo, monkeypatch)
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
        drive(7, (MemoryRepository(), repo), steps=120, queues=True)
        repo.queue_stats(NOW)
        repo.list(limit=5)
    finally:
        repo.client.echo("monitor-done")
        watcher.join(30)

    slots = set()
    for _, keys in calls.calls:
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        slots.add(key_slot(keys[0].encode()))
    assert len(slots) == 16  # every partition was written or read
    declared: set[str] | None = None
    scripts = 0
    for event in events:
        words = event["command"].split(" ")
        name = words[0].upper()
        if event["client_type"] == "lua":
            if name in ("TIME", "PUBLISH"):
                continue
            assert declared is not None and words[1] in declared, event
        elif name in ("EVALSHA", "EVAL"):
            scripts += 1
            declared = set(words[3 : 3 + int(words[2])])
            assert len({key_slot(key.encode()) for key in declared}) == 1, event
        else:
            declared = None
    assert scripts >= len(calls.calls) > 100


def heads_match_the_due_sets(repo, raw) -> None:
    """Each partition's heads hold the earliest due time of each of its non-empty due sets."""
    for p in range(repo.partitions):
        keys = repo.partition_keys(p)
        expected = {}
        for key in raw.scan_iter(match=keys.due.replace("{", "[{]") + "*"):
            head = raw.zrange(key, 0, 0, withscores=True)
            if head:
                name = key.decode()[len(keys.due) + 1 :] or "default"
                expected[name.encode()] = head[0][1]
        assert dict(raw.zrange(f"{keys.tag}:heads", 0, -1, withscores=True)) == expected, p


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_on_sixteen_partitions_match_the_memory_store(make_repo, raw, seed):
    repo = make_repo()
    drive(seed, (MemoryRepository(), repo), queues=True)
    heads_match_the_due_sets(repo, raw)


def test_an_idle_claim_over_every_queue_reads_the_partition_heads_not_every_due_set(
    make_repo, server
):
    repo = make_repo()
    ids = spread_ids(64)
    repo.add(
        [date_job(job_id, NOW + 60 * SECOND, queue=f"q{i % 8}") for i, job_id in enumerate(ids)]
    )
    repo.claim(NOW, 1, "warm", 60)  # the store learns the queues
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
        assert repo.claim(NOW, 10, "t", 60) == []
        assert repo.next_due() == NOW + 60 * SECOND
    finally:
        repo.client.echo("monitor-done")
        watcher.join(30)

    read = [
        event["command"].split(" ")[1]
        for event in events
        if event["client_type"] == "lua" and " " in event["command"]
    ]
    assert {key.rpartition(":")[2] for key in read if ":heads" in key} == {"heads"}
    due_sets = [key for key in read if ":due" in key]
    # next_due reads the head of the earliest queue of each partition; the claim none.
    assert len(due_sets) <= 16


@pytest.mark.parametrize("seed", range(2))
def test_random_operations_without_queues_on_sixteen_partitions_match_the_memory_store(
    make_repo, seed
):
    drive(seed, (MemoryRepository(), make_repo()))


# --------------------------------------------------------------------------- claims


def test_a_claim_takes_the_earliest_due_jobs_across_partitions(make_repo):
    repo = make_repo()
    ids = spread_ids(48)
    rng = random.Random(3)
    dues = {job_id: NOW - rng.randint(0, 1000) * SECOND for job_id in ids}
    repo.add([date_job(job_id, due) for job_id, due in dues.items()])

    leases = repo.claim(NOW, 10, "t", 60)

    earliest = sorted(ids, key=lambda job_id: (dues[job_id], job_id))[:10]
    assert [lease.job.id for lease in leases] == earliest


def test_a_batch_fills_from_further_partitions_with_one_claim_call_each(make_repo, monkeypatch):
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id, NOW - i * SECOND) for i, job_id in enumerate(ids)])
    calls = ScriptCalls(repo, monkeypatch)

    leases = repo.claim(NOW, 12, "t", 60)

    assert len(leases) == 12
    holding = {partition_of(lease.job.id, 16) for lease in leases}
    assert len(holding) > 1
    claimed_in = [keys[0] for keys in calls.named("_claim")]
    assert sorted(claimed_in) == sorted(repo.partition_keys(p).jobs for p in holding)


def test_an_idle_claim_asks_every_partition_in_one_pipeline_and_runs_no_claim(
    make_repo, monkeypatch
):
    repo = make_repo()
    repo.add([date_job(job_id, NOW + 3600 * SECOND) for job_id in spread_ids(48)])
    calls = ScriptCalls(repo, monkeypatch)
    pipelines = []
    pipeline = repo.client.pipeline
    monkeypatch.setattr(
        repo.client, "pipeline", lambda **kw: pipelines.append(kw) or pipeline(**kw)
    )

    assert repo.claim(NOW, 10, "t", 60) == []

    assert calls.named("_claim") == []
    assert len(calls.named("pipelined")) == 16
    assert len(pipelines) == 1


def test_claims_start_at_a_partition_that_moves_on_by_one_at_every_claim(make_repo, monkeypatch):
    repo = make_repo()
    ids = spread_ids(48)
    starts = []
    order = repo._claim_order

    def record(count):
        visited = order(count)
        starts.append(visited[0])
        assert sorted(visited) == list(range(16))
        return visited

    monkeypatch.setattr(repo, "_claim_order", record)
    for step in range(20):
        repo.add([date_job(ids[step])])
        repo.claim(NOW, 1, f"t{step}", 60)

    assert starts == [(starts[0] + step) % 16 for step in range(20)]


def test_completions_of_a_batch_are_written_by_one_script_call_per_partition(
    make_repo, monkeypatch
):
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([interval_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 48, "t", 60)
    calls = ScriptCalls(repo, monkeypatch)

    repo.complete(
        [Outcome(lease, True, NOW + SECOND) for lease in leases],
        [run_of(lease, "succeeded", NOW + SECOND) for lease in leases],
    )

    writes = calls.named("_write_ops")
    assert len(writes) == 16
    assert {keys[0] for keys in writes} == {repo.partition_keys(p).jobs for p in range(16)}
    assert all(job.locked_by is None for job in repo.list(limit=100))
    assert len(all_runs(repo)) == 48


def test_garbage_in_one_partition_costs_only_that_job(make_repo, raw, caplog):
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id) for job_id in ids])
    bad = ids[5]
    raw.hset(repo.job_keys(bad).jobs, bad, "{not json")
    neighbours = [
        job_id
        for job_id in ids
        if partition_of(job_id, 16) == partition_of(bad, 16) and job_id != bad
    ]
    assert neighbours

    leases = repo.claim(NOW, 100, "t", 60)

    assert sorted(lease.job.id for lease in leases) == sorted(set(ids) - {bad})
    assert raw.zscore(repo.job_keys(bad).due, bad) is None
    assert "unreadable stored document" in caplog.text
    assert repo.claim(NOW, 100, "t2", 60) == []
    assert repo.next_due() == NOW + 60 * SECOND


def test_with_sixteen_partitions_and_two_daemons_no_job_waits_a_poll_longer_than_with_one(
    make_repo,
):
    """Two daemons poll once a second (fake clock) taking 8 jobs each: every partition
    drains, and no job waits more than one poll longer than in a store of one partition."""

    def waits(partitions: int) -> dict[str, int]:
        first = make_repo(partitions=partitions)
        second = make_repo(namespace=first.namespace, partitions=partitions)
        ids = spread_ids(160)
        rng = random.Random(11)
        # A burst due at once, then a trickle.
        dues = {job_id: NOW + rng.choice([0] * 3 + list(range(30))) * SECOND for job_id in ids}
        first.add([date_job(job_id, due) for job_id, due in dues.items()])
        taken: dict[str, int] = {}
        for poll in range(60):
            now = NOW + poll * SECOND
            for daemon in (first, second):
                leases = daemon.claim(now, 8, f"t{poll}", 60)
                for lease in leases:
                    taken[lease.job.id] = poll - (dues[lease.job.id] - NOW) // SECOND
                daemon.complete([Outcome(lease, True, now) for lease in leases])
        assert sorted(taken) == sorted(ids)  # every partition drained
        assert first.list().jobs == []
        return taken

    single, partitioned = waits(1), waits(16)
    assert all(partitioned[job_id] <= single[job_id] + 1 for job_id in single)


# --------------------------------------------------------------------------- merged reads


def test_listing_jobs_merges_the_partitions_in_id_order(make_repo):
    repo = make_repo()
    ids = spread_ids(50)
    repo.add([date_job(job_id, task="even" if i % 2 else "odd") for i, job_id in enumerate(ids)])

    def pages(**filters):
        found, cursor = [], None
        while True:
            page = repo.list(cursor=cursor, limit=7, **filters)
            found.extend(job.id for job in page)
            cursor = page.next_cursor
            if cursor is None:
                return found

    assert pages() == sorted(ids)
    assert pages(task="even") == sorted(ids[1::2])
    assert sorted(repo.get_many(ids[::-1][:20])) == sorted(ids[::-1][:20])


def test_the_run_history_merges_the_partitions_newest_first(make_repo):
    repo = make_repo()
    ids = spread_ids(40)
    repo.add([date_job(job_id) for job_id in ids])
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 40, "t", 60)}
    order = ids[:]
    random.Random(5).shuffle(order)
    for i, job_id in enumerate(order):  # one store call each, in this order
        repo.complete([], [run_of(leases[job_id], "succeeded", NOW + i * SECOND)])

    page = repo.list_runs(limit=100)
    assert [run.job_id for run in page] == order[::-1]
    assert [run.id for run in page] == sorted((run.id for run in page), reverse=True)
    assert [run.job_id for run in all_runs(repo)] == order[::-1]  # pages of 3, by cursor
    assert [run.job_id for run in all_runs(repo, outcomes=["succeeded"])] == order[::-1]
    with pytest.raises(ValueError, match="invalid run cursor"):
        repo.list_runs(cursor="0001764451200123-0000000000")


def test_pruning_deletes_the_oldest_records_across_partitions(make_repo):
    repo = make_repo()
    ids = spread_ids(40)
    repo.add([date_job(job_id) for job_id in ids])
    leases = {lease.job.id: lease for lease in repo.claim(NOW, 40, "t", 60)}
    for i, job_id in enumerate(ids):
        repo.complete([], [run_of(leases[job_id], "succeeded", NOW + i * SECOND)])

    assert repo.prune_runs(NOW + 10 * SECOND, 4) == 4
    assert repo.prune_runs(NOW + 10 * SECOND, 100) == 6
    assert sorted(run.job_id for run in all_runs(repo)) == sorted(ids[10:])


def test_next_due_is_the_earliest_across_partitions_but_paused_queues(make_repo):
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id, NOW + (i + 10) * SECOND) for i, job_id in enumerate(ids)])
    repo.add([date_job("early", NOW + SECOND, queue="emails")])

    assert repo.next_due() == NOW + SECOND
    assert repo.next_due(frozenset({"default"})) == NOW + 10 * SECOND
    repo.set_queue_paused("emails", True)
    assert repo.next_due() == NOW + 10 * SECOND
    assert repo.next_due_delay(NOW) == 10.0


def test_pausing_a_queue_reaches_every_partition(make_repo, raw):
    repo = make_repo()
    repo.add([date_job(job_id, queue="emails") for job_id in spread_ids(48)])

    assert repo.set_queue_paused("emails", True) is True
    assert all(raw.sismember(repo.partition_keys(p).paused, "emails") for p in range(16))
    assert repo.paused_queues() == {"emails"}
    assert repo.claim(NOW, 100, "t", 60) == []
    assert repo.set_queue_paused("emails", False) is True
    assert len(repo.claim(NOW, 100, "t", 60)) == 48


def test_queue_stats_add_up_every_partition(make_repo):
    repo, memory = make_repo(), MemoryRepository()
    jobs = [
        date_job(job_id, NOW - i * SECOND if i % 3 else NOW + SECOND, queue=("a", "b")[i % 2])
        for i, job_id in enumerate(spread_ids(60))
    ]
    for store in (repo, memory):
        store.add(jobs)
        store.claim(NOW, 7, "t", 60, frozenset({"a"}))
        store.set_queue_paused("b", True)

    assert repo.queue_stats(NOW) == memory.queue_stats(NOW)


# --------------------------------------------------------------------------- Redis Cluster


@pytest.fixture
def cluster_url(redis_cluster_server):
    """The URL of the session's three-master Redis Cluster."""
    redis_cluster_server.start()  # brings back a node an earlier test stopped
    return redis_cluster_server.url


@pytest.fixture
def cluster_repo(cluster_url):
    repo = RedisRepository(cluster_url, namespace=f"c_{uuid.uuid4().hex[:10]}", store_clock=False)
    repo.setup()
    yield repo
    client = repo.client
    for node in client.get_primaries():
        for key in node.redis_connection.scan_iter(match="{" + repo.namespace + "[}:]*"):
            node.redis_connection.delete(key)
    repo.close()


def test_a_cluster_store_spreads_its_jobs_over_every_master(cluster_repo):
    ids = spread_ids(160)
    cluster_repo.add([date_job(job_id) for job_id in ids])

    held = {}
    for node in cluster_repo.client.get_primaries():
        keys = node.redis_connection.scan_iter(match="{" + cluster_repo.namespace + ":*")
        held[node.name] = sum(
            node.redis_connection.hlen(key) for key in keys if key.endswith(":jobs")
        )
    assert len(held) == 3
    assert all(count > 0 for count in held.values())
    assert sum(held.values()) == 160


def test_a_cluster_store_claims_completes_lists_and_counts(cluster_repo):
    ids = spread_ids(64)
    cluster_repo.add([interval_job(job_id) for job_id in ids])
    cluster_repo.add([date_job("mail", queue="emails")])

    leases = cluster_repo.claim(NOW, 30, "t", 60)
    assert len(leases) == 30
    assert cluster_repo.extend(NOW, [(lease.job.id, "t", 30) for lease in leases[:5]]) == {
        lease.job.id for lease in leases[:5]
    }
    cluster_repo.complete(
        [Outcome(lease, True, NOW + SECOND) for lease in leases],
        [run_of(lease, "succeeded", NOW + SECOND) for lease in leases],
    )
    assert len(all_runs(cluster_repo)) == 30
    assert [job.id for job in cluster_repo.list(limit=100)] == sorted([*ids, "mail"])
    assert cluster_repo.next_due() == NOW
    stats = {info.name: info for info in cluster_repo.queue_stats(NOW)}
    assert stats["default"].due == 34 and stats["emails"].due == 1
    assert cluster_repo.set_queue_paused("emails", True)
    assert "mail" not in {lease.job.id for lease in cluster_repo.claim(NOW, 100, "t2", 60)}
    assert cluster_repo.prune_runs(NOW + 2 * SECOND, 100) == 30


@pytest.mark.slow  # waits for a real pub/sub message
def test_a_cluster_store_wakes_listeners_when_a_job_is_added(cluster_repo):
    woken = threading.Event()
    stop = cluster_repo.start_listener(woken.set)
    try:
        # The subscription is made by the listener thread: add until it hears one.
        for attempt in range(50):
            cluster_repo.add([date_job(f"wake-{attempt}")])
            if woken.wait(0.2):
                break
        assert woken.is_set()
    finally:
        stop()


def test_a_cluster_url_may_list_every_node(redis_cluster_server):
    redis_cluster_server.start()
    nodes = ",".join(
        f"{redis_cluster_server.host}:{node.port}" for node in redis_cluster_server.nodes
    )
    repo = RedisRepository(f"redis+cluster://{nodes}/0", namespace=f"c_{uuid.uuid4().hex[:10]}")
    try:
        repo.setup()
        assert repo.partitions == 16
        assert {node.port for node in repo.client.get_primaries()} == {
            node.port for node in redis_cluster_server.nodes
        }
    finally:
        repo.client.delete(meta_key(repo.namespace))
        repo.close()


def test_a_cluster_url_builds_no_client_until_the_store_is_used():
    repo = RedisRepository("redis+cluster://127.0.0.1:1,127.0.0.1:2", namespace="x")
    assert repo._client_obj is None
    repo.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "a cluster has only database 0, not '3'"),
        ("redis+cluster://127.0.0.1:7000,nohost/0", "the node 'nohost' is not host:port"),
        ("redis+cluster:///0", "name at least one node"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_the_problem(url, problem):
    with pytest.raises(ValueError, match="invalid Redis Cluster URL") as caught:
        RedisRepository(url, namespace="x")
    assert problem in str(caught.value)


def test_a_cluster_url_keeps_its_password_out_of_errors():
    with pytest.raises(ValueError) as caught:
        RedisRepository("rediss+cluster://:s3cret@127.0.0.1:7000/2", namespace="x")
    assert "s3cret" not in str(caught.value)


def test_the_partition_probe_and_next_due_survive_a_server_that_lost_its_scripts(make_repo):
    repo = make_repo()
    repo.add([date_job(job_id, NOW + timedelta(seconds=5)) for job_id in spread_ids(48)])
    repo.client.script_flush()

    assert repo.next_due() == NOW + 5 * SECOND
    assert repo.claim(NOW, 5, "t", 60) == []


# --------------------------------------------------------------------------- unreachable partitions


def _unreachable(repo, monkeypatch, partition: int) -> dict:
    """Make every script call on ``partition`` fail as a stopped cluster shard does;
    returns a switch: ``state["down"] = False`` brings it back."""
    monkeypatch.setattr(repo, "_defer_unreachable", True)  # as on a cluster
    state = {"down": True}
    tag = repo.partition_keys(partition).tag
    for name in ("_claim", "_write_ops"):
        script = getattr(repo, name)

        def call(keys=(), args=(), client=None, script=script):
            if state["down"] and keys[0].startswith(tag):
                raise redis.ConnectionError("Connection refused")
            return script(keys=keys, args=args)

        call.sha = script.sha  # type: ignore[attr-defined]
        monkeypatch.setattr(repo, name, call)
    return state


def test_an_unreachable_partition_keeps_its_completions_and_the_others_carry_on(
    make_repo, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="pyramid_pyncette.repository.redis")
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id) for job_id in ids[:32]])  # one-off jobs: deleted when done
    repo.add([interval_job(job_id) for job_id in ids[32:]])  # settled when done
    leases = repo.claim(NOW, 48, "t", 60)
    down = partition_of(ids[0], 16)
    state = _unreachable(repo, monkeypatch, down)
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]
    records = [run_of(lease, "succeeded", NOW + SECOND) for lease in leases]
    repo.add([date_job("later", NOW + 5 * SECOND)])

    assert repo.complete_and_claim(outcomes, NOW + 10 * SECOND, 10, "t2", 60, runs=records)

    on_down = {lease.job.id for lease in leases if partition_of(lease.job.id, 16) == down}
    assert on_down
    assert {run.job_id for run in all_runs(repo)} == {lease.job.id for lease in leases} - on_down
    assert f"partition {down} of the store cannot be reached" in caplog.text
    assert caplog.text.count("cannot be reached") == 1  # once per outage

    state["down"] = False
    repo.complete_and_claim([], NOW + 10 * SECOND, 0, "t3", 60)

    assert {run.job_id for run in all_runs(repo)} == {lease.job.id for lease in leases}
    for job_id in on_down:
        job = repo.get(job_id)
        assert job is None or job.locked_by is None  # deleted (one-off) or settled
    assert f"partition {down} of the store is reachable again" in caplog.text


def test_on_one_server_a_failing_partition_fails_the_whole_call(make_repo, monkeypatch):
    """One server is up or down as a whole: nothing is kept back, the caller retries."""
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 48, "t", 60)
    state = _unreachable(repo, monkeypatch, partition_of(ids[0], 16))
    monkeypatch.setattr(repo, "_defer_unreachable", False)
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]

    with pytest.raises(redis.ConnectionError):
        repo.complete_and_claim(outcomes, NOW, 10, "t2", 60)
    assert repo._deferred == {}
    state["down"] = False
    repo.complete_and_claim(outcomes, NOW, 10, "t2", 60)
    assert repo.list().jobs == []


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:s3cr/etPW@127.0.0.1:1,127.0.0.1:2",
        "redis+cluster://:s3cr/etPW@127.0.0.1:1/3",
        "rediss+cluster://user:s3cr?etPW@127.0.0.1:1,nohost",
        "redis+cluster://:s3cr#etPW@127.0.0.1:99999999",
        "redis+cluster://:s3cr/et/PW@nohost",
        "redis+cluster://:s3/cr?et#PW@127.0.0.1:1/0",
    ],
)
def test_no_part_of_a_cluster_password_with_raw_delimiters_appears_in_the_error(url):
    with pytest.raises(ValueError) as caught:
        RedisRepository(url, namespace="x")
    text = str(caught.value)
    assert "percent-encode" in text
    for piece in ("s3", "cr", "et", "PW"):
        assert piece not in text.replace("rediss+cluster", "").replace("redis+cluster", "")


# ------------------------------------------------------------ staging across partitions


def _ids_by_partition(partitions: int = 16) -> dict[int, list[str]]:
    """Ids of every partition: ``{partition: [id, ...]}``."""
    found: dict[int, list[str]] = {}
    for job_id in spread_ids(160, partitions):
        found.setdefault(partition_of(job_id, partitions), []).append(job_id)
    return found


def test_a_stage_that_fails_in_one_partition_undoes_the_partitions_it_already_staged(
    make_repo, monkeypatch
):
    repo = make_repo()
    by_p = _ids_by_partition()
    kept, added, on_down = by_p[2][0], by_p[3][0], by_p[9][0]
    repo.add([date_job(kept, NOW + 5 * SECOND)])
    before = repo.get(kept)
    _unreachable(repo, monkeypatch, 9)

    with pytest.raises(redis.ConnectionError):
        repo.stage([date_job(added), date_job(on_down)], [kept], "staged:t1", 30, NOW)

    assert repo.get(kept) == before  # the cancel staged in partition 2 was undone
    assert repo.get(added) is None  # so was the add staged in partition 3
    assert [job.id for job in repo.list().jobs] == [kept]
    # Past the staging window nothing staged turns claimable: only `kept` is due.
    assert [lease.job.id for lease in repo.claim(NOW + timedelta(hours=1), 10, "w", 60)] == [kept]


@pytest.mark.parametrize("step", ["publish", "withdraw"])
def test_publish_and_withdraw_try_every_partition_after_one_fails(make_repo, monkeypatch, step):
    repo = make_repo()
    by_p = _ids_by_partition()
    ids = [by_p[1][0], by_p[5][0], by_p[12][0]]
    jobs = [date_job(job_id) for job_id in ids]
    previous = repo.stage(jobs, [], "staged:t1", 30, NOW)
    _unreachable(repo, monkeypatch, 5)

    with pytest.raises(redis.ConnectionError):
        if step == "publish":
            repo.publish("staged:t1", jobs)
        else:
            repo.withdraw("staged:t1", ids, previous)

    found = {job_id: repo.get(job_id) for job_id in ids}
    assert found[ids[1]].locked_by == "staged:t1"  # the unreachable partition: still staged
    for job_id in (ids[0], ids[2]):  # before and after it
        if step == "publish":
            assert found[job_id] is not None and found[job_id].locked_by is None
        else:
            assert found[job_id] is None


# --------------------------------------------------------- leases with a partition unreachable


def _unreachable_everywhere(repo, monkeypatch, partition: int) -> dict:
    """:func:`_unreachable`, and lease renewals of ``partition`` fail too."""
    state = _unreachable(repo, monkeypatch, partition)
    tag = repo.partition_keys(partition).tag
    script = repo._extend

    def call(keys=(), args=(), client=None):
        if state["down"] and keys[0].startswith(tag):
            raise redis.ConnectionError("Connection refused")
        return script(keys=keys, args=args)

    call.sha = script.sha  # type: ignore[attr-defined]
    monkeypatch.setattr(repo, "_extend", call)
    return state


def test_a_renewal_with_one_partition_unreachable_renews_the_others_and_keeps_its_leases(
    make_repo, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="pyramid_pyncette.repository.redis")
    repo = make_repo()
    by_p = _ids_by_partition()
    ids = [by_p[p][0] for p in (4, 0, 9, 15)]  # the unreachable partition's lease first
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 10, "t", 60)
    _unreachable_everywhere(repo, monkeypatch, 4)
    renewals = [(lease.job.id, lease.token, 60) for lease in leases]

    held = repo.extend(NOW + 50 * SECOND, renewals)
    held_again = repo.extend(NOW + 51 * SECOND, renewals)

    assert held == held_again == set(ids)  # nothing reported lost
    assert caplog.text.count("partition 4 of the store cannot be reached") == 1
    # The reachable partitions' leases now run to NOW+110s: past the first lease
    # (NOW+60s) another daemon finds none of them.
    assert repo.claim(NOW + 90 * SECOND, 10, "t2", 60) == []


def test_a_release_with_one_partition_unreachable_releases_the_others(make_repo, monkeypatch):
    repo = make_repo()
    by_p = _ids_by_partition()
    ids = [by_p[p][0] for p in (2, 6, 11)]
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 10, "t", 60)
    _unreachable(repo, monkeypatch, 6)

    repo.release(leases)

    assert repo.get(ids[1]).locked_by == "t"  # its lease expires instead
    assert {lease.job.id for lease in repo.claim(NOW, 10, "t2", 60)} == {ids[0], ids[2]}


def test_a_completion_batch_with_one_partition_unreachable_writes_each_run_record_once(
    make_repo, monkeypatch
):
    repo = make_repo()
    ids = spread_ids(40)
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 40, "t", 60)
    state = _unreachable(repo, monkeypatch, 9)
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]
    records = [run_of(lease, "succeeded", NOW + SECOND) for lease in leases]

    repo.complete(outcomes, records)  # the daemon's loop carries on
    state["down"] = False
    repo.complete_and_claim([], NOW + 2 * SECOND, 0, "t", 60)  # writes what was kept

    recorded = [run.job_id for run in all_runs(repo)]
    assert sorted(recorded) == sorted(ids)  # every record once, none twice
    assert repo.list().jobs == []


def test_a_lease_not_renewed_during_an_outage_is_renewed_before_its_partition_is_claimed_again(
    make_repo, monkeypatch
):
    repo = make_repo()
    by_p = _ids_by_partition()
    running, waiting = by_p[4][0], by_p[4][1]
    repo.add([date_job(running)])
    [lease] = repo.claim(NOW, 10, "t", 60)
    repo.add([date_job(waiting, NOW + 65 * SECOND)])
    state = _unreachable_everywhere(repo, monkeypatch, 4)
    assert repo.extend(NOW + 50 * SECOND, [(running, lease.token, 60)]) == {running}
    state["down"] = False

    # Back after the first lease ran out (NOW+60s): the kept renewal comes first.
    claimed = repo.claim(NOW + 70 * SECOND, 10, "t2", 60)

    assert [lease.job.id for lease in claimed] == [waiting]
    assert repo.get(running).locked_by == "t"
    assert repo.extend(NOW + 80 * SECOND, [(running, lease.token, 60)]) == {running}


def test_the_run_history_cap_is_shared_by_the_partitions(make_repo, raw, monkeypatch):
    from pyramid_pyncette.repository import redis as redis_store

    monkeypatch.setattr(redis_store, "MAX_REDIS_RUNS", 800)
    monkeypatch.setattr(redis_store, "MIN_REDIS_RUNS_PER_PARTITION", 10)
    repo = make_repo()
    repo.add([date_job("a")])
    [lease] = repo.claim(NOW, 1, "t", 60)
    for _ in range(6):
        repo.complete([], [run_of(lease, "succeeded", NOW)] * 100)
    # 800 over 16 partitions: about 50 in this one (trimmed a stream node at a time).
    assert 50 <= raw.xlen(repo.job_keys("a").runs) < 300


def test_a_partition_keeps_at_least_the_floor_of_run_records(make_repo, raw, monkeypatch):
    from pyramid_pyncette.repository import redis as redis_store

    monkeypatch.setattr(redis_store, "MAX_REDIS_RUNS", 160)
    monkeypatch.setattr(redis_store, "MIN_REDIS_RUNS_PER_PARTITION", 500)
    repo = make_repo()
    repo.add([date_job("a")])
    [lease] = repo.claim(NOW, 1, "t", 60)
    for _ in range(6):
        repo.complete([], [run_of(lease, "succeeded", NOW)] * 100)
    assert raw.xlen(repo.job_keys("a").runs) >= 500


def test_a_partition_whose_heads_are_gone_still_gives_its_due_jobs_and_rebuilds_them(
    make_repo, raw
):
    repo = make_repo()
    paused_one, *ids = _ids_by_partition()[5]  # only partition 5 holds jobs
    repo.add([date_job(job_id, queue="q2" if i % 2 else "default") for i, job_id in enumerate(ids)])
    repo.set_queue_paused("q3", True)
    repo.add([date_job(paused_one, NOW + SECOND, queue="q3")])
    raw.delete(f"{repo.partition_keys(5).tag}:heads")  # evicted, or deleted by hand

    assert repo.next_due() == NOW
    claimed = sorted(lease.job.id for lease in repo.claim(NOW, 100, "t", 60))

    assert claimed == sorted(ids)
    heads_match_the_due_sets(repo, raw)  # rebuilt, with the paused queue's head


def test_a_key_of_the_wrong_type_in_one_partition_costs_that_partition_only(make_repo, raw, caplog):
    repo = make_repo()
    ids = spread_ids(48)
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 48, "t", 60)
    repo.add([date_job(f"{job_id}-next", NOW + SECOND) for job_id in ids])
    tag = repo.partition_keys(3).tag
    raw.delete(f"{tag}:paused")
    raw.set(f"{tag}:paused", "oops")  # a careless hand
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]
    records = [run_of(lease, "succeeded", NOW + SECOND) for lease in leases]

    claimed = repo.complete_and_claim(outcomes, NOW + SECOND, 100, "t2", 60, runs=records)
    repo.complete_and_claim([], NOW + SECOND, 100, "t2", 60)

    broken = {f"{job_id}-next" for job_id in ids if partition_of(f"{job_id}-next", 16) == 3}
    assert broken
    assert {lease.job.id for lease in claimed} == {f"{job_id}-next" for job_id in ids} - broken
    assert "partition 3 of the store holds a key of the wrong type" in caplog.text
    assert caplog.text.count("holds a key of the wrong type") == 1  # logged once
    assert tag in caplog.text
    assert repo.next_due() is not None
    stats = {info.name: info for info in repo.queue_stats(NOW + SECOND)}
    assert stats["default"].running == len(claimed)
    assert repo.set_queue_paused("q2", True) is True  # the other partitions
    assert repo.paused_queues() == {"q2"}
    on_three = {job_id for job_id in ids if partition_of(job_id, 16) == 3}
    assert {run.job_id for run in all_runs(repo)} == set(ids) - on_three  # theirs wait


@pytest.mark.parametrize("retry", ["complete", "complete_and_claim"])
def test_a_completion_batch_tried_again_after_failing_partway_writes_each_run_record_once(
    make_repo, monkeypatch, retry
):
    """One server: a failure raises (the caller tries the batch again), but the
    partitions written before it do not get their records twice."""
    repo = make_repo()
    ids = spread_ids(40)
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 40, "t", 60)
    state = _unreachable(repo, monkeypatch, 9)
    monkeypatch.setattr(repo, "_defer_unreachable", False)
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]
    records = [run_of(lease, "succeeded", NOW + SECOND) for lease in leases]
    for _ in range(2):  # fails twice, partway
        with pytest.raises(redis.ConnectionError):
            if retry == "complete":
                repo.complete(outcomes, records)
            else:
                repo.complete_and_claim(outcomes, NOW + SECOND, 10, "t", 60, runs=records)
    state["down"] = False

    if retry == "complete":
        repo.complete(outcomes, records)
    else:
        repo.complete_and_claim(outcomes, NOW + SECOND, 10, "t", 60, runs=records)

    assert sorted(run.job_id for run in all_runs(repo)) == sorted(ids)
    assert repo.list().jobs == []
    assert repo._runs_written == set()


def test_a_completion_batch_tried_again_partition_by_partition_writes_the_rest_in_the_order_given(
    make_repo, monkeypatch, caplog
):
    """A batch that failed partway on one server, tried again partition by partition
    (as on a cluster): the records already written are left out, and the others keep
    their places in the batch, so the history lists them in the order given."""
    repo = make_repo()
    ids = spread_ids(40)
    random.Random(7).shuffle(ids)  # the batch's order is not the partitions' order
    repo.add([date_job(job_id) for job_id in ids])
    leases = repo.claim(NOW, 40, "t", 60)
    leases.sort(key=lambda lease: ids.index(lease.job.id))
    state = _unreachable(repo, monkeypatch, 9)
    monkeypatch.setattr(repo, "_defer_unreachable", False)
    outcomes = [Outcome(lease, True, NOW + SECOND) for lease in leases]
    records = [run_of(lease, "succeeded", NOW + SECOND) for lease in leases]
    with pytest.raises(redis.ConnectionError):
        repo.complete(outcomes, records)
    first = {run.job_id for run in all_runs(repo)}
    assert first and first != set(ids)  # partway
    state["down"] = False
    monkeypatch.setattr(repo, "_defer_unreachable", True)

    repo.complete(outcomes, records)

    runs = all_runs(repo)
    assert sorted(run.job_id for run in runs) == sorted(ids)
    again = [run.job_id for run in runs if run.job_id not in first]
    assert again == [run.job_id for run in reversed(records) if run.job_id not in first]
    assert "writing one by one" not in caplog.text  # each partition's batch was written whole
    assert repo.list().jobs == []
    assert repo._runs_written == set()


def test_a_start_while_a_partition_cannot_be_reached_skips_copying_the_count_there(
    make_repo, server, monkeypatch
):
    first = make_repo(partitions=4)
    other = RedisRepository(server.url, namespace=first.namespace)

    class DownPipeline:
        def hsetnx(self, *args):
            pass

        def execute(self):
            raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(other.client, "pipeline", lambda transaction=True: DownPipeline())
    other.setup()

    assert other.partitions == 4
    other.close()
