"""Where one in-process consume on ``memory://`` spends its time, in CPU time.

Run with ``.venv/bin/python -m bench.profile_memory`` (``PYTHONPATH=<tree>/src``
to measure another tree). The shape is the bench's (issue 13): ``user:alice``
with tokens limits per minute, hour and day in ``company:acme`` with a tokens
limit per month, every call admitted, on a frozen clock.

It prints

- the CPU time of a consume, of its plan alone, of its store step alone (the
  same plan debited again and again) and of the ``limits`` floor (the same four
  fixed windows in memory), each the best of 7 rounds, and their ratios;
- Python calls per consume, and the share of a consume's CPU time each part
  takes under ``cProfile`` (which inflates the parts made of many small calls).

CPU time (``time.process_time``), not wall time: on a shared machine the other
processes then stretch the figures much less. Compare ratios, never absolute
times across runs. Asserts nothing.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from datetime import UTC, datetime

import tokenquota
from bench.common import LIMIT
from bench.floors import limits_floor
from tokenquota import FrozenClock
from tokenquota.domain.decisions import Mode
from tokenquota.domain.subjects import SubjectRef

ROUNDS = 7
CALLS = 4_000
PARTS = (
    ("plan (engine/planner.py)", "engine/planner.py", "plan"),
    ("  charged and limits (view.memo: the skeleton)", "storage/snapshot.py", "memo"),
    ("  a Check per limit (Layout.checks)", "engine/planner.py", "checks"),
    ("  amounts (Amounts.parse)", "domain/metrics.py", "parse"),
    ("  idempotency fingerprint", "engine/planner.py", "request_fingerprint"),
    ("store step (MemoryMeter.debit)", "storage/memory/meter.py", "debit"),
    ("  deciding, nothing refused (admitted)", "domain/decisions.py", "admitted"),
    ("  deciding, the full rule (decide)", "domain/decisions.py", "decide"),
    ("  reading a bucket per limit (Shape.used)", "storage/memory/shapes.py", "used"),
    ("  reading a placement's buckets (Shape.placed)", "storage/memory/shapes.py", "placed"),
    ("  the 63-bit bound (_check_bounds)", "storage/memory/meter.py", "_check_bounds"),
    ("  counting the event (Counting.add)", "storage/memory/state.py", "add"),
    ("  the event", "domain/ledger.py", "usage_event"),
)


def cpu(fn: Callable[[], object], calls: int = CALLS) -> float:
    """Microseconds of CPU per call: the best of ROUNDS rounds."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best * 1e6


def opened() -> tokenquota.Quota:
    quota = tokenquota.open("memory://", clock=FrozenClock(datetime(2026, 3, 10, 12, tzinfo=UTC)))
    quota.set_parents("user:alice", ["company:acme"])
    for window in ("minute", "hour", "day"):
        quota.set_limit("user:alice", "tokens", window, LIMIT)
    quota.set_limit("company:acme", "tokens", "month", LIMIT)
    return quota


def main() -> None:
    quota = opened()
    alice = SubjectRef.parse("user:alice")

    def consume() -> None:
        quota.consume("user:alice", tokens=10)

    def plan() -> object:
        return quota.planner.plan(alice, {"tokens": 10}, Mode.ENFORCE, None)

    planned = quota.planner.plan(alice, {"tokens": 10}, Mode.ENFORCE, None)

    def debit() -> None:
        quota.store.debit(planned, create_subject=True)

    for _ in range(200):
        consume()
    floor = cpu(limits_floor())
    figures = {"consume": cpu(consume), "plan": cpu(plan), "store step": cpu(debit)}
    print(f"limits floor (4 fixed windows): {floor:6.1f} µs CPU")
    for name, value in figures.items():
        print(f"{name:31s} {value:6.1f} µs CPU  {value / floor:5.1f} x the floor")

    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(CALLS):
        consume()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    calls = sum(row[1] for row in stats.values()) / CALLS
    print(f"\nPython calls per consume: {calls:.0f}")

    def cumulative(path: str, name: str) -> float:
        rows = (row[3] for key, row in stats.items() if key[0].endswith(path) and key[2] == name)
        return float(sum(rows))

    total = cumulative("engine/quota.py", "consume")
    print("share of a consume's CPU time under cProfile:")
    for label, path, name in PARTS:
        print(f"  {label:40s} {100 * cumulative(path, name) / total:5.1f} %")


if __name__ == "__main__":
    main()
