"""What only the Redis backend has: its streams, its loss, and cross-slot debits on a cluster.

The conformance suite already runs on ``redis`` and ``cluster``; these tests
cover the parts behind it: processes racing through Lua, the mover that
carries events into PostgreSQL, ``rebuild`` after Redis forgets everything,
and per-slot debits with compensation on a real three-node cluster.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import sqlalchemy as sa

import tokenquota
from tests.workers import drain
from tokenquota import Quota, StoreUnavailable
from tokenquota.storage.redis import RedisStore

LIMIT = 2_000
LAST = 503  # not a multiple of the 10-token steps: crossing the limit shows


@pytest.fixture(params=["redis", "cluster"])
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(PostgreSQL URL, Redis URL) of a fresh store on a single Redis or the cluster."""
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return request.getfixturevalue("postgres_url"), redis


@pytest.fixture
def quota(urls: tuple[str, str]) -> Iterator[Quota]:
    db, redis = urls
    with tokenquota.open(db, redis=redis) as opened:
        yield opened


def store_of(quota: Quota) -> RedisStore:
    assert isinstance(quota.store, RedisStore)
    return quota.store


def ledger_rows(db: str) -> list[tuple[int, str | None, int]]:
    """(id, idempotency key, tokens) of every consume in the PostgreSQL ledger."""
    engine = sa.create_engine(db.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, idempotency_key, amounts FROM events WHERE kind = 'consume'")
            ).all()
    finally:
        engine.dispose()
    return [(r.id, r.idempotency_key, int(r.amounts.get("tokens", 0))) for r in rows]


def prepare(quota: Quota, users: int = 8) -> list[str]:
    names = [f"user:u{i}" for i in range(users)]
    for name in names:
        quota.set_parents(name, ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", LIMIT)
    quota.consume(names[0], tokens=LIMIT - LAST)
    return names


def drain_in_process(db: str, redis: str, subjects: list[str]) -> int:
    """One process's threads draining the company through Redis (importable for spawn)."""
    quota = tokenquota.open(db, redis=redis)
    try:
        barrier = threading.Barrier(len(subjects))
        with ThreadPoolExecutor(len(subjects)) as pool:
            return sum(pool.map(lambda s: drain(quota, s, barrier), subjects))
    finally:
        quota.close()


def test_processes_and_threads_race_through_lua_for_the_last_tokens(
    quota: Quota, urls: tuple[str, str]
) -> None:
    """4 processes x 4 threads, users on different hash slots: exactly the limit."""
    db, redis = urls
    users = prepare(quota)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        futures = [
            pool.submit(drain_in_process, db, redis, [users[(p * 4 + t) % 8] for t in range(4)])
            for p in range(4)
        ]
        admitted = sum(f.result(timeout=300) for f in futures)
    assert admitted == LAST
    (status,) = quota.usage("company:acme").limits
    assert status.used == LIMIT
    store_of(quota).flush()
    assert sum(tokens for _, _, tokens in ledger_rows(db)) == LIMIT


def test_cross_slot_debits_never_exceed_either_limit(quota: Quota, urls: tuple[str, str]) -> None:
    """User limits refuse after the company step went through: it must be undone.

    Each user may spend 30 and the company 200; 12 users x 2 threads spend 7 at a
    time, then 1. On the cluster a user, the company and the ledger shard sit in
    different slots, so a refusal by a user's step undoes the company's step.
    """
    db, _ = urls
    users = [f"user:x{i}" for i in range(12)]
    for name in users:
        quota.set_parents(name, ["company:globex"])
    quota.set_default("user", "tokens", "day", 30)
    quota.set_limit("company:globex", "tokens", "day", 200)
    barrier = threading.Barrier(24)

    def spend(subject: str) -> int:
        barrier.wait()
        admitted = 0
        for size in (7,) * 10 + (1,) * 40:
            if quota.consume(subject, tokens=size).allowed:
                admitted += size
        return admitted

    with ThreadPoolExecutor(24) as pool:
        admitted = list(pool.map(spend, users * 2))
    per_user = Counter[str]()
    for name, spent in zip(users * 2, admitted, strict=True):
        per_user[name] += spent
    assert max(per_user.values()) <= 30
    assert sum(admitted) == 200  # 12 x 30 > 200, and every refusal was retried with 1
    usage = {s.subject: s.used for s in quota.usage(users[0], include_ancestors=True).limits}
    assert usage["company:globex"] == 200
    for name in users:
        (status,) = quota.usage(name).limits
        assert status.used == per_user[name]  # undone steps left nothing behind
    store_of(quota).flush()
    assert sum(tokens for _, _, tokens in ledger_rows(db)) == 200


def test_the_ledger_reaches_postgresql_once_even_with_two_movers(
    quota: Quota, urls: tuple[str, str]
) -> None:
    db, redis = urls
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        assert quota.consume("user:ann", tokens=1, idempotency_key=key).allowed
    with tokenquota.open(db, redis=redis) as other:
        movers = [store_of(quota).flush, store_of(other).flush] * 2
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda move: move(), movers))
    rows = ledger_rows(db)
    assert Counter(key for _, key, _ in rows) == Counter(keys)
    assert len({event_id for event_id, _, _ in rows}) == 300


def forget_everything(redis_url: str) -> None:
    """What a Redis restart without persistence does to our keys."""
    import redis as redis_py

    base, _, query = redis_url.partition("?")
    prefix = query.removeprefix("prefix=")
    if "cluster" in redis_url or _is_cluster(base):
        from redis.cluster import RedisCluster

        cluster = RedisCluster.from_url(base)
        for name in list(cluster.scan_iter(match=f"{prefix}:*")):
            cluster.unlink(name)
        cluster.close()
        return
    client = redis_py.Redis.from_url(base)
    for name in list(client.scan_iter(match=f"{prefix}:*")):
        client.unlink(name)
    client.close()


def _is_cluster(base: str) -> bool:
    import redis as redis_py

    with redis_py.Redis.from_url(base) as client:
        return bool(client.info("cluster").get("cluster_enabled"))


def test_a_redis_that_lost_its_data_refuses_until_rebuilt_from_the_ledger(
    quota: Quota, urls: tuple[str, str]
) -> None:
    db, redis = urls
    quota.set_limit("user:ann", "tokens", "day", 100)
    first = quota.consume("user:ann", tokens=60, idempotency_key="once")
    quota.grant("user:bob", 10)
    assert quota.consume("user:bob", credits=4).allowed
    store_of(quota).flush()  # acknowledged events reach PostgreSQL within a mover pass

    forget_everything(redis)
    # Counting from zero would admit 60 more: the scripts notice the missing
    # sequence and every enforcing call fails closed instead.
    with pytest.raises(StoreUnavailable, match="rebuild"):
        quota.consume("user:ann", tokens=60)

    assert quota.rebuild() == 3  # two consumes and one grant
    (status,) = quota.usage("user:ann").limits
    assert status.used == 60
    assert not quota.consume("user:ann", tokens=60).allowed
    again = quota.consume("user:ann", tokens=60, idempotency_key="once")
    assert (again.event_id, again.replayed) == (first.event_id, True)
    wallet = quota.balance("user:bob")
    assert wallet is not None
    assert wallet.remaining == 6 * 10**9  # credit units: nine decimals
    # Read before the consume: the mover may move it into the ledger at once.
    newest = max(event_id for event_id, _, _ in ledger_rows(db))
    later = quota.consume("user:ann", tokens=40)
    assert later.allowed
    assert later.event_id is not None
    assert later.event_id > newest


def test_a_new_process_moves_what_a_crashed_one_left_in_the_stream(
    urls: tuple[str, str],
) -> None:
    db, redis = urls
    spawn = multiprocessing.get_context("spawn")
    proc = spawn.Process(target=consume_and_die, args=(db, redis))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    with tokenquota.open(db, redis=redis) as quota:
        store_of(quota).flush()
        assert sorted(key or "" for _, key, _ in ledger_rows(db)) == sorted(
            f"c{i}" for i in range(20)
        )


def consume_and_die(db: str, redis: str) -> None:
    """Consume, then exit without closing: no final move (importable for spawn)."""
    import os

    quota = tokenquota.open(db, redis=redis)
    store_of(quota)._stop.set()  # no mover pass: the events stay in the stream
    for i in range(20):
        quota.consume("user:ann", tokens=1, idempotency_key=f"c{i}")
    os._exit(0)


def test_a_replica_with_cached_limits_never_admits_what_a_new_limit_refuses(
    quota: Quota, urls: tuple[str, str]
) -> None:
    """Replica A caches limits for a second; replica B lowers one meanwhile.

    A's next consume is planned with the old limit, but the script sees the
    configuration changed, so A plans again with the new one and refuses.
    """
    db, redis = urls
    quota.set_parents("user:ann", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "day", 100)
    assert quota.consume("user:ann", tokens=5).allowed  # A's cache now holds the limits
    with tokenquota.open(db, redis=redis) as other:
        other.set_limit("company:acme", "tokens", "day", 10)
        other.set_parents("user:bob", ["company:acme"])
    refused = quota.consume("user:ann", tokens=50)
    assert not refused.allowed
    assert [(s.subject, s.limit) for s in refused.blocked_by] == [("company:acme", 10)]
    assert quota.consume("user:ann", tokens=5).allowed
    assert not quota.consume("user:ann", tokens=1).allowed


def test_a_redis_without_the_step_script_is_given_it_again(quota: Quota) -> None:
    """NOSCRIPT (a restarted or flushed Redis; here, a name it never had) loads the
    script and runs the call once, as redis-py's ``Script`` would."""
    quota.set_limit("user:ns", "tokens", "day", 10)
    runner = store_of(quota).meter.ops
    sha = runner._script.sha
    runner._script.sha = "0" * 40
    first = quota.consume("user:ns", tokens=3, idempotency_key="once")
    assert first.allowed
    assert runner._script.sha == sha
    assert quota.consume("user:ns", tokens=3, idempotency_key="once").event_id == first.event_id
    (status,) = quota.usage("user:ns").limits
    assert status.used == 3  # charged once
