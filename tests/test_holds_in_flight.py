"""Holds in flight (``/metrics``' ``tokenquota_holds_in_flight``), counted by every store.

After known reserves, commits, releases, lease releases, heartbeats and
expiries, each backend counts exactly the live ones: memory, SQLite,
PostgreSQL, Redis and a Redis Cluster (whose index of live holds is kept per
ledger shard by the same atomic steps that take and end the holds, and is
trimmed by pruning). The cache in front of the count reads the store once per
few seconds however many scrapes ask.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tests.conftest import QuotaFactory
from tokenquota import Quota
from tokenquota.domain.clock import FrozenClock
from tokenquota.domain.retention import Horizons
from tokenquota.engine.inflight import HoldsInFlight, counter_for
from tokenquota.engine.retention import Retention
from tokenquota.storage.inflight import InFlight
from tokenquota.storage.redis.holds import live_key
from tokenquota.storage.redis.store import RedisStore


def count(quota: Quota) -> InFlight:
    return counter_for(quota.store).in_flight(quota.clock.now())


def reserve(quota: Quota, ttl: float) -> str:
    held = quota.reserve("user:ann", {"tokens": 5}, ttl=ttl).reservation
    assert held is not None
    return held.id


def acquire(quota: Quota, ttl: float) -> str:
    lease = quota.acquire("user:ann", ttl=ttl).lease
    assert lease is not None
    return lease.id


def indexed(quota: Quota) -> int:
    """Entries in a Redis store's indexes of live holds, lapsed ones included."""
    store = quota.store
    assert isinstance(store, RedisStore)
    return sum(
        int(store.redis.zcard(live_key(store.layout, shard, kind)))
        for shard in range(store.layout.shards)
        for kind in ("r", "l")
    )


def test_every_store_counts_exactly_the_live_holds(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota()
    quota.set_limit("user:ann", "concurrent_requests", None, 10)
    assert count(quota) == InFlight(0, 0)
    committed, lapsing, released, kept = (reserve(quota, t) for t in (60, 10, 60, 60))
    freed, beating, lapsing_lease, kept_lease = (acquire(quota, t) for t in (60, 10, 10, 60))
    assert count(quota) == InFlight(reservations=4, leases=4)
    quota.commit(committed, tokens=3)
    assert quota.release(released)
    assert quota.release_lease(freed)
    quota.heartbeat(beating, ttl=100)  # now lives 100 s instead of 10
    assert count(quota) == InFlight(reservations=2, leases=3)
    quota.release(released)  # a second release changes nothing
    clock.advance(timedelta(seconds=30))  # the 10 s holds lapse, unsettled
    assert count(quota) == InFlight(reservations=1, leases=2)
    # Still stored, only no longer live; the live ones are those kept.
    assert not quota.get_reservation(lapsing).live(clock.now())
    assert not quota.get_lease(lapsing_lease).live(clock.now())
    assert quota.get_reservation(kept).live(clock.now())
    assert quota.get_lease(kept_lease).live(clock.now())
    clock.advance(timedelta(seconds=40))  # 70 s: only the heartbeat's lease is left
    assert count(quota) == InFlight(reservations=0, leases=1)
    assert quota.release_lease(beating)
    assert count(quota) == InFlight(0, 0)


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_pruning_trims_the_redis_index_and_keeps_the_count(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota()
    quota.set_limit("user:ann", "concurrent_requests", None, 10)
    ended = [reserve(quota, 10) for _ in range(3)]
    acquire(quota, 10)
    live = reserve(quota, 3_600)
    live_lease = acquire(quota, 3_600)
    quota.release(ended[0])  # leaves the index as it ends
    assert indexed(quota) == 5
    clock.advance(timedelta(minutes=30))
    assert count(quota) == InFlight(1, 1)
    horizons = Horizons(backdate=quota.retention, holds=timedelta(minutes=10), grace=timedelta(0))
    Retention(quota, horizons, batch=1).run()
    assert indexed(quota) == 2  # the lapsed entries went, a batch of one at a time
    assert count(quota) == InFlight(1, 1)
    quota.commit(live)
    quota.release_lease(live_lease)
    assert indexed(quota) == 0
    assert count(quota) == InFlight(0, 0)


@pytest.mark.parametrize("backend", ["memory"])
def test_the_cache_reads_the_store_once_per_period(quota: Quota) -> None:
    ticks = [100.0]
    cached = HoldsInFlight(quota, seconds=5.0, monotonic=lambda: ticks[0])
    assert cached.read() == InFlight(0, 0)
    quota.reserve("user:ann", {"tokens": 1}, ttl=60)
    start = threading.Barrier(8)

    def scrape() -> None:
        start.wait()
        assert cached.read() == InFlight(0, 0)  # within the period: the number kept

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cached.reads == 1
    ticks[0] += 5.0
    assert cached.read() == InFlight(1, 0)
    assert cached.read() == InFlight(1, 0)
    assert cached.reads == 2
