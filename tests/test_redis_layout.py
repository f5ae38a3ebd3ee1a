"""Counters written in the old Redis layout (one hash per series, metric and window)
are read after an upgrade: the first open moves them into one hash per series."""

from __future__ import annotations

from typing import Any

import pytest

import tokenquota
from tokenquota.storage.redis import RedisStore


@pytest.fixture(params=["redis", "cluster"])
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return request.getfixturevalue("postgres_url"), redis


def client_for(store: RedisStore) -> Any:
    return store.redis


def to_layout_1(store: RedisStore, series: str) -> int:
    """Rewrite one series' counters as the previous version kept them; returns the keys."""
    layout, client = store.layout, client_for(store)
    new = layout.counter(series)
    by_key: dict[str, dict[str, str]] = {}
    for field, value in client.hgetall(new).items():
        metric, rest = field.decode().split(":", 1)
        window, bucket = rest.rsplit(":", 1)
        old = layout._key(series.split("~", 1)[0], f"c:{series}:{metric}:{window}")
        by_key.setdefault(old, {})[bucket] = value.decode()
    for old, fields in by_key.items():
        client.hset(old, mapping=fields)
    client.delete(new)
    client.delete(layout.counter_layout())
    return len(by_key)


def test_counters_in_the_old_layout_count_after_the_upgrade(urls: tuple[str, str]) -> None:
    db, redis = urls
    with tokenquota.open(db, redis=redis) as quota:
        quota.set_limit("user:ann", "tokens", "day", 100)
        quota.set_limit("user:ann", "tokens", "rolling:10m", 100)
        assert quota.consume("user:ann", tokens=60).allowed
        store = quota.store
        assert isinstance(store, RedisStore)
        store.mover.stop.set()  # nothing else writes while the keys are rewritten
        moved = to_layout_1(store, "user:ann")
        assert moved >= 3  # day, rolling:10m and the lifetime totals at least
        assert not client_for(store).exists(store.layout.counter("user:ann"))

    with tokenquota.open(db, redis=redis) as quota:
        store = quota.store
        assert isinstance(store, RedisStore)
        client = client_for(store)
        assert client.get(store.layout.counter_layout()) == b"2"
        assert not list(client.scan_iter(match=store.layout.pattern("c")))
        used = {s.window: s.used for s in quota.usage("user:ann").limits}
        assert used == {"day": 60, "rolling:10m": 60}
        assert not quota.consume("user:ann", tokens=60).allowed
        assert quota.consume("user:ann", tokens=40).allowed
