"""Prometheus metrics and the health check of the scheduler (extra ``metrics``).

Two kinds of metrics, both built with ``prometheus_client``:

- **Per daemon** (:class:`WorkerMetrics`): what one ``pscheduler`` process
  did since it started (runs by task, queue and outcome, run durations,
  lateness, claims, store errors, lost leases, jobs in hand). Each daemon
  keeps them in a ``CollectorRegistry`` of its own, never the global
  default one, so several workers (or tests) in one process never clash.
  The worker feeds them from its loop thread, a batch at a time.
- **Store-wide** (:class:`StoreCollector`, :func:`store_metrics`): jobs per
  queue and state, and how late the oldest due job of each queue is. The
  same whichever process is scraped; computed from one
  :meth:`~pyramid_pyncette.scheduler.Scheduler.get_queues` call, cached for
  :data:`STORE_CACHE_SECONDS`, so frequent scrapes never rescan the store.

:class:`MetricsServer` serves ``/metrics`` and ``/healthz`` on
``pyncette.metrics_host:pyncette.metrics_port`` for ``pscheduler``. Nothing
here is imported unless metrics are on: with ``pyncette.metrics_port``
unset the worker pays one ``is None`` test per batch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import socket
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pyramid.exceptions import ConfigurationError

from .jobs import JOB_STATES, Lease, QueueInfo
from .redaction import redact_text

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .scheduler import Scheduler
    from .worker import Worker

log = logging.getLogger(__name__)

#: How long one store-wide count serves scrapes (seconds).
STORE_CACHE_SECONDS = 5.0

#: How a missing ``prometheus_client`` is fixed.
INSTALL_HINT = "pip install pyramid_pyncette[metrics]"

#: Bucket bounds (seconds) of ``pyncette_run_duration_seconds``.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

#: Bucket bounds (seconds) of ``pyncette_run_lateness_seconds``.
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class MetricsUnavailable(ConfigurationError):
    """Metrics were asked for, but ``prometheus_client`` is not installed."""


def require_prometheus() -> None:
    """Import ``prometheus_client``, or raise :class:`MetricsUnavailable` naming the fix."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MetricsUnavailable(
            "pyncette.metrics_port is set but prometheus_client is not installed: "
            f"{INSTALL_HINT} (or unset pyncette.metrics_port)"
        ) from exc


def package_version() -> str:
    """The installed version of pyramid_pyncette ('unknown' when not installed)."""
    try:
        return metadata.version("pyramid_pyncette")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- store-wide


@dataclass(frozen=True)
class StoreCounts:
    """One :meth:`Scheduler.get_queues` answer and the time it was asked at."""

    queues: list[QueueInfo]
    now: datetime

    def oldest_due_seconds(self, queue: QueueInfo) -> float:
        """How late the oldest job of ``queue`` waiting for a daemon is (0: none is late)."""
        if queue.oldest_due_at is None:
            return 0.0
        return max(0.0, (self.now - queue.oldest_due_at).total_seconds())


class _QueueCache:
    """The last :class:`StoreCounts` of one store, kept for ``ttl`` seconds.

    A failed count is remembered as long: a store that is down is not asked
    again by every scrape.
    """

    def __init__(self, ttl: float, monotonic: Callable[[], float]) -> None:
        self.ttl = ttl
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._fetched: float | None = None
        self._counts: StoreCounts | None = None
        #: Why the last count failed (credentials hidden), None after a good one.
        self.error: str | None = None

    def get(self, scheduler: Scheduler) -> StoreCounts | None:
        """The cached counts, asked of ``scheduler`` again once older than ``ttl``;
        None while the store cannot be counted."""
        with self._lock:
            now = self.monotonic()
            if self._fetched is None or now - self._fetched >= self.ttl:
                self._fetched = now
                try:
                    self._counts = StoreCounts(scheduler.get_queues(), scheduler.now())
                    self.error = None
                except Exception as exc:
                    self._counts = None
                    self.error = redact_text(f"{type(exc).__name__}: {exc}")
                    log.warning("cannot count the jobs of the store for metrics: %s", self.error)
            return self._counts


def store_families(counts: StoreCounts | None) -> list[Metric]:
    """The store-wide gauges of ``counts`` (none when the store could not be counted)."""
    from prometheus_client.core import GaugeMetricFamily

    jobs = GaugeMetricFamily(
        "pyncette_jobs", "Jobs stored, by queue and state", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "pyncette_oldest_due_seconds",
        "How late the oldest job of a queue waiting for a daemon is (seconds; 0: none is late)",
        labels=["queue"],
    )
    if counts is None:
        return []
    for queue in counts.queues:
        for state in JOB_STATES:
            jobs.add_metric([queue.name, state], queue.jobs.get(state, 0))
        oldest.add_metric([queue.name], counts.oldest_due_seconds(queue))
    return [jobs, oldest]


class StoreCollector:
    """A ``prometheus_client`` collector of the store-wide gauges ``pyncette_jobs{queue,state}``
    and ``pyncette_oldest_due_seconds{queue}``, from ``scheduler.get_queues()`` cached
    for ``ttl`` seconds (``monotonic`` times the cache; tests pass a fake one)."""

    def __init__(
        self,
        scheduler: Scheduler,
        ttl: float = STORE_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self._cache = _QueueCache(ttl, monotonic)

    def collect(self) -> Iterator[Metric]:
        """The gauges (the collector protocol of ``prometheus_client``)."""
        yield from store_families(self._cache.get(self.scheduler))

    def describe(self) -> list[Metric]:
        """Nothing: registering must not count the store."""
        return []


#: One cache per store for :func:`store_metrics` (a request's scheduler is a copy
#: bound to its transaction; the store object is shared by every copy).
_STORE_CACHES: weakref.WeakKeyDictionary[Any, _QueueCache] = weakref.WeakKeyDictionary()
_STORE_CACHES_LOCK = threading.Lock()


class _Families:
    """A collection of metric families, as ``generate_latest`` reads a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


#: Errors of binding to an address this machine does not have (not of a taken port).
_ADDRESS_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


def _host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StoreCountError(Exception):
    """The store's jobs could not be counted (it is unreachable or its tables are not as
    expected): :func:`store_metrics` has no gauges to give."""


def store_metrics(scheduler: Scheduler) -> tuple[bytes, str]:
    """The store-wide gauges as a Prometheus exposition: ``(body, content type)``.

    For web processes (the dashboard's ``<path>/metrics``): counted with
    ``scheduler.get_queues()`` at most every :data:`STORE_CACHE_SECONDS`
    per store, whichever scheduler (or request's copy of it) asks.

    :raises StoreCountError: when the store could not be counted (within the
        cache's time): answer with an error status, so that the scrape fails
        rather than the gauges silently going away.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # The Store the scheduler and its copies share (not its repository, which
    # would set the store up here, outside the count's error handling).
    key = scheduler.store
    with _STORE_CACHES_LOCK:
        cache = _STORE_CACHES.get(key)
        if cache is None:
            cache = _STORE_CACHES[key] = _QueueCache(STORE_CACHE_SECONDS, time.monotonic)
    counts = cache.get(scheduler)
    if counts is None:
        raise StoreCountError(cache.error or "the store could not be counted")
    return generate_latest(_Families(store_families(counts))), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- per daemon


class _Buckets:
    """One histogram series: a count per bucket (the last one: above every bound) and a sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class RunStats:
    """``pyncette_runs_total{task,queue,outcome}``, ``pyncette_run_duration_seconds{task,queue}``
    and ``pyncette_run_lateness_seconds{queue}``: a ``prometheus_client`` collector of plain
    counts that the worker's loop adds a batch of runs to at once.

    One lock per batch (and per scrape) instead of one per value, as each
    ``Counter`` and ``Histogram`` of ``prometheus_client`` takes: a drain of
    short jobs stays within a few percent of its speed without metrics.
    """

    def __init__(
        self,
        duration_buckets: tuple[float, ...] = DURATION_BUCKETS,
        lateness_buckets: tuple[float, ...] = LATENESS_BUCKETS,
    ) -> None:
        self.duration_buckets = duration_buckets
        self.lateness_buckets = lateness_buckets
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], _Buckets] = {}
        self._lateness: dict[str, _Buckets] = {}

    def add(self, runs: Iterable[tuple[Lease, str, datetime | None, datetime]]) -> None:
        """Count ``runs``, each ``(lease, outcome, started_at, finished_at)``.

        ``outcome`` is one of :data:`~pyramid_pyncette.jobs.RUN_OUTCOMES`; a
        run that never started (skipped, or unrunnable as stored) has no
        ``started_at``: it is counted, not timed. Lateness is the start
        minus the time the attempt was due (``lease.attempt_due_at``: a
        retry's from its retry time, so a backoff is not lateness).
        """
        counts, durations, lateness = self._runs, self._durations, self._lateness
        duration_bounds, lateness_bounds = self.duration_buckets, self.lateness_buckets
        with self._lock:
            for lease, outcome, started_at, finished_at in runs:
                job = lease.job
                task, queue = job.task, job.queue
                key = (task, queue, outcome)
                counts[key] = counts.get(key, 0) + 1
                if started_at is None:
                    continue
                took = max(0.0, (finished_at - started_at).total_seconds())
                series = durations.get((task, queue))
                if series is None:
                    series = durations[task, queue] = _Buckets(len(duration_bounds) + 1)
                series.counts[bisect_left(duration_bounds, took)] += 1
                series.total += took
                late = max(0.0, (started_at - lease.attempt_due_at).total_seconds())
                series = lateness.get(queue)
                if series is None:
                    series = lateness[queue] = _Buckets(len(lateness_bounds) + 1)
                series.counts[bisect_left(lateness_bounds, late)] += 1
                series.total += late

    def collect(self) -> Iterator[Metric]:
        """The three metric families (the collector protocol of ``prometheus_client``)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        runs = CounterMetricFamily(
            "pyncette_runs",
            "Runs finished by this daemon, by task, queue and outcome "
            "(succeeded, failed, skipped, lease_lost)",
            labels=["task", "queue", "outcome"],
        )
        durations = HistogramMetricFamily(
            "pyncette_run_duration_seconds",
            "How long the runs of this daemon took, by task and queue",
            labels=["task", "queue"],
        )
        lateness = HistogramMetricFamily(
            "pyncette_run_lateness_seconds",
            "How late the runs of this daemon started (start minus due time), by queue",
            labels=["queue"],
        )
        with self._lock:
            counted = dict(self._runs)
            timed = [(list(key), list(s.counts), s.total) for key, s in self._durations.items()]
            late = [([key], list(s.counts), s.total) for key, s in self._lateness.items()]
        for key, count in counted.items():
            runs.add_metric(list(key), count)
        for family, bounds, series in (
            (durations, self.duration_buckets, timed),
            (lateness, self.lateness_buckets, late),
        ):
            for names, counts, total in series:
                family.add_metric(names, _cumulative(bounds, counts), total)
        yield runs
        yield durations
        yield lateness

    def describe(self) -> list[Metric]:
        """Nothing ahead of a scrape: the series appear with the first runs."""
        return []


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Histogram buckets as Prometheus has them: ``(le, runs up to le)``, ending at ``+Inf``."""
    from prometheus_client.utils import floatToGoString

    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        buckets.append((floatToGoString(bound), running))
    return buckets


class WorkerMetrics:
    """The metrics of one daemon, in a ``CollectorRegistry`` of their own (:attr:`registry`).

    The worker calls :meth:`claimed`, :meth:`finished`, :meth:`store_error`
    and :meth:`lease_lost`; :meth:`attach` ties the gauges read at scrape
    time (jobs in hand, worker info, the store-wide gauges) to a worker.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        #: Runs counted and timed a batch at a time (see :class:`RunStats`).
        self.runs = RunStats()
        reg.register(self.runs)
        self.claims = Counter(
            "pyncette_claims_total", "Claims this daemon made of the store", registry=reg
        )
        self.claimed_jobs = Counter(
            "pyncette_claimed_jobs_total", "Jobs this daemon claimed", registry=reg
        )
        self.running = Gauge(
            "pyncette_running_jobs",
            "Jobs this daemon holds: running, or claimed and waiting for a thread",
            registry=reg,
        )
        self.store_errors = Counter(
            "pyncette_store_errors_total",
            "Store calls of this daemon's loop that failed",
            registry=reg,
        )
        self.leases_lost = Counter(
            "pyncette_lease_lost_total",
            "Runs of this daemon that lost their lease (another daemon may run them)",
            registry=reg,
        )
        self.info = Gauge(
            "pyncette_worker_info",
            "This daemon: its worker id, host and pyramid_pyncette version (always 1)",
            ["worker_id", "host", "version"],
            registry=reg,
        )

    def attach(self, worker: Worker, store_gauges: bool = True) -> None:
        """Read ``worker``'s jobs in hand at scrape time, name it in ``pyncette_worker_info``
        and (with ``store_gauges``) serve the store-wide gauges of its scheduler too."""
        self.running.set_function(lambda: worker.jobs_in_hand)
        self.info.labels(worker.id, worker.host, package_version()).set(1)
        if store_gauges:
            self.registry.register(StoreCollector(worker.scheduler))

    def claimed(self, jobs: int) -> None:
        """One claim, that took ``jobs`` jobs."""
        self.claims.inc()
        if jobs:
            self.claimed_jobs.inc(jobs)

    def finished(self, runs: Iterable[tuple[Lease, str, datetime | None, datetime]]) -> None:
        """A batch of finished runs, each ``(lease, outcome, started_at, finished_at)``
        (see :meth:`RunStats.add`)."""
        self.runs.add(runs)

    def store_error(self) -> None:
        """A store call of the loop failed."""
        self.store_errors.inc()

    def lease_lost(self) -> None:
        """A run lost its lease."""
        self.leases_lost.inc()


# --------------------------------------------------------------------------- health


class HealthCheck:
    """Whether a worker is healthy: its loop turned within twice the poll interval and
    its last store call succeeded. ``monotonic`` must be the worker's own clock."""

    def __init__(self, worker: Worker, monotonic: Callable[[], float] | None = None) -> None:
        self.worker = worker
        self.monotonic = monotonic or worker.monotonic

    def status(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, document)``: the document says why (for ``/healthz``)."""
        worker = self.worker
        last = worker.last_tick
        ago = None if last is None else max(0.0, self.monotonic() - last)
        limit = 2 * worker.poll_interval
        reachable = worker.store_failures == 0 and last is not None
        healthy = ago is not None and ago <= limit and reachable
        return healthy, {
            "status": "ok" if healthy else "unhealthy",
            "loop_last_tick_seconds_ago": None if ago is None else round(ago, 3),
            "loop_tick_limit_seconds": limit,
            "store_reachable": reachable,
            "running_jobs": worker.jobs_in_hand,
        }


# --------------------------------------------------------------------------- HTTP


class _ThreadingServer(WSGIServer):
    """A WSGI server answering each request on its own thread (a slow scrape never
    holds up a health probe)."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._handle, args=(request, client_address), name="pyncette-metrics-request"
        )
        thread.daemon = True
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class _ThreadingServer6(_ThreadingServer):
    """The same on an IPv6 address (``pyncette.metrics_host = ::``)."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


#: Where a server listening on every address can be reached from this machine.
_LOCAL_ADDRESSES = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class MetricsServer:
    """Serves ``/metrics`` (``registry``) and ``/healthz`` (``health``) over HTTP on
    ``host:port`` (port 0: any free port, see :attr:`port`) from a daemon thread.

    Raises :class:`~pyramid.exceptions.ConfigurationError` naming the fix
    when the address cannot be bound (the port is taken).
    """

    def __init__(
        self, registry: CollectorRegistry, health: HealthCheck, host: str, port: int
    ) -> None:
        from prometheus_client import make_wsgi_app

        self._metrics_app = make_wsgi_app(registry)
        self.health = health
        try:
            self._server = make_server(
                host,
                port,
                self._app,
                server_class=_ThreadingServer6 if ":" in host else _ThreadingServer,
                handler_class=_QuietHandler,
            )
        except (OSError, socket.gaierror) as exc:
            if isinstance(exc, socket.gaierror) or exc.errno in _ADDRESS_ERRNOS:
                fix = (
                    "set pyncette.metrics_host to an address of this machine "
                    "(e.g. 127.0.0.1, 0.0.0.0 or ::1, without brackets)"
                )
            else:
                fix = "set pyncette.metrics_port to a free port (0 picks one) or stop what uses it"
            raise ConfigurationError(
                f"cannot serve metrics on {_host_port(host, port)} ({exc.strerror or exc}): {fix}"
            ) from exc
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pyncette-metrics", daemon=True
        )

    def start(self) -> None:
        """Start answering."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and free the port, at once.

        The server notices a shutdown only when its wait for a connection
        ends (every half second): a connection of our own ends it now, so a
        daemon stopping (``--once`` finishing) is not held up.
        """
        stopper = threading.Thread(target=self._server.shutdown, name="pyncette-metrics-stop")
        stopper.start()
        while stopper.is_alive():
            self._wake_server()
            stopper.join(0.01)
        self._server.server_close()
        self._thread.join()

    def _wake_server(self) -> None:
        host = _LOCAL_ADDRESSES.get(self.host, self.host)
        with contextlib.suppress(OSError), socket.create_connection((host, self.port), 1):
            pass

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            healthy, document = self.health.status()
            body = json.dumps(document).encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(
                status,
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        body = b"not found: try /metrics or /healthz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [body]


def start_daemon_metrics(worker: Worker, host: str, port: int) -> MetricsServer:
    """Give ``worker`` its metrics and serve them with its health check on ``host:port``.

    Raises :class:`MetricsUnavailable` without ``prometheus_client`` and
    :class:`~pyramid.exceptions.ConfigurationError` when the port is taken.
    """
    require_prometheus()
    metrics = WorkerMetrics()
    metrics.attach(worker)
    server = MetricsServer(metrics.registry, HealthCheck(worker), host, port)
    worker.metrics = metrics
    server.start()
    address = _host_port(host, server.port)
    log.info("metrics on http://%s/metrics, health on http://%s/healthz", address, address)
    return server
