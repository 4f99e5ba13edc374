"""The worker: the lease loop that claims due jobs, runs them and completes them.

One loop thread talks to the store; ``pyncette.concurrency`` job threads
run jobs, taking claimed runs from one queue. The loop claims only as many
jobs as its threads can start soon (a bounded batch ahead, so a lease is
never spent waiting), writes finished runs in the same store call that
claims the next batch, renews the lease of every running job well before it
expires (each job's own lease counts, not only the daemon's), and sleeps
until the next known due time (by the store's clock), the next renewal, a
finished job, or the poll interval, whichever comes first. A run whose lease
may have run out meanwhile (the daemon was paused, the store unreachable) is
checked with the store before its result is written: a lost lease is always
reported, and its result discarded.

On a store whose claims are slow (DynamoDB: ``Repository.claims_ahead``)
an idle loop claims the jobs due within its claim lead a little before
they are due, each planned at its due time, and a timer hands each run to
a job thread at that time.

A worker claims from the queues of ``pyncette.queues`` (every queue by
default). Each finished run leaves a :class:`~pyramid_pyncette.jobs.RunRecord`
(as ``pyncette.history`` says), written by the same store call as the run's
outcome; records older than ``pyncette.history_retention`` are pruned a few
small batches at a time.

Shutdown (:meth:`Worker.stop`) stops claiming, lets running jobs finish and
releases anything claimed but not started. A store that goes away is logged,
backed off from and retried: it never ends the loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .backoff import Backoff
from .events import JobSkipped, LeaseLost, WorkerStarting, WorkerStopping, notify_subscribers
from .execution import JobInfo, JobRequests, run_error, run_job
from .jobs import (
    RUN_FAILED,
    RUN_LEASE_LOST,
    RUN_SKIPPED,
    RUN_SUCCEEDED,
    Lease,
    Outcome,
    RunRecord,
    new_run_record,
    queue_name_problem,
)
from .repository.base import Announcer, Repository
from .settings import HISTORY_CHOICES

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from .metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: Longest pause between retries while the store is unreachable (seconds).
MAX_BACKOFF = 30.0

#: Share of a lease that a claimed job may spend queued for a free thread.
PREFETCH_LEASE_SHARE = 0.05

#: Shortest time between two renewals of one lease (seconds), however short
#: the lease: a floor that keeps a tiny ``lease_duration`` from busy-looping.
MIN_RENEWAL_INTERVAL = 0.05

#: Most run records a worker keeps while the store cannot take them; beyond
#: it the oldest are dropped (with one WARNING), so an outage never grows memory.
MAX_PENDING_RUNS = 10_000

#: Run records deleted by one prune call, and prune calls in one turn of the loop at most.
PRUNE_BATCH = 1000
PRUNE_BATCHES_PER_TURN = 3

#: Longest time between two prunes of the run history (seconds); a retention
#: shorter than ten times this is pruned every tenth of the retention.
MAX_PRUNE_INTERVAL = 60.0

#: Claims ahead of a due time (stores with :attr:`~pyramid_pyncette.repository.base.
#: Repository.claims_ahead`): the lead is this multiple of the slowest recent
#: claim, plus :data:`CLAIM_LEAD_MARGIN` seconds, at most :data:`MAX_CLAIM_LEAD`
#: seconds (and a tenth of the lease, and half the poll interval).
CLAIM_LEAD_FACTOR = 3.0
CLAIM_LEAD_MARGIN = 0.005
MAX_CLAIM_LEAD = 1.0

#: How many recent claims the lead is measured over.
CLAIM_TIMES_KEPT = 16

#: Which outcomes ``pyncette.history = failures`` keeps.
FAILED_OUTCOMES = frozenset({RUN_FAILED, RUN_LEASE_LOST})


@dataclass
class _Running:
    """A claimed run, queued or running, and when its lease was last known good."""

    lease: Lease
    info: JobInfo
    key: tuple[str, str | None]
    #: Monotonic time taken just before the claim or the last renewal that
    #: held: the lease lasts at least ``seconds`` from then.
    renewed: float = 0.0
    #: The lease's length, and the time between its renewals (0: renew at once).
    seconds: float = 0.0
    period: float = 0.0
    #: When a job thread took the run (the worker's clock), None until then.
    started_at: datetime | None = None
    #: How the lease was lost (see :meth:`Worker._lose`), None while it is held.
    lost_when: str | None = None
    #: A run claimed ahead of its due time starts no earlier than this (monotonic).
    not_before: float | None = None

    @property
    def renew_at(self) -> float:
        """When this lease is due for renewal (monotonic)."""
        return self.renewed + self.period

    def at_risk(self, now: float) -> bool:
        """Whether less than one renewal period of the lease may be left at ``now``.

        A run that is renewed on time never gets there: only a daemon that
        was paused, or could not reach the store, has runs at risk.
        """
        return now - self.renewed >= self.seconds - self.period


class _JobThreads:
    """``concurrency`` threads that run claimed jobs in the order given.

    A thread that finishes a job takes the next one from a shared deque
    without any lock (``popleft`` is atomic); only a thread that finds the
    deque empty sleeps on the condition. Short jobs thus cost no thread
    handoff each, unlike a future per job.

    A run claimed ahead of its due time (``not_before`` set) waits with a
    timer thread, not on a job thread, and joins the deque at its time; so a
    run due now never waits behind it.
    """

    def __init__(
        self,
        size: int,
        run: Callable[[_Running], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._monotonic = monotonic
        self._queue: deque[_Running] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._sleeping = 0
        self._closed = False
        #: Runs claimed ahead, waiting for their time: ``(not_before, order, run)``.
        self._timed: list[tuple[float, int, _Running]] = []
        self._timed_order = itertools.count()
        self._timer = threading.Condition(threading.Lock())
        self._timer_closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"pyncette-job-{i}", daemon=True)
            for i in range(size)
        ]
        self._timer_thread = threading.Thread(
            target=self._time, name="pyncette-job-timer", daemon=True
        )
        for thread in [*self._threads, self._timer_thread]:
            thread.start()

    def submit(self, items: list[_Running]) -> None:
        """Queue ``items`` to run as threads come free (a run claimed ahead at its time)."""
        now = self._monotonic()
        timed = [item for item in items if item.not_before is not None and item.not_before > now]
        if timed:
            items = [item for item in items if item.not_before is None or item.not_before <= now]
            with self._timer:
                for item in timed:
                    entry = (item.not_before or now, next(self._timed_order), item)
                    heapq.heappush(self._timed, entry)
                self._timer.notify()
        if not items:
            return
        self._queue.extend(items)
        with self._ready:
            if self._sleeping:
                self._ready.notify(len(items))

    def take_unstarted(self) -> list[_Running]:
        """Remove and return the items no thread has started: queued, or waiting for
        their time."""
        taken: list[_Running] = []
        # Under the timer's lock, a run is either waiting or already in the deque.
        with self._timer:
            taken.extend(item for _, _, item in sorted(self._timed))
            self._timed.clear()
            while True:
                try:
                    taken.append(self._queue.popleft())
                except IndexError:
                    break
        return taken

    def shutdown(self) -> None:
        """Let the threads finish what is queued (and the runs waiting for their time),
        then end them."""
        with self._timer:
            self._timer_closed = True
            self._timer.notify()
        self._timer_thread.join()
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _time(self) -> None:
        """Move each run claimed ahead to the deque when its time comes."""
        timed, timer = self._timed, self._timer
        with timer:
            while True:
                if timed:
                    delay = timed[0][0] - self._monotonic()
                    if delay <= 0:
                        self.submit([heapq.heappop(timed)[2]])
                    else:
                        timer.wait(delay)
                elif self._timer_closed:
                    return
                else:
                    timer.wait()

    def _work(self) -> None:
        queue_, ready = self._queue, self._ready
        while True:
            try:
                item = queue_.popleft()
            except IndexError:
                with ready:
                    while not queue_ and not self._closed:
                        self._sleeping += 1
                        ready.wait()
                        self._sleeping -= 1
                    if not queue_:
                        return
                continue
            self._run(item)


class Worker:
    """Claims, runs and completes jobs for one application.

    ``registry`` is the application registry (``pyramid_pyncette`` included).
    Keyword arguments override the ``pyncette.*`` settings (``queues``: the
    names of the queues to claim from, as ``pscheduler --queue`` gives them;
    ``None`` keeps ``pyncette.queues``); ``clock`` returns the current UTC
    time and ``monotonic`` the seconds elapsed since any fixed point, to time
    lease renewals (tests pass fake ones).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        concurrency: int | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease_duration: float | None = None,
        queues: Iterable[str] | None = None,
        history: str | None = None,
        history_retention: float | None = None,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry
        self.scheduler = registry.scheduler
        settings = self.scheduler.settings
        self.concurrency = concurrency or settings.concurrency
        self.batch_size = batch_size or settings.batch_size
        self.poll_interval = poll_interval or settings.poll_interval
        self.lease_duration = lease_duration or settings.lease_duration
        #: The queues this worker claims from; None: every queue.
        self.queues: frozenset[str] | None = (
            settings.queues if queues is None else _queue_names(queues)
        )
        #: Which runs are recorded: ``'all'``, ``'failures'`` or ``'none'``.
        self.history = settings.history if history is None else _history_mode(history)
        #: Seconds run records are kept before this worker prunes them.
        self.history_retention = (
            settings.history_retention if history_retention is None else history_retention
        )
        self.heartbeat_interval = min(
            settings.effective_heartbeat_interval, self.lease_duration / 3
        )
        self._requests = JobRequests(registry, settings.base_url)
        #: Retry options of jobs that set none (``pyncette.max_retries`` and friends).
        self.retry_defaults = settings.retry_defaults
        self.clock = clock or self.scheduler.clock
        self._monotonic = monotonic or time.monotonic
        self.id = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.stats: Counter[str] = Counter()
        self._claims = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._running: dict[tuple[str, str | None], _Running] = {}
        self._finished: queue.SimpleQueue[tuple[tuple[str, str | None], Outcome]] = (
            queue.SimpleQueue()
        )
        #: Finished runs whose lease may have expired, to check before writing them.
        self._unconfirmed: list[tuple[_Running, Outcome]] = []
        #: Outcomes collected and not yet written.
        self._pending: list[Outcome] = []
        #: Run records not yet written (they go with the next outcomes written).
        self._pending_runs: list[RunRecord] = []
        #: Most records kept in ``_pending_runs`` (see :data:`MAX_PENDING_RUNS`).
        self.max_pending_runs = MAX_PENDING_RUNS
        #: Whether records were dropped since the pending ones were last written.
        self._dropped_runs = False
        #: When the run history is next pruned (the worker's clock); None: at the next turn.
        self._next_prune: datetime | None = None
        #: No held lease is due for renewal before this (monotonic; it may be early).
        self._renewal_due = math.inf
        self._backoff = Backoff(first=0.1, cap=MAX_BACKOFF, jitter=0.5)
        #: Mean run time of recent jobs (seconds), None until jobs have run.
        self._mean_duration: float | None = None
        #: The daemon's metrics (:class:`~pyramid_pyncette.metrics.WorkerMetrics`), fed a
        #: batch at a time; None (the default): none are kept.
        self.metrics: WorkerMetrics | None = None
        #: When the loop last began a turn (:attr:`monotonic`), None before the first.
        self.last_tick: float | None = None
        #: How long recent claims took, from the start of their turn (seconds).
        self._claim_times: deque[float] = deque(maxlen=CLAIM_TIMES_KEPT)
        #: The next due time the store named (claims ahead only), and the latest
        #: due time a claim was already made ahead for.
        self._next_due_at: datetime | None = None
        self._claimed_ahead_to: datetime | None = None

    # -- helpers ----------------------------------------------------------

    @property
    def repository(self) -> Repository:
        """The store this worker drains."""
        return self.scheduler.repository

    @property
    def monotonic(self) -> Callable[[], float]:
        """The clock that times leases and the loop's turns (seconds)."""
        return self._monotonic

    @property
    def store_failures(self) -> int:
        """How many store calls in a row have failed (0: the last one succeeded)."""
        return self._backoff.failures

    @property
    def jobs_in_hand(self) -> int:
        """How many claimed runs this worker holds: running, or waiting for a thread."""
        return len(self._running)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once running jobs have finished."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Poll now (e.g. a job was just added in this process)."""
        self._wake.set()

    def _token(self) -> str:
        self._claims += 1
        return f"{self.id}-{self._claims:x}"

    def _notify(self, event: object) -> None:
        notify_subscribers(self.registry, event, log, "the worker goes on")

    def _execute(
        self, lease: Lease, info: JobInfo | None = None, clock: Callable[[], datetime] | None = None
    ) -> Outcome:
        task = self.scheduler.tasks.get(lease.job.task)
        started = time.perf_counter()
        outcome = run_job(
            self.registry,
            task,
            lease,
            clock or self.clock,
            info=info,
            requests=self._requests,
            retry_defaults=self.retry_defaults,
        )
        elapsed = time.perf_counter() - started
        mean = self._mean_duration
        # An exponential moving average; a lost update between threads is harmless.
        self._mean_duration = elapsed if mean is None else mean + (elapsed - mean) * 0.05
        return outcome

    @property
    def prefetch(self) -> int:
        """How many claimed jobs may wait for a thread beyond ``concurrency``.

        Short jobs are claimed up to two batches ahead: the store is asked in
        batches rather than once per finished job, and the threads still have
        work while the loop waits for the next claim. The queue is sized so
        that its expected wait stays under 5% of the lease (a lease is never
        spent waiting). Nothing is claimed ahead until jobs have been timed.
        """
        mean = self._mean_duration
        if mean is None:
            return 0
        budget = self.lease_duration * PREFETCH_LEASE_SHARE * self.concurrency
        return min(2 * self.batch_size, int(budget / max(mean, 0.001)))

    def _record(self, outcome: Outcome) -> None:
        self.stats["succeeded" if outcome.succeeded else "failed"] += 1

    # -- run history -------------------------------------------------------

    def _run_record(
        self,
        lease: Lease,
        outcome: str,
        started_at: datetime,
        finished_at: datetime,
        error: str | None = None,
        attempt: int | None = None,
    ) -> RunRecord | None:
        """The record of one run of ``lease`` (of its ``attempt``, by default the lease's);
        None when ``history`` keeps no such run."""
        history = self.history
        if history != "all" and (history == "none" or outcome not in FAILED_OUTCOMES):
            return None
        job = lease.job
        # One record per run: built without the frozen dataclass's __init__.
        return new_run_record(
            job.id,
            job.task,
            job.queue,
            lease.scheduled_at,
            started_at,
            finished_at,
            job.attempts if attempt is None else attempt,
            outcome,
            None if error is None else run_error(error),
            self.host,
            os.getpid(),
            self.id,
        )

    def _finished_record(
        self, lease: Lease, outcome: Outcome, started_at: datetime | None
    ) -> RunRecord | None:
        """The record of a run that ended with ``outcome`` (its result is written)."""
        return self._run_record(
            lease,
            RUN_SUCCEEDED if outcome.succeeded else RUN_FAILED,
            outcome.finished_at if started_at is None else started_at,
            outcome.finished_at,
            None if outcome.succeeded else outcome.error,
        )

    def _lost_record(
        self, lease: Lease, outcome: Outcome, started_at: datetime | None, when: str | None
    ) -> RunRecord | None:
        """The record of a run that lost its lease ``when`` (its result is discarded)."""
        return self._run_record(
            lease,
            RUN_LEASE_LOST,
            outcome.finished_at if started_at is None else started_at,
            outcome.finished_at,
            f"lost its lease {when or 'while running'}; its result was discarded",
        )

    def _keep_runs(self, records: Iterable[RunRecord | None]) -> None:
        """Hold ``records`` until the next store call that writes outcomes writes them.

        Beyond :attr:`max_pending_runs` (the store has not taken any for a
        while) the oldest are dropped, with one WARNING until records are
        written again.
        """
        pending = self._pending_runs
        pending.extend(record for record in records if record is not None)
        excess = len(pending) - self.max_pending_runs
        if excess > 0:
            del pending[:excess]
            self.stats["runs_dropped"] += excess
            if not self._dropped_runs:
                self._dropped_runs = True
                log.warning(
                    "the store has taken no run records for a while: the oldest are dropped, "
                    "the newest %d kept until it does",
                    self.max_pending_runs,
                )

    def _written(self) -> None:
        """The pending outcomes and run records were written."""
        self._pending = []
        self._pending_runs = []
        self._dropped_runs = False

    def _prune_history(self) -> None:
        """Delete run records older than ``history_retention``, every so often.

        At most :data:`PRUNE_BATCHES_PER_TURN` calls of :data:`PRUNE_BATCH`
        records each: a backlog is worked off over the next turns, never in
        one huge delete. The pace follows the worker's clock. A failure is
        logged and tried again at the next prune; it never stops the loop.
        """
        now = self.clock()
        if self._next_prune is not None and now < self._next_prune:
            return
        interval = min(MAX_PRUNE_INTERVAL, self.history_retention / 10)
        before = now - timedelta(seconds=self.history_retention)
        try:
            for _ in range(PRUNE_BATCHES_PER_TURN):
                pruned = self.repository.prune_runs(before, PRUNE_BATCH)
                self.stats["runs_pruned"] += pruned
                if pruned < PRUNE_BATCH:
                    break
            else:
                # More are older than the retention: go on at the next turn.
                self._next_prune = now
                return
        except Exception as exc:
            log.warning(
                "could not prune the run history (%s); trying again in %.0fs",
                _describe(exc),
                interval,
            )
            log.debug("prune error details", exc_info=True)
        self._next_prune = now + timedelta(seconds=interval)

    # -- synchronous draining (tests, run_pending) -------------------------

    def run_pending(self, now: datetime | None = None) -> int:
        """Run every job due at ``now`` in this thread; return how many runs happened.

        Each job runs at most once per call: a run that is due again at the
        same instant (a failure with ``failure_mode='unlock'``) waits for the
        next call. Run records are written with the outcomes of each batch.
        """
        now = now or self.clock()
        seen: set[str] = set()
        # Runs due again at the same instant stay claimed (so the next claim
        # moves past them) and are given back once everything else ran.
        held: list[Lease] = []
        total = 0
        try:
            while True:
                token = self._token()
                leases = self.repository.claim(
                    now, self.batch_size, token, self.lease_duration, self.queues
                )
                if not leases:
                    return total
                leases, outcomes, runs = self._skip_unrunnable(leases, now)
                held.extend(lease for lease in leases if lease.job.id in seen)
                finished = []
                for lease in leases:
                    if lease.job.id in seen:
                        continue
                    seen.add(lease.job.id)
                    info = JobInfo.for_lease(lease)
                    outcome = self._execute(lease, info, clock=lambda: now)
                    total += 1
                    if info.lease_lost:
                        when = LOST_AT_COMMIT
                        self._report_lost(lease, when)
                        runs.append(self._lost_record(lease, outcome, now, when))
                    else:
                        finished.append(outcome)
                        runs.append(self._finished_record(lease, outcome, now))
                records = [record for record in runs if record is not None]
                writes = _pending(outcomes + finished)
                if writes or records:
                    self.repository.complete(writes, records)
                for outcome in finished:
                    self._record(outcome)
        finally:
            if held:
                self.repository.release(held)

    # -- the loop ---------------------------------------------------------

    def run(self, until_idle: bool = False) -> None:
        """Run the lease loop until :meth:`stop` (or, with ``until_idle``, until nothing is due)."""
        if not self._prepare():
            return
        log.info(
            "worker %s started (queues %s, concurrency %d, batch %d, poll every %ss, store %s)",
            self.id,
            "all" if self.queues is None else " ".join(sorted(self.queues)),
            self.concurrency,
            self.batch_size,
            self.poll_interval,
            self.scheduler.settings.redacted_url(),
        )
        self._notify(WorkerStarting(self, self.registry))
        threads = _JobThreads(self.concurrency, self._run_one, self._monotonic)
        # Stores that announce new jobs (PostgreSQL, Redis, the probes of SQLite and
        # MySQL/MariaDB) wake the loop at once.
        repository = self.repository
        stop_listener = (
            repository.start_listener(self.wake) if isinstance(repository, Announcer) else None
        )
        try:
            while not self._stopping.is_set():
                timeout = self._cycle(threads, until_idle)
                if timeout is None:
                    break
                if timeout > 0:
                    # A turn at least every poll interval: the health check counts on it.
                    self._wake.wait(min(timeout, self.poll_interval))
        finally:
            if stop_listener is not None:
                stop_listener()
            self._shutdown(threads)
            self.repository.release_thread_connection()
            self._notify(WorkerStopping(self, self.registry))
            log.info(
                "worker %s stopped (%d succeeded, %d failed)",
                self.id,
                self.stats["succeeded"],
                self.stats["failed"],
            )

    def _cycle(self, threads: Any, until_idle: bool = False) -> float | None:
        """One turn of the loop: collect, renew, write and claim.

        Returns how long to wait (seconds) before the next turn, unless woken
        earlier, or None when ``until_idle`` and nothing is left to do.
        """
        self._wake.clear()
        self.last_tick = self._monotonic()
        want = claimed = 0
        try:
            self._pending.extend(self._collect())
            self._pending.extend(self._confirm_leases())
            self._heartbeat(self._monotonic())
            capacity = self.concurrency + self.prefetch
            # Runs claimed ahead wait for their time without a thread.
            in_hand = len(self._running) - self._waiting_runs()
            want = min(capacity - in_hand, self.batch_size)
            # Claim when a thread would idle, or when a batch's worth is free.
            idle = in_hand < self.concurrency
            if not (want > 0 and (idle or want * 2 >= min(capacity, self.batch_size))):
                want = 0
            if want > 0 and not self._stopping.is_set():
                # Finished runs and their records are written by the same call (one round trip).
                claimed = self._claim_and_start(threads, want)
            elif self._pending or self._pending_runs:
                self.repository.complete(_pending(self._pending), list(self._pending_runs))
                self._written()
            self._store_recovered()
        except Exception as exc:
            self._store_failed(exc)
            return 0.0
        self._prune_history()
        if until_idle and not claimed and not self._running and self._finished.empty():
            return None
        if self._pending:
            return 0.0  # the claim parked unreadable jobs: write that now, within their lease
        if want > 0 and claimed == want:
            return 0.0  # a full batch: more may be due right now
        timeout = self._until_next_renewal()
        if timeout is None:
            timeout = self.heartbeat_interval
        if want > 0:
            try:
                timeout = min(timeout, self._until_next_due())
            except Exception as exc:
                self._store_failed(exc)
                return 0.0
        return max(0.0, timeout)

    def _prepare(self) -> bool:
        """Set up the store and upsert static jobs, waiting out store outages."""
        while not self._stopping.is_set():
            try:
                self.repository.setup()
                for job in self.scheduler.sync_periodic_jobs():
                    log.info("periodic job %r scheduled (next run %s)", job.id, job.next_run_at)
                self._backoff.reset()
                return True
            except Exception as exc:
                self._store_failed(exc)
        return False

    def _store_failed(self, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.store_error()
        delay = self._backoff.next_delay()
        transient = self.scheduler.is_transient(exc)
        if self._backoff.failures == 1:
            if transient:
                log.error("store unavailable (%s); retrying with backoff", _describe(exc))
                log.debug("store error details", exc_info=True)
            else:
                log.error("store error: %s; retrying with backoff", _describe(exc), exc_info=True)
        else:
            log.warning(
                "store still failing (%d times): %s; next try in %.1fs",
                self._backoff.failures,
                _describe(exc),
                delay,
            )
        self._stopping.wait(delay)

    def _store_recovered(self) -> None:
        if self._backoff.failures:
            log.info("store reachable again after %d failed tries", self._backoff.failures)
            self._backoff.reset()

    def _until_next_due(self) -> float:
        """Seconds until the earliest due time, at most the poll interval.

        The store measures it against its own clock when claims use that
        clock: a local clock ahead of the store's must not make the loop spin.
        Otherwise it is measured against this worker's clock read before the
        call, so the call's own time is taken off. A store that
        :attr:`~pyramid_pyncette.repository.base.Repository.claims_ahead`
        is claimed from a little ahead of the due time (see :meth:`_claim_lead`).
        """
        repository = self.repository
        now = self.clock()
        delay = repository.next_due_delay(now, self.queues)
        if delay is None:
            self._next_due_at = None
            return self.poll_interval
        due = now + timedelta(seconds=delay)
        if not repository.store_clock:
            delay -= (self.clock() - now).total_seconds()
        if repository.claims_ahead:
            self._next_due_at = due
            ahead_to = self._claimed_ahead_to
            if ahead_to is not None and ahead_to > now + timedelta(seconds=self._claim_lead()):
                # Later than any claim could have reached: the clock was set back.
                ahead_to = self._claimed_ahead_to = None
            if ahead_to is None or due > ahead_to:
                # Not claimed ahead for yet: wake the lead before it is due.
                delay -= self._claim_lead()
        return max(0.0, min(self.poll_interval, delay))

    def _waiting_runs(self) -> int:
        """How many runs claimed ahead are waiting for their due time."""
        if not self.repository.claims_ahead:
            return 0
        now = self._monotonic()
        return sum(
            1
            for running in self._running.values()
            if running.not_before is not None and running.not_before > now
        )

    def _claim_lead(self) -> float:
        """How far ahead of a due time an idle worker claims (seconds; 0: not ahead).

        Three times the slowest of the recent claims (measured from the start
        of their turn, so the loop's own work counts) and a small margin: the
        claim has returned by the due time even when the loop was busy
        reading the next due time (one more store call) as it came within
        the lead. Bounded by
        :data:`MAX_CLAIM_LEAD`, a tenth of the lease and half the poll
        interval, which keeps a held lease short and never claims a job much
        before it is due. 0 for stores that do not claim ahead and before
        any claim was timed.
        """
        if not self.repository.claims_ahead or not self._claim_times:
            return 0.0
        lead = max(self._claim_times) * CLAIM_LEAD_FACTOR + CLAIM_LEAD_MARGIN
        return min(lead, MAX_CLAIM_LEAD, self.lease_duration / 10, self.poll_interval / 2)

    def _claim_until(self, now: datetime) -> datetime | None:
        """How far ahead of ``now`` the next claim takes jobs: ``now`` plus the claim
        lead when the known next due time is within it (see :meth:`_until_next_due`),
        else None (a plain claim).

        A claim ahead takes every job due within the lead, so jobs due close
        together are each claimed at least one claim's time before they are due.
        """
        due = self._next_due_at
        if due is None or not self.repository.claims_ahead:
            return None
        lead = self._claim_lead()
        until = now + timedelta(seconds=lead)
        if lead <= 0 or due > until:
            return None
        ahead_to = self._claimed_ahead_to
        self._claimed_ahead_to = until if ahead_to is None else max(ahead_to, until)
        return until

    def _until_next_renewal(self) -> float | None:
        """Seconds until a running job's lease is due for renewal, or None if none is held."""
        due = self._renewal_due
        return None if due == math.inf else due - self._monotonic()

    def _claim_and_start(self, threads: Any, want: int) -> int:
        """Write the pending outcomes and run records, claim up to ``want`` runs from
        :attr:`queues` and queue them; return how many were claimed."""
        outcomes = _pending(self._pending)
        # Read before the claim: each lease lasts at least its length from here.
        claimed_at = self._monotonic()
        wall = self.clock()
        # The monotonic time of ``wall`` at the latest: a run claimed ahead never starts early.
        anchor = self._monotonic()
        until = self._claim_until(wall)
        if until is None:
            claimed = self.repository.complete_and_claim(
                outcomes,
                wall,
                want,
                self._token(),
                self.lease_duration,
                self.queues,
                list(self._pending_runs),
            )
        else:
            claimed = self.repository.complete_and_claim_ahead(
                outcomes,
                wall,
                until,
                want,
                self._token(),
                self.lease_duration,
                self.queues,
                list(self._pending_runs),
            )
        if self.last_tick is not None:
            self._claim_times.append(self._monotonic() - min(self.last_tick, claimed_at))
        self._written()
        if outcomes:
            log.debug("completed %d run(s)", len(outcomes))
        if self.metrics is not None:
            self.metrics.claimed(len(claimed))
        self._lose_reclaimed(claimed)
        leases, unreadable, records = self._skip_unrunnable(claimed, self.clock())
        self._pending.extend(unreadable)
        self._keep_runs(records)
        started = []
        early = []
        for lease in leases:
            key = (lease.job.id, lease.token)
            seconds = self._lease_seconds(lease)
            running = _Running(
                lease,
                JobInfo.for_lease(lease),
                key,
                renewed=claimed_at,
                seconds=seconds,
                period=self._renewal_period(seconds),
            )
            self._running[key] = running
            # A run claimed ahead starts at its due time, timed from the claim (monotonic).
            wait = 0.0 if until is None else (lease.attempt_due_at - wall).total_seconds()
            if until is not None and wait > 0:
                running.not_before = anchor + min(wait, (until - wall).total_seconds())
                early.append(running)
            else:
                started.append(running)
            if lease.token is not None:
                self._renewal_due = min(self._renewal_due, running.renew_at)
        # Runs claimed ahead wait on the job threads' timer, not on a thread.
        started += sorted(early, key=lambda running: running.not_before or 0.0)
        if started:
            threads.submit(started)
            log.debug("claimed %d job(s) with token %s", len(leases), leases[0].token)
        self.stats["claimed"] += len(leases)
        return len(claimed)

    def _lease_seconds(self, lease: Lease) -> float:
        """How long a claim or renewal of ``lease`` holds: the job's own lease, or the default."""
        return lease.job.lease_duration or self.lease_duration

    def _renewal_period(self, seconds: float) -> float:
        """Time between renewals of a ``seconds`` lease: a third of it at most."""
        return max(MIN_RENEWAL_INTERVAL, min(self.heartbeat_interval, seconds / 3))

    def _lose_reclaimed(self, claimed: list[Lease]) -> None:
        """Report the runs in progress of jobs this claim took again.

        A store holds one lease per job, so a new claim of a job (after
        ``retry_job``, or once the old lease expired) means that the run
        still going under an older claim has lost its lease, even though
        this daemon is the one that claimed the job again.
        """
        ids = {lease.job.id for lease in claimed if not lease.paused}
        for running in self._held():
            if running.lease.job.id in ids:
                self._lose(running, "when the job was claimed again")

    def _skip_unrunnable(
        self, leases: list[Lease], now: datetime
    ) -> tuple[list[Lease], list[Outcome], list[RunRecord | None]]:
        """Report the claimed runs not to start: ``(runnable leases, outcomes, records)``.

        Misfires (the claim already deleted or advanced them) are logged,
        fire :class:`JobSkipped` and are recorded as ``'skipped'``; jobs whose
        stored row cannot be run are to be parked as failed with the problem
        as their error (the outcomes returned, for the caller to write) and
        are recorded as ``'failed'``. Paused jobs leave no record. The
        records start and end at ``now``, the time of the claim.
        """
        unreadable = []
        records = []
        for lease in leases:
            if lease.paused:
                log.debug("job %r is paused: taken off the schedule", lease.job.id)
            elif lease.job.problem is not None:
                log.error(
                    "job %r cannot run and is parked as failed: %s", lease.job.id, lease.job.problem
                )
                unreadable.append(
                    Outcome(lease, False, now, error=lease.job.problem, permanent=True)
                )
                records.append(self._run_record(lease, RUN_FAILED, now, now, lease.job.problem))
            elif lease.skipped:
                # A misfire is a run's first try (the claim left the count untouched).
                records.append(
                    self._run_record(lease, RUN_SKIPPED, now, now, attempt=lease.attempt + 1)
                )
                self.stats["skipped"] += 1
                log.warning(
                    "job %r (task %r) skipped: its run due %s was claimed %.3fs late, "
                    "more than its misfire_grace_time",
                    lease.job.id,
                    lease.job.task,
                    lease.scheduled_at.isoformat(),
                    lease.lateness,
                )
                self._notify(
                    JobSkipped(lease.job, self.registry, lease.scheduled_at, lease.lateness)
                )
        self.stats["failed"] += len(unreadable)
        if self.metrics is not None:
            not_run = [
                (lease, RUN_SKIPPED if lease.skipped else RUN_FAILED, None, now)
                for lease in leases
                if not lease.paused and not lease.runnable
            ]
            if not_run:
                self.metrics.finished(not_run)
        return [lease for lease in leases if lease.runnable], unreadable, records

    def _run_one(self, running: _Running) -> None:
        """Run one job on a job thread and hand its outcome to the loop."""
        running.started_at = self.clock()
        if running.info.lease_lost:
            # Lost while it waited for a thread: the claim that took it runs it.
            outcome = Outcome(
                running.lease,
                False,
                self.clock(),
                error="lease lost before start",
                retry_defaults=self.retry_defaults,
            )
        else:
            try:
                outcome = self._execute(running.lease, running.info)
            except BaseException as exc:  # run_job never raises; stay safe anyway
                outcome = Outcome(
                    running.lease,
                    False,
                    self.clock(),
                    error=repr(exc),
                    retry_defaults=self.retry_defaults,
                )
        finished = self._finished
        finished.put((running.key, outcome))
        done = finished.qsize()
        # Wake the loop when a thread is about to idle or a batch of results waits.
        if len(self._running) - done <= self.concurrency or done * 2 >= self.batch_size:
            self._wake.set()

    def _collect(self) -> list[Outcome]:
        """Take the finished runs; return the outcomes to write.

        A run that lost its lease is dropped (it was reported when lost, or is
        now if its own transaction found it lost) and recorded as
        ``'lease_lost'``. A run whose lease may have run out is kept back for
        :meth:`_confirm_leases`, so that no result is ever discarded unseen.
        The others are recorded with their outcome.
        """
        outcomes = []
        records = []
        ran: list[tuple[_Running, Outcome, bool]] | None = None if self.metrics is None else []
        now = self._monotonic()
        while True:
            try:
                key, outcome = self._finished.get_nowait()
            except queue.Empty:
                break
            running = self._running.pop(key, None)
            if running is not None and running.info.lease_lost:
                self._lose(running, LOST_AT_COMMIT)
                log.info("job %r finished after losing its lease; its result is discarded", key[0])
                records.append(
                    self._lost_record(running.lease, outcome, running.started_at, running.lost_when)
                )
                if ran is not None:
                    ran.append((running, outcome, True))
                continue
            if (
                running is not None
                and running.lease.token is not None
                and not outcome.completed
                and running.at_risk(now)
            ):
                self._unconfirmed.append((running, outcome))
                continue
            self._record(outcome)
            outcomes.append(outcome)
            if running is not None:
                records.append(self._finished_record(running.lease, outcome, running.started_at))
                if ran is not None:
                    ran.append((running, outcome, False))
        self._keep_runs(records)
        if ran:
            self._observe(ran)
        return outcomes

    def _confirm_leases(self) -> list[Outcome]:
        """Check the runs kept back by :meth:`_collect`; return the outcomes still held.

        One store call renews the leases of those runs: the renewal tells
        which leases are held (those results are written next, well within
        the renewed lease) and which are lost (reported, not written, and
        not counted). If the store fails, the runs stay kept back.
        """
        if not self._unconfirmed:
            return []
        self._extend([running for running, _ in self._unconfirmed], "before its result was written")
        checked, self._unconfirmed = self._unconfirmed, []
        outcomes = []
        records = []
        for running, outcome in checked:
            if running.info.lease_lost:
                records.append(
                    self._lost_record(running.lease, outcome, running.started_at, running.lost_when)
                )
            else:
                self._record(outcome)
                outcomes.append(outcome)
                records.append(self._finished_record(running.lease, outcome, running.started_at))
        self._keep_runs(records)
        if self.metrics is not None:
            self._observe(
                [(running, outcome, running.info.lease_lost) for running, outcome in checked]
            )
        return outcomes

    def _observe(self, ran: list[tuple[_Running, Outcome, bool]]) -> None:
        """Count and time finished runs in :attr:`metrics` (``(run, outcome, lost)`` each)."""
        assert self.metrics is not None
        self.metrics.finished(
            (
                running.lease,
                RUN_LEASE_LOST if lost else RUN_SUCCEEDED if outcome.succeeded else RUN_FAILED,
                running.started_at,
                outcome.finished_at,
            )
            for running, outcome, lost in ran
        )

    def _held(self) -> list[_Running]:
        """The running (or queued) runs that hold a lease not known to be lost."""
        return [
            running
            for running in list(self._running.values())
            if running.lease.token is not None and not running.info.lease_lost
        ]

    def _heartbeat(self, now: float | None = None) -> None:
        """Renew the leases of running jobs in one store call.

        Without ``now`` every lease is renewed. With ``now`` (monotonic) only
        if a lease is due for renewal: then every lease within half a renewal
        period of being due is renewed too, so that renewals come in batches.
        """
        if now is not None and now < self._renewal_due:
            return  # the common case, without looking at every run
        runs = self._held()
        if now is not None:
            if any(running.renew_at <= now for running in runs):
                runs = [r for r in runs if r.renew_at - r.period / 2 <= now]
            else:
                runs = []
        if runs:
            self._extend(runs, "while running")
        # Finished and lost runs leave only a stale (early) time behind, set right here.
        self._renewal_due = min((running.renew_at for running in self._held()), default=math.inf)

    def _extend(self, runs: list[_Running], when: str) -> None:
        """Renew the leases of ``runs`` in one store call; report the ones lost.

        The store answers with job ids, so ``runs`` holds each job at most
        once: a new claim of a job marks any older run of it lost
        (:meth:`_lose_reclaimed`), and lost runs are never renewed.
        """
        started = self._monotonic()
        leases = []
        for running in runs:
            token = running.lease.token
            assert token is not None  # callers pass only runs that hold a lease
            leases.append((running.lease.job.id, token, self._lease_seconds(running.lease)))
        held = self.repository.extend(self.clock(), leases)
        for running in runs:
            if running.lease.job.id in held:
                running.renewed = started
            else:
                self._lose(running, when)

    def _lose(self, running: _Running, when: str) -> None:
        """Mark ``running`` as having lost its lease ``when``: one WARNING and one
        :class:`LeaseLost` (once, however often it is found lost)."""
        if running.lost_when is not None:
            return
        running.lost_when = when
        running.info.lease_lost = True
        self._report_lost(running.lease, when)

    def _report_lost(self, lease: Lease, when: str) -> None:
        self.stats["lease_lost"] += 1
        if self.metrics is not None:
            self.metrics.lease_lost()
        log.warning(
            "job %r lost its lease %s (another daemon may run it); its result is discarded",
            lease.job.id,
            when,
        )
        self._notify(LeaseLost(lease.job, self.registry, lease.scheduled_at))

    def _shutdown(self, threads: _JobThreads) -> None:
        unstarted = threads.take_unstarted()
        # An at-most-once claim already moved its job past the run: it runs before the
        # daemon stops (at its due time, when claimed ahead), or it would be lost.
        kept = [running for running in unstarted if running.lease.token is None]
        if kept:
            log.info("running %d at-most-once run(s) claimed before the stop", len(kept))
            threads.submit(kept)
            unstarted = [running for running in unstarted if running.lease.token is not None]
        for running in unstarted:
            self._running.pop(running.key, None)
        if self._running:
            log.info("waiting for %d running job(s) to finish", len(self._running))
        while self._running:
            timeout = self._until_next_renewal()
            self._wake.wait(max(0.0, self.heartbeat_interval if timeout is None else timeout))
            self._wake.clear()
            self._pending.extend(self._collect())
            try:
                self._pending.extend(self._confirm_leases())
                self._heartbeat(self._monotonic())
            except Exception as exc:
                log.warning("heartbeat failed during shutdown: %s", _describe(exc))
        threads.shutdown()
        self._pending.extend(self._collect())
        self._finish_writes([r.lease for r in unstarted])

    def _finish_writes(self, unstarted: list[Lease]) -> None:
        pending = self._pending
        backoff = Backoff(first=0.2, cap=2.0)
        for attempt in range(5):
            try:
                pending.extend(self._confirm_leases())
                if pending or self._pending_runs:
                    self.repository.complete(_pending(pending), list(self._pending_runs))
                    pending.clear()
                    self._pending_runs = []
                if unstarted:
                    self.repository.release(unstarted)
                    self.stats["released"] += len(unstarted)
                    unstarted = []
                return
            except Exception as exc:
                log.warning("could not write final results (try %d): %s", attempt + 1, exc)
                time.sleep(backoff.next_delay())
        log.error(
            "gave up writing %d result(s), %d run record(s) and %d release(s); "
            "those leases expire on their own",
            len(pending) + len(self._unconfirmed),
            len(self._pending_runs),
            len(unstarted),
        )


#: How a run whose own transaction found its lease taken over lost it.
LOST_AT_COMMIT = "before its transaction could commit"


def _queue_names(queues: Iterable[str]) -> frozenset[str]:
    """``queues`` as a set of checked queue names, or an error naming the fix."""
    if isinstance(queues, str):
        queues = queues.split()
    names = frozenset(queues)
    if not names:
        raise ValueError("queues names no queue: give at least one name, or None for every queue")
    for name in sorted(names, key=str):
        problem = queue_name_problem(name)
        if problem is not None:
            raise ValueError(f"queues: {problem}")
    return names


def _history_mode(history: str) -> str:
    if history not in HISTORY_CHOICES:
        raise ValueError(f"history {history!r} is not one of {', '.join(HISTORY_CHOICES)}")
    return history


def _pending(outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes still to write (``transactional=True`` runs completed themselves)."""
    return [outcome for outcome in outcomes if not outcome.completed]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
