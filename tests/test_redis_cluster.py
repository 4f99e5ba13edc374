"""The Redis store on a real Redis Cluster of three masters (``redis+cluster://``).

Jobs spread over the cluster's shards by partition (hash tag ``{ns:p}``). One
master going down and coming back while two daemons run delays only the jobs
of its own slots: the others keep running meanwhile, and afterwards every job
has run exactly once while the daemons logged the outage and carried on.

The conformance suite (``conftest.STORES``) and the multi-daemon suites
(``tests.daemon.PERSISTENT_STORES``: ``test_stores_processes``,
``test_chaos``, ``test_worker_leases``) run on the cluster too, as the store
``redis-cluster``. Everything here is skipped while the package does not take
``redis+cluster://`` URLs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import (
    PSCHEDULER,
    REDIS_CLUSTER_SUPPORTED,
    bootstrap_registry,
    process_env,
    store_supported,
    wait_for,
    write_ini,
)

needs_cluster_urls = pytest.mark.skipif(
    not REDIS_CLUSTER_SUPPORTED, reason="this version does not take redis+cluster:// URLs"
)


# --------------------------------------------------------------------------- helpers


def _slot_owner(cluster: Any) -> Callable[[str], int]:
    """``owner(tag)``: the index of the master serving the slot of hash tag ``tag``."""
    from redis.crc import key_slot

    ranges = cluster.slot_ranges()

    def owner(tag: str) -> int:
        slot = key_slot(tag.encode())
        for index, spans in ranges.items():
            if any(first <= slot <= last for first, last in spans):
                return index
        raise AssertionError(f"no master serves slot {slot}")

    return owner


def _namespace_on_every_shard(cluster: Any, partitions: int) -> tuple[str, Callable[[int], int]]:
    """A fresh namespace whose partition tags ``{ns:p}`` fall on every master, and
    ``node_of(p)``: the index of the master holding partition ``p``.

    A random namespace almost always spreads 16 partitions over 3 masters; a
    test that shows the spread must not depend on that luck.
    """
    owner = _slot_owner(cluster)
    for _ in range(200):
        namespace = f"c{uuid.uuid4().hex[:8]}"
        nodes = {p: owner(f"{namespace}:{p}") for p in range(partitions)}
        if set(nodes.values()) == set(range(len(cluster.nodes))):
            return namespace, nodes.__getitem__
    raise AssertionError(f"no namespace spreads {partitions} partitions over every master")


_TAG = re.compile(r"^\{([^}]*)\}")


def _partitions_by_node(cluster: Any, namespace: str) -> dict[int, Counter[int]]:
    """Keys of ``namespace``'s partitions on each master (each asked with its own
    client, by ``SCAN``), counted by partition."""
    found: dict[int, Counter[int]] = {}
    for index, node in enumerate(cluster.nodes):
        counts: Counter[int] = Counter()
        with node.client(decode_responses=True) as client:
            for key in client.scan_iter(match=f"{{{namespace}:*", count=1000):
                tag = _TAG.match(key)
                assert tag, key
                counts[int(tag.group(1).rsplit(":", 1)[1])] += 1
        found[index] = counts
    return found


def _ran(records: str) -> list[str]:
    from tests.procapp import read_runs

    return [job_id for job_id, _, _ in read_runs(records)]


# --------------------------------------------------------------------------- which stores run


def test_store_supported_counts_a_url_the_client_refuses_as_unsupported(monkeypatch):
    import pyramid_pyncette.repository as repository

    assert store_supported("memory://") is True
    assert store_supported("nosuchstore://somewhere") is False

    def refuse(settings):
        raise ValueError(
            "invalid Redis URL: Redis URL must specify one of the following schemes "
            "(redis://, rediss://, unix://)"
        )

    monkeypatch.setattr(repository, "create_repository", refuse)
    assert store_supported("redis+cluster://127.0.0.1:1") is False

    def unreachable(settings):
        raise ConnectionError("Redis Cluster cannot be connected")

    monkeypatch.setattr(repository, "create_repository", unreachable)
    assert store_supported("redis+cluster://127.0.0.1:1") is True


# --------------------------------------------------------------------------- layout


@needs_cluster_urls
def test_jobs_added_through_the_public_api_land_on_all_three_shards(
    redis_cluster_server, make_config
):
    from redis.crc import key_slot

    from pyramid_pyncette.jobs import partition_of

    cluster = redis_cluster_server
    cluster.start()
    namespace, node_of = _namespace_on_every_shard(cluster, 16)
    config = make_config({"pyncette.url": cluster.url, "pyncette.redis_namespace": namespace})
    config.add_pyncette_task(lambda request: None, name="noop")
    config.commit()
    scheduler = config.registry.scheduler
    try:
        assert scheduler.repository.partitions == 16  # the Redis default
        due = datetime.now(timezone.utc) + timedelta(hours=1)
        ids = [f"job-{n:04d}" for n in range(300)]
        for job_id in ids:
            scheduler.add_date_job("noop", due, job_id=job_id)

        used = Counter(partition_of(job_id, 16) for job_id in ids)
        found = _partitions_by_node(cluster, namespace)
        print(
            "keys per shard: "
            + ", ".join(
                f"node {index} ({cluster.nodes[index].port}): {sum(counts.values())} keys, "
                f"partitions {sorted(counts)}"
                for index, counts in found.items()
            )
        )
        for index, counts in found.items():
            expected = {p for p in used if node_of(p) == index}
            assert expected, f"no partition in use on node {index}"
            assert set(counts) == expected, f"node {index}"
        # Each master counts keys in the slots of its own partitions.
        for p in used:
            node = cluster.nodes[node_of(p)]
            with node.client() as client:
                in_slot = client.execute_command(
                    "CLUSTER", "COUNTKEYSINSLOT", key_slot(f"{namespace}:{p}".encode())
                )
            assert in_slot > 0, f"partition {p} has no key on node {node_of(p)}"
        assert {job.id for job in scheduler.iter_jobs()} == set(ids)
        assert {scheduler.get_job(job_id).partition for job_id in ids[:20]} == {
            partition_of(job_id, 16) for job_id in ids[:20]
        }
    finally:
        scheduler.repository.close()


# --------------------------------------------------------------------------- shard restart

#: How many jobs fall due, over how many seconds, and how long each run takes.
RESTART_JOBS = 1200
RESTART_WINDOW = 12.0
RESTART_RUN_SECONDS = 0.01
#: How long the master stays down: past the cluster's node timeout, so its
#: peers mark it failed and clients meet a node that is really gone.
RESTART_DOWNTIME = 5.0
#: The master taken down (not the first one, whose address the URL names).
DOWN_NODE = 2


@dataclass(repr=False)  # an assertion about one field need not print every job
class ShardRestart:
    """What two daemons did while one master of the cluster went down and came back."""

    #: Due time (epoch seconds) of every job.
    due_of: dict[str, float]
    #: The jobs whose partition lives on the master that went down.
    on_down: set[str]
    #: When the master was stopped, and when it was started again.
    stopped: float
    back: float
    #: The jobs that had run by the time the master was started again.
    ran_meanwhile: set[str]
    #: Runs per job at the end.
    runs: Counter[str]
    #: Each daemon's exit status and log.
    returncodes: list[int | None]
    logs: list[str]
    #: Whether each daemon was still running during and right after the outage.
    alive_during: list[bool]
    alive_after: list[bool]


@pytest.fixture(scope="module")
def shard_restart(request, tmp_path_factory) -> ShardRestart:
    """Two daemons on a steady stream of jobs; one master down for a while mid-stream."""
    from pyramid_pyncette.jobs import partition_of

    if not REDIS_CLUSTER_SUPPORTED:
        pytest.skip("this version does not take redis+cluster:// URLs")
    tmp_path = tmp_path_factory.mktemp("shard-restart")
    cluster = request.getfixturevalue("redis_cluster_server")
    cluster.start()
    namespace, node_of = _namespace_on_every_shard(cluster, 16)
    extra = f"pyncette.redis_namespace = {namespace}\npyncette.batch_size = 20"
    ini, records = write_ini(tmp_path, cluster.url, extra=extra)
    registry = bootstrap_registry(ini)
    assert registry.scheduler.repository.partitions == 16
    # Each daemon's stderr goes to a file: a pipe nobody reads could fill up.
    log_paths = [tmp_path / f"daemon-{n}.err" for n in range(2)]
    processes = []
    for path in log_paths:
        with open(path, "w") as err:
            processes.append(
                subprocess.Popen(
                    [*PSCHEDULER, ini], env=process_env(), stdout=subprocess.DEVNULL, stderr=err
                )
            )
    due_of: dict[str, float] = {}
    try:
        wait_for(lambda: len(list(Path(records).glob("ready-*"))) == 2, 120, "the daemons")
        first = time.time() + 2.0
        step = RESTART_WINDOW / RESTART_JOBS
        for n in range(RESTART_JOBS):
            job_id = f"job-{n:05d}"
            due_of[job_id] = first + n * step
            registry.scheduler.add_date_job(
                "record",
                datetime.fromtimestamp(due_of[job_id], timezone.utc),
                kwargs={"seconds": RESTART_RUN_SECONDS},
                job_id=job_id,
            )
        on_down = {job_id for job_id in due_of if node_of(partition_of(job_id, 16)) == DOWN_NODE}
        wait_for(lambda: len(_ran(records)) >= 100, 60, "the first runs")

        cluster.stop_node(DOWN_NODE)
        stopped = time.time()
        time.sleep(RESTART_DOWNTIME)
        ran_meanwhile = set(_ran(records))
        back = time.time()
        alive_during = [process.poll() is None for process in processes]
        cluster.start_node(DOWN_NODE)

        wait_for(lambda: set(_ran(records)) == set(due_of), 180, "every job to run")
        wait_for(lambda: not list(registry.scheduler.iter_jobs()), 60, "an empty store")
        alive_after = [process.poll() is None for process in processes]
    finally:
        cluster.start()  # whatever happened, the next tests get the whole cluster
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
    result = ShardRestart(
        due_of=due_of,
        on_down=on_down,
        stopped=stopped,
        back=back,
        ran_meanwhile=ran_meanwhile,
        runs=Counter(_ran(records)),
        returncodes=[process.returncode for process in processes],
        logs=[path.read_text() for path in log_paths],
        alive_during=alive_during,
        alive_after=alive_after,
    )
    duplicates = sum(1 for n in result.runs.values() if n > 1)
    print(
        f"\nshard restart: {sum(result.runs.values())} runs of {len(due_of)} jobs "
        f"({len(on_down)} on the stopped master), {duplicates} run more than once; "
        f"{len(_jobs_elsewhere_ran_meanwhile(result))} of {len(_jobs_elsewhere(result))} "
        "jobs of the other masters due during the outage ran during it"
    )
    return result


def _jobs_elsewhere(result: ShardRestart) -> set[str]:
    """Jobs of the masters that stayed up, due well inside the outage (not in flight
    when it began, not due in its last second)."""
    return {
        job_id
        for job_id, due in result.due_of.items()
        if job_id not in result.on_down and result.stopped + 1.0 <= due <= result.back - 1.0
    }


def _jobs_elsewhere_ran_meanwhile(result: ShardRestart) -> set[str]:
    return _jobs_elsewhere(result) & result.ran_meanwhile


@pytest.mark.slow
def test_a_shard_restart_loses_no_job_and_runs_none_twice(shard_restart):
    """Once the master is back every job has run exactly once, the store is empty
    (the fixture waits for it), and the daemons logged the outage, backed off and
    carried on: neither exited, both stop cleanly."""
    result = shard_restart
    assert result.on_down, "no job lived on the master that went down"
    duplicates = {job_id: n for job_id, n in result.runs.items() if n > 1}
    assert duplicates == {}
    assert set(result.runs) == set(result.due_of)
    assert result.alive_during == [True, True], "a daemon exited when a master went away"
    assert result.alive_after == [True, True], "a daemon exited after the outage"
    for returncode, log in zip(result.returncodes, result.logs, strict=True):
        assert returncode == 0, log
    outage_lines = [
        line
        for log in result.logs
        for line in log.splitlines()
        if " ERROR " in line or " WARNI " in line
    ]
    assert outage_lines, "the daemons did not log the outage"


@pytest.mark.slow
def test_during_a_shard_outage_the_other_shards_jobs_keep_running(shard_restart):
    """At least half the jobs of the masters that stayed up, due well inside the
    outage, ran before the stopped master came back."""
    elsewhere = _jobs_elsewhere(shard_restart)
    assert elsewhere, "no job of the other masters fell due during the outage"
    ran = _jobs_elsewhere_ran_meanwhile(shard_restart)
    assert len(ran) * 2 >= len(elsewhere), (
        f"the jobs of the masters that stayed up stalled during the outage: {len(ran)} of "
        f"{len(elsewhere)} ran"
    )
