"""The memory meter's remembered bucket dicts count what a replay of the ledger counts.

``State.shape`` keeps, per (series, metrics), the very dicts of ``counters``
an event adds to. A rebuild empties ``counters`` and a new limit's window
grows ``tracked``; after either, the next consumes must land in the live
dicts: the usage counted as they happen equals the usage a rebuild
recounts from the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime

import tokenquota
from tokenquota import FrozenClock


def test_live_counters_match_a_rebuild_across_rebuilds_and_new_windows() -> None:
    clock = FrozenClock(datetime(2026, 3, 28, 22, 50, tzinfo=UTC))
    quota = tokenquota.open("memory://", clock=clock)
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "hour", 10**9)
    quota.set_limit("company:acme", "tokens", "month", 10**9)

    def consume(times: int) -> None:
        for i in range(times):
            quota.consume("user:alice", tokens=10 + i, requests=1)
            quota.consume("user:bob", tokens=7)  # another shape, no ancestors
            clock.advance(minutes=13)

    def counted_live_equals_replayed() -> None:
        live = [quota.usage(s, include_ancestors=True) for s in ("user:alice", "user:bob")]
        quota.rebuild()
        assert [quota.usage(s, include_ancestors=True) for s in ("user:alice", "user:bob")] == live

    consume(5)
    counted_live_equals_replayed()
    consume(5)  # into the dicts the rebuild made, not the ones it dropped
    counted_live_equals_replayed()
    quota.set_limit("user:alice", "tokens", "rolling:1h", 10**9)  # tracked grows
    quota.set_limit("user:bob", "requests", "day", 10**9)
    consume(5)
    counted_live_equals_replayed()


def test_a_decision_reads_the_dicts_a_rebuild_or_a_new_window_left() -> None:
    """The meter keeps the bucket dicts a plan's checks read (memory/shapes.py,
    ``Shape``); after a rebuild (new dicts) or a new tracked window (a backfill), a decision reads
    the live ones: what it reports used is what usage reads afterwards."""
    clock = FrozenClock(datetime(2026, 3, 28, 22, 50, tzinfo=UTC))
    quota = tokenquota.open("memory://", clock=clock)
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "day", 10**9)
    quota.set_limit("company:acme", "tokens", "month", 10**9)

    def decided_equals_usage() -> None:
        decision = quota.consume("user:alice", tokens=5)
        usage = quota.usage("user:alice", include_ancestors=True)
        assert {(s.subject, s.window): s.used for s in decision.limits} == {
            (s.subject, s.window): s.used for s in usage.limits
        }

    for _ in range(3):
        decided_equals_usage()
    quota.rebuild()
    quota.consume("user:alice", tokens=7)
    decided_equals_usage()
    quota.set_limit("user:alice", "tokens", "week", 10**9)  # tracked grows: a backfill
    decided_equals_usage()
    quota.rebuild()
    decided_equals_usage()
