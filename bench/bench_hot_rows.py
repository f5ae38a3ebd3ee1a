"""Hot rows on PostgreSQL: the single write lock against per-series locks, in one run.

Run with ``make bench-hot``. Prints a table; asserts nothing. N threads consume
through one ``tokenquota.open("postgresql://...")`` (its connection pool, as a
service replica has), each as its own user, every user with a daily limit and
its company with a monthly one, so every consume reads and bumps two counters:

- hot: every thread a user of ONE company (the company's series is shared);
- spread: every thread a user of its own company (nothing is shared).

Each case runs with the old design (every write takes one advisory key
exclusively, ``SqlStore._single_lock``) and the current one (hot writes share
that key and lock their series), alternately, in a fresh schema each, on the
machine's PostgreSQL; the figures are ratios to the old design measured in the
same run, because machines are noisy. The pool holds at most 15 connections
(SQLAlchemy's default 5 + 10 overflow), so beyond 15 threads the extra ones
queue for a connection, as requests beyond the pool do in a replica.

Advisory locks are database-wide, not per schema: test suites running in other
schemas of the same database take the same global key and slow both designs.
``python -m bench.bench_hot_rows hot`` (or ``spread``) runs one kind of case;
TOKENQUOTA_BENCH_CALLS and TOKENQUOTA_BENCH_ROUNDS change the sizes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

import tokenquota
from tokenquota import FrozenClock, Quota
from tokenquota.storage.sql import SqlStore

POSTGRES = os.environ.get("TOKENQUOTA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
THREADS = (8, 32)
CALLS = int(os.environ.get("TOKENQUOTA_BENCH_CALLS", "1600"))  # per case, split between threads
# Each case this many times per design, alternating designs; the median is kept.
ROUNDS = int(os.environ.get("TOKENQUOTA_BENCH_ROUNDS", "3"))
WARMUP = 3  # consumes per thread before the clock starts: connections, caches


@contextmanager
def schema() -> Iterator[str]:
    """A throwaway schema on the local PostgreSQL, as a URL whose connections use it."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield f"{POSTGRES}?options=-csearch_path%3D{name}"
        finally:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def users(threads: int, hot: bool) -> list[tuple[str, str]]:
    return [(f"user:t{i}", "company:hot" if hot else f"company:c{i}") for i in range(threads)]


def prepare(quota: Quota, pairs: list[tuple[str, str]]) -> None:
    for user, company in pairs:
        quota.set_parents(user, [company])
        quota.set_limit(user, "tokens", "day", 10**15)
    for company in {c for _, c in pairs}:
        quota.set_limit(company, "tokens", "month", 10**15)


Figures = tuple[float, float, float, float]


def run(quota: Quota, pairs: list[tuple[str, str]]) -> Figures:
    """Decisions per second, p50 and p99 latency in ms, and the client's CPU.

    The last is this process's CPU time over the wall time (1.0 = one core
    busy): near 1.0 the interpreter (one GIL) is the bottleneck, not the
    database's locks.
    """
    per_thread = CALLS // len(pairs)
    barrier = threading.Barrier(len(pairs) + 1)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(user: str) -> None:
        for _ in range(WARMUP):
            quota.consume(user, tokens=10)
        barrier.wait()
        mine = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            assert quota.consume(user, tokens=10).allowed
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(len(pairs)) as pool:
        futures = [pool.submit(work, user) for user, _ in pairs]
        barrier.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for future in futures:
            future.result()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    latencies.sort()
    return (
        len(latencies) / wall,
        latencies[len(latencies) // 2] * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
        cpu / wall,
    )


def case(threads: int, hot: bool, single_lock: bool) -> Figures:
    with schema() as url:
        quota = tokenquota.open(url, clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
        try:
            store = quota.store
            assert isinstance(store, SqlStore)
            store._single_lock = single_lock
            pairs = users(threads, hot)
            prepare(quota, pairs)
            return run(quota, pairs)
        finally:
            quota.close()


def main() -> None:
    try:
        import psycopg

        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except Exception as exc:  # any failure to reach it means the same here
        Console().print(f"PostgreSQL not reachable at {POSTGRES}: {exc}")
        sys.exit(1)
    table = Table(
        title=f"consume on PostgreSQL, {CALLS:,} per case, median of {ROUNDS}, "
        "one process, one pool (15 connections)"
    )
    for column in (
        "case",
        "threads",
        "locks",
        "decisions/s",
        "p50 ms",
        "p99 ms",
        "client CPU",
        "vs single lock",
    ):
        table.add_column(column, justify="right")
    only = sys.argv[1:]  # e.g. `hot` or `spread` to run one kind of case
    for name, hot in (("hot (1 company)", True), ("spread (N companies)", False)):
        if only and name.split()[0] not in only:
            continue
        for threads in THREADS:
            runs: dict[bool, list[Figures]] = {True: [], False: []}
            for round_ in range(ROUNDS):
                # Alternate which design goes first: the machine drifts.
                for single_lock in (True, False) if round_ % 2 == 0 else (False, True):
                    runs[single_lock].append(case(threads, hot, single_lock))
            median = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
            base = median[True][0]
            for single_lock in (True, False):
                rate, p50, p99, busy = median[single_lock]
                table.add_row(
                    name,
                    str(threads),
                    "single (before)" if single_lock else "per series",
                    f"{rate:,.0f}",
                    f"{p50:.1f}",
                    f"{p99:.1f}",
                    f"{busy:.2f}",
                    f"{rate / base:.2f}x",
                )
    console = Console(width=130)
    console.print(table)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(f"{os.cpu_count()} CPUs; load average at the end: {load}")


if __name__ == "__main__":
    main()
