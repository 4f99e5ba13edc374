"""The scheduler API: validate, serialise, write.

:class:`Scheduler` is ``registry.scheduler``: every call writes to the store
at once. ``request.scheduler`` is a bound copy of it, the same API with a
writer that joins the request's transaction (see :mod:`pyramid_pyncette.writers`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import reprlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pyramid.exceptions import ConfigurationError

from .events import (
    JobPaused,
    JobResumed,
    JobScheduled,
    QueuePaused,
    QueueResumed,
    notify_subscribers,
)
from .exceptions import InvalidJobError
from .jobs import RUN_OUTCOMES, STAGED_PREFIX, Job, QueueInfo, partition_of
from .options import MARKERS, PAUSED_MARKER, PERIODIC_MARKER, declared_periodic
from .policy import parked_for_unknown_task, revive_parked
from .redaction import redact_text
from .repository import JobPage, Repository, UnsupportedStoreError, create_repository
from .repository.base import RunPage
from .repository.rows import job_problem
from .schedules import (
    CRON_FIELD_NAMES,
    CronSchedule,
    DateSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    check_cron_expression,
    check_interval_floor,
    cron_from_fields,
    ensure_aware,
    schedule_from_json,
)
from .settings import PyncetteSettings, parse_duration
from .tasks import (
    Task,
    TaskRegistry,
    check_job_id,
    check_option_combination,
    check_queue,
    get_task_registry,
    interval_timezone_error,
    normalize_options,
    unstorable_text,
)
from .writers import (
    ImmediateWriter,
    JobWriter,
    SessionWriter,
    StagedWriter,
    Store,
    WriteKinds,
    write_kind,
)

if TYPE_CHECKING:
    from pyramid.registry import Registry
    from sqlalchemy.orm import Session
    from transaction import TransactionManager

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class UnknownJobError(InvalidJobError, LookupError):
    """No job has the given id."""


class PeriodicJobError(InvalidJobError):
    """The job of a periodic task declared in code cannot be changed that way.

    Such a job belongs to the code (``@periodic_task``, or
    ``config.add_pyncette_task`` with ``schedule=`` or ``interval=``): every
    daemon that starts with that code writes it again. The message names
    the lever that works.
    """


def utcnow() -> datetime:
    """The current time, UTC-aware (the default clock)."""
    return datetime.now(timezone.utc)


#: Deepest nesting of lists and dicts accepted in one job argument.
MAX_ARGUMENT_DEPTH = 100

#: Largest accepted job arguments: the JSON text the stores keep, in bytes (1 MiB).
MAX_ARGUMENTS_SIZE = 1024 * 1024

_JSON_TYPES = "pass str, int, float, bool, None, lists and dicts with string keys"

_NOT_JSON_HINTS = (
    (datetime, " (pass value.isoformat() and parse it in the task)"),
    (timedelta, " (pass value.total_seconds())"),
    ((set, frozenset), " (pass a list)"),
    ((bytes, bytearray), " (pass value.decode() or base64 text)"),
)


def _render_path(node: tuple[Any, ...]) -> str:
    """``args[0]['key']`` from the chain of (parent, key) pairs built while walking."""
    parts = []
    while node[0] is not None:
        node, key = node
        parts.append(f"[{key!r}]")
    parts.append(node[1])
    text = "".join(reversed(parts))
    return text if len(text) <= 200 else f"{text[:100]}...{text[-80:]}"


def _scalar_problem(value: Any, node: tuple[Any, ...]) -> str | None:
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, str):
        problem = unstorable_text(value)
        if problem:
            return (
                f"the text {_render_path(node)} {problem}; remove it, or pass binary data "
                "as base64 text"
            )
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{_render_path(node)} = {value!r} is not a finite number; {_JSON_TYPES}"
    hint = next((text for kind, text in _NOT_JSON_HINTS if isinstance(value, kind)), "")
    shown = reprlib.repr(value)
    kind = type(value).__name__
    return f"{_render_path(node)} = {shown} is a {kind}, which is not JSON{hint}; {_JSON_TYPES}"


_PLAIN_SCALARS = frozenset({int, bool, type(None)})
_CONTAINERS = (list, tuple, dict)


def _json_problem(value: Any, name: str) -> str | None:
    """Describe the first value under ``value`` that JSON cannot carry faithfully.

    Walks with an explicit stack, so a deeply nested (or self-containing)
    value gets a clear error instead of exhausting Python's recursion limit.
    """
    # Each entry: (container, depth below the argument list, path node).
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 0, (None, name))]
    while stack:
        container, depth, node = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            return (
                f"{_render_path(node)} is nested more than {MAX_ARGUMENT_DEPTH} lists or dicts "
                "deep (or contains itself); flatten it, or store the data elsewhere and pass "
                "its id"
            )
        if isinstance(container, dict):
            for key in container:
                if not isinstance(key, str):
                    return (
                        f"{_render_path(node)} has the non-string key {reprlib.repr(key)} "
                        f"(JSON object keys are strings); {_JSON_TYPES}"
                    )
                problem = unstorable_text(key)
                if problem:
                    return (
                        f"{_render_path(node)} has the key {key!r}, which {problem}; "
                        "remove that character from the key"
                    )
            items: Iterable[tuple[Any, Any]] = container.items()
        else:
            items = enumerate(container)
        children = []
        for key, item in items:
            kind = type(item)
            if kind in _PLAIN_SCALARS:
                continue  # the common case, checked first
            if kind is str and not unstorable_text(item):
                continue
            if isinstance(item, _CONTAINERS):
                children.append((item, depth + 1, (node, key)))
                continue
            problem = _scalar_problem(item, (node, key))
            if problem:
                return problem
        stack.extend(reversed(children))
    return None


def _start_date(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        return ensure_aware(value, name="start_date")
    except ScheduleError as exc:
        raise InvalidJobError(f"{where}: {exc}") from None


def check_arguments(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """Validate job arguments: JSON every store can keep, named precisely when not.

    Refused: values JSON cannot carry, text with a NUL or a lone surrogate,
    nesting deeper than :data:`MAX_ARGUMENT_DEPTH` and JSON text larger than
    :data:`MAX_ARGUMENTS_SIZE`.
    """
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise InvalidJobError(
            f"args must be a list or tuple of positional arguments, got {type(args).__name__}"
        )
    if not isinstance(kwargs, Mapping):
        raise InvalidJobError(f"kwargs must be a dict, got {type(kwargs).__name__}")
    args, kwargs = list(args), dict(kwargs)
    problem = _json_problem(args, "args") or _json_problem(kwargs, "kwargs")
    if problem:
        raise InvalidJobError(f"job arguments must be JSON: {problem}")
    try:
        # What the stores write: compact, non-ASCII escaped, so characters are bytes.
        size = len(json.dumps({"args": args, "kwargs": kwargs}, separators=(",", ":")))
    except ValueError as exc:  # e.g. an int too long to print
        raise InvalidJobError(
            f"job arguments cannot be written as JSON ({exc}); pass large numbers as text"
        ) from None
    if size > MAX_ARGUMENTS_SIZE:
        raise InvalidJobError(
            f"job arguments are {size:,} bytes as JSON, over the limit of "
            f"{MAX_ARGUMENTS_SIZE:,} bytes (1 MiB); store large data elsewhere (a table, a "
            "file) and pass its id"
        )
    return args, kwargs


#: Called after jobs are committed, with the jobs written and the job ids deleted.
CommitListener = Callable[[Sequence[Job], Sequence[str]], None]

#: Told of each add, replace, cancel, pause, resume and retry a scheduler was asked
#: for, once the call has succeeded: ``recorder(scheduler, action, job_id, job)``
#: (see :attr:`Scheduler.write_recorder`).
WriteRecorder = Callable[["Scheduler", str, str, "Job | None"], None]


class _Shared:
    """What a scheduler and its bound copies share: the store, the clock, the listeners."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.wake_listeners: list[Callable[[], None]] = []
        self.commit_listeners: list[CommitListener] = []
        self.write_recorder: WriteRecorder | None = None


class Scheduler:
    """Add, cancel and inspect jobs.

    ``registry.scheduler`` writes to the store immediately;
    :meth:`bind` returns a copy writing through a transaction
    (``request.scheduler``). Where writes go is the scheduler's
    :attr:`writer`; everything else (validation, the store, the clock, the
    listeners) is shared by a scheduler and its bound copies.

    Every ``add_*_job`` takes ``queue=``, the job's queue (default: its
    task's ``queue`` option, else ``'default'``; see :meth:`pause_queue`).

    ``repository`` is the store, built but not connected (it is set up on
    first use); :meth:`from_settings` builds it from ``pyncette.url``.
    ``clock`` returns the current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        registry: Registry,
        settings: PyncetteSettings,
        repository: Repository,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._shared = _Shared(Store(repository), clock or utcnow)
        #: Where adds and cancels go (see :mod:`pyramid_pyncette.writers`).
        self.writer: JobWriter = ImmediateWriter(self._shared.store, self._announce)

    @classmethod
    def from_settings(
        cls, registry: Registry, settings: PyncetteSettings, clock: Clock | None = None
    ) -> Scheduler:
        """A scheduler over the store ``settings.url`` names, built without connecting.

        An unknown scheme, a missing driver or a malformed URL raises
        :class:`pyramid.exceptions.ConfigurationError` (never showing the
        URL's password).
        """
        try:
            repository = create_repository(settings)
        except UnsupportedStoreError as exc:  # an unknown scheme or a missing driver
            raise ConfigurationError(str(exc)) from None
        except Exception as exc:  # e.g. a malformed URL
            raise ConfigurationError(
                f"pyncette.url {settings.redacted_url()!r} cannot be used: {redact_text(exc)}"
            ) from None
        return cls(registry, settings, repository=repository, clock=clock)

    # -- plumbing ---------------------------------------------------------

    @property
    def repository(self) -> Repository:
        """The store, set up on first use (never at include time)."""
        return self._shared.store.ready()

    @property
    def store(self) -> Store:
        """The store object this scheduler and its bound copies share; reading it does
        not set the store up (:attr:`repository` does)."""
        return self._shared.store

    @property
    def clock(self) -> Clock:
        """The current UTC time; setting it also sets it for the bound copies."""
        return self._shared.clock

    @clock.setter
    def clock(self, value: Clock) -> None:
        self._shared.clock = value

    @property
    def wake_listeners(self) -> list[Callable[[], None]]:
        """Called after jobs are committed (e.g. an in-process worker's ``wake``)."""
        return self._shared.wake_listeners

    @property
    def commit_listeners(self) -> list[CommitListener]:
        """Called as ``listener(written, removed)`` after jobs are committed.

        ``written`` are the jobs added or replaced, ``removed`` the ids of
        the jobs deleted, through this scheduler or any bound copy (after
        the transaction commits, for those). A listener that raises is
        logged and ignored.
        """
        return self._shared.commit_listeners

    @property
    def write_recorder(self) -> WriteRecorder | None:
        """Told of every job write this scheduler and its bound copies are asked for.

        ``recorder(scheduler, action, job_id, job)`` is called once an
        ``add_*_job``, ``cancel_job``, ``pause_job``, ``resume_job`` or
        ``retry_job`` call has succeeded (through a bound copy: staged, not
        yet committed), with the scheduler that was called. ``action`` is
        one of :data:`RECORDED_ACTIONS`; ``job`` is the job as written (for
        a cancel: as it was before, or None when unknown). The debug
        toolbar's "Jobs" panel (``pyramid_pyncette.toolbar``) sets it. None
        (the default) records nothing and costs nothing. With a recorder, an
        add with a given ``job_id`` and a cancel first read the job (to tell
        an add from a replace, and to show what was cancelled). A recorder
        that raises is logged and ignored.
        """
        return self._shared.write_recorder

    @write_recorder.setter
    def write_recorder(self, value: WriteRecorder | None) -> None:
        self._shared.write_recorder = value

    def _recorded_lookup(self, job_id: str) -> tuple[bool, Job | None]:
        """Whether the job could be read before a recorded write, and the job as the
        writer sees it (None: there is none)."""
        try:
            return True, self.writer.get(job_id)
        except Exception:
            # Recording never changes what a call does: the write reports the outage.
            log.debug("could not read job %r before recording its write", job_id, exc_info=True)
            return False, None

    def _tell_recorder(self, action: str, job_id: str, job: Job | None) -> None:
        recorder = self._shared.write_recorder
        if recorder is None:
            return
        try:
            recorder(self, action, job_id, job)
        except Exception:
            log.exception("a scheduler write recorder raised; ignored")

    @property
    def tasks(self) -> TaskRegistry:
        """The application's registered tasks."""
        return get_task_registry(self.registry)

    def now(self) -> datetime:
        """The scheduler's clock, UTC-aware."""
        return self.clock()

    def _announce(
        self, written: Sequence[Job], removed: Sequence[str], kinds: WriteKinds | None = None
    ) -> None:
        """Tell the listeners and the subscribers what was committed.

        ``kinds`` says which written jobs were paused or resumed (the others
        were added or replaced): each job's subscribers get the matching event.
        """
        for listener in list(self.commit_listeners):
            try:
                listener(written, removed)
            except Exception:
                log.exception("a scheduler commit listener raised; ignored")
        for job in written:
            event = _WRITE_EVENTS[write_kind(kinds or {}, job)]
            notify_subscribers(self.registry, event(job, self.registry), log, "ignored")
        for wake in list(self.wake_listeners):
            try:
                wake()
            except Exception:
                log.exception("a scheduler wake-up listener raised; ignored")

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a store error is an outage worth retrying."""
        # Asked while the store is down: the store object answers even if its setup failed.
        return self._shared.store.repository.is_transient(exc)

    def describe_setup_error(self, exc: BaseException) -> str | None:
        """One line naming the misconfiguration behind a store error and its fix, or None.

        None means the error may pass (an outage); see
        :meth:`Repository.describe_setup_error`.
        """
        return self._shared.store.repository.describe_setup_error(exc)

    def bind(
        self,
        transaction_manager: TransactionManager | None = None,
        session: Session | None = None,
    ) -> Scheduler:
        """A copy of this scheduler writing through ``transaction_manager``'s transaction.

        Jobs added or cancelled through the copy are written when that
        transaction commits, and not at all if it aborts; validation still
        happens at call time, so bad input raises at once. The transaction
        is joined on the first write: a request that schedules nothing pays
        nothing. Its ``get_job`` sees the transaction's own uncommitted
        changes; ``get_jobs`` lists what is committed. With ``session`` (the
        app's zope.sqlalchemy session, shared-database mode) rows are
        written through the session instead, in the same database
        transaction as the app's own rows.
        """
        bound = copy.copy(self)
        store = self._shared.store
        window = self.settings.lease_duration
        if session is None:
            bound.writer = StagedWriter(
                store, self._announce, transaction_manager, window=window, clock=bound.now
            )
        else:
            bound.writer = SessionWriter(
                store, self._announce, transaction_manager, session, window=window, clock=bound.now
            )
        return bound

    # -- building jobs ----------------------------------------------------

    def build_job(
        self,
        func: Callable[..., Any] | str,
        schedule: Schedule,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        where: str = "add_job",
        *,
        queue: str | None = None,
        **options: Any,
    ) -> Job:
        """Validate everything and return the :class:`Job` to write (writes nothing).

        ``queue`` is the job's queue; ``None`` takes the task's (see the
        ``queue`` task option), ``'default'`` unless it names one.
        """
        task = self.tasks.resolve(func)
        queue = task.queue if queue is None else check_queue(queue, where=where)
        args, kwargs = check_arguments(args, kwargs)
        task.check_call(args, kwargs, where=where)
        job_id = uuid.uuid4().hex if job_id is None else check_job_id(job_id)
        given = normalize_options(options, where=where)
        resolved = {**task.job_options, **given}
        inherited = {k: v for k, v in task.job_options.items() if k not in given}
        check_option_combination(resolved, where=where, inherited=inherited)
        now = self.now()
        try:
            schedule = schedule.anchored(now)
            first = schedule.first_run(now)
        except OverflowError:
            raise InvalidJobError(
                f"{where}: the schedule {schedule.describe()} reaches past the year 9999; "
                "use a shorter interval or an earlier date"
            ) from None
        if first is None:
            raise InvalidJobError(f"{where}: the schedule {schedule.describe()} never fires")
        return Job(
            id=job_id,
            task=task.name,
            schedule=schedule.to_json(),
            args=args,
            kwargs=kwargs,
            options=resolved,
            due_at=first,
            next_run_at=first,
            created_at=now,
            partition=partition_of(job_id, self.repository.partitions),
            queue=queue,
        )

    def _add(
        self,
        func: Callable[..., Any] | str,
        schedule: Schedule,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        job_id: str | None,
        where: str,
        options: dict[str, Any],
        queue: str | None = None,
    ) -> Job:
        job = self.build_job(
            func, schedule, args, kwargs, job_id, where=where, queue=queue, **options
        )
        if self._shared.write_recorder is None:
            self.writer.write([job])
            return job
        # A generated id is new; a given one may replace a job.
        known, previous = (True, None) if job_id is None else self._recorded_lookup(job.id)
        self.writer.write([job])
        action = "added" if previous is None else "replaced"
        self._tell_recorder(action if known else "added or replaced", job.id, job)
        return job

    # -- the public API ---------------------------------------------------

    def add_date_job(
        self,
        func: Callable[..., Any] | str,
        date: datetime | float | str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        *,
        queue: str | None = None,
        **options: Any,
    ) -> Job:
        """Run ``func`` once at ``date`` (an aware datetime or epoch seconds).

        A date in the past runs as soon as a daemon polls.
        """
        try:
            schedule = DateSchedule(ensure_aware(date, name="date"))
        except ScheduleError as exc:
            raise InvalidJobError(f"add_date_job: {exc}") from None
        return self._add(func, schedule, args, kwargs, job_id, "add_date_job", options, queue)

    def add_interval_job(
        self,
        func: Callable[..., Any] | str,
        interval: timedelta | float | str | None = None,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        start_date: datetime | float | str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> Job:
        """Run ``func`` every ``interval`` (or the sum of the unit keywords).

        Runs fall on ``start_date + k * interval``; without ``start_date`` the
        first run is one interval from now. Missed runs coalesce into one.
        The interval is at least :data:`~pyramid_pyncette.schedules.MIN_INTERVAL`
        (one second).
        """
        where = "add_interval_job"
        if "timezone" in options:
            raise interval_timezone_error(where)
        units = {"weeks": weeks, "days": days, "hours": hours, "minutes": minutes}
        units["seconds"] = seconds
        for unit, value in units.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidJobError(
                    f"{where}: {unit}={value!r} is not a number; pass e.g. {unit}=5"
                )
            if not math.isfinite(value) or value < 0:
                raise InvalidJobError(
                    f"{where}: {unit}={value!r} must be a finite number >= 0; pass e.g. {unit}=5"
                )
        given = any(units.values())
        if interval is not None and given:
            raise InvalidJobError(
                f"{where}: give either interval= or the unit keywords (weeks=, days=, hours=, "
                "minutes=, seconds=), not both"
            )
        if interval is None and not given:
            raise InvalidJobError(
                f"{where}: no interval given; pass interval='30s' (or a timedelta), "
                "or unit keywords such as minutes=5"
            )
        start = _start_date(start_date, where)
        try:
            if interval is not None:
                every = timedelta(seconds=parse_duration(interval, key="interval"))
            else:
                every = timedelta(**units)
        except (ValueError, OverflowError) as exc:
            raise InvalidJobError(
                f"{where}: the interval is not usable ({exc}); use a positive duration "
                "such as '30s', '5m' or timedelta(hours=1)"
            ) from None
        try:
            check_interval_floor(every)
            schedule = IntervalSchedule(every, start)
        except ScheduleError as exc:
            raise InvalidJobError(f"{where}: {exc}") from None
        return self._add(func, schedule, args, kwargs, job_id, where, options, queue)

    def add_cron_job(
        self,
        func: Callable[..., Any] | str,
        schedule: str | None = None,
        *,
        timezone: str | None = None,
        start_date: datetime | float | str | None = None,
        year: int | str | None = None,
        month: int | str | None = None,
        day: int | str | None = None,
        week: int | str | None = None,
        day_of_week: int | str | None = None,
        hour: int | str | None = None,
        minute: int | str | None = None,
        second: int | str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> Job:
        """Run ``func`` on a cron schedule, in ``timezone`` (default ``pyncette.timezone``).

        ``schedule`` is a 5-field cron string (``'*/5 * * * *'``) or 6 fields
        with seconds last; alternatively give field keywords (``hour=3``),
        where unset smaller fields default to their minimum.
        """
        where = "add_cron_job"
        fields = (year, month, day, week, day_of_week, hour, minute, second)
        given = {k: v for k, v in zip(CRON_FIELD_NAMES, fields, strict=True) if v is not None}
        zone = timezone or self.settings.timezone
        start = _start_date(start_date, where)
        try:
            if schedule is not None and given:
                raise InvalidJobError(
                    f"{where}: give either a cron string or field keywords "
                    f"({', '.join(sorted(given))}), not both"
                )
            if schedule is not None:
                if not isinstance(schedule, str):
                    raise InvalidJobError(
                        f"{where}: schedule must be a cron string such as '*/5 * * * *', "
                        f"got {type(schedule).__name__}"
                    )
                check_cron_expression(schedule)
                cron = CronSchedule(schedule, timezone=zone, start_date=start)
            elif given:
                cron = cron_from_fields(timezone=zone, start_date=start, **given)
            else:
                raise InvalidJobError(
                    f"{where}: no schedule given; pass a cron string such as '*/5 * * * *' "
                    "or field keywords such as hour=3, minute=30"
                )
        except ScheduleError as exc:
            raise InvalidJobError(f"{where}: {exc}") from None
        return self._add(func, cron, args, kwargs, job_id, where, options, queue)

    def add_async_job(
        self,
        func: Callable[..., Any] | str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        *,
        queue: str | None = None,
        **options: Any,
    ) -> Job:
        """Run ``func`` once, as soon as a daemon can."""
        schedule = DateSchedule(self.now())
        return self._add(func, schedule, args, kwargs, job_id, "add_async_job", options, queue)

    def cancel_job(self, job_id: str) -> bool:
        """Delete a job; True if it existed. A run in progress finishes but is not repeated.

        The job of a periodic task this application's code declares
        (``@periodic_task``, or ``config.add_pyncette_task`` with
        ``schedule=`` or ``interval=``) is refused with
        :class:`PeriodicJobError`, and nothing is written: the next daemon
        start would add it again. Pause it instead (:meth:`pause_job`: the
        pause survives daemon restarts), or remove the declaration from the
        code: a daemon running that code removes the job when it starts.
        A job that only shares its id with a periodic task (it runs another
        task) is cancelled as usual.

        On a store whose daemons claim ahead of due times (DynamoDB), a run
        due within a daemon's claim lead (under a second) may already be
        claimed: it is then in progress, and runs at its due time.
        """
        job_id = check_job_id(job_id)
        task = self.tasks.get(job_id)
        if task is not None and task.periodic:
            current = self.writer.get(job_id)
            if current is not None and current.task == task.name:
                raise PeriodicJobError(
                    f"cancel_job: job {job_id!r} is the job of the periodic task {task.name!r}, "
                    "declared in this application's code (@periodic_task, or "
                    "config.add_pyncette_task with schedule= or interval=), so every daemon "
                    "start would add it again; to stop it, pause it with pause_job("
                    f"{job_id!r}) (the pause survives restarts), or remove that declaration "
                    "from the code: a daemon running the new code removes the job when it starts"
                )
        if self._shared.write_recorder is None:
            return self.writer.remove(job_id)
        _, previous = self._recorded_lookup(job_id)
        existed = self.writer.remove(job_id)
        action = "cancelled" if existed else "cancelled (no such job)"
        self._tell_recorder(action, job_id, previous)
        return existed

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None.

        Through a bound scheduler: as its transaction sees it, including its
        own uncommitted changes.
        """
        return self.writer.get(check_job_id(job_id))

    def _existing(self, job_id: str, where: str) -> Job:
        """The job with this id as the writer sees it, or :class:`UnknownJobError`."""
        job = self.get_job(job_id)
        if job is None:
            raise UnknownJobError(
                f"{where}: no job has the id {job_id!r}; it may have finished, been "
                "cancelled, or never existed (see get_jobs())"
            )
        return job

    def retry_job(self, job_id: str) -> Job:
        """Run the job now, whatever its kind; return the job as written.

        A failed job (parked: retries exhausted, or its task was missing)
        is queued again; a scheduled one-off job runs now instead of at its
        date; a recurring job gets one extra run now, and after it goes on
        with its schedule (its next run is the first schedule time after
        this run: no burst). The job becomes due now, unlocked, with its
        attempts reset; a run in progress loses its lease (its result is
        discarded). A paused job is refused (:class:`InvalidJobError`):
        :meth:`resume_job` it first. Raises :class:`UnknownJobError` when no
        job has this id.
        """
        job = self._existing(check_job_id(job_id), "retry_job")
        if job.paused:
            raise InvalidJobError(
                f"retry_job: job {job_id!r} is paused, so it cannot run now; resume it "
                f"first with resume_job({job_id!r}), then retry it if it should run at once"
            )
        now = self.now()
        job = job.replace(due_at=now, next_run_at=now, attempts=0, locked_by=None)
        self.writer.write([job])
        self._tell_recorder("retried", job.id, job)
        return job

    def pause_job(self, job_id: str) -> Job:
        """Pause a job: no daemon claims it until :meth:`resume_job`; return it as written.

        It keeps its schedule, arguments, options and history. A run in
        progress finishes (its daemon keeps its lease and completes it); the
        job is not claimed again. Pausing a paused job changes nothing and
        returns it as it is. Through ``request.scheduler`` the pause is
        written when the transaction commits; :class:`~pyramid_pyncette.events.JobPaused`
        is fired once it is written. Raises :class:`UnknownJobError` when no
        job has this id.
        """
        job = self._existing(check_job_id(job_id), "pause_job")
        if job.paused:
            return job
        paused = job.replace(
            options={**job.options, PAUSED_MARKER: True},
            due_at=None,
            # A daemon's lease stays, so the run in progress completes; a
            # transaction's staging lock does not (its commit would unpause the job).
            locked_by=job.locked_by if _leased_by_daemon(job) else None,
        )
        self.writer.write([paused], "paused")
        self._tell_recorder("paused", paused.id, paused)
        return paused

    def resume_job(self, job_id: str) -> Job:
        """Put a paused job back on its schedule; return it as written.

        A recurring job's next run is its first schedule time after now
        (the runs missed while paused are not made up), with its attempts
        reset; a one-off job runs at its date, or now when that has passed.
        A job whose run was still in progress when it was paused keeps that
        run's lease (it is claimable again once the lease expires, if its
        daemon never completes it). Resuming a job that is not paused
        changes nothing and returns it as it is.
        :class:`~pyramid_pyncette.events.JobResumed` is fired once written.
        Raises :class:`UnknownJobError` when no job has this id.
        """
        job = self._existing(check_job_id(job_id), "resume_job")
        if not job.paused:
            return job
        options = {k: v for k, v in job.options.items() if k != PAUSED_MARKER}
        now = self.now()
        if _leased_by_daemon(job):
            # Its daemon completes the run and moves the row on; until then the
            # row stays leased, due when the lease expires.
            lease = job.lease_duration or self.settings.lease_duration
            due_at = job.due_at or now + timedelta(seconds=lease)
            resumed = job.replace(options=options, due_at=due_at)
        else:
            try:
                at = _resume_time(job, now)
            except ScheduleError as exc:
                raise InvalidJobError(
                    f"resume_job: the schedule of job {job_id!r} is unreadable ({exc}); "
                    "add the job again with the same job_id to replace it, or cancel it"
                ) from None
            attempts = 0 if job.recurring else job.attempts
            # No run left (a schedule that ended): it resumes parked, as failed.
            resumed = job.replace(
                options=options, due_at=at, next_run_at=at, attempts=attempts, locked_by=None
            )
        self.writer.write([resumed], "resumed")
        self._tell_recorder("resumed", resumed.id, resumed)
        return resumed

    def pause_queue(self, name: str) -> bool:
        """Pause the queue ``name``: no daemon claims its jobs until :meth:`resume_queue`.

        Applied at once, in the store, for every daemon (within one poll),
        even through ``request.scheduler``: a queue's pause is not part of
        any transaction. Runs in progress finish. A queue may be paused
        before it holds any job. Returns whether it was not paused yet;
        :class:`~pyramid_pyncette.events.QueuePaused` is fired when it was.
        """
        name = check_queue(name, where="pause_queue")
        changed = self.repository.set_queue_paused(name, True)
        if changed:
            notify_subscribers(self.registry, QueuePaused(name, self.registry), log, "ignored")
        return changed

    def resume_queue(self, name: str) -> bool:
        """Let daemons claim the jobs of the queue ``name`` again (see :meth:`pause_queue`).

        Applied at once, not transactional. Returns whether it was paused;
        :class:`~pyramid_pyncette.events.QueueResumed` is fired when it was.
        """
        name = check_queue(name, where="resume_queue")
        changed = self.repository.set_queue_paused(name, False)
        if changed:
            notify_subscribers(self.registry, QueueResumed(name, self.registry), log, "ignored")
        return changed

    def get_queues(self) -> list[QueueInfo]:
        """Every queue that holds a job or is paused, by name: whether it is paused, how
        many of its jobs are due now (the backlog) and how many are running, its jobs
        counted by state and the earliest due time of those waiting for a daemon
        (see :class:`~pyramid_pyncette.jobs.QueueInfo`).

        One query, which reads every job of the store (on Redis, a chunk at a
        time): callers that ask often, such as metrics scrapes, cache it."""
        return self.repository.queue_stats(self.now())

    def get_paused_queues(self) -> frozenset[str]:
        """The names of the paused queues (one cheap read; :meth:`get_queues` counts
        every job)."""
        return frozenset(self.repository.paused_queues())

    def get_runs(
        self,
        job_id: str | None = None,
        task: Callable[..., Any] | str | None = None,
        queue: str | None = None,
        outcome: str | Iterable[str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of the run history, newest first (``.next_cursor`` fetches the next page).

        Filters combine: ``job_id``, ``task`` (a name or the task's
        function), ``queue``, ``outcome`` (one of ``'succeeded'``,
        ``'failed'``, ``'skipped'``, ``'lease_lost'``, or a collection of them).
        """
        where = "get_runs"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidJobError(f"{where}: limit must be a positive integer, got {limit!r}")
        if job_id is not None:
            job_id = check_job_id(job_id)
        name = None if task is None else self.tasks.resolve(task).name
        if queue is not None:
            queue = check_queue(queue, where=where)
        outcomes = None if outcome is None else _check_outcomes(outcome, where)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidJobError(
                f"{where}: cursor must be the next_cursor of an earlier page, got {cursor!r}"
            )
        return self.repository.list_runs(
            job_id=job_id, task=name, queue=queue, outcomes=outcomes, cursor=cursor, limit=limit
        )

    def get_jobs(
        self,
        task: Callable[..., Any] | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs ordered by id (``.next_cursor`` fetches the next page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidJobError(f"get_jobs: limit must be a positive integer, got {limit!r}")
        name = None if task is None else self.tasks.resolve(task).name
        return self.repository.list(task=name, cursor=cursor, limit=limit)

    def iter_jobs(
        self, task: Callable[..., Any] | str | None = None, page_size: int = 500
    ) -> Iterable[Job]:
        """Every job, fetched page by page."""
        cursor = None
        while True:
            page = self.get_jobs(task=task, limit=page_size, cursor=cursor)
            yield from page.jobs
            cursor = page.next_cursor
            if cursor is None:
                return

    # -- static periodic tasks -------------------------------------------

    def sync_periodic_jobs(self) -> list[Job]:
        """Bring the stored jobs in line with this application's code.

        Returns the jobs of periodic tasks it wrote (added, replaced or
        revived); the other jobs it revives or removes are logged.

        What a starting daemon (``pscheduler``, combined mode) and
        :func:`~pyramid_pyncette.testing.run_pending` do first:

        - every periodic task (``@periodic_task``) gets its job, with the task's
          name as id and marked as declared in code (see
          :data:`~pyramid_pyncette.options.PERIODIC_MARKER`). A stored job whose
          schedule, options and queue still match its task is kept, with its
          next run time; a changed one is replaced. A paused job stays paused
          either way (:meth:`pause_job`).
        - a job marked as declared in code whose task this code does not
          declare periodic (unknown here, or now a plain task) is removed.
          Jobs written before the marker existed are not marked, so they are
          never removed this way; a daemon that declares their task marks them.
        - a job parked because the daemon that claimed it did not know its
          task (see :func:`~pyramid_pyncette.policy.parked_for_unknown_task`)
          is revived when this code registers the task: its next run is its
          first schedule time after now (now for a one-off job whose time has
          passed), its attempts reset, its parking error cleared.

        The last two read, page by page, what
        :meth:`~pyramid_pyncette.repository.base.Repository.list_for_sync`
        returns: on SQL stores only parked jobs and jobs named after their
        task, elsewhere every stored job.
        """
        written = []
        for task in self.tasks:
            if not task.periodic:
                continue
            job = self._periodic_job(task)
            current = self.repository.get(job.id)
            paused = current is not None and current.problem is None and current.paused
            if current is not None and current.problem is None and _same_definition(current, job):
                if declared_periodic(current.options) or current.locked_by is not None:
                    continue
                # Written before the marker existed: mark it, keeping its next run
                # and its pause (a running one is marked by a later sync).
                job = current.replace(options={**current.options, **job.options})
            elif paused:
                # A changed definition replaces the job; an operator's pause stays.
                job = job.replace(options={**job.options, PAUSED_MARKER: True}, due_at=None)
            self.repository.add([job])
            written.append(job)
        written.extend(self._sweep_stored_jobs())
        return written

    def _sweep_stored_jobs(self) -> list[Job]:
        """Remove the periodic jobs this code no longer declares; revive jobs parked for
        an unknown task that this code registers. Returns the revived jobs of periodic tasks."""
        tasks = self.tasks
        revived: list[Job] = []
        cursor = None
        while True:
            page = self.repository.list_for_sync(cursor=cursor, limit=SYNC_PAGE_SIZE)
            now = self.now()
            stale, back = [], []
            for job in page.jobs:
                task = tasks.get(job.task) if isinstance(job.task, str) else None
                if declared_periodic(job.options) and (task is None or not task.periodic):
                    stale.append(job.id)
                elif task is not None and parked_for_unknown_task(job) and not job_problem(job):
                    try:
                        again = revive_parked(job, now)
                    except ScheduleError as exc:
                        log.warning(
                            "job %r stays parked: its schedule is unreadable (%s)", job.id, exc
                        )
                        continue
                    if again is not None:
                        back.append(again)
            if stale:
                for job_id in sorted(self.repository.remove(stale)):
                    log.info(
                        "periodic job %r removed: this application no longer declares its task "
                        "periodic",
                        job_id,
                    )
            if back:
                self.repository.add(back)
                for job in back:
                    log.info(
                        "job %r revived: its task %r is registered here (next run %s)",
                        job.id,
                        job.task,
                        job.next_run_at,
                    )
                revived.extend(job for job in back if _is_periodic_job(job, tasks.get(job.task)))
            cursor = page.next_cursor
            if cursor is None:
                return revived

    def _periodic_job(self, task: Task) -> Job:
        schedule = task.periodic_schedule(self.settings.timezone)
        job = self.build_job(task.name, schedule, job_id=task.name, where=f"task {task.name!r}")
        return job.replace(options={**job.options, PERIODIC_MARKER: True})


#: What a :data:`WriteRecorder` is told a write was.
RECORDED_ACTIONS = (
    "added",
    "replaced",
    "added or replaced",
    "cancelled",
    "cancelled (no such job)",
    "paused",
    "resumed",
    "retried",
)

#: The event a committed write fires, by its kind (see
#: :data:`~pyramid_pyncette.writers.WRITE_KINDS`).
_WRITE_EVENTS = {"scheduled": JobScheduled, "paused": JobPaused, "resumed": JobResumed}


def _leased_by_daemon(job: Job) -> bool:
    """Whether a daemon holds the job's lease (a transaction's staging lock is not one)."""
    locked_by = job.locked_by
    return locked_by is not None and not (
        isinstance(locked_by, str) and locked_by.startswith(STAGED_PREFIX)
    )


def _resume_time(job: Job, now: datetime) -> datetime | None:
    """When a resumed job runs next: a recurring job at its first schedule time after
    ``now`` (missed runs are not made up), a one-off job at its time, or ``now`` when
    that has passed; None when its schedule has no run left."""
    schedule = schedule_from_json(job.schedule)
    if job.recurring:
        return schedule.next_run(now, now)
    at = job.next_run_at if isinstance(job.next_run_at, datetime) else schedule.first_run(now)
    return None if at is None else max(at, now)


def _check_outcomes(outcome: str | Iterable[str], where: str) -> frozenset[str]:
    """The run outcomes asked for, or :class:`InvalidJobError` naming the known ones."""
    values: list[Any]
    if isinstance(outcome, str):
        values = [outcome]
    else:
        try:
            values = list(outcome)
        except TypeError:
            values = [outcome]
    known = ", ".join(repr(name) for name in RUN_OUTCOMES)
    if not values:
        raise InvalidJobError(f"{where}: outcome is empty; pass one of {known}, or leave it out")
    for value in values:
        if value not in RUN_OUTCOMES:
            raise InvalidJobError(
                f"{where}: outcome {value!r} is not a run outcome; pass one of {known} "
                "(or a list of them)"
            )
    return frozenset(values)


def _is_periodic_job(job: Job, task: Task | None) -> bool:
    """Whether ``job`` is the job of ``task``, a periodic task."""
    return task is not None and task.periodic and job.id == task.name


#: How many stored jobs :meth:`Scheduler.sync_periodic_jobs` reads per page.
SYNC_PAGE_SIZE = 500


def _same_definition(stored: Job, fresh: Job) -> bool:
    """Whether ``stored`` has ``fresh``'s task, schedule, options, arguments and queue
    (the anchor of an interval and the markers aside: a paused job stays paused)."""

    def signature(job: Job) -> tuple[Any, ...]:
        schedule = {k: v for k, v in job.schedule.items() if k != "start"}
        options = {k: v for k, v in job.options.items() if k not in MARKERS}
        return (job.task, schedule, options, job.args, job.kwargs, job.queue)

    return signature(stored) == signature(fresh)


#: ``request.scheduler``'s type: a bound scheduler is a :class:`Scheduler`
#: whose writer joins a transaction (see :meth:`Scheduler.bind`).
BoundScheduler = Scheduler
