"""Consume throughput per backend, against a raw floor measured in the same run.

Run with ``make bench``. Prints a table; asserts nothing. Figures are ratios
to the floor because machines are noisy: the floor is a bare sqlite3
transaction of the same shape as one consume (take the write lock, read two
counters, bump them, append one event, commit durably).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
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


def library(url: str) -> Callable[[], None]:
    quota = tokenquota.open(url, clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "day", 10**15)
    quota.set_limit("company:acme", "tokens", "month", 10**15)

    def once() -> None:
        quota.consume("user:alice", tokens=10)

    return once


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        floor = timed(raw_floor(Path(tmp) / "floor.db"))
        rows = [
            ("sqlite3 floor (1 durable tx)", floor),
            ("tokenquota memory://", timed(library("memory://"))),
            ("tokenquota sqlite (durable)", timed(library(f"sqlite:///{Path(tmp) / 'q.db'}"))),
        ]
    table = Table(title=f"consume, in-process, best of {ROUNDS} x {CALLS} calls")
    for column in ("what", "calls/s", "p50 µs", "p99 µs", "time vs floor"):
        table.add_column(column, justify="right")
    for name, (rate, p50, p99) in rows:
        table.add_row(name, f"{rate:,.0f}", f"{p50:,.0f}", f"{p99:,.0f}", f"{floor[0] / rate:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
