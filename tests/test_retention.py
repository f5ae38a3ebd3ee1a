"""Retention (issue 14 part 4) on every backend: pruning removes only what no answer reads.

After a pass, usage, history, idempotent replays within the horizon and a
rebuild answer exactly as before it, while old buckets, old answers and
ended holds are gone, batch by batch, each batch within its bound.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QuotaFactory
from tokenquota import Quota
from tokenquota.domain.clock import EPOCH, FrozenClock
from tokenquota.domain.errors import NotFound
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Metric
from tokenquota.domain.retention import CARRY_TAG, MIN_IDEMPOTENCY, Horizons, archive_cutoff
from tokenquota.domain.views import Reserved
from tokenquota.domain.windows import Window
from tokenquota.engine.retention import Retention
from tokenquota.storage.redis.prune import counter_window
from tokenquota.storage.redis.store import RedisStore
from tokenquota.wire.ledger import decode_event

RETENTION = timedelta(days=30)
LIMITS = [
    {"metric": "tokens", "window": w, "limit": 1_000_000}
    for w in ("minute", "hour", "day", "month", "rolling:1h", "rolling:30d", "total")
]


def settle(quota: Quota) -> None:
    """Redis: the ledger reaches SQL (where answers are aged from) as the mover would."""
    if isinstance(quota.store, RedisStore):
        quota.store.flush()


def snapshot(quota: Quota) -> dict[str, Any]:
    """Every answer pruning must not change."""
    now = quota.clock.now()
    usage = quota.usage("user:ann", include_ancestors=True)
    return {
        "usage": usage,
        "history": quota.history(
            "company:acme", start=now - RETENTION, end=now, granularity="hour"
        ),
        "all_history": quota.history("user:ann", granularity="day"),
        "events": quota.events(subject="company:acme", offset=0, limit=1000).total,
    }


def lines_as_events(lines: list[dict[str, Any]]) -> list[Event]:
    return [decode_event(line) for line in lines]


def rid(reserved: Reserved) -> str:
    assert reserved.reservation is not None
    return reserved.reservation.id


def fill(
    quota: Quota, clock: FrozenClock, back: timedelta = timedelta(days=20)
) -> list[tuple[str, dict[str, int]]]:
    """Usage, answers and holds spread over 45 days; returns the recent keys and amounts."""
    quota.put_subject("user:ann", parents=["company:acme"])
    quota.set_limits("company:acme", LIMITS)
    quota.set_limits("user:ann", LIMITS)
    recent: list[tuple[str, dict[str, int]]] = []
    for day in range(45):
        for n in range(3):
            key = f"k{day}-{n}"
            amounts = {"tokens": 10 + day + n}
            assert quota.consume("user:ann", amounts, idempotency_key=key).allowed
            if day >= 43:
                recent.append((key, amounts))
            clock.advance(timedelta(minutes=7))
        reservation = quota.reserve("user:ann", {"tokens": 5}, ttl=60)
        if day % 2:
            quota.commit(rid(reservation), {"tokens": 4})
        elif day % 3:
            quota.release(rid(reservation))  # else: left to expire
        lease = quota.acquire("user:ann", ttl=30).lease
        assert lease is not None
        if day % 2:
            quota.release_lease(lease.id)
        clock.advance(timedelta(days=1) - timedelta(minutes=21))
    # one back-dated record well inside the horizon: its day bucket must stay
    quota.consume("user:ann", {"tokens": 7}, mode="record", timestamp=clock.now() - back)
    settle(quota)
    return recent


def test_pruning_changes_no_answer_and_removes_what_none_reads(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota(retention=RETENTION)
    recent = fill(quota, clock)
    old_hold = quota.reserve("user:ann", {"tokens": 1}, ttl=1)
    clock.advance(timedelta(seconds=2))
    before = snapshot(quota)
    backdated = clock.now() - timedelta(days=29)
    check_before = quota.check("user:ann", {"tokens": 1}, timestamp=backdated)

    retention = Retention(
        quota, Horizons(backdate=RETENTION, idempotency=2 * MIN_IDEMPOTENCY), batch=7
    )
    batches = list(retention.batches())
    removed = Counter[str]()
    for kind, count in batches:
        assert 0 <= count <= 7, (kind, count)  # every batch within its bound
        removed[kind] += count
    assert removed["counters"] > 50  # minute, hour, day and rolling buckets of weeks ago
    assert removed["idempotency"] >= 3 * 40  # answers older than 48 h (and the grace)
    assert removed["reservations"] >= 35  # ended more than 7 days ago
    assert removed["leases"] >= 35
    assert len(batches) > 4

    assert snapshot(quota) == before
    assert quota.check("user:ann", {"tokens": 1}, timestamp=backdated) == check_before
    # The hold that just expired is kept (within the holds horizon): its state still reads.
    assert quota.get_reservation(rid(old_hold)).id == rid(old_hold)

    # Replays within the horizon answer the first call and charge nothing.
    for key, amounts in recent:
        replay = quota.consume("user:ann", amounts, idempotency_key=key)
        assert replay.replayed
        assert replay.allowed
    assert snapshot(quota) == before

    # A second pass finds nothing left to remove.
    assert sum(n for _, n in retention.batches()) == 0

    # Rebuild recomputes from the ledger (kept whole) and agrees.
    quota.rebuild()
    assert snapshot(quota) == before
    assert quota.check("user:ann", {"tokens": 1}, timestamp=backdated) == check_before


def test_ended_holds_go_after_their_horizon(make_quota: QuotaFactory, clock: FrozenClock) -> None:
    quota = make_quota(retention=RETENTION)
    held = quota.reserve("user:bo", {"tokens": 5}, ttl=60)
    released = quota.reserve("user:bo", {"tokens": 5}, ttl=60)
    quota.release(rid(released))
    lease = quota.acquire("user:bo", ttl=60).lease
    assert lease is not None
    settle(quota)
    h = Horizons(backdate=RETENTION, holds=timedelta(hours=1), grace=timedelta(0))
    retention = Retention(quota, h)
    clock.advance(timedelta(minutes=30))  # ended within the horizon: kept
    assert retention.run().removed["reservations"] == 0
    assert quota.get_reservation(rid(held)).state.value == "held"
    clock.advance(timedelta(hours=1))
    report = retention.run()
    assert report.removed["reservations"] == 2
    assert report.removed["leases"] == 1
    assert report.complete
    for gone in (rid(held), rid(released)):
        with pytest.raises(NotFound):
            quota.get_reservation(gone)
    with pytest.raises(NotFound):
        quota.get_lease(lease.id)


def test_a_run_stops_at_its_bound_and_the_next_goes_on(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota(retention=RETENTION)
    for n in range(12):
        quota.consume("user:cy", {"tokens": 1}, idempotency_key=f"k{n}")
    settle(quota)
    clock.advance(timedelta(days=3))
    retention = Retention(quota, Horizons(backdate=RETENTION, idempotency=MIN_IDEMPOTENCY), batch=5)
    first = retention.run(kinds=["idempotency"], max_batches=1)
    assert not first.complete
    assert first.removed["idempotency"] <= 5
    rest = retention.run(kinds=["idempotency"])
    assert rest.complete
    assert first.removed["idempotency"] + rest.removed["idempotency"] == 12


def test_horizons_refuse_idempotency_under_24_hours() -> None:
    with pytest.raises(Exception, match="24 hours"):
        Horizons(backdate=RETENTION, idempotency=timedelta(hours=23))


@pytest.mark.parametrize(
    ("key", "window"),
    [
        ("tq:{user:ann}:c:user:ann:tokens:day", "day"),
        ("tq:{user:ann}:c:user:ann:tokens:rolling:30d", "rolling:30d"),
        ("tq:{gpu:a}:c:gpu:a~user:rolling:tokens:rolling:1h", "rolling:1h"),
    ],
)
def test_a_redis_counter_key_names_its_window(key: str, window: str) -> None:
    assert counter_window(key) == window
    Window.parse(window)


def test_archiving_the_ledger_keeps_every_answer_and_rebuild_agrees(
    make_quota: QuotaFactory, clock: FrozenClock, tmp_path: Path
) -> None:
    backdate = timedelta(days=10)
    quota = make_quota(retention=backdate)
    quota.grant("user:ann", 1_000)
    quota.consume("user:ann", {"credits": 3, "tokens": 1})  # moved credits: stays
    fill(quota, clock, back=timedelta(days=5))
    quota.consume("user:ann", {"credits": 2})
    settle(quota)
    everything = quota.events(subject=None, offset=0, limit=1000).items
    now = clock.now()
    usage_before = quota.usage("user:ann", include_ancestors=True)
    recent_before = quota.history("company:acme", start=now - backdate, end=now, granularity="hour")
    backdated = now - timedelta(days=9)
    check_before = quota.check("user:ann", {"tokens": 1}, timestamp=backdated)
    balance_before = quota.balance("user:ann")

    h = Horizons(backdate=backdate, idempotency=2 * MIN_IDEMPOTENCY)
    retention = Retention(quota, h, batch=16)
    Retention(quota, h).run()  # what the service does first: prune
    sink, report = retention.archive(timedelta(days=1), tmp_path / "archive")
    assert report.complete
    moved = report.removed["ledger"]
    assert moved > 50
    # The cutoff was held back to the oldest month bucket a back-dated consume may read.
    cutoff = archive_cutoff(now, timedelta(days=1), retention.cutoffs())
    assert cutoff <= now - backdate
    lines = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert len(lines) == moved
    archived_ids = {line["id"] for line in lines}
    assert all(e.timestamp < cutoff for e in everything if e.id in archived_ids)
    assert not any(e.kind == "grant" or e.amounts[Metric.CREDITS] for e in lines_as_events(lines))

    left = quota.events(subject=None, offset=0, limit=1000).items
    carries = [e for e in left if CARRY_TAG in e.tags]
    assert carries  # one per (subject, charged, resource), at the epoch
    assert all(e.timestamp == EPOCH for e in carries)
    assert sum(int(e.tags[CARRY_TAG]) for e in carries) == moved
    assert len(left) == len(everything) - moved + len(carries)
    for metric in (Metric.TOKENS, Metric.REQUESTS, Metric.CREDITS):
        assert sum(e.amounts[metric] for e in left if e.is_usage) == sum(
            e.amounts[metric] for e in everything if e.is_usage
        )

    def same() -> None:
        assert quota.usage("user:ann", include_ancestors=True) == usage_before
        assert (
            quota.history("company:acme", start=now - backdate, end=now, granularity="hour")
            == recent_before
        )
        assert quota.check("user:ann", {"tokens": 1}, timestamp=backdated) == check_before
        assert quota.balance("user:ann") == balance_before

    same()
    quota.rebuild()  # from the ledger that is left, carries included
    same()
    # A second pass finds nothing more, and a prune after the rebuild leaves the answers alone.
    assert retention.archive(timedelta(days=1), tmp_path / "archive")[1].total == 0
    Retention(quota, h).run()
    same()


def test_pruning_beside_racing_consumes_loses_and_overspends_nothing(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota(retention=RETENTION)
    fill(quota, clock)  # a backlog to prune while the consumes race
    quota.set_limits("company:acme", [{"metric": "tokens", "window": "day", "limit": 600}])
    used_before = {str(s.window): s.used or 0 for s in quota.usage("company:acme").limits}
    retention = Retention(
        quota,
        Horizons(backdate=RETENTION, idempotency=MIN_IDEMPOTENCY, grace=timedelta(0)),
        batch=3,
    )
    stop = threading.Event()
    passes = 0

    def prune() -> None:
        nonlocal passes
        while not stop.is_set():
            retention.run()
            passes += 1

    def consume(n: int) -> int:
        return sum(
            quota.consume("user:ann", {"tokens": 10}, idempotency_key=f"race-{n}-{i}").allowed
            for i in range(25)
        )

    pruner = threading.Thread(target=prune)
    pruner.start()
    with ThreadPoolExecutor(4) as pool:
        admitted = sum(pool.map(consume, range(4)))
    stop.set()
    pruner.join()
    assert passes >= 1
    settle(quota)
    after = {str(s.window): s.used or 0 for s in quota.usage("company:acme").limits}
    assert after["day"] == used_before["day"] + 10 * admitted <= 600  # nothing lost or over
    assert after["total"] == used_before["total"] + 10 * admitted
    quota.rebuild()
    assert {str(s.window): s.used or 0 for s in quota.usage("company:acme").limits} == after
