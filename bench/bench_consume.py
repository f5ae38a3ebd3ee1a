"""Consume throughput per backend, against a raw floor measured in the same run.

Run with ``make bench``. Prints a table; asserts nothing. Figures are ratios
to a floor measured in the same run, because machines are noisy: a bare
transaction of the same shape as one consume (take the write lock, read two
counters, bump them, append one event, commit durably), in sqlite3 for the
SQLite row and in psycopg for the PostgreSQL row (left out when no server).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tokenquota
from tokenquota import FrozenClock

ROUNDS = 3
CALLS = 400


def timed(fn: Callable[[], object], calls: int = CALLS) -> tuple[float, float, float]:
    """Calls per second, p50 and p99 latency in microseconds, best of ROUNDS."""
    best: tuple[float, float, float] | None = None
    for _ in range(ROUNDS):
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            latencies.append(time.perf_counter() - t0)
        rate = calls / sum(latencies)
        latencies.sort()
        row = (
            rate,
            latencies[len(latencies) // 2] * 1e6,
            latencies[int(len(latencies) * 0.99)] * 1e6,
        )
        if best is None or row[0] > best[0]:
            best = row
    assert best is not None
    return best


def raw_floor(path: Path) -> Callable[[], None]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def once() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT v FROM c WHERE k IN ('user', 'company')").fetchall()
        for key in ("user", "company"):
            conn.execute(
                "INSERT INTO c VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1", (key,)
            )
        conn.execute("INSERT INTO e (body) VALUES ('{}')")
        conn.execute("COMMIT")

    return once


POSTGRES = os.environ.get("TOKENQUOTA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A throwaway schema on the local PostgreSQL, or None when there is none."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    with admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def postgres_floor(schema: str) -> Callable[[], None]:
    """The same shape on PostgreSQL: lock, read two counters, bump them, append, commit."""
    import psycopg

    conn = psycopg.connect(POSTGRES, options=f"-csearch_path={schema}")
    conn.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    conn.execute("CREATE TABLE e (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
    conn.commit()

    def once() -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(1)")
            conn.execute("SELECT v FROM c WHERE k IN ('user', 'company')").fetchall()
            for key in ("user", "company"):
                conn.execute(
                    "INSERT INTO c VALUES (%s, 1) ON CONFLICT (k) DO UPDATE SET v = c.v + 1",
                    (key,),
                )
            conn.execute("INSERT INTO e (body) VALUES ('{}')")

    return once


def library(url: str) -> Callable[[], None]:
    quota = tokenquota.open(url, clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "day", 10**15)
    quota.set_limit("company:acme", "tokens", "month", 10**15)

    def once() -> None:
        quota.consume("user:alice", tokens=10)

    return once


def main() -> None:
    # Each row: (what, figures, the floor it is compared with).
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        floor = timed(raw_floor(Path(tmp) / "floor.db"))
        rows.append(("sqlite3 floor (1 durable tx)", floor, floor))
        rows.append(("tokenquota memory://", timed(library("memory://")), floor))
        sqlite = timed(library(f"sqlite:///{Path(tmp) / 'q.db'}"))
        rows.append(("tokenquota sqlite (durable)", sqlite, floor))
    with postgres_schema() as schema:
        if schema is None:
            Console().print(f"PostgreSQL not reachable at {POSTGRES}: its rows are left out")
        else:
            pg_floor = timed(postgres_floor(schema))
            rows.append(("psycopg floor (1 locked tx)", pg_floor, pg_floor))
            url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
            rows.append(("tokenquota postgresql", timed(library(url)), pg_floor))
    table = Table(title=f"consume, in-process, best of {ROUNDS} x {CALLS} calls")
    for column in ("what", "calls/s", "p50 µs", "p99 µs", "time vs its floor"):
        table.add_column(column, justify="right")
    for name, (rate, p50, p99), (base, _, _) in rows:
        table.add_row(name, f"{rate:,.0f}", f"{p50:,.0f}", f"{p99:,.0f}", f"{base / rate:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
