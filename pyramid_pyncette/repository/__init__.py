"""Job stores behind one contract (see :mod:`pyramid_pyncette.repository.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import JobPage, Repository, RepositoryError

if TYPE_CHECKING:
    from ..settings import PyncetteSettings

__all__ = [
    "JobPage",
    "Repository",
    "RepositoryError",
    "UnsupportedStoreError",
    "create_repository",
    "missing_driver_message",
]

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class UnsupportedStoreError(ValueError):
    """``pyncette.url`` names a store this package does not know, or lacks its driver."""


#: The extra installing each store's driver, and the driver module it installs.
STORE_EXTRAS = {
    "postgresql": ("postgresql", "psycopg"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mysql", "pymysql"),
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "unix": ("redis", "redis"),
}
# Distribution names of driver modules whose import name differs.
_PIP_NAMES = {"MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary"}


def missing_driver_message(scheme: str, exc: ImportError) -> str:
    """The error for a store whose driver cannot be imported, naming what to install."""
    backend = scheme.split("+", 1)[0]
    module = (getattr(exc, "name", None) or str(exc)).split(".", 1)[0]
    extra, driver = STORE_EXTRAS.get(backend, (None, None))
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


def create_repository(settings: PyncetteSettings) -> Repository:
    """Build (but do not connect) the store that ``settings.url`` names."""
    url = settings.url
    scheme = url.split("://", 1)[0].lower()
    backend = scheme.split("+", 1)[0]
    if backend == "memory":
        from .memory import MemoryRepository

        return MemoryRepository()
    if backend in SQL_SCHEMES:
        import sqlalchemy as sa

        from .sql import SQLRepository

        try:
            return SQLRepository(
                url, table_name=settings.table_name, create_table=not settings.skip_table_create
            )
        except ImportError as exc:  # the drivers are optional dependencies
            raise UnsupportedStoreError(missing_driver_message(scheme, exc)) from exc
        except sa.exc.NoSuchModuleError as exc:
            driver = STORE_EXTRAS[backend][1] if backend in STORE_EXTRAS else None
            better = f"{backend}+{driver}://" if driver else f"{backend}://"
            raise UnsupportedStoreError(
                f"pyncette.url: SQLAlchemy knows no driver {scheme.partition('+')[2]!r} for "
                f"{backend}://; use {better}... (see the README, 'Stores')"
            ) from exc
    if backend in REDIS_SCHEMES:
        try:
            from .redis import RedisRepository
        except ImportError as exc:  # redis-py is an optional dependency
            raise UnsupportedStoreError(missing_driver_message(scheme, exc)) from exc

        return RedisRepository(
            url,
            namespace=settings.redis_namespace,
            # Every job thread may schedule follow-ups; the loop needs a few more.
            max_connections=settings.concurrency + 4,
        )
    raise UnsupportedStoreError(
        f"pyncette.url: unsupported store scheme {scheme!r}; use sqlite:///path/to/file.sqlite, "
        "postgresql+psycopg://..., mysql+pymysql://..., redis://host:6379/0 or memory:// "
        "(see the README, 'Stores')"
    )
