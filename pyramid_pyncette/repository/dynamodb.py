"""The DynamoDB store (``dynamodb://region/table?endpoint_url=...``).

One table, with a string partition key ``pk`` and a string sort key ``sk``:

``pk = "job#<p>", sk = <job id>``
    One item per job, ``p`` being :func:`~pyramid_pyncette.jobs.partition_of`
    the id and the store's partition count. Attributes: ``task``, ``queue``,
    the times ``due_at``, ``next_run_at`` and ``last_run_at`` (numbers:
    integer microseconds since the epoch, so the round trip is exact),
    ``locked_by``, ``attempts``, ``last_status``, ``last_error``, ``job``
    (the rest of the job, ``id``, ``schedule``, ``args``, ``kwargs``,
    ``options``, ``created_at`` and ``partition``, as JSON text: arguments
    are read back byte for byte) and ``ver``, a random version replaced by
    every write, which conditional writes compare. A job with a due time
    also has ``dq = "<p>#<queue>"`` and ``due`` (its due time): the keys of
    the global secondary index ``due``, so "what is due in a queue" is one
    Query per partition, in due order; and ``pk`` with ``due`` are the keys
    of the index ``partition-due``, so "what is due in any queue" is one
    Query per partition too, however many queues there are. An attribute
    that is None is absent.
``pk = "queue", sk = <queue name>``
    A queue that ever held a job or was paused; ``paused`` says whether it is.
``pk = "run#<p>", sk = <time written>-<random>``
    One run record (:meth:`DynamoDBRepository.list_runs`), in the partition
    of its job, sorted by the time it was written (microseconds, by the
    writer's clock, increasing within a process).
``pk = "meta", sk = "partitions"``
    The partition count the table was set up with (``count``).

A claim queries the index of every partition (a claim over every queue;
passing over the jobs of paused queues, or reading each unpaused queue's
index when a paused backlog is long) or of every partition's queue (a
claim of named queues) for due jobs, a small page each, more only as
needed, and merges them into one due order (ties by id), so no partition
starves; it takes each job with a write
conditioned on the version it read: two daemons never take the same job,
and a stale index entry (the index is read eventually consistently) is
skipped. Completions, heartbeats and releases are conditioned on the lease
token. DynamoDB has no clock of its own to read, so the store claims by the
``now`` it is given (``store_clock`` is always false, as for SQLite).
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore import exceptions as boto_errors
from botocore.config import Config

from ..exceptions import InvalidJobError, short_repr
from ..jobs import (
    DEFAULT_QUEUE,
    MAX_RUN_ERROR_LENGTH,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
    job_state_counts,
    partition_of,
    queue_name_problem,
)
from ..policy import claimed_at, plan_claim, plan_completion
from ..redaction import redact_text, redact_url
from .base import JobPage, Repository, RepositoryError, RunPage, published_lock, staged_job
from .rows import (
    UnreadableJSON,
    decode_job_fields,
    run_of_micros,
    storable_text,
    storable_values,
    time_of_micros,
    unwritable_row_values,
    well_formed_document,
)

log = logging.getLogger(__name__)

__all__ = ["DynamoDBRepository", "DynamoDBSetupError"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

#: The partition count of a new table when ``pyncette.partitions`` is not set.
DEFAULT_DYNAMODB_PARTITIONS = 16

#: The name of the global secondary index on due times per partition and queue.
DUE_INDEX = "due"

#: The name of the global secondary index on due times per partition (every queue).
PARTITION_DUE_INDEX = "partition-due"

#: Jobs of paused queues a claim over every queue may pass over in the partition
#: index before it reads the index of each unpaused queue instead.
PAUSED_SKIPS = 64

#: Index entries a next-due read looks at per partition for one of an unpaused queue.
HEAD_PAGE = 8

#: Seconds a new table may take to become ACTIVE.
TABLE_READY_TIMEOUT = 300.0

#: The most run records one :meth:`DynamoDBRepository.list_runs` call reads.
MAX_RUNS_SCANNED = 50_000

#: Job definitions longer than this (JSON text, characters) are stored compressed.
COMPRESS_OVER = 16 * 1024

#: The largest item the store writes: DynamoDB's limit (400 KB), less a margin
#: for the attributes completions add (an error text, bounded).
MAX_ITEM_SIZE = 400 * 1024 - 20 * 1024

#: How many records past the ``limit`` oldest :meth:`DynamoDBRepository.prune_runs`
#: reads per partition, to find old records written after newer ones.
PRUNE_LOOKAHEAD = 100

#: Items per BatchWriteItem and per BatchGetItem call (DynamoDB's limits).
_BATCH_WRITE = 25
#: Queries of the due index a claim or next-due read sends at once (one per
#: partition and queue): the first page of each, concurrently.
_QUERY_THREADS = 16
_BATCH_GET = 100
#: Items per TransactWriteItems call, and bytes (DynamoDB's limits).
_TRANSACTION = 100
_TRANSACTION_SIZE = 4 * 1024 * 1024 - 64 * 1024

#: The query options a ``dynamodb://`` URL may carry.
_URL_OPTIONS = ("endpoint_url",)

#: Error codes after which the same call may succeed later.
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionInProgressException",
        "LimitExceededException",
    }
)
#: Error codes of credentials the service refuses.
_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)

_DESERIALIZER = TypeDeserializer()

_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_RUN_ID = re.compile(r"[0-9]{17}-[0-9a-f]{12}")


class DynamoDBSetupError(RepositoryError):
    """The table cannot be used as configured (missing, another layout, another partition
    count); no retry fixes it."""


# --------------------------------------------------------------------------- encoding


def _micros(value: datetime) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"the DynamoDB store needs timezone-aware datetimes, got {value!r}")
    return (value - _EPOCH) // _MICROSECOND


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _time_attr(value: datetime | None) -> dict[str, str] | None:
    return None if value is None else _n(_micros(value))


def _text_attr(value: Any) -> dict[str, str] | None:
    text = storable_text(value, None)
    return None if text is None else _s(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _check_queue(name: Any) -> str:
    problem = queue_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _version() -> dict[str, str]:
    return _s(uuid.uuid4().hex[:16])


def _value(attr: Mapping[str, Any]) -> Any:
    """A stored attribute as Python: text, an int (or float) for numbers, else
    what boto3 makes of it. Never raises."""
    if "S" in attr:
        return attr["S"]
    if "N" in attr:
        try:
            number = Decimal(attr["N"])
            if number == number.to_integral_value():
                return int(number)
            return float(number)
        except (ArithmeticError, ValueError):
            return attr["N"]
    try:
        value = _DESERIALIZER.deserialize(attr)
    except Exception:
        return repr(attr)
    if isinstance(value, set):
        value = sorted(value, key=repr)
    return value


def _item_size(item: Mapping[str, Any]) -> int:
    """About how many bytes DynamoDB counts for ``item`` (names plus values)."""
    size = 0
    for name, attr in item.items():
        size += len(name.encode("utf-8"))
        if "S" in attr:
            size += len(attr["S"].encode("utf-8", "surrogatepass"))
        elif "B" in attr:
            size += len(attr["B"])
        else:
            size += 22  # a number: at most 21 bytes, and the rest is small
    return size


def _definition_text(item: Mapping[str, Any]) -> Any:
    """The JSON text of an item's job definition (compressed when it is large)."""
    if "job" in item or "jobz" not in item:
        return _value(item["job"]) if "job" in item else None
    packed = item["jobz"].get("B")
    try:
        return zlib.decompress(bytes(packed)).decode("utf-8")
    except Exception as exc:
        return UnreadableJSON(short_repr(packed), exc)


#: A stored time: a number of microseconds since the epoch (or its digits as text).
_decode_time = time_of_micros


#: The attributes of a job item that hold the job (the others are keys and bookkeeping).
_JOB_FIELDS = (
    "task",
    "queue",
    "due_at",
    "next_run_at",
    "last_run_at",
    "locked_by",
    "attempts",
    "last_status",
    "last_error",
    "job",
)


def _due_order(item: Mapping[str, Any]) -> tuple[Decimal, str]:
    """The order claims take index entries in: due time, then job id."""
    return Decimal(item["due"]["N"]), item["sk"]["S"]


def _queue_of(item: Mapping[str, Any]) -> str:
    """The queue an item names (the default queue when it names none readable)."""
    queue = item.get("queue")
    if isinstance(queue, Mapping) and isinstance(queue.get("S"), str):
        return str(queue["S"])
    return DEFAULT_QUEUE


def _decode_item(item: Mapping[str, Any]) -> Job:
    """The job in a stored item. Never raises: one that cannot be read becomes a job
    that is parked, not run."""
    job_id = _value(item.get("sk", {"S": ""}))
    if not isinstance(job_id, str):
        job_id = str(job_id)
    values = {name: _value(item[name]) for name in _JOB_FIELDS if name in item}
    values["job"] = _definition_text(item)
    job = well_formed_document(job_id, values, _decode_time)
    if job is not None:
        return job
    fields: dict[str, Any] = dict(values)
    fields.setdefault("queue", DEFAULT_QUEUE)
    # Text, but no queue name: such a job counts in the default queue, so no
    # index key is ever named after garbage.
    return decode_job_fields(fields, job_id=job_id, decode_time=_decode_time, check_queue_name=True)


def _encode_run(run: RunRecord, partitions: int, written: int) -> dict[str, Any]:
    """The item of ``run``; its id (the sort key) starts with ``written``, the time it is
    written in microseconds since the epoch, so ids sort in the order records are written."""
    run_id = f"{written:017d}-{uuid.uuid4().hex[:12]}"
    item: dict[str, Any] = {
        "pk": _s(f"run#{partition_of(run.job_id, partitions)}"),
        "sk": _s(run_id),
        "job_id": _s(storable_text(run.job_id, None) or ""),
        "task": _s(storable_text(run.task, None) or ""),
        "queue": _s(storable_text(run.queue, None) or ""),
        "scheduled_at": _n(_micros(run.scheduled_at)),
        "started_at": _n(_micros(run.started_at)),
        "finished_at": _n(_micros(run.finished_at)),
        "attempt": _n(int(run.attempt)),
        "outcome": _s(storable_text(run.outcome, None) or ""),
        "host": _s(storable_text(run.host, None) or ""),
        "pid": _n(int(run.pid)),
        "worker": _s(storable_text(run.worker, None) or ""),
    }
    if run.error is not None:
        item["error"] = _s(storable_text(run.error, MAX_RUN_ERROR_LENGTH) or "")
    return item


def _decode_run(item: Mapping[str, Any]) -> RunRecord | None:
    """The run record in an item, or None when the item is not one."""
    try:
        values = {name: _value(attr) for name, attr in item.items()}
        return run_of_micros(values, str(values["sk"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def parse_dynamodb_url(url: str) -> tuple[str, str, str | None]:
    """``(region, table, endpoint_url)`` of a ``dynamodb://region/table?endpoint_url=...`` URL."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ValueError(f"invalid DynamoDB URL {shown!r}: {redact_text(str(exc))}") from None
    region = parts.netloc
    table = parts.path.lstrip("/")
    if not region or "@" in region or ":" in region:
        raise ValueError(
            f"invalid DynamoDB URL {shown!r}: name the AWS region as the host "
            "(dynamodb://eu-west-1/table); credentials come from the environment, "
            "never from the URL"
        )
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(
            f"invalid DynamoDB URL {shown!r}: the path must be a table name of 3 to 255 "
            "letters, digits, '_', '-' or '.' (dynamodb://eu-west-1/pyncette_jobs)"
        )
    unknown = sorted(set(query) - set(_URL_OPTIONS))
    if unknown:
        raise ValueError(
            f"invalid DynamoDB URL {shown!r}: unknown option {', '.join(unknown)}; "
            f"the URL takes {', '.join(_URL_OPTIONS)} only"
        )
    endpoint = query.get("endpoint_url", [None])[-1] or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"invalid DynamoDB URL {shown!r}: endpoint_url must be an http:// or https:// URL"
        )
    return region, table, endpoint


def _error_code(exc: BaseException) -> str | None:
    if isinstance(exc, boto_errors.ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def _conditional_failure(exc: BaseException) -> bool:
    return _error_code(exc) == "ConditionalCheckFailedException"


# --------------------------------------------------------------------------- the store


class _Update:
    """An UpdateItem's expression, built from attribute values (None removes the attribute)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.sets: list[str] = []
        self.removes: list[str] = []

    def name(self, attribute: str) -> str:
        alias = f"#a{len(self.names)}"
        self.names[alias] = attribute
        return alias

    def value(self, value: Any) -> str:
        alias = f":v{len(self.values)}"
        self.values[alias] = value
        return alias

    def set(self, attribute: str, value: dict[str, Any] | None) -> _Update:
        if value is None:
            self.removes.append(self.name(attribute))
        else:
            self.sets.append(f"{self.name(attribute)} = {self.value(value)}")
        return self

    def expression(self) -> str:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        return " ".join(parts)

    def request(self, table: str, key: dict[str, Any], condition: str | None) -> dict[str, Any]:
        """The arguments of UpdateItem (or of an Update in a transaction)."""
        request: dict[str, Any] = {
            "TableName": table,
            "Key": key,
            "UpdateExpression": self.expression(),
            "ExpressionAttributeNames": self.names,
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        if self.values:
            request["ExpressionAttributeValues"] = self.values
        return request


class DynamoDBRepository(Repository):
    """A :class:`Repository` in one DynamoDB table (see the module's docstring).

    ``url`` is ``dynamodb://region/table``, with ``?endpoint_url=`` for a
    local endpoint (DynamoDB Local, moto). Credentials are boto3's: the
    environment, a profile, an instance or task role; they never appear in
    the URL or in a log line. ``partitions`` is ``pyncette.partitions``
    (None: the count the table was set up with, 16 for a new table).
    ``create_table`` false (``pyncette.skip_table_create``) expects the table
    to exist. ``client`` replaces the URL's client (the store will not close it).
    """

    store_clock = False
    # A claim reads the due index of every partition: an idle daemon claims
    # ahead of a known due time and starts the runs on time.
    claims_ahead = True

    def __init__(
        self,
        url: str,
        *,
        partitions: int | None = None,
        create_table: bool = True,
        max_connections: int | None = None,
        client: Any = None,
    ) -> None:
        self.region, self.table, self.endpoint_url = parse_dynamodb_url(url)
        self.redacted_url = redact_url(url)
        self.requested_partitions = partitions
        self.partitions = partitions or DEFAULT_DYNAMODB_PARTITIONS
        self.create_table = create_table
        self._owns_client = client is None
        if client is None:
            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=max(max_connections or 10, _QUERY_THREADS + 4),
            )
            client = boto3.session.Session().client(
                "dynamodb",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
            )
        self._client = client
        self._setup_lock = threading.Lock()
        self._ready = False
        self._run_clock_lock = threading.Lock()
        self._last_written = 0
        #: Queues last seen in the table (a claim over every queue reads them).
        self._known_queues: frozenset[str] = frozenset()
        #: Threads sending the due-index Queries of a claim at once (made at first use,
        #: again in a forked process), and the process they belong to.
        self._query_pool: ThreadPoolExecutor | None = None
        self._query_pool_pid = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<DynamoDBRepository {self.redacted_url}>"

    @property
    def boto_client(self) -> Any:
        """The boto3 DynamoDB client (for tests and maintenance)."""
        return self._client

    def job_key(self, job_id: str) -> dict[str, Any]:
        """The primary key of the item of job ``job_id``."""
        return {"pk": _s(f"job#{partition_of(job_id, self.partitions)}"), "sk": _s(job_id)}

    # -- plumbing -----------------------------------------------------------

    def setup(self) -> None:
        with self._setup_lock:
            if self._ready:
                return
            self._check_region()
            if not self._describe_table():
                if not self.create_table:
                    raise DynamoDBSetupError(
                        f"the table {self.table!r} does not exist in {self.region}; create it "
                        "(see the README, 'Stores') or remove pyncette.skip_table_create"
                    )
                self._create_table()
            self._adopt_partitions()
            self._ready = True

    def _check_region(self) -> None:
        if self.endpoint_url is not None:
            return  # a local endpoint takes any region name
        session = boto3.session.Session()
        known = set()
        for partition in session.get_available_partitions():
            known.update(session.get_available_regions("dynamodb", partition))
        if known and self.region not in known:
            raise DynamoDBSetupError(
                f"{self.region!r} is not an AWS region with DynamoDB; fix the host of "
                "pyncette.url (dynamodb://eu-west-1/table), or add ?endpoint_url= for a "
                "local endpoint"
            )

    def _describe_table(self) -> bool:
        """Whether the table exists (waiting while it is being created); checks its layout."""
        deadline = time.monotonic() + TABLE_READY_TIMEOUT
        while True:
            try:
                table = self._client.describe_table(TableName=self.table)["Table"]
            except boto_errors.ClientError as exc:
                if _error_code(exc) == "ResourceNotFoundException":
                    return False
                raise
            keys = {key["AttributeName"]: key["KeyType"] for key in table.get("KeySchema", [])}
            indexes = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
            if (
                keys != {"pk": "HASH", "sk": "RANGE"}
                or not {
                    DUE_INDEX,
                    PARTITION_DUE_INDEX,
                }
                <= indexes
            ):
                raise DynamoDBSetupError(
                    f"the table {self.table!r} is not a job table of this store (it needs the "
                    f"keys pk and sk and the indexes {DUE_INDEX!r} and "
                    f"{PARTITION_DUE_INDEX!r}); name another table in pyncette.url"
                )
            statuses = {table.get("TableStatus")}
            statuses.update(i.get("IndexStatus") for i in table.get("GlobalSecondaryIndexes", []))
            if statuses <= {"ACTIVE", None}:
                return True
            if time.monotonic() > deadline:
                raise RepositoryError(f"the table {self.table!r} did not become ACTIVE in time")
            time.sleep(0.5)

    def _create_table(self) -> None:
        try:
            self._client.create_table(
                TableName=self.table,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                    {"AttributeName": "dq", "AttributeType": "S"},
                    {"AttributeName": "due", "AttributeType": "N"},
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
                    },
                    {
                        "IndexName": PARTITION_DUE_INDEX,
                        "KeySchema": [
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "due", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    },
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except boto_errors.ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":  # another process created it
                raise
        if not self._describe_table():
            raise RepositoryError(f"the table {self.table!r} vanished while being created")

    def _adopt_partitions(self) -> None:
        """Record the partition count in a new table; adopt (or check) a stored one."""
        key = {"pk": _s("meta"), "sk": _s("partitions")}
        for _ in range(3):
            item = self._client.get_item(TableName=self.table, Key=key, ConsistentRead=True)
            stored = item.get("Item")
            if stored is not None:
                count = _value(stored.get("count", {"N": "0"}))
                if not isinstance(count, int) or count < 1:
                    raise DynamoDBSetupError(
                        f"the table {self.table!r} records an unreadable partition count "
                        f"({short_repr(count)}); fix the item pk='meta', sk='partitions'"
                    )
                wanted = self.requested_partitions
                if wanted is not None and wanted != count:
                    raise DynamoDBSetupError(
                        f"pyncette.partitions = {wanted}, but the table {self.table!r} was set "
                        f"up with {count} partitions; set pyncette.partitions = {count}, or "
                        "move the jobs to a fresh table"
                    )
                self.partitions = count
                return
            try:
                self._client.put_item(
                    TableName=self.table,
                    Item={**key, "count": _n(self.partitions)},
                    ConditionExpression="attribute_not_exists(pk)",
                )
                return
            except boto_errors.ClientError as exc:
                if not _conditional_failure(exc):
                    raise
        raise RepositoryError("the partition count of the table could not be read; try again")

    def close(self) -> None:
        with self._setup_lock:
            self._closed = True
            pool, self._query_pool = self._query_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._owns_client:
            self._client.close()

    def is_transient(self, exc: BaseException) -> bool:
        if self.describe_setup_error(exc) is not None:
            return False
        if isinstance(
            exc,
            (
                boto_errors.EndpointConnectionError,
                boto_errors.ConnectionClosedError,
                boto_errors.ConnectTimeoutError,
                boto_errors.ReadTimeoutError,
                boto_errors.HTTPClientError,
            ),
        ):
            return True
        if _error_code(exc) in _TRANSIENT_CODES:
            return True
        return super().is_transient(exc)

    def describe_setup_error(self, exc: BaseException) -> str | None:
        if isinstance(exc, DynamoDBSetupError):
            return str(exc)
        if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
            return (
                "boto3 found no AWS credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the machine a role"
            )
        if isinstance(exc, boto_errors.NoRegionError):
            return "no AWS region; name it as the host of pyncette.url (dynamodb://eu-west-1/t)"
        code = _error_code(exc)
        if code in _CREDENTIAL_CODES:
            return (
                f"DynamoDB refused the AWS credentials ({code}); fix the credentials boto3 "
                "finds (environment, profile or role)"
            )
        if code == "AccessDeniedException":
            return (
                f"the AWS credentials may not use the table {self.table!r} (AccessDenied); "
                "grant dynamodb:* on it and its indexes (or DescribeTable, CreateTable, "
                "GetItem, PutItem, UpdateItem, DeleteItem, Query, BatchGetItem, "
                "BatchWriteItem, TransactWriteItems)"
            )
        if code == "ResourceNotFoundException":
            return (
                f"the table {self.table!r} does not exist in {self.region}; create it or "
                "remove pyncette.skip_table_create"
            )
        return super().describe_setup_error(exc)

    def is_row_error(self, exc: BaseException) -> bool:
        """Whether DynamoDB refused the values of an item (too large, say)."""
        if _error_code(exc) == "ValidationException":
            return True
        return super().is_row_error(exc)

    # -- low-level reads and writes ---------------------------------------------

    def _query(self, **request: Any) -> Iterator[dict[str, Any]]:
        """Every item a Query returns, page by page."""
        request["TableName"] = self.table
        while True:
            page = self._client.query(**request)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def _queries(self, requests: Sequence[dict[str, Any]]) -> builtins.list[Iterator[Any]]:
        """The items of each Query of ``requests`` (page by page, as :meth:`_query`), the
        first page of every one sent at once: one round trip's wait instead of one each."""
        if len(requests) <= 1:
            return [self._query(**request) for request in requests]
        with self._setup_lock:
            pool = self._query_pool
            if self._closed:
                pool = None
            elif pool is None or self._query_pool_pid != os.getpid():
                # A pool made before a fork has no threads in the child.
                pool = self._query_pool = ThreadPoolExecutor(
                    _QUERY_THREADS, thread_name_prefix="pyncette-dynamodb"
                )
                self._query_pool_pid = os.getpid()
        if pool is None:  # closed: one after the other, no threads left behind
            return [self._query(**request) for request in requests]
        try:
            firsts = [
                pool.submit(self._client.query, TableName=self.table, **request)
                for request in requests
            ]
        except RuntimeError:  # closed meanwhile: one after the other
            return [self._query(**request) for request in requests]
        return [self._rest(request, first) for request, first in zip(requests, firsts, strict=True)]

    def _rest(self, request: dict[str, Any], first: Future[Any]) -> Iterator[Any]:
        """The items of the Query ``request`` whose first page ``first`` brings."""
        page = first.result()
        yield from page.get("Items", [])
        last = page.get("LastEvaluatedKey")
        if last:
            yield from self._query(**request, ExclusiveStartKey=last)

    def _batch_write(self, requests: Sequence[dict[str, Any]]) -> None:
        """Write ``requests`` (PutRequest / DeleteRequest) with BatchWriteItem, 25 a call."""
        for start in range(0, len(requests), _BATCH_WRITE):
            pending: Any = {self.table: list(requests[start : start + _BATCH_WRITE])}
            for attempt in itertools.count():
                left = self._client.batch_write_item(RequestItems=pending).get("UnprocessedItems")
                if not left:
                    break
                if attempt >= 8:
                    raise RepositoryError("DynamoDB kept throttling a batch write; try again")
                pending = left
                time.sleep(min(0.05 * 2**attempt, 2.0))

    def _batch_get(self, keys: Sequence[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
        """The items of ``keys`` that exist (BatchGetItem, 100 keys a call, consistent)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), _BATCH_GET):
            pending: Any = {
                self.table: {"Keys": list(keys[start : start + _BATCH_GET]), "ConsistentRead": True}
            }
            for attempt in itertools.count():
                reply = self._client.batch_get_item(RequestItems=pending)
                found.extend(reply.get("Responses", {}).get(self.table, []))
                pending = reply.get("UnprocessedKeys")
                if not pending:
                    break
                if attempt >= 8:
                    raise RepositoryError("DynamoDB kept throttling a batch read; try again")
                time.sleep(min(0.05 * 2**attempt, 2.0))
        return found

    def _conditional(self, call: str, **request: Any) -> dict[str, Any] | None:
        """One conditional write; None when its condition failed."""
        try:
            return getattr(self._client, call)(TableName=self.table, **request)
        except boto_errors.ClientError as exc:
            if _conditional_failure(exc):
                return None
            raise

    def _encode_job(self, job: Job) -> dict[str, Any]:
        queue = _check_queue(job.queue)
        partition = partition_of(job.id, self.partitions)
        definition = {
            "id": job.id,
            "schedule": job.schedule,
            "args": list(job.args),
            "kwargs": dict(job.kwargs),
            "options": dict(job.options),
            "created_at": None if job.created_at is None else _micros(job.created_at),
            "partition": job.partition,
        }
        item: dict[str, Any] = {
            **self.job_key(job.id),
            "task": _s(job.task),
            "queue": _s(queue),
            "attempts": _n(int(job.attempts)),
            "ver": _version(),
        }
        text = _dumps(definition)
        if len(text) > COMPRESS_OVER:
            item["jobz"] = {"B": zlib.compress(text.encode("utf-8"))}
        else:
            item["job"] = _s(text)
        texts = storable_values({"last_status": job.last_status, "last_error": job.last_error})
        optional = {
            "due_at": _time_attr(job.due_at),
            "next_run_at": _time_attr(job.next_run_at),
            "last_run_at": _time_attr(job.last_run_at),
            "locked_by": _text_attr(job.locked_by),
            "last_status": _text_attr(texts["last_status"]),
            "last_error": _text_attr(texts["last_error"]),
        }
        item.update({name: value for name, value in optional.items() if value is not None})
        if job.due_at is not None:
            item["dq"] = _s(f"{partition}#{queue}")
            item["due"] = item["due_at"]
        size = _item_size(item)
        if size > MAX_ITEM_SIZE:
            raise InvalidJobError(
                f"job {short_repr(job.id)} is {size:,} bytes as a DynamoDB item (its arguments "
                f"compressed), over DynamoDB's limit of {MAX_ITEM_SIZE:,} bytes (400 KB); store "
                "large data elsewhere (a table, a file) and pass its id"
            )
        return item

    def _due_update(self, update: _Update, job_id: str, queue: str, due: datetime | None) -> None:
        """Set ``due_at`` and the index keys (removed when ``due`` is None)."""
        attr = _time_attr(due)
        update.set("due_at", attr).set("due", attr)
        if attr is None:
            update.set("dq", None)
        else:
            update.set("dq", _s(f"{partition_of(job_id, self.partitions)}#{queue}"))

    def _register_queues(self, queues: Iterable[str]) -> None:
        """Make sure the table lists ``queues`` (a claim over every queue reads the list)."""
        for queue in set(queues) - self._known_queues - {DEFAULT_QUEUE}:
            self._client.update_item(
                TableName=self.table,
                Key={"pk": _s("queue"), "sk": _s(queue)},
                UpdateExpression="SET #seen = :one",
                ExpressionAttributeNames={"#seen": "seen"},
                ExpressionAttributeValues={":one": _n(1)},
            )
            self._known_queues = self._known_queues | {queue}

    def _queues(self) -> dict[str, bool]:
        """Every queue the table lists, and whether it is paused (one consistent Query)."""
        found = {}
        for item in self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": _s("queue")},
            ConsistentRead=True,
        ):
            name = _value(item["sk"])
            if isinstance(name, str) and queue_name_problem(name) is None:
                found[name] = _value(item.get("paused", {"BOOL": False})) is True
        self._known_queues = frozenset(found) - {DEFAULT_QUEUE}
        return found

    # -- contract -------------------------------------------------------------

    def add(self, jobs: Sequence[Job], replace: bool = True) -> None:
        if not jobs:
            return
        items = {job.id: self._encode_job(job) for job in jobs}
        self._register_queues(job.queue for job in jobs)
        if replace:
            self._batch_write([{"PutRequest": {"Item": item}} for item in items.values()])
            return
        for item in items.values():
            self._conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(sk)")

    def remove(self, ids: Iterable[str]) -> set[str]:
        existed = set()
        for job_id in dict.fromkeys(ids):
            reply = self._client.delete_item(
                TableName=self.table, Key=self.job_key(job_id), ReturnValues="ALL_OLD"
            )
            if reply.get("Attributes"):
                existed.add(job_id)
        return existed

    def apply(self, adds: Sequence[Job], removes: Sequence[str]) -> None:
        """Write ``adds`` and delete ``removes`` in one transaction when DynamoDB allows it
        (at most 100 items, each once, 4 MB in all), else in batches."""
        items = {job.id: self._encode_job(job) for job in adds}
        deletes = [job_id for job_id in dict.fromkeys(removes) if job_id not in items]
        if not items and not deletes:
            return
        self._register_queues(job.queue for job in adds)
        size = sum(_item_size(item) for item in items.values())
        if len(items) + len(deletes) > _TRANSACTION or size > _TRANSACTION_SIZE:
            requests = [{"DeleteRequest": {"Key": self.job_key(job_id)}} for job_id in deletes]
            requests += [{"PutRequest": {"Item": item}} for item in items.values()]
            self._batch_write(requests)
            return
        actions: list[dict[str, Any]] = [
            {"Delete": {"TableName": self.table, "Key": self.job_key(job_id)}} for job_id in deletes
        ]
        actions += [{"Put": {"TableName": self.table, "Item": item}} for item in items.values()]
        self._client.transact_write_items(TransactItems=actions)

    def stage(
        self, jobs: Sequence[Job], removes: Sequence[str], token: str, window: float, now: datetime
    ) -> dict[str, Job]:
        """Each staged row is written (and each removed row deleted) by one atomic call that
        returns the item it replaced."""
        until = now + timedelta(seconds=window)
        # Encoded first: a job DynamoDB cannot hold is refused before anything is written.
        items = [(job.id, self._encode_job(staged_job(job, token, until))) for job in jobs]
        self._register_queues(job.queue for job in jobs)
        previous = {}
        for job_id in dict.fromkeys(removes):
            reply = self._client.delete_item(
                TableName=self.table, Key=self.job_key(job_id), ReturnValues="ALL_OLD"
            )
            if reply.get("Attributes"):
                previous[job_id] = _decode_item(reply["Attributes"])
        for job_id, item in items:
            reply = self._client.put_item(TableName=self.table, Item=item, ReturnValues="ALL_OLD")
            if reply.get("Attributes") and job_id not in previous:
                previous[job_id] = _decode_item(reply["Attributes"])
        return previous

    def publish(self, token: str, jobs: Sequence[Job]) -> None:
        for job in jobs:
            update = _Update()
            self._due_update(update, job.id, _check_queue(job.queue), job.due_at)
            update.set("locked_by", _text_attr(published_lock(job))).set("ver", _version())
            condition = f"{update.name('locked_by')} = {update.value(_s(token))}"
            self._conditional("update_item", **self._request(update, job.id, condition))

    def withdraw(self, token: str, ids: Sequence[str], previous: Mapping[str, Job]) -> None:
        staged = list(dict.fromkeys(ids))
        mine = "locked_by = :token"
        for job_id in staged:
            if job_id in previous:
                self._conditional(
                    "put_item",
                    Item=self._encode_job(previous[job_id]),
                    ConditionExpression=mine,
                    ExpressionAttributeValues={":token": _s(token)},
                )
            else:
                self._conditional(
                    "delete_item",
                    Key=self.job_key(job_id),
                    ConditionExpression=mine,
                    ExpressionAttributeValues={":token": _s(token)},
                )
        # Deleted at vote: put back unless the id was written again since.
        restore = [job for job_id, job in previous.items() if job_id not in staged]
        if restore:
            self.add(restore, replace=False)

    def _request(self, update: _Update, job_id: str, condition: str | None) -> dict[str, Any]:
        request = update.request(self.table, self.job_key(job_id), condition)
        del request["TableName"]  # _conditional names the table
        return request

    def get(self, job_id: str) -> Job | None:
        reply = self._client.get_item(
            TableName=self.table, Key=self.job_key(job_id), ConsistentRead=True
        )
        item = reply.get("Item")
        return None if item is None else _decode_item(item)

    def get_many(self, ids: Iterable[str]) -> dict[str, Job]:
        keys = [self.job_key(job_id) for job_id in dict.fromkeys(ids)]
        if not keys:
            return {}
        jobs = (_decode_item(item) for item in self._batch_get(keys))
        return {job.id: job for job in jobs}

    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Jobs in id order: the partitions' Queries (after ``cursor``) merged.

        Each partition is read a small page at a time, and only as far as
        the merge needs: a page of ``limit`` jobs reads about ``limit`` items
        plus a few per partition, not ``limit`` per partition.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        # Ids spread evenly over the partitions: each holds about its share of a page.
        chunk = (limit + 1) // self.partitions + 2
        streams = []
        for partition in range(self.partitions):
            values: dict[str, Any] = {":pk": _s(f"job#{partition}")}
            request: dict[str, Any] = {"ConsistentRead": True, "Limit": chunk}
            condition = "pk = :pk"
            if cursor is not None:
                condition += " AND sk > :cursor"
                values[":cursor"] = _s(cursor)
            if task is not None:
                request["FilterExpression"] = "task = :task"
                request["Limit"] = max(chunk, 100)  # the filter drops items after the limit
                values[":task"] = _s(task)
            request.update(KeyConditionExpression=condition, ExpressionAttributeValues=values)
            streams.append(self._query(**request))
        merged = heapq.merge(*streams, key=lambda item: item["sk"]["S"])
        found = [_decode_item(item) for item in itertools.islice(merged, limit + 1)]
        return JobPage.read_ahead(found, limit)

    # -- claims -----------------------------------------------------------------

    def claim(
        self,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        """Take up to ``limit`` due jobs, the earliest due first across every partition.

        Per partition and queue, the index is queried in due order, a small
        page at a time and only as far as the merge of all of them needs (a
        claim of ``limit`` reads about ``limit`` items plus a few per
        partition). Jobs are taken in due order, ties by id, each by a write
        conditioned on the version read, so a job another daemon took (or a
        stale index entry) is skipped for the next one. As the order is
        global, no partition starves.

        Every claimer goes in this order, so one whose write came just after
        another's would, trying the next entry and the next, arrive each time
        just after that claimer took it too, and take nothing until the index
        ran dry. A claim that loses a race therefore passes over the next
        entry, and over twice as many at each further loss in a row (at most
        ``limit``), leaving them to later claims: it gets ahead of the claimer
        it trailed, while a claim that loses once leaves one job behind.
        """
        return self.claim_ahead(now, now, limit, token, default_lease, queues)

    def claim_ahead(
        self,
        now: datetime,
        until: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        """:meth:`claim` the jobs due by ``until``, each at its due time if after ``now``."""
        if limit <= 0:
            return []
        listed = None if queues is None else {_check_queue(name) for name in queues}
        table = self._queues()
        paused = {name for name, is_paused in table.items() if is_paused}
        names = ({DEFAULT_QUEUE, *table} if listed is None else listed) - paused
        chunk = limit // self.partitions + 2
        leases: list[Lease] = []
        if listed is None:
            # Every queue: one Query per partition, whatever the number of queues.
            streams = self._queries(
                [
                    self._partition_due(partition, _micros(until), chunk)
                    for partition in range(self.partitions)
                ]
            )
            crowded: list[bool] = []

            def unpaused(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
                skipped = 0
                for item in items:
                    if _queue_of(item) not in paused:
                        yield item
                        continue
                    skipped += 1
                    if skipped > PAUSED_SKIPS:
                        crowded.append(True)  # a long paused backlog: read each unpaused
                        return  # queue's index

            merged = unpaused(heapq.merge(*streams, key=_due_order))
            self._take_in_order(merged, now, until, token, default_lease, limit, leases)
            if len(leases) >= limit or not crowded:
                return leases
        # Named queues (or a long paused backlog): one Query per partition and queue. A
        # job this claim already took has a new version: its write would not apply.
        streams = self._queries(
            [
                self._due(f"{partition}#{queue}", _micros(until), chunk)
                for partition in range(self.partitions)
                for queue in sorted(names)
            ]
        )
        merged = heapq.merge(*streams, key=_due_order)
        self._take_in_order(merged, now, until, token, default_lease, limit, leases)
        return leases

    def _take_in_order(
        self,
        items: Iterable[dict[str, Any]],
        now: datetime,
        until: datetime,
        token: str,
        default_lease: float,
        limit: int,
        leases: builtins.list[Lease],
    ) -> None:
        """Take ``items`` (index entries in due order) into ``leases`` until it holds
        ``limit``; after a lost race, pass over the next entries (see :meth:`claim`)."""
        taken = {lease.job.id for lease in leases}  # by an earlier read of this claim
        passing = lost = 0
        for item in items:
            if item["sk"]["S"] in taken:
                continue
            if passing:
                passing -= 1
                continue
            current, lease = self._attempt(item, now, until, token, default_lease)
            if not current:  # another claimer is taking these: go ahead of it
                lost += 1
                passing = min(2 ** (lost - 1), limit)
                continue
            lost = 0
            if lease is not None:
                leases.append(lease)
                if len(leases) >= limit:
                    return

    def _partition_due(self, partition: int, now_us: int, chunk: int) -> dict[str, Any]:
        """The Query of partition ``partition``'s jobs due at ``now_us`` in any queue, in
        due order, ``chunk`` a page (see :meth:`_queries`)."""
        return {
            "IndexName": PARTITION_DUE_INDEX,
            "KeyConditionExpression": "pk = :pk AND #due <= :now",
            "ExpressionAttributeNames": {"#due": "due"},
            "ExpressionAttributeValues": {":pk": _s(f"job#{partition}"), ":now": _n(now_us)},
            "Limit": chunk,
        }

    def _due(self, key: str, now_us: int, chunk: int) -> dict[str, Any]:
        """The Query of the items of the index key ``key`` (a partition's queue) due at
        ``now_us``, in due order, ``chunk`` a page (see :meth:`_queries`)."""
        return {
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "dq = :dq AND #due <= :now",
            "ExpressionAttributeNames": {"#due": "due"},
            "ExpressionAttributeValues": {":dq": _s(key), ":now": _n(now_us)},
            "Limit": chunk,
        }

    def _take(
        self, item: dict[str, Any], now: datetime, until: datetime, token: str, default_lease: float
    ) -> Lease | None:
        """Apply the claim plan of ``item`` if it is still the version read; its lease."""
        return self._attempt(item, now, until, token, default_lease)[1]

    def _attempt(
        self, item: dict[str, Any], now: datetime, until: datetime, token: str, default_lease: float
    ) -> tuple[bool, Lease | None]:
        """:meth:`_take` ``item``: ``(whether it was still the version read, the lease)``;
        not so when another claimer changed it (took it) after the index was read."""
        job = _decode_item(item)
        at = claimed_at(job.due_at, now, until)
        if at > now and job.locked_by is not None:
            return True, None  # a lease that ends within the lead: its holder may renew it
        plan = plan_claim(job, at, token, default_lease, checked=True)
        key = {"pk": item["pk"], "sk": item["sk"]}
        version = item.get("ver", {"S": ""})
        if plan.action == "delete":
            done = self._conditional(
                "delete_item",
                Key=key,
                ConditionExpression="ver = :ver",
                ExpressionAttributeValues={":ver": version},
            )
            return (False, None) if done is None else (True, plan.lease)
        claimed = plan.job
        update = _Update()
        attr = _time_attr(claimed.due_at)
        update.set("due_at", attr).set("due", attr)
        if attr is None:
            update.set("dq", None)
        update.set("next_run_at", _time_attr(claimed.next_run_at))
        update.set("locked_by", _text_attr(claimed.locked_by))
        update.set("attempts", _n(int(claimed.attempts)))
        update.set("ver", _version())
        condition = f"{update.name('ver')} = {update.value(version)}"
        request = update.request(self.table, key, condition)
        del request["TableName"]
        done = self._conditional("update_item", **request)
        return (False, None) if done is None else (True, plan.lease)

    # -- completions ----------------------------------------------------------------

    def _completion(self, outcome: Outcome) -> tuple[str, dict[str, Any]]:
        """The write of ``outcome``'s plan: ``("Delete" | "Update", request)``."""
        plan = plan_completion(outcome)
        key = self.job_key(plan.job_id)
        if plan.token is None:
            condition = "attribute_exists(sk)"
            guard: dict[str, Any] = {}
        else:
            condition = "locked_by = :token"
            guard = {":token": _s(plan.token)}
        if plan.action == "delete":
            request: dict[str, Any] = {"TableName": self.table, "Key": key}
            request["ConditionExpression"] = condition
            if guard:
                request["ExpressionAttributeValues"] = guard
            return "Delete", request
        update = _Update()
        values = storable_values(plan.values)
        for name, value in values.items():
            if name == "due_at":
                self._due_update(update, plan.job_id, outcome.lease.job.queue, value)
            elif name in ("next_run_at", "last_run_at"):
                update.set(name, _time_attr(value))
            elif name == "attempts":
                update.set(name, _n(int(value)))
            else:
                update.set(name, _text_attr(value))
        if plan.action == "settle":
            update.set("locked_by", None)
        update.set("ver", _version())
        if plan.token is not None:
            condition = f"{update.name('locked_by')} = {update.value(_s(plan.token))}"
        return "Update", update.request(self.table, key, condition)

    def complete(self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()) -> None:
        """Apply ``outcomes`` and append ``runs`` in one transaction when DynamoDB allows it.

        A transaction is all or nothing: when one completion's lease was
        lost (or there are more than 100 items) the completions are written
        one by one, each conditioned on its lease token, and the run records
        in batches. A completion DynamoDB refuses (an item too large) parks
        its job as failed with an error saying why.
        """
        if not outcomes and not runs:
            return
        writes = {}
        for outcome in outcomes:
            writes[outcome.lease.job.id] = (outcome, *self._completion(outcome))
        items = [_encode_run(run, self.partitions, self._write_time()) for run in runs]
        if 0 < len(writes) + len(items) <= _TRANSACTION:
            actions = [{kind: request} for _, kind, request in writes.values()]
            actions += [{"Put": {"TableName": self.table, "Item": item}} for item in items]
            try:
                self._client.transact_write_items(TransactItems=actions)
                return
            except boto_errors.ClientError as exc:
                if _error_code(exc) not in ("TransactionCanceledException", "ValidationException"):
                    raise
        for outcome, kind, request in writes.values():
            self._complete_one(outcome, kind, request)
        if items:
            self._batch_write([{"PutRequest": {"Item": item}} for item in items])

    def _write_time(self) -> int:
        """Now in microseconds since the epoch, later than any earlier answer of this store."""
        with self._run_clock_lock:
            self._last_written = max(time.time_ns() // 1000, self._last_written + 1)
            return self._last_written

    def _complete_one(self, outcome: Outcome, kind: str, request: dict[str, Any]) -> None:
        request = {name: value for name, value in request.items() if name != "TableName"}
        call = "delete_item" if kind == "Delete" else "update_item"
        try:
            self._conditional(call, **request)
            return
        except Exception as exc:
            if not self.is_row_error(exc) or outcome.lease.token is None:
                raise
            refused = exc
        values = unwritable_row_values(outcome.finished_at, refused)
        job_id = outcome.lease.job.id
        log.error("job %r is parked as failed: %s", job_id, values["last_error"])
        update = _Update()
        self._due_update(update, job_id, outcome.lease.job.queue, None)
        for name in ("next_run_at", "last_run_at"):
            update.set(name, _time_attr(values[name]))
        update.set("last_status", _s(values["last_status"]))
        update.set("last_error", _s(values["last_error"]))
        update.set("locked_by", None).set("ver", _version())
        condition = f"{update.name('locked_by')} = {update.value(_s(outcome.lease.token))}"
        try:
            self._conditional("update_item", **self._request(update, job_id, condition))
        except Exception as exc:
            if not self.is_row_error(exc):
                raise
            log.error("job %r could not be parked either (%s)", job_id, exc)

    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        held = set()
        for job_id, token, seconds in leases:
            update = _Update()
            attr = _time_attr(now + timedelta(seconds=seconds))
            update.set("due_at", attr).set("due", attr).set("ver", _version())
            condition = f"{update.name('locked_by')} = {update.value(_s(token))}"
            if self._conditional("update_item", **self._request(update, job_id, condition)):
                held.add(job_id)
        return held

    def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            if lease.token is None:
                continue
            job = lease.job
            update = _Update()
            self._due_update(update, job.id, job.queue, lease.attempt_due_at)
            attempts = job.attempts if isinstance(job.attempts, int) else 1
            update.set("attempts", _n(max(attempts - 1, 0)))
            update.set("locked_by", None).set("ver", _version())
            condition = f"{update.name('locked_by')} = {update.value(_s(lease.token))}"
            self._conditional("update_item", **self._request(update, job.id, condition))

    def next_due(self, queues: frozenset[str] | None = None) -> datetime | None:
        """The earliest due time: the head of every partition's index (past the jobs of
        paused queues), or of the index of every partition's queue for named queues."""
        listed = None if queues is None else {_check_queue(name) for name in queues}
        table = self._queues()
        paused = {name for name, is_paused in table.items() if is_paused}
        names = ({DEFAULT_QUEUE, *table} if listed is None else listed) - paused
        if listed is None:
            # Every queue: the head of each partition's index, past any paused queue's jobs.
            pages = self._queries(
                [
                    {
                        "IndexName": PARTITION_DUE_INDEX,
                        "KeyConditionExpression": "pk = :pk",
                        "ExpressionAttributeValues": {":pk": _s(f"job#{partition}")},
                        "ProjectionExpression": "#due, #queue",
                        "ExpressionAttributeNames": {"#due": "due", "#queue": "queue"},
                        "Limit": HEAD_PAGE,
                    }
                    for partition in range(self.partitions)
                ]
            )
            heads: builtins.list[Any] = []
            fallback = []
            for partition, page in enumerate(pages):
                head = None
                for seen, item in enumerate(page):
                    if _queue_of(item) not in paused:
                        head = item
                        break
                    if seen + 1 >= HEAD_PAGE:
                        break
                if head is not None:
                    heads.append(iter([head]))
                elif next(page, None) is not None:
                    fallback.append(partition)  # a long paused backlog: each queue's head
        else:
            heads, fallback = [], list(range(self.partitions))
        heads += self._queries(
            [
                {
                    "IndexName": DUE_INDEX,
                    "KeyConditionExpression": "dq = :dq",
                    "ExpressionAttributeValues": {":dq": _s(f"{partition}#{queue}")},
                    "ProjectionExpression": "#due",
                    "ExpressionAttributeNames": {"#due": "due"},
                    "Limit": 1,
                }
                for partition in fallback
                for queue in sorted(names)
            ]
        )
        earliest: int | None = None
        for stream in heads:
            item = next(stream, None)
            due = None if item is None else _value(item.get("due", {}))
            if isinstance(due, int) and (earliest is None or due < earliest):
                earliest = due
        try:
            return None if earliest is None else _decode_time(earliest)
        except OverflowError:  # past year 9999: the claim that reaches it parks the job
            return None

    # -- queues -------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool) -> bool:
        _check_queue(name)
        reply = self._client.update_item(
            TableName=self.table,
            Key={"pk": _s("queue"), "sk": _s(name)},
            UpdateExpression="SET #paused = :paused",
            ExpressionAttributeNames={"#paused": "paused"},
            ExpressionAttributeValues={":paused": {"BOOL": paused}},
            ReturnValues="ALL_OLD",
        )
        was = _value(reply.get("Attributes", {}).get("paused", {"BOOL": False})) is True
        return was != paused

    def paused_queues(self) -> builtins.set[str]:
        return {name for name, paused in self._queues().items() if paused}

    def _all_jobs(self) -> Iterator[Job]:
        for partition in range(self.partitions):
            for item in self._query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(f"job#{partition}")},
                ConsistentRead=True,
            ):
                yield _decode_item(item)

    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        """Every queue that holds a job or is paused, counted from every job (read
        partition by partition): callers that ask often cache the answer."""
        paused = self.paused_queues()
        due: dict[str, int] = {}
        running: dict[str, int] = {}
        states: dict[str, dict[str, int]] = {}
        oldest: dict[str, datetime] = {}
        names = set(paused)
        for job in self._all_jobs():
            queue = job.queue
            names.add(queue)
            state = job.state
            counts = states.get(queue)
            if counts is None:
                counts = states[queue] = job_state_counts()
            counts[state] += 1
            if state == "running":
                running[queue] = running.get(queue, 0) + 1
            elif job.locked_by is None and job.due_at is not None:
                if job.due_at <= now:
                    due[queue] = due.get(queue, 0) + 1
                if state != "paused" and (queue not in oldest or job.due_at < oldest[queue]):
                    oldest[queue] = job.due_at
        return [
            QueueInfo(
                name,
                name in paused,
                due.get(name, 0),
                running.get(name, 0),
                states.get(name) or job_state_counts(),
                oldest.get(name),
            )
            for name in sorted(names)
        ]

    # -- run history ----------------------------------------------------------

    def _runs_of(self, partition: int, cursor: str | None, chunk: int) -> Iterator[dict[str, Any]]:
        """The run items of one partition, newest first, before ``cursor``, read ``chunk``
        items at a time."""
        values: dict[str, Any] = {":pk": _s(f"run#{partition}")}
        condition = "pk = :pk"
        if cursor is not None:
            condition += " AND sk < :cursor"
            values[":cursor"] = _s(cursor)
        return self._query(
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ScanIndexForward=False,
            ConsistentRead=True,
            Limit=chunk,
        )

    def list_runs(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        """Run records, newest first: the partitions' records merged by id (one job's
        records are all in its partition). At most :data:`MAX_RUNS_SCANNED` records are
        read per call: a call that reaches that bound returns the matches so far and a
        cursor to go on from."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if cursor is not None and not _RUN_ID.fullmatch(cursor):
            raise ValueError(
                f"invalid run cursor {cursor!r}: pass the next_cursor of a page of runs "
                "(a run record id like '01764451200123456-0123456789ab')"
            )
        wanted = None if outcomes is None else set(outcomes)
        if job_id is not None:
            partitions = [partition_of(job_id, self.partitions)]
        else:
            partitions = list(range(self.partitions))
        filtered = job_id is not None or task is not None or queue is not None or wanted is not None
        # Unfiltered, each partition holds about its share of a page (runs spread by job).
        chunk = 200 if filtered else (limit + 1) // len(partitions) + 2
        streams = [self._runs_of(partition, cursor, chunk) for partition in partitions]
        merged = heapq.merge(*streams, key=lambda item: item["sk"]["S"], reverse=True)
        found: list[RunRecord] = []
        for scanned, item in enumerate(merged, 1):
            run = _decode_run(item)
            if run is not None and run.matches(job_id, task, queue, wanted):
                found.append(run)
                if len(found) > limit:
                    break
            if scanned >= MAX_RUNS_SCANNED:
                return RunPage(found[:limit], item["sk"]["S"])
        return RunPage.read_ahead(found, limit)

    def prune_runs(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest written run records that finished before
        ``before``.

        Per partition, reads its oldest written records, :data:`PRUNE_LOOKAHEAD`
        more than are still wanted (so records written a little out of order,
        by daemons whose clocks differ, are found too), and deletes the old
        ones among them: the cost grows with ``limit`` only.
        """
        if limit <= 0:
            return 0
        until = _micros(before)
        keys: list[dict[str, Any]] = []
        for partition in range(self.partitions):
            items = self._query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": _s(f"run#{partition}")},
                ProjectionExpression="pk, sk, finished_at",
                ConsistentRead=True,
                Limit=limit - len(keys) + PRUNE_LOOKAHEAD,
            )
            for item in itertools.islice(items, limit - len(keys) + PRUNE_LOOKAHEAD):
                finished = _value(item.get("finished_at", {"NULL": True}))
                if not isinstance(finished, int) or finished < until:
                    keys.append({"pk": item["pk"], "sk": item["sk"]})
                    if len(keys) >= limit:
                        break
            if len(keys) >= limit:
                break
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys])
        return len(keys)
