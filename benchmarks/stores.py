"""The stores, on servers this harness starts itself (see ``tests/servers.py``).

Every measurement runs against a fresh, empty store: a new SQLite file, a
new PostgreSQL or MariaDB database (dropped afterwards), a flushed Redis
server or a flushed Redis Cluster (three masters). Servers are started on
first use and closed by :meth:`Stores.close`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.common import ensure_importable

ensure_importable()

from tests.servers import (  # noqa: E402 - needs the repository root on sys.path
    BackendUnavailable,
    RedisClusterServer,
    Server,
    backends_required,
    start_mariadb,
    start_postgresql,
    start_redis,
    start_redis_cluster,
)

STORE_NAMES = ("sqlite", "postgresql", "mariadb", "redis", "redis-cluster", "dynamodb")


class StoreNotSupported(RuntimeError):
    """This version of the package cannot use a store (its URL scheme is unknown)."""


@dataclass
class Target:
    """One fresh store: its ``pyncette.url`` and how to reach it without SQLAlchemy."""

    store: str
    url: str
    database: str = ""
    host: str = ""
    port: int = 0
    user: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Store:
    """A kind of store; :meth:`fresh` hands out empty targets, :meth:`drop` discards one."""

    name = "?"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._counter = itertools.count(1)
        self.server: Server | RedisClusterServer | None = None

    def start(self) -> None:
        """Start the server (no-op for SQLite); raises BackendUnavailable."""

    def fresh(self) -> Target:
        raise NotImplementedError

    def drop(self, target: Target) -> None:
        """Discard a target's data."""

    def version(self) -> str:
        return "?"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


class SQLiteStore(Store):
    name = "sqlite"

    def fresh(self) -> Target:
        path = self.workdir / f"store-{next(self._counter)}.sqlite"
        return Target(self.name, f"sqlite:///{path}", path=str(path))

    def drop(self, target: Target) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target.path + suffix)

    def version(self) -> str:
        import sqlite3

        return sqlite3.sqlite_version


class _SQLServerStore(Store):
    def fresh(self) -> Target:
        assert self.server is not None
        name = f"bench_{next(self._counter)}"
        url = self.server.create_database(name)
        parts = urlsplit(url)
        return Target(
            self.name,
            url,
            database=name,
            host=parts.hostname or "",
            port=parts.port or 0,
            user=parts.username or "",
        )

    def drop(self, target: Target) -> None:
        if self.server is not None:
            self.server.drop_database(target.database)


class PostgreSQLStore(_SQLServerStore):
    name = "postgresql"

    def start(self) -> None:
        if self.server is None:
            self.server = start_postgresql()

    def version(self) -> str:
        with self.server.connect("postgres") as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


class MariaDBStore(_SQLServerStore):
    name = "mariadb"

    def start(self) -> None:
        if self.server is None:
            self.server = start_mariadb()

    def version(self) -> str:
        conn = self.server.connect("")
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT VERSION()")
                return cursor.fetchone()[0]
        finally:
            conn.close()


class RedisStore(Store):
    name = "redis"

    def start(self) -> None:
        if self.server is None:
            self.server = start_redis()

    def fresh(self) -> Target:
        self.server.flushall()
        return Target(
            self.name, self.server.url, host=self.server.host, port=self.server.port, database="0"
        )

    def drop(self, target: Target) -> None:
        self.server.flushall()

    def version(self) -> str:
        with self.server.client() as client:
            return client.info("server")["redis_version"]


class RedisClusterStore(Store):
    """A Redis Cluster of three masters (``redis+cluster://``), flushed for every target."""

    name = "redis-cluster"
    server: RedisClusterServer | None

    def start(self) -> None:
        if self.server is None:
            from tests.daemon import REDIS_CLUSTER_SUPPORTED

            if not REDIS_CLUSTER_SUPPORTED:
                raise StoreNotSupported(
                    "this version of pyramid_pyncette does not take redis+cluster:// URLs"
                )
            self.server = start_redis_cluster()

    def fresh(self) -> Target:
        assert self.server is not None
        self.server.flushall()
        return Target(self.name, self.server.url, host=self.server.host, port=self.server.port)

    def drop(self, target: Target) -> None:
        assert self.server is not None
        self.server.flushall()

    def shard_keys(self, ids: Iterable[str] = (), namespace: str = "pyncette") -> list[dict]:
        """Per master (in node order): its port, its key count (``DBSIZE``), how many
        partition hash tags (``{ns:p}``) its keys carry, and how many of the jobs
        ``ids`` live there (by their partition, the store's hash of the id)."""
        from redis.crc import key_slot

        from benchmarks.raw import redis_partition_tags
        from pyramid_pyncette.jobs import partition_of

        assert self.server is not None
        with self.server.client(decode_responses=True) as client:
            tags = redis_partition_tags(client, namespace)
        owner = {tag: self.server.node_of_slot(key_slot(tag[1:-1].encode())) for tag in tags}
        jobs = [0] * len(self.server.nodes)
        for job_id in ids:
            jobs[owner[tags[partition_of(job_id, len(tags))]]] += 1
        shards = []
        for index, node in enumerate(self.server.nodes):
            with node.client(decode_responses=True) as client:
                keys = int(client.dbsize())
                found = (key[1 : key.find("}")] for key in client.scan_iter(match="{*}*"))
                partitions = {tag for tag in found if ":" in tag}
            shards.append(
                {
                    "port": node.port,
                    "keys": keys,
                    "partitions": len(partitions),
                    "jobs": jobs[index],
                }
            )
        return shards

    def version(self) -> str:
        assert self.server is not None
        with self.server.nodes[0].client() as client:
            return f"{client.info('server')['redis_version']} (3 masters)"


class DynamoDBStore(Store):
    """DynamoDB as moto's server emulates it (``tests/moto_server.py``): a table per target.

    Throughput measured here is the emulator's (one request at a time, in
    Python), not DynamoDB's: only correctness is compared.
    """

    name = "dynamodb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.moto: Any = None

    def start(self) -> None:
        if self.moto is not None:
            return
        from tests.moto_server import DUMMY_AWS_ENV, MISSING, MotoServer

        if MotoServer.command() is None:
            raise StoreNotSupported(MISSING)
        # The harness, its web app and every daemon it spawns reach moto with dummy
        # credentials, never AWS.
        os.environ.update(DUMMY_AWS_ENV)
        server = MotoServer()
        server.start()
        self.moto = server

    def fresh(self) -> Target:
        assert self.moto is not None
        return Target(self.name, self.moto.url(f"bench_{next(self._counter)}"))

    def version(self) -> str:
        import moto

        return f"moto {moto.__version__} (emulated)"

    def close(self) -> None:
        if self.moto is not None:
            self.moto.stop()
            self.moto = None


_KINDS = {
    cls.name: cls
    for cls in (
        SQLiteStore,
        PostgreSQLStore,
        MariaDBStore,
        RedisStore,
        RedisClusterStore,
        DynamoDBStore,
    )
}


class Stores:
    """The selected stores; servers start on first use, all close together."""

    def __init__(self, names: list[str], workdir: Path) -> None:
        self.workdir = workdir
        self._stores = {name: _KINDS[name](workdir) for name in names}
        self.unavailable: dict[str, str] = {}

    def get(self, name: str) -> Store | None:
        """The started store, or None (and a reason in :attr:`unavailable`) when it cannot run."""
        if name in self.unavailable:
            return None
        store = self._stores[name]
        try:
            store.start()
        except BackendUnavailable as exc:
            self.unavailable[name] = str(exc)
            if backends_required():
                raise
            return None
        except StoreNotSupported as exc:
            self.unavailable[name] = str(exc)
            return None
        return store

    def versions(self) -> dict[str, str]:
        found = {}
        for name, store in self._stores.items():
            started = store.server is not None or getattr(store, "moto", None) is not None
            if name not in self.unavailable and (started or name == "sqlite"):
                try:
                    found[name] = store.version()
                except Exception as exc:  # informative only
                    found[name] = f"? ({exc})"
        return found

    def close(self) -> None:
        for store in self._stores.values():
            store.close()


def run_history(repository: Any) -> tuple[int, datetime | None, datetime | None]:
    """How many run records a repository holds, and the oldest and newest finish times."""
    count, oldest, newest = 0, None, None
    cursor = None
    while True:
        page = repository.list_runs(cursor=cursor, limit=5000)
        for run in page.runs:
            count += 1
            oldest = run.finished_at if oldest is None else min(oldest, run.finished_at)
            newest = run.finished_at if newest is None else max(newest, run.finished_at)
        cursor = page.next_cursor
        if cursor is None:
            return count, oldest, newest


def count_jobs(repository: Any) -> int:
    """How many jobs a repository holds (SQL table rows, else every queue's counts)."""
    if hasattr(repository, "engine"):
        import sqlalchemy as sa

        with repository.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(repository.table)).scalar()
    # The per-state counts of every queue: right whatever keys the store lays jobs out in.
    stats = repository.queue_stats(datetime.now(timezone.utc))
    return sum(sum(queue.jobs.values()) for queue in stats)
