"""Hiding credentials: exactly the password of URLs and conninfo strings, nothing else."""

from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

#: Passwords that are also ordinary words or parts of URLs.
AWKWARD_PASSWORDS = ["e", "p", "postgres", "pass", "%40", "redis", "mysql", "secret"]

#: Lines an application logs that contain those strings as ordinary words.
ORDINARY_LINES = [
    "store unavailable; retrying with backoff",
    "worker 1 started (concurrency 4, batch 100, poll every 1.0s)",
    "pass the postgres and redis tests: e, p, secret, %40 and mysql+pymysql stay",
    "the postgresql+psycopg driver is fast; redis is too",
    "job 'send-mail' succeeded in 0.2s (attempt 1 of 5)",
    "user=alice token=abc pass=3 secret=shh",
]


def _redact_url(url):
    from pyramid_pyncette.redaction import redact_url

    return redact_url(url)


def _redact_text(text):
    from pyramid_pyncette.redaction import redact_text

    return redact_text(text)


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "postgresql+psycopg://postgres:{pw}@db:5432/app",
            "postgresql+psycopg://postgres:***@db:5432/app",
        ),
        ("postgresql://postgresql:{pw}@db/app", "postgresql://postgresql:***@db/app"),
        ("mysql+pymysql://root:{pw}@localhost/jobs", "mysql+pymysql://root:***@localhost/jobs"),
        ("redis://redis:{pw}@cache:6379/0", "redis://redis:***@cache:6379/0"),
        ("redis://:{pw}@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://{pw}@cache:6380/0", "rediss://***@cache:6380/0"),
        ("redis://cache/0?password={pw}&db=1", "redis://cache/0?password=***&db=1"),
        ("sqlite:///jobs.sqlite?sslpassword={pw}", "sqlite:///jobs.sqlite?sslpassword=***"),
    ],
)
def test_redact_url_hides_exactly_the_password(template, expected, password):
    assert _redact_url(template.format(pw=password)) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Percent-encoded and raw reserved characters never leak a part.
        ("postgresql://u:p%40ss@db/app", "postgresql://u:***@db/app"),
        ("postgresql://u:p@ss@db/app", "postgresql://u:***@db/app"),
        ("postgresql://u:pa/ss@db/app", "postgresql://u:***@db/app"),
        ("postgresql://u:p?ss@db/app", "postgresql://u:***@db/app"),
        ("redis://u:p@ss@cache/0", "redis://u:***@cache/0"),
        # Without credentials nothing changes.
        ("postgresql://db/app", "postgresql://db/app"),
        ("mysql://root@localhost/jobs", "mysql://root@localhost/jobs"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqlite:///pyncette.sqlite", "sqlite:///pyncette.sqlite"),
        ("memory://", "memory://"),
        ("amqp://guest:guest@mq//", "amqp://guest:***@mq//"),
        # Not a URL: anything before an '@' may be credentials.
        ("app:S3cr3t@host/jobs", "***@host/jobs"),
    ],
)
def test_redact_url_handles_encoded_and_reserved_characters(url, expected):
    assert _redact_url(url) == expected


@pytest.mark.parametrize(
    "parameter",
    [
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        "SSLPassword",
        "secret",
        "client_secret",
        "token",
        "auth_token",
        "access_key",
        "secret_key",
        "api_key",
    ],
)
def test_redact_url_hides_credential_query_parameters(parameter):
    url = f"postgresql+psycopg://app@db/jobs?sslmode=require&{parameter}=hunter2&application_name=x"
    redacted = _redact_url(url)
    assert "hunter2" not in redacted
    assert f"{parameter}=***" in redacted
    assert "sslmode=require" in redacted and "application_name=x" in redacted


def test_redact_url_keeps_ordinary_query_parameters():
    url = "redis://cache:6379/0?socket_timeout=5&health_check_interval=30&ssl_keyfile=/k.pem"
    assert _redact_url(url) == url


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_log_lines_are_untouched(line, password):
    # Whatever the store's password is, text that holds no URL stays as it is.
    assert _redact_text(line) == line


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
def test_redact_text_hides_only_the_password_of_urls_in_text(password):
    line = (
        f"store unavailable (OperationalError: cannot use "
        f"postgresql+psycopg://postgres:{password}@127.0.0.1:5432/pyncette); "
        f"pass the postgres tests, e and p stay"
    )
    assert _redact_text(line) == (
        "store unavailable (OperationalError: cannot use "
        "postgresql+psycopg://postgres:***@127.0.0.1:5432/pyncette); "
        "pass the postgres tests, e and p stay"
    )


def test_redact_text_handles_several_urls_and_user_named_like_the_scheme():
    line = (
        "moving from redis://redis:s3cret@old:6379/0 to 'redis://redis:s3cret@new:6379/0', "
        "then postgresql://postgresql:s3cret@db/app?sslpassword=k3y&sslmode=require"
    )
    assert _redact_text(line) == (
        "moving from redis://redis:***@old:6379/0 to 'redis://redis:***@new:6379/0', "
        "then postgresql://postgresql:***@db/app?sslpassword=***&sslmode=require"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "invalid dsn: host=db password=pw dbname=app",
            "invalid dsn: host=db password=*** dbname=app",
        ),
        ("host=db password='p w\\'x' user=u", "host=db password=*** user=u"),
        ("sslpassword=k3y sslmode=require", "sslpassword=*** sslmode=require"),
        ("PASSWORD = pw", "PASSWORD = ***"),
        # libpq's own texts carry no password and are left alone.
        (
            'connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  '
            'password authentication failed for user "app"',
            'connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  '
            'password authentication failed for user "app"',
        ),
    ],
)
def test_redact_text_hides_conninfo_passwords(text, expected):
    assert _redact_text(text) == expected


@given(st.text())
def test_redact_url_and_text_never_raise(text):
    assert isinstance(_redact_url(text), str)
    assert isinstance(_redact_text(text), str)


@given(st.text(min_size=1))
def test_redact_url_hides_any_percent_encoded_password(password):
    from urllib.parse import quote

    encoded = quote(password, safe="")
    assert _redact_url(f"postgresql+psycopg://app:{encoded}@db:5432/jobs") == (
        "postgresql+psycopg://app:***@db:5432/jobs"
    )
    assert _redact_url(f"redis://app:{encoded}@cache:6379/0") == "redis://app:***@cache:6379/0"
    assert _redact_url(f"redis://cache:6379/0?password={encoded}") == (
        "redis://cache:6379/0?password=***"
    )


def _record(message, *args, exc_info=None):
    return logging.LogRecord("app", logging.ERROR, __file__, 1, message, args, exc_info)


def test_redacting_filter_hides_passwords_in_messages_arguments_and_tracebacks():
    from pyramid_pyncette.redaction import RedactingFilter

    try:
        raise RuntimeError("cannot connect to redis://u:tr4ceback@h:1/0")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record("store %s failed: %s", "mysql+pymysql://root:p@h/db", "e", exc_info=exc_info)

    assert RedactingFilter().filter(record) is True

    assert record.getMessage() == "store mysql+pymysql://root:***@h/db failed: e"
    assert "tr4ceback" not in record.exc_text
    assert "redis://u:***@h:1/0" in record.exc_text


def test_redacting_filter_leaves_ordinary_records_alone():
    from pyramid_pyncette.redaction import RedactingFilter

    record = _record("job %r says %s", "e", "pass postgres")
    assert RedactingFilter().filter(record) is True
    assert (record.msg, record.args) == ("job %r says %s", ("e", "pass postgres"))


def test_install_log_redaction_filters_every_handler_once(caplog):
    from pyramid_pyncette.redaction import RedactingFilter, install_log_redaction

    logger = logging.getLogger("tests.redaction.install")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        install_log_redaction()
        install_log_redaction()
        assert [type(f) for f in handler.filters] == [RedactingFilter]
    finally:
        logger.removeHandler(handler)


def test_settings_and_the_redis_store_use_the_same_redaction():
    from pyramid_pyncette.redaction import redact_url
    from pyramid_pyncette.settings import PyncetteSettings

    url = "redis://redis:e@cache:6379/0?sslpassword=p"
    assert PyncetteSettings(url=url).redacted_url() == redact_url(url)
    assert redact_url(url) == "redis://redis:***@cache:6379/0?sslpassword=***"
    pytest.importorskip("redis")
    from pyramid_pyncette.repository.redis import RedisRepository

    store = RedisRepository(url, namespace="x")
    try:
        assert store.redacted_url == redact_url(url)
    finally:
        store.close()


@pytest.mark.parametrize(
    "text",
    [
        "x\x1b[31mpostgresql://user:p/w@db/app",
        "xpostgresql://user:p?w@db/app",
        "\x1b[1mredis://s3cret@cache:6379/0",
        "seexredis://s3cret@cache:6379/0",
    ],
)
def test_redact_text_hides_a_password_in_a_url_glued_to_the_text_before_it(text):
    from pyramid_pyncette.redaction import redact_text

    shown = redact_text(text)
    for secret in ("p/w", "p?w", "s3cret"):
        assert secret not in shown
    assert "***" in shown
