import datetime
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st


def _parse(settings=None, **kw):
    from pyramid_pyncette.settings import parse_settings

    if settings is None:
        settings = {f"pyncette.{key}": value for key, value in kw.items()}
    return parse_settings(settings)


def _parse_error(key, value):
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as excinfo:
        _parse({f"pyncette.{key}": value})
    return str(excinfo.value)


def _duration(value, **kw):
    from pyramid_pyncette.settings import parse_duration

    return parse_duration(value, **kw)


# --------------------------------------------------------------------------- defaults


def test_defaults_from_none():
    from pyramid_pyncette.settings import DEFAULT_URL, PyncetteSettings, parse_settings

    result = parse_settings(None)
    assert result == PyncetteSettings()
    assert result.url == DEFAULT_URL == "sqlite:///pyncette.sqlite"
    assert result.poll_interval == 1.0
    assert result.batch_size == 100
    assert result.concurrency == 10
    assert result.lease_duration == 60.0
    assert result.table_name == "pyncette_jobs"
    assert result.timezone == "UTC"
    assert result.skip_table_create is False
    assert result.session_hook is None
    assert result.redis_namespace == "pyncette"
    assert result.heartbeat_interval is None
    assert result.effective_heartbeat_interval == 20.0


def test_defaults_from_empty_mapping_and_foreign_keys():
    from pyramid_pyncette.settings import PyncetteSettings

    settings = {"sqlalchemy.url": "postgresql://x/y", "pyramid.reload_templates": "true", 1: 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _parse({}) == PyncetteSettings()
        assert _parse(settings) == PyncetteSettings()


def test_none_values_keep_defaults():
    from pyramid_pyncette.settings import PyncetteSettings

    assert _parse(batch_size=None, url=None, heartbeat_interval=None) == PyncetteSettings()


def test_settings_are_frozen():
    import dataclasses

    result = _parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.batch_size = 5


def test_known_keys():
    from pyramid_pyncette.settings import KNOWN_KEYS

    assert isinstance(KNOWN_KEYS, frozenset)
    expected = {
        "url",
        "poll_interval",
        "batch_size",
        "concurrency",
        "lease_duration",
        "table_name",
        "timezone",
        "skip_table_create",
        "session_hook",
        "redis_namespace",
        "partitions",
        "heartbeat_interval",
        "base_url",
        "max_retries",
        "retry_backoff",
        "retry_backoff_max",
        "queues",
        "history",
        "history_retention",
        "metrics_port",
        "metrics_host",
        "dashboard.path",
        "dashboard.permission",
        "dashboard.metrics_public",
    }
    assert set(KNOWN_KEYS) == expected


# --------------------------------------------------------------------------- retry settings


def test_retry_settings_default_to_five_retries_from_ten_seconds_up_to_an_hour():
    from pyramid_pyncette.jobs import RetryDefaults

    result = _parse()
    assert (result.max_retries, result.retry_backoff, result.retry_backoff_max) == (5, 10.0, 3600.0)
    assert result.retry_defaults == RetryDefaults(5, 10.0, 3600.0)


def test_retry_settings_from_ini_strings_and_typed_values():
    from pyramid_pyncette.jobs import RetryDefaults

    from_ini = _parse(max_retries="0", retry_backoff="30s", retry_backoff_max="2h")
    assert from_ini.retry_defaults == RetryDefaults(0, 30.0, 7200.0)
    typed = _parse(max_retries=3, retry_backoff=datetime.timedelta(minutes=1), retry_backoff_max=90)
    assert typed.retry_defaults == RetryDefaults(3, 60.0, 90.0)


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("max_retries", "-1", r"pyncette.max_retries: '-1' is not a whole number; use a whole "),
        ("max_retries", "many", r"pyncette.max_retries: 'many' is not a whole number"),
        ("max_retries", True, r"is a boolean, not a whole number"),
        ("max_retries", 2.5, r"is not a whole number; use a whole number >= 0"),
        ("max_retries", "1001", r"'1001' is too large \(at most 1000\); use a small whole "),
        ("max_retries", "1001", r"failure_mode='none' or 'unlock'"),
        ("retry_backoff", "0s", r"pyncette.retry_backoff: '0s' is not a duration"),
        ("retry_backoff", "soon", r"pyncette.retry_backoff: 'soon' is not a duration"),
        ("retry_backoff_max", "-5m", r"pyncette.retry_backoff_max: '-5m' is not a duration"),
        ("retry_backoff", "420000w", r"pyncette.retry_backoff: '420000w' is too long"),
        ("retry_backoff_max", "3700d", r"retry_backoff_max: '3700d' is too long .*ten years"),
    ],
)
def test_bad_retry_settings_name_the_key_the_value_and_the_fix(key, value, hint):
    import re

    assert re.search(hint, _parse_error(key, value))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://example.com", "https://example.com"),
        ("http://localhost:6543/", "http://localhost:6543"),
        ("  https://example.com/app/  ", "https://example.com/app"),
    ],
)
def test_base_url_is_normalised(raw, expected):
    assert _parse(base_url=raw).base_url == expected


@pytest.mark.parametrize("raw", ["example.com", "ftp://example.com", "https://", "http://a b"])
def test_bad_base_url_names_the_key_and_the_fix(raw):
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        _parse(base_url=raw)
    assert "pyncette.base_url" in str(info.value)
    assert "http(s) URL" in str(info.value)


# --------------------------------------------------------------------------- valid values


def test_all_keys_from_ini_strings():
    result = _parse(
        {
            "pyncette.url": "  postgresql+psycopg://sched:secret@db:5432/app  ",
            "pyncette.poll_interval": "2.5",
            "pyncette.batch_size": " 50 ",
            "pyncette.concurrency": "4",
            "pyncette.lease_duration": "5m",
            "pyncette.table_name": "my_jobs",
            "pyncette.timezone": " Europe/Ljubljana ",
            "pyncette.skip_table_create": "yes",
            "pyncette.session_hook": "myapp.db:make_session",
            "pyncette.redis_namespace": "myapp:jobs",
            "pyncette.heartbeat_interval": "1m30s",
        }
    )
    assert result.url == "postgresql+psycopg://sched:secret@db:5432/app"
    assert result.poll_interval == 2.5
    assert result.batch_size == 50
    assert result.concurrency == 4
    assert result.lease_duration == 300.0
    assert result.table_name == "my_jobs"
    assert result.timezone == "Europe/Ljubljana"
    assert result.skip_table_create is True
    assert result.session_hook == "myapp.db:make_session"
    assert result.redis_namespace == "myapp:jobs"
    assert result.heartbeat_interval == 90.0
    assert result.effective_heartbeat_interval == 90.0


def test_all_keys_from_typed_values():
    result = _parse(
        url="redis://localhost:6379/0",
        poll_interval=datetime.timedelta(milliseconds=500),
        batch_size=7,
        concurrency=2.0,
        lease_duration=120,
        table_name="_jobs",
        timezone="America/New_York",
        skip_table_create=True,
        session_hook="myapp.db.make_session",
        redis_namespace="a.b-c_d",
        heartbeat_interval=10.5,
    )
    assert result.url == "redis://localhost:6379/0"
    assert result.poll_interval == 0.5
    assert result.batch_size == 7
    assert result.concurrency == 2
    assert isinstance(result.concurrency, int)
    assert result.lease_duration == 120.0
    assert isinstance(result.lease_duration, float)
    assert result.table_name == "_jobs"
    assert result.timezone == "America/New_York"
    assert result.skip_table_create is True
    assert result.session_hook == "myapp.db.make_session"
    assert result.redis_namespace == "a.b-c_d"
    assert result.heartbeat_interval == 10.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("1", True),
        ("t", True),
        ("Y", True),
        (" true ", True),
        ("false", False),
        ("No", False),
        ("OFF", False),
        ("0", False),
        ("f", False),
        ("n", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
    ],
)
def test_boolean_values(raw, expected):
    assert _parse(skip_table_create=raw).skip_table_create is expected


def test_table_name_max_length():
    name = "t" * 40
    assert _parse(table_name=name).table_name == name


def test_table_name_leaves_room_for_the_names_derived_from_it():
    import sqlalchemy as sa
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.repository.sql import make_table

    name = "t" * 40
    table = make_table(name, sa.MetaData())
    derived = [table.name, *(index.name for index in table.indexes)]
    for other in table.metadata.tables.values():
        derived += [other.name, *(index.name for index in other.indexes)]
    assert max(len(n) for n in derived) <= 63
    with pytest.raises(ConfigurationError, match="up to 39 letters"):
        _parse(table_name="t" * 41)


def test_redis_namespace_max_length():
    namespace = "n" * 64
    assert _parse(redis_namespace=namespace).redis_namespace == namespace


def test_custom_prefix():
    from pyramid_pyncette.settings import parse_settings

    result = parse_settings(
        {"scheduler.batch_size": "3", "pyncette.batch_size": "not read"}, prefix="scheduler."
    )
    assert result.batch_size == 3


def test_effective_heartbeat_interval_defaults_to_third_of_lease():
    assert _parse(lease_duration="90s").effective_heartbeat_interval == 30.0


# --------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("url", "", "URL such as"),
        ("url", "   ", "URL such as"),
        ("url", "pyncette.sqlite", "URL such as"),
        ("url", "://nothing", "URL such as"),
        ("url", 42, "URL such as"),
        ("poll_interval", "5x", "'30s', '5m', '1h30m'"),
        ("poll_interval", "0", "greater than zero"),
        ("poll_interval", -1, "greater than zero"),
        ("poll_interval", True, "use seconds"),
        ("lease_duration", "", "use seconds"),
        ("lease_duration", "forever", "use seconds"),
        ("heartbeat_interval", "0s", "greater than zero"),
        ("batch_size", "10.5", "whole number >= 1"),
        ("batch_size", "-1", "whole number >= 1"),
        ("batch_size", "0", "at least 1"),
        ("batch_size", 0, "at least 1"),
        ("batch_size", "", "whole number >= 1"),
        ("batch_size", "ten", "whole number >= 1"),
        ("batch_size", True, "whole number >= 1"),
        ("batch_size", 2.5, "whole number >= 1"),
        ("batch_size", float("nan"), "whole number >= 1"),
        ("concurrency", "0", "at least 1"),
        ("concurrency", [4], "whole number >= 1"),
        ("skip_table_create", "maybe", "true/false"),
        ("skip_table_create", "", "true/false"),
        ("skip_table_create", 2, "true/false"),
        ("skip_table_create", 0.5, "true/false"),
        ("table_name", "1jobs", "letter or underscore"),
        ("table_name", "my-jobs", "letter or underscore"),
        ("table_name", "jobs; drop table x", "letter or underscore"),
        ("table_name", "t" * 64, "letter or underscore"),
        ("table_name", "t" * 41, "letter or underscore"),
        ("table_name", "", "letter or underscore"),
        ("timezone", "Mars/Olympus_Mons", "IANA time zone"),
        ("timezone", "../../etc/passwd", "IANA time zone"),
        ("timezone", "", "IANA time zone"),
        ("timezone", 3, "IANA time zone"),
        ("session_hook", "", "dotted path"),
        ("session_hook", "myapp.db: make_session", "dotted path"),
        ("session_hook", 5, "dotted path"),
        ("redis_namespace", "has space", "letters, digits"),
        ("redis_namespace", "n" * 65, "letters, digits"),
        ("redis_namespace", "ns/x", "letters, digits"),
    ],
)
def test_bad_values_raise_configuration_error(key, value, hint):
    message = _parse_error(key, value)
    assert f"pyncette.{key}" in message
    assert hint in message


def test_bad_value_is_named_in_message():
    message = _parse_error("batch_size", "lots")
    assert "pyncette.batch_size" in message
    assert "'lots'" in message


def test_bad_url_error_does_not_leak_password():
    message = _parse_error("url", "user:hunter2@db")
    assert "pyncette.url" in message
    assert "scheme://" in message


def test_heartbeat_must_be_shorter_than_lease():
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as excinfo:
        _parse(lease_duration="30s", heartbeat_interval="30s")
    message = str(excinfo.value)
    assert "pyncette.heartbeat_interval" in message
    assert "pyncette.lease_duration" in message
    assert "below the lease duration" in message


@pytest.mark.parametrize("key", ["poll_interval", "lease_duration", "heartbeat_interval"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [("420000w", "'420000w' is too long (2.54016e+11s)"), (1e10, "10000000000.0 is too long")],
)
def test_duration_settings_longer_than_ten_years_are_refused(key, value, shown):
    message = _parse_error(key, value)
    assert message.startswith(f"pyncette.{key}: {shown}")
    assert "use a duration above 0 and at most ten years (315360000s)" in message


def test_duration_settings_of_exactly_ten_years_are_accepted():
    ten_years = 10 * 365 * 24 * 3600
    result = _parse(lease_duration=f"{ten_years}s", poll_interval=ten_years)
    assert (result.lease_duration, result.poll_interval) == (ten_years, ten_years)


def test_configuration_error_for_typed_garbage_duration():
    message = _parse_error("poll_interval", object())
    assert "pyncette.poll_interval" in message


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_close_match():
    from pyramid_pyncette.settings import UnknownSettingWarning

    with pytest.warns(UnknownSettingWarning, match="pyncette.batchsize") as record:
        result = _parse({"pyncette.batchsize": "5"})
    assert "did you mean 'pyncette.batch_size'" in str(record[0].message)
    assert result.batch_size == 100


def test_unknown_key_without_close_match_lists_known_keys():
    from pyramid_pyncette.settings import UnknownSettingWarning

    with pytest.warns(UnknownSettingWarning) as record:
        _parse({"pyncette.zzzzzzzz": "1"})
    message = str(record[0].message)
    assert "pyncette.zzzzzzzz" in message
    assert "pyncette.poll_interval" in message
    assert "pyncette.url" in message


def test_unknown_setting_warning_is_user_warning():
    from pyramid_pyncette.settings import UnknownSettingWarning

    assert issubclass(UnknownSettingWarning, UserWarning)


def test_unknown_key_warning_points_at_caller():
    from pyramid_pyncette.settings import UnknownSettingWarning, parse_settings

    with pytest.warns(UnknownSettingWarning) as record:
        parse_settings({"pyncette.timezon": "UTC"})
    assert record[0].filename == __file__


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m15s", 5415.0),
        ("1.5h", 5400.0),
        ("  45s  ", 45.0),
        ("1H30M", 5400.0),
        ("10S", 10.0),
        ("100MS", 0.1),
        ("30 sec", 30.0),
        ("30 seconds", 30.0),
        ("5 min", 300.0),
        ("5 minutes", 300.0),
        ("2 hours", 7200.0),
        ("3 days", 259200.0),
        ("1 week", 604800.0),
        ("1m30s500ms", 90.5),
        ("1d12h", 129600.0),
        (30, 30.0),
        (0.25, 0.25),
        (datetime.timedelta(minutes=2), 120.0),
        (datetime.timedelta(milliseconds=1), 0.001),
    ],
)
def test_parse_duration_valid(value, expected):
    result = _duration(value)
    assert isinstance(result, float)
    assert result == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "0",
        "0s",
        "0h0m",
        "0.0",
        "-1",
        "-5m",
        "nan",
        "inf",
        "1e3",
        "5x",
        "5 parsecs",
        "1h1h",
        "1m 2min",
        "1s 1 seconds",
        "h",
        "1h30",
        "30m1",
        "1..5s",
        "1,5s",
        "abc",
        "٣s",
        "1h-30m",
        0,
        0.0,
        -3,
        -0.5,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [30],
        datetime.timedelta(0),
        datetime.timedelta(seconds=-1),
        10**400,
        "9" * 1000,
    ],
)
def test_parse_duration_invalid(value):
    with pytest.raises(ValueError, match="mykey"):
        _duration(value, key="mykey")


def test_parse_duration_message_names_key_value_and_format():
    with pytest.raises(ValueError) as excinfo:
        _duration("5x", key="pyncette.poll_interval")
    message = str(excinfo.value)
    assert message.startswith("pyncette.poll_interval: '5x' is not a duration")
    assert "use seconds (e.g. 30) or a value like '30s', '5m', '1h30m'" in message


def test_parse_duration_default_key():
    with pytest.raises(ValueError, match=r"^duration: "):
        _duration("soon")


@given(st.text())
def test_parse_duration_arbitrary_text(text):
    try:
        result = _duration(text)
    except ValueError:
        return
    assert isinstance(result, float)
    assert math.isfinite(result)
    assert result > 0


@given(
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=1, max_value=10**6),
)
def test_parse_duration_hms_round_trip(h, m, s):
    assert _duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


# --------------------------------------------------------------------------- redacted_url


def _redacted(url):
    from pyramid_pyncette.settings import PyncetteSettings

    return PyncetteSettings(url=url).redacted_url()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://sched:secret@db:5432/app", "postgresql://sched:***@db:5432/app"),
        ("postgresql+psycopg://u:p%40ss@db/app", "postgresql+psycopg://u:***@db/app"),
        ("mysql+pymysql://root:hunter2@localhost/jobs", "mysql+pymysql://root:***@localhost/jobs"),
        ("mysql://root@localhost/jobs", "mysql://root@localhost/jobs"),
        ("sqlite:///pyncette.sqlite", "sqlite:///pyncette.sqlite"),
        ("redis://user:secret@localhost:6379/0", "redis://user:***@localhost:6379/0"),
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://default:s3cr3t@cache.example.com", "rediss://default:***@cache.example.com"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://localhost/0?password=secret", "redis://localhost/0?password=***"),
        ("amqp://guest:guest@mq//", "amqp://guest:***@mq//"),
    ],
)
def test_redacted_url(url, expected):
    assert _redacted(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "garbage",
        "://",
        "postgresql://",
        "postgresql://u:p@[::1",
        "redis://u:secret@[::1",
        "http://[bad",
        "\x00\udcff",
        None,
        12345,
    ],
)
def test_redacted_url_never_raises(url):
    result = _redacted(url)
    assert isinstance(result, str)
    assert "secret" not in result
    assert "u:p@" not in result


@given(st.text())
def test_redacted_url_never_raises_on_arbitrary_text(text):
    assert isinstance(_redacted(text), str)


# --------------------------------------------------------------------------- the settings table

REGENERATE = "python -m tests.test_settings"
_ROOT = Path(__file__).resolve().parent.parent
_README = _ROOT / "README.md"
_INIT = _ROOT / "pyramid_pyncette" / "__init__.py"


def _readme_table_span(text):
    """Where the README's settings table is: ``(start, end)`` offsets."""
    start = text.index("| setting | default | meaning |")
    end = text.find("\n\n", start)
    return start, (len(text) if end == -1 else end + 1)


def _docstring_block_span(text):
    """Where ``includeme``'s list of settings is in its source: ``(start, end)`` offsets.

    The list is the run of non-blank lines that starts at the first line
    naming a ``pyncette.*`` setting in the docstring.
    """
    body = text.index("def includeme(")
    start = text.index("\n    ``pyncette.", body) + 1
    end = text.index("\n\n", start) + 1
    return start, end


def _indented(block):
    return "".join(f"    {line}" if line.strip() else line for line in block.splitlines(True))


def regenerate():
    """Rewrite the README's settings table and ``includeme``'s settings list from the table."""
    from pyramid_pyncette.settings import settings_docstring, settings_markdown_table

    readme = _README.read_text(encoding="utf-8")
    start, end = _readme_table_span(readme)
    _README.write_text(readme[:start] + settings_markdown_table() + readme[end:], encoding="utf-8")
    source = _INIT.read_text(encoding="utf-8")
    start, end = _docstring_block_span(source)
    new = source[:start] + _indented(settings_docstring()) + source[end:]
    _INIT.write_text(new, encoding="utf-8")


def test_readme_settings_table_is_rendered_from_the_settings_table():
    from pyramid_pyncette.settings import settings_markdown_table

    readme = _README.read_text(encoding="utf-8")
    start, end = _readme_table_span(readme)
    assert readme[start:end] == settings_markdown_table(), (
        f"README.md's settings table differs from pyramid_pyncette/settings.py: run {REGENERATE}"
    )


def test_includeme_docstring_lists_the_settings_of_the_settings_table():
    import inspect

    from pyramid_pyncette import includeme
    from pyramid_pyncette.settings import settings_docstring

    assert settings_docstring() in inspect.cleandoc(includeme.__doc__), (
        f"includeme's docstring differs from pyramid_pyncette/settings.py: run {REGENERATE}"
    )


def test_every_setting_has_a_parser_a_default_and_a_one_line_doc():
    from pyramid_pyncette.settings import KNOWN_KEYS, SETTINGS, PyncetteSettings

    assert {s.name for s in SETTINGS} == KNOWN_KEYS
    defaults = PyncetteSettings()
    for setting in SETTINGS:
        assert callable(setting.parse), setting.name
        assert getattr(defaults, setting.field) == setting.default
        assert setting.field == setting.name.replace(".", "_")
        assert setting.doc and "\n" not in setting.doc, setting.name
        assert setting.key == f"pyncette.{setting.name}"


def test_every_setting_is_parsed_by_its_own_parser():
    from pyramid_pyncette.settings import SETTINGS

    ini = {
        "url": "memory://",
        "poll_interval": "2s",
        "batch_size": "7",
        "concurrency": "3",
        "lease_duration": "5m",
        "heartbeat_interval": "1m",
        "table_name": "jobs",
        "timezone": "Europe/Ljubljana",
        "skip_table_create": "yes",
        "base_url": "https://example.com/",
        "session_hook": "myapp.models:get_session",
        "redis_namespace": "myapp:jobs",
        "partitions": "4",
        "max_retries": "2",
        "retry_backoff": "30s",
        "retry_backoff_max": "2h",
        "queues": "emails",
        "history": "failures",
        "history_retention": "1d",
        "metrics_port": "9091",
        "metrics_host": "0.0.0.0",
        "dashboard.path": "/admin/jobs",
        "dashboard.permission": "jobs.edit",
        "dashboard.metrics_public": "on",
    }
    assert set(ini) == {s.name for s in SETTINGS}
    parsed = _parse({f"pyncette.{name}": value for name, value in ini.items()})
    for setting in SETTINGS:
        assert getattr(parsed, setting.field) != setting.default, setting.name


def test_defaults_are_shown_as_the_ini_would_spell_them():
    from pyramid_pyncette.settings import SETTINGS

    shown = {s.name: s.default_text for s in SETTINGS}
    assert shown["poll_interval"] == "`1s`"
    assert shown["lease_duration"] == "`60s`"
    assert shown["retry_backoff_max"] == "`1h`"
    assert shown["skip_table_create"] == "`false`"
    assert shown["heartbeat_interval"] == "a third of the lease"
    for setting in SETTINGS:
        if setting.default_text.startswith("`"):
            raw = setting.default_text.strip("`")
            parsed = _parse({setting.key: raw})
            assert getattr(parsed, setting.field) == setting.default


if __name__ == "__main__":
    regenerate()


# --------------------------------------------------------------------------- queues and history


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("emails", {"emails"}),
        ("default emails", {"default", "emails"}),
        ("a, b.c  d-e", {"a", "b.c", "d-e"}),
        (["x", "y"], {"x", "y"}),
    ],
)
def test_queues_setting_reads_names(raw, expected):
    from pyramid_pyncette.settings import parse_settings

    assert parse_settings({"pyncette.queues": raw}).queues == frozenset(expected)


def test_queues_setting_defaults_to_every_queue():
    from pyramid_pyncette.settings import parse_settings

    assert parse_settings({}).queues is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "names no queue"),
        ("  ,", "names no queue"),
        ("good b/d", "'b/d' is not a queue name"),
        ("-dash", "'-dash' is not a queue name"),
        ("x" * 65, "is not a queue name"),
        (42, "is not a list of queue names"),
    ],
)
def test_queues_setting_rejects_bad_names(raw, words):
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.settings import parse_settings

    with pytest.raises(ConfigurationError) as info:
        parse_settings({"pyncette.queues": raw})
    assert str(info.value).startswith("pyncette.queues: ")
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"), [("all", "all"), ("Failures", "failures"), ("none", "none")]
)
def test_history_setting(raw, expected):
    from pyramid_pyncette.settings import parse_settings

    assert parse_settings({"pyncette.history": raw}).history == expected


def test_history_setting_rejects_other_words():
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.settings import parse_settings

    with pytest.raises(
        ConfigurationError, match=r"pyncette\.history: 'errors' is not one of all, failures, none"
    ):
        parse_settings({"pyncette.history": "errors"})


def test_history_retention_defaults_to_a_week_and_reads_durations():
    from pyramid_pyncette.settings import parse_settings

    assert parse_settings({}).history_retention == 7 * 86400
    assert parse_settings({"pyncette.history_retention": "90m"}).history_retention == 5400


# --------------------------------------------------------------------------- metrics and dashboard


def test_metrics_and_dashboard_defaults_are_off_local_and_guarded():
    result = _parse({})
    assert result.metrics_port is None
    assert result.metrics_host == "127.0.0.1"
    assert result.dashboard_path == "/pyncette"
    assert result.dashboard_permission == "pyncette.admin"
    assert result.dashboard_metrics_public is False


def test_dotted_dashboard_keys_fill_their_fields():
    result = _parse(
        {
            "pyncette.dashboard.path": " /admin/jobs/ ",
            "pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED",
            "pyncette.dashboard.metrics_public": "true",
            "pyncette.metrics_port": "9091",
            "pyncette.metrics_host": "0.0.0.0",
        }
    )
    assert result.dashboard_path == "/admin/jobs"
    assert result.dashboard_permission == "NO_PERMISSION_REQUIRED"
    assert result.dashboard_metrics_public is True
    assert result.metrics_port == 9091
    assert result.metrics_host == "0.0.0.0"


def test_metrics_port_zero_means_any_free_port():
    assert _parse({"pyncette.metrics_port": 0}).metrics_port == 0


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("metrics_port", "65536", "is not a TCP port"),
        ("metrics_port", "-1", "not a whole number"),
        ("metrics_port", "http", "not a whole number"),
        ("metrics_host", "local host", "contains whitespace"),
        ("dashboard.path", "pyncette", "is not a URL path below the root"),
        ("dashboard.path", "/", "is not a URL path below the root"),
        ("dashboard.path", "/a b", "is not a URL path below the root"),
        ("dashboard.path", "/a//b", "is not a URL path below the root"),
        ("dashboard.permission", "admin view", "contains whitespace"),
        ("dashboard.metrics_public", "maybe", "is not a boolean"),
    ],
)
def test_bad_metrics_and_dashboard_values_name_the_key_and_the_fix(key, value, words):
    message = _parse_error(key, value)
    assert message.startswith(f"pyncette.{key}: {value!r}")
    assert words in message
    assert "; use " in message


def test_a_misspelt_dashboard_key_suggests_the_dotted_name():
    with pytest.warns(UserWarning, match="did you mean 'pyncette.dashboard.path'"):
        _parse({"pyncette.dashboard.paht": "/x"})
