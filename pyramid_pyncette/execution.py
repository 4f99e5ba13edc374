"""Running one job like a view: a real Pyramid request, its own transaction.

The task is called as ``func(request, *args, **kwargs)``. ``request`` is made
by the application's request factory with the request extensions applied
(so ``request.dbsession``, ``request.route_url`` and friends work),
``request.tm`` is a fresh explicit transaction manager, and ``request.job``
describes the run. The transaction commits if the function returns and
aborts if it raises.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import transaction
from pyramid.interfaces import IRequestExtensions, IRequestFactory
from pyramid.request import Request
from pyramid.threadlocal import manager as threadlocal_manager

from .events import JobFailed, JobStarted, JobSucceeded, notify_subscribers
from .jobs import DEFAULT_RETRIES, MAX_RUN_ERROR_LENGTH, Lease, Outcome, RetryDefaults
from .policy import describe_failure, plan_completion, unknown_task_error
from .repository.base import session_store
from .tasks import Task

if TYPE_CHECKING:
    from pyramid.registry import Registry

log = logging.getLogger(__name__)


class RecentFailures:
    """The ids of jobs whose failure was logged with its traceback, newest last.

    A job's first failure in this process logs its traceback; further
    failures log one line, the traceback at DEBUG, until the job succeeds.
    At most ``size`` ids are kept (the least recent is forgotten first), so
    memory stays bounded however many jobs fail.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, job_id: str) -> bool:
        """Remember a failure of ``job_id``; whether it is the first one remembered."""
        with self._lock:
            if job_id in self._ids:
                self._ids.move_to_end(job_id)
                return False
            self._ids[job_id] = None
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return True

    def forget(self, job_id: str) -> None:
        """``job_id`` succeeded: its next failure logs its traceback again."""
        if job_id in self._ids:  # a lock-free look first: most runs never failed
            with self._lock:
                self._ids.pop(job_id, None)


#: The failures this process logged with their traceback.
recent_failures = RecentFailures()


def log_failure(outcome: Outcome, problem: str, exc: BaseException | None = None) -> None:
    """Log a failed run in one line: the attempt, the problem and what happens next.

    The next step is read from the plan the store will apply to ``outcome``.
    ``exc``'s traceback goes with the line the first time the job fails in
    this process, at DEBUG after that. Parked jobs are logged at ERROR,
    others at WARNING.
    """
    job = outcome.lease.job
    try:
        attempt, next_step = describe_failure(outcome, plan_completion(outcome))
    except Exception:  # never let the description of a failure lose the failure
        log.exception("job %r: could not describe what follows its failure", job.id)
        attempt, next_step = f"attempt {outcome.lease.attempt}", "see the job's state"
    level = logging.ERROR if next_step.startswith("parked") else logging.WARNING
    first = recent_failures.first(job.id)
    log.log(
        level,
        "job %r (task %r) failed on %s: %s; %s",
        job.id,
        job.task,
        attempt,
        _one_line(problem),
        next_step,
        exc_info=exc if first else None,
    )
    if exc is not None and not first:
        log.debug("traceback of job %r, %s:", job.id, attempt, exc_info=exc)


#: Longest problem text in a failure's log line (the stored error keeps more).
MAX_LOGGED_PROBLEM = 1000


def _one_line(text: str) -> str:
    text = " ".join(text.splitlines())
    if len(text) > MAX_LOGGED_PROBLEM:
        return text[: MAX_LOGGED_PROBLEM - 3] + "..."
    return text


_TRACEBACK_HEAD = "Traceback (most recent call last):"


def run_error(text: str, limit: int = MAX_RUN_ERROR_LENGTH) -> str:
    """The error a run record keeps: the first lines of ``text``, at most ``limit`` characters.

    A Python traceback is turned around first: its last exception's lines
    (``TaskError: boom``) come first, then the frames, so that the first
    line of a record always says what went wrong, however deep the
    traceback. Whole lines are kept while they fit; a first line longer
    than ``limit`` is cut, and ``...`` marks the cut.
    """
    lines = _exception_first(text.splitlines())
    kept: list[str] = []
    size = 0
    for line in lines:
        extra = len(line) + (1 if kept else 0)
        if size + extra > limit:
            break
        kept.append(line)
        size += extra
    if len(kept) == len(lines):
        return "\n".join(kept)
    while kept and size + 4 > limit:  # room for the marker line
        size -= len(kept.pop()) + (1 if kept else 0)
    if not kept:
        return lines[0][: limit - 3] + "..."
    return "\n".join([*kept, "..."])


def _exception_first(lines: list[str]) -> list[str]:
    """The lines of a traceback with its final exception's lines moved to the front."""
    if not lines or lines[0] != _TRACEBACK_HEAD:
        return lines
    # The last frame: a '  File "..."' line, then its indented source and markers.
    last = max((i for i, line in enumerate(lines) if line.startswith('  File "')), default=None)
    if last is None:
        return lines
    end = last + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    if end == len(lines):
        return lines
    return lines[end:] + lines[:end]


def _describe_exception(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__} whose repr() raised>"


@dataclass
class JobInfo:
    """``request.job``: what is running.

    ``lease_lost`` turns true when a heartbeat finds that another daemon
    took the job over, or when a ``transactional`` run finds it so as it
    commits (:class:`LeaseTakenOver`); the run's completion is then discarded.
    """

    id: str
    task: str
    scheduled_at: datetime
    attempt: int
    args: list[Any]
    kwargs: dict[str, Any]
    lease_lost: bool = False

    @classmethod
    def for_lease(cls, lease: Lease) -> JobInfo:
        """Describe the run that ``lease`` claimed."""
        job = lease.job
        return cls(job.id, job.task, lease.scheduled_at, lease.attempt, job.args, job.kwargs)


class JobRequests:
    """Makes the requests jobs run with, the way Pyramid's router makes one per view.

    The application's request factory is called with a fresh copy of one
    prepared WSGI environ (``GET /`` on ``base_url``), ``request.registry`` is
    set and the request extensions (``config.add_request_method``) are
    applied. Pyramid's own :func:`~pyramid.request.apply_request_extensions`
    builds a new subclass per request to hold the extension properties; here
    that subclass is built once per request class and reused, which makes a
    job's request several times cheaper without changing what it offers.
    """

    def __init__(self, registry: Registry, base_url: str = "http://localhost") -> None:
        self.registry = registry
        environ = Request.blank("/", base_url=base_url).environ
        environ.pop("wsgi.input", None)
        self.environ = environ
        self._classes: dict[type, type] = {}
        self._prepared: tuple[Any, Any] | None = None

    def __call__(self) -> Request:
        """A new request for one job run."""
        if self._prepared is None:
            # Looked up at the first run, once the configuration is committed.
            registry = self.registry
            self._prepared = (
                registry.queryUtility(IRequestFactory, default=Request),
                registry.queryUtility(IRequestExtensions),
            )
        factory, extensions = self._prepared
        environ = dict(self.environ)
        environ["wsgi.input"] = io.BytesIO()
        request = factory(environ)
        request.registry = self.registry
        if extensions is not None:
            for name, fn in extensions.methods.items():
                setattr(request, name, fn.__get__(request, request.__class__))
            if extensions.descriptors:
                cls = request.__class__
                derived = self._classes.get(cls)
                if derived is None:
                    derived = self._classes[cls] = _with_properties(cls, extensions.descriptors)
                request.__class__ = derived
        return request


def _with_properties(parent: type, descriptors: dict[str, Any]) -> type:
    """A subclass of ``parent`` that carries the extension properties.

    Interface declarations are copied from the parent, as Pyramid does, so
    that adapter lookups treat the subclass exactly like its parent.
    """
    attrs = dict(descriptors)
    attrs.setdefault("__module__", parent.__module__)
    derived = type(parent.__name__, (parent,), attrs)
    for name in ("__implemented__", "__provides__"):
        value = getattr(parent, name, _MISSING)
        if value is not _MISSING:
            setattr(derived, name, value)
    return derived


_MISSING = object()


def call_task(
    func: Callable[..., Any], request: Request, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    """Call a task function; coroutine functions run to completion on a fresh loop."""
    result = func(request, *args, **kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class LeaseTakenOver(RuntimeError):
    """The run's lease went to another daemon, so its completion matched no row.

    Raised inside the job's transaction (shared database), which must then
    not commit: the daemon holding the lease now runs the job. Not to be
    confused with the :class:`~pyramid_pyncette.events.LeaseLost` event.
    """


def _complete_in_transaction(
    registry: Registry, request: Request, lease: Lease, clock: Callable[[], datetime]
) -> None:
    """Complete the job's row through the app's session, in the job's own transaction.

    The job's writes and its completion then commit together or not at all:
    its effects happen exactly once.
    """
    from zope.sqlalchemy import mark_changed

    session = registry.pyncette_session_hook(request)
    outcome = Outcome(lease, succeeded=True, finished_at=clock())
    matched = session_store(registry.scheduler.repository).complete_on(session, [outcome])
    if lease.token is not None and not matched:
        raise LeaseTakenOver(
            f"job {lease.job.id!r} lost its lease before it could commit; its work is rolled "
            "back and the daemon that holds it now will run it"
        )
    mark_changed(session, transaction_manager=request.tm)


def _notify(registry: Registry, event: object) -> None:
    notify_subscribers(registry, event, log, "the job goes on")


def run_job(
    registry: Registry,
    task: Task | None,
    lease: Lease,
    clock: Callable[[], datetime],
    info: JobInfo | None = None,
    requests: JobRequests | None = None,
    retry_defaults: RetryDefaults = DEFAULT_RETRIES,
) -> Outcome:
    """Run one claimed job and report how it ended. Never raises.

    ``requests`` makes the job's request; workers pass one they keep, so
    that the request set-up is prepared once rather than per run.
    ``retry_defaults`` (the daemon's retry settings) go with a failed run's
    outcome, which the failure's log line describes.
    """
    job = lease.job
    if task is None:
        error = unknown_task_error(job.task, job.id)
        outcome = Outcome(
            lease,
            succeeded=False,
            finished_at=clock(),
            error=error,
            permanent=True,
            retry_defaults=retry_defaults,
        )
        log_failure(outcome, error)
        return outcome
    if info is None:
        info = JobInfo.for_lease(lease)
    transactional = bool(task.options.get("transactional"))
    request = (requests or JobRequests(registry))()
    tm = transaction.TransactionManager(explicit=True)
    request.environ["tm.manager"] = tm
    request.environ["tm.active"] = True
    request.tm = tm
    request.job = info
    threadlocal_manager.push({"registry": registry, "request": request})
    started = time.perf_counter()
    try:
        try:
            with tm:
                _notify(registry, JobStarted(job, request, lease.scheduled_at, lease.attempt))
                result = call_task(task.func, request, job.args, job.kwargs)
                if transactional:
                    _complete_in_transaction(registry, request, lease, clock)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            duration = time.perf_counter() - started
            outcome = Outcome(
                lease,
                succeeded=False,
                finished_at=clock(),
                error=traceback.format_exc(),
                retry_defaults=retry_defaults,
            )
            if isinstance(exc, LeaseTakenOver):
                # Not the job's failure: the daemon that holds the lease now runs it. The
                # caller reports the lost lease and records the run as such.
                info.lease_lost = True
            else:
                log_failure(outcome, _describe_exception(exc), exc)
            _notify(
                registry,
                JobFailed(job, request, lease.scheduled_at, lease.attempt, exc, duration),
            )
            return outcome
        duration = time.perf_counter() - started
        recent_failures.forget(job.id)
        _notify(
            registry,
            JobSucceeded(job, request, lease.scheduled_at, lease.attempt, result, duration),
        )
        return Outcome(lease, succeeded=True, finished_at=clock(), completed=transactional)
    finally:
        try:
            if request.finished_callbacks:
                request._process_finished_callbacks()
        except Exception:
            log.exception("a finished callback of job %r raised", job.id)
        threadlocal_manager.pop()
