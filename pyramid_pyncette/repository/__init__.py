"""Job stores behind one contract (see :mod:`pyramid_pyncette.repository.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import JobPage, Lease, Outcome, Repository, RepositoryError

if TYPE_CHECKING:
    from ..settings import PyncetteSettings

__all__ = [
    "JobPage",
    "Lease",
    "Outcome",
    "Repository",
    "RepositoryError",
    "UnsupportedStoreError",
    "create_repository",
]

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class UnsupportedStoreError(ValueError):
    """``pyncette.url`` names a store this package does not know."""


def create_repository(settings: PyncetteSettings) -> Repository:
    """Build (but do not connect) the store that ``settings.url`` names."""
    url = settings.url
    scheme = url.split("://", 1)[0].lower()
    backend = scheme.split("+", 1)[0]
    if backend == "memory":
        from .memory import MemoryRepository

        return MemoryRepository()
    if backend in SQL_SCHEMES:
        from .sql import SQLRepository

        return SQLRepository(
            url, table_name=settings.table_name, create_table=not settings.skip_table_create
        )
    if backend in REDIS_SCHEMES:
        try:
            from .redis import RedisRepository
        except ImportError as exc:  # redis-py is an optional dependency
            raise UnsupportedStoreError(
                f"pyncette.url: the {scheme}:// store needs the redis package; "
                "pip install 'pyramid_pyncette[redis]'"
            ) from exc

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
