"""One event the SQL ledger refuses never stops the Redis mover, a ledger read or a rebuild.

The door refuses NUL and lone surrogates now, so these tests plant the rows a
version before that check wrote: a real consume's stream entry, rewritten to
carry the hostile text, exactly as the old Lua step would have stored it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import tokenquota
from tokenquota import Quota
from tokenquota.storage.redis import RedisStore


@pytest.fixture(params=["redis", "cluster"])
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return request.getfixturevalue("postgres_url"), redis


@pytest.fixture
def quota(urls: tuple[str, str]) -> Iterator[Quota]:
    db, redis = urls
    with tokenquota.open(db, redis=redis) as opened:
        yield opened


def paused(quota: Quota) -> RedisStore:
    """The store with its mover thread stopped, so only the test moves events."""
    store = quota.store
    assert isinstance(store, RedisStore)
    store._stop.set()
    store._mover.join(timeout=10)
    store._stop.clear()  # close() still flushes and closes; no thread restarts
    return store


def poison(store: RedisStore, key: str, changes: dict[str, object]) -> None:
    """Rewrite the stream entry of the consume with that key to carry ``changes``."""
    for shard in range(store.layout.shards):
        stream = store.layout.stream(shard)
        for entry_id, data in store.redis.xrange(stream):
            body = json.loads(data[b"e"])
            if body.get("idempotency_key") != key:
                continue
            body.update(changes)
            store.redis.xadd(stream, {b"e": json.dumps(body), b"id": data[b"id"]})
            store.redis.xdel(stream, entry_id)
            return
    raise AssertionError(f"no stream entry for {key}")


def plant(quota: Quota) -> RedisStore:
    store = paused(quota)
    for key in ("good-1", "nul", "surrogate", "good-2"):
        assert quota.consume("user:m", tokens=1, idempotency_key=key).allowed
    poison(store, "nul", {"model": "x\x00y"})
    poison(store, "surrogate", {"idempotency_key": "k\ud800"})
    return store


def stream_length(store: RedisStore) -> int:
    return sum(store.redis.xlen(store.layout.stream(s)) for s in range(store.layout.shards))


def test_the_mover_quarantines_a_refused_row_and_moves_the_rest(quota: Quota) -> None:
    store = plant(quota)
    assert store.flush() == 2
    assert stream_length(store) == 0
    assert sorted(e.idempotency_key or "" for e in quota.events().items) == ["good-1", "good-2"]
    kept = store.quarantined()
    assert len(kept) == 2
    reasons = sorted(entry["reason"] for entry in kept)
    assert all(r.startswith("refused by the ledger") for r in reasons)
    assert any("NUL" in r for r in reasons)
    bodies = [json.loads(entry["e"]) for entry in kept]
    assert sorted(b["model"] or "" for b in bodies) == ["", "x\x00y"]
    # Later events keep flowing, and a ledger read answers.
    assert quota.consume("user:m", tokens=1, idempotency_key="good-3").allowed
    assert store.flush() == 1
    assert quota.events().total == 3
    assert len(store.quarantined()) == 2


def test_rebuild_and_a_new_window_survive_a_refused_row(quota: Quota) -> None:
    store = plant(quota)
    assert quota.rebuild() == 2
    assert len(store.quarantined()) == 2
    store_poisoned_again(quota, store)
    quota.set_limit("user:m", "tokens", "month", 100)  # a new window backfills from the ledger
    usage = {(u.metric, u.window): u.used for u in quota.usage("user:m").limits}
    assert usage[("tokens", "month")] == 3  # good-1, good-2, good-3
    assert len(store.quarantined()) == 3


def store_poisoned_again(quota: Quota, store: RedisStore) -> None:
    assert quota.consume("user:m", tokens=1, idempotency_key="good-3").allowed
    assert quota.consume("user:m", tokens=1, idempotency_key="nul-2").allowed
    poison(store, "nul-2", {"model": "\x00"})


def test_a_restart_moves_past_a_refused_row(urls: tuple[str, str]) -> None:
    db, redis = urls
    first = tokenquota.open(db, redis=redis)
    store = plant(first)
    first.close()  # the final flush quarantines instead of failing
    with tokenquota.open(db, redis=redis) as again:
        assert again.events().total == 2
        reopened = again.store
        assert isinstance(reopened, RedisStore)
        assert len(reopened.quarantined()) == 2
        assert stream_length(reopened) == 0
    assert store is not None
