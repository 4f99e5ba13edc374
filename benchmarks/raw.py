"""The physical-limit reference: a minimal batched claim-and-delete loop per store.

Run as a process (``python -m benchmarks.raw --url URL --out DIR``), it drains
the jobs that :mod:`pyramid_pyncette` stored, on the same table or keys, with
the least work a store allows: each batch of due ids is removed in one
transaction and "run" (its ids noted), with no lease, no completion write, no
Pyramid request and no transaction manager. Like :mod:`benchmarks.app`, it
writes ``runs-<pid>.tsv`` at exit, so the harness reads both the same way.

* PostgreSQL: ``DELETE ... WHERE id IN (SELECT id ... ORDER BY due_at LIMIT n
  FOR UPDATE SKIP LOCKED) RETURNING id``, autocommit.
* MariaDB: ``SELECT id ... FORCE INDEX (due_at) ... FOR UPDATE SKIP LOCKED``
  then ``DELETE ... WHERE id IN (...)`` in one READ COMMITTED transaction,
  retried when InnoDB makes it a deadlock victim.
* SQLite: the same select and delete inside ``BEGIN IMMEDIATE``.
* Redis: one Lua script per partition: ``ZRANGEBYSCORE`` on its due set,
  ``ZREM``, ``HDEL``; a batch is filled from several partitions (starting at
  a random one) when the first has fewer due jobs, as the store's claim does.

Only the driver is imported (no SQLAlchemy), so the process starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

Claim = Callable[[], list[str]]

#: Transactions rolled back and retried (MariaDB deadlock victims).
RETRIES = [0]

_REDIS_CLAIM = """
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
end
return ids
"""


def _sqlite(url: str, table: str, batch: int) -> Claim:
    import sqlite3

    path = url.split(":///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA busy_timeout = 60000")
    select = f"SELECT id FROM {table} WHERE due_at <= ? ORDER BY due_at LIMIT {batch}"

    def claim() -> list[str]:
        # Stored as naive UTC text with microseconds, so text order is time order.
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [row[0] for row in conn.execute(select, (now,))]
            if ids:
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return ids

    return claim


def _postgresql(url: str, table: str, batch: int) -> Claim:
    import psycopg

    parts = urlsplit(url)
    conn = psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or "") or None,
        dbname=parts.path.lstrip("/"),
        autocommit=True,
    )
    statement = (
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE due_at <= now() "
        f"ORDER BY due_at LIMIT {batch} FOR UPDATE SKIP LOCKED) RETURNING id"
    )

    def claim() -> list[str]:
        return [row[0] for row in conn.execute(statement)]

    return claim


def _mariadb(url: str, table: str, batch: int) -> Claim:
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        autocommit=False,
    )
    with conn.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    select = (
        f"SELECT id FROM {table} FORCE INDEX (ix_{table}_due_at) WHERE due_at <= UTC_TIMESTAMP(6) "
        f"ORDER BY due_at LIMIT {batch} FOR UPDATE SKIP LOCKED"
    )

    def claim() -> list[str]:
        while True:
            try:
                with conn.cursor() as cursor:
                    cursor.execute(select)
                    ids = [row[0] for row in cursor.fetchall()]
                    if ids:
                        marks = ",".join(["%s"] * len(ids))
                        cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
                conn.commit()
                return ids
            except pymysql.err.OperationalError as exc:
                # InnoDB may pick this transaction as a deadlock victim (1213)
                # or time out a lock wait (1205): roll back and try again.
                if exc.args[0] not in (1205, 1213):
                    raise
                conn.rollback()
                RETRIES[0] += 1

    return claim


def redis_partition_tags(client: Any, namespace: str) -> list[str]:
    """The hash tags of ``namespace``'s partitions: ``{ns}`` for a store of one
    partition (or one set up before partitions existed), else ``{ns:0}`` ..."""
    count = client.hget("{" + namespace + "}:meta", "partitions")
    partitions = int(count) if count else 1
    if partitions == 1:
        return ["{" + namespace + "}"]
    return ["{" + f"{namespace}:{p}" + "}" for p in range(partitions)]


def _redis(url: str, namespace: str, batch: int) -> Claim:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    script = client.register_script(_REDIS_CLAIM)
    tags = redis_partition_tags(client, namespace)
    offset = [random.randrange(len(tags))]

    def claim() -> list[str]:
        ids: list[str] = []
        start = offset[0]
        offset[0] = (start + 1) % len(tags)
        for step in range(len(tags)):
            tag = tags[(start + step) % len(tags)]
            ids += script(keys=[f"{tag}:due", f"{tag}:jobs"], args=[batch - len(ids)])
            if len(ids) >= batch:
                break
        return ids

    return claim


def make_claim(url: str, batch: int, table: str, namespace: str) -> Claim:
    """The claim-and-delete function of the store ``url`` names."""
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        return _sqlite(url, table, batch)
    if scheme == "postgresql":
        return _postgresql(url, table, batch)
    if scheme in ("mysql", "mariadb"):
        return _mariadb(url, table, batch)
    if scheme == "redis":
        return _redis(url, namespace, batch)
    raise ValueError(f"no raw loop for {url!r}")


def drain(claim: Claim) -> list[tuple[str, float]]:
    """Claim until nothing is due; every id of a batch 'starts' when the batch is claimed."""
    runs: list[tuple[str, float]] = []
    while True:
        ids = claim()
        if not ids:
            return runs
        now = time.time()
        runs.extend((job_id, now) for job_id in ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, help="folder for runs-<pid>.tsv")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--table", default="pyncette_jobs")
    parser.add_argument("--namespace", default="pyncette")
    args = parser.parse_args(argv)

    claim = make_claim(args.url, args.batch, args.table, args.namespace)
    ready_at = time.time()
    runs = drain(claim)
    facts = {
        "pid": os.getpid(),
        "ready_at": ready_at,
        "exit_at": time.time(),
        "peak_rss_kb": None,
        "runs": len(runs),
        "retries": RETRIES[0],
    }
    with open(os.path.join(args.out, f"runs-{os.getpid()}.tsv"), "w") as out:
        out.write(json.dumps(facts) + "\n")
        out.writelines(f"{job_id}\t{started:.6f}\n" for job_id, started in runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
