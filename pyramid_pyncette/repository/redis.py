"""The Redis store (``redis://``, ``rediss://`` and ``unix://`` URLs, and Redis Cluster:
``redis+cluster://`` and ``rediss+cluster://``).

A namespace is split into partitions (``pyncette.partitions``); a job lives in
partition :func:`~pyramid_pyncette.jobs.partition_of` its id. Every key of
partition ``p`` carries the hash tag ``{ns:p}``, so it lives in one slot of a
Redis Cluster and the partitions spread over the cluster's shards. A
namespace of one partition uses the tag ``{ns}``: the layout of the store
before there were partitions, so data written then needs no migration. Below,
``{tag}`` is the tag of one partition:

``{tag}:jobs``
    HASH, job id -> the job document (JSON, see below).
``{tag}:due``
    ZSET of the ids of the jobs of the queue ``default`` that have a
    ``due_at``, scored by it (integer microseconds since the epoch). "What is
    due" is one ``ZRANGEBYSCORE`` per queue and partition.
``{tag}:due:<queue>``
    The same for each other queue. The default queue keeps the key every job
    used before there were queues, so data written then needs no migration.
``{tag}:queue:<queue>``
    ZSET (all scores 0) of the ids of every job of a queue other than the
    default one (whether due or not): whether the queue holds a job.
``{tag}:queues``
    SET of the queues other than the default one that hold a job in the
    partition; a claim over every queue reads it.
``{tag}:heads``
    Only with several partitions: ZSET, queue -> the earliest score of its due
    set in the partition, kept by every script that changes a due set. A
    probe over every queue reads it instead of every due set, so an idle
    poll costs a few commands per partition whatever the number of queues.
``{tag}:paused``
    SET of the names of the paused queues (:meth:`RedisRepository.set_queue_paused`):
    each partition keeps a copy, which its scripts read atomically with the
    jobs they claim.
``{tag}:locked``
    HASH, id -> queue of every locked job (``staged:<queue>`` for a row a
    transaction staged), kept by the scripts so that
    :meth:`RedisRepository.queue_stats` counts running jobs without reading
    every document.
``{tag}:runs``
    STREAM, the run history of the partition's jobs
    (:meth:`RedisRepository.list_runs`): one entry per run (a field ``run``
    holding the record as JSON), appended by the script that completes it,
    capped at about :data:`MAX_REDIS_RUNS` entries (over all partitions
    together: each stream keeps its share). A record's id is its
    entry id, zero-padded so that ids sort as text in the order they were
    written; with several partitions the entry ids are microseconds (and a
    record's position in its batch), the record id ends with the partition,
    and listings merge the streams in id order.
``{tag}:ids``
    ZSET of every id, all scored 0, for paging in id order (``ZRANGEBYLEX``);
    listings merge the partitions' pages.
``{tag}:task:<task name>``
    ZSET (all scores 0) of the ids of the jobs of one task, for the task filter.

Outside the partitions, under ``{ns}``: ``{ns}:meta`` (HASH, field
``partitions``: the count the namespace was set up with, written once with
``HSETNX``; a store asked for another count refuses to start) and the
pub/sub channel ``{ns}:new``. With one partition ``{ns}:paused`` is the
partition's own copy of the paused queues.

A job document is one JSON object: the fields the scripts change (``due_at``,
``next_run_at``, ``locked_by``, ``attempts``, ``last_run_at``,
``last_status``, ``last_error``), ``task``, ``lease_us`` (the job's own lease
in microseconds, copied from its options so a claim need not parse them),
``job``: the rest of the job (``id``, ``schedule``, ``args``, ``kwargs``,
``options``, ``created_at``, ``partition``) as a JSON *string*, and ``queue``
(absent in documents written before there were queues: the default queue).
The scripts copy that string verbatim, so arguments written by Python are
read back by Python byte for byte; Lua's JSON codec never re-encodes them (it
would turn an empty list into an object and round floats to 14 digits).
Datetimes are strings holding integer microseconds since the epoch (UTC), so
no script ever turns one into a floating-point number either: the round trip
is exact for every datetime Python can represent. Scores in the due sets are
doubles and are exact until 2^53 microseconds (the year 2255); later due
times may be ordered a few microseconds off, which
:meth:`RedisRepository.next_due` does not see because it reads the document.
A document whose ``queue`` is not a queue name counts as the default queue's
(its job is parked with that problem when claimed), so garbage never names a
key.

Every write is one Lua script (``lua/*.lua`` beside this module) per
partition, so it is atomic for every job, and every key a script touches is
passed in ``KEYS`` and belongs to one partition (one slot). A claim over
several partitions first asks every partition which jobs are due
(``probe.lua``, all in one pipeline), takes the earliest across them and
claims in each partition that holds some of them. The task and
queue of a job that is deleted or moved can only be known by reading the
job, so writers pass the task and queue keys they expect; a script that
finds a job of another task or queue writes nothing and names the missing
tasks and queues, and the call is repeated with their keys. Claims over
every queue and heartbeats pass the keys of the queues the store last saw
in the queue sets in the same way.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import short_repr
from ..jobs import (
    DEFAULT_QUEUE,
    MAX_PARTITIONS,
    MAX_RUN_ERROR_LENGTH,
    STAGED_PREFIX,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
    job_state_counts,
    partition_of,
    queue_name_problem,
)
from ..policy import plan_claim, plan_completion, split_finished
from ..redaction import redact_text, redact_url
from .base import (
    Claim,
    JobPage,
    Repository,
    RepositoryError,
    RunPage,
    published_lock,
    staged_job,
)
from .listener import Receive, start_listener_thread
from .rows import (
    decode_job_fields,
    load_json,
    run_of_micros,
    storable_text,
    storable_values,
    time_of_micros,
    unwritable_row_values,
    well_formed_document,
)

log = logging.getLogger(__name__)

__all__ = ["PartitionCountError", "PartitionKeys", "RedisRepository"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

#: How often a write is repeated when jobs change task or queue under it.
_WRITE_TRIES = 5

#: About how many run records a namespace keeps: each append trims the
#: oldest beyond this (``XADD MAXLEN ~``, so a few more may stay), whatever
#: ``pyncette.history_retention`` says. At a few hundred bytes a record,
#: about 1 GB at most. With several partitions each partition's stream keeps
#: its share (but at least :data:`MIN_REDIS_RUNS_PER_PARTITION`).
MAX_REDIS_RUNS = 1_000_000

#: The fewest run records a partition's stream is trimmed to.
MIN_REDIS_RUNS_PER_PARTITION = 1000

#: The most run records one :meth:`RedisRepository.list_runs` call reads: a
#: filter that matches rarely returns a short page (with a cursor to go on)
#: rather than reading the whole history at once.
MAX_RUNS_SCANNED = 50_000

#: How many records past the ``limit`` oldest :meth:`RedisRepository.prune_runs`
#: reads, to find old records written after newer ones.
PRUNE_LOOKAHEAD = 100

#: Run records read per round trip while a filtered listing looks for matches.
_RUNS_CHUNK = 1000

#: The largest sequence number of a stream entry id.
_MAX_SEQUENCE = 2**64 - 1

#: Errors after which the same call may succeed once the server is back.
_TRANSIENT_ERRORS = (
    redis_errors.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
    redis_errors.TimeoutError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,  # includes MasterDownError
    redis_errors.ReadOnlyError,  # a replica promoted after a failover
    redis_errors.SlotNotCoveredError,
    # A cluster none of whose nodes answers yet (RedisCluster.from_url).
    redis_errors.RedisClusterException,
)
#: ConnectionErrors that no retry fixes.
_PERMANENT_ERRORS = (redis_errors.AuthenticationError, redis_errors.AuthorizationError)

#: Fields of plan values the scripts may write.
_PLAN_FIELDS = frozenset(
    {"due_at", "next_run_at", "attempts", "last_run_at", "last_status", "last_error"}
)

# --------------------------------------------------------------------------- Lua


def _lua(*names: str) -> str:
    """The text of the scripts ``lua/<name>.lua``, joined in order."""
    folder = resources.files(__name__.rpartition(".")[0]).joinpath("lua")
    return "".join(folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in names)


# Each script is one text sent to the server; the shared helpers go in front.
_CLAIM = _lua("replicate", "common", "claim")
_EXTEND = _lua("replicate", "common", "extend")
_WRITE = _lua("replicate", "common", "write")
_LIST = _lua("list")
_NEXT_DUE = _lua("next_due")
_PROBE = _lua("replicate", "probe")
_QUEUE_COUNTS = _lua("queue_counts")

#: Job documents one call of ``queue_counts.lua`` reads (HSCAN's COUNT).
_COUNT_CHUNK = 1000

#: The states in the order ``queue_counts.lua`` counts them.
_COUNTED_STATES = ("scheduled", "running", "retrying", "failed", "paused")

# --------------------------------------------------------------------------- encoding


def _micros(value: timedelta) -> int:
    return value // _MICROSECOND


def _lease_micros(seconds: float) -> int:
    # The same rounding plan_claim applies: now + timedelta(seconds=seconds).
    return _micros(timedelta(seconds=seconds))


@overload
def _encode_time(value: datetime) -> str: ...
@overload
def _encode_time(value: None) -> None: ...
@overload
def _encode_time(value: datetime | None) -> str | None: ...
def _encode_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"the Redis store needs timezone-aware datetimes, got {value!r}")
    return str(_micros(value - _EPOCH))


def _decode_time(value: Any) -> datetime | None:
    """A stored time (see :func:`time_of_micros`); a number of any other type
    (a script's reply, a document's JSON number) counts its whole microseconds."""
    if value is None or type(value) is str:
        return time_of_micros(value)
    return _EPOCH + timedelta(microseconds=int(value))


def _text(value: Any) -> Any:
    """``bytes`` from a client without ``decode_responses`` as ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _clean(text: str | None) -> str | None:
    """Text Lua's JSON decoder accepts (see :func:`storable_text`), unbounded."""
    return storable_text(text, None)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _check_queue(name: Any) -> str:
    problem = queue_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _encode_job(job: Job) -> str:
    lease = job.lease_duration
    queue = _check_queue(job.queue)
    definition = {
        "id": job.id,
        "schedule": job.schedule,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "options": dict(job.options),
        "created_at": _encode_time(job.created_at),
        "partition": job.partition,
    }
    return _dumps(
        {
            "task": job.task,
            "due_at": _encode_time(job.due_at),
            "next_run_at": _encode_time(job.next_run_at),
            "locked_by": _clean(job.locked_by),
            "attempts": int(job.attempts),
            "last_run_at": _encode_time(job.last_run_at),
            **storable_values({"last_status": job.last_status, "last_error": job.last_error}),
            "lease_us": _lease_micros(lease) if lease else None,
            "job": _dumps(definition),
            "queue": queue,
        }
    )


def _decode_job(job_id: str, raw: str | bytes) -> Job:
    """The job in a stored document. Never raises: one that cannot be read becomes
    a job that is parked, not run."""
    try:
        # The document's own fields are strings, times and small numbers, which
        # orjson reads exactly as json does; anything odd goes the careful way.
        doc = orjson.loads(raw)
    except ValueError:
        doc = None
    if type(doc) is dict and type(doc.get("job")) is str and _DOCUMENT_KEYS.issuperset(doc):
        job = well_formed_document(job_id, doc, _decode_time)
        if job is not None:
            return job
    fields = load_json(raw)
    if isinstance(fields, dict) and fields.get("queue") is None:
        fields["queue"] = DEFAULT_QUEUE  # written before there were queues
    # Text, but no queue name: such a job counts in the default queue (so do
    # the scripts, see common.lua), so no key is ever named after garbage.
    return decode_job_fields(fields, job_id=job_id, decode_time=_decode_time, check_queue_name=True)


_DOCUMENT_TIMES = ("due_at", "next_run_at", "last_run_at")
#: The keys of a document as :func:`_encode_job` writes it.
_DOCUMENT_KEYS = frozenset(
    (
        "task",
        "locked_by",
        "attempts",
        "last_status",
        "last_error",
        "lease_us",
        "job",
        "queue",
        *_DOCUMENT_TIMES,
    )
)


def _plan_values(values: dict[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for name, value in storable_values(values).items():
        if name not in _PLAN_FIELDS:
            raise ValueError(f"the Redis store cannot write the job field {name!r}")
        if isinstance(value, datetime):
            value = _encode_time(value)
        elif isinstance(value, str):
            value = _clean(value)
        encoded[name] = value
    return encoded


#: The text fields of a run record (its other fields are numbers).
_RUN_TEXTS = ("job_id", "task", "queue", "outcome", "host", "worker")


def _encode_run(run: RunRecord) -> str:
    """The stream entry value of ``run``: one JSON object (one field per entry is
    cheaper to append and to read than one per value).

    Times are integer microseconds since the epoch, so they round-trip
    exactly; the error is bounded to ``MAX_RUN_ERROR_LENGTH`` and, like every
    text, holds no lone surrogate (see :func:`storable_text`), so a run record
    never fails the script that appends it.
    """
    # Built in one expression, with no call for what is already in its stored form
    # (a whole number, no error): the worker's loop encodes one record per run.
    attempt, pid, error = run.attempt, run.pid, run.error
    record: dict[str, Any] = {
        "job_id": run.job_id,
        "task": run.task,
        "queue": run.queue,
        "scheduled_at": (run.scheduled_at - _EPOCH) // _MICROSECOND,
        "started_at": (run.started_at - _EPOCH) // _MICROSECOND,
        "finished_at": (run.finished_at - _EPOCH) // _MICROSECOND,
        "attempt": attempt if type(attempt) is int else int(attempt),
        "outcome": run.outcome,
        "error": None if error is None else storable_text(error, MAX_RUN_ERROR_LENGTH),
        "host": run.host,
        "pid": pid if type(pid) is int else int(pid),
        "worker": run.worker,
    }
    try:
        return orjson.dumps(record).decode("utf-8")
    except TypeError:  # a lone surrogate, or not text at all
        for name in _RUN_TEXTS:
            record[name] = _clean(record[name]) or ""
        return orjson.dumps(record).decode("utf-8")


def _run_id(entry_id: Any, partition: int | None = None) -> str:
    """The :attr:`RunRecord.id` of a stream entry: its id, zero-padded so that ids
    sort as text in the order they were written (``0001764451200123-0000000000``).

    In a store of several partitions each has its own stream, so the id ends
    with the partition (``0001764451200123-0000000000-0003``): two records
    written in the same millisecond by two partitions still differ, and ids
    still sort as text.
    """
    ms, _, seq = _text(entry_id).partition("-")
    text = f"{int(ms):016d}-{int(seq or 0):010d}"
    return text if partition is None else f"{text}-{partition:04d}"


def _parse_run_id(run_id: str, partitions: int) -> tuple[int, int, int]:
    """The stream entry (milliseconds, sequence) and partition of the record id ``run_id``."""
    parts = run_id.split("-")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    wanted = 2 if partitions == 1 else 3
    if (
        len(numbers) != wanted
        or numbers[0] < 0
        or not 0 <= numbers[1] <= _MAX_SEQUENCE
        or (wanted == 3 and not 0 <= numbers[2] < partitions)
    ):
        example = "0001764451200123-0000000000" + ("" if partitions == 1 else "-0003")
        raise ValueError(
            f"invalid run cursor {run_id!r}: pass the next_cursor of a page of runs "
            f"(a run record id like {example!r})"
        )
    return numbers[0], numbers[1], numbers[2] if wanted == 3 else 0


def _entry_at_or_before(ms: int, seq: int, inclusive: bool) -> str | None:
    """The largest stream entry id up to (``inclusive``) or below ``ms-seq``; None if none."""
    if inclusive:
        return f"{ms}-{seq}"
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{_MAX_SEQUENCE}"
    return None


def _entry_order(entry_id: Any) -> tuple[int, int]:
    """A stream entry id as numbers, to compare entries of several streams."""
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _decode_run(
    entry_id: Any, fields: Mapping[Any, Any], partition: int | None = None
) -> RunRecord | None:
    """The run record of a stream entry (of ``partition``'s stream when the store has
    several), or None when the entry is not one."""
    try:
        record = orjson.loads(fields.get("run") or fields[b"run"])
        return run_of_micros(record, _run_id(entry_id, partition))
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return None


def _raw_credentials_problem(url: str) -> str | None:
    """The problem with ``url`` when a raw '/', '?' or '#' before its '@' ended the
    host early, else None: urllib then reads the rest of the password as the
    path, query or fragment, so no other check may quote those parts."""
    rest = url.partition("://")[2]
    try:
        authority = urlsplit(url).netloc
    except ValueError:
        authority = ""
    if "@" in rest and "@" not in authority:
        return (
            "the part before '@' holds a raw '/', '?' or '#'; percent-encode them in the "
            "user and password (%2F, %3F, %23)"
        )
    return None


def _wrong_type(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a key of the wrong type (``WRONGTYPE``): a
    problem of one partition's keys, which no retry fixes."""
    return isinstance(exc, redis_errors.ResponseError) and "WRONGTYPE" in str(exc)


def _url_problem(url: str, exc: Exception) -> str:
    """Why redis-py refused ``url``, without echoing any part of its credentials."""
    # A complaint about a bad port or database number would quote part of the password.
    return _raw_credentials_problem(url) or redact_text(str(exc))


# --------------------------------------------------------------------------- the store


class PartitionCountError(RepositoryError):
    """``pyncette.partitions`` differs from the count the namespace was set up with."""


#: Partitions of a namespace set up without ``pyncette.partitions``.
DEFAULT_REDIS_PARTITIONS = 16

#: The URL schemes of Redis Cluster (``redis+cluster://host:port``).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class PartitionKeys:
    """The keys of one partition of a namespace (see the module docstring).

    ``tag`` is ``{ns}`` in a store of one partition (the layout of the store
    before there were partitions) and ``{ns:p}`` for partition ``p`` of a
    store of several, so that every key of one partition is in one slot.
    """

    __slots__ = (
        "due",
        "heads",
        "ids",
        "index",
        "jobs",
        "locked",
        "paused",
        "queue_prefix",
        "queues",
        "runs",
        "tag",
        "task_prefix",
    )

    def __init__(self, tag: str, index: int, heads: bool = False) -> None:
        self.tag = tag
        self.index = index
        #: ``<tag>:heads`` in a store of several partitions, else nothing: the
        #: extra KEYS every script that writes or probes the partition gets.
        self.heads: tuple[str, ...] = (f"{tag}:heads",) if heads else ()
        self.jobs = f"{tag}:jobs"
        self.due = f"{tag}:due"
        self.ids = f"{tag}:ids"
        self.task_prefix = f"{tag}:task:"
        self.queue_prefix = f"{tag}:queue:"
        self.queues = f"{tag}:queues"
        self.paused = f"{tag}:paused"
        self.locked = f"{tag}:locked"
        self.runs = f"{tag}:runs"

    def __repr__(self) -> str:
        return f"<PartitionKeys {self.tag}>"

    def task_key(self, task: str) -> str:
        """The key of the id index of ``task``'s jobs in this partition."""
        return self.task_prefix + task

    def due_key(self, queue: str) -> str:
        """The due set of ``queue`` in this partition (``<tag>:due`` for the default queue)."""
        if queue == DEFAULT_QUEUE:
            return self.due
        return f"{self.due}:{queue}"

    def queue_key(self, queue: str) -> str:
        """The id index of a queue other than the default one in this partition."""
        return self.queue_prefix + queue

    def queue_keys(self, queues: Iterable[str]) -> builtins.list[str]:
        """The due sets and id indexes of ``queues``, in a stable order."""
        keys = []
        for queue in sorted(set(queues)):
            keys.append(self.due_key(queue))
            if queue != DEFAULT_QUEUE:
                keys.append(self.queue_key(queue))
        return keys


class RedisRepository(Repository):
    """A :class:`Repository` in Redis or Redis Cluster.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``) URL
    of a Redis Cluster; its query string may set client options
    (``socket_timeout=5``...). Connections come from a blocking pool of
    ``max_connections`` (callers waiting for a free connection instead of
    failing). ``client`` replaces the URL with a ready ``redis.Redis`` (or
    ``RedisCluster``) that the store will not close.

    ``partitions`` is how many partitions the namespace is split into (see
    the module docstring); None adopts the count the namespace was set up
    with, or :data:`DEFAULT_REDIS_PARTITIONS` for a new one. A count that
    differs from the namespace's is refused by :meth:`setup`
    (:class:`PartitionCountError`). :attr:`partitions` holds the count in use
    once the store is set up.

    Claims and heartbeats use the Redis server's clock (``store_clock``), so
    daemons whose clocks drift apart never take live leases from each other.
    """

    store_clock = True

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "pyncette",
        max_connections: int | None = None,
        client: redis.Redis | None = None,
        store_clock: bool = True,
        partitions: int | None = None,
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(
                f"Redis namespace {namespace!r} must be non-empty and contain no braces"
            )
        if partitions is not None and (
            type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS
        ):
            raise ValueError(
                f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, got {partitions!r}"
            )
        self.namespace = namespace
        self.store_clock = store_clock
        self.requested_partitions = partitions
        self.redacted_url = redact_url(url) if url is not None else repr(client)
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._build_client: Callable[[], Any] | None = None
        self._client_obj: Any = None
        if client is not None:
            self._cluster = isinstance(client, redis.RedisCluster)
            self._use_client(client)
        elif url is None:
            raise ValueError("RedisRepository needs a url or a client")
        else:
            self._cluster = url.partition("://")[0].lower() in CLUSTER_SCHEMES
            # A cluster client asks a node for the slots as it is built: it is
            # built at first use, so building the store never connects.
            build = self._connect(url, max_connections)
            if self._cluster:
                self._build_client = build
            else:
                self._use_client(build())
        tag = "{" + namespace + "}"
        #: The namespace's own key, outside every partition: the partition count
        #: (HASH, field ``partitions``).
        self._meta_key = f"{tag}:meta"
        #: The partitions, once :meth:`setup` has read their count.
        self._layout: builtins.list[PartitionKeys] = []
        #: Where the next claim starts (see :meth:`_claim_order`).
        self._claim_offset = 0
        #: Completions the daemon's loop handed over for partitions that could not
        #: be reached (a cluster shard down), by partition: written before
        #: anything else of theirs once it is back (see :meth:`_defer`).
        self._deferred: dict[int, builtins.list[tuple[Any, ...]]] = {}
        #: Whether completions for a partition that cannot be reached are kept
        #: while the others are written (a cluster, whose shards fail apart; one
        #: server is up or down as a whole).
        self._defer_unreachable = self._cluster
        #: Leases a heartbeat could not renew because their partition could not be
        #: reached, by partition: renewed before the next claim that reaches it, so
        #: that a lease which ran out during the outage is not claimed again.
        self._unrenewed: dict[int, builtins.list[builtins.list[Any]]] = {}
        #: The partitions last found unreachable (logged once per outage).
        self._unreachable: builtins.set[int] = set()
        #: Run records written by a completion batch that then failed in a later
        #: partition: the caller tries the batch again, and these are not
        #: appended twice (see :meth:`_complete_now`).
        self._runs_written: builtins.set[RunRecord] = set()
        #: The partitions last found holding a key of the wrong type (logged once).
        self._broken: builtins.set[int] = set()
        self._deferred_lock = threading.Lock()
        #: The KEYS of the probes by claimed queues (see :meth:`_probe_keys`).
        self._probe_cache: dict[frozenset[str], builtins.list[builtins.list[str]]] = {}
        #: The queues other than the default one last seen in the queue sets:
        #: claims over every queue and heartbeats pass their keys.
        self._known_queues: frozenset[str] = frozenset()
        #: Pub/sub channel announcing new jobs (see :meth:`start_listener`).
        self.channel = f"{tag}:new"
        self._setup_lock = threading.Lock()
        self._ready = False

    def _use_client(self, client: Any) -> None:
        """Take ``client`` as the store's client and register the scripts with it."""
        self._claim = client.register_script(_CLAIM)
        self._extend = client.register_script(_EXTEND)
        self._write_ops = client.register_script(_WRITE)
        self._list = client.register_script(_LIST)
        self._next_due = client.register_script(_NEXT_DUE)
        self._probe = client.register_script(_PROBE)
        self._queue_counts = client.register_script(_QUEUE_COUNTS)
        self._scripts = (
            self._claim,
            self._extend,
            self._write_ops,
            self._list,
            self._next_due,
            self._probe,
            self._queue_counts,
        )
        self._client_obj = client

    @property
    def _client(self) -> Any:
        client = self._client_obj
        if client is None:
            with self._client_lock:
                if self._client_obj is None:
                    assert self._build_client is not None
                    self._use_client(self._build_client())
                client = self._client_obj
        return client

    @staticmethod
    def _connect(url: str, max_connections: int | None) -> Callable[[], Any]:
        """A function building the client for ``url`` (checked now, connected later)."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 10,
            "socket_timeout": 30,
            "health_check_interval": 30,
        }
        if max_connections is not None:
            options["max_connections"] = max_connections
        scheme = url.partition("://")[0].lower()
        if scheme in CLUSTER_SCHEMES:
            return RedisRepository._cluster_builder(url, CLUSTER_SCHEMES[scheme], options)
        # One immediate reconnect replaces a connection the server dropped
        # while it sat in the pool; a server that is really down fails the
        # call, and the worker waits the outage out with its own backoff.
        options["retry"] = Retry(NoBackoff(), 1)
        try:
            # Options in the URL's query string win over these defaults.
            pool = redis.BlockingConnectionPool.from_url(url, **options)
        except Exception as exc:
            raise ValueError(
                f"invalid Redis URL {redact_url(url)!r}: {_url_problem(url, exc)}"
            ) from None
        return lambda: redis.Redis(connection_pool=pool)

    @staticmethod
    def _cluster_builder(url: str, scheme: str, options: dict[str, Any]) -> Callable[[], Any]:
        """A function building the ``RedisCluster`` of
        ``redis+cluster://host:port[,host:port...][/0][?options]``."""
        from redis.cluster import ClusterNode, RedisCluster

        def invalid(problem: str) -> ValueError:
            return ValueError(f"invalid Redis Cluster URL {redact_url(url)!r}: {problem}")

        # First: until it passes, the path, query and node list may hold the password.
        problem = _raw_credentials_problem(url)
        if problem is not None:
            raise invalid(problem)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise invalid(_url_problem(url, exc)) from None
        credentials, at, hosts = parts.netloc.rpartition("@")
        nodes = [host for host in hosts.split(",") if host]
        if not nodes:
            raise invalid("name at least one node (redis+cluster://host:port[,host:port...])")
        database = parts.path.strip("/")
        if database not in ("", "0"):
            raise invalid(
                f"a cluster has only database 0, not {database!r}; end the URL with the "
                "port or /0, and use pyncette.redis_namespace to keep applications apart"
            )
        startup = []
        for node in nodes[1:]:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                raise invalid(f"the node {node!r} is not host:port")
            startup.append(ClusterNode(host.strip("[]"), int(port)))
        first = urlunsplit((scheme, credentials + at + nodes[0], "", parts.query, ""))
        try:
            # Checks the URL (and its options) without connecting.
            redis.connection.parse_url(first)
        except Exception as exc:
            raise invalid(_url_problem(url, exc)) from None
        return lambda: RedisCluster.from_url(first, startup_nodes=startup, **options)

    def __repr__(self) -> str:
        return f"<RedisRepository {self.redacted_url} namespace={self.namespace!r}>"

    @property
    def client(self) -> redis.Redis:
        """The Redis client (for tests and maintenance)."""
        return self._client

    def _parts(self) -> builtins.list[PartitionKeys]:
        """The partitions (setting the store up first if needed)."""
        if not self._layout:
            self.setup()
        return self._layout

    def partition_keys(self, partition: int) -> PartitionKeys:
        """The keys of partition number ``partition``."""
        return self._parts()[partition]

    def job_keys(self, job_id: str) -> PartitionKeys:
        """The keys of the partition that holds the job ``job_id``."""
        parts = self._parts()
        return parts[partition_of(job_id, len(parts))]

    def keys(self) -> builtins.list[str]:
        """The fixed keys of this namespace: the jobs, due set and id index of each
        partition (task keys come and go with their jobs)."""
        return [key for part in self._parts() for key in (part.jobs, part.due, part.ids)]

    def task_key(self, task: str, partition: int = 0) -> str:
        """The key of the id index of ``task``'s jobs (in ``partition``)."""
        return self.partition_keys(partition).task_key(task)

    def due_key(self, queue: str, partition: int = 0) -> str:
        """The key of the due set of ``queue`` (in ``partition``)."""
        return self.partition_keys(partition).due_key(queue)

    def queue_key(self, queue: str, partition: int = 0) -> str:
        """The key of the id index of a queue other than the default one (in ``partition``)."""
        return self.partition_keys(partition).queue_key(queue)

    def _learn_queues(self, names: Iterable[Any]) -> None:
        """Remember queues a script named (or a queue set held) for the next calls."""
        valid = {name for name in map(_text, names) if queue_name_problem(name) is None}
        valid.discard(DEFAULT_QUEUE)
        if not valid <= self._known_queues:
            self._known_queues = self._known_queues | valid

    def _pipeline(self) -> Any:
        """A pipeline of reads: atomic (``MULTI``) where the server allows it."""
        return self._client.pipeline(transaction=not self._cluster and len(self._parts()) == 1)

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        with self._setup_lock:
            if self._ready:
                return
            # Loading the scripts checks the server is reachable and speaks Lua.
            self._load_scripts()
            count = self._settle_partitions()
            tag = "{" + self.namespace + "}"
            if count == 1:
                self._layout = [PartitionKeys(tag, 0)]
            else:
                self._layout = [
                    PartitionKeys("{" + f"{self.namespace}:{p}" + "}", p, heads=True)
                    for p in range(count)
                ]
            self.partitions = count
            # Daemons start their claims at different partitions.
            self._claim_offset = random.randrange(count)
            self._ready = True

    def _load_scripts(self) -> None:
        client = self._client  # built now if it was not (the scripts come with it)
        for script in self._scripts:
            script.sha = _text(client.script_load(script.script))

    def _settle_partitions(self) -> int:
        """The namespace's partition count: the one it was set up with, else the one
        asked for (or the default), recorded once (``HSETNX``) for every later process."""
        try:
            count = self._read_partitions()
            if count > 1:
                self._mark_partitions(count)
            return count
        except redis_errors.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise PartitionCountError(
                f"a Redis key of the namespace {self.namespace!r} that holds its partition "
                f"count ({self._meta_key!r} or a partition's ':meta' key) is not a hash; "
                f"delete it and set the count again (HSET {self._meta_key} partitions 16, "
                "the count the namespace was set up with), or use a fresh "
                "pyncette.redis_namespace"
            ) from None

    def _partition_meta_key(self, p: int) -> str:
        """Partition ``p``'s copy of the count (only with several partitions)."""
        return "{" + f"{self.namespace}:{p}" + "}:meta"

    def _mark_partitions(self, count: int) -> None:
        """Keep a copy of the count in every partition, so that a lost ``{ns}:meta``
        (evicted, a flushed node) is found again rather than read as a new namespace."""
        pipe = self._client.pipeline(transaction=False)
        for p in range(count):
            pipe.hsetnx(self._partition_meta_key(p), "partitions", count)
        try:
            pipe.execute()
        except Exception as exc:
            if not self.is_transient(exc):
                raise
            # A shard that is down: its copies are written at a later start.
            log.info("the partition count could not be copied to every partition (%s)", exc)
        tag = "{" + self.namespace + "}"
        if self._client.exists(f"{tag}:jobs"):
            log.warning(
                "the Redis namespace %r has %d partitions but also holds jobs in the layout "
                "of one partition (%s:jobs), written by a version without partitions: "
                "those jobs are never read; stop that version and add them again",
                self.namespace,
                count,
                tag,
            )

    def _recorded_elsewhere(self) -> int | None:
        """When ``{ns}:meta`` is missing: the count a partition's copy holds, or
        None for a new namespace; refuses a namespace whose partitions hold data
        but no copy of the count (it cannot be told safely)."""
        probed = range(DEFAULT_REDIS_PARTITIONS)
        pipe = self._client.pipeline(transaction=False)
        for p in probed:
            pipe.hget(self._partition_meta_key(p), "partitions")
        copies = {_text(value) for value in pipe.execute() if value is not None}
        if len(copies) == 1:
            try:
                count = int(copies.pop())
            except ValueError:
                count = 0
            if 1 < count <= MAX_PARTITIONS:
                log.warning(
                    "the Redis key %r was missing; the namespace's partitions record %d "
                    "partitions, which it is set back to",
                    self._meta_key,
                    count,
                )
                return count
        data = [
            key
            for p in probed
            for key in (f"{{{self.namespace}:{p}}}:{name}" for name in ("ids", "jobs", "runs"))
        ]
        if copies or self._client.exists(*data):
            raise PartitionCountError(
                f"the Redis key {self._meta_key!r} (the namespace's partition count) is "
                f"missing, but the namespace {self.namespace!r} holds partitioned jobs or "
                "runs whose count cannot be told safely; set it back to the count the "
                f"namespace was set up with (HSET {self._meta_key} partitions 16, the "
                "default) or use a fresh pyncette.redis_namespace"
            )
        return None

    def _read_partitions(self) -> int:
        """:meth:`_settle_partitions` (a key of the wrong type raises ``WRONGTYPE``)."""
        stored = self._client.hget(self._meta_key, "partitions")
        if stored is None:
            tag = "{" + self.namespace + "}"
            # Data written before there were partitions: one partition. A paused
            # queue alone counts too (its pause is kept).
            legacy = self._client.exists(
                f"{tag}:jobs", f"{tag}:ids", f"{tag}:runs", f"{tag}:paused"
            )
            if legacy:
                count = 1
            else:
                count = (
                    self._recorded_elsewhere()
                    or self.requested_partitions
                    or DEFAULT_REDIS_PARTITIONS
                )
            self._client.hsetnx(self._meta_key, "partitions", count)
            stored = self._client.hget(self._meta_key, "partitions")
        try:
            count = int(_text(stored))
        except (TypeError, ValueError):
            count = 0
        if not 1 <= count <= MAX_PARTITIONS:
            raise PartitionCountError(
                f"the Redis key {self._meta_key!r} holds {short_repr(_text(stored))} as the "
                f"namespace's partition count, not a number from 1 to {MAX_PARTITIONS}; "
                "set it back (HSET ... partitions 16) or use a fresh pyncette.redis_namespace"
            )
        requested = self.requested_partitions
        if requested is not None and requested != count:
            raise PartitionCountError(
                f"pyncette.partitions = {requested}, but the Redis namespace "
                f"{self.namespace!r} was set up with {count} partition"
                f"{'s' if count != 1 else ''}; set pyncette.partitions = {count} (or remove "
                "the setting), or move the jobs to a fresh namespace "
                "(pyncette.redis_namespace)"
            )
        return count

    def close(self) -> None:
        if self._deferred:
            # Completions kept for a partition that was unreachable: a last try.
            with contextlib.suppress(Exception):
                self._flush_deferred(datetime.now(timezone.utc))
            for p, items in self._deferred.items():
                log.error(
                    "partition %d of the store was still unreachable at close: %d completion "
                    "batch(es) of its jobs were not written (their leases expire and the jobs "
                    "are claimed again)",
                    p,
                    len(items),
                )
        client = self._client_obj
        if self._owns_client and client is not None:
            client.close()
            pool = getattr(client, "connection_pool", None)  # a cluster has one per node
            if pool is not None:
                pool.disconnect()

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, _PERMANENT_ERRORS) or self.describe_setup_error(exc) is not None:
            return False
        if isinstance(exc, _TRANSIENT_ERRORS):
            return True
        return super().is_transient(exc)

    # Replies no retry changes: a database number the server does not have,
    # a server without Lua scripting, a cluster asked to SELECT.
    _SETUP_REPLIES = (
        ("DB index is out of range", "database"),
        ("invalid DB index", "database"),
        ("SELECT is not allowed in cluster mode", "database"),
        ("unknown command", "scripts"),
    )

    def describe_setup_error(self, exc: BaseException) -> str | None:
        if isinstance(exc, PartitionCountError):
            return str(exc)
        problem = None
        # WrongNumberOfArgs: a user name sent to a server without users (Redis < 6).
        if isinstance(
            exc,
            (redis_errors.AuthenticationError, redis_errors.AuthenticationWrongNumberOfArgsError),
        ):
            problem = "the store refused the login; fix the user and password in pyncette.url"
        elif isinstance(exc, redis_errors.AuthorizationError):
            problem = (
                "the store's user lacks a permission (it needs keys under the namespace and "
                "the EVALSHA, SCRIPT and PUBLISH commands); grant it with ACL SETUSER"
            )
        elif isinstance(exc, redis_errors.ResponseError):
            text = str(exc)
            kind = next((kind for reply, kind in self._SETUP_REPLIES if reply in text), None)
            if kind == "database":
                problem = (
                    "the server has no such database number; fix the number at the end of "
                    "pyncette.url (redis://host:6379/0) or the server's 'databases' setting"
                )
            elif kind == "scripts":
                problem = "the server lacks a command the store needs (Lua scripting)"
        if problem is None:
            return super().describe_setup_error(exc)
        detail = " ".join(redact_text(str(exc)).split())
        return f"{problem} ({type(exc).__name__}: {detail})"

    def _write(
        self,
        ops: list[dict[str, Any]],
        tasks: Iterable[str],
        announce: bool = False,
        queues: Iterable[str] = (),
        runs: Sequence[RunRecord] = (),
    ) -> builtins.list[int]:
        """Run ops in one atomic script call, adding task and queue keys the script asks for.

        ``tasks`` and ``queues`` name the keys the ops are expected to touch.
        ``announce`` publishes one message on :attr:`channel` if a job was
        written; ``runs`` are appended to the run history by the same call.
        """
        return [int(flag) for flag in self._write_raw(ops, tasks, announce, queues, runs)]

    def _write_raw(
        self,
        ops: list[dict[str, Any]],
        tasks: Iterable[str],
        announce: bool = False,
        queues: Iterable[str] = (),
        runs: Sequence[RunRecord] = (),
    ) -> builtins.list[Any]:
        """:meth:`_write`, answering with what the script returned for each op.

        In a store of several partitions the ops (and run records) of each
        partition are written by one script call of their own: each is atomic,
        the batch as a whole is not. The first failure is raised at once.
        """
        results, failures = self._write_each(ops, tasks, announce, queues, runs)
        if failures:
            raise next(iter(failures.values()))
        return results

    def _write_each(
        self,
        ops: list[dict[str, Any]],
        tasks: Iterable[str],
        announce: bool = False,
        queues: Iterable[str] = (),
        runs: Sequence[RunRecord] = (),
        keep_going: bool = False,
        run_batch: tuple[int, Sequence[int]] | None = None,
    ) -> tuple[builtins.list[Any], dict[int, Exception]]:
        """:meth:`_write_raw` partition by partition: what the script returned for
        each op (0 for the ops of a partition that failed or was not tried) and the
        error of each partition that failed. The partitions after a failure are
        tried only with ``keep_going``; a store of one partition raises. ``run_batch``
        places ``runs`` in a larger batch (see :meth:`_run_args`)."""
        parts = self._parts()
        tasks = set(tasks)
        queues = set(queues) - {DEFAULT_QUEUE}  # its due set is always passed
        if len(parts) == 1:
            return self._write_partition(parts[0], ops, tasks, announce, queues, runs), {}
        count = len(parts)
        positions: dict[int, builtins.list[int]] = {}
        for i, op in enumerate(ops):
            positions.setdefault(partition_of(op["id"], count), []).append(i)
        by_partition = self._group_runs(runs, count, run_batch)
        results: builtins.list[Any] = [0] * len(ops)
        failures: dict[int, Exception] = {}
        for p in sorted(positions.keys() | by_partition.keys()):
            places = positions.get(p, [])
            group, batch = by_partition.get(p, ([], None))
            try:
                found = self._write_partition(
                    parts[p], [ops[i] for i in places], tasks, announce, queues, group, batch
                )
            except Exception as exc:
                failures[p] = exc
                if not keep_going:
                    break
                continue
            for i, value in zip(places, found, strict=True):
                results[i] = value
            # One announcement wakes every daemon: the other partitions' calls need none.
            announce = announce and not any(value == 1 for value in found)
        return results, failures

    def _write_partition(
        self,
        part: PartitionKeys,
        ops: list[dict[str, Any]],
        tasks: builtins.set[str],
        announce: bool,
        queues: builtins.set[str],
        runs: Sequence[RunRecord],
        batch: tuple[int, Sequence[int]] | None = None,
    ) -> builtins.list[Any]:
        """One script call writing ``ops`` of jobs of ``part`` (see :meth:`_write_raw`)."""
        args = [part.task_prefix, _dumps(ops), self.channel if announce else ""]
        args.extend(self._run_args(runs, batch))
        tasks, queues = set(tasks), set(queues)
        for _ in range(_WRITE_TRIES):
            keys = [part.jobs, part.due, part.ids, part.queues, part.locked, part.runs]
            keys.extend(part.heads)
            keys.extend(part.task_key(task) for task in sorted(tasks))
            keys.extend(part.queue_keys(queues))
            result = self._write_ops(keys=keys, args=args)
            if result and _text(result[0]) == "missing":
                for name in result[1:]:
                    if isinstance(name, list):
                        queues.update(map(_text, name))
                        self._learn_queues(name)
                    else:
                        tasks.add(_text(name))
                continue
            return list(result)
        raise RepositoryError(
            f"jobs kept moving between tasks or queues while being written ({len(ops)} changes); "
            "nothing was written, try again"
        )

    def _run_args(
        self, runs: Sequence[RunRecord], batch: tuple[int, Sequence[int]] | None = None
    ) -> builtins.list[str]:
        """The script arguments that append ``runs`` (see append_runs in common.lua).

        A store of several partitions names the entry ids: ``batch`` is the
        time of the batch the records belong to (this process's clock, in
        microseconds) and each record's position in it, so that the records
        of several streams merge in the order they were written.
        """
        if not runs:
            return []
        if len(self._parts()) == 1:
            return [str(MAX_REDIS_RUNS), *map(_encode_run, runs)]
        micros, positions = batch or (time.time_ns() // 1000, range(len(runs)))
        # The streams of all partitions together keep about MAX_REDIS_RUNS.
        cap = max(MAX_REDIS_RUNS // len(self._layout), MIN_REDIS_RUNS_PER_PARTITION)
        args = [f"u{cap}", str(micros)]
        for position, run in zip(positions, runs, strict=True):
            args += (str(position), _encode_run(run))
        return args

    @staticmethod
    def _group_runs(
        runs: Sequence[RunRecord], count: int, batch: tuple[int, Sequence[int]] | None = None
    ) -> dict[int, tuple[builtins.list[RunRecord], tuple[int, builtins.list[int]]]]:
        """``runs`` by the partition of their job: the records and their batch (see
        :meth:`_run_args`); ``batch`` gives the time and positions of ``runs`` when
        they are part of a larger batch."""
        micros, places = batch or (time.time_ns() // 1000, range(len(runs)))
        groups: dict[int, tuple[builtins.list[RunRecord], tuple[int, builtins.list[int]]]] = {}
        for position, run in zip(places, runs, strict=True):
            p = partition_of(run.job_id, count)
            if p not in groups:
                groups[p] = ([], (micros, []))
            groups[p][0].append(run)
            groups[p][1][1].append(position)
        return groups

    @staticmethod
    def _put(job: Job, replace: bool) -> dict[str, Any]:
        return {
            "o": "put",
            "id": job.id,
            "task": job.task,
            "queue": _check_queue(job.queue),
            "lock": _clean(job.locked_by),
            "due": _encode_time(job.due_at),
            "doc": _encode_job(job),
            "replace": replace,
        }

    @staticmethod
    def _plan_op(action: str, job_id: str, token: str | None, values: dict) -> dict[str, Any]:
        return {
            "o": "plan",
            "id": job_id,
            "token": token,
            "action": action,
            "values": _plan_values(values),
        }

    def _now_arg(self, now: datetime) -> str:
        return "" if self.store_clock else _encode_time(now)

    # -- contract ---------------------------------------------------------

    def add(self, jobs: Sequence[Job], replace: bool = True) -> None:
        if not jobs:
            return
        ops = [self._put(job, replace) for job in jobs]
        self._write(ops, {job.task for job in jobs}, True, {job.queue for job in jobs})

    def remove(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        ops = [{"o": "del", "id": job_id} for job_id in ids]
        flags = self._write(ops, (), queues=self._known_queues)
        return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag}

    def apply(self, adds: Sequence[Job], removes: Sequence[str]) -> None:
        if not adds and not removes:
            return
        ops = [{"o": "del", "id": job_id} for job_id in removes]
        ops.extend(self._put(job, True) for job in adds)
        queues = self._known_queues | {job.queue for job in adds}
        self._write(ops, {job.task for job in adds}, bool(adds), queues)

    def stage(
        self, jobs: Sequence[Job], removes: Sequence[str], token: str, window: float, now: datetime
    ) -> dict[str, Job]:
        if not jobs and not removes:
            return {}
        if self.store_clock:
            seconds, micros = self._client.time()
            now = _EPOCH + timedelta(seconds=int(seconds), microseconds=int(micros))
        until = now + timedelta(seconds=window)
        ops: list[dict[str, Any]] = [{"o": "del", "id": job_id, "old": True} for job_id in removes]
        for job in jobs:
            ops.append({**self._put(staged_job(job, token, until), True), "old": True})
        queues = self._known_queues | {job.queue for job in jobs}
        found, failures = self._write_each(ops, {job.task for job in jobs}, queues=queues)
        previous = {}
        for op, raw in zip(ops, found, strict=True):
            if raw != 0:
                previous[op["id"]] = _decode_job(op["id"], raw)
        if failures:
            # Partitions were staged before one failed: undo them so that the
            # aborted transaction leaves nothing behind. Not the failed one: had
            # its call run after all, the rows it replaced are unknown here.
            count = len(self._layout)
            written = [job.id for job in jobs if partition_of(job.id, count) not in failures]
            try:
                self.withdraw(token, written, previous)
            except Exception as exc:
                log.warning(
                    "a transaction's staged jobs could not all be withdrawn after a failed "
                    "stage (%s); rows left staged expire with the staging window",
                    " ".join(redact_text(str(exc)).split()) or type(exc).__name__,
                )
            raise next(iter(failures.values()))
        return previous

    def publish(self, token: str, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        ops = [
            {
                "o": "publish",
                "id": job.id,
                "token": token,
                "lock": _clean(published_lock(job)),
                "due": _encode_time(job.due_at),
            }
            for job in jobs
        ]
        # Every partition is tried: one that fails does not keep the others' jobs staged.
        self._write_everywhere(ops, (), True, {job.queue for job in jobs})

    def withdraw(self, token: str, ids: Sequence[str], previous: Mapping[str, Job]) -> None:
        staged = list(dict.fromkeys(ids))
        ops: list[dict[str, Any]] = []
        for job_id in staged:
            op: dict[str, Any] = {"o": "unstage", "id": job_id, "token": token}
            if job_id in previous:
                put = self._put(previous[job_id], True)
                op.update({name: put[name] for name in ("task", "queue", "lock", "due", "doc")})
            ops.append(op)
        # Deleted at vote: put back unless the id was written again since.
        ops.extend(
            self._put(job, False) for job_id, job in previous.items() if job_id not in staged
        )
        if ops:
            queues = self._known_queues | {job.queue for job in previous.values()}
            # Every partition is tried: one that fails leaves only its own rows staged.
            self._write_everywhere(ops, {job.task for job in previous.values()}, True, queues)

    def _write_everywhere(
        self,
        ops: list[dict[str, Any]],
        tasks: Iterable[str],
        announce: bool,
        queues: Iterable[str],
    ) -> None:
        """Write ``ops`` in every partition, trying them all even after one failed;
        then raise the first failure, if any."""
        _, failures = self._write_each(ops, tasks, announce, queues, keep_going=True)
        if failures:
            raise next(iter(failures.values()))

    def start_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever a job is added (from any process); return a stopper."""
        return start_listener_thread(self._subscribe, callback)

    @contextlib.contextmanager
    def _subscribe(self) -> Iterator[Receive]:
        """A pub/sub connection subscribed to :attr:`channel`, closed on exit."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            yield lambda timeout: pubsub.get_message(timeout=timeout) is not None
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def get(self, job_id: str) -> Job | None:
        raw = self._client.hget(self.job_keys(job_id).jobs, job_id)
        return None if raw is None else _decode_job(job_id, raw)

    def get_many(self, ids: Iterable[str]) -> dict[str, Job]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        parts = self._parts()
        by_partition: dict[int, builtins.list[str]] = {}
        for job_id in ids:
            by_partition.setdefault(partition_of(job_id, len(parts)), []).append(job_id)
        if len(by_partition) == 1:
            [(p, wanted)] = by_partition.items()
            replies = [self._client.hmget(parts[p].jobs, wanted)]
        else:
            pipe = self._client.pipeline(transaction=False)
            for p, wanted in by_partition.items():
                pipe.hmget(parts[p].jobs, wanted)
            replies = pipe.execute()
        found = {}
        for wanted, raws in zip(by_partition.values(), replies, strict=True):
            for job_id, raw in zip(wanted, raws, strict=True):
                if raw is not None:
                    found[job_id] = _decode_job(job_id, raw)
        return {job_id: found[job_id] for job_id in ids if job_id in found}

    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        """Jobs in id order: a page of each partition's id index, merged."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        start = "-" if cursor is None else "(" + cursor
        pairs: builtins.list[tuple[str, Any]] = []
        for part in self._parts():
            index = part.ids if task is None else part.task_key(task)
            found = self._list(keys=[index, part.jobs], args=[start, limit + 1])
            pairs.extend(zip(map(_text, found[0::2]), found[1::2], strict=True))
        if len(self._layout) > 1:
            # An index orders ids by their bytes; UTF-8 keeps code point order.
            pairs.sort(key=lambda pair: pair[0])
            del pairs[limit + 1 :]
        more = len(pairs) > limit
        jobs = [_decode_job(job_id, raw) for job_id, raw in pairs[:limit] if raw is not None]
        return JobPage(jobs, pairs[limit - 1][0] if more else None)

    def claim(
        self,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None = None,
    ) -> builtins.list[Lease]:
        return self._complete_then_claim((), Claim(now, limit, token, default_lease, queues))

    def _complete_then_claim(
        self, outcomes: Sequence[Outcome], claim: Claim, runs: Sequence[RunRecord] = ()
    ) -> builtins.list[Lease]:
        """One script call per partition deletes finished one-off jobs, appends ``runs``
        and claims due ones.

        The claim reads the paused queues in the same call, so a pause is
        obeyed by the next claim of every daemon. A store of several
        partitions first asks every partition which jobs are due (one pipeline
        of ``probe.lua``), picks the ``limit`` due earliest across them (ties
        by id, as a store of one partition does, so no partition starves and
        no job waits longer than it would there) and claims them in each
        partition that holds some, visiting the partitions from an offset that
        moves on at every claim (:meth:`_claim_order`): a batch fills from as
        many partitions as its jobs are in.
        """
        now, limit, token, default_lease, queues = claim
        listed = [] if queues is None else sorted(_check_queue(name) for name in queues)
        parts = self._parts()
        count = len(parts)
        deletes, others = split_finished(outcomes)
        finished: dict[int, builtins.list[str]] = {}
        tasks: dict[int, builtins.set[str]] = {}
        finished_queues: dict[int, builtins.set[str]] = {}
        for done, outcome in deletes:
            assert done.token is not None  # split_finished keeps lease-guarded deletes only
            p = partition_of(done.job_id, count)
            finished.setdefault(p, []).extend((done.job_id, done.token))
            tasks.setdefault(p, set()).add(outcome.lease.job.task)
            finished_queues.setdefault(p, set()).add(outcome.lease.job.queue)
        by_id = {plan.job_id: outcome for plan, outcome in deletes}
        batch = runs
        runs = self._unwritten(batch)[0]
        run_groups = self._group_runs(runs, count)
        deferring = self._defer_unreachable and count > 1
        if deferring or self._deferred:
            self._flush_deferred(now)
            self._renew_kept(now)
            self._complete_or_defer(others)
        elif others:
            self.complete(others)
        limit = max(limit, 0)
        if not limit and not finished and not runs:
            return []
        if count == 1:
            due = {0: limit}
        else:
            # Before the claims: a cluster none of whose partitions answers fails
            # the call here, before a run record is written or kept (the caller
            # tries again; the completions above are idempotent).
            due = self._due_partitions(now, limit, queues, listed) if limit else {}
        skipped: builtins.list[Outcome] = []
        leased: builtins.list[tuple[datetime, Any, Any]] = []
        written: builtins.list[int] = []
        for p in self._claim_order(count):
            wanted = due.get(p, 0)
            if not wanted and p not in finished and p not in run_groups:
                continue
            work = (
                finished.get(p, []),
                tasks.get(p, set()),
                finished_queues.get(p, set()),
                *run_groups.get(p, ([], None)),
            )
            if p in self._deferred:
                # Earlier completions wait for the partition: these go after them.
                if work[0] or work[3]:
                    self._defer(p, ("finished", *work, by_id))
                continue
            try:
                clock, left, found = self._claim_partition(
                    parts[p], now, wanted, token, default_lease, queues, listed, *work
                )
            except Exception as exc:
                if count > 1 and _wrong_type(exc):
                    # A key of the wrong type: this partition's completions wait for
                    # it to be fixed, the other partitions are claimed from.
                    self._partition_broken(p, exc)
                elif deferring and self.is_transient(exc):
                    self._partition_failed(p, exc)
                else:
                    # The caller tries the batch again: the records already written stay.
                    self._note_written(
                        run for q in written for run in run_groups.get(q, ([], None))[0]
                    )
                    raise
                if work[0] or work[3]:
                    self._defer(p, ("finished", *work, by_id))
                continue
            self._partition_ok(p)
            written.append(p)
            skipped.extend(by_id[_text(job_id)] for job_id in left)
            for job_id, raw in found:
                leased.append((clock, job_id, raw))
        if skipped:
            # Finished runs of jobs whose task changed: written the careful way.
            self.complete(skipped)
        self._all_written(batch)
        jobs = []
        for clock, job_id, raw in leased:
            if raw == "":
                log.error(
                    "job %r has an unreadable stored document; it is no longer due "
                    "(fix or remove it: HGET %s %s)",
                    _text(job_id),
                    self.job_keys(_text(job_id)).jobs,
                    _text(job_id),
                )
                continue
            jobs.append((clock, _decode_job(_text(job_id), raw)))
        if count > 1:
            # The batch in due order (ties by id), as one partition's claim gives it.
            jobs.sort(key=lambda item: (item[1].due_at or _EPOCH, item[1].id))
        plans = [plan_claim(job, clock, token, default_lease, checked=True) for clock, job in jobs]
        once = [plan for plan in plans if plan.action != "lease"]
        if not once:
            return [plan.lease for plan in plans]
        # At-most-once jobs were leased by the script like the others (Lua
        # cannot compute their next run); here they are advanced, or deleted,
        # before anything runs them. A crash between the two calls leaves them
        # leased but never run: they are claimed again once the lease expires,
        # so they still run at most once.
        ops = []
        for plan in once:
            if plan.action == "delete":
                ops.append(self._plan_op("delete", plan.job.id, token, {}))
            else:
                values = {
                    "due_at": plan.job.due_at,
                    "next_run_at": plan.job.next_run_at,
                    "attempts": plan.job.attempts,
                }
                ops.append(self._plan_op("settle", plan.job.id, token, values))
        once_tasks = {plan.job.task for plan in once}
        flags = self._write(ops, once_tasks, queues={plan.job.queue for plan in once})
        # A row taken from us in between (replaced, removed) is not run.
        lost = {plan.job.id for plan, flag in zip(once, flags, strict=True) if not flag}
        return [plan.lease for plan in plans if plan.action == "lease" or plan.job.id not in lost]

    def _partition_failed(self, p: int, exc: BaseException) -> None:
        """Note that partition ``p`` could not be reached (logged once per outage)."""
        if p not in self._unreachable:
            self._unreachable.add(p)
            log.warning(
                "partition %d of the store cannot be reached (%s); its jobs wait for it, "
                "the other partitions' jobs carry on",
                p,
                " ".join(redact_text(str(exc)).split()) or type(exc).__name__,
            )

    def _partition_broken(self, p: int, exc: BaseException) -> None:
        """Note that a key of partition ``p`` has the wrong type (logged once): the
        partition is left alone until it is fixed, the others carry on."""
        if p not in self._broken:
            self._broken.add(p)
            log.error(
                "partition %d of the store holds a key of the wrong type (%s); its jobs "
                "wait until it is fixed (check the types of the keys %s:*), the other "
                "partitions' jobs carry on",
                p,
                " ".join(redact_text(str(exc)).split()),
                self._layout[p].tag,
            )

    def _partition_ok(self, p: int) -> None:
        if p in self._unreachable:
            self._unreachable.discard(p)
            log.info("partition %d of the store is reachable again", p)
        if p in self._broken:
            self._broken.discard(p)
            log.info("partition %d of the store is readable again", p)

    def _defer(self, p: int, work: tuple[Any, ...]) -> None:
        """Keep ``work`` (completions) for partition ``p`` until it can be reached.

        The daemon's loop has handed it over: the process keeps it and writes
        it at the next claims, in order, once the partition answers again (a
        daemon stopped meanwhile leaves its leases to expire, as any daemon
        that stops mid-run does).
        """
        with self._deferred_lock:
            self._deferred.setdefault(p, []).append(work)

    def _complete_or_defer(
        self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()
    ) -> None:
        """Write ``outcomes`` and ``runs`` partition by partition (one script call
        each), keeping those of an unreachable partition (see :meth:`_defer`):
        a batch is never written twice in part, so no run record is duplicated
        when a caller tries again."""
        count = len(self._parts())
        groups: dict[int, tuple[builtins.list[Outcome], builtins.list[RunRecord]]] = {}
        for outcome in outcomes:
            p = partition_of(outcome.lease.job.id, count)
            groups.setdefault(p, ([], []))[0].append(outcome)
        # The records of every partition share the batch's time and keep their
        # places in it, so the merged history lists them in the order given.
        micros = time.time_ns() // 1000
        places: dict[int, builtins.list[int]] = {}
        for position, run in enumerate(runs):
            p = partition_of(run.job_id, count)
            groups.setdefault(p, ([], []))[1].append(run)
            places.setdefault(p, []).append(position)
        for p, (group, records) in groups.items():
            if p in self._deferred:
                self._defer(p, ("complete", group, records))
                continue
            try:
                self._complete_now(group, records, (micros, places.get(p, [])))
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                self._partition_failed(p, exc)
                self._defer(p, ("complete", group, records))

    def _flush_deferred(self, now: datetime) -> None:
        """Write the completions kept for partitions that were unreachable, in order;
        those of a partition still unreachable stay."""
        if not self._deferred:
            return
        parts = self._parts()
        with self._deferred_lock:
            pending, self._deferred = self._deferred, {}
        for p, items in pending.items():
            for i, item in enumerate(items):
                try:
                    if item[0] == "complete":
                        self._complete_now(item[1], item[2])
                    else:
                        finished, tasks, queues, runs, batch, by_id = item[1:]
                        _, left, _ = self._claim_partition(
                            parts[p], now, 0, "", 0, None, [], finished, tasks, queues, runs, batch
                        )
                        if left:
                            self.complete([by_id[_text(job_id)] for job_id in left])
                except Exception as exc:
                    if _wrong_type(exc):
                        self._partition_broken(p, exc)
                    elif self.is_transient(exc):
                        self._partition_failed(p, exc)
                    else:
                        raise
                    with self._deferred_lock:
                        self._deferred[p] = items[i:] + self._deferred.get(p, [])
                    break
            else:
                self._partition_ok(p)
                log.info("partition %d: %d kept completion batch(es) written", p, len(items))

    def _renew_kept(self, now: datetime) -> None:
        """Renew the leases a heartbeat could not renew in partitions that may be
        back; those of a partition still unreachable stay (see :meth:`extend`)."""
        if not self._unrenewed:
            return
        parts = self._parts()
        with self._deferred_lock:
            kept, self._unrenewed = self._unrenewed, {}
        for p, items in kept.items():
            try:
                self._extend_partition(parts[p], now, items)
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                self._partition_failed(p, exc)
                with self._deferred_lock:
                    self._unrenewed.setdefault(p, items)
            else:
                # The leases found lost here are reported by the next heartbeat.
                self._partition_ok(p)

    def _claim_order(self, count: int) -> builtins.list[int]:
        """The partitions in the order the next claim visits them: from an offset that
        moves on by one at every claim, so that daemons claiming at the same moment
        (they start at random offsets) rarely call the same partition first."""
        start = self._claim_offset % count
        self._claim_offset = (start + 1) % count
        return [(start + i) % count for i in range(count)]

    def _due_partitions(
        self,
        now: datetime,
        limit: int,
        queues: frozenset[str] | None,
        listed: builtins.list[str],
    ) -> dict[int, int]:
        """How many jobs to claim from each partition: the ``limit`` jobs due earliest
        at ``now`` (the server's clock with ``store_clock``) across the partitions, in
        the claimed queues but paused ones, ties by id (as one partition's claim
        takes them), read from every partition in one pipeline."""
        replies = self._each_partition(
            self._probe, queues, listed, [self._now_arg(now), str(limit)]
        )
        due = []
        for p, reply in enumerate(replies):
            if reply is None:  # unreachable: its jobs wait
                continue
            for i in range(1, len(reply) - 1, 2):
                due.append((float(reply[i + 1]), _text(reply[i]), p))
        due.sort()
        counts: dict[int, int] = {}
        for _, _, p in due[:limit]:
            counts[p] = counts.get(p, 0) + 1
        return counts

    def _each_partition(
        self,
        script: Any,
        queues: frozenset[str] | None,
        listed: builtins.list[str],
        head: builtins.list[str],
    ) -> builtins.list[Any]:
        """The replies of ``script`` (``probe.lua`` or ``next_due.lua``) in every
        partition, from one pipeline, with the keys of every claimed queue (learning
        queues a partition names and asking again)."""
        args = [*head, "*" if queues is None else "", *listed]
        for _ in range(_WRITE_TRIES):
            claimed = frozenset(listed) if queues is not None else self._known_queues
            calls = [(keys, args) for keys in self._probe_keys(claimed)]
            try:
                replies = self._pipelined(script, calls)
            except redis_errors.NoScriptError:
                # The server lost its scripts (a restart, SCRIPT FLUSH): load them again.
                self._load_scripts()
                continue
            for p, reply in enumerate(replies):
                if isinstance(reply, BaseException):
                    if _wrong_type(reply):
                        self._partition_broken(p, reply)
                    else:
                        self._partition_failed(p, reply)
                    replies[p] = None
                else:
                    self._partition_ok(p)
            missing = [
                reply[1] for reply in replies if reply is not None and _text(reply[0]) == "missing"
            ]
            if not missing:
                return replies
            for names in missing:
                self._learn_queues(names)
        raise RepositoryError("queues kept appearing while reading the partitions; try again")

    def _probe_keys(self, queues: frozenset[str]) -> builtins.list[builtins.list[str]]:
        """The KEYS of ``probe.lua`` and ``next_due.lua`` in each partition for the
        default queue and ``queues`` (kept: an idle daemon asks for the same every poll)."""
        cached = self._probe_cache.get(queues)
        if cached is None:
            names = sorted(queues | {DEFAULT_QUEUE})
            cached = [
                [part.jobs, part.queues, part.paused, *part.heads, *map(part.due_key, names)]
                for part in self._parts()
            ]
            if len(self._probe_cache) > 64:
                self._probe_cache.clear()
            self._probe_cache[queues] = cached
        return cached

    def _pipelined(
        self, script: Any, calls: builtins.list[tuple[builtins.list[str], builtins.list[str]]]
    ) -> builtins.list[Any]:
        """The replies of ``script`` called with each (keys, args) of ``calls``, in one
        pipeline (in a cluster, one per node: redis-py's cluster pipelines refuse
        scripts). Raises ``NoScriptError`` when a server lacks the script. In a
        cluster, a call on a node that cannot be reached answers with the error
        (raised when no node answers)."""
        if not self._cluster:
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            found = list(pipe.execute(raise_on_error=False))
            # A key of the wrong type costs its partition only (answered in its place).
            errors = [reply for reply in found if isinstance(reply, Exception)]
            for error in errors:
                if not _wrong_type(error):
                    raise error
            if errors and len(errors) == len(found):
                raise errors[0]
            return found
        replies: builtins.list[Any] = [None] * len(calls)
        by_node: dict[str, tuple[Any, builtins.list[int]]] = {}
        for i, (keys, _) in enumerate(calls):
            node = self._client.get_node_from_key(keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        moved = False
        for node, places in by_node.values():
            try:
                pipe = node.redis_connection.pipeline(transaction=False)
                for i in places:
                    keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                for i, reply in zip(places, pipe.execute(), strict=True):
                    replies[i] = reply
            except redis_errors.NoScriptError:
                raise
            except (redis_errors.ResponseError, *_TRANSIENT_ERRORS):
                moved = True
                for i in places:
                    replies[i] = None
        if moved:
            # A slot moved or a node went away: those calls one at a time, which
            # the cluster client redirects (and retries) as it learns the new
            # layout; a node still away answers with its error, in its place.
            for i, reply in enumerate(replies):
                if reply is None:
                    keys, args = calls[i]
                    try:
                        replies[i] = script(keys=keys, args=args)
                    except redis_errors.NoScriptError:
                        raise
                    except _TRANSIENT_ERRORS as exc:
                        replies[i] = exc
                    except redis_errors.ResponseError as exc:
                        if not _wrong_type(exc):
                            raise
                        replies[i] = exc
            failures = [reply for reply in replies if isinstance(reply, BaseException)]
            if len(failures) == len(replies):
                raise failures[0]
        return replies

    def _claim_partition(
        self,
        part: PartitionKeys,
        now: datetime,
        limit: int,
        token: str,
        default_lease: float,
        queues: frozenset[str] | None,
        listed: builtins.list[str],
        finished: builtins.list[str],
        tasks: builtins.set[str],
        finished_queues: builtins.set[str],
        runs: Sequence[RunRecord],
        batch: tuple[int, Sequence[int]] | None,
    ) -> tuple[datetime, builtins.list[Any], builtins.list[tuple[Any, Any]]]:
        """One ``claim.lua`` call in ``part``: its clock, the finished ids it left
        alone and the (id, document before the claim) pairs it leased."""
        args: list[str | int] = [
            self._now_arg(now),
            limit,
            token,
            _lease_micros(default_lease),
            part.task_prefix,
            "*" if queues is None else "",
            len(listed),
            *listed,
            len(finished) // 2,
            *finished,
            *self._run_args(runs, batch),
        ]
        for _ in range(_WRITE_TRIES):
            claimed = set(listed) if queues is not None else {DEFAULT_QUEUE, *self._known_queues}
            keys = [part.jobs, part.ids, part.queues, part.paused, part.locked, part.runs]
            keys.extend(part.heads)
            keys.extend(part.queue_keys(claimed | finished_queues))
            keys.extend(part.task_key(task) for task in sorted(tasks))
            found = self._claim(keys=keys, args=args)
            if _text(found[0]) != "missing":
                break
            self._learn_queues(found[1])
        else:
            raise RepositoryError(
                "queues kept appearing while claiming; nothing was claimed, try again"
            )
        clock = _decode_time(_text(found[0]))
        assert clock is not None  # the script's first value is always its clock
        skipped = int(found[1])
        rest = found[2 + skipped :]
        return clock, found[2 : 2 + skipped], list(zip(rest[0::2], rest[1::2], strict=True))

    def complete(self, outcomes: Sequence[Outcome], runs: Sequence[RunRecord] = ()) -> None:
        """Apply ``outcomes`` and append ``runs`` in one script call; one by one if a row
        fails the script.

        A row the script still cannot write is parked as failed with an
        error saying why (or, if even that fails, left to the claim, which
        takes unreadable documents out of the due index). The run records of
        a batch that had to be written one by one follow in a call of their own.
        """
        if not outcomes and not runs:
            return
        if self._defer_unreachable and len(self._parts()) > 1:
            # A cluster: the partitions of a shard that is down wait for it, the
            # others are written now (the daemon's loop carries on).
            self._complete_or_defer(outcomes, runs)
        else:
            self._complete_now(outcomes, runs)

    def _complete_now(
        self,
        outcomes: Sequence[Outcome],
        runs: Sequence[RunRecord],
        run_batch: tuple[int, Sequence[int]] | None = None,
    ) -> None:
        """:meth:`complete`, raising when a partition cannot be reached; ``run_batch``
        places ``runs`` in a larger batch (see :meth:`_run_args`)."""
        if not outcomes and not runs:
            return
        ops = []
        tasks = set()
        for outcome in outcomes:
            plan = plan_completion(outcome)
            ops.append(self._plan_op(plan.action, plan.job_id, plan.token, plan.values))
            if plan.action == "delete":
                tasks.add(outcome.lease.job.task)
        queues = {outcome.lease.job.queue for outcome in outcomes}
        batch = runs
        runs, kept = self._unwritten(batch)
        if run_batch is not None and len(runs) != len(batch):
            run_batch = (run_batch[0], [run_batch[1][i] for i in kept])
        try:
            _, failures = self._write_each(
                ops, tasks, queues=queues, runs=runs, run_batch=run_batch
            )
            if failures:
                [(failed, first)] = failures.items()
                count = len(self._layout)
                self._note_written(run for run in runs if partition_of(run.job_id, count) < failed)
                raise first
            self._all_written(batch)
            return
        except Exception as exc:
            if not self.is_row_error(exc):
                raise
            log.warning("a result of a batch could not be written (%s); writing one by one", exc)
        for op, outcome in zip(ops, outcomes, strict=True):
            queue = (outcome.lease.job.queue,)
            try:
                self._write([op], {outcome.lease.job.task}, queues=queue)
                continue
            except Exception as exc:
                if not self.is_row_error(exc) or op["token"] is None:
                    raise
                refused = exc
            values = unwritable_row_values(outcome.finished_at, refused)
            log.error("job %r is parked as failed: %s", op["id"], values["last_error"])
            try:
                self._write(
                    [self._plan_op("settle", op["id"], op["token"], values)], (), False, queue
                )
            except Exception as exc:
                if not self.is_row_error(exc):
                    raise
                log.error("job %r could not be parked either (%s)", op["id"], exc)
        left, _ = self._unwritten(runs)
        if left:
            self._write([], (), runs=left)
        self._all_written(batch)

    def _unwritten(self, runs: Sequence[RunRecord]) -> tuple[Sequence[RunRecord], Sequence[int]]:
        """``runs`` but those a batch that failed partway wrote already, and the places
        in ``runs`` of those kept: a caller tries such a batch again whole, and its
        outcomes are guarded by their token, but run records would be appended twice."""
        if not self._runs_written or not runs:
            return runs, range(len(runs))
        kept = [i for i, run in enumerate(runs) if run not in self._runs_written]
        return [runs[i] for i in kept], kept

    def _all_written(self, runs: Sequence[RunRecord]) -> None:
        """The batch that held ``runs`` is written whole: nothing to remember of it."""
        if self._runs_written and runs:
            self._runs_written.difference_update(runs)

    def _note_written(self, runs: Iterable[RunRecord]) -> None:
        """Remember run records written by a batch that then failed (see :meth:`_unwritten`)."""
        if len(self._runs_written) > 100_000:
            self._runs_written.clear()  # batches never tried again: forget them
        self._runs_written.update(runs)

    def is_row_error(self, exc: BaseException) -> bool:
        """Whether a script failed on the contents of a row (a document it cannot decode)."""
        if isinstance(exc, redis_errors.ResponseError) and not self.is_transient(exc):
            text = str(exc).lower()
            return "script" in text and not isinstance(exc, redis_errors.NoScriptError)
        return super().is_row_error(exc)

    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        if not leases:
            return set()
        parts = self._parts()
        by_partition: dict[int, builtins.list[builtins.list[Any]]] = {}
        for job_id, token, seconds in leases:
            p = partition_of(job_id, len(parts))
            by_partition.setdefault(p, []).append([job_id, token, _lease_micros(seconds)])
        held: builtins.set[str] = set()
        for p, items in by_partition.items():
            try:
                held |= self._extend_partition(parts[p], now, items)
            except Exception as exc:
                if len(parts) > 1 and _wrong_type(exc):
                    self._partition_broken(p, exc)
                    held.update(item[0] for item in items)  # kept, as below
                    continue
                if not (self._defer_unreachable and self.is_transient(exc)):
                    raise
                # A cluster shard that is down: its leases are neither renewed nor
                # known lost. The runs keep them (their results are written, guarded
                # by the token, once it is back) and the next heartbeat tries again;
                # the other partitions' leases are renewed meanwhile. Not raising
                # even when no partition answers: the daemon's next claim does, if
                # the whole cluster is down.
                self._partition_failed(p, exc)
                held.update(item[0] for item in items)
                with self._deferred_lock:
                    self._unrenewed[p] = items
                continue
            self._partition_ok(p)
            if p in self._unrenewed:
                with self._deferred_lock:
                    self._unrenewed.pop(p, None)
        return held

    def _extend_partition(
        self, part: PartitionKeys, now: datetime, items: builtins.list[builtins.list[Any]]
    ) -> builtins.set[str]:
        args = [self._now_arg(now), _dumps(items)]
        queues = {DEFAULT_QUEUE, *self._known_queues}
        for _ in range(_WRITE_TRIES):
            keys = [part.jobs, *part.heads, *(part.due_key(queue) for queue in sorted(queues))]
            held = self._extend(keys=keys, args=args)
            if not held or _text(held[0]) != "missing":
                return {_text(job_id) for job_id in held}
            queues.update(map(_text, held[1]))
            self._learn_queues(held[1])
        raise RepositoryError("queues kept appearing while renewing leases; try again")

    def release(self, leases: Sequence[Lease]) -> None:
        ops = [
            {
                "o": "release",
                "id": lease.job.id,
                "token": lease.token,
                "due": _encode_time(lease.attempt_due_at),
            }
            for lease in leases
            if lease.token is not None
        ]
        if not ops:
            return
        queues = {lease.job.queue for lease in leases}
        if not (self._defer_unreachable and len(self._parts()) > 1):
            self._write(ops, (), queues=queues)
            return
        # A cluster: every partition is tried; the leases in a partition that cannot be
        # reached expire instead (their jobs are claimed again then).
        _, failures = self._write_each(ops, (), queues=queues, keep_going=True)
        for p, exc in failures.items():
            if not self.is_transient(exc):
                raise exc
            self._partition_failed(p, exc)

    def _earliest_due(self, queues: frozenset[str] | None) -> tuple[int | None, int]:
        """The earliest due time of ``queues`` (None: all) but paused ones, and the
        server's clock, in microseconds since the epoch.

        One ``next_due.lua`` call per partition, all in one pipeline; the
        earliest of their answers wins.
        """
        listed = [] if queues is None else sorted(_check_queue(name) for name in queues)
        if len(self._parts()) > 1:
            found = self._each_partition(self._next_due, queues, listed, [])
            replies = [reply for reply in found if reply is not None]
        else:
            replies = [self._next_due_single(queues, listed)]
        earliest: int | None = None
        now = int(_text(replies[0][1]))
        for reply in replies:
            due, clock = (_text(value) for value in reply)
            try:
                micros = int(due) if due else None
            except ValueError:  # an unreadable time: the claim that reaches it parks the job
                micros = None
            if micros is not None and (earliest is None or micros < earliest):
                # The clock of the node holding the job (a cluster's nodes may differ).
                earliest, now = micros, int(clock)
        return earliest, now

    def _next_due_single(self, queues: frozenset[str] | None, listed: builtins.list[str]) -> Any:
        """``next_due.lua``'s answer in a store of one partition (one call)."""
        part = self._layout[0]
        for _ in range(_WRITE_TRIES):
            claimed = set(listed) if queues is not None else {DEFAULT_QUEUE, *self._known_queues}
            keys = [part.jobs, part.queues, part.paused]
            keys.extend(part.due_key(queue) for queue in sorted(claimed))
            found = self._next_due(keys=keys, args=["*" if queues is None else "", *listed])
            if _text(found[0]) != "missing":
                return found
            self._learn_queues(found[1])
        raise RepositoryError("queues kept appearing while reading the next due time")

    def next_due(self, queues: frozenset[str] | None = None) -> datetime | None:
        due, _ = self._earliest_due(queues)
        try:
            return None if due is None else _decode_time(due)
        except OverflowError:  # a time past year 9999: the claim that reaches it parks the job
            return None

    def next_due_delay(self, now: datetime, queues: frozenset[str] | None = None) -> float | None:
        due, server_now = self._earliest_due(queues)
        if due is None:
            return None
        if not self.store_clock:
            server_now = _micros(now - _EPOCH)
        return (due - server_now) / 1e6

    # -- queues -------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume ``name``: every partition keeps a copy of the paused queues,
        which its scripts read atomically with the jobs they claim; all copies are
        written in one pipeline (call again after an error to finish)."""
        _check_queue(name)
        pipe = self._client.pipeline(transaction=False)
        for part in self._parts():
            if paused:
                pipe.sadd(part.paused, name)
            else:
                pipe.srem(part.paused, name)
        replies = self._skip_wrong_types(pipe.execute(raise_on_error=False))
        return any(int(changed) for changed in replies if changed is not None)

    def paused_queues(self) -> builtins.set[str]:
        pipe = self._client.pipeline(transaction=False)
        for part in self._parts():
            pipe.smembers(part.paused)
        replies = self._skip_wrong_types(pipe.execute(raise_on_error=False))
        return {_text(name) for names in replies if names is not None for name in names}

    def _execute(self, pipe: Any, owners: builtins.list[int]) -> builtins.list[Any]:
        """The replies of ``pipe`` (whose i-th command reads partition ``owners[i]``):
        in a store of several partitions, None for a command refused for a key of
        the wrong type (its partition is logged and left out); any other error is
        raised."""
        if len(self._layout) == 1:
            return list(pipe.execute())
        replies = list(pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if not _wrong_type(reply):
                    raise reply
                self._partition_broken(owners[i], reply)
                replies[i] = None
        return replies

    def _skip_wrong_types(self, replies: builtins.list[Any]) -> builtins.list[Any]:
        """One reply per partition, None in place of a key of the wrong type in a
        store of several partitions (that partition is logged and left alone);
        any other error is raised."""
        found = []
        for p, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if not (len(replies) > 1 and _wrong_type(reply)):
                    raise reply
                self._partition_broken(p, reply)
                reply = None
            found.append(reply)
        return found

    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        """Every queue that holds a job or is paused, with its counts at ``now``.

        Two reads of every partition (each atomic, ``MULTI``, in a store of one
        partition on one server): the queue names, paused queues and locked
        jobs, then per queue its due count and size and per locked job its due
        time. The cost grows with the number of queues, partitions and locked
        (running or staged) jobs, not with the number of stored jobs. A job
        written between the two reads may be counted as it was before.
        """
        parts = self._parts()
        pipe = self._pipeline()
        for part in parts:
            pipe.smembers(part.queues)
            pipe.smembers(part.paused)
            pipe.hgetall(part.locked)
            pipe.hlen(part.jobs)
        replies = self._execute(pipe, [p for p in range(len(parts)) for _ in range(4)])
        known: builtins.set[str] = set()
        paused: builtins.set[str] = set()
        total = 0
        locked = []
        for p in range(len(parts)):
            if None in replies[4 * p : 4 * p + 4]:
                continue  # a key of the wrong type: the partition is left out
            stored, paused_raw, locked_raw, size = replies[4 * p : 4 * p + 4]
            known |= {_text(name) for name in stored}
            paused |= {_text(name) for name in paused_raw}
            total += int(size)
            for job_id, value in locked_raw.items():
                value = _text(value)
                staged = value.startswith(STAGED_PREFIX)
                queue = value[len(STAGED_PREFIX) :] if staged else value
                if queue_name_problem(queue) is None:
                    locked.append((p, _text(job_id), queue, staged))
        known = {name for name in known if queue_name_problem(name) is None} - {DEFAULT_QUEUE}
        self._known_queues = frozenset(known)
        names = sorted(known | {DEFAULT_QUEUE})
        until = _encode_time(now)
        pipe = self._pipeline()
        owners = []
        for part in parts:
            for name in names:
                pipe.zcount(part.due_key(name), "-inf", until)
                owners.append(part.index)
                if name != DEFAULT_QUEUE:
                    pipe.zcard(part.queue_key(name))
                    owners.append(part.index)
        for p, job_id, queue, _ in locked:
            pipe.zscore(parts[p].due_key(queue), job_id)
            owners.append(p)
        counts = iter(self._execute(pipe, owners))
        due: dict[str, int] = dict.fromkeys(names, 0)
        sizes: dict[str, int] = dict.fromkeys(names, 0)
        for _part in parts:
            for name in names:
                due[name] += int(next(counts) or 0)  # None: a key of the wrong type
                if name != DEFAULT_QUEUE:
                    sizes[name] += int(next(counts) or 0)
        sizes[DEFAULT_QUEUE] = total - sum(sizes.values())
        running = dict.fromkeys(names, 0)
        for _p, _job_id, queue, staged in locked:
            score = next(counts)
            if score is None or queue not in due:
                continue  # not a job of that queue (any more)
            if not staged:
                running[queue] += 1
            if int(score) <= int(until):
                due[queue] -= 1  # due, but locked: not part of the backlog
        listed = {name for name in names if sizes[name] > 0} | paused
        states, oldest = self._job_states()
        return [
            QueueInfo(
                name,
                name in paused,
                max(due.get(name, 0), 0),
                running.get(name, 0),
                states.get(name) or job_state_counts(),
                _decode_time(oldest.get(name)),
            )
            for name in sorted(listed)
        ]

    def _job_states(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """Per queue, how many jobs are in each state and the earliest due time (microseconds)
        of the jobs waiting for a daemon.

        ``queue_counts.lua`` counts the documents of each partition in the
        server a chunk at a time (``HSCAN``), so neither is the server held
        up by one long command nor are the documents sent here; callers that
        ask often cache the answer. A job written during the scan may be
        counted as it was before, or (rarely, while the hash grows) twice.
        """
        states: dict[str, dict[str, int]] = {}
        oldest: dict[str, int] = {}
        parts = self._parts()
        for part in parts:
            cursor: Any = 0
            while True:
                try:
                    cursor, chunk = self._queue_counts(
                        keys=[part.jobs], args=[cursor, _COUNT_CHUNK]
                    )
                except redis_errors.ResponseError as exc:
                    if len(parts) == 1 or not _wrong_type(exc):
                        raise
                    self._partition_broken(part.index, exc)
                    break
                for i in range(0, len(chunk), 7):
                    queue = _text(chunk[i])
                    counts = states.get(queue)
                    if counts is None:
                        counts = states[queue] = job_state_counts()
                    for state, count in zip(_COUNTED_STATES, chunk[i + 1 : i + 6], strict=True):
                        counts[state] += int(count)
                    due = _text(chunk[i + 6])
                    if due:
                        micros = int(due)
                        if queue not in oldest or micros < oldest[queue]:
                            oldest[queue] = micros
                if int(cursor) == 0:
                    break
        return states, oldest

    # -- run history ----------------------------------------------------------

    def list_runs(
        self,
        job_id: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        outcomes: Collection[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        """Run records, newest first, read from the run history backwards (``XREVRANGE``).

        A store of several partitions has a stream per partition; their
        records are merged by entry id (the time they were written), ties by
        partition. Filters are applied here, so a filter that matches rarely
        (one job's runs) reads the history back to its matches, at most
        :data:`MAX_RUNS_SCANNED` records per call: a call that reaches that
        bound returns the matches found so far and a cursor to go on from.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        wanted = None if outcomes is None else set(outcomes)
        filtered = job_id is not None or task is not None or queue is not None or wanted is not None
        chunk = _RUNS_CHUNK if filtered else limit + 1
        parts = self._parts()
        several = len(parts) > 1
        if cursor is None:
            ends: builtins.list[str | None] = ["+"] * len(parts)
        else:
            ms, seq, at = _parse_run_id(cursor, len(parts))
            # Records of a partition below the cursor's share its entry id.
            ends = [_entry_at_or_before(ms, seq, several and p < at) for p in range(len(parts))]
        readers = [
            _StreamReader(self._client, part.runs, end, p if several else None)
            for p, (part, end) in enumerate(zip(parts, ends, strict=True))
        ]
        found: list[RunRecord] = []
        scanned = 0
        last = ""
        while len(found) <= limit:
            if scanned >= MAX_RUNS_SCANNED:
                # Bounded: the matches so far, and the last record read as the cursor.
                return RunPage(found, last)
            count = min(chunk, MAX_RUNS_SCANNED - scanned)
            head = None
            for reader in readers:
                order = reader.peek(count)
                if order is not None and (head is None or order > head[0]):
                    head = (order, reader)
            if head is None:
                break
            reader = head[1]
            entry_id, fields = reader.take()
            scanned += 1
            last = _run_id(entry_id, reader.partition)
            run = _decode_run(entry_id, fields or {}, reader.partition)
            if run is not None and run.matches(job_id, task, queue, wanted):
                found.append(run)
        return RunPage.read_ahead(found, limit)

    def prune_runs(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest written run records that finished before
        ``before``.

        Reads the ``limit`` oldest records of each partition's stream and
        :data:`PRUNE_LOOKAHEAD` more (``XRANGE``), so records written a little
        out of order (daemons whose clocks differ) are found too, and deletes
        the oldest old ones among them (``XDEL``): the cost grows with
        ``limit`` (and the partitions) only. Records that cannot be read go too.
        """
        if limit <= 0:
            return 0
        until = _micros(before - _EPOCH)
        count = limit + PRUNE_LOOKAHEAD
        parts = self._parts()
        if len(parts) == 1:
            streams = [self._client.xrange(parts[0].runs, min="-", max="+", count=count)]
        else:
            pipe = self._client.pipeline(transaction=False)
            for part in parts:
                pipe.xrange(part.runs, min="-", max="+", count=count)
            streams = pipe.execute()
        old = []
        for p, entries in enumerate(streams):
            for entry_id, fields in entries or []:
                run = _decode_run(entry_id, fields or {})
                if run is None or _micros(run.finished_at - _EPOCH) < until:
                    old.append((_entry_order(entry_id), p, _text(entry_id)))
        old.sort()
        by_partition: dict[int, builtins.list[str]] = {}
        for _, p, entry_id in old[:limit]:
            by_partition.setdefault(p, []).append(entry_id)
        # XDEL counts what it deleted: two daemons pruning at once count each record once.
        return sum(
            int(self._client.xdel(parts[p].runs, *entry_ids))
            for p, entry_ids in by_partition.items()
        )


class _StreamReader:
    """One run history stream read backwards a chunk at a time (for :meth:`list_runs`)."""

    def __init__(self, client: Any, key: str, end: str | None, partition: int | None) -> None:
        self.client = client
        self.key = key
        self.end = end  # the next entry to read is at or below it; None: none left
        self.partition = partition
        self.buffer: builtins.list[Any] = []

    def peek(self, count: int) -> tuple[int, int, int] | None:
        """The order (entry id, partition) of the next record, reading ``count`` more if
        needed; None when the stream has no more."""
        if not self.buffer and self.end is not None:
            entries = self.client.xrevrange(self.key, max=self.end, min="-", count=count) or []
            self.buffer = list(reversed(entries))
            if len(entries) < count:
                self.end = None
            else:
                ms, seq = _entry_order(entries[-1][0])
                self.end = _entry_at_or_before(ms, seq, False)
        if not self.buffer:
            return None
        ms, seq = _entry_order(self.buffer[-1][0])
        return ms, seq, self.partition or 0

    def take(self) -> Any:
        """The next record (after :meth:`peek` said there is one)."""
        return self.buffer.pop()
