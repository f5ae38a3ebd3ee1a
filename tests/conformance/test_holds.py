"""Reservations (hold, commit, release) and concurrency leases, on every backend."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tokenquota import Conflict, FrozenClock, Quota
from tokenquota.domain.decisions import QuotaExceeded
from tokenquota.domain.holds import ReservationClosed


def tokens(quota: Quota, subject: str = "user:alice") -> tuple[object, object, object]:
    (status,) = [s for s in quota.usage(subject).limits if s.metric == "tokens"]
    return status.used, status.reserved, status.remaining


@pytest.fixture
def limited(quota: Quota) -> Quota:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_parents("user:bob", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", 1_000)
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    return quota


def test_a_hold_counts_for_every_other_caller(limited: Quota) -> None:
    held = limited.reserve("user:alice", tokens=800, ttl=60)
    assert held.allowed
    assert tokens(limited) == (0, 800, 200)
    assert tokens(limited, "company:acme") == (0, 800, 200)
    assert not limited.consume("user:bob", tokens=300).allowed
    assert not limited.reserve("user:bob", tokens=300).allowed
    assert limited.consume("user:bob", tokens=200).allowed


def test_commit_with_less_frees_the_difference(limited: Quota) -> None:
    held = limited.reserve("user:alice", tokens=800)
    assert held.reservation is not None
    decision = limited.commit(held.reservation.id, tokens=500)
    assert decision.allowed
    assert decision.event_id is not None
    assert tokens(limited) == (500, 0, 500)
    assert limited.consume("user:bob", tokens=500).allowed


def test_commit_with_more_records_the_excess(limited: Quota) -> None:
    held = limited.reserve("user:alice", tokens=800)
    assert held.reservation is not None
    assert limited.commit(held.reservation.id, tokens=1_200).allowed
    assert tokens(limited) == (1_200, 0, 0)
    assert not limited.consume("user:bob", tokens=1).allowed


def test_a_second_commit_returns_the_first_and_charges_once(limited: Quota) -> None:
    held = limited.reserve("user:alice", tokens=300)
    assert held.reservation is not None
    first = limited.commit(held.reservation.id, tokens=250)
    again = limited.commit(held.reservation.id, tokens=999)
    assert again.replayed
    assert again.event_id == first.event_id
    assert limited.events(subject="user:alice").total == 1
    assert tokens(limited) == (250, 0, 750)


def test_commit_without_amounts_records_the_estimate(limited: Quota) -> None:
    held = limited.reserve("user:alice", tokens=300)
    assert held.reservation is not None
    limited.commit(held.reservation.id)
    assert tokens(limited) == (300, 0, 700)


def test_an_expired_hold_frees_itself_and_cannot_be_committed(
    limited: Quota, clock: FrozenClock
) -> None:
    held = limited.reserve("user:alice", tokens=900, ttl=30)
    assert held.reservation is not None
    clock.advance(seconds=29)
    assert tokens(limited) == (0, 900, 100)
    clock.advance(seconds=1)
    assert tokens(limited) == (0, 0, 1_000)
    with pytest.raises(ReservationClosed) as caught:
        limited.commit(held.reservation.id, tokens=100)
    assert caught.value.status == 409
    assert limited.events().total == 0


def test_release_frees_and_release_after_commit_is_a_no_op(limited: Quota) -> None:
    first = limited.reserve("user:alice", tokens=600)
    second = limited.reserve("user:alice", tokens=300)
    assert first.reservation is not None
    assert second.reservation is not None
    assert limited.release(first.reservation.id) is True
    assert limited.release(first.reservation.id) is False
    assert tokens(limited) == (0, 300, 700)
    with pytest.raises(Conflict):
        limited.commit(first.reservation.id, tokens=1)
    limited.commit(second.reservation.id, tokens=300)
    assert limited.release(second.reservation.id) is False
    assert tokens(limited) == (300, 0, 700)


def test_a_denied_hold_waits_for_holds_to_lapse(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "total", 1_000)
    quota.reserve("user:alice", tokens=800, ttl=45)
    denied = quota.reserve("user:alice", tokens=300)
    assert not denied.allowed
    assert denied.reservation is None
    assert denied.decision.retry_after == 45  # when the hold lapses
    assert [(b.metric, b.reserved) for b in denied.decision.blocked_by] == [("tokens", 800)]


def test_the_context_manager_commits_releases_or_records_the_estimate(limited: Quota) -> None:
    with limited.reservation("user:alice", tokens=400) as hold:
        assert tokens(limited) == (0, 400, 600)
        hold.commit(tokens=150)
    assert tokens(limited) == (150, 0, 850)

    with pytest.raises(RuntimeError), limited.reservation("user:alice", tokens=400):
        raise RuntimeError("the model call failed")
    assert tokens(limited) == (150, 0, 850)

    with limited.reservation("user:alice", tokens=100):
        pass
    assert tokens(limited) == (250, 0, 750)

    with pytest.raises(QuotaExceeded) as caught, limited.reservation("user:alice", tokens=5_000):
        pass
    assert caught.value.blocked_by


def test_leases_cap_concurrency_across_the_hierarchy(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_parents("user:bob", ["company:acme"])
    quota.set_limit("company:acme", "concurrent_requests", None, 2)
    a = quota.acquire("user:alice")
    b = quota.acquire("user:bob")
    assert a.allowed
    assert b.allowed
    third = quota.acquire("user:alice")
    assert not third.allowed
    assert third.decision.blocked_by[0].metric == "concurrent_requests"
    (status,) = quota.usage("company:acme").limits
    assert (status.used, status.remaining) == (2, 0)
    assert a.lease is not None
    assert quota.release_lease(a.lease.id) is True
    assert quota.release_lease(a.lease.id) is False
    assert quota.acquire("user:alice").allowed


def test_expired_leases_free_their_slots_and_heartbeats_extend(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_limit("user:alice", "concurrent_requests", None, 1)
    first = quota.acquire("user:alice", ttl=10)
    assert first.lease is not None
    denied = quota.acquire("user:alice")
    assert denied.decision.retry_after == 10
    clock.advance(seconds=8)
    quota.heartbeat(first.lease.id, ttl=10)
    clock.advance(seconds=8)
    assert not quota.acquire("user:alice").allowed
    clock.advance(seconds=2)
    assert quota.acquire("user:alice").allowed  # the crashed holder's slot is back
    with pytest.raises(ReservationClosed):
        quota.heartbeat(first.lease.id)


def test_fifty_threads_never_hold_more_than_five_leases(quota: Quota) -> None:
    quota.set_limit("deployment:llama", "concurrent_requests", None, 5)
    barrier = threading.Barrier(50)

    def grab(_: int) -> str | None:
        barrier.wait()
        acquired = quota.acquire("deployment:llama", ttl=60)
        return acquired.lease.id if acquired.lease else None

    with ThreadPoolExecutor(50) as pool:
        held = [lease for lease in pool.map(grab, range(50)) if lease]
    assert len(held) == 5  # the peak is exactly the limit, never 6
    (status,) = quota.usage("deployment:llama").limits
    assert status.used == 5

    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def churn(_: int) -> None:
        nonlocal in_flight, peak
        for _ in range(20):
            acquired = quota.acquire("deployment:llama", ttl=60)
            if acquired.lease is None:
                continue
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            with lock:
                in_flight -= 1
            quota.release_lease(acquired.lease.id)

    for lease_id in held:
        quota.release_lease(lease_id)
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(churn, range(50)))
    assert 1 <= peak <= 5
    assert quota.usage("deployment:llama").limits[0].used == 0


def test_the_lease_context_manager_releases(quota: Quota) -> None:
    quota.set_limit("user:alice", "concurrent_requests", None, 1)
    with quota.lease("user:alice"), pytest.raises(QuotaExceeded), quota.lease("user:alice"):
        pass
    assert quota.acquire("user:alice").allowed
