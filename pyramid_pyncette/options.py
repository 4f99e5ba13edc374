"""Job options: one typed, frozen object, parsed in one place.

A job carries its options as JSON (``Job.options``): the execution mode, the
failure mode, the lease duration, the retry options and the misfire grace
time; an option the job does not set is absent, so the daemon's settings
apply to it. :class:`JobOptions` is the typed form of that JSON.

One parser reads both ends of a job's life. At add time
(:func:`options_from_arguments`) it is strict: unknown names, durations such
as ``'30s'``, and limits are checked, and a bad value raises
:class:`InvalidJobError` naming the fix. At read time
(:func:`options_from_json`) it never raises: a stored value that is not
what any version of this package writes becomes a problem text, and the
options it could read are kept.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .exceptions import InvalidJobError, short_repr


class _Choice(str, enum.Enum):
    """An option value: compares, formats and serialises as its string."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ExecutionMode(_Choice):
    """How often a run may happen when a daemon dies during it."""

    #: Leased: a run lost with its daemon runs again once its lease expires (the default).
    AT_LEAST_ONCE = "at_least_once"
    #: Advanced (or deleted) by its claim: a run lost with its daemon is never repeated.
    AT_MOST_ONCE = "at_most_once"


class FailureMode(_Choice):
    """What a failed run of a job that chose it does (without ``max_retries``: unbounded)."""

    #: Keep the lease: the run is retried once the lease expires.
    NONE = "none"
    #: Unlock the job: it is retried at the next poll.
    UNLOCK = "unlock"
    #: Count the run as done: a one-off job is deleted, a recurring one moves on.
    COMMIT = "commit"


class RetryExhausted(_Choice):
    """What a recurring job does once its last retry failed."""

    #: Move on to its next run (the default).
    ADVANCE = "advance"
    #: Park it as failed (no due time) until it is retried or replaced.
    PARK = "park"


#: Options that are durations (given as seconds, ``'30s'`` or a ``timedelta``; stored as seconds).
DURATION_OPTIONS = ("lease_duration", "retry_backoff", "retry_backoff_max", "misfire_grace_time")

#: Longest accepted ``max_retries``.
MAX_RETRIES_LIMIT = 1000

#: Stored durations beyond this many seconds are unreadable (no version writes them).
_MAX_STORED_SECONDS = 1e10


@dataclass(frozen=True)
class JobOptions:
    """The options of one job; ``None`` means unset (the daemon's settings apply)."""

    execution_mode: ExecutionMode | None = None
    failure_mode: FailureMode | None = None
    lease_duration: float | None = None
    max_retries: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    retry_exhausted: RetryExhausted | None = None
    misfire_grace_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The options as stored: the set ones only, enums as their strings."""
        result: dict[str, Any] = {}
        for name in JOB_OPTIONS:
            value = getattr(self, name)
            if value is not None:
                result[name] = value.value if isinstance(value, enum.Enum) else value
        return result


#: Options a job (and so a task) can carry, in the order error messages list them.
JOB_OPTIONS = tuple(field.name for field in fields(JobOptions))

#: The options of a job that sets none.
NO_OPTIONS = JobOptions()

#: The stored option that marks the job of a periodic task declared in code
#: (``@periodic_task``, or ``config.add_pyncette_task`` with ``schedule=`` or
#: ``interval=``): ``true``. Only the scheduler writes it (no ``add_*_job`` or
#: task accepts it as an option), so the stored options of other jobs never
#: hold it. A daemon removes a marked job whose task its code no longer
#: declares periodic.
PERIODIC_MARKER = "periodic"


#: The stored option that marks a paused job
#: (:meth:`~pyramid_pyncette.scheduler.Scheduler.pause_job`): ``true``. Like
#: :data:`PERIODIC_MARKER`, only the scheduler writes it. A claim that finds a
#: due job carrying it takes the job off the schedule (no due time) instead of
#: running it: a job paused while it ran is not claimed again once its run
#: finishes.
PAUSED_MARKER = "paused"

#: The stored options that are markers, not options a caller gives.
MARKERS = (PERIODIC_MARKER, PAUSED_MARKER)


def is_paused(stored: Any) -> bool:
    """Whether stored options carry the pause marker (see :data:`PAUSED_MARKER`). Never raises."""
    return isinstance(stored, dict) and stored.get(PAUSED_MARKER) is True


def declared_periodic(stored: Any) -> bool:
    """Whether stored options carry the periodic marker (see :data:`PERIODIC_MARKER`).

    Never raises: options that are not an object, or hold anything but
    ``true`` under the marker, are not marked (an unreadable marker is
    reported by :func:`options_from_json`).
    """
    return isinstance(stored, dict) and stored.get(PERIODIC_MARKER) is True


class _Problem(ValueError):
    """One option's value is wrong; the text says how, without naming the caller."""


def _enum(kind: type[enum.Enum]) -> Callable[[str, Any, bool], Any]:
    def parse(key: str, value: Any, stored: bool) -> Any:
        try:
            return kind(value)
        except (ValueError, TypeError):
            if stored:
                raise _Problem(f"option {key} is {short_repr(value)}") from None
            known = ", ".join(member.value for member in kind)
            raise _Problem(f"{key} {value!r} is not one of {known}") from None

    return parse


def _count(key: str, value: Any, stored: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        if stored:
            raise _Problem(f"option {key} is {short_repr(value)}, not a whole number >= 0")
        raise _Problem(_count_error(key, value))
    if not stored and value > MAX_RETRIES_LIMIT:
        raise _Problem(_count_error(key, value))
    return value


def _count_error(key: str, value: Any) -> str:
    return (
        f"{key} must be a whole number from 0 to {MAX_RETRIES_LIMIT}, got {value!r}; e.g. {key}=3"
    )


def _duration(key: str, value: Any, stored: bool) -> float:
    if stored:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value < _MAX_STORED_SECONDS
        ):
            raise _Problem(f"option {key} is {short_repr(value)}, not a positive number of seconds")
        return float(value)
    # settings imports jobs, which imports this module: import its parser when first used.
    from .settings import MAX_DURATION, parse_duration

    try:
        seconds = parse_duration(value, key=key)
    except ValueError as exc:
        raise _Problem(str(exc)) from None
    if seconds > MAX_DURATION:
        raise _Problem(
            f"{key} of {seconds:g}s is too long; use a duration above 0 and "
            f"at most ten years ({MAX_DURATION}s)"
        )
    return seconds


_PARSERS: dict[str, Callable[[str, Any, bool], Any]] = {
    "execution_mode": _enum(ExecutionMode),
    "failure_mode": _enum(FailureMode),
    "lease_duration": _duration,
    "max_retries": _count,
    "retry_backoff": _duration,
    "retry_backoff_max": _duration,
    "retry_exhausted": _enum(RetryExhausted),
    "misfire_grace_time": _duration,
}
assert tuple(_PARSERS) == JOB_OPTIONS


def options_from_arguments(
    given: Mapping[str, Any], *, where: str, extra: Collection[str] = ()
) -> JobOptions:
    """The options a caller gave (``add_*_job(**options)``, a task's options). Strict.

    ``extra`` names further options the caller may give (a task's own, such as
    ``timezone``): they are accepted here and checked by the caller. Raises
    :class:`InvalidJobError`, prefixed with ``where``, for an unknown name or
    a bad value. ``None`` values count as unset.
    """
    values: dict[str, Any] = {}
    for key, value in given.items():
        parse = _PARSERS.get(key)
        if parse is None:
            if key in extra:
                continue
            allowed = JOB_OPTIONS + tuple(extra)
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InvalidJobError(
                f"{where}: unknown option {key!r}{suggestion}; allowed options are "
                + ", ".join(allowed)
            )
        if value is None:
            continue
        try:
            values[key] = parse(key, value, False)
        except _Problem as exc:
            raise InvalidJobError(f"{where}: {exc}") from None
    return JobOptions(**values) if values else NO_OPTIONS


def options_from_json(stored: Any) -> tuple[JobOptions, str | None]:
    """The options of a stored job, and what is wrong with them (None: nothing). Never raises.

    Options this version does not know are ignored (a newer version may have
    written them); a known one holding a value no version writes is left
    unset, and the first such value is described in the problem text. The
    markers (:data:`PERIODIC_MARKER`, :data:`PAUSED_MARKER`) are not options:
    they are only checked to be booleans.
    """
    if not isinstance(stored, dict):
        return NO_OPTIONS, None
    if not stored:
        return NO_OPTIONS, None
    values: dict[str, Any] = {}
    problem = None
    for key, value in stored.items():
        parse = _PARSERS.get(key)
        if parse is None or value is None:
            if key in MARKERS and value is not None and not isinstance(value, bool):
                problem = problem or f"option {key} is {short_repr(value)}, not true or false"
            continue
        try:
            values[key] = parse(key, value, True)
        except _Problem as exc:
            problem = problem or str(exc)
    return _stored_options(values), problem


def _stored_options(values: dict[str, Any]) -> JobOptions:
    """``JobOptions(**values)`` for already parsed values, cheaply (the claim path reads
    the options of every claimed job): unset fields fall back to the class defaults."""
    if not values:
        return NO_OPTIONS
    options = object.__new__(JobOptions)
    options.__dict__.update(values)
    return options
