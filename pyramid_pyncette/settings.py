"""Parsing and validation of the ``pyncette.*`` application settings.

Pyramid hands an application its settings as a flat mapping, usually read from
an INI file (so every value is a string) but sometimes built in Python (so the
values may already be ``int``, ``float``, ``bool`` or ``datetime.timedelta``).
:func:`parse_settings` accepts both, validates every ``pyncette.*`` key and
returns one immutable :class:`PyncetteSettings` object. Invalid values raise
:class:`pyramid.exceptions.ConfigurationError` with a message naming the full
key, the offending value and what would be accepted instead.

Example INI section::

    pyncette.url = postgresql+psycopg://scheduler:secret@db/app
    pyncette.poll_interval = 2s
    pyncette.lease_duration = 5m
    pyncette.concurrency = 4
    pyncette.timezone = Europe/Ljubljana
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import re
import textwrap
import warnings
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pyramid.exceptions import ConfigurationError
from pyramid.settings import asbool, falsey, truthy

from .jobs import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    MAX_PARTITIONS,
    RetryDefaults,
    queue_name_problem,
)
from .redaction import redact_url

__all__ = [
    "DEFAULT_URL",
    "KNOWN_KEYS",
    "MAX_DURATION",
    "SETTINGS",
    "PyncetteSettings",
    "Setting",
    "SettingSpec",
    "UnknownSettingWarning",
    "parse_duration",
    "parse_settings",
    "settings_docstring",
    "settings_markdown_table",
]


class UnknownSettingWarning(UserWarning):
    """Warning emitted for a ``pyncette.*`` setting that is not recognised.

    Usually a typo; the warning message suggests the closest known key when
    there is one.
    """


DEFAULT_URL = "sqlite:///pyncette.sqlite"
"""Default job store: a SQLite file relative to the current working directory."""

#: Largest accepted ``pyncette.max_retries`` (the per-job option has the same limit).
MAX_RETRIES_SETTING = 1000

#: The values of ``pyncette.history``.
HISTORY_CHOICES = ("all", "failures", "none")

# 40 characters at most: the names derived from it (``ix_<name>_runs_finished_at``,
# ``ix_<name>_queue_due_at``) must fit PostgreSQL's 63 and MySQL's 64.
_TABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_REDIS_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_URL_PATH_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+")


# --------------------------------------------------------------------------- durations

_UNIT_SECONDS: dict[str, int | Fraction] = {}
_UNIT_CANONICAL: dict[str, str] = {}  # spelling -> canonical unit, to detect repeats
for _names, _seconds in (
    (("w", "wk", "wks", "week", "weeks"), 7 * 24 * 3600),
    (("d", "day", "days"), 24 * 3600),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), Fraction(1, 1000)),
):
    for _name in _names:
        _UNIT_SECONDS[_name] = _seconds
        _UNIT_CANONICAL[_name] = _names[0]
del _names, _seconds, _name

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PLAIN_NUMBER_RE = re.compile(_NUMBER)
_DURATION_PART_RE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]+)\s*")
_MAX_NUMBER_LENGTH = 100

_DURATION_HINT = "use seconds (e.g. 30) or a value like '30s', '5m', '1h30m'"

MAX_DURATION = 10 * 365 * 24 * 3600
"""Longest accepted duration, setting or job option: ten years, in seconds.

Far beyond any sensible lease or poll, and far enough from the limits of
``datetime`` that adding it to a time never overflows.
"""


def _duration_error(key: str, value: Any, detail: str | None = None) -> ValueError:
    problem = f"is not a duration ({detail})" if detail else "is not a duration"
    return ValueError(f"{key}: {value!r} {problem}; {_DURATION_HINT}")


def _to_positive_seconds(total: Fraction | float | int, key: str, value: Any) -> float:
    try:
        seconds = float(total)
    except (OverflowError, ValueError):
        raise _duration_error(key, value, "too large") from None
    if math.isnan(seconds):
        raise _duration_error(key, value)
    if math.isinf(seconds):
        raise _duration_error(key, value, "not finite")
    if seconds <= 0:
        raise _duration_error(key, value, "it must be greater than zero")
    return seconds


def _parse_number(text: str, key: str, value: Any) -> Fraction:
    if len(text) > _MAX_NUMBER_LENGTH:
        raise _duration_error(key, value, "too large")
    return Fraction(text)


def parse_duration(value: Any, *, key: str = "duration") -> float:
    """Convert a duration setting into a positive number of seconds.

    Accepted values:

    * ``int`` or ``float``: a number of seconds;
    * :class:`datetime.timedelta`;
    * strings holding a number of seconds (``"30"``, ``"2.5"``) or one or more
      ``<number><unit>`` parts, optionally separated by spaces (``"30s"``,
      ``"5m"``, ``"1h30m"``, ``"1h 30m"``, ``"1.5h"``, ``"250ms"``).

    Units (case-insensitive): ``w``/``week(s)``, ``d``/``day(s)``,
    ``h``/``hr(s)``/``hour(s)``, ``m``/``min(s)``/``minute(s)``,
    ``s``/``sec(s)``/``second(s)`` and ``ms``/``millisecond(s)``. Each unit may
    appear only once.

    The result must be finite and greater than zero.

    :param value: the raw setting value.
    :param key: the setting name used in error messages.
    :raises ValueError: with a message naming ``key``, the bad value and the
        accepted formats.
    """
    if isinstance(value, bool):
        raise _duration_error(key, value, "booleans are not accepted")
    if isinstance(value, int):
        return _to_positive_seconds(value, key, value)
    if isinstance(value, float):
        return _to_positive_seconds(value, key, value)
    if isinstance(value, datetime.timedelta):
        return _to_positive_seconds(value.total_seconds(), key, value)
    if not isinstance(value, str):
        raise _duration_error(key, value)

    text = value.strip()
    if not text:
        raise _duration_error(key, value, "empty")
    if text.startswith("-"):
        raise _duration_error(key, value, "it must be greater than zero")
    if _PLAIN_NUMBER_RE.fullmatch(text):
        return _to_positive_seconds(_parse_number(text, key, value), key, value)

    total = Fraction(0)
    seen: set[str] = set()
    pos = 0
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            raise _duration_error(key, value)
        number, unit = match.group(1), match.group(2).lower()
        if unit not in _UNIT_SECONDS:
            raise _duration_error(key, value, f"unknown unit {match.group(2)!r}")
        canonical = _UNIT_CANONICAL[unit]
        if canonical in seen:
            raise _duration_error(key, value, f"unit {match.group(2)!r} is repeated")
        seen.add(canonical)
        total += _parse_number(number, key, value) * _UNIT_SECONDS[unit]
        pos = match.end()
    return _to_positive_seconds(total, key, value)


# --------------------------------------------------------------------------- settings


class _Reader:
    """Converts raw setting values, raising ConfigurationError on bad input."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def error(self, name: str, value: Any, problem: str, fix: str) -> ConfigurationError:
        return ConfigurationError(f"{self.prefix}{name}: {value!r} {problem}; {fix}")

    def duration(self, name: str, value: Any) -> float:
        try:
            seconds = parse_duration(value, key=f"{self.prefix}{name}")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if seconds > MAX_DURATION:
            raise self.error(
                name,
                value,
                f"is too long ({seconds:g}s)",
                f"use a duration above 0 and at most ten years ({MAX_DURATION}s), e.g. '60s'",
            )
        return seconds

    def integer(self, name: str, value: Any, *, minimum: int) -> int:
        fix = f"use a whole number >= {minimum} (e.g. {max(minimum, 10)})"
        if isinstance(value, bool):
            raise self.error(name, value, "is a boolean, not a whole number", fix)
        if isinstance(value, int):
            number = value
        elif isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise self.error(name, value, "is not a whole number", fix)
            number = int(value)
        elif isinstance(value, str):
            text = value.strip()
            if not (text.isascii() and text.isdigit()) or len(text) > _MAX_NUMBER_LENGTH:
                raise self.error(name, value, "is not a whole number", fix)
            number = int(text)
        else:
            raise self.error(name, value, "is not a whole number", fix)
        if number < minimum:
            raise self.error(name, value, f"is too small (it must be at least {minimum})", fix)
        return number

    def boolean(self, name: str, value: Any) -> bool:
        fix = "use true/false, yes/no, on/off or 1/0"
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in truthy | falsey:
            return asbool(value)
        raise self.error(name, value, "is not a boolean", fix)

    def string(self, name: str, value: Any, fix: str) -> str:
        if not isinstance(value, str):
            raise self.error(name, value, "is not a string", fix)
        text = value.strip()
        if not text:
            raise self.error(name, value, "is empty", fix)
        return text

    def url(self, name: str, value: Any) -> str:
        fix = f"use a URL such as {DEFAULT_URL!r} or 'postgresql://user:password@host/db'"
        text = self.string(name, value, fix)
        if "://" not in text or not text.partition("://")[0]:
            raise self.error(name, redact_url(text), "is not a URL (no 'scheme://')", fix)
        return text

    def pattern(self, name: str, value: Any, regex: re.Pattern[str], fix: str) -> str:
        text = self.string(name, value, fix)
        if not regex.fullmatch(text):
            raise self.error(name, value, "is not allowed", fix)
        return text

    def timezone(self, name: str, value: Any) -> str:
        fix = "use an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
        text = self.string(name, value, fix)
        try:
            zoneinfo.ZoneInfo(text)
        except Exception:
            raise self.error(name, value, "is not a known time zone", fix) from None
        return text

    def base_url(self, name: str, value: Any) -> str:
        fix = "use an absolute http(s) URL such as 'https://example.com' or 'http://localhost:6543'"
        text = self.string(name, value, fix).rstrip("/")
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or any(c.isspace() for c in text):
            raise self.error(name, value, "is not an absolute http(s) URL", fix)
        return text

    def word(self, name: str, value: Any, fix: str) -> str:
        """A non-empty string without whitespace inside."""
        text = self.string(name, value, fix)
        if any(ch.isspace() for ch in text):
            raise self.error(name, value, "contains whitespace", fix)
        return text

    def dotted_name(self, name: str, value: Any) -> str:
        fix = "use a dotted path such as 'myapp.jobs:make_session' or 'myapp.jobs.make_session'"
        return self.word(name, value, fix)


# --------------------------------------------------------------------------- the table

#: A setting's parser: ``parse(read, name, raw_value)`` returns the typed value or
#: raises the ConfigurationError built by ``read.error``.
Parser = Callable[[_Reader, str, Any], Any]


def _duration(read: _Reader, name: str, value: Any) -> float:
    return read.duration(name, value)


def _positive_integer(read: _Reader, name: str, value: Any) -> int:
    return read.integer(name, value, minimum=1)


def _retry_count(read: _Reader, name: str, value: Any) -> int:
    count = read.integer(name, value, minimum=0)
    if count > MAX_RETRIES_SETTING:
        raise read.error(
            name,
            value,
            f"is too large (at most {MAX_RETRIES_SETTING})",
            "use a small whole number (e.g. 5); for unbounded retries give the task "
            "failure_mode='none' or 'unlock' instead",
        )
    return count


def _table_name(read: _Reader, name: str, value: Any) -> str:
    fix = (
        "use a letter or underscore followed by up to 39 letters, digits or "
        "underscores (e.g. 'pyncette_jobs')"
    )
    return read.pattern(name, value, _TABLE_NAME_RE, fix)


def _queues(read: _Reader, name: str, value: Any) -> frozenset[str] | None:
    """Space- or comma-separated queue names (a list or set of names from Python)."""
    fix = "use queue names separated by spaces, e.g. 'default emails'"
    if isinstance(value, str):
        names = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple, set, frozenset)):
        names = list(value)
    else:
        raise read.error(name, value, "is not a list of queue names", fix)
    if not names:
        raise read.error(
            name, value, "names no queue", fix + " (leave it out to serve every queue)"
        )
    for queue in names:
        problem = queue_name_problem(queue)
        if problem is not None:
            raise read.error(name, value, f"is not allowed ({problem})", "fix that name")
    return frozenset(names)


def _history(read: _Reader, name: str, value: Any) -> str:
    fix = "use all, failures or none"
    text = read.string(name, value, fix).lower()
    if text not in HISTORY_CHOICES:
        raise read.error(name, value, "is not one of all, failures, none", fix)
    return text


def _redis_namespace(read: _Reader, name: str, value: Any) -> str:
    fix = "use 1 to 64 letters, digits or the characters _ . : - (e.g. 'myapp:pyncette')"
    return read.pattern(name, value, _REDIS_NAMESPACE_RE, fix)


def _partitions(read: _Reader, name: str, value: Any) -> int:
    count = read.integer(name, value, minimum=1)
    if count > MAX_PARTITIONS:
        raise read.error(
            name,
            value,
            f"is too large (at most {MAX_PARTITIONS})",
            "use a small power of two such as 16; a partition per shard or two is plenty",
        )
    return count


def _port(read: _Reader, name: str, value: Any) -> int:
    port = read.integer(name, value, minimum=0)
    if port > 65535:
        raise read.error(
            name, value, "is not a TCP port", "use a port from 1 to 65535 (0: any free port)"
        )
    return port


def _host(read: _Reader, name: str, value: Any) -> str:
    fix = "use a host name or address to listen on, e.g. '127.0.0.1' or '0.0.0.0'"
    return read.word(name, value, fix)


def _url_path(read: _Reader, name: str, value: Any) -> str:
    fix = (
        "use a path of letters, digits and - _ . ~ below the root, "
        "e.g. '/pyncette' or '/admin/jobs'"
    )
    text = read.string(name, value, fix).rstrip("/")
    if not _URL_PATH_RE.fullmatch(text):
        raise read.error(name, value, "is not a URL path below the root", fix)
    return text


def _permission(read: _Reader, name: str, value: Any) -> str:
    fix = (
        "use a permission name such as 'pyncette.admin', or NO_PERMISSION_REQUIRED "
        "to open the pages to everyone"
    )
    return read.word(name, value, fix)


@dataclass(frozen=True)
class SettingSpec:
    """How one ``pyncette.*`` setting is read and documented (a settings field's metadata)."""

    parse: Parser
    """Turns the raw value (INI string or Python value) into the field's value."""
    doc: str
    """One line for the settings table (Markdown: `code` in single backticks)."""
    default_text: str | None = None
    """How the default reads in prose, where the value itself says little (``None``)."""
    name: str | None = None
    """The key after ``pyncette.`` where it differs from the field's name
    (``dashboard.path`` for the field ``dashboard_path``)."""


_SPEC = "pyncette"  # the key of a SettingSpec in a field's metadata


def _setting(
    default: Any,
    parse: Parser,
    doc: str,
    default_text: str | None = None,
    *,
    name: str | None = None,
) -> Any:
    """A :class:`PyncetteSettings` field: its default, parser and doc in one place."""
    return dataclasses.field(
        default=default, metadata={_SPEC: SettingSpec(parse, doc, default_text, name)}
    )


@dataclass(frozen=True)
class PyncetteSettings:
    """Validated, immutable scheduler settings.

    Each field is one ``pyncette.<field name>`` setting; its parser and
    documentation are in the field's metadata (see :data:`SETTINGS`).
    Instances are normally created by :func:`parse_settings`, which performs
    all validation; constructing one directly performs none.
    """

    url: str = _setting(
        DEFAULT_URL,
        _Reader.url,
        "the store (see Stores): `sqlite:///path/to/file.sqlite` (a relative path is from "
        "the working directory), `postgresql+psycopg://...`, `mysql+pymysql://...`, "
        "`redis://host:6379/0` (also `rediss://`, `unix://`), "
        "`redis+cluster://host:port` (Redis Cluster), `dynamodb://region/table`, or "
        "`memory://` (one process, for tests)",
    )
    poll_interval: float = _setting(
        1.0, _duration, "longest pause between polls when nothing is due"
    )
    batch_size: int = _setting(100, _positive_integer, "most jobs claimed in one statement")
    concurrency: int = _setting(10, _positive_integer, "threads running jobs in one daemon")
    lease_duration: float = _setting(
        60.0,
        _duration,
        "how long a claim holds a job before another daemon may take it over; running jobs "
        "renew it by heartbeat",
    )
    heartbeat_interval: float | None = _setting(
        None,
        _duration,
        "how often the leases of running jobs are renewed (shorter than the lease duration)",
        default_text="a third of the lease",
    )
    table_name: str = _setting("pyncette_jobs", _table_name, "the SQL table")
    timezone: str = _setting("UTC", _Reader.timezone, "time zone of cron schedules that name none")
    skip_table_create: bool = _setting(
        False, _Reader.boolean, "do not create the table on first use (your migrations do)"
    )
    base_url: str = _setting(
        "http://localhost",
        _Reader.base_url,
        "scheme and host of the requests jobs run in, for `request.route_url` inside a job",
    )
    session_hook: str | None = _setting(
        None,
        _Reader.dotted_name,
        "dotted path of `callable(request)` returning the app's zope.sqlalchemy session: job "
        "rows are then written through it, in the app's own transaction (shared-database "
        "mode; `pyncette.url` must name the same database)",
        default_text="none",
    )
    redis_namespace: str = _setting(
        "pyncette", _redis_namespace, "prefix (and cluster hash tag) of the Redis store's keys"
    )
    partitions: int | None = _setting(
        None,
        _partitions,
        "how many parts each queue's due index is split into, by a stable hash of the job id; "
        "daemons claim across them from a rotating start. On Redis each part has its own hash "
        "tag, spreading a namespace over a cluster's shards. Fixed when a Redis or DynamoDB "
        "store is first used (another number is then refused at start); SQL stores keep one "
        "index and take only `1` (see Partitions)",
        default_text="per store: `16` on Redis and DynamoDB, `1` elsewhere",
    )
    max_retries: int = _setting(
        DEFAULT_MAX_RETRIES,
        _retry_count,
        "retries of a failed run, for jobs that set neither `max_retries` nor `failure_mode` "
        "(`0`: never); then a one-off job is parked as `failed` and a recurring one moves to "
        "its next run (see Tasks). Jobs follow the settings of the daemon that runs them; "
        "retrying without limit is a task's explicit choice (`failure_mode='none'` or "
        "`'unlock'`)",
    )
    retry_backoff: float = _setting(
        DEFAULT_RETRY_BACKOFF,
        _duration,
        "pause before the first retry of jobs that do not set `retry_backoff`; it doubles for "
        "each further retry, jittered to between half and all of it",
    )
    retry_backoff_max: float = _setting(
        DEFAULT_RETRY_BACKOFF_MAX,
        _duration,
        "longest pause between two retries, for jobs that do not set `retry_backoff_max`",
    )

    queues: frozenset[str] | None = _setting(
        None,
        _queues,
        "the queues this process's daemon claims jobs from, separated by spaces (`pscheduler "
        "--queue` overrides it); any number of daemons may serve one queue (see Queues)",
        default_text="every queue",
    )
    history: str = _setting(
        "all",
        _history,
        "which runs the run history keeps: `all`, `failures` (failed runs and lost leases) "
        "or `none` (see Run history)",
    )
    history_retention: float = _setting(
        7 * 86400.0,
        _duration,
        "how long run records are kept; daemons delete older ones in small batches",
        default_text="`7d`",
    )
    metrics_port: int | None = _setting(
        None,
        _port,
        "the port where `pscheduler` serves `/metrics` (Prometheus) and `/healthz`; "
        "`0` picks a free port and logs it (see Metrics and health)",
        default_text="off",
    )
    metrics_host: str = _setting("127.0.0.1", _host, "the address the metrics port listens on")
    dashboard_path: str = _setting(
        "/pyncette",
        _url_path,
        "where `pyramid_pyncette.dashboard` mounts its pages (see Dashboard)",
        name="dashboard.path",
    )
    dashboard_permission: str = _setting(
        "pyncette.admin",
        _permission,
        "the permission every dashboard page and action requires; "
        "`NO_PERMISSION_REQUIRED` opens them to everyone",
        name="dashboard.permission",
    )
    dashboard_metrics_public: bool = _setting(
        False,
        _Reader.boolean,
        "serve the dashboard's `/metrics` without the permission (for a Prometheus "
        "that cannot log in)",
        name="dashboard.metrics_public",
    )

    @property
    def effective_heartbeat_interval(self) -> float:
        """The heartbeat interval in seconds, defaulting to a third of the lease."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.lease_duration / 3

    @property
    def retry_defaults(self) -> RetryDefaults:
        """The retry options of jobs that set none, as completions apply them."""
        return RetryDefaults(self.max_retries, self.retry_backoff, self.retry_backoff_max)

    def redacted_url(self) -> str:
        """Return :attr:`url` with any password replaced by ``***``.

        Safe for logging: never raises, whatever the URL contains (see
        :func:`pyramid_pyncette.redaction.redact_url`).
        """
        return redact_url(self.url)


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: a field of :class:`PyncetteSettings` and its spec."""

    name: str
    """The key without the ``pyncette.`` prefix (``dashboard.path``)."""
    default: Any
    parse: Parser
    doc: str
    default_text: str
    field: str = ""
    """The :class:`PyncetteSettings` field holding the value (``dashboard_path``)."""

    @property
    def key(self) -> str:
        """The full INI key."""
        return f"pyncette.{self.name}"


def _format_default(value: Any, parse: Parser) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if parse is _duration:
        return f"{value / 3600:g}h" if value % 3600 == 0 else f"{value:g}s"
    return str(value)


def _table() -> tuple[Setting, ...]:
    rows = []
    for field in dataclasses.fields(PyncetteSettings):
        spec: SettingSpec = field.metadata[_SPEC]
        default_text = spec.default_text
        if default_text is None:
            default_text = f"`{_format_default(field.default, spec.parse)}`"
        name = spec.name or field.name
        rows.append(Setting(name, field.default, spec.parse, spec.doc, default_text, field.name))
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _table()
"""Every ``pyncette.*`` setting, in documentation order: the one source of the
parser, the default and the docs of each (README table, ``includeme`` docstring)."""

KNOWN_KEYS: frozenset[str] = frozenset(setting.name for setting in SETTINGS)
"""Names of the recognised settings, without the ``pyncette.`` prefix."""

_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def settings_markdown_table() -> str:
    """The README's settings table (Markdown), rendered from :data:`SETTINGS`."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.key}` | {s.default_text} | {s.doc} |" for s in SETTINGS]
    return "\n".join(lines) + "\n"


def settings_docstring() -> str:
    """The settings list of ``includeme``'s docstring (reStructuredText, unindented)."""
    blocks = []
    for s in SETTINGS:
        text = re.sub(r"`([^`]+)`", r"``\1``", f"{s.doc[0].upper()}{s.doc[1:]}")
        default = re.sub(r"`([^`]+)`", r"``\1``", s.default_text)
        text += f". Default: {default}."
        body = textwrap.fill(
            text,
            width=76,
            initial_indent="    ",
            subsequent_indent="    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        blocks.append(f"``{s.key}``\n{body}")
    return "\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- parsing


def _unknown_key_message(key: str, name: str, prefix: str) -> str:
    close = difflib.get_close_matches(name, sorted(KNOWN_KEYS), n=1)
    if close:
        hint = f"did you mean '{prefix}{close[0]}'?"
    else:
        hint = "known settings are: " + ", ".join(f"{prefix}{k}" for k in sorted(KNOWN_KEYS))
    return f"Unknown setting {key!r} ignored; {hint}"


def parse_settings(
    settings: Mapping[str, Any] | None, prefix: str = "pyncette."
) -> PyncetteSettings:
    """Build a :class:`PyncetteSettings` from a Pyramid settings mapping.

    Only keys starting with ``prefix`` are read; missing keys (and keys whose
    value is ``None``) keep their defaults. Values may be INI strings or
    already-typed Python values; each is read by its setting's parser (see
    :data:`SETTINGS`): durations follow :func:`parse_duration` (above zero, at
    most ten years, :data:`MAX_DURATION`), whole numbers accept ``int``, whole
    floats or digit strings, booleans accept what
    :func:`pyramid.settings.asbool` understands and nothing else, strings are
    stripped and checked against their formats. ``heartbeat_interval`` must
    be shorter than ``lease_duration``.

    Unknown ``pyncette.*`` keys emit an :class:`UnknownSettingWarning`.

    :raises pyramid.exceptions.ConfigurationError: for any invalid value; the
        message names the full key, the bad value and what is allowed.
    """
    read = _Reader(prefix)
    values: dict[str, Any] = {}
    raw_values: dict[str, Any] = {}
    for key, raw in (settings or {}).items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        setting = _BY_NAME.get(name)
        if setting is None:
            message = _unknown_key_message(key, name, prefix)
            warnings.warn(message, UnknownSettingWarning, stacklevel=2)
            continue
        if raw is None:
            continue
        raw_values[setting.field] = raw
        values[setting.field] = setting.parse(read, name, raw)

    result = PyncetteSettings(**values)
    if result.heartbeat_interval is not None and (
        result.heartbeat_interval >= result.lease_duration
    ):
        raise read.error(
            "heartbeat_interval",
            raw_values["heartbeat_interval"],
            f"is not shorter than {prefix}lease_duration ({result.lease_duration:g}s)",
            f"use a value below the lease duration, e.g. {result.lease_duration / 3:g}s",
        )
    return result
