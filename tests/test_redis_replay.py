"""Idempotent replays on Redis answer the original admission, whatever Redis lost.

The audit's sequence (issue 11, item 6): with ``tokens/day 14``, consume 7
with key k1, lose what Redis kept of the answer, consume 7 with k2, retry
k1. The retry must answer the first admission, never 429.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tokenquota
from tests.test_redis import forget_everything, store_of
from tokenquota import Quota
from tokenquota.wire.decisions import encode_decision


@pytest.fixture(params=["redis", "cluster"])
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return request.getfixturevalue("postgres_url"), redis


@pytest.fixture
def quota(urls: tuple[str, str]) -> Iterator[Quota]:
    db, redis = urls
    with tokenquota.open(db, redis=redis) as opened:
        yield opened


def _idem_key(quota: Quota, subject: str, key: str) -> str:
    return store_of(quota).layout.idem(subject, key)[1]


def test_a_retry_answers_the_first_admission_when_the_stored_answer_field_is_lost(
    quota: Quota,
) -> None:
    quota.set_limit("user:ann", "tokens", "day", 14)
    first = quota.consume("user:ann", tokens=7, idempotency_key="k1")
    # What a crash between the script and a later write of the answer would
    # leave: everything but "d", the field earlier versions stored afterwards.
    store = store_of(quota)
    store.redis.hdel(_idem_key(quota, "user:ann", "k1"), "d")
    assert quota.consume("user:ann", tokens=7, idempotency_key="k2").allowed

    again = quota.consume("user:ann", tokens=7, idempotency_key="k1")

    assert (again.allowed, again.replayed, again.event_id) == (True, True, first.event_id)
    assert again.limits == first.limits
    assert again.limits[0].used == 7
    assert quota.usage("user:ann").limits[0].used == 14


def test_a_retry_after_a_rebuild_answers_an_admission_from_the_ledger(
    quota: Quota, urls: tuple[str, str]
) -> None:
    _, redis = urls
    quota.set_limit("user:ann", "tokens", "day", 14)
    first = quota.consume("user:ann", tokens=7, idempotency_key="k1")
    assert quota.consume("user:ann", tokens=7, idempotency_key="k2").allowed
    store_of(quota).flush()
    forget_everything(redis)
    quota.rebuild()

    again = quota.consume("user:ann", tokens=7, idempotency_key="k1")

    # The ledger keeps the admission, not the figures: no limits are shown.
    assert (again.allowed, again.replayed, again.event_id) == (True, True, first.event_id)
    assert (again.subject, again.mode, again.amounts) == (first.subject, first.mode, first.amounts)
    assert again.timestamp == first.timestamp
    assert again.limits == ()
    assert quota.usage("user:ann").limits[0].used == 14


def test_a_commit_retried_after_its_stored_answer_is_lost_answers_the_admission(
    quota: Quota,
) -> None:
    """On a single Redis a commit is one script, which keeps its answer's inputs: the
    retry is the first answer. A cluster's commit spans steps: the retry answers
    the admission its ledger event records (docs/redis.md)."""
    quota.set_limit("user:ann", "tokens", "day", 14)
    held = quota.reserve("user:ann", tokens=7).reservation
    assert held is not None
    first = quota.commit(held.id, tokens=7)
    store = store_of(quota)
    store.redis.hdel(store.layout.record("r", held.id)[1], "d")
    assert quota.consume("user:ann", tokens=7).allowed

    again = quota.commit(held.id, tokens=7)

    assert (again.allowed, again.replayed, again.event_id) == (True, True, first.event_id)
    if store.cluster:
        assert (again.amounts, again.limits) == (first.amounts, ())
    else:
        assert encode_decision(again) == {**encode_decision(first), "replayed": True}
    assert quota.usage("user:ann").limits[0].used == 14


def test_the_recomputed_first_answer_covers_capacity_wallets_and_rolling_windows(
    quota: Quota,
) -> None:
    """Every part of a plan the script keeps comes back: a resource's capacity test
    with reserved shares, a prepaid wallet, a rolling window and a shadow limit."""
    llama = "deployment:llama"
    quota.set_resource_quota(
        llama,
        {
            "capacity": {"value": 100, "units": "tokens"},
            "saturation_threshold": "0.5",
            "policies": [
                {"consumer": "user:bob", "rules": [], "reserved": "0.3"},
                {"consumer": "user:ann", "rules": [], "reserved": "0.2"},
            ],
        },
    )
    quota.set_limit("user:ann", "tokens", "rolling:1h", 50)
    quota.set_limit("user:ann", "requests", "day", 1, shadow=True)
    quota.grant("user:ann", 10)
    first = quota.consume("user:ann", tokens=20, credits=3, resource=llama, idempotency_key="rich")
    assert first.allowed
    store = store_of(quota)
    store.redis.hdel(_idem_key(quota, "user:ann", "rich"), "d")
    assert quota.consume("user:ann", tokens=30, credits=3, resource=llama).allowed

    again = quota.consume("user:ann", tokens=20, credits=3, resource=llama, idempotency_key="rich")

    assert encode_decision(again) == {**encode_decision(first), "replayed": True}
    assert {s.window for s in again.limits} >= {"rolling:1h", "day", "prepaid"}
