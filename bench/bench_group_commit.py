"""Group commit on SQLite and PostgreSQL: what sharing one commit buys at 1, 8 and 64 callers.

Run with ``make bench-group``. Prints one table and asserts nothing. Each
caller is a thread of one process consuming in a loop for its own user; all
users are in one company (the bench's shape: tokens per minute, hour and day
on the user, per month on the company), so every decision also touches the
company's counters: the hot row of a real tenant.

Each cell runs with group commit off (every decision its own transaction and
commit, as before) and on (``storage/sql/group.py``), alternating off, on,
off, on in the same minutes; a cell's figure is the better of its two
rounds. Ratios only, because the machine is shared and noisy:

- **on/off**: decisions per second with group commit on / off, same callers;
- **p50 on/off**, **p99 on/off**: latency with it on / off (below 1: faster);
- **off vs 1**, **on vs 1**: the rate against one caller with group commit
  off, the design before it (how the store scales with callers);
- **batch**: decisions per commit with it on (the mean over the round).

PostgreSQL rows need a server at TOKENQUOTA_BENCH_POSTGRES (default the
machine's, database ``test``); each store gets a fresh schema, dropped at
the end. ``--only sqlite`` or ``--only postgres`` runs one backend;
``--seconds N`` sets a round's length (default 2).

``--round-trips`` counts instead of timing (PostgreSQL only; repeatable under
load): 1, 8 and 32 callers all consuming for **one** user, as the HTTP row's
64 connections do, and the round trips to the server per decision (each
``HotTx.run`` that sends anything is one pipeline, one round trip; the
leader's COMMIT rides the last one), with consecutive consumes of a batch
decided together (``storage/sql/batch.py``) and each under its own
savepoint, as before it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

import tokenquota
from bench.common import LIMIT
from bench.stores import postgres_schemas, postgres_url
from tokenquota import FrozenClock

CALLERS = (1, 8, 64)


@dataclass(frozen=True)
class Round:
    rate: float  # decisions per second, all callers together
    p50: float  # seconds
    p99: float
    batch: float  # decisions per commit (1 when group commit is off)


def opened(url: str, users: int) -> tokenquota.Quota:
    quota = tokenquota.open(url, clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
    quota.set_limit("company:acme", "tokens", "month", LIMIT)
    for i in range(users):
        user = f"user:u{i}"
        quota.set_parents(user, ["company:acme"])
        for window in ("minute", "hour", "day"):
            quota.set_limit(user, "tokens", window, LIMIT)
    return quota


def one_round(quota: tokenquota.Quota, callers: int, grouped: bool, seconds: float) -> Round:
    meter: Any = quota.store.meter  # type: ignore[attr-defined]
    meter.grouped = grouped
    commits = meter.group
    batches = commits.batches
    start = threading.Barrier(callers + 1)
    stop = time.perf_counter() + 3600.0
    latencies: list[list[float]] = [[] for _ in range(callers)]
    failures: list[BaseException] = []

    def work(i: int) -> None:
        user = f"user:u{i}"
        mine = latencies[i]
        start.wait()
        try:
            while True:
                t0 = time.perf_counter()
                if t0 > stop:
                    return
                if not quota.consume(user, tokens=10).allowed:
                    raise RuntimeError("a consume was denied")
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise failures[0]
    every = sorted(x for mine in latencies for x in mine)
    decisions = len(every)
    batches = commits.batches - batches
    return Round(
        decisions / elapsed,
        every[len(every) // 2],
        every[int(len(every) * 0.99)],
        decisions / batches if grouped and batches else 1.0,
    )


@dataclass(frozen=True)
class Cell:
    callers: int
    off: Round
    on: Round


def run_backend(url: str, seconds: float) -> list[Cell]:
    quota = opened(url, max(CALLERS))
    try:
        one_round(quota, 8, True, 0.5)  # warm up: connections, prepared statements
        cells = []
        for callers in CALLERS:
            offs, ons = [], []
            for _ in range(2):
                offs.append(one_round(quota, callers, False, seconds))
                ons.append(one_round(quota, callers, True, seconds))
            cells.append(Cell(callers, best(offs), best(ons)))
        return cells
    finally:
        quota.close()


def best(rounds: list[Round]) -> Round:
    return max(rounds, key=lambda r: r.rate)


def table(results: dict[str, list[Cell]]) -> Table:
    out = Table(title="group commit: on vs off, same process, same minutes", box=box.SIMPLE_HEAD)
    columns = ("backend", "callers", "on/off", "p50 on/off", "p99 on/off", "off vs 1", "on vs 1")
    for column in (*columns, "batch"):
        out.add_column(column, justify="left" if column == "backend" else "right")
    for backend, cells in results.items():
        base = cells[0].off.rate
        for cell in cells:
            out.add_row(
                backend,
                str(cell.callers),
                f"{cell.on.rate / cell.off.rate:.2f}x",
                f"{cell.on.p50 / cell.off.p50:.2f}x",
                f"{cell.on.p99 / cell.off.p99:.2f}x",
                f"{cell.off.rate / base:.2f}x",
                f"{cell.on.rate / base:.2f}x",
                f"{cell.on.batch:.1f}",
            )
        out.add_section()
    return out


RT_CALLERS = (1, 8, 32)


def round_trips(
    url: str, callers: int, batched: bool, per_caller: int = 100
) -> tuple[float, float]:
    """Round trips per decision and decisions per commit, ``callers`` threads on one user."""
    from tokenquota.storage.sql.hot import HotTx

    quota = opened(url, 1)
    meter: Any = quota.store.meter  # type: ignore[attr-defined]
    meter.batched = batched
    sent = [0]
    plain = HotTx.run

    def counted(self: HotTx, stmts: Any) -> list[Any]:
        if self.pending or stmts:
            sent[0] += 1
        return plain(self, stmts)

    try:
        for _ in range(5):  # warm: the kept connection, prepared statements
            quota.consume("user:u0", tokens=1)
        HotTx.run = counted  # type: ignore[method-assign]
        batches = meter.group.batches
        start = threading.Barrier(callers)

        def work() -> None:
            start.wait()
            for _ in range(per_caller):
                if not quota.consume("user:u0", tokens=1).allowed:
                    raise RuntimeError("a consume was denied")

        threads = [threading.Thread(target=work) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        decisions = callers * per_caller
        return sent[0] / decisions, decisions / (meter.group.batches - batches)
    finally:
        HotTx.run = plain  # type: ignore[method-assign]
        quota.close()


def print_round_trips(notes: list[str]) -> None:
    out = Table(title="PostgreSQL: round trips per decision, one user", box=box.SIMPLE_HEAD)
    for column in ("callers", "per savepoint", "batch", "batched", "batch"):
        out.add_column(column, justify="right")
    with postgres_schemas(notes) as fresh:
        if fresh is None:
            return
        for callers in RT_CALLERS:
            before = round_trips(postgres_url(fresh()), callers, False)
            after = round_trips(postgres_url(fresh()), callers, True)
            out.add_row(
                str(callers),
                f"{before[0]:.2f}",
                f"{before[1]:.1f}",
                f"{after[0]:.2f}",
                f"{after[1]:.1f}",
            )
    console = Console()
    console.print(out)
    console.print("batch: decisions per commit in that run.", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--round-trips", action="store_true", help="count, do not time")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    notes: list[str] = []
    if args.round_trips:
        print_round_trips(notes)
        for line in notes:
            print(line)
        return
    results: dict[str, list[Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "sqlite"):
            results["sqlite"] = run_backend(f"sqlite:///{Path(tmp) / 'q.db'}", args.seconds)
        if args.only in (None, "postgres"):
            with postgres_schemas(notes) as fresh:
                if fresh is not None:
                    results["postgres"] = run_backend(postgres_url(fresh()), args.seconds)
    console = Console()
    console.print(table(results))
    for line in [
        "on/off: decisions/s with group commit on / off at the same number of callers;",
        "p50, p99 on/off: latency on / off (below 1 is faster); off vs 1, on vs 1: the rate",
        "against 1 caller with group commit off; batch: decisions per commit with it on.",
        f"Each cell: the better of 2 rounds of {args.seconds:g}s, off and on alternating.",
        f"Load average at the start: {load:.1f} on {os.cpu_count()} CPUs.",
        *notes,
    ]:
        console.print(line, highlight=False)


if __name__ == "__main__":
    main()
