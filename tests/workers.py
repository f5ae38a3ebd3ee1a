"""Work run in other processes by the concurrency tests (importable for spawn)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import tokenquota


def drain(quota: tokenquota.Quota, subject: str, barrier: threading.Barrier | None = None) -> int:
    """Spend 10 tokens at a time, then 1, until refused; returns what was admitted."""
    if barrier is not None:
        barrier.wait()
    admitted = 0
    for _ in range(10_000):  # a bound: a broken store must not hang the suite
        for size in (10, 1):
            if quota.consume(subject, tokens=size).allowed:
                admitted += size
                break
        else:
            return admitted
    raise AssertionError("never refused")


def drain_in_process(url: str, subject: str, threads: int) -> int:
    quota = tokenquota.open(url)
    try:
        barrier = threading.Barrier(threads)
        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(lambda _: drain(quota, subject, barrier), range(threads)))
    finally:
        quota.close()


def retry_in_process(url: str, subject: str, key: str) -> tuple[int | None, bool]:
    quota = tokenquota.open(url)
    try:
        decision = quota.consume(subject, tokens=100, idempotency_key=key)
        return decision.event_id, decision.replayed
    finally:
        quota.close()


def drain_each_in_process(url: str, subjects: list[str], at: str) -> int:
    """One thread per subject on one store, its clock frozen at ``at`` like the test's."""
    quota = tokenquota.open(url, clock=tokenquota.FrozenClock(datetime.fromisoformat(at)))
    try:
        barrier = threading.Barrier(len(subjects))
        with ThreadPoolExecutor(len(subjects)) as pool:
            return sum(pool.map(lambda s: drain(quota, s, barrier), subjects))
    finally:
        quota.close()
