"""In-process floors: a bare call of the same shape as one consume, no tokenquota code in it.

- ``limits``: the ``limits`` library (PyPI) deciding the same four limits with
  fixed windows in memory: one ``hit`` per limit. It keeps no hierarchy,
  ledger or idempotency answers, which is what the memory backend adds.
- ``sqlite3``: one durable transaction: take the write lock (BEGIN IMMEDIATE),
  read four counters, upsert them, insert one event, commit (WAL,
  synchronous=FULL).
- ``psycopg``: the same transaction on PostgreSQL under an advisory lock.
- ``redis-py``: one EVALSHA of a 3-key Lua script (floor.lua) with the client
  settings the Redis backend uses; through ``RedisCluster`` for the cluster.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import COUNTERS, LIMIT, POSTGRES
from bench.stores import redis_client

FLOOR_LUA = Path(__file__).with_name("floor.lua")


def limits_floor() -> Callable[[], None]:
    from limits import (
        RateLimitItemPerDay,
        RateLimitItemPerHour,
        RateLimitItemPerMinute,
        RateLimitItemPerMonth,
    )
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(MemoryStorage())
    items = [
        (RateLimitItemPerMinute(LIMIT), "user:alice"),
        (RateLimitItemPerHour(LIMIT), "user:alice"),
        (RateLimitItemPerDay(LIMIT), "user:alice"),
        (RateLimitItemPerMonth(LIMIT), "company:acme"),
    ]

    def once() -> None:
        for item, subject in items:
            if not limiter.hit(item, subject, cost=10):
                raise RuntimeError("the limits floor refused")

    return once


def sqlite_floor(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """The durable transaction and a closer."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    read = f"SELECT v FROM c WHERE k IN ({','.join('?' * len(COUNTERS))})"

    def once() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(read, COUNTERS).fetchall()
        for key in COUNTERS:
            conn.execute(
                "INSERT INTO c VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1", (key,)
            )
        conn.execute("INSERT INTO e (body) VALUES ('{}')")
        conn.execute("COMMIT")

    return once, conn.close


def postgres_floor(schema: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The same transaction on PostgreSQL, serialised by an advisory lock; and a closer."""
    import psycopg

    conn = psycopg.connect(POSTGRES, options=f"-csearch_path={schema}")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    conn.execute("CREATE TABLE e (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    conn.commit()

    def once() -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(1)")
            conn.execute("SELECT v FROM c WHERE k = ANY(%s)", (list(COUNTERS),)).fetchall()
            for key in COUNTERS:
                conn.execute(
                    "INSERT INTO c VALUES (%s, 1) ON CONFLICT (k) DO UPDATE SET v = c.v + 1",
                    (key,),
                )
            conn.execute("INSERT INTO e (body) VALUES ('{}')")

    return once, conn.close


def redis_floor(prefix: str, client: Any = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """One EVALSHA per call (redis-py loads the script on the first NOSCRIPT); and a closer.

    ``client`` is the local Redis unless given (a cluster client): on a
    cluster the three keys share one hash tag, since a script reaches one slot.
    """
    if client is None:
        client = redis_client()
        keys = [f"{prefix}:{{user:alice}}:c", f"{prefix}:{{company:acme}}:c"]
        keys.append(f"{prefix}:{{L0}}:events")
    else:
        keys = [f"{prefix}:{{alice}}:{name}" for name in ("user", "company", "events")]
    script = client.register_script(FLOOR_LUA.read_text())
    args = ["10", str(LIMIT), "{}"]

    def once() -> None:
        if script(keys=keys, args=args) != 1:
            raise RuntimeError("the floor script refused")

    return once, client.close
