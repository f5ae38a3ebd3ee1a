"""Races: concurrent callers never overspend, and one key charges once."""

from __future__ import annotations

import multiprocessing
import random
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

import tokenquota
from tests.conftest import START, store_url
from tests.workers import drain, drain_each_in_process, drain_in_process, retry_in_process
from tokenquota import FrozenClock, Quota

LIMIT = 10_000
LAST = 1_000


def prepare(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_parents("user:bob", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", LIMIT)
    quota.consume("user:alice", tokens=LIMIT - LAST)


def assert_spent_exactly(quota: Quota) -> None:
    (status,) = quota.usage("company:acme").limits
    assert status.used == LIMIT
    ledger = sum(
        e.amounts.to_numbers()["tokens"] for e in quota.iter_events(subject="company:acme")
    )
    assert ledger == LIMIT


def test_sixteen_threads_race_for_the_last_tokens(quota: Quota) -> None:
    prepare(quota)
    barrier = threading.Barrier(16)
    subjects = ["user:alice", "user:bob"] * 8
    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(lambda s: drain(quota, s, barrier), subjects))
    assert admitted == LAST
    assert_spent_exactly(quota)


@pytest.mark.slow
def test_four_processes_race_on_one_sqlite_file(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    with tokenquota.open(url) as quota:
        prepare(quota)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_in_process, url, subject, 4)
            for subject in ("user:alice", "user:bob", "user:alice", "user:bob")
        ]
        admitted = sum(f.result(timeout=120) for f in futures)
    assert admitted == LAST
    with tokenquota.open(url) as quota:
        assert_spent_exactly(quota)


def test_twenty_concurrent_retries_of_one_key_charge_once(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", LIMIT)
    barrier = threading.Barrier(20)

    def retry(_: int) -> tokenquota.Decision:
        barrier.wait()
        return quota.consume("user:alice", tokens=100, idempotency_key="req-1")

    with ThreadPoolExecutor(20) as pool:
        decisions = list(pool.map(retry, range(20)))
    assert len({d.event_id for d in decisions}) == 1
    assert sum(not d.replayed for d in decisions) == 1
    assert quota.events(subject="user:alice").total == 1
    assert quota.usage("user:alice").limits[0].used == 100


@pytest.mark.slow
def test_retries_from_several_processes_charge_once(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)
    with tokenquota.open(url) as quota:
        quota.set_limit("user:alice", "tokens", "day", LIMIT)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        results = list(pool.map(retry_in_process, [url] * 8, ["user:alice"] * 8, ["k"] * 8))
    assert len({event_id for event_id, _ in results}) == 1
    assert sum(not replayed for _, replayed in results) == 1
    with tokenquota.open(url) as quota:
        assert quota.usage("user:alice").limits[0].used == 100


# Hot rows (issue 6): on PostgreSQL writes lock the counter series they touch,
# not the whole store. These races would catch a series left unlocked (an
# overspent company) and locks taken in inconsistent orders (PostgreSQL
# reports the deadlock as an error, which fails the test).

COMPANY_LIMIT = 2_000
USER_LIMIT = 300  # 16 users could spend 4,800: the company's limit binds, and both counters move
USERS = [f"user:u{i:02d}" for i in range(16)]


def prepare_company(quota: Quota) -> None:
    quota.set_limit("company:acme", "tokens", "day", COMPANY_LIMIT)
    for user in USERS:
        quota.set_parents(user, ["company:acme"])
        quota.set_limit(user, "tokens", "day", USER_LIMIT)


def assert_company_spent_exactly(quota: Quota) -> None:
    (company,) = quota.usage("company:acme").limits
    assert company.used == COMPANY_LIMIT
    per_user = [int(quota.usage(user).limits[0].used or 0) for user in USERS]
    assert all(used <= USER_LIMIT for used in per_user)
    assert sum(per_user) == COMPANY_LIMIT
    ledger = sum(
        e.amounts.to_numbers()["tokens"] for e in quota.iter_events(subject="company:acme")
    )
    assert ledger == COMPANY_LIMIT


def test_sixteen_users_of_one_company_race_for_its_limit(quota: Quota) -> None:
    # Every thread a different user: no two share a user lock, all share the company's.
    prepare_company(quota)
    barrier = threading.Barrier(len(USERS))
    with ThreadPoolExecutor(len(USERS)) as pool:
        admitted = sum(pool.map(lambda s: drain(quota, s, barrier), USERS))
    assert admitted == COMPANY_LIMIT
    assert_company_spent_exactly(quota)


@pytest.mark.slow
def test_users_in_four_processes_race_for_their_company_on_postgres(postgres_url: str) -> None:
    with tokenquota.open(postgres_url, clock=FrozenClock(START)) as quota:
        prepare_company(quota)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_each_in_process, postgres_url, USERS[i::4], START.isoformat())
            for i in range(4)
        ]
        admitted = sum(f.result(timeout=120) for f in futures)
    assert admitted == COMPANY_LIMIT
    with tokenquota.open(postgres_url, clock=FrozenClock(START)) as quota:
        assert_company_spent_exactly(quota)


LLAMA = "deployment:llama"
# user:a is charged (a, group, company), user:b (b, company, group): opposite orders.
# The others overlap them: one parent each, or the group and company spending themselves.
TANGLE = {
    "user:a": ["group:g", "company:c"],
    "user:b": ["company:c", "group:g"],
    "user:e": ["group:g"],
    "user:f": ["company:c"],
}
TANGLE_LIMITS = {"company:c": 2_400, "group:g": 2_000, "user:a": 900, "user:b": 900}


def prepare_tangle(quota: Quota) -> None:
    for user, parents in TANGLE.items():
        quota.set_parents(user, parents)
    for subject, limit in TANGLE_LIMITS.items():
        quota.set_limit(subject, "tokens", "day", limit)
    quota.set_limit("company:c", "concurrent_requests", None, 3)
    # Capacity with reserved shares: a consume through it reads other consumers' series too.
    quota.set_resource_quota(
        LLAMA,
        {
            "capacity": {"value": 2_000, "units": "tokens"},
            "saturation_threshold": "0.5",
            "policies": [
                {"consumer": "user:a", "rules": [], "reserved": "0.2"},
                {"consumer": "user:b", "rules": [], "reserved": "0.2"},
            ],
        },
    )


def tangle_worker(quota: Quota, subject: str, seed: int, barrier: threading.Barrier) -> None:
    """Consumes, holds, leases and retried keys across the tangle, 40 operations."""
    rng = random.Random(seed)
    barrier.wait()
    for i in range(40):
        size = rng.randint(1, 40)
        resource = LLAMA if rng.random() < 0.5 else None
        match i % 4:
            case 0:
                quota.consume(subject, tokens=size, resource=resource)
            case 1:
                reserved = quota.reserve(subject, tokens=size, resource=resource)
                if reserved.reservation is not None:
                    # Never more than held, so no limit can be passed by a commit.
                    quota.commit(reserved.reservation.id, tokens=rng.randint(0, size))
            case 2:
                acquired = quota.acquire(subject)
                if acquired.lease is not None:
                    quota.release_lease(acquired.lease.id)
            case _:
                # Threads of one subject retry the same keys (and amounts) against each other.
                quota.consume(subject, tokens=i % 5 + 1, idempotency_key=f"k{i}")


def tokens_spent(quota: Quota, subject: str) -> int:
    return sum(
        int(e.amounts.to_numbers().get("tokens", 0)) for e in quota.iter_events(subject=subject)
    )


def test_opposite_hierarchy_orders_neither_deadlock_nor_overspend(quota: Quota) -> None:
    prepare_tangle(quota)
    subjects = [*TANGLE, "group:g", "company:c"] * 3  # 18 threads, three per subject
    barrier = threading.Barrier(len(subjects))
    with ThreadPoolExecutor(len(subjects)) as pool:
        # Any error (PostgreSQL's "deadlock detected" among them) is raised here.
        list(
            pool.map(lambda n: tangle_worker(quota, subjects[n], n, barrier), range(len(subjects)))
        )
    for subject, limit in TANGLE_LIMITS.items():
        statuses = {s.metric: s for s in quota.usage(subject).limits}
        assert statuses["tokens"].used == tokens_spent(quota, subject) <= limit
        assert statuses["tokens"].reserved == 0
        if subject == "company:c":
            assert statuses["concurrent_requests"].used == 0  # every lease given back
    assert (
        tokens_spent(quota, LLAMA) <= 2_000
    )  # the frozen clock keeps it all in one capacity minute
    for subject in TANGLE:
        keys = [e.idempotency_key for e in quota.iter_events(subject=subject)]
        # The three threads of a subject send k3, k7, ... each: every key counted once.
        assert len([k for k in keys if k]) == len({k for k in keys if k})
