"""The Redis store (``redis://``, ``rediss://`` and ``unix://`` URLs).

Every key of one namespace shares the hash tag ``{namespace}``, so the store
also works on Redis Cluster (all keys live in one slot):

``{ns}:jobs``
    HASH, job id -> the job document (JSON, see below).
``{ns}:due``
    ZSET of the ids of the jobs of the queue ``default`` that have a
    ``due_at``, scored by it (integer microseconds since the epoch). "What is
    due" is one ``ZRANGEBYSCORE`` per queue.
``{ns}:due:<queue>``
    The same for each other queue. The default queue keeps the key every job
    used before there were queues, so data written then needs no migration.
``{ns}:queue:<queue>``
    ZSET (all scores 0) of the ids of every job of a queue other than the
    default one (whether due or not): whether the queue holds a job.
``{ns}:queues``
    SET of the queues other than the default one that hold a job; a claim
    over every queue reads it.
``{ns}:paused``
    SET of the names of the paused queues (:meth:`RedisRepository.set_queue_paused`).
``{ns}:locked``
    HASH, id -> queue of every locked job (``staged:<queue>`` for a row a
    transaction staged), kept by the scripts so that
    :meth:`RedisRepository.queue_stats` counts running jobs without reading
    every document.
``{ns}:runs``
    STREAM, the run history (:meth:`RedisRepository.list_runs`): one entry per
    run (a field ``run`` holding the record as JSON), appended by the script
    that completes it, capped at about :data:`MAX_REDIS_RUNS` entries. A
    record's id is its entry id, zero-padded so that ids sort as text in the
    order they were written.
``{ns}:ids``
    ZSET of every id, all scored 0, for paging in id order (``ZRANGEBYLEX``).
``{ns}:task:<task name>``
    ZSET (all scores 0) of the ids of the jobs of one task, for the task filter.

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

Every write is one Lua script (``lua/*.lua`` beside this module), so it is
atomic, and every key a script touches is passed in ``KEYS``. The task and
queue of a job that is deleted or moved can only be known by reading the
job, so writers pass the task and queue keys they expect; a script that
finds a job of another task or queue writes nothing and names the missing
tasks and queues, and the call is repeated with their keys. Claims over
every queue and heartbeats pass the keys of the queues the store last saw
in ``{ns}:queues`` in the same way.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, overload
from urllib.parse import urlsplit

import orjson
import redis
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import short_repr
from ..jobs import (
    DEFAULT_QUEUE,
    MAX_RUN_ERROR_LENGTH,
    QUEUE_NAME,
    STAGED_PREFIX,
    Job,
    Lease,
    Outcome,
    QueueInfo,
    RunRecord,
    job_state_counts,
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
    loads_stored,
    problem_text,
    storable_text,
    storable_values,
    unwritable_row_values,
    well_formed_job,
)

log = logging.getLogger(__name__)

__all__ = ["RedisRepository"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

#: How often a write is repeated when jobs change task or queue under it.
_WRITE_TRIES = 5

#: About how many run records ``{ns}:runs`` keeps: each append trims the
#: oldest beyond this (``XADD MAXLEN ~``, so a few more may stay), whatever
#: ``pyncette.history_retention`` says. At a few hundred bytes a record,
#: about 1 GB at most.
MAX_REDIS_RUNS = 1_000_000

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
_WRITE = _lua("common", "write")
_LIST = _lua("list")
_NEXT_DUE = _lua("next_due")
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
    if value is None:
        return None
    if type(value) is str:
        return _time_of_text(value)
    return _EPOCH + timedelta(microseconds=int(value))


@functools.lru_cache(maxsize=4096)
def _time_of_text(value: str) -> datetime:
    # Jobs added together share their times: a cache spares most conversions.
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
        queue = doc.get("queue", DEFAULT_QUEUE)
        definition = loads_stored(doc["job"])
        if type(definition) is dict and type(queue) is str and QUEUE_NAME.fullmatch(queue):
            try:
                times = [_decode_time(doc.get(name)) for name in _DOCUMENT_TIMES]
                created_at = _decode_time(definition.get("created_at"))
            except (TypeError, ValueError, OverflowError):
                times = None
            if times is not None:
                job = well_formed_job(
                    job_id,
                    doc.get("task"),
                    definition.get("schedule"),
                    definition.get("args"),
                    definition.get("kwargs"),
                    definition.get("options"),
                    times[0],
                    times[1],
                    doc.get("locked_by"),
                    doc.get("attempts"),
                    times[2],
                    doc.get("last_status"),
                    doc.get("last_error"),
                    created_at,
                    definition.get("partition"),
                    queue,
                )
                if job is not None:
                    return job
    fields = load_json(raw)
    if isinstance(fields, dict) and fields.get("queue") is None:
        fields["queue"] = DEFAULT_QUEUE  # written before there were queues
    job = decode_job_fields(fields, job_id=job_id, decode_time=_decode_time)
    if QUEUE_NAME.fullmatch(job.queue):
        return job
    # Text, but no queue name: such a job counts in the default queue (so do
    # the scripts, see common.lua), so no key is ever named after garbage.
    problem = job.problem or problem_text(
        job.id, [f"queue is {short_repr(job.queue)} (str), not a queue name"]
    )
    return job.replace(queue=DEFAULT_QUEUE, problem=problem)


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


def _run_id(entry_id: Any) -> str:
    """The :attr:`RunRecord.id` of a stream entry: its id, zero-padded so that ids
    sort as text in the order they were written (``0001764451200123-0000000000``)."""
    ms, _, seq = _text(entry_id).partition("-")
    return f"{int(ms):016d}-{int(seq or 0):010d}"


def _entry_before(run_id: str) -> str | None:
    """The largest stream entry id below the record id ``run_id``, None when there is none."""
    ms_text, dash, seq_text = run_id.partition("-")
    try:
        ms, seq = int(ms_text), int(seq_text)
    except ValueError:
        ms = seq = -1
    if not dash or ms < 0 or not 0 <= seq <= _MAX_SEQUENCE:
        raise ValueError(
            f"invalid run cursor {run_id!r}: pass the next_cursor of a page of runs "
            "(a run record id like '0001764451200123-0000000000')"
        )
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{_MAX_SEQUENCE}"
    return None


def _decode_run(entry_id: Any, fields: Mapping[Any, Any]) -> RunRecord | None:
    """The run record of a stream entry, or None when the entry is not one."""
    try:
        record = orjson.loads(fields.get("run") or fields[b"run"])
        return RunRecord(
            job_id=str(record["job_id"]),
            task=str(record["task"]),
            queue=str(record["queue"]),
            scheduled_at=_EPOCH + timedelta(microseconds=record["scheduled_at"]),
            started_at=_EPOCH + timedelta(microseconds=record["started_at"]),
            finished_at=_EPOCH + timedelta(microseconds=record["finished_at"]),
            attempt=int(record["attempt"]),
            outcome=str(record["outcome"]),
            error=None if record.get("error") is None else str(record["error"]),
            host=str(record.get("host", "")),
            pid=int(record.get("pid") or 0),
            worker=str(record.get("worker", "")),
            id=_run_id(entry_id),
        )
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return None


def _url_problem(url: str, exc: Exception) -> str:
    """Why redis-py refused ``url``, without echoing any part of its credentials."""
    rest = url.partition("://")[2]
    try:
        authority = urlsplit(url).netloc
    except ValueError:
        authority = ""
    if "@" in rest and "@" not in authority:
        # urllib ended the host at a '/', '?' or '#' inside the password: its
        # complaint (a bad port or database number) quotes part of the password.
        return (
            "the part before '@' holds a raw '/', '?' or '#'; percent-encode them in the "
            "user and password (%2F, %3F, %23)"
        )
    return redact_text(str(exc))


# --------------------------------------------------------------------------- the store


class RedisRepository(Repository):
    """A :class:`Repository` in Redis (or Redis Cluster: every key shares one hash tag).

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL; its query
    string may set client options (``socket_timeout=5``...). Connections come
    from a blocking pool of ``max_connections`` (callers waiting for a free
    connection instead of failing). ``client`` replaces the URL with a
    ready ``redis.Redis`` (or ``RedisCluster``) that the store will not close.

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
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(
                f"Redis namespace {namespace!r} must be non-empty and contain no braces"
            )
        self.namespace = namespace
        self.store_clock = store_clock
        self.redacted_url = redact_url(url) if url is not None else repr(client)
        self._owns_client = client is None
        if client is None:
            if url is None:
                raise ValueError("RedisRepository needs a url or a client")
            client = self._connect(url, max_connections)
        self._client = client
        tag = "{" + namespace + "}"
        self._jobs_key = f"{tag}:jobs"
        self._due_key = f"{tag}:due"
        self._ids_key = f"{tag}:ids"
        self._task_prefix = f"{tag}:task:"
        self._queue_prefix = f"{tag}:queue:"
        self._queues_key = f"{tag}:queues"
        self._paused_key = f"{tag}:paused"
        self._locked_key = f"{tag}:locked"
        self._runs_key = f"{tag}:runs"
        #: The queues other than the default one last seen in ``{ns}:queues``:
        #: claims over every queue and heartbeats pass their keys.
        self._known_queues: frozenset[str] = frozenset()
        #: Pub/sub channel announcing new jobs (see :meth:`start_listener`).
        self.channel = f"{tag}:new"
        self._claim = client.register_script(_CLAIM)
        self._extend = client.register_script(_EXTEND)
        self._write_ops = client.register_script(_WRITE)
        self._list = client.register_script(_LIST)
        self._next_due = client.register_script(_NEXT_DUE)
        self._queue_counts = client.register_script(_QUEUE_COUNTS)
        self._scripts = (
            self._claim,
            self._extend,
            self._write_ops,
            self._list,
            self._next_due,
            self._queue_counts,
        )
        self._setup_lock = threading.Lock()
        self._ready = False

    @staticmethod
    def _connect(url: str, max_connections: int | None) -> redis.Redis:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 10,
            "socket_timeout": 30,
            "health_check_interval": 30,
            # One immediate reconnect replaces a connection the server dropped
            # while it sat in the pool; a server that is really down fails the
            # call, and the worker waits the outage out with its own backoff.
            "retry": Retry(NoBackoff(), 1),
        }
        if max_connections is not None:
            options["max_connections"] = max_connections
        try:
            # Options in the URL's query string win over these defaults.
            pool = redis.BlockingConnectionPool.from_url(url, **options)
        except Exception as exc:
            raise ValueError(
                f"invalid Redis URL {redact_url(url)!r}: {_url_problem(url, exc)}"
            ) from None
        return redis.Redis(connection_pool=pool)

    def __repr__(self) -> str:
        return f"<RedisRepository {self.redacted_url} namespace={self.namespace!r}>"

    @property
    def client(self) -> redis.Redis:
        """The Redis client (for tests and maintenance)."""
        return self._client

    def keys(self) -> builtins.list[str]:
        """The fixed keys of this namespace (task keys come and go with their jobs)."""
        return [self._jobs_key, self._due_key, self._ids_key]

    def task_key(self, task: str) -> str:
        """The key of the id index of ``task``'s jobs."""
        return self._task_prefix + task

    def due_key(self, queue: str) -> str:
        """The key of the due set of ``queue`` (``{ns}:due`` for the default queue)."""
        if queue == DEFAULT_QUEUE:
            return self._due_key
        return f"{self._due_key}:{queue}"

    def queue_key(self, queue: str) -> str:
        """The key of the id index of a queue other than the default one."""
        return self._queue_prefix + queue

    def _queue_keys(self, queues: Iterable[str]) -> builtins.list[str]:
        """The due sets and id indexes of ``queues``, in a stable order."""
        keys = []
        for queue in sorted(set(queues)):
            keys.append(self.due_key(queue))
            if queue != DEFAULT_QUEUE:
                keys.append(self.queue_key(queue))
        return keys

    def _learn_queues(self, names: Iterable[Any]) -> None:
        """Remember queues a script named (or ``{ns}:queues`` held) for the next calls."""
        valid = {name for name in map(_text, names) if queue_name_problem(name) is None}
        valid.discard(DEFAULT_QUEUE)
        if not valid <= self._known_queues:
            self._known_queues = self._known_queues | valid

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        with self._setup_lock:
            if self._ready:
                return
            # Loading the scripts checks the server is reachable and speaks Lua.
            for script in self._scripts:
                script.sha = _text(self._client.script_load(script.script))
            self._ready = True

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()

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
        """:meth:`_write`, answering with what the script returned for each op."""
        tasks = set(tasks)
        queues = set(queues) - {DEFAULT_QUEUE}  # its due set is always passed
        args = [self._task_prefix, _dumps(ops), self.channel if announce else ""]
        args.extend(self._run_args(runs))
        for _ in range(_WRITE_TRIES):
            keys = [self._jobs_key, self._due_key, self._ids_key]
            keys += [self._queues_key, self._locked_key, self._runs_key]
            keys.extend(self.task_key(task) for task in sorted(tasks))
            keys.extend(self._queue_keys(queues))
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

    @staticmethod
    def _run_args(runs: Sequence[RunRecord]) -> builtins.list[str]:
        """The script arguments that append ``runs`` (see append_runs in common.lua)."""
        if not runs:
            return []
        return [str(MAX_REDIS_RUNS), *map(_encode_run, runs)]

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
        found = self._write_raw(ops, {job.task for job in jobs}, queues=queues)
        previous = {}
        for op, raw in zip(ops, found, strict=True):
            if raw != 0:
                previous[op["id"]] = _decode_job(op["id"], raw)
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
        self._write(ops, (), True, {job.queue for job in jobs})

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
            self._write(ops, {job.task for job in previous.values()}, True, queues)

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
        raw = self._client.hget(self._jobs_key, job_id)
        return None if raw is None else _decode_job(job_id, raw)

    def get_many(self, ids: Iterable[str]) -> dict[str, Job]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        found = self._client.hmget(self._jobs_key, ids)
        return {
            job_id: _decode_job(job_id, raw)
            for job_id, raw in zip(ids, found, strict=True)
            if raw is not None
        }

    def list(self, task: str | None = None, cursor: str | None = None, limit: int = 100) -> JobPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        index = self._ids_key if task is None else self.task_key(task)
        start = "-" if cursor is None else "(" + cursor
        found = self._list(keys=[index, self._jobs_key], args=[start, limit + 1])
        ids = [_text(job_id) for job_id in found[0::2]]
        docs = found[1::2]
        more = len(ids) > limit
        jobs = [
            _decode_job(job_id, raw)
            for job_id, raw in zip(ids[:limit], docs[:limit], strict=True)
            if raw is not None
        ]
        return JobPage(jobs, ids[limit - 1] if more else None)

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
        """One script call deletes finished one-off jobs, appends ``runs`` and claims due ones.

        The claim reads the paused queues in the same call, so a pause is
        obeyed by the next claim of every daemon.
        """
        now, limit, token, default_lease, queues = claim
        listed = [] if queues is None else sorted(_check_queue(name) for name in queues)
        deletes, others = split_finished(outcomes)
        finished: list[str] = []
        for done, _ in deletes:
            assert done.token is not None  # split_finished keeps lease-guarded deletes only
            finished += (done.job_id, done.token)
        tasks = {outcome.lease.job.task for _, outcome in deletes}
        finished_queues = {outcome.lease.job.queue for _, outcome in deletes}
        by_id = {plan.job_id: outcome for plan, outcome in deletes}
        if others:
            self.complete(others)
        if limit <= 0 and not finished and not runs:
            return []
        args: list[str | int] = [
            self._now_arg(now),
            max(limit, 0),
            token,
            _lease_micros(default_lease),
            self._task_prefix,
            "*" if queues is None else "",
            len(listed),
            *listed,
            len(finished) // 2,
            *finished,
            *self._run_args(runs),
        ]
        for _ in range(_WRITE_TRIES):
            claimed = set(listed) if queues is not None else {DEFAULT_QUEUE, *self._known_queues}
            keys = [self._jobs_key, self._ids_key, self._queues_key, self._paused_key]
            keys += [self._locked_key, self._runs_key]
            keys.extend(self._queue_keys(claimed | finished_queues))
            keys.extend(self.task_key(task) for task in sorted(tasks))
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
        now = clock
        skipped = int(found[1])
        if skipped:
            # Finished runs of jobs whose task changed: written the careful way.
            self.complete([by_id[_text(job_id)] for job_id in found[2 : 2 + skipped]])
        rest = found[2 + skipped :]
        plans = []
        for job_id, raw in zip(rest[0::2], rest[1::2], strict=True):
            if raw == "":
                log.error(
                    "job %r has an unreadable stored document; it is no longer due "
                    "(fix or remove it: HGET %s %s)",
                    _text(job_id),
                    self._jobs_key,
                    _text(job_id),
                )
                continue
            job = _decode_job(_text(job_id), raw)
            plans.append(plan_claim(job, now, token, default_lease, checked=True))
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
        tasks = {plan.job.task for plan in once}
        flags = self._write(ops, tasks, queues={plan.job.queue for plan in once})
        # A row taken from us in between (replaced, removed) is not run.
        lost = {plan.job.id for plan, flag in zip(once, flags, strict=True) if not flag}
        return [plan.lease for plan in plans if plan.action == "lease" or plan.job.id not in lost]

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
        ops = []
        tasks = set()
        for outcome in outcomes:
            plan = plan_completion(outcome)
            ops.append(self._plan_op(plan.action, plan.job_id, plan.token, plan.values))
            if plan.action == "delete":
                tasks.add(outcome.lease.job.task)
        queues = {outcome.lease.job.queue for outcome in outcomes}
        try:
            self._write(ops, tasks, queues=queues, runs=runs)
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
        if runs:
            self._write([], (), runs=runs)

    def is_row_error(self, exc: BaseException) -> bool:
        """Whether a script failed on the contents of a row (a document it cannot decode)."""
        if isinstance(exc, redis_errors.ResponseError) and not self.is_transient(exc):
            text = str(exc).lower()
            return "script" in text and not isinstance(exc, redis_errors.NoScriptError)
        return super().is_row_error(exc)

    def extend(self, now: datetime, leases: Sequence[tuple[str, str, float]]) -> set[str]:
        if not leases:
            return set()
        items = [[job_id, token, _lease_micros(seconds)] for job_id, token, seconds in leases]
        args = [self._now_arg(now), _dumps(items)]
        queues = {DEFAULT_QUEUE, *self._known_queues}
        for _ in range(_WRITE_TRIES):
            keys = [self._jobs_key, *(self.due_key(queue) for queue in sorted(queues))]
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
                "due": _encode_time(lease.scheduled_at),
            }
            for lease in leases
            if lease.token is not None
        ]
        if ops:
            self._write(ops, (), queues={lease.job.queue for lease in leases})

    def _earliest_due(self, queues: frozenset[str] | None) -> tuple[int | None, int]:
        """The earliest due time of ``queues`` (None: all) but paused ones, and the
        server's clock, in microseconds since the epoch."""
        listed = [] if queues is None else sorted(_check_queue(name) for name in queues)
        for _ in range(_WRITE_TRIES):
            claimed = set(listed) if queues is not None else {DEFAULT_QUEUE, *self._known_queues}
            keys = [self._jobs_key, self._queues_key, self._paused_key]
            keys.extend(self.due_key(queue) for queue in sorted(claimed))
            found = self._next_due(keys=keys, args=["*" if queues is None else "", *listed])
            if _text(found[0]) != "missing":
                break
            self._learn_queues(found[1])
        else:
            raise RepositoryError("queues kept appearing while reading the next due time")
        due, now = (_text(value) for value in found)
        try:
            return (int(due) if due else None), int(now)
        except ValueError:  # an unreadable time: the claim that reaches it parks the job
            return None, int(now)

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
        _check_queue(name)
        if paused:
            return bool(self._client.sadd(self._paused_key, name))
        return bool(self._client.srem(self._paused_key, name))

    def paused_queues(self) -> builtins.set[str]:
        return {_text(name) for name in self._client.smembers(self._paused_key)}

    def queue_stats(self, now: datetime) -> builtins.list[QueueInfo]:
        """Every queue that holds a job or is paused, with its counts at ``now``.

        Two reads, each atomic (``MULTI``): the queue names, paused queues and
        locked jobs, then per queue its due count and size and per locked job
        its due time. The cost grows with the number of queues and of locked
        (running or staged) jobs, not with the number of stored jobs. A job
        written between the two reads may be counted as it was before.
        """
        pipe = self._client.pipeline(transaction=True)
        pipe.smembers(self._queues_key)
        pipe.smembers(self._paused_key)
        pipe.hgetall(self._locked_key)
        pipe.hlen(self._jobs_key)
        stored, paused_raw, locked_raw, total = pipe.execute()
        known = {_text(name) for name in stored}
        known = {name for name in known if queue_name_problem(name) is None} - {DEFAULT_QUEUE}
        self._known_queues = frozenset(known)
        paused = {_text(name) for name in paused_raw}
        names = sorted(known | {DEFAULT_QUEUE})
        locked = []
        for job_id, value in locked_raw.items():
            value = _text(value)
            staged = value.startswith(STAGED_PREFIX)
            queue = value[len(STAGED_PREFIX) :] if staged else value
            if queue_name_problem(queue) is None:
                locked.append((_text(job_id), queue, staged))
        until = _encode_time(now)
        pipe = self._client.pipeline(transaction=True)
        for name in names:
            pipe.zcount(self.due_key(name), "-inf", until)
            if name != DEFAULT_QUEUE:
                pipe.zcard(self.queue_key(name))
        for job_id, queue, _ in locked:
            pipe.zscore(self.due_key(queue), job_id)
        counts = iter(pipe.execute())
        due: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for name in names:
            due[name] = int(next(counts))
            if name != DEFAULT_QUEUE:
                sizes[name] = int(next(counts))
        sizes[DEFAULT_QUEUE] = int(total) - sum(sizes.values())
        running = dict.fromkeys(names, 0)
        for _job_id, queue, staged in locked:
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

        ``queue_counts.lua`` counts the documents in the server a chunk at a
        time (``HSCAN``), so neither is the server held up by one long
        command nor are the documents sent here; callers that ask often
        cache the answer. A job written during the scan may be counted as it
        was before, or (rarely, while the hash grows) twice.
        """
        states: dict[str, dict[str, int]] = {}
        oldest: dict[str, int] = {}
        cursor: Any = 0
        while True:
            cursor, chunk = self._queue_counts(keys=[self._jobs_key], args=[cursor, _COUNT_CHUNK])
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
        """Run records, newest first, read from ``{ns}:runs`` backwards (``XREVRANGE``).

        Filters are applied here, so a filter that matches rarely (one job's
        runs) reads the history back to its matches, at most
        :data:`MAX_RUNS_SCANNED` records per call: a call that reaches that
        bound returns the matches found so far and a cursor to go on from.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        wanted = None if outcomes is None else set(outcomes)
        filtered = job_id is not None or task is not None or queue is not None or wanted is not None
        chunk = _RUNS_CHUNK if filtered else limit + 1
        end = "+" if cursor is None else _entry_before(cursor)
        found: list[RunRecord] = []
        scanned = 0
        last = ""
        while end is not None and len(found) <= limit:
            if scanned >= MAX_RUNS_SCANNED:
                # Bounded: the matches so far, and the last record read as the cursor.
                return RunPage(found, last)
            count = min(chunk, MAX_RUNS_SCANNED - scanned)
            entries = self._client.xrevrange(self._runs_key, max=end, min="-", count=count) or []
            scanned += len(entries)
            for entry_id, fields in entries:
                run = _decode_run(entry_id, fields or {})
                if run is None or not run.matches(job_id, task, queue, wanted):
                    continue
                found.append(run)
                if len(found) > limit:
                    break
            if len(entries) < count:
                break
            last = _run_id(entries[-1][0])
            end = _entry_before(last)
        more = len(found) > limit
        found = found[:limit]
        return RunPage(found, found[-1].id if more else None)

    def prune_runs(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest written run records that finished before
        ``before``.

        Reads the ``limit`` oldest records and :data:`PRUNE_LOOKAHEAD` more
        (``XRANGE``), so records written a little out of order (daemons whose
        clocks differ) are found too, and deletes the old ones among them
        (``XDEL``): the cost grows with ``limit`` only. Records that cannot
        be read go too.
        """
        if limit <= 0:
            return 0
        until = _micros(before - _EPOCH)
        count = limit + PRUNE_LOOKAHEAD
        entries = self._client.xrange(self._runs_key, min="-", max="+", count=count) or []
        old = []
        for entry_id, fields in entries:
            run = _decode_run(entry_id, fields or {})
            if run is None or _micros(run.finished_at - _EPOCH) < until:
                old.append(_text(entry_id))
                if len(old) == limit:
                    break
        if not old:
            return 0
        # XDEL counts what it deleted: two daemons pruning at once count each record once.
        return int(self._client.xdel(self._runs_key, *old))
