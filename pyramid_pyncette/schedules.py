"""Schedules: when a job runs.

Three kinds of schedule are supported:

* :class:`DateSchedule` - a single run at a fixed instant;
* :class:`IntervalSchedule` - a run every ``interval`` on a fixed grid;
* :class:`CronSchedule` - a cron expression evaluated in an IANA timezone.

Every datetime returned by this module is timezone-aware UTC. Inputs are
normalised with :func:`ensure_aware`, which refuses naive datetimes instead of
guessing their timezone.

Missed runs are *coalesced*: when a worker comes back after the schedule has
fired several times, the job runs once and the next run is the first schedule
time strictly after the moment it ran. Runs are never replayed one by one.

Schedules serialise to plain JSON dicts (:meth:`Schedule.to_json`) and back
(:func:`schedule_from_json`) so they can be stored in a database.
"""

from __future__ import annotations

import abc
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from dateutil.parser import isoparse

from .exceptions import short_repr

__all__ = [
    "MIN_INTERVAL",
    "UTC",
    "CronSchedule",
    "DateSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "check_cron_expression",
    "check_interval_floor",
    "cron_from_fields",
    "ensure_aware",
    "get_zone",
    "schedule_from_json",
    "zone_name",
]

UTC = timezone.utc

_ONE_MICROSECOND = timedelta(microseconds=1)

#: Shortest interval accepted for a new interval schedule. A daemon claims,
#: runs and completes a job through the store on every run; below a second
#: that is a busy loop, and ``pscheduler --once`` would never catch up.
MIN_INTERVAL = timedelta(seconds=1)

#: croniter gives up when no match is found within this many years. Its year
#: field only goes from 1970 to 2099, so this covers every valid expression.
_CRON_MAX_YEARS = 130

#: Bounds for the search of a fire time that passes the ISO-week filter and
#: the daylight-saving de-duplication.
_MAX_CRON_ITERATIONS = 100_000
_WEEK_FILTER_HORIZON = timedelta(days=3653)  # about ten years

_CRON_HELP = (
    "expected 5 fields 'minute hour day month day_of_week' with an optional 6th "
    "seconds field (and an optional 7th year field), e.g. '*/5 * * * *'"
)


class ScheduleError(ValueError):
    """Bad schedule input; the message names the problem and the fix."""


# ---------------------------------------------------------------------------
# datetimes and timezones
# ---------------------------------------------------------------------------


def ensure_aware(value: Any, *, name: str = "date") -> datetime:
    """Return ``value`` as a timezone-aware UTC datetime.

    Accepted inputs:

    * an aware :class:`~datetime.datetime` (converted to UTC);
    * ``int`` / ``float`` epoch seconds (``bool`` is refused);
    * an ISO-8601 string that carries an offset, e.g.
      ``'2026-01-01T10:00:00+01:00'`` or ``'2026-01-01T09:00:00Z'``.

    Naive datetimes and offset-less strings raise :class:`ScheduleError`: the
    timezone is never guessed.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ScheduleError(
                f"{name}: naive datetime {value} has no timezone; pass an aware datetime "
                "such as datetime(..., tzinfo=timezone.utc) or epoch seconds"
            )
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise ScheduleError(f"{name}: datetime {value} cannot be converted to UTC") from exc
    if isinstance(value, bool):
        raise ScheduleError(
            f"{name}: expected an aware datetime, epoch seconds or an ISO-8601 string "
            f"with an offset, got a bool ({value!r})"
        )
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ScheduleError(f"{name}: epoch seconds must be a finite number, got {value!r}")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ScheduleError(
                f"{name}: epoch seconds {value!r} are out of the supported date range"
            ) from exc
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = isoparse(text)
        except (ValueError, OverflowError) as exc:
            raise ScheduleError(
                f"{name}: cannot parse {value!r} as an ISO-8601 datetime ({exc}); "
                "use a form such as '2026-01-01T10:00:00+00:00'"
            ) from exc
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ScheduleError(
                f"{name}: ISO-8601 string {value!r} has no UTC offset; add one, "
                "e.g. '2026-01-01T10:00:00+00:00' or '2026-01-01T10:00:00Z'"
            )
        return parsed.astimezone(UTC)
    if isinstance(value, date):
        raise ScheduleError(
            f"{name}: got a date ({value!r}) without a time; pass an aware datetime such as "
            "datetime(..., tzinfo=timezone.utc)"
        )
    raise ScheduleError(
        f"{name}: expected an aware datetime, epoch seconds or an ISO-8601 string with an "
        f"offset, got {type(value).__name__}"
    )


def get_zone(name: str | tzinfo | None, default: str = "UTC") -> tzinfo:
    """Return the tzinfo for an IANA timezone name.

    ``None`` means ``default``; a tzinfo instance is returned unchanged;
    ``'UTC'`` gives :data:`UTC`.
    """
    if name is None:
        name = default
    if isinstance(name, tzinfo):
        return name
    if not isinstance(name, str):
        raise ScheduleError(
            f"timezone must be an IANA name such as 'Europe/Paris' or 'UTC', "
            f"got {type(name).__name__}"
        )
    key = name.strip()
    if key == "UTC":
        return UTC
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(
            f"unknown timezone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from exc


def zone_name(tz: tzinfo | str) -> str:
    """Return the IANA name of ``tz`` ('UTC' for :data:`UTC`).

    Names are validated. Fixed-offset tzinfos other than UTC cannot be named
    and raise :class:`ScheduleError`.
    """
    if isinstance(tz, str):
        zone = get_zone(tz)
        return "UTC" if zone is UTC else tz.strip()
    if isinstance(tz, ZoneInfo):
        if tz.key is None:
            raise ScheduleError(
                f"timezone {tz!r} was not loaded by name; use ZoneInfo('Area/City') "
                "or an IANA name such as 'Europe/Paris'"
            )
        return tz.key
    if isinstance(tz, timezone):
        if tz == UTC:
            return "UTC"
        raise ScheduleError(
            f"fixed-offset timezone {tz} has no IANA name and ignores daylight saving; "
            "use an IANA name such as 'Europe/Paris' or 'UTC'"
        )
    if isinstance(tz, tzinfo):
        # Other libraries (pytz, ...) expose the name under one of these.
        for attr in ("key", "zone"):
            candidate = getattr(tz, attr, None)
            if isinstance(candidate, str) and candidate:
                return zone_name(candidate)
        raise ScheduleError(
            f"cannot find the IANA name of timezone {tz!r}; "
            "use an IANA name such as 'Europe/Paris' or 'UTC'"
        )
    raise ScheduleError(
        f"timezone must be an IANA name such as 'Europe/Paris' or 'UTC', got {type(tz).__name__}"
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _format_interval(interval: timedelta) -> str:
    total_us = interval // _ONE_MICROSECOND
    whole_seconds, micros = divmod(total_us, 1_000_000)
    days, rest = divmod(whole_seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if micros:
        parts.append(f"{seconds}.{micros:06d}".rstrip("0") + "s")
    elif seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)


def check_interval_floor(interval: timedelta) -> None:
    """Refuse an interval shorter than :data:`MIN_INTERVAL` (for new schedules).

    Stored schedules are not checked, so jobs written before the floor existed still run.
    """
    if interval < MIN_INTERVAL:
        raise ScheduleError(
            f"interval: {_format_interval(interval)} is shorter than the minimum of "
            f"{_format_interval(MIN_INTERVAL)}; use interval='1s' or longer (for work that "
            "must follow on at once, have the task add its next job with add_async_job)"
        )


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------


class Schedule(abc.ABC):
    """When a job runs. Concrete schedules are immutable and compare by value."""

    kind: ClassVar[str]
    recurring: ClassVar[bool]

    @abc.abstractmethod
    def first_run(self, now: datetime) -> datetime | None:
        """First run time for a job created at ``now``."""

    @abc.abstractmethod
    def next_run(self, scheduled_at: datetime, now: datetime) -> datetime | None:
        """The next run after a run that was due at ``scheduled_at`` and ran at ``now``.

        Missed runs are coalesced: the result is the first schedule time
        strictly after ``max(scheduled_at, now)``. One-off schedules return
        ``None``.
        """

    @abc.abstractmethod
    def to_json(self) -> dict:
        """A plain JSON-able dict with a ``'kind'`` key."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Short human readable description."""

    def anchored(self, now: datetime) -> Schedule:
        """A copy whose future run times no longer depend on ``now``.

        Call this before persisting a schedule for a job created at ``now``.
        Only an :class:`IntervalSchedule` without a start date changes.
        """
        return self

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class DateSchedule(Schedule):
    """A single run at ``run_at``.

    A date in the past is still returned by :meth:`first_run`: the job runs as
    soon as possible.
    """

    run_at: datetime

    kind: ClassVar[str] = "date"
    recurring: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_at", ensure_aware(self.run_at, name="run_at"))

    def first_run(self, now: datetime) -> datetime | None:
        return self.run_at

    def next_run(self, scheduled_at: datetime, now: datetime) -> datetime | None:
        return None

    def to_json(self) -> dict:
        return {"kind": self.kind, "run_at": _iso(self.run_at)}

    def describe(self) -> str:
        return f"at {_iso(self.run_at)}"


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """A run every ``interval``, at ``start_date + k * interval``.

    Without ``start_date`` the first run is ``now + interval``; call
    :meth:`anchored` before persisting so the grid is fixed. ``interval`` may
    also be given as a number of seconds.
    """

    interval: timedelta
    start_date: datetime | None = None

    kind: ClassVar[str] = "interval"
    recurring: ClassVar[bool] = True

    def __post_init__(self) -> None:
        interval = self.interval
        if isinstance(interval, bool) or not isinstance(interval, (timedelta, int, float)):
            raise ScheduleError(
                f"interval must be a timedelta (or seconds), got {type(interval).__name__}; "
                "e.g. timedelta(minutes=5)"
            )
        if not isinstance(interval, timedelta):
            if not math.isfinite(interval):
                raise ScheduleError(f"interval must be a finite number of seconds, got {interval}")
            try:
                interval = timedelta(seconds=interval)
            except OverflowError as exc:
                raise ScheduleError(f"interval of {self.interval} seconds is too large") from exc
        if interval <= timedelta(0):
            raise ScheduleError(
                f"interval must be positive, got {interval!r}; e.g. timedelta(seconds=30)"
            )
        object.__setattr__(self, "interval", interval)
        if self.start_date is not None:
            object.__setattr__(self, "start_date", ensure_aware(self.start_date, name="start_date"))

    def anchored(self, now: datetime) -> IntervalSchedule:
        if self.start_date is not None:
            return self
        return replace(self, start_date=ensure_aware(now, name="now") + self.interval)

    def _first_on_grid(self, start: datetime, ref: datetime, *, strict: bool) -> datetime | None:
        """First ``start + k*interval`` (k >= 0) after ``ref`` (``>`` if strict, else ``>=``)."""
        try:
            if start > ref or (not strict and start == ref):
                return start
            # Exact integer arithmetic on microseconds: timedelta // timedelta is an int.
            steps = (ref - start) // self.interval
            candidate = start + steps * self.interval
            if candidate < ref or (strict and candidate == ref):
                candidate += self.interval
            return candidate
        except OverflowError:
            return None

    def first_run(self, now: datetime) -> datetime | None:
        now = ensure_aware(now, name="now")
        if self.start_date is None:
            try:
                return now + self.interval
            except OverflowError:
                return None
        return self._first_on_grid(self.start_date, now, strict=False)

    def next_run(self, scheduled_at: datetime, now: datetime) -> datetime | None:
        scheduled_at = ensure_aware(scheduled_at, name="scheduled_at")
        now = ensure_aware(now, name="now")
        # An unanchored schedule is anchored on the run that was due.
        start = scheduled_at if self.start_date is None else self.start_date
        return self._first_on_grid(start, max(scheduled_at, now), strict=True)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "microseconds": self.interval // _ONE_MICROSECOND,
            "start": _iso(self.start_date),
        }

    def describe(self) -> str:
        text = f"every {_format_interval(self.interval)}"
        if self.start_date is not None:
            text += f" from {_iso(self.start_date)}"
        return text


_WEEK_ITEM = re.compile(r"^(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?$")


def _parse_weeks(spec: str) -> frozenset[int]:
    """Parse an ISO-week filter such as ``'*'``, ``'5'``, ``'1-10'``, ``'1,15'`` or ``'*/2'``."""
    weeks: set[int] = set()
    for item in spec.split(","):
        match = _WEEK_ITEM.match(item)
        if match is None:
            raise ScheduleError(
                f"invalid week filter {spec!r}: cannot parse {item!r}; use ISO week numbers "
                "1-53 such as 5, '1-10', '1,15' or '*/2'"
            )
        star, low, high, step = match.groups()
        if star:
            first, last = 1, 53
        else:
            first = int(low)
            last = int(high) if high is not None else (53 if step is not None else first)
        step_value = int(step) if step is not None else 1
        if not (1 <= first <= last <= 53) or step_value < 1:
            raise ScheduleError(
                f"invalid week filter {spec!r}: {item!r} is out of range; ISO week numbers "
                "go from 1 to 53 and ranges must be increasing, e.g. '1-10' or '*/2'"
            )
        weeks.update(range(first, last + 1, step_value))
    return frozenset(weeks)


def _normalise_weeks(weeks: Any) -> str | None:
    if weeks is None:
        return None
    if isinstance(weeks, bool) or not isinstance(weeks, (int, str)):
        raise ScheduleError(
            f"week filter must be an int or a string such as '1-10' or '*/2', "
            f"got {type(weeks).__name__}"
        )
    text = str(weeks).replace(" ", "")
    _parse_weeks(text)
    return text


def _cron_error(expression: str, reason: str) -> ScheduleError:
    return ScheduleError(f"invalid cron expression {expression!r}: {reason}; {_CRON_HELP}")


@dataclass(frozen=True)
class _CronField:
    """One cron field: its name (as the keyword of ``cron_from_fields``) and range."""

    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)
    names_hint: str = ""
    #: Where a wrapping range turns around (day_of_week: Saturday, as 7 is Sunday again).
    cycle_end: int | None = None

    @property
    def allowed(self) -> str:
        return f"{self.low}-{self.high}{self.names_hint}"


_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}

#: The fields in cron order: 5 fields, a 6th (seconds) and a 7th (year) when given.
_CRON_FIELDS = (
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day", 1, 31),
    _CronField("month", 1, 12, _MONTH_NAMES, " or jan-dec"),
    _CronField("day_of_week", 0, 7, _DAY_NAMES, " (0 and 7 are Sunday) or sun-sat", cycle_end=6),
    _CronField("second", 0, 59),
    _CronField("year", 1970, 2099),
)

_CRON_FIELDS_BY_NAME = {spec.name: spec for spec in _CRON_FIELDS}

# A plain item: '*' or '?', a value or a range of values, and an optional step. Anything
# else ('L', '15W', 'mon#2', ...) is left to croniter to accept or refuse.
_CRON_ITEM = re.compile(
    r"(?:(?P<any>[*?])|(?P<first>[0-9]+|[a-z]+)(?:-(?P<last>[0-9]+|[a-z]+))?)"
    r"(?:/(?P<step>[0-9]+))?",
    re.IGNORECASE,
)


def _cron_value(spec: _CronField, token: str) -> tuple[int | None, str | None]:
    """The number ``token`` stands for in ``spec``, or a description of what is wrong."""
    if token.isdigit():
        number = int(token)
        if spec.low <= number <= spec.high:
            return number, None
        return None, f"{spec.name} {token} is out of range {spec.allowed}"
    named = spec.names.get(token.lower())
    if named is None:
        kind = "a name this field knows" if spec.names else "a number"
        return None, f"{spec.name} {token!r} is not {kind}; use {spec.allowed}"
    return named, None


def _cron_field_problem(spec: _CronField, text: str) -> str | None:
    """What is wrong with one field, or None when nothing we check is."""
    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if match is None or (match["first"] or "").lower() == "l":
            continue  # special syntax: croniter decides
        values: list[int] = []
        for token in (match["first"], match["last"]):
            if token is not None:
                number, problem = _cron_value(spec, token)
                if number is None:
                    return problem
                values.append(number)
        if len(values) == 2 and spec.cycle_end is not None and values[1] == spec.low:
            values[1] = spec.high  # 'fri-sun': Sunday is 7 as well as 0
        if len(values) == 2 and values[1] < values[0]:
            first, last = values
            end = spec.high if spec.cycle_end is None else spec.cycle_end
            wrap_high = str(first) if first >= end else f"{first}-{end}"
            wrap_low = str(spec.low) if last == spec.low else f"{spec.low}-{last}"
            return (
                f"{spec.name} range {match['first']}-{match['last']} runs backwards; write "
                f"'{last}-{first}', or '{wrap_high},{wrap_low}' for a range that wraps around"
            )
        step = match["step"]
        if step is not None:
            if int(step) == 0:
                return f"{spec.name} step 0 in {item!r} repeats nothing; use a step of 1 or more"
            if int(step) > spec.high - spec.low:
                return (
                    f"{spec.name} step {int(step)} in {item!r} is larger than the range "
                    f"{spec.low}-{spec.high}, so it matches once at most; a cron step never "
                    "carries over into the next field: for a fixed period use an interval "
                    "schedule"
                )
    return None


def check_cron_expression(expression: Any) -> None:
    """Refuse a cron expression a new schedule should not use, naming the field at fault.

    On top of what croniter refuses, ranges that run backwards (``'5-2'``,
    which croniter reads as wrapping around) and steps larger than their
    field are refused. Stored schedules are not held to these extra rules.
    """
    if not isinstance(expression, str):
        return  # CronSchedule reports the type
    fields = expression.split()
    if not 5 <= len(fields) <= len(_CRON_FIELDS):
        raise _cron_error(" ".join(fields), f"it has {len(fields)} fields")
    if _has_random_field(fields):
        return  # CronSchedule explains why 'R' is refused
    for spec, text in zip(_CRON_FIELDS, fields, strict=False):
        problem = _cron_field_problem(spec, text)
        if problem:
            raise ScheduleError(f"invalid cron expression {' '.join(fields)!r}: {problem}")


def _has_random_field(fields: list[str]) -> bool:
    for fld in fields:
        for part in fld.split(","):
            if part == "R" or part.startswith(("R(", "R/")):
                return True
    return False


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """Runs at the times matched by a cron ``expression`` in ``timezone``.

    ``expression`` has 5 fields (``minute hour day month day_of_week``), 6
    (6th = seconds) or 7 (7th = year), as understood by croniter. When both
    ``day`` and ``day_of_week`` are restricted, cron semantics apply: a day
    matching either of them fires.

    ``start_date``: no run before it. ``weeks``: optional ISO-week-number
    filter ('5', '1-10', '1,15', '*/2'); fires in other weeks are skipped.

    Daylight saving time: the expression is evaluated in ``timezone``.

    * Spring forward: a wall time that does not exist that day (02:30 in
      Europe/Paris on the last Sunday of March) is handled the croniter way:
      the job fires at the first existing instant after the gap (03:00 local).
    * Fall back: a wall time that happens twice fires once for a job with a
      fixed hour (daily 02:30 fires only at the first 02:30), while a job whose
      hour field is ``*`` follows real time and fires in both copies of the
      repeated hour (``'0 * * * *'`` fires at every UTC hour exactly once).
    """

    expression: str
    timezone: str = "UTC"
    start_date: datetime | None = None
    weeks: str | None = None

    _zone: tzinfo = field(init=False, repr=False, compare=False)
    _week_set: frozenset[int] | None = field(init=False, repr=False, compare=False)
    _hour_wildcard: bool = field(init=False, repr=False, compare=False)

    kind: ClassVar[str] = "cron"
    recurring: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise ScheduleError(
                f"cron expression must be a string such as '*/5 * * * *', "
                f"got {type(self.expression).__name__}"
            )
        expression = " ".join(self.expression.split())
        object.__setattr__(self, "expression", expression)
        if self.timezone is None:
            object.__setattr__(self, "timezone", "UTC")
        name = zone_name(self.timezone)
        object.__setattr__(self, "timezone", name)
        object.__setattr__(self, "_zone", get_zone(name))
        if self.start_date is not None:
            object.__setattr__(self, "start_date", ensure_aware(self.start_date, name="start_date"))
        weeks = _normalise_weeks(self.weeks)
        object.__setattr__(self, "weeks", weeks)
        object.__setattr__(self, "_week_set", None if weeks is None else _parse_weeks(weeks))

        if _has_random_field(expression.split()):
            raise _cron_error(
                expression, "random 'R' fields are not supported (every worker must agree)"
            )
        if not croniter.is_valid(expression):
            check_cron_expression(expression)  # names the field at fault, when it can
            reason = "not accepted by croniter"
            try:
                croniter(expression)
            except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
                reason = str(exc) or type(exc).__name__
            raise _cron_error(expression, reason)
        try:
            itr = croniter(
                expression,
                datetime(1970, 1, 1, tzinfo=UTC),
                max_years_between_matches=_CRON_MAX_YEARS,
            )
            itr.get_next(datetime)
        except CroniterError as exc:
            raise _cron_error(expression, f"it never fires ({exc})") from exc
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise _cron_error(expression, str(exc) or type(exc).__name__) from exc
        hours = itr.expanded[1]
        object.__setattr__(self, "_hour_wildcard", "*" in hours or len(set(hours)) >= 24)

    def _is_repeated_wall_time(self, local: datetime) -> bool:
        """True for the second occurrence of an ambiguous (fall-back) wall time."""
        if local.fold != 1:
            return False
        return local.replace(fold=0).utcoffset() != local.utcoffset()

    def _next_week_start(self, local: datetime) -> datetime:
        """UTC instant of the next ISO-week start (Monday 00:00 local) after ``local``."""
        monday = local.date() + timedelta(days=7 - local.weekday())
        return datetime(monday.year, monday.month, monday.day, tzinfo=self._zone).astimezone(UTC)

    def _fire_after(self, after: datetime) -> datetime | None:
        """First fire time strictly after ``after`` (UTC), or None if there is none."""
        zone = self._zone
        horizon = None
        if self._week_set is not None:
            try:
                horizon = after + _WEEK_FILTER_HORIZON
            except OverflowError:
                horizon = None
        itr = None
        for _ in range(_MAX_CRON_ITERATIONS):
            try:
                if itr is None:
                    itr = croniter(
                        self.expression,
                        after.astimezone(zone),
                        max_years_between_matches=_CRON_MAX_YEARS,
                    )
                candidate = itr.get_next(datetime).astimezone(UTC)
            except (CroniterError, OverflowError, ValueError):
                return None
            if candidate <= after:
                # Defensive: around a DST change croniter could hand back an instant
                # that is not after the reference; keep advancing the same iterator.
                continue
            local = candidate.astimezone(zone)
            if not self._hour_wildcard and self._is_repeated_wall_time(local):
                # Fall-back day: this wall time already fired in the first copy.
                after = candidate
                itr = None
                continue
            if self._week_set is not None:
                if horizon is not None and candidate > horizon:
                    return None
                if local.isocalendar()[1] not in self._week_set:
                    try:
                        week_start = self._next_week_start(local)
                    except OverflowError:
                        return None
                    # Jump to the next week; never move backwards.
                    after = max(candidate, week_start - _ONE_MICROSECOND)
                    itr = None
                    continue
            return candidate
        return None

    def first_run(self, now: datetime) -> datetime | None:
        after = ensure_aware(now, name="now")
        if self.start_date is not None:
            after = max(after, self.start_date - _ONE_MICROSECOND)
        return self._fire_after(after)

    def next_run(self, scheduled_at: datetime, now: datetime) -> datetime | None:
        scheduled_at = ensure_aware(scheduled_at, name="scheduled_at")
        now = ensure_aware(now, name="now")
        after = max(scheduled_at, now)
        if self.start_date is not None:
            after = max(after, self.start_date - _ONE_MICROSECOND)
        return self._fire_after(after)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "expression": self.expression,
            "timezone": self.timezone,
            "start": _iso(self.start_date),
            "weeks": self.weeks,
        }

    def describe(self) -> str:
        text = f"cron {self.expression} ({self.timezone})"
        if self.weeks is not None:
            text += f" weeks {self.weeks}"
        if self.start_date is not None:
            text += f" from {_iso(self.start_date)}"
        return text


# ---------------------------------------------------------------------------
# cron from keyword fields
# ---------------------------------------------------------------------------

#: Most significant first. ``None`` as default means "always '*'".
_FIELD_ORDER: tuple[tuple[str, str | None], ...] = (
    ("year", None),
    ("month", "1"),
    ("day", "1"),
    ("week", None),
    ("day_of_week", None),
    ("hour", "0"),
    ("minute", "0"),
    ("second", "0"),
)

#: The keyword fields of a cron schedule (see :func:`cron_from_fields`), most significant first.
CRON_FIELD_NAMES = tuple(name for name, _ in _FIELD_ORDER)


def cron_from_fields(
    *,
    timezone: str = "UTC",
    start_date: datetime | None = None,
    **given: int | str | None,
) -> CronSchedule:
    """Build a :class:`CronSchedule` from field keywords.

    Each field is an int or a cron field string such as ``'*/5'``,
    ``'1-5'``, ``'mon-fri'`` or ``'1,15'``; ``None`` means not given. Fields,
    most significant first (:data:`CRON_FIELD_NAMES`): year, month, day, week,
    day_of_week, hour, minute, second.

    * fields more significant than the least significant given field default
      to ``'*'``;
    * less significant fields that were not given default to their minimum
      (month and day 1, hour, minute and second 0);
    * ``day_of_week`` and ``week`` default to ``'*'`` always.

    So ``hour=3`` gives ``'0 3 * * * 0'`` (03:00:00 every day),
    ``minute='*/15'`` fires every 15 minutes at second 0 and
    ``second='*/10'`` every 10 seconds.

    ``day_of_week`` follows cron numbering: 0 (or 7) is Sunday, 1 Monday ...
    6 Saturday; names ``mon`` .. ``sun`` are accepted too. When both ``day``
    and ``day_of_week`` are restricted, cron semantics apply: a day matching
    either fires. ``week`` filters on ISO week numbers (1-53): an int,
    ``'a-b'``, ``'a,b'`` or ``'*/n'``. ``year`` (1970-2099) becomes the 7th
    cron field.
    """
    unknown = sorted(set(given) - set(CRON_FIELD_NAMES))
    if unknown:
        raise ScheduleError(
            f"cron_from_fields() got the unknown field(s) {', '.join(unknown)}; the fields are "
            + ", ".join(CRON_FIELD_NAMES)
        )
    values: dict[str, str] = {}
    for name in CRON_FIELD_NAMES:
        value = given.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ScheduleError(
                f"cron field {name} must be an int or a cron field string such as '*/5', "
                f"got {type(value).__name__}"
            )
        text = str(value).strip()
        if not text or any(ch.isspace() for ch in text):
            raise ScheduleError(
                f"cron field {name}={value!r} must be a single cron field such as "
                "'*/5', '1-5' or '1,15'"
            )
        spec = _CRON_FIELDS_BY_NAME.get(name)
        problem = None if spec is None else _cron_field_problem(spec, text)
        if problem:
            raise ScheduleError(problem)
        values[name] = text
    if not values:
        raise ScheduleError(
            "cron_from_fields() needs at least one field, e.g. cron_from_fields(hour=3) "
            "for every day at 03:00 or cron_from_fields(minute='*/15')"
        )

    least_given = max(i for i, (name, _) in enumerate(_FIELD_ORDER) if name in values)
    fields: dict[str, str] = {}
    for index, (name, minimum) in enumerate(_FIELD_ORDER):
        if name in values:
            fields[name] = values[name]
        elif minimum is None or index < least_given:
            fields[name] = "*"
        else:
            fields[name] = minimum

    parts = [
        fields["minute"],
        fields["hour"],
        fields["day"],
        fields["month"],
        fields["day_of_week"],
        fields["second"],
    ]
    if "year" in values:
        parts.append(fields["year"])
    expression = " ".join(parts)
    weeks = values.get("week")
    try:
        return CronSchedule(expression, timezone=timezone, start_date=start_date, weeks=weeks)
    except ScheduleError as exc:
        shown = ", ".join(f"{k}={given[k]!r}" for k in CRON_FIELD_NAMES if given.get(k) is not None)
        raise ScheduleError(f"cron_from_fields({shown}): {exc}") from exc


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def _require(data: Mapping, key: str, kind: str) -> Any:
    if key not in data:
        raise ScheduleError(f"{kind} schedule JSON is missing the {key!r} key")
    return data[key]


def _optional_date(data: Mapping, key: str, kind: str) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ScheduleError(
            f"{kind} schedule JSON: {key!r} must be an ISO-8601 string with an offset or null, "
            f"got {type(value).__name__}"
        )
    return ensure_aware(value, name=key)


def _optional_str(data: Mapping, key: str, kind: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ScheduleError(
            f"{kind} schedule JSON: {key!r} must be a string or null, got {type(value).__name__}"
        )
    return value


def _date_from_json(data: Mapping) -> DateSchedule:
    run_at = _require(data, "run_at", "date")
    if not isinstance(run_at, str):
        raise ScheduleError(
            f"date schedule JSON: 'run_at' must be an ISO-8601 string with an offset, "
            f"got {type(run_at).__name__}"
        )
    return DateSchedule(ensure_aware(run_at, name="run_at"))


def _interval_from_json(data: Mapping) -> IntervalSchedule:
    micros = _require(data, "microseconds", "interval")
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise ScheduleError(
            f"interval schedule JSON: 'microseconds' must be an integer, "
            f"got {type(micros).__name__}"
        )
    try:
        interval = timedelta(microseconds=micros)
    except OverflowError as exc:
        raise ScheduleError(
            f"interval schedule JSON: 'microseconds' {micros} is out of range"
        ) from exc
    return IntervalSchedule(interval, _optional_date(data, "start", "interval"))


def _cron_from_json(data: Mapping) -> CronSchedule:
    expression = _require(data, "expression", "cron")
    if not isinstance(expression, str):
        raise ScheduleError(
            f"cron schedule JSON: 'expression' must be a string, got {type(expression).__name__}"
        )
    tz = _optional_str(data, "timezone", "cron") or "UTC"
    weeks = data.get("weeks")
    if weeks is not None and (isinstance(weeks, bool) or not isinstance(weeks, (str, int))):
        raise ScheduleError(
            f"cron schedule JSON: 'weeks' must be a string or null, got {type(weeks).__name__}"
        )
    return CronSchedule(
        expression,
        timezone=tz,
        start_date=_optional_date(data, "start", "cron"),
        weeks=None if weeks is None else str(weeks),
    )


_FROM_JSON = {
    DateSchedule.kind: _date_from_json,
    IntervalSchedule.kind: _interval_from_json,
    CronSchedule.kind: _cron_from_json,
}

#: The ``kind`` of every schedule, as its JSON names it.
SCHEDULE_KINDS = tuple(_FROM_JSON)

#: The kinds of schedule that have more than one run.
RECURRING_KINDS = (IntervalSchedule.kind, CronSchedule.kind)


def schedule_from_json(data: Mapping) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_json` output.

    Any malformed input raises :class:`ScheduleError`.
    """
    if not isinstance(data, Mapping):
        raise ScheduleError(
            f"schedule JSON must be an object with a 'kind' key, got {type(data).__name__}"
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _FROM_JSON:
        known = ", ".join(repr(k) for k in _FROM_JSON)
        raise ScheduleError(f"schedule JSON has unknown kind {kind!r}; expected one of {known}")
    try:
        return _FROM_JSON[kind](data)
    except ScheduleError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
        raise ScheduleError(f"malformed {kind} schedule JSON: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _cron_json_problem(items: tuple[tuple[str, Any], ...]) -> str | None:
    """Why a cron schedule's JSON does not parse (cached: a daemon sees few distinct crons)."""
    try:
        schedule_from_json(dict(items))
    except ScheduleError as exc:
        return f"schedule is unreadable ({exc})"
    return None


def _is_optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _date_json_is_well_formed(data: Mapping) -> bool:
    return isinstance(data.get("run_at"), str)


def _interval_json_is_well_formed(data: Mapping) -> bool:
    micros = data.get("microseconds")
    if isinstance(micros, bool) or not isinstance(micros, int) or micros <= 0:
        return False
    return _is_optional_text(data.get("start"))


def _cron_json_is_well_formed(data: Mapping) -> bool:
    expression = data.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        return False
    if not (_is_optional_text(data.get("timezone")) and _is_optional_text(data.get("start"))):
        return False
    weeks = data.get("weeks")
    return weeks is None or (isinstance(weeks, (str, int)) and not isinstance(weeks, bool))


_WELL_FORMED = {
    DateSchedule.kind: _date_json_is_well_formed,
    IntervalSchedule.kind: _interval_json_is_well_formed,
    CronSchedule.kind: _cron_json_is_well_formed,
}


def schedule_json_problem(data: Any) -> str | None:
    """Why stored schedule JSON cannot be used, or None. Never raises.

    Cheap enough for every claim: the shape of dates and intervals (their
    values are parsed only to compute a next run, which parks the job if
    they do not parse) and cron schedules in full, cached. ``data`` that
    is not an object is the caller's to describe.
    """
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind not in SCHEDULE_KINDS:
        return f"schedule has the unknown kind {short_repr(kind)} (expected date, interval or cron)"
    if not _WELL_FORMED[kind](data):
        return f"{kind} schedule is malformed: {short_repr(data)}"
    if kind == CronSchedule.kind:
        keys = ("kind", "expression", "timezone", "start", "weeks")
        return _cron_json_problem(tuple((key, data.get(key)) for key in keys))
    return None
