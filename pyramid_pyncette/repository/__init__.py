"""Job stores behind one contract (see :mod:`pyramid_pyncette.repository.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .base import Claim, JobPage, Repository, RepositoryError

if TYPE_CHECKING:
    from ..settings import PyncetteSettings

__all__ = [
    "STORE_SCHEMES",
    "Claim",
    "JobPage",
    "Repository",
    "RepositoryError",
    "StoreScheme",
    "UnsupportedStoreError",
    "create_repository",
    "is_sql_url",
    "missing_driver_message",
    "store_partitions",
    "store_scheme",
]


class StoreScheme(NamedTuple):
    """What one ``pyncette.url`` scheme names: its store and how to install its driver."""

    #: The store module: ``"memory"``, ``"sql"``, ``"redis"`` or ``"dynamodb"``.
    store: str
    #: The extra (``pip install "pyramid_pyncette[<extra>]"``) installing its driver.
    extra: str | None = None
    #: The driver module that extra installs.
    driver: str | None = None


#: Every store URL scheme this package knows, in lower case and without any
#: ``+driver`` part (see :func:`store_scheme`).
STORE_SCHEMES: dict[str, StoreScheme] = {
    "memory": StoreScheme("memory"),
    "sqlite": StoreScheme("sql"),
    "postgresql": StoreScheme("sql", "postgresql", "psycopg"),
    "mysql": StoreScheme("sql", "mysql", "pymysql"),
    "mariadb": StoreScheme("sql", "mysql", "pymysql"),
    # Also Redis Cluster: redis+cluster:// and rediss+cluster:// (store_scheme
    # reads "+cluster" like a driver part, so they name these entries).
    "redis": StoreScheme("redis", "redis", "redis"),
    "rediss": StoreScheme("redis", "redis", "redis"),
    "unix": StoreScheme("redis", "redis", "redis"),
    "dynamodb": StoreScheme("dynamodb", "dynamodb", "boto3"),
}

#: How many partitions a store has when ``pyncette.partitions`` is not set.
DEFAULT_PARTITIONS = {"memory": 1, "sql": 1, "redis": 16, "dynamodb": 16}
SQL_SCHEMES = tuple(name for name, kind in STORE_SCHEMES.items() if kind.store == "sql")
REDIS_SCHEMES = tuple(name for name, kind in STORE_SCHEMES.items() if kind.store == "redis")


def store_scheme(url: str) -> str:
    """The scheme of a store URL in lower case, without its ``+driver`` part.

    ``"PostgreSQL+psycopg://..."`` gives ``"postgresql"``; look it up in
    :data:`STORE_SCHEMES`.
    """
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def is_sql_url(url: str) -> bool:
    """Whether ``url`` names a SQL store (SQLite, PostgreSQL, MySQL or MariaDB)."""
    return store_scheme(url) in SQL_SCHEMES


class UnsupportedStoreError(ValueError):
    """``pyncette.url`` names a store this package does not know, or lacks its driver."""


# Distribution names of driver modules whose import name differs.
_PIP_NAMES = {"MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary"}


def missing_driver_message(scheme: str, exc: ImportError) -> str:
    """The error for a store whose driver cannot be imported, naming what to install."""
    backend = scheme.split("+", 1)[0]
    module = (getattr(exc, "name", None) or str(exc)).split(".", 1)[0]
    known = STORE_SCHEMES.get(backend.lower())
    extra, driver = (known.extra, known.driver) if known else (None, None)
    if extra is None:
        return f"pyncette.url: the {scheme}:// store cannot import {module!r} ({exc}); install it"
    install = f'pip install "pyramid_pyncette[{extra}]"'
    if module == driver:
        return f"pyncette.url: the {scheme}:// store needs the {driver} package; {install}"
    # SQLAlchemy's default driver for a bare scheme is not the one the extra installs.
    return (
        f"pyncette.url: the {scheme}:// store needs the {module} package, which is not "
        f"installed; {install} and write the URL as {backend}+{driver}://..., "
        f"or pip install {_PIP_NAMES.get(module, module)}"
    )


def store_partitions(settings: PyncetteSettings) -> int:
    """How many partitions the store ``settings.url`` names is split into.

    ``pyncette.partitions`` when set, else the store's default (see
    :data:`DEFAULT_PARTITIONS`). Raises :class:`UnsupportedStoreError` for a
    count the store cannot take (SQL stores keep one due index).
    """
    backend = store_scheme(settings.url)
    store = STORE_SCHEMES[backend].store if backend in STORE_SCHEMES else "memory"
    if settings.partitions is None:
        return DEFAULT_PARTITIONS[store]
    if store == "sql" and settings.partitions != 1:
        raise UnsupportedStoreError(
            f"pyncette.partitions = {settings.partitions}: SQL stores keep one due index and "
            "their claims skip the rows other daemons hold, so they are not split into "
            "partitions; remove the setting (or set 1) for sqlite://, postgresql:// and "
            "mysql:// stores (partitions spread Redis and DynamoDB stores)"
        )
    return settings.partitions


def create_repository(settings: PyncetteSettings) -> Repository:
    """Build (but do not connect) the store that ``settings.url`` names."""
    url = settings.url
    scheme = url.split("://", 1)[0].lower()
    backend = store_scheme(url)
    store = STORE_SCHEMES[backend].store if backend in STORE_SCHEMES else None
    partitions = store_partitions(settings)
    if store == "memory":
        from .memory import MemoryRepository

        repository = MemoryRepository()
        repository.partitions = partitions
        return repository
    if store == "sql":
        import sqlalchemy as sa

        from .sql import SQLRepository

        try:
            return SQLRepository(
                url, table_name=settings.table_name, create_table=not settings.skip_table_create
            )
        except ImportError as exc:  # the drivers are optional dependencies
            raise UnsupportedStoreError(missing_driver_message(scheme, exc)) from exc
        except sa.exc.NoSuchModuleError as exc:
            driver = STORE_SCHEMES[backend].driver
            better = f"{backend}+{driver}://" if driver else f"{backend}://"
            raise UnsupportedStoreError(
                f"pyncette.url: SQLAlchemy knows no driver {scheme.partition('+')[2]!r} for "
                f"{backend}://; use {better}... (see the README, 'Stores')"
            ) from exc
    if store == "redis":
        try:
            from .redis import RedisRepository
        except ImportError as exc:  # redis-py is an optional dependency
            raise UnsupportedStoreError(missing_driver_message(scheme, exc)) from exc

        return RedisRepository(
            url,
            namespace=settings.redis_namespace,
            # Every job thread may schedule follow-ups; the loop needs a few more.
            max_connections=settings.concurrency + 4,
            # None adopts the count the namespace was set up with (16 for a new one).
            partitions=settings.partitions,
        )
    if store == "dynamodb":
        try:
            from .dynamodb import DynamoDBRepository
        except ImportError as exc:  # boto3 is an optional dependency
            raise UnsupportedStoreError(missing_driver_message(scheme, exc)) from exc

        return DynamoDBRepository(
            url,
            # None: the count the table was set up with (16 for a new table).
            partitions=settings.partitions,
            create_table=not settings.skip_table_create,
            max_connections=settings.concurrency + 4,
        )
    raise UnsupportedStoreError(
        f"pyncette.url: unsupported store scheme {scheme!r}; use sqlite:///path/to/file.sqlite, "
        "postgresql+psycopg://..., mysql+pymysql://..., redis://host:6379/0, "
        "dynamodb://region/table or memory:// "
        "(see the README, 'Stores')"
    )
