"""The configuration snapshot (storage/snapshot.py) on every backend.

Each replica plans from its own cached configuration, filed under a version
token; every atomic step that decides on a plan compares the plan's token with
the store's, so a change made through one replica binds the very next decision
of every other one, however warm its snapshot, while reads may lag by at most
the snapshot's bound. Replicas here are two engines on one store (for
``memory://``, two catalogs over one state, as there is no other process to
share it with).
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import QuotaFactory
from tokenquota import Quota
from tokenquota.domain.decisions import Decision, Mode
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import StaleConfig
from tokenquota.storage.composed import ComposedStore
from tokenquota.storage.memory.catalog import MemoryCatalog
from tokenquota.storage.memory.meter import MemoryMeter
from tokenquota.storage.redis.store import RedisStore
from tokenquota.storage.snapshot import CONFIG_TTL, Snapshot
from tokenquota.storage.sql.tx import Database

ANN = SubjectRef.parse("user:ann")
REQUESTS_MINUTE = LimitKey.parse("requests", "minute", "test")
FOREVER = 3600.0  # a snapshot that never asks the store by itself: only a step can tell it


class MemoryReplica(ComposedStore):
    """A second memory catalog and meter over another store's state: another replica."""

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass


def replicas(make_quota: QuotaFactory, backend: str) -> tuple[Quota, Quota]:
    """Two engines on one store, each with its own snapshot."""
    first = make_quota()
    if backend != "memory":
        return first, make_quota()
    assert isinstance(first.store, ComposedStore)
    assert isinstance(first.store.catalog, MemoryCatalog)
    state = first.store.catalog.state
    return first, Quota(MemoryReplica(MemoryCatalog(state), MemoryMeter(state)), clock=first.clock)


def snapshot_of(quota: Quota) -> Snapshot:
    store = quota.store
    assert isinstance(store, ComposedStore)
    snapshot = getattr(store.catalog, "snapshot", None)
    assert isinstance(snapshot, Snapshot)
    return snapshot


def version_of(quota: Quota) -> str:
    """The store's current token, asked directly (not through the snapshot)."""
    return snapshot_of(quota).reads.config_version()


class Ticks:
    """A monotonic clock the test moves: a snapshot's bound, without sleeping."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # it carries on from the clock it replaces

    def __call__(self) -> float:
        return self.now


def with_ticks(quota: Quota) -> Ticks:
    ticks = Ticks()
    snapshot_of(quota).monotonic = ticks
    snapshot_of(quota).invalidate()
    ticks.now += 0.001  # an answer asked for in the same tick as an invalidation is not trusted
    return ticks


def database_of(quota: Quota) -> Database | None:
    return getattr(quota.store, "db", None)


@pytest.fixture
def count_transactions() -> Iterator[Callable[[Quota], list[int]]]:
    """Counts the transactions a quota's SQL engine begins on this thread, from the call on."""
    listening: list[tuple[sa.Engine, Callable[..., None]]] = []

    def start(quota: Quota) -> list[int]:
        db = database_of(quota)
        assert db is not None
        began = [0]
        caller = threading.get_ident()  # not the Redis store's mover, which runs beside

        def on_begin(_conn: sa.Connection) -> None:
            if threading.get_ident() == caller:
                began[0] += 1

        sa.event.listen(db.engine, "begin", on_begin)
        listening.append((db.engine, on_begin))
        return began

    yield start
    for engine, listener in listening:
        sa.event.remove(engine, "begin", listener)


def tokens_day(decision: Decision, subject: str = "user:ann") -> tuple[int, int]:
    """(limit, used) of the subject's tokens/day limit as the decision measured it."""
    (status,) = [
        s
        for s in decision.limits
        if s.subject == subject and s.metric == "tokens" and s.window == "day"
    ]
    assert isinstance(status.limit, int)
    assert isinstance(status.used, int)
    return status.limit, status.used


# one replica's change binds the next decision of another -----------------------


@pytest.mark.parametrize("change", ["lower the limit", "move under a parent", "assign a plan"])
def test_a_change_on_one_replica_binds_the_very_next_consume_on_another(
    make_quota: QuotaFactory, backend: str, change: str
) -> None:
    a, b = replicas(make_quota, backend)
    if change == "lower the limit":
        a.set_limit("user:ann", "tokens", "day", 100)
    a.set_limit("company:tight", "tokens", "day", 5)
    a.create_plan("tight", [{"metric": "tokens", "window": "day", "limit": 5}])
    snapshot_of(b).ttl = FOREVER
    assert b.consume("user:ann", tokens=10).allowed  # B plans from a warm snapshot now
    warm = b.store.config().version
    assert warm == version_of(b)

    if change == "lower the limit":
        a.set_limit("user:ann", "tokens", "day", 5)
    elif change == "move under a parent":
        a.set_parents("user:ann", ["company:tight"])
    else:
        a.assign_plan("user:ann", "tight")

    assert version_of(b) != warm
    assert b.store.config().version == warm  # B's snapshot still holds the old version
    refused = b.consume("user:ann", tokens=10)
    assert not refused.allowed
    assert [s.limit for s in refused.blocked_by] == [5]
    assert b.store.config().version == version_of(b)  # the refused step made B ask
    assert len(b.events(subject="user:ann").items) == 1  # only the first consume counted


def test_every_step_refuses_a_plan_made_before_the_version_moved(
    make_quota: QuotaFactory, backend: str
) -> None:
    quota = make_quota()
    quota.set_limit("user:ann", "tokens", "day", 100)
    quota.set_limit("user:ann", "concurrent_requests", None, 2)
    held = quota.reserve("user:ann", tokens=5).reservation
    assert held is not None
    planner, store, now = quota.planner, quota.store, quota.clock.now()
    consume = planner.plan(ANN, {"tokens": 1}, Mode.ENFORCE, None)
    reserve = planner.plan(ANN, {"tokens": 1}, Mode.ENFORCE, None, intent="reserve")
    acquire = planner.plan(ANN, {}, Mode.ENFORCE, None, intent="acquire")
    commit = planner.plan(ANN, {"tokens": 3}, Mode.RECORD, None)
    assert consume.config_version == version_of(quota)

    quota.set_limit("user:ann", "tokens", "day", 90)

    reservation = Reservation(
        secrets.token_hex(16), ANN, (ANN,), reserve.amounts, now, now + timedelta(minutes=1)
    )
    lease = Lease(secrets.token_hex(16), ANN, (ANN,), now, now + timedelta(minutes=1))
    with pytest.raises(StaleConfig):
        store.debit(consume, create_subject=True)
    with pytest.raises(StaleConfig):
        store.reserve(reserve, reservation, create_subject=True)
    with pytest.raises(StaleConfig):
        store.acquire(acquire, lease, create_subject=True)
    with pytest.raises(StaleConfig):
        store.commit(held.id, commit)
    # Nothing was charged or held by the refused steps; planned again, they pass.
    tokens = next(s for s in quota.usage("user:ann").limits if s.metric == "tokens")
    assert (tokens.limit, tokens.used, tokens.reserved) == (90, 0, 5)
    assert quota.get_reservation(held.id).committed is None
    assert quota.commit(held.id, tokens=3).allowed
    assert quota.consume("user:ann", tokens=1).allowed
    tokens = next(s for s in quota.usage("user:ann").limits if s.metric == "tokens")
    assert (tokens.used, tokens.reserved) == (4, 0)


def test_a_plan_made_without_a_version_is_not_checked(make_quota: QuotaFactory) -> None:
    """A hand-made plan (no snapshot behind it) is decided as before: nobody verifies it."""
    quota = make_quota()
    quota.set_limit("user:ann", "tokens", "day", 10)
    plan = quota.planner.plan(ANN, {"tokens": 4}, Mode.ENFORCE, None)
    unchecked = dataclasses.replace(plan, config_version=None)
    quota.set_limit("user:ann", "tokens", "day", 20)
    assert quota.store.debit(unchecked, create_subject=True).allowed


# which writes move the version ---------------------------------------------------


def test_configuration_writes_move_the_version_and_a_first_consume_does_not(
    make_quota: QuotaFactory,
) -> None:
    quota = make_quota()
    before = version_of(quota)
    assert quota.consume("user:new", tokens=1).allowed  # creates user:new: no new limits
    assert version_of(quota) == before
    quota.create_key("service")  # keys live in engine/keycache.py, not in the snapshot
    assert version_of(quota) == before

    plan_id = ""

    def make_plan() -> None:
        nonlocal plan_id
        plan_id = quota.create_plan("gold", [{"metric": "tokens", "window": "day", "limit": 9}]).id

    writes: list[tuple[str, Callable[[], object]]] = [
        ("parents", lambda: quota.set_parents("user:new", ["company:acme"])),
        ("limit", lambda: quota.set_limit("user:new", "tokens", "hour", 50)),
        ("default", lambda: quota.set_default("user", "tokens", "day", 500)),
        ("plan", make_plan),
        ("plan rules", lambda: quota.update_plan(plan_id, rules=[])),
        ("assign", lambda: quota.assign_plan("user:new", plan_id)),
        ("unassign", lambda: quota.assign_plan("user:new", None)),
        ("delete plan", lambda: quota.delete_plan(plan_id)),
        ("quota", lambda: quota.set_resource_quota("deployment:m", {"default_rules": []})),
        ("drop quota", lambda: quota.delete_resource_quota("deployment:m")),
        ("new window", lambda: quota.store.track({"user": [REQUESTS_MINUTE]}, quota.clock.now())),
        ("delete", lambda: quota.delete_subject("user:gone")),
    ]
    quota.put_subject("user:gone")
    for name, write in writes:
        seen = version_of(quota)
        write()
        assert version_of(quota) != seen, name


# reads may lag by the bound; decisions never -------------------------------------


def test_reads_on_another_replica_lag_by_at_most_the_bound(
    make_quota: QuotaFactory, backend: str
) -> None:
    a, b = replicas(make_quota, backend)
    a.set_limit("user:ann", "tokens", "day", 100)
    ticks = with_ticks(b)
    assert b.limits("user:ann").effective[0].value == 100
    a.set_limit("user:ann", "tokens", "day", 7)
    assert a.limits("user:ann").effective[0].value == 7  # the writer reads its own write
    ticks.now += CONFIG_TTL / 2
    assert b.limits("user:ann").effective[0].value == 100  # within the bound: may lag
    ticks.now += CONFIG_TTL / 2 + 0.01
    assert b.limits("user:ann").effective[0].value == 7
    assert b.usage("user:ann").limits[0].limit == 7


# one transaction per decision ----------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
def test_a_consume_on_a_warm_snapshot_runs_one_transaction(
    make_quota: QuotaFactory, backend: str, count_transactions: Callable[[Quota], list[int]]
) -> None:
    """SQL: the decision's own transaction, nothing else. Beside Redis: no SQL at all."""
    quota = make_quota()
    quota.set_parents("user:ann", ["company:acme"])
    for window in ("minute", "hour", "day"):
        quota.set_limit("user:ann", "tokens", window, 1_000)
    quota.set_limit("company:acme", "tokens", "month", 10_000)
    snapshot_of(quota).ttl = FOREVER  # a slow machine must not make it ask the version
    assert quota.consume("user:ann", tokens=1).allowed  # warms the snapshot
    began = count_transactions(quota)
    for i in range(5):
        assert quota.consume("user:ann", tokens=1, idempotency_key=f"k{i}").allowed
        assert quota.consume("user:ann", tokens=1).allowed
    assert began[0] == (0 if backend == "redis" else 10)


@pytest.mark.parametrize("backend", ["sqlite"])  # where each ask is a transaction to count
def test_the_store_is_asked_for_its_version_at_most_once_per_bound(
    make_quota: QuotaFactory, backend: str, count_transactions: Callable[[Quota], list[int]]
) -> None:
    quota = make_quota()
    quota.set_limit("user:ann", "tokens", "day", 100)
    ticks = with_ticks(quota)
    quota.planner.plan(ANN, {"tokens": 1}, Mode.ENFORCE, None)  # asks, then loads
    began = count_transactions(quota)
    for _ in range(20):
        quota.planner.plan(ANN, {"tokens": 1}, Mode.ENFORCE, None)
    assert began[0] == 0  # neither asked nor loaded: resolved from the snapshot
    ticks.now += CONFIG_TTL + 0.01
    for _ in range(20):
        quota.planner.plan(ANN, {"tokens": 1}, Mode.ENFORCE, None)
    assert began[0] == 1  # asked once; the version had not moved, so nothing reloaded
    ticks.now += CONFIG_TTL + 0.01
    assert quota.consume("user:ann", tokens=1).allowed  # asks, then its step confirms
    began[0] = 0
    ticks.now += CONFIG_TTL / 2
    assert quota.consume("user:ann", tokens=1).allowed
    ticks.now += CONFIG_TTL * 0.9  # past the first ask's bound, within the last step's
    assert quota.consume("user:ann", tokens=1).allowed
    assert began[0] == 2  # each step confirmed the version: no separate ask


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_snapshot_is_bounded(make_quota: QuotaFactory, backend: str) -> None:
    quota = make_quota()
    quota.set_limit("company:acme", "tokens", "day", 1_000)
    snapshot = snapshot_of(quota)
    snapshot.max_entries = 10
    quota.set_parents("user:u0", ["company:acme"])
    for i in range(40):
        assert quota.consume(f"user:u{i}", tokens=1).allowed
        assert len(snapshot) <= 10
    assert quota.usage("company:acme").limits[0].used == 1  # only u0 is in acme


# the race -----------------------------------------------------------------------


def test_limits_changing_under_racing_consumes_never_admit_more_than_they_allow(
    make_quota: QuotaFactory, backend: str
) -> None:
    """Threads on two replicas spend one token at a time while a third moves the limit.

    At no moment may usage pass the limit in force: every admission stays
    within the limit it reports, the total never passes the highest limit ever
    set, and every consume begun after the last change answers to that last
    limit and none of them takes usage past it.
    """
    a, b = replicas(make_quota, backend)
    limits = [200, 30, 150, 60, 120, 40, 100]
    final = 70
    a.set_limit("user:ann", "tokens", "day", limits[0])
    tick = itertools.count()
    final_set = [-1]
    results: list[tuple[int, Decision]] = []
    progress = threading.Condition()
    done = threading.Event()
    errors: list[BaseException] = []

    made = [0, 0, 0, 0]  # decisions answered, per consumer thread

    def record(worker: int, started: int, decision: Decision) -> None:
        with progress:
            results.append((started, decision))
            made[worker] += 1
            progress.notify_all()

    def consumer(worker: int, quota: Quota) -> None:
        try:
            for _ in range(45):
                started = next(tick)
                record(worker, started, quota.consume("user:ann", tokens=1))
            while not done.is_set():  # keep racing until the last change has landed
                started = next(tick)
                record(worker, started, quota.consume("user:ann", tokens=1))
            for _ in range(10):
                started = next(tick)
                record(worker, started, quota.consume("user:ann", tokens=1))
        except BaseException as exc:
            errors.append(exc)

    def setter() -> None:
        # Each limit holds until every consumer has answered 2 more decisions: a
        # change after every round trip would refuse every plan (after 5 rounds,
        # a 503), and a thread the scheduler starved must not see five changes
        # land while its one consume replans (8 decisions in all let that happen
        # on a loaded machine while the other threads ran).
        try:
            for value in [*limits[1:], final]:
                with progress:
                    wanted = [n + 2 for n in made]
                    progress.wait_for(
                        lambda: all(n >= w for n, w in zip(made, wanted, strict=True)),  # noqa: B023 (used at once)
                        timeout=60,
                    )
                a.set_limit("user:ann", "tokens", "day", value)
            final_set[0] = next(tick)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=consumer, args=(i, q)) for i, q in enumerate((a, b, a, b))]
    threads.append(threading.Thread(target=setter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert final_set[0] >= 0
    admitted = [(started, d) for started, d in results if d.allowed]
    used = a.usage("user:ann").limits[0].used
    assert used == len(admitted)
    assert used <= max([*limits, final])
    for _, decision in admitted:
        limit, after = tokens_day(decision)
        assert limit in [*limits, final]
        assert after <= limit
    after_final = [(started, d) for started, d in results if started > final_set[0]]
    assert after_final  # the consumers did race past the last change
    for _, decision in after_final:
        limit, after = tokens_day(decision)
        assert limit == final
        if decision.allowed:
            assert after <= final


def test_racing_bumps_leave_every_cluster_shard_with_one_token(
    postgres_url: str, cluster_url: str
) -> None:
    """Each shard's copy is set apart; racing writes must still agree, or plans stay stale.

    Setting the copies once per bump left them torn in about a third of
    these rounds (8 bumpers at once on a 3-node cluster).
    """
    with tokenquota.open(postgres_url, redis=cluster_url) as quota:
        store = quota.store
        assert isinstance(store, RedisStore)
        errors: list[BaseException] = []
        for _ in range(10):
            barrier = threading.Barrier(8)

            def bump(barrier: threading.Barrier) -> None:
                barrier.wait()
                try:
                    for _ in range(10):
                        store.version.bump()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=bump, args=(barrier,)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert not errors
            shards = range(store.layout.shards)
            assert len({store.redis.get(store.layout.config(s)) for s in shards}) == 1
        for i in range(20):  # every ledger shard agrees with the plans' token
            assert quota.consume("user:ann", tokens=1, idempotency_key=f"k{i}").allowed
