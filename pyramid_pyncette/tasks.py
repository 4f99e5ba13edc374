"""Tasks: the registered callables that jobs may run.

Only registered tasks can run. A job row names a task; the daemon looks the
name up here and never imports anything read from the store.

Register with the ``@task()`` / ``@periodic_task(...)`` decorators (found by
``config.scan()``) or with the ``config.add_pyncette_task`` directive.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import venusian
from pyramid.exceptions import ConfigurationError

from .exceptions import InvalidJobError, UnknownTaskError
from .jobs import DEFAULT_QUEUE, MAX_JOB_ID_LENGTH, queue_name_problem
from .options import JOB_OPTIONS, ExecutionMode, options_from_arguments
from .schedules import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleError,
    check_cron_expression,
    check_interval_floor,
    get_zone,
)
from .settings import parse_duration

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry

#: Options only a task has.
TASK_ONLY_OPTIONS = ("timezone", "transactional")

#: The option naming a task's (or a job's) queue. It is not one of the stored
#: job options: a job keeps it in :attr:`~pyramid_pyncette.jobs.Job.queue`.
QUEUE_OPTION = "queue"

#: Options that only say what happens after a failed run, so mean nothing to an
#: at-most-once job (its run is never repeated).
RETRY_OPTIONS = (
    "failure_mode",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "retry_exhausted",
)

#: Longest accepted task name (the stores' ``task`` column).
MAX_TASK_NAME_LENGTH = 200

# NUL cannot be kept by PostgreSQL text; a lone surrogate is not valid UTF-8 anywhere.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(text: str) -> str | None:
    """Describe the first character of ``text`` that some store cannot keep, or None."""
    match = _UNSTORABLE_CHARACTER.search(text)
    if match is None:
        return None
    position = match.start()
    if match.group() == "\x00":
        return f"contains a NUL character (at position {position}), which not every store can keep"
    return (
        f"contains the lone surrogate {match.group()!r} (at position {position}), "
        "which is not valid Unicode text (was it decoded with errors='surrogateescape'?)"
    )


def interval_timezone_error(where: str) -> InvalidJobError:
    """The error for a time zone given to an interval schedule, which would ignore it."""
    return InvalidJobError(
        f"{where}: timezone= has no effect on an interval schedule (it runs every interval "
        "whatever the zone); drop timezone=, or use a cron schedule, which honours it"
    )


def normalize_options(options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Validate the options of a job (or, when ``where`` names a task, a task's options).

    Returns them as stored, in the order given: the job options parsed by
    :func:`~pyramid_pyncette.options.options_from_arguments` (durations as
    seconds, modes as their strings), plus a task's own ``timezone`` and
    ``transactional`` and ``queue``. ``where`` names the caller in error messages (e.g.
    ``"add_date_job"``). Raises :class:`InvalidJobError`.
    """
    extra = (*TASK_ONLY_OPTIONS, QUEUE_OPTION) if where.startswith("task") else ()
    parsed = options_from_arguments(options, where=where, extra=extra).to_json()
    result: dict[str, Any] = {}
    for key, value in options.items():
        if key in parsed:
            result[key] = parsed[key]
        elif key in extra and value is not None:
            _check_task_option(key, value, where)
            result[key] = value
    return result


def check_queue(name: Any, *, where: str) -> str:
    """``name`` if it is a queue name (see :data:`~pyramid_pyncette.jobs.QUEUE_NAME`),
    else :class:`InvalidJobError` prefixed with ``where``, saying how to fix it."""
    problem = queue_name_problem(name)
    if problem is not None:
        raise InvalidJobError(f"{where}: queue={name!r}: {problem}")
    return name


def _check_task_option(key: str, value: Any, where: str) -> None:
    if key == QUEUE_OPTION:
        check_queue(value, where=where)
    if key == "transactional" and not isinstance(value, bool):
        raise InvalidJobError(f"{where}: transactional must be True or False, got {value!r}")
    if key == "timezone":
        try:
            get_zone(value)
        except ScheduleError as exc:
            raise InvalidJobError(f"{where}: {exc}") from None


def check_option_combination(
    options: Mapping[str, Any], *, where: str, inherited: Mapping[str, Any] | None = None
) -> None:
    """Refuse resolved options that contradict each other.

    ``inherited`` holds the options that came from the task rather than the
    call, so the message can say where a conflicting value was set.
    """
    if options.get("execution_mode") != ExecutionMode.AT_MOST_ONCE:
        return
    for key in RETRY_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        origin = ", set on the task" if inherited is not None and key in inherited else ""
        raise InvalidJobError(
            f"{where}: {key} needs execution_mode='at_least_once' (it is {value!r}{origin}): "
            "an at-most-once run is never repeated, so a failed run has no retry for it to "
            f"shape; drop {key}, or use execution_mode='at_least_once'"
        )


def default_task_name(func: Callable[..., Any]) -> str:
    """``module:qualname`` of ``func``: stable across processes, never imported."""
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return f"{module}:{qualname}"


@dataclass(frozen=True)
class Task:
    """A registered callable plus its options.

    ``periodic`` is the schedule of a static recurring job declared in code
    (``@periodic_task``); such a task gets a job with the task's name as id,
    upserted whenever a daemon starts.
    """

    name: str
    func: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    interval: timedelta | None = None

    @property
    def periodic(self) -> bool:
        """Whether the task declares a static schedule."""
        return self.cron is not None or self.interval is not None

    @property
    def is_async(self) -> bool:
        """Whether calling the task returns a coroutine to run."""
        return inspect.iscoroutinefunction(self.func)

    @property
    def queue(self) -> str:
        """The queue of this task's jobs that name none (``'default'`` unless it sets one)."""
        return self.options.get(QUEUE_OPTION) or DEFAULT_QUEUE

    @property
    def job_options(self) -> dict[str, Any]:
        """The options every job of this task starts from."""
        return {k: v for k, v in self.options.items() if k in JOB_OPTIONS}

    @functools.cached_property
    def signature(self) -> inspect.Signature | None:
        """The signature of the function that is called, or None when it cannot be read."""
        try:
            # Not follow_wrapped: a decorator's wrapper is what gets called.
            return inspect.signature(self.func, follow_wrapped=False)
        except (TypeError, ValueError):
            return None

    @functools.cached_property
    def _open_signature(self) -> str | None:
        """For ``def f(request, *args, **kwargs)``, the first parameter's name, else None.

        Such a function binds any arguments but a keyword named like that
        parameter, so the full check can be skipped (it is costly per job).
        """
        if self.signature is None:
            return None
        params = list(self.signature.parameters.values())
        kinds = [param.kind for param in params]
        if len(params) == 3 and kinds[1:] == [
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ]:
            if kinds[0] is inspect.Parameter.POSITIONAL_ONLY:
                return ""  # no keyword can collide with it
            if kinds[0] is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                return params[0].name
        return None

    def check_call(self, args: Sequence[Any], kwargs: Mapping[str, Any], *, where: str) -> None:
        """Refuse job arguments the task's function could never be called with.

        The function is called as ``func(request, *args, **kwargs)``. Functions
        whose signature cannot be read are not checked.
        """
        if "request" in kwargs:
            raise InvalidJobError(
                f"{where}: kwargs must not contain 'request': task {self.name!r} is called as "
                "func(request, *args, **kwargs), so the request is always its first argument; "
                "rename that keyword argument"
            )
        signature = self.signature
        if signature is None:
            return
        first = self._open_signature
        if first is not None and first not in kwargs:
            return
        try:
            signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            shown = reprlib.repr(list(args)), reprlib.repr(dict(kwargs))
            raise InvalidJobError(
                f"{where}: task {self.name!r} cannot be called as func(request, *args, **kwargs) "
                f"with args={shown[0]}, kwargs={shown[1]}: {exc}; its function takes "
                f"{signature}, pass arguments that match"
            ) from None

    def check_definition(self) -> None:
        """Refuse a function that cannot take the request (or, for a periodic task, the
        request alone: its job carries no arguments)."""
        signature = self.signature
        if signature is None:
            return
        where = f"task {self.name!r}"
        try:
            if self.periodic:
                signature.bind(None)
            else:
                signature.bind_partial(None)
        except TypeError as exc:
            if self.periodic:
                fix = (
                    "a periodic task's job has no arguments, so it is called as func(request): "
                    "give the other parameters defaults"
                )
            else:
                fix = (
                    "a task is called as func(request, *args, **kwargs): give the function "
                    "a first parameter for the request"
                )
            raise InvalidJobError(
                f"{where}: its function takes {signature} ({exc}); {fix}"
            ) from None

    def periodic_schedule(self, default_timezone: str = "UTC") -> Schedule:
        """The declared schedule (raises if the task is not periodic)."""
        if self.cron is not None:
            zone = self.options.get("timezone") or default_timezone
            return CronSchedule(self.cron, timezone=zone)
        if self.interval is not None:
            return IntervalSchedule(self.interval)
        raise ValueError(f"task {self.name!r} has no schedule")


def make_task(
    func: Callable[..., Any],
    name: str | None = None,
    schedule: str | None = None,
    interval: timedelta | float | str | None = None,
    **options: Any,
) -> Task:
    """Validate a task definition (raises :class:`InvalidJobError`)."""
    if not callable(func):
        raise InvalidJobError(f"a task must be callable, got {func!r}")
    name = name or default_task_name(func)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_TASK_NAME_LENGTH:
        raise InvalidJobError(
            f"task name {name!r} must be a non-empty string of at most {MAX_TASK_NAME_LENGTH} chars"
        )
    problem = unstorable_text(name)
    if problem:
        raise InvalidJobError(f"task name {name!r} {problem}; remove it from name=")
    where = f"task {name!r}"
    options = normalize_options(options, where=where)
    check_option_combination(options, where=where)
    if schedule is not None and interval is not None:
        raise InvalidJobError(f"{where}: give either schedule= (cron) or interval=, not both")
    if interval is not None and options.get("timezone") is not None:
        raise interval_timezone_error(where)
    every = None
    if schedule is not None:
        try:
            check_cron_expression(schedule)
            CronSchedule(schedule, timezone=options.get("timezone", "UTC"))
        except ScheduleError as exc:
            raise InvalidJobError(f"{where}: {exc}") from None
    if interval is not None:
        try:
            every = timedelta(seconds=parse_duration(interval, key="interval"))
            check_interval_floor(every)
        except OverflowError:
            raise InvalidJobError(
                f"{where}: interval {interval!r} is too long for a schedule; use a duration "
                "such as '30s', '5m' or timedelta(hours=1)"
            ) from None
        except ValueError as exc:
            raise InvalidJobError(f"{where}: {exc}") from None
    task = Task(name=name, func=func, options=options, cron=schedule, interval=every)
    task.check_definition()
    return task


class TaskRegistry:
    """The tasks of one application, by name and by function."""

    def __init__(self) -> None:
        self._by_name: dict[str, Task] = {}
        self._by_func: dict[Any, list[str]] = {}

    def add(self, task: Task) -> None:
        """Register ``task`` (a later registration of the same name replaces it)."""
        old = self._by_name.get(task.name)
        if old is not None:
            self._by_func.get(old.func, []).remove(old.name)
        self._by_name[task.name] = task
        self._by_func.setdefault(task.func, []).append(task.name)

    def get(self, name: str) -> Task | None:
        """The task called ``name``, or None."""
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def resolve(self, func_or_name: Callable[..., Any] | str) -> Task:
        """The task for a registered function or a task name, or a helpful error."""
        if isinstance(func_or_name, str):
            task = self._by_name.get(func_or_name)
            if task is not None:
                return task
            close = difflib.get_close_matches(func_or_name, list(self._by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownTaskError(
                f"no task is registered as {func_or_name!r}{hint}; register it with the "
                "@pyramid_pyncette.task() decorator and config.scan(), or with "
                "config.add_pyncette_task(func)"
            )
        try:
            names = self._by_func.get(func_or_name)
        except TypeError:  # unhashable
            names = None
        if not names:
            label = (
                default_task_name(func_or_name) if callable(func_or_name) else repr(func_or_name)
            )
            raise UnknownTaskError(
                f"{label} is not a registered task; decorate it with @pyramid_pyncette.task() "
                "and config.scan() its module, or call config.add_pyncette_task(func) "
                "(then commit the configuration)"
            )
        if len(names) > 1:
            raise UnknownTaskError(
                f"{default_task_name(func_or_name)} is registered under several task names "
                f"({', '.join(sorted(names))}); pass the task name instead of the function"
            )
        return self._by_name[names[0]]


def check_job_id(job_id: Any) -> str:
    """Validate a caller-supplied job id."""
    if not isinstance(job_id, str):
        raise InvalidJobError(
            f"job_id must be a string, got {type(job_id).__name__} {job_id!r}; "
            "pass str(value) or leave job_id out to get a generated id"
        )
    if not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
        raise InvalidJobError(
            f"job_id must be 1 to {MAX_JOB_ID_LENGTH} characters, got {len(job_id)}"
        )
    problem = unstorable_text(job_id)
    if problem:
        raise InvalidJobError(f"job_id {job_id!r} {problem}; remove that character from the id")
    return job_id


def add_pyncette_task(
    config: Configurator,
    func: Callable[..., Any] | str,
    name: str | None = None,
    schedule: str | None = None,
    interval: timedelta | float | str | None = None,
    **options: Any,
) -> None:
    """Register ``func`` as a task (a Pyramid configuration directive).

    ``schedule`` (a cron string) or ``interval`` (seconds, ``'30s'`` or a
    ``timedelta``) also declares a static recurring job for the task.
    Options: ``execution_mode``, ``failure_mode``, ``lease_duration``,
    ``max_retries``, ``retry_backoff``, ``retry_backoff_max``,
    ``retry_exhausted``, ``misfire_grace_time``, ``timezone``,
    ``transactional``, ``queue`` (the queue of its jobs, default
    ``'default'``). Two tasks with the same name conflict.
    """
    resolved: Callable[..., Any] = config.maybe_dotted(func)
    task = make_task(resolved, name=name, schedule=schedule, interval=interval, **options)

    def register() -> None:
        if task.options.get("transactional") and not getattr(
            config.registry, "pyncette_session_hook", None
        ):
            raise ConfigurationError(
                f"task {task.name!r} is transactional=True, which completes the job in the "
                "app's own database transaction: set pyncette.session_hook (and point "
                "pyncette.url at the app's database), or drop transactional=True"
            )
        get_task_registry(config.registry).add(task)

    intr = config.introspectable("pyncette tasks", task.name, task.name, "pyncette task")
    intr["func"] = resolved
    intr["schedule"] = schedule
    intr["interval"] = task.interval
    intr["options"] = task.options
    config.action(("pyncette-task", task.name), register, introspectables=(intr,))


def get_task_registry(registry: Registry) -> TaskRegistry:
    """The application's :class:`TaskRegistry` (created on first use)."""
    tasks = getattr(registry, "pyncette_tasks", None)
    if tasks is None:
        tasks = registry.pyncette_tasks = TaskRegistry()
    return tasks


class task:
    """Register the decorated function as a task, found by ``config.scan()``.

    ``@task()`` or ``@task(name='send-mail', failure_mode='unlock')``. The
    function is called as ``func(request, *args, **kwargs)``.
    """

    venusian = venusian  # for testing

    def __init__(self, name: str | None = None, **options: Any) -> None:
        self.name = name
        self.options = options
        self.depth = options.pop("_depth", 0)

    def _directive_args(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    def __call__(self, wrapped: Callable[..., Any]) -> Callable[..., Any]:
        arguments = self._directive_args()

        def callback(context: Any, name: str, ob: Any) -> None:
            config = context.config.with_package(info.module)
            config.add_pyncette_task(wrapped, **arguments)

        info = self.venusian.attach(wrapped, callback, category="pyramid", depth=self.depth + 1)
        return wrapped


class periodic_task(task):
    """Register a task that also runs on a schedule declared in code.

    ``@periodic_task(schedule='*/5 * * * *')`` (cron, in ``timezone=`` or the
    ``pyncette.timezone`` setting) or ``@periodic_task(interval='30s')`` (at
    least one second; no ``timezone=``). The function is called with the
    request alone, so its other parameters need defaults.
    """

    def __init__(
        self,
        schedule: str | None = None,
        interval: timedelta | float | str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        if (schedule is None) == (interval is None):
            raise InvalidJobError(
                "@periodic_task needs exactly one of schedule= (a cron string such as "
                "'*/5 * * * *') or interval= (such as '30s' or timedelta(minutes=5))"
            )
        super().__init__(name=name, **options)
        self.schedule = schedule
        self.interval = interval

    def _directive_args(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "interval": self.interval, **super()._directive_args()}
