"""Store URL schemes: one table says which store each scheme names, in any case."""

from __future__ import annotations

import pytest
from pyramid.exceptions import ConfigurationError

from tests.conftest import include_pyncette


def _store_scheme(url):
    from pyramid_pyncette.repository import store_scheme

    return store_scheme(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///jobs.sqlite", "sqlite"),
        ("postgresql+psycopg://u:p@db/app", "postgresql"),
        ("PostgreSQL+psycopg://u:p@db/app", "postgresql"),
        ("MySQL+pymysql://db/app", "mysql"),
        ("rediss://cache:6380/0", "rediss"),
        ("MEMORY://", "memory"),
    ],
)
def test_the_scheme_is_lower_case_without_its_driver(url, expected):
    assert _store_scheme(url) == expected


def test_sql_redis_and_dynamodb_schemes_are_read_from_the_one_table():
    from pyramid_pyncette.repository import REDIS_SCHEMES, SQL_SCHEMES, STORE_SCHEMES

    assert SQL_SCHEMES == ("sqlite", "postgresql", "mysql", "mariadb")
    assert REDIS_SCHEMES == ("redis", "rediss", "unix")
    assert set(STORE_SCHEMES) == {"memory", "dynamodb", *SQL_SCHEMES, *REDIS_SCHEMES}


@pytest.mark.parametrize(
    ("url", "expected"),
    [("sqlite:///x.sqlite", True), ("MariaDB+pymysql://db/app", True), ("redis://h/0", False)],
)
def test_is_sql_url_ignores_case_and_driver(url, expected):
    from pyramid_pyncette.repository import is_sql_url

    assert is_sql_url(url) is expected


def test_a_memory_url_in_upper_case_builds_the_memory_store():
    from pyramid_pyncette.repository import create_repository
    from pyramid_pyncette.repository.memory import MemoryRepository
    from pyramid_pyncette.settings import parse_settings

    settings = parse_settings({"pyncette.url": "MEMORY://"})
    assert isinstance(create_repository(settings), MemoryRepository)


def test_an_unknown_scheme_names_the_stores_there_are():
    from pyramid_pyncette.repository import UnsupportedStoreError, create_repository
    from pyramid_pyncette.settings import parse_settings

    settings = parse_settings({"pyncette.url": "mongodb://db/app"})
    with pytest.raises(UnsupportedStoreError, match="unsupported store scheme 'mongodb'"):
        create_repository(settings)


@pytest.mark.parametrize("url", ["memory://", "MEMORY://"])
def test_a_session_hook_needs_a_sql_store(url):
    with pytest.raises(ConfigurationError, match="needs the jobs table in the app's own"):
        include_pyncette({"pyncette.url": url, "pyncette.session_hook": "tests.txapp:get_session"})
