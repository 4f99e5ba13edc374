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
    raise UnsupportedStoreError(
        f"pyncette.url: unsupported store scheme {scheme!r}; use sqlite:///path/to/file.sqlite "
        "or memory:// (see the README, 'Stores')"
    )
