"""The DynamoDB store's own behaviour, on moto's emulation (see tests/moto_server.py).

The conformance suite shows it keeps the contract; these show how: jobs
spread over partitions, the partition count recorded in the table, the
set-up errors, and claims that never share a job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore import exceptions as boto_errors

from pyramid_pyncette import InvalidJobError
from pyramid_pyncette.jobs import Job, Outcome, RunRecord, partition_of
from pyramid_pyncette.repository import create_repository
from pyramid_pyncette.repository.dynamodb import (
    DUE_INDEX,
    PARTITION_DUE_INDEX,
    PAUSED_SKIPS,
    DynamoDBRepository,
    DynamoDBSetupError,
    parse_dynamodb_url,
)
from pyramid_pyncette.settings import PyncetteSettings
from tests.daemon import run_pscheduler, write_ini
from tests.servers import free_port

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_store(dynamodb_server):
    """``make_store(table=None, **options)``: a set-up store on moto (closed after the test)."""
    made = []

    def build(table=None, setup=True, **options):
        store = DynamoDBRepository(dynamodb_server.url(table or _table()), **options)
        made.append(store)
        if setup:
            store.setup()
        return store

    yield build
    for store in made:
        store.close()


def _job(job_id, due=NOW, **fields):
    schedule = {"kind": "date", "run_at": NOW.isoformat()}
    return Job(id=job_id, task="record", schedule=schedule, due_at=due, created_at=NOW, **fields)


def _query_partition(store, partition):
    reply = store.boto_client.query(
        TableName=store.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"job#{partition}"}},
        ConsistentRead=True,
    )
    return [item["sk"]["S"] for item in reply["Items"]]


# --------------------------------------------------------------------------- layout


def test_jobs_spread_over_every_partition_by_the_crc_of_their_id(make_store):
    store = make_store()
    assert store.partitions == 16
    ids = [f"job-{n}" for n in range(200)]
    store.add([_job(job_id) for job_id in ids])

    found = {partition: _query_partition(store, partition) for partition in range(16)}
    assert all(found.values()), {p: len(ids) for p, ids in found.items()}
    for partition, job_ids in found.items():
        assert all(partition_of(job_id, 16) == partition for job_id in job_ids)
    assert sorted(job_id for job_ids in found.values() for job_id in job_ids) == sorted(ids)


def test_a_due_job_is_in_the_index_of_its_partition_and_queue_and_a_parked_one_is_not(
    make_store,
):
    store = make_store()
    store.add([_job("due", queue="emails"), _job("parked", due=None)])

    reply = store.boto_client.scan(TableName=store.table, IndexName=DUE_INDEX)
    keys = {item["sk"]["S"]: item["dq"]["S"] for item in reply["Items"]}
    assert keys == {"due": f"{partition_of('due', 16)}#emails"}


def test_claims_take_the_earliest_due_jobs_across_every_partition(make_store):
    store = make_store()
    ids = {}
    n = 0
    while len(ids) < 16:  # one job in each partition, due a second apart in reverse
        ids.setdefault(partition_of(f"j{n}", 16), f"j{n}")
        n += 1
    due = {job_id: NOW - timedelta(seconds=partition) for partition, job_id in ids.items()}
    store.add([_job(job_id, due=at) for job_id, at in due.items()])

    taken = [lease.job.id for _ in range(4) for lease in store.claim(NOW, 4, "token", 60)]

    assert taken == sorted(due, key=due.get)  # every partition drained, earliest first
    assert store.claim(NOW, 4, "token", 60) == []


def test_a_claim_reads_a_small_page_per_partition_not_its_limit(make_store):
    store = make_store()
    store.add([_job(f"j{n}") for n in range(400)])
    limits = []
    store.boto_client.meta.events.register(
        "provide-client-params.dynamodb.Query",
        lambda params, **_: limits.append(params.get("Limit")),
    )

    assert len(store.claim(NOW, 32, "token", 60)) == 32

    pages = [limit for limit in limits if limit is not None]  # the queue list has none
    assert len(pages) >= 16  # each partition's due jobs were read
    assert set(pages) == {32 // 16 + 2}


# --------------------------------------------------------------------------- the partition count


def test_a_new_table_records_its_partition_count_and_a_store_without_the_setting_adopts_it(
    make_store,
):
    table = _table()
    first = make_store(table, partitions=4)
    first.add([_job("a"), _job("b")])

    later = make_store(table)  # pyncette.partitions not set

    assert later.partitions == 4
    assert set(later.get_many(["a", "b"])) == {"a", "b"}
    assert [job.id for job in later.list()] == ["a", "b"]


def test_a_partition_count_other_than_the_tables_is_refused_naming_both_and_the_fix(make_store):
    table = _table()
    make_store(table)  # 16, the default

    other = make_store(table, setup=False, partitions=8)
    with pytest.raises(DynamoDBSetupError) as raised:
        other.setup()

    message = other.describe_setup_error(raised.value)
    assert message is not None and "\n" not in message
    assert "pyncette.partitions = 8" in message
    assert "16 partitions" in message
    assert "set pyncette.partitions = 16, or move the jobs to a fresh table" in message
    assert not other.is_transient(raised.value)


def test_create_repository_passes_the_partitions_setting_and_skip_table_create(dynamodb_server):
    url = dynamodb_server.url(_table())
    store = create_repository(PyncetteSettings(url=url, partitions=8, skip_table_create=True))
    try:
        assert isinstance(store, DynamoDBRepository)
        assert (store.requested_partitions, store.create_table) == (8, False)
        assert create_repository(PyncetteSettings(url=url)).requested_partitions is None
    finally:
        store.close()


# --------------------------------------------------------------------------- set-up errors


def test_a_missing_table_with_skip_table_create_stops_pscheduler_with_one_line(
    tmp_path, capsys, dynamodb_server
):
    table = _table()
    ini, _ = write_ini(
        tmp_path, dynamodb_server.url(table), extra="pyncette.skip_table_create = true"
    )

    assert run_pscheduler("--once", ini) == 2

    err = [line for line in capsys.readouterr().err.splitlines() if "pscheduler:" in line]
    assert len(err) == 1, err
    assert f"the table '{table}' does not exist" in err[0]
    assert "remove pyncette.skip_table_create" in err[0]
    tables = DynamoDBRepository(dynamodb_server.url(table)).boto_client.list_tables()["TableNames"]
    assert table not in tables


def test_a_table_is_created_on_first_use_and_reused(make_store):
    table = _table()
    make_store(table).add([_job("kept")])

    again = make_store(table, create_table=False)

    assert again.get("kept") is not None


def test_a_table_of_another_layout_is_refused(make_store, dynamodb_server):
    table = _table()
    store = make_store(table, setup=False)
    store.boto_client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(DynamoDBSetupError) as raised:
        store.setup()
    assert "not a job table of this store" in store.describe_setup_error(raised.value)


def test_a_table_without_the_index_of_due_times_per_partition_is_refused(make_store):
    table = _table()
    store = make_store(table, setup=False)
    store.boto_client.create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": kind}
            for name, kind in (("pk", "S"), ("sk", "S"), ("dq", "S"), ("due", "N"))
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": DUE_INDEX,
                "KeySchema": [
                    {"AttributeName": "dq", "KeyType": "HASH"},
                    {"AttributeName": "due", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(DynamoDBSetupError) as raised:
        store.setup()
    assert PARTITION_DUE_INDEX in store.describe_setup_error(raised.value)


def test_an_unknown_region_is_a_setup_error_without_a_request():
    store = DynamoDBRepository("dynamodb://mars-north-7/jobs")
    try:
        with pytest.raises(DynamoDBSetupError) as raised:
            store.setup()
        message = store.describe_setup_error(raised.value)
        assert "'mars-north-7' is not an AWS region" in message
        assert "endpoint_url" in message
    finally:
        store.close()


def test_missing_credentials_are_a_setup_error_naming_where_boto3_looks(
    monkeypatch, tmp_path, dynamodb_server
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = DynamoDBRepository(dynamodb_server.url(_table()))
    try:
        with pytest.raises(boto_errors.NoCredentialsError) as raised:
            store.setup()
        message = store.describe_setup_error(raised.value)
        assert "no AWS credentials" in message and "AWS_ACCESS_KEY_ID" in message
        assert not store.is_transient(raised.value)
    finally:
        store.close()


@pytest.mark.parametrize(
    "code", ["UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"]
)
def test_refused_credentials_are_a_setup_error_never_retried(code):
    store = DynamoDBRepository("dynamodb://us-east-1/jobs")
    refused = boto_errors.ClientError({"Error": {"Code": code, "Message": "no"}}, "DescribeTable")
    try:
        message = store.describe_setup_error(refused)
        assert f"DynamoDB refused the AWS credentials ({code})" in message
        assert not store.is_transient(refused)
    finally:
        store.close()


def test_an_unreachable_endpoint_is_an_outage_not_a_setup_error():
    store = DynamoDBRepository(
        f"dynamodb://us-east-1/jobs?endpoint_url=http://127.0.0.1:{free_port()}"
    )
    try:
        with pytest.raises(boto_errors.EndpointConnectionError) as raised:
            store.setup()
        assert store.is_transient(raised.value)
        assert store.describe_setup_error(raised.value) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"],
)
def test_throttling_is_an_outage(code):
    store = DynamoDBRepository("dynamodb://us-east-1/jobs")
    throttled = boto_errors.ClientError({"Error": {"Code": code, "Message": "slow"}}, "Query")
    try:
        assert store.is_transient(throttled)
        assert store.describe_setup_error(throttled) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("dynamodb://key:S3cr3t@us-east-1/jobs", "credentials come from the environment"),
        ("dynamodb://us-east-1/", "the path must be a table name"),
        ("dynamodb://us-east-1/a b", "the path must be a table name"),
        ("dynamodb://us-east-1/jobs?secret=S3cr3t", "unknown option secret"),
        ("dynamodb://us-east-1/jobs?endpoint_url=localhost:8000", "http:// or https://"),
    ],
)
def test_a_bad_url_is_refused_naming_the_fix_and_hiding_credentials(url, words):
    with pytest.raises(ValueError) as raised:
        parse_dynamodb_url(url)
    assert words in str(raised.value)
    assert "S3cr3t" not in str(raised.value)


def test_the_store_claims_by_the_time_it_is_given():
    store = DynamoDBRepository("dynamodb://us-east-1/jobs")
    try:
        assert store.store_clock is False
    finally:
        store.close()


# --------------------------------------------------------------------------- sizes


def test_a_job_larger_than_a_dynamodb_item_is_refused_at_add_and_nothing_is_written(make_store):
    store = make_store()
    noise = os.urandom(500_000).hex()  # within the arguments' limit, but random: no zlib gain

    with pytest.raises(InvalidJobError, match=r"over DynamoDB's limit of .* bytes \(400 KB\)"):
        store.add([_job("huge", args=[noise])])
    assert store.get("huge") is None


def test_a_large_definition_is_stored_compressed_and_read_back_exactly(make_store):
    store = make_store()
    text = "é" * 150_000
    store.add([_job("big", args=[text])])

    item = store.boto_client.get_item(TableName=store.table, Key=store.job_key("big"))["Item"]
    assert "jobz" in item and "job" not in item
    assert store.get("big").args == [text]
    (lease,) = store.claim(NOW, 10, "token", 60)
    assert lease.job.args == [text]


# --------------------------------------------------------------------------- races


def _threads_of_queries(store):
    """Record the name of the thread each Query of ``store`` is sent from."""
    names = []
    query = store.boto_client.query

    def recorded(**request):
        names.append(threading.current_thread().name)
        return query(**request)

    store.boto_client.query = recorded
    return names


def test_a_claim_and_a_next_due_read_send_the_query_of_every_partition_at_once(make_store):
    store = make_store()
    jobs = [_job(f"spread-{i}", due=NOW + timedelta(seconds=i)) for i in range(40)]
    store.add(jobs)
    names = _threads_of_queries(store)

    assert store.next_due() == NOW
    leases = store.claim(NOW + timedelta(seconds=5), 10, "tok", 60)

    assert [lease.job.id for lease in leases] == [f"spread-{i}" for i in range(6)]
    # The first Query of every partition each time, from the store's query threads
    # (the queue list and any further page are read by the calling thread).
    at_once = [name for name in names if name.startswith("pyncette-dynamodb")]
    assert len(at_once) == 2 * store.partitions
    assert len(set(at_once)) > 1


def test_a_store_used_after_a_fork_makes_its_query_threads_again(make_store, monkeypatch):
    store = make_store()
    store.add([_job("after-fork")])
    store.next_due()
    before = store._query_pool

    monkeypatch.setattr(os, "getpid", lambda: -1)

    assert store.next_due() == NOW
    assert store._query_pool is not before
    assert [lease.job.id for lease in store.claim(NOW, 10, "tok", 60)] == ["after-fork"]


def _indexes_queried(store):
    """Record the index each Query of ``store`` reads (None: the table)."""
    indexes = []
    query = store.boto_client.query

    def recorded(**request):
        indexes.append(request.get("IndexName"))
        return query(**request)

    store.boto_client.query = recorded
    return indexes


def test_a_poll_over_every_queue_costs_one_query_per_partition_however_many_queues(
    make_store,
):
    store = make_store()
    store.add([_job(f"q{i}-job", due=NOW + timedelta(hours=1), queue=f"q{i}") for i in range(20)])
    store.add([_job("due-now", queue="q7")])
    indexes = _indexes_queried(store)

    assert store.next_due() == NOW
    assert [lease.job.id for lease in store.claim(NOW, 10, "tok", 60)] == ["due-now"]

    assert indexes.count(PARTITION_DUE_INDEX) == 2 * store.partitions
    assert DUE_INDEX not in indexes


def test_a_claim_of_named_queues_reads_those_queues_indexes_only(make_store):
    store = make_store()
    store.add([_job("mail", queue="emails"), _job("plain")])
    indexes = _indexes_queried(store)

    leases = store.claim(NOW, 10, "tok", 60, frozenset({"emails"}))

    assert [lease.job.id for lease in leases] == ["mail"]
    assert indexes.count(DUE_INDEX) == store.partitions
    assert PARTITION_DUE_INDEX not in indexes


def test_a_long_paused_backlog_does_not_hide_the_due_jobs_of_other_queues(make_store):
    store = make_store(partitions=1)
    backlog = [_job(f"held-{i:03d}", queue="held") for i in range(PAUSED_SKIPS + 10)]
    store.add([*backlog, _job("later", due=NOW + timedelta(seconds=1))])
    store.set_queue_paused("held", True)
    indexes = _indexes_queried(store)

    # The paused queue's jobs come first in the partition's index; past a page of them
    # the store reads each unpaused queue's own index instead of the whole backlog.
    assert store.next_due() == NOW + timedelta(seconds=1)
    leases = store.claim(NOW + timedelta(seconds=1), 10, "tok", 60)

    assert [lease.job.id for lease in leases] == ["later"]
    assert store.get("held-000").locked_by is None
    assert indexes.count(DUE_INDEX) == 2  # the default queue's index, once per call


def test_a_short_paused_backlog_is_passed_over_in_the_partition_index(make_store):
    store = make_store(partitions=1)
    store.add([_job("held-1", queue="held"), _job("held-2", queue="held")])
    store.add([_job("runs", due=NOW + timedelta(seconds=1))])
    store.set_queue_paused("held", True)
    indexes = _indexes_queried(store)

    assert store.next_due() == NOW + timedelta(seconds=1)
    leases = store.claim(NOW + timedelta(seconds=1), 10, "tok", 60)

    assert [lease.job.id for lease in leases] == ["runs"]
    assert DUE_INDEX not in indexes


def test_a_claim_that_read_a_stale_index_entry_takes_nothing(make_store):
    table = _table()
    one, other = make_store(table), make_store(table)
    one.add([_job("contested")])
    stale = one.boto_client.query(
        TableName=table,
        IndexName=DUE_INDEX,
        KeyConditionExpression="dq = :dq",
        ExpressionAttributeValues={":dq": {"S": f"{partition_of('contested', 16)}#default"}},
    )["Items"][0]

    assert [lease.job.id for lease in other.claim(NOW, 10, "other", 60)] == ["contested"]
    assert one._take(stale, NOW, NOW, "one", 60) is None
    assert one.get("contested").locked_by == "other"


def test_a_claim_that_loses_a_race_goes_ahead_of_the_claimer_that_won_it(make_store, monkeypatch):
    """The other claimer, one step ahead in the same order, takes each next entry
    just before this claim tries it: walking on behind it, the claim would lose
    every race; passing over the entries it is taking, the claim gets jobs."""
    table = _table()
    one, other = make_store(table), make_store(table)
    ids = [f"convoy-{n:02d}" for n in range(40)]
    one.add([_job(job_id) for job_id in ids])
    attempt = one._attempt
    taken_by_other = []

    def one_step_behind(item, *args):
        taken_by_other.extend(lease.job.id for lease in other.claim(NOW, 1, "other", 60))
        return attempt(item, *args)

    monkeypatch.setattr(one, "_attempt", one_step_behind)
    mine = [lease.job.id for lease in one.claim(NOW, 5, "one", 60)]

    assert len(mine) == 5
    assert not set(mine) & set(taken_by_other)
    assert {one.get(job_id).locked_by for job_id in mine} == {"one"}
    assert {one.get(job_id).locked_by for job_id in taken_by_other} == {"other"}


def test_two_claimers_in_threads_never_take_the_same_job(make_store):
    table = _table()
    stores = [make_store(table), make_store(table)]
    ids = [f"race-{n:03d}" for n in range(120)]
    stores[0].add([_job(job_id) for job_id in ids])
    taken: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claimer(index):
        start.wait()
        while True:
            leases = stores[index].claim(NOW, 7, f"token-{index}", 60)
            if not leases:
                return
            taken[index].extend(lease.job.id for lease in leases)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    counts = Counter(taken[0] + taken[1])
    assert [job_id for job_id, count in counts.items() if count > 1] == []
    assert sorted(counts) == ids
    for index, store in enumerate(stores):
        for job_id in taken[index]:
            assert store.get(job_id).locked_by == f"token-{index}"


def test_a_completion_whose_lease_was_lost_changes_nothing_and_its_run_is_recorded(make_store):
    table = _table()
    store, other = make_store(table), make_store(table)
    store.add([_job("lost"), _job("kept")])
    leases = {lease.job.id: lease for lease in store.claim(NOW, 10, "mine", 60)}
    later = NOW + timedelta(seconds=61)
    (taken,) = other.claim(later, 1, "theirs", 60)  # the lease of one expired: taken over
    assert taken.job.id in leases
    gone = taken.job.id
    (stays,) = set(leases) - {gone}

    runs = [
        RunRecord(job_id, "record", "default", NOW, NOW, later, 1, "succeeded", host="h", pid=1)
        for job_id in leases
    ]
    store.complete([Outcome(lease, True, later) for lease in leases.values()], runs)

    assert store.get(gone).locked_by == "theirs"
    assert store.get(stays) is None  # the one-off run that kept its lease finished
    assert sorted(run.job_id for run in store.list_runs()) == sorted(leases)


def test_a_completion_and_its_run_record_are_one_transaction(make_store):
    store = make_store()
    store.add([_job("one")])
    (lease,) = store.claim(NOW, 1, "mine", 60)
    calls = []
    store.boto_client.meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name)
    )
    run = RunRecord("one", "record", "default", NOW, NOW, NOW, 1, "succeeded")

    store.complete([Outcome(lease, True, NOW)], [run])

    assert calls == ["TransactWriteItems"]
    assert store.get("one") is None
    assert [r.job_id for r in store.list_runs()] == ["one"]


# --------------------------------------------------------------------------- the test server


def test_without_moto_the_server_cannot_start_and_the_skip_names_the_install(monkeypatch):
    import importlib.util

    from tests import moto_server

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a)
    )

    assert moto_server.MotoServer.command() is None
    assert 'pip install "moto[server]"' in moto_server.MISSING
    assert "--require-backends" in moto_server.MISSING


def test_the_session_server_answers_on_127_0_0_1_with_dummy_credentials(dynamodb_server):
    assert dynamodb_server.endpoint_url.startswith("http://127.0.0.1:")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    assert dynamodb_server.process is not None and dynamodb_server.process.poll() is None


# --------------------------------------------------------------------------- real daemons


@pytest.mark.slow
@pytest.mark.parametrize("daemons", [2, 3])
def test_pscheduler_daemons_drain_one_table_without_duplicates_or_losses(
    request, tmp_path, daemons
):
    """Real ``pscheduler`` processes on one table of moto's server.

    Fewer jobs than the other stores' drain (moto answers a few hundred
    requests a second, one at a time), the same checks.
    """
    from tests.daemon import (
        add_due_jobs,
        bootstrap_registry,
        persistent_store,
        spawn,
        wait_for,
    )
    from tests.procapp import read_runs

    url, extra = persistent_store(request, tmp_path, "dynamodb")
    ini, records = write_ini(tmp_path, url, extra=f"{extra}\npyncette.batch_size = 25")
    registry = bootstrap_registry(ini)
    processes = [spawn(ini, stdout=subprocess.DEVNULL) for _ in range(daemons)]
    try:
        ready = lambda: len(list(Path(records).glob("ready-*"))) == daemons  # noqa: E731
        wait_for(ready, 120, "the daemons")
        expected = add_due_jobs(registry, 1000, seconds=0.002)
        wait_for(lambda: not registry.scheduler.get_jobs(limit=1).jobs, 300, "the drain")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
    errors = [process.communicate(timeout=60)[1] for process in processes]

    for process, err in zip(processes, errors, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
    runs = read_runs(records)
    counts = Counter(job_id for job_id, _, _ in runs)
    assert {job_id: n for job_id, n in counts.items() if n > 1} == {}
    assert set(counts) == expected
    by_process = Counter(pid for _, _, pid in runs)
    assert len(by_process) == daemons, f"some daemon did no work: {dict(by_process)}"
    assert list(registry.scheduler.iter_jobs()) == []
    registry.scheduler.repository.close()
