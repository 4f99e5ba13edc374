"""Events fired through ``registry.notify``, in the Pyramid style.

Subscribe with ``config.add_subscriber(handler, IJobFailed)`` or the
``@subscriber(JobFailed)`` decorator. A subscriber that raises is logged and
never stops the worker.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from pyramid.registry import Registry
    from pyramid.request import Request

    from .jobs import Job
    from .worker import Worker


class IJobEvent(Interface):
    """Something happened to a job."""

    job = Attribute("The :class:`pyramid_pyncette.jobs.Job` concerned.")
    registry = Attribute("The application registry.")


class IJobScheduled(IJobEvent):
    """A job was added or replaced through the scheduler API."""


class IJobRunEvent(IJobEvent):
    """Something happened to one run of a job."""

    request = Attribute("The Pyramid request the job runs in.")
    scheduled_at = Attribute("When this run was due (UTC).")
    attempt = Attribute("1 for the first try of this run, 2 for the first retry, ...")


class IJobStarted(IJobRunEvent):
    """A run is about to call the task function (inside its transaction)."""


class IJobSucceeded(IJobRunEvent):
    """A run returned and its transaction committed."""

    result = Attribute("What the task function returned.")
    duration = Attribute("Seconds the run took.")


class IJobFailed(IJobRunEvent):
    """A run raised (or its commit failed); its transaction was aborted."""

    exception = Attribute("The exception raised.")
    duration = Attribute("Seconds the run took.")


class IJobSkipped(IJobEvent):
    """A run was not started: it was claimed later than its ``misfire_grace_time``.

    A one-off job was deleted, a recurring one moved to its next run.
    """

    scheduled_at = Attribute("When the skipped run was due (UTC).")
    lateness = Attribute("Seconds between the run's due time and the claim.")


class ILeaseLost(IJobEvent):
    """A running job's lease was taken over (it expired and another daemon claimed it).

    The run goes on, but its result is discarded; the daemon that holds the
    lease now runs the job again.
    """

    scheduled_at = Attribute("When the run was due (UTC).")


class IJobPaused(IJobEvent):
    """A job was paused (:meth:`~pyramid_pyncette.scheduler.Scheduler.pause_job`).

    Fired once the pause is written (after the transaction commits, for
    ``request.scheduler``). ``job`` is the job as written.
    """


class IJobResumed(IJobEvent):
    """A paused job was resumed (:meth:`~pyramid_pyncette.scheduler.Scheduler.resume_job`).

    Fired once the change is written. ``job`` is the job as written, with
    its next run time.
    """


class IQueueEvent(Interface):
    """Something happened to a queue."""

    name = Attribute("The queue's name.")
    registry = Attribute("The application registry.")


class IQueuePaused(IQueueEvent):
    """A queue was paused (:meth:`~pyramid_pyncette.scheduler.Scheduler.pause_queue`):
    no daemon claims its jobs until it is resumed."""


class IQueueResumed(IQueueEvent):
    """A paused queue was resumed (:meth:`~pyramid_pyncette.scheduler.Scheduler.resume_queue`)."""


class IWorkerEvent(Interface):
    """The worker (the lease loop) changed state."""

    worker = Attribute("The :class:`pyramid_pyncette.worker.Worker`.")
    registry = Attribute("The application registry.")


class IWorkerStarting(IWorkerEvent):
    """A worker is about to start claiming jobs."""


class IWorkerStopping(IWorkerEvent):
    """A worker stopped claiming and is about to return."""


class _JobEvent:
    def __init__(self, job: Job, registry: Registry) -> None:
        self.job = job
        self.registry = registry


class _JobRunEvent(_JobEvent):
    def __init__(self, job: Job, request: Request, scheduled_at: datetime, attempt: int) -> None:
        super().__init__(job, request.registry)
        self.request = request
        self.scheduled_at = scheduled_at
        self.attempt = attempt


@implementer(IJobScheduled)
class JobScheduled(_JobEvent):
    """See :class:`IJobScheduled`."""


@implementer(IJobStarted)
class JobStarted(_JobRunEvent):
    """See :class:`IJobStarted`."""


class _JobEndEvent(_JobRunEvent):
    """A run that ended: how long it took and its result or exception."""

    def __init__(
        self,
        job: Job,
        request: Request,
        scheduled_at: datetime,
        attempt: int,
        ending: Any = None,
        duration: float = 0.0,
    ) -> None:
        super().__init__(job, request, scheduled_at, attempt)
        self._ending = ending
        self.duration = duration


@implementer(IJobSucceeded)
class JobSucceeded(_JobEndEvent):
    """See :class:`IJobSucceeded`."""

    @property
    def result(self) -> Any:
        """What the task function returned."""
        return self._ending


@implementer(IJobFailed)
class JobFailed(_JobEndEvent):
    """See :class:`IJobFailed`."""

    @property
    def exception(self) -> BaseException | None:
        """The exception raised."""
        return self._ending


@implementer(IJobSkipped)
class JobSkipped(_JobEvent):
    """See :class:`IJobSkipped`."""

    def __init__(
        self, job: Job, registry: Registry, scheduled_at: datetime, lateness: float
    ) -> None:
        super().__init__(job, registry)
        self.scheduled_at = scheduled_at
        self.lateness = lateness


@implementer(ILeaseLost)
class LeaseLost(_JobEvent):
    """See :class:`ILeaseLost`."""

    def __init__(self, job: Job, registry: Registry, scheduled_at: datetime) -> None:
        super().__init__(job, registry)
        self.scheduled_at = scheduled_at


@implementer(IJobPaused)
class JobPaused(_JobEvent):
    """See :class:`IJobPaused`."""


@implementer(IJobResumed)
class JobResumed(_JobEvent):
    """See :class:`IJobResumed`."""


class _QueueEvent:
    def __init__(self, name: str, registry: Registry) -> None:
        self.name = name
        self.registry = registry


@implementer(IQueuePaused)
class QueuePaused(_QueueEvent):
    """See :class:`IQueuePaused`."""


@implementer(IQueueResumed)
class QueueResumed(_QueueEvent):
    """See :class:`IQueueResumed`."""


class _WorkerEvent:
    def __init__(self, worker: Worker, registry: Registry) -> None:
        self.worker = worker
        self.registry = registry


@implementer(IWorkerStarting)
class WorkerStarting(_WorkerEvent):
    """See :class:`IWorkerStarting`."""


@implementer(IWorkerStopping)
class WorkerStopping(_WorkerEvent):
    """See :class:`IWorkerStopping`."""


def notify_subscribers(
    registry: Registry, event: object, log: logging.Logger, goes_on: str
) -> None:
    """Send ``event`` to ``registry``'s subscribers; one that raises is logged, never raised.

    The scheduler, the worker and a running job all carry on when a
    subscriber fails: ``goes_on`` ends the ERROR line logged on ``log``
    (the caller's logger) saying so, e.g. ``"the worker goes on"``.
    A registry without ``notify`` (a bare test double) has no subscribers.
    """
    notify = getattr(registry, "notify", None)
    if notify is None:
        return
    try:
        notify(event)
    except Exception:
        log.exception("a subscriber to %s raised; %s", type(event).__name__, goes_on)
