"""pyramid_pyncette: a reliable, distributed, persistent job scheduler for Pyramid.

``config.include('pyramid_pyncette')`` reads the ``pyncette.*`` settings and
registers ``registry.scheduler``; ``pscheduler app.ini`` runs the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import PHASE1_CONFIG

from .events import (
    IJobFailed,
    IJobPaused,
    IJobResumed,
    IJobScheduled,
    IJobSkipped,
    IJobStarted,
    IJobSucceeded,
    ILeaseLost,
    IQueuePaused,
    IQueueResumed,
    IWorkerStarting,
    IWorkerStopping,
    JobFailed,
    JobPaused,
    JobResumed,
    JobScheduled,
    JobSkipped,
    JobStarted,
    JobSucceeded,
    LeaseLost,
    QueuePaused,
    QueueResumed,
    WorkerStarting,
    WorkerStopping,
)
from .exceptions import InvalidJobError, UnknownTaskError
from .jobs import Job
from .repository import is_sql_url
from .scheduler import BoundScheduler, PeriodicJobError, Scheduler, UnknownJobError
from .schedules import ScheduleError
from .settings import PyncetteSettings, parse_settings
from .tasks import add_pyncette_task, get_task_registry, periodic_task, task
from .transaction import NO_TRANSACTION_HELP, NoTransactionError, StoreUnavailable

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry
    from pyramid.request import Request

__all__ = [
    "BoundScheduler",
    "IJobFailed",
    "IJobPaused",
    "IJobResumed",
    "IJobScheduled",
    "IJobSkipped",
    "IJobStarted",
    "IJobSucceeded",
    "ILeaseLost",
    "IQueuePaused",
    "IQueueResumed",
    "IWorkerStarting",
    "IWorkerStopping",
    "InvalidJobError",
    "Job",
    "JobFailed",
    "JobPaused",
    "JobResumed",
    "JobScheduled",
    "JobSkipped",
    "JobStarted",
    "JobSucceeded",
    "LeaseLost",
    "NoTransactionError",
    "PeriodicJobError",
    "PyncetteSettings",
    "QueuePaused",
    "QueueResumed",
    "ScheduleError",
    "Scheduler",
    "StoreUnavailable",
    "UnknownJobError",
    "UnknownTaskError",
    "WorkerStarting",
    "WorkerStopping",
    "get_scheduler",
    "includeme",
    "periodic_task",
    "task",
]


def get_scheduler(request_or_registry: Request | Registry) -> Scheduler:
    """The scheduler of a request (bound to its transaction) or of a registry (immediate)."""
    scheduler = getattr(request_or_registry, "scheduler", None)
    if scheduler is None:
        registry = getattr(request_or_registry, "registry", request_or_registry)
        scheduler = getattr(registry, "scheduler", None)
    if scheduler is None:
        raise ConfigurationError(
            "pyramid_pyncette is not included; add config.include('pyramid_pyncette') "
            "(or pyramid.includes = pyramid_pyncette in the INI file)"
        )
    return scheduler


def _register_scheduler(config: Configurator, settings: PyncetteSettings) -> None:
    """Build the store (never connecting) and register ``registry.scheduler`` over it.

    The one place the application's store is built: an unusable
    ``pyncette.url`` is a :class:`ConfigurationError` here, when the
    include's deferred action runs (at commit).
    """
    registry = config.registry
    registry.scheduler = Scheduler.from_settings(registry, settings)
    registry.pyncette_session_hook = _resolve_session_hook(config, settings)


def includeme(config: Configurator) -> None:
    """Set up the scheduler for a Pyramid application.

    Registers ``registry.scheduler`` (the immediate :class:`Scheduler`), the
    ``config.add_pyncette_task`` directive, and reads these settings (all
    optional; durations accept seconds or ``30s`` / ``5m`` / ``1h30m``):

    ``pyncette.url``
        The store (see Stores): ``sqlite:///path/to/file.sqlite`` (a relative
        path is from the working directory), ``postgresql+psycopg://...``,
        ``mysql+pymysql://...``, ``redis://host:6379/0`` (also ``rediss://``,
        ``unix://``), ``redis+cluster://host:port`` (Redis Cluster),
        ``dynamodb://region/table``, or ``memory://`` (one process, for tests).
        Default: ``sqlite:///pyncette.sqlite``.
    ``pyncette.poll_interval``
        Longest pause between polls when nothing is due. Default: ``1s``.
    ``pyncette.batch_size``
        Most jobs claimed in one statement. Default: ``100``.
    ``pyncette.concurrency``
        Threads running jobs in one daemon. Default: ``10``.
    ``pyncette.lease_duration``
        How long a claim holds a job before another daemon may take it over;
        running jobs renew it by heartbeat. Default: ``60s``.
    ``pyncette.heartbeat_interval``
        How often the leases of running jobs are renewed (shorter than the lease
        duration). Default: a third of the lease.
    ``pyncette.table_name``
        The SQL table. Default: ``pyncette_jobs``.
    ``pyncette.timezone``
        Time zone of cron schedules that name none. Default: ``UTC``.
    ``pyncette.skip_table_create``
        Do not create the table on first use (your migrations do). Default:
        ``false``.
    ``pyncette.base_url``
        Scheme and host of the requests jobs run in, for ``request.route_url``
        inside a job. Default: ``http://localhost``.
    ``pyncette.session_hook``
        Dotted path of ``callable(request)`` returning the app's zope.sqlalchemy
        session: job rows are then written through it, in the app's own
        transaction (shared-database mode; ``pyncette.url`` must name the same
        database). Default: none.
    ``pyncette.redis_namespace``
        Prefix (and cluster hash tag) of the Redis store's keys. Default:
        ``pyncette``.
    ``pyncette.partitions``
        How many parts each queue's due index is split into, by a stable hash of
        the job id; daemons claim across them from a rotating start. On Redis
        each part has its own hash tag, spreading a namespace over a cluster's
        shards. Fixed when a Redis or DynamoDB store is first used (another
        number is then refused at start); SQL stores keep one index and take
        only ``1`` (see Partitions). Default: per store: ``16`` on Redis and
        DynamoDB, ``1`` elsewhere.
    ``pyncette.max_retries``
        Retries of a failed run, for jobs that set neither ``max_retries`` nor
        ``failure_mode`` (``0``: never); then a one-off job is parked as
        ``failed`` and a recurring one moves to its next run (see Tasks). Jobs
        follow the settings of the daemon that runs them; retrying without limit
        is a task's explicit choice (``failure_mode='none'`` or ``'unlock'``).
        Default: ``5``.
    ``pyncette.retry_backoff``
        Pause before the first retry of jobs that do not set ``retry_backoff``;
        it doubles for each further retry, jittered to between half and all of
        it. Default: ``10s``.
    ``pyncette.retry_backoff_max``
        Longest pause between two retries, for jobs that do not set
        ``retry_backoff_max``. Default: ``1h``.
    ``pyncette.queues``
        The queues this process's daemon claims jobs from, separated by spaces
        (``pscheduler --queue`` overrides it); any number of daemons may serve
        one queue (see Queues). Default: every queue.
    ``pyncette.history``
        Which runs the run history keeps: ``all``, ``failures`` (failed runs and
        lost leases) or ``none`` (see Run history). Default: ``all``.
    ``pyncette.history_retention``
        How long run records are kept; daemons delete older ones in small
        batches. Default: ``7d``.
    ``pyncette.metrics_port``
        The port where ``pscheduler`` serves ``/metrics`` (Prometheus) and
        ``/healthz``; ``0`` picks a free port and logs it (see Metrics and
        health). Default: off.
    ``pyncette.metrics_host``
        The address the metrics port listens on. Default: ``127.0.0.1``.
    ``pyncette.dashboard.path``
        Where ``pyramid_pyncette.dashboard`` mounts its pages (see Dashboard).
        Default: ``/pyncette``.
    ``pyncette.dashboard.permission``
        The permission every dashboard page and action requires;
        ``NO_PERMISSION_REQUIRED`` opens them to everyone. Default:
        ``pyncette.admin``.
    ``pyncette.dashboard.metrics_public``
        Serve the dashboard's ``/metrics`` without the permission (for a
        Prometheus that cannot log in). Default: ``false``.

    The settings are read when the configuration is committed (by
    ``config.commit()`` or ``config.make_wsgi_app()``; at once with an
    autocommitting configurator), so ``config.add_settings()`` after the
    include counts. A bad value then raises
    :class:`pyramid.exceptions.ConfigurationError` naming the key (never
    showing the URL's password); an unknown ``pyncette.*`` key warns.
    Including starts no thread and opens no connection.

    The per-task options (``max_retries``, ``retry_backoff``,
    ``retry_backoff_max``, ``retry_exhausted``, ``misfire_grace_time``...)
    are given to ``@task()`` / ``config.add_pyncette_task`` or per job to
    ``add_*``; the three retry settings above are the defaults of the
    same-named options.
    """
    config.add_directive("add_pyncette_task", add_pyncette_task)
    config.add_request_method(request_scheduler, "scheduler", reify=True)

    def set_up() -> None:
        settings = parse_settings(config.get_settings())
        registry = config.registry
        registry.pyncette_settings = settings
        get_task_registry(registry)
        _register_scheduler(config, settings)

    # Deferred, so settings added with config.add_settings() after the include
    # count; in the first phase, so the scheduler and the session hook exist
    # before the tasks (default phase) are registered.
    config.action(None, set_up, order=PHASE1_CONFIG)


def _resolve_session_hook(
    config: Configurator, settings: PyncetteSettings
) -> Callable[[Request], Any] | None:
    if settings.session_hook is None:
        return None
    if not is_sql_url(settings.url):
        raise ConfigurationError(
            "pyncette.session_hook needs the jobs table in the app's own database: set "
            "pyncette.url to that database's URL (it is not a SQL URL now)"
        )
    try:
        hook = config.maybe_dotted(settings.session_hook.replace(":", "."))
    except ImportError as exc:
        raise ConfigurationError(
            f"pyncette.session_hook {settings.session_hook!r} cannot be imported: {exc}; use "
            "a dotted path to a callable taking the request, e.g. myapp.models:get_dbsession"
        ) from None
    if not callable(hook):
        raise ConfigurationError(
            f"pyncette.session_hook {settings.session_hook!r} is not callable; it must take the "
            "request and return the app's zope.sqlalchemy session"
        )
    return hook


def request_scheduler(request: Request) -> Scheduler:
    """``request.scheduler``: a copy of ``registry.scheduler`` bound to ``request.tm``.

    Jobs added or cancelled through it are written if and only if the
    request's transaction commits. With ``pyncette.session_hook`` the rows go
    through the app's own session, in the same database transaction.
    """
    registry = request.registry
    manager = getattr(request, "tm", None)
    if manager is None:
        raise NoTransactionError(NO_TRANSACTION_HELP)
    hook = getattr(registry, "pyncette_session_hook", None)
    session = hook(request) if hook is not None else None
    return registry.scheduler.bind(manager, session)
