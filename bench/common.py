"""What every bench row shares: the issue's shape, the figures of a row, and the timers.

Every row has one shape (issue 13): ``user:alice`` with tokens limits per
minute, hour and day, in ``company:acme`` with a tokens limit per month,
every call admitted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import tokenquota
from tokenquota import FrozenClock

POSTGRES = os.environ.get("TOKENQUOTA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TOKENQUOTA_BENCH_REDIS", "redis://127.0.0.1:6379/0")
LIMIT = 10**15  # never reached: every call is an admitted decision
USER_WINDOWS = ("minute", "hour", "day")
COMPANY_WINDOWS = ("month",)
COUNTERS = ("user:minute", "user:hour", "user:day", "company:month")  # the floors' rows
# The body of every HTTP consume, tokenquota's and the bare endpoint's alike.
CONSUME_BODY = b'{"subject":"user:alice","amounts":{"tokens":10}}'

ROUNDS = 3  # in-process: floor and row alternate, the best round of each is kept
WARMUP = 20  # untimed calls first: connections, prepared statements, the script cache
# A round stops early after this long (a busy machine or a contended server), so
# that `make bench` stays within minutes; such figures are starred.
ROUND_SECONDS = 3.0


@dataclass(frozen=True)
class Figures:
    """One measurement: calls per second and per-call latency."""

    rate: float  # calls per second
    p50: float  # microseconds
    p99: float
    calls: int  # timed calls behind these figures
    cut: bool = False  # the round ran out of time before its calls

    @classmethod
    def of(cls, latencies: Sequence[float], elapsed: float, cut: bool = False) -> Figures:
        """From per-call latencies in seconds and the wall time they took."""
        if not latencies:
            return cls(0.0, 0.0, 0.0, 0, cut)
        ordered = sorted(latencies)
        return cls(
            len(ordered) / elapsed,
            percentile(ordered, 0.50) * 1e6,
            percentile(ordered, 0.99) * 1e6,
            len(ordered),
            cut,
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted values (no interpolation: a real call's time)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def one_round(fn: Callable[[], object], calls: int) -> Figures:
    """``calls`` timed calls, or fewer when ROUND_SECONDS runs out."""
    latencies: list[float] = []
    deadline = time.perf_counter() + ROUND_SECONDS
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        if t1 > deadline:
            break
    return Figures.of(latencies, sum(latencies), cut=len(latencies) < calls)


def warm(fn: Callable[[], object]) -> None:
    deadline = time.perf_counter() + ROUND_SECONDS
    for _ in range(WARMUP):
        fn()
        if time.perf_counter() > deadline:
            break


def alternated(
    floor: Callable[[], object], row: Callable[[], object], calls: int
) -> tuple[Figures, Figures]:
    """The floor's and the row's figures, rounds alternating: the best round of each.

    Alternating puts both under the same slice of a loaded machine's weather,
    so their ratio is fairer than two measurements a minute apart.
    """
    warm(floor)
    warm(row)
    best_floor: Figures | None = None
    best_row: Figures | None = None
    for _ in range(ROUNDS):
        f = one_round(floor, calls)
        r = one_round(row, calls)
        best_floor = f if best_floor is None or f.rate > best_floor.rate else best_floor
        best_row = r if best_row is None or r.rate > best_row.rate else best_row
    assert best_floor is not None
    assert best_row is not None
    return best_floor, best_row


def timed(fn: Callable[[], object], calls: int) -> Figures:
    """The best of ROUNDS rounds of one callable."""
    warm(fn)
    return max((one_round(fn, calls) for _ in range(ROUNDS)), key=lambda f: f.rate)


def clock() -> FrozenClock:
    """A clock that never moves, so every call lands in the same windows."""
    return FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC))


@contextmanager
def opened(db: str, redis: str | None = None) -> Iterator[tokenquota.Quota]:
    """A store set up in the shape above, through the public API."""
    quota = tokenquota.open(db, redis=redis, clock=clock())
    try:
        quota.set_parents("user:alice", ["company:acme"])
        for window in USER_WINDOWS:
            quota.set_limit("user:alice", "tokens", window, LIMIT)
        for window in COMPANY_WINDOWS:
            quota.set_limit("company:acme", "tokens", window, LIMIT)
        yield quota
    finally:
        quota.close()


def consumer(quota: tokenquota.Quota) -> Callable[[], None]:
    """One admitted consume of the shape, as a callable the timers can run."""

    def once() -> None:
        if not quota.consume("user:alice", tokens=10).allowed:
            raise RuntimeError("a consume was denied")

    return once


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
