"""Counters are kept per kind of series (domain/tracking.py), on every backend.

A series counts the (metric, window) pairs its kind's rules name and the
wildcard's (plans, the lifetime pairs); a pair newly tracked for a kind is
backfilled into that kind's series only, a wildcard one into the series that
did not count it yet; nothing is ever counted twice, and a rebuild gives the
counters the live path kept.
"""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from tokenquota import FrozenClock, Quota
from tokenquota.domain.metrics import Metric
from tokenquota.storage.memory.store import MemoryStore
from tokenquota.storage.redis.store import RedisStore
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.store import SqlStore

Counters = dict[tuple[str, str, str, int], int]
_REDIS_COUNTER = re.compile(
    r"\}:c:(.+):(" + "|".join(m.value for m in Metric) + r"):(.+)$"
)  # the series may hold ':' and so may a window key (rolling:7d)


def counters(quota: Quota) -> Counters:
    """Every non-zero counter bucket the store keeps: (series, metric, window, bucket)."""
    store = quota.store
    if isinstance(store, MemoryStore):
        return {
            (s, m, w, b): v
            for (s, m, w), buckets in store.meter._s.counters.items()
            for b, v in buckets.items()
            if v
        }
    if isinstance(store, RedisStore):
        out: Counters = {}
        for name in store.redis.scan_iter(match=store.layout.pattern("c"), count=1000):
            text = name.decode() if isinstance(name, bytes) else name
            found = _REDIS_COUNTER.search(text)
            assert found is not None, text
            for bucket, value in store.redis.hgetall(name).items():
                if int(value):
                    out[(found[1], found[2], found[3], int(bucket))] = int(value)
        return out
    assert isinstance(store, SqlStore)
    with store.db.engine.connect() as conn:
        return {
            (r.subject, r.metric, r.window, r.bucket): r.value
            for r in conn.execute(sa.select(t.counters))
            if r.value
        }


def pairs(found: Counters) -> set[tuple[str, str, str]]:
    return {(s, m, w) for s, m, w, _ in found}


def of(found: Counters, series: str, window: str) -> int:
    return sum(v for (s, m, w, _), v in found.items() if (s, m, w) == (series, "tokens", window))


def rebuilt(quota: Quota) -> Counters:
    """The counters after a rebuild from the ledger (Redis's streams drained first)."""
    quota.rebuild()
    return counters(quota)


def test_the_bench_shape_adds_to_eight_counters_not_twelve(quota: Quota) -> None:
    # bench/common.py: a user with tokens minute/hour/day limits under a company
    # with a tokens month limit.
    quota.set_parents("user:alice", ["company:acme"])
    for window in ("minute", "hour", "day"):
        quota.set_limit("user:alice", "tokens", window, 10**9)
    quota.set_limit("company:acme", "tokens", "month", 10**9)

    assert quota.consume("user:alice", tokens=10).allowed

    found = counters(quota)
    assert pairs(found) == {
        ("user:alice", "tokens", "minute"),
        ("user:alice", "tokens", "hour"),
        ("user:alice", "tokens", "day"),
        ("user:alice", "tokens", "total"),
        ("user:alice", "requests", "total"),
        ("company:acme", "tokens", "month"),
        ("company:acme", "tokens", "total"),
        ("company:acme", "requests", "total"),
    }
    assert len(found) == 8
    assert rebuilt(quota) == found


def test_a_limit_on_a_new_kind_counts_that_kinds_earlier_usage_once(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    # Two days ago: before the window a backfill at now replays from (every kind's).
    quota.consume("user:alice", tokens=5, mode="record", timestamp=clock.now() - timedelta(days=2))
    quota.set_limit("user:alice", "tokens", "day", 10**9)
    quota.consume("user:alice", tokens=10)
    quota.consume("user:bob", tokens=20)  # a user with no parent
    before = counters(quota)
    assert of(before, "company:acme", "day") == 0  # not a window of the company's kind
    assert of(before, "user:alice", "day") == 10

    quota.set_limit("company:acme", "tokens", "day", 10**9)

    found = counters(quota)
    assert of(found, "company:acme", "day") == 10  # today's usage, backfilled
    assert of(found, "user:alice", "day") == 10  # the user's kind counted it already: once
    assert of(found, "user:bob", "day") == 20
    assert {k: v for k, v in found.items() if k[0] != "company:acme" or k[2] != "day"} == before
    [limit] = [s for s in quota.usage("company:acme").limits if s.window == "day"]
    assert limit.used == 10

    quota.consume("user:alice", tokens=1)  # both kinds count it from now on
    found = counters(quota)
    assert (of(found, "user:alice", "day"), of(found, "company:acme", "day")) == (11, 11)
    # A rebuild replays the whole ledger for the pairs tracked now: the same counters,
    # and the day two days ago as well (both kinds count days now), which no decision reads.
    again = rebuilt(quota)
    old = {k: v for k, v in again.items() if k not in found}
    assert {(s, m, w, v) for (s, m, w, _), v in old.items()} == {
        ("user:alice", "tokens", "day", 5),
        ("company:acme", "tokens", "day", 5),
    }
    assert {k: v for k, v in again.items() if k in found} == found


def test_a_plan_naming_a_pair_some_kind_counts_backfills_only_the_others(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_default("user", "tokens", "hour", 10**9)
    quota.consume("user:alice", tokens=10)
    quota.consume("team:red", tokens=3)  # a kind nothing names
    assert of(counters(quota), "team:red", "hour") == 0

    # A plan may be put on any kind: its pairs are counted for every kind.
    plan = quota.create_plan("Gold", [{"metric": "tokens", "window": "hour", "limit": 10**9}])

    found = counters(quota)
    assert of(found, "user:alice", "hour") == 10  # counted by its kind already: not again
    assert of(found, "company:acme", "hour") == 10
    assert of(found, "team:red", "hour") == 3
    quota.assign_plan("company:acme", plan.id)
    quota.consume("user:alice", tokens=1)
    found = counters(quota)
    assert [of(found, s, "hour") for s in ("user:alice", "company:acme")] == [11, 11]
    assert rebuilt(quota) == found


def test_a_resource_quota_counts_in_the_resource_kinds_series(quota: Quota) -> None:
    # A consumer's share (deployment:llama~user:bob) is of the resource's kind.
    quota.set_resource_quota(
        "deployment:llama",
        {
            "default_rules": [{"metric": "tokens", "window": "hour", "limit": 10**9}],
            "capacity": {"value": 10**9, "units": "tokens"},
        },
    )
    assert quota.consume("user:bob", tokens=7, resource="deployment:llama").allowed

    found = counters(quota)
    assert of(found, "deployment:llama~user:bob", "hour") == 7
    assert of(found, "deployment:llama", "minute") == 7  # the capacity's
    assert of(found, "user:bob", "hour") == 0  # no rule of the user's kind names it
    assert of(found, "user:bob", "minute") == 0
    assert rebuilt(quota) == found
