"""on_store_error: closed answers 503, open admits and queues (contract §5).

The outage is real: a TCP proxy in front of the machine's PostgreSQL (or
Redis) is cut while the server keeps running, then restored.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import tokenquota
from tests.proxy import Proxy
from tests.replicas import ADMIN_KEY, Fleet, client, stored_event_keys
from tests.replicas import used as used_over_http
from tokenquota import FrozenClock, Quota, StoreUnavailable, ValidationError
from tokenquota.domain.errors import IdempotencyConflict
from tokenquota.domain.metrics import Metric
from tokenquota.engine.spool import OPEN_PREFIX

OUTAGE_BACKENDS = ["postgres", "redis"]


def _proxied(url: str) -> tuple[Proxy, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    proxy = Proxy(parts.hostname, parts.port)
    return proxy, url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}", 1)


@pytest.fixture(params=OUTAGE_BACKENDS)
def outage(request: pytest.FixtureRequest) -> Iterator[tuple[Proxy, dict[str, Any]]]:
    """The proxy to cut and the ``tokenquota.open`` arguments that go through it.

    postgres: the database is behind the proxy. redis: Redis is, and the
    ledger's PostgreSQL stays reachable (the hot path is what breaks).
    """
    db = request.getfixturevalue("postgres_url")
    if request.param == "postgres":
        proxy, db = _proxied(db)
        args: dict[str, Any] = {"url": db}
    else:
        proxy, redis = _proxied(request.getfixturevalue("redis_url"))
        args = {"url": db, "redis": redis}
    with proxy:
        yield proxy, args


@pytest.fixture
def opener(
    outage: tuple[Proxy, dict[str, Any]], clock: FrozenClock, tmp_path: Path
) -> Iterator[Any]:
    opened: list[Quota] = []
    _, args = outage

    def open_quota(**kwargs: Any) -> Quota:
        kwargs.setdefault("spool", tmp_path / "spool.db")
        quota = tokenquota.open(args["url"], redis=args.get("redis"), clock=clock, **kwargs)
        opened.append(quota)
        return quota

    yield open_quota
    for quota in opened:
        quota.close()


def used(quota: Quota, subject: str) -> int:
    [status] = [s for s in quota.usage(subject).limits if s.metric == "tokens"]
    assert status.used is not None
    return int(status.used)


def test_closed_is_the_default_and_answers_unavailable(
    opener: Any, outage: tuple[Proxy, dict[str, Any]], tmp_path: Path
) -> None:
    quota = opener()
    quota.set_limit("user:ann", "tokens", "day", 100)
    assert quota.consume("user:ann", tokens=10).allowed
    outage[0].cut()
    with pytest.raises(StoreUnavailable):
        quota.consume("user:ann", tokens=10)
    assert quota.spool is None
    assert not (tmp_path / "spool.db").exists()
    outage[0].restore()
    assert quota.consume("user:ann", tokens=10).allowed
    assert used(quota, "user:ann") == 20


def test_open_admits_while_unreachable_and_stores_it_all_once_back(
    opener: Any, outage: tuple[Proxy, dict[str, Any]]
) -> None:
    quota = opener(on_store_error="open")
    quota.set_parents("user:ann", ["company:acme"])
    quota.set_limit("user:ann", "tokens", "day", 100)
    quota.set_limit("company:acme", "tokens", "day", 1_000)
    assert not quota.consume("user:ann", tokens=30, idempotency_key="before").failed_open

    outage[0].cut()
    first = quota.consume("user:ann", tokens=50, idempotency_key="k1", model="m")
    again = quota.consume("user:ann", tokens=50, idempotency_key="k1", model="m")
    unkeyed = quota.consume("user:ann", tokens=80)  # over the limit: nobody can tell now
    checked = quota.check("user:ann", tokens=10_000)
    assert first.allowed
    assert first.failed_open
    assert first.limits == ()
    assert not first.replayed
    assert again.allowed
    assert again.failed_open
    assert again.replayed
    assert unkeyed.allowed
    assert unkeyed.failed_open
    assert checked.allowed
    assert checked.failed_open
    with pytest.raises(IdempotencyConflict):
        quota.consume("user:ann", tokens=51, idempotency_key="k1", model="m")
    with pytest.raises(ValidationError) as bad:  # input is still checked: nothing queued
        quota.consume("user:ann", tokens=-5)
    assert bad.value.details["field"] == "amounts.tokens"
    assert quota.spool is not None
    assert quota.spool.depth() == 2
    assert quota.drain() == 0  # nothing can be stored yet, and nothing is lost trying

    outage[0].restore()
    quota.drain()
    assert quota.spool.depth() == 0
    assert used(quota, "user:ann") == 30 + 50 + 80
    assert used(quota, "company:acme") == 30 + 50 + 80
    events = quota.events(subject="user:ann").items
    assert sorted(e.amounts[Metric.TOKENS] for e in events) == [30, 50, 80]
    assert {e.idempotency_key for e in events} >= {"before", "k1"}
    assert not quota.consume("user:ann", tokens=1).allowed  # enforced again, over the limit
    replay = quota.consume("user:ann", tokens=50, idempotency_key="k1", model="m")
    assert replay.replayed
    assert used(quota, "user:ann") == 160


def test_a_first_attempt_that_reached_the_store_is_not_counted_again(
    opener: Any, outage: tuple[Proxy, dict[str, Any]]
) -> None:
    """A client retries during the outage a call the store had taken: counted once."""
    quota = opener(on_store_error="open")
    quota.set_limit("user:ann", "tokens", "day", 100)
    assert quota.consume("user:ann", tokens=40, idempotency_key="k").allowed
    outage[0].cut()
    assert quota.consume("user:ann", tokens=40, idempotency_key="k").failed_open
    outage[0].restore()
    quota.drain()
    assert quota.spool is not None
    assert quota.spool.depth() == 0
    assert quota.spool.failed() == []
    assert used(quota, "user:ann") == 40
    assert len(quota.events(subject="user:ann").items) == 1


def test_holds_taken_while_unreachable_commit_into_the_queue(
    opener: Any, outage: tuple[Proxy, dict[str, Any]], clock: FrozenClock
) -> None:
    quota = opener(on_store_error="open")
    quota.set_limit("user:ann", "tokens", "day", 1_000)
    quota.set_limit("user:ann", "concurrent_requests", None, 1)
    outage[0].cut()
    held = quota.reserve("user:ann", tokens=500)
    dropped = quota.reserve("user:ann", tokens=700)
    lease = quota.acquire("user:ann", ttl=30)
    assert held.reservation is not None
    assert held.reservation.id.startswith(OPEN_PREFIX)
    assert held.decision.failed_open
    assert dropped.reservation is not None
    assert lease.lease is not None
    assert lease.lease.id.startswith(OPEN_PREFIX)
    committed = quota.commit(held.reservation.id, tokens=420)
    assert committed.failed_open
    assert not committed.replayed
    assert quota.commit(held.reservation.id, tokens=420).replayed
    assert quota.release(dropped.reservation.id) is True
    assert quota.release(dropped.reservation.id) is False
    assert quota.get_reservation(held.reservation.id).state.value == "committed"
    clock.advance(seconds=10)
    beat = quota.heartbeat(lease.lease.id, ttl=60)
    assert beat.expires_at > lease.lease.expires_at
    assert quota.release_lease(lease.lease.id) is True

    outage[0].restore()
    quota.drain()
    assert used(quota, "user:ann") == 420  # the commit, once; the released hold, never
    [event] = quota.events(subject="user:ann").items
    assert event.idempotency_key == f"commit:{held.reservation.id}"
    assert quota.acquire("user:ann").allowed  # the open lease was never in the store


def test_the_spool_survives_the_process_and_the_next_one_stores_it(
    opener: Any, outage: tuple[Proxy, dict[str, Any]], tmp_path: Path
) -> None:
    first = opener(on_store_error="open")
    first.set_limit("user:ann", "tokens", "day", 100)
    outage[0].cut()
    for i in range(5):
        assert first.consume("user:ann", tokens=7, idempotency_key=f"c{i}").failed_open
    first.close()  # as good as a crash: nothing more is written after the answers
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        assert conn.execute("SELECT count(*) FROM queued").fetchone() == (5,)
    outage[0].restore()
    second = opener(on_store_error="open")
    second.drain()
    assert used(second, "user:ann") == 35


# With only Redis away, PostgreSQL still refuses an unknown subject at once.
@pytest.mark.parametrize("outage", ["postgres"], indirect=True)
def test_what_the_store_refuses_for_good_is_set_aside(
    opener: Any, outage: tuple[Proxy, dict[str, Any]]
) -> None:
    """An unknown subject under strict_subjects: only PostgreSQL knows, and it is away."""
    quota = opener(on_store_error="open", strict_subjects=True)
    quota.put_subject("user:ann")
    quota.set_limit("user:ann", "tokens", "day", 100)
    assert quota.consume("user:ann", tokens=1).allowed  # the store answers
    outage[0].cut()
    assert quota.consume("user:ghost", tokens=5).failed_open  # cannot be checked now
    assert quota.consume("user:ann", tokens=5).failed_open
    outage[0].restore()
    quota.drain()
    assert quota.spool is not None
    assert quota.spool.depth() == 0
    [failed] = quota.spool.failed()
    assert failed["subject"] == "user:ghost"
    assert failed["error"].startswith("not_found")
    assert used(quota, "user:ann") == 6


def test_bad_settings_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as mode:
        tokenquota.open("memory://", on_store_error="maybe")  # type: ignore[arg-type]
    assert mode.value.details["field"] == "on_store_error"
    with pytest.raises(ValidationError) as spool:
        tokenquota.open("memory://", on_store_error="open", spool=tmp_path)
    assert spool.value.details["field"] == "spool"


@pytest.mark.parametrize("outage", ["postgres"], indirect=True)
def test_the_service_fails_open_over_http_and_a_killed_replica_loses_nothing(
    outage: tuple[Proxy, dict[str, Any]], fleet: Fleet, postgres_url: str, tmp_path: Path
) -> None:
    """``serve --on-store-error open``: consumes go on through the outage; the replica
    is SIGKILLed with them queued, and the next one on the same spool stores them."""
    proxy, args = outage
    serve = ["--db", args["url"], "--on-store-error", "open", "--spool", str(tmp_path / "q.db")]
    [replica] = fleet.start(1, serve)
    with client(replica.url, ADMIN_KEY) as admin:
        limits = {"limits": [{"metric": "tokens", "window": "day", "limit": 100}]}
        assert admin.put("/v1/subjects/user:ann/limits", json=limits).status_code == 200
        keys = [admin.post("/v1/keys", json={"role": "service", "name": n}) for n in "ab"]
        used_key, unseen_key = (k.json()["key"] for k in keys)
    with client(replica.url, used_key) as app:
        body = {"subject": "user:ann", "amounts": {"tokens": 10}}
        first = app.post("/v1/consume", json=body)
        assert first.status_code == 200
        assert first.json()["failed_open"] is False
        proxy.cut()
        for i in range(5):
            answer = app.post("/v1/consume", json={**body, "idempotency_key": f"o{i}"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["failed_open"] is True
            assert answer.json()["allowed"] is True
        assert app.get("/readyz").status_code == 503
        metrics = app.get("/metrics").text
        assert 'tokenquota_failed_open_total{operation="consume"} 5.0' in metrics
    with client(replica.url, unseen_key) as stranger:  # a key this replica never checked
        refused = stranger.post("/v1/consume", json=body)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
    replica.kill()

    proxy.restore()
    [again] = fleet.start(1, serve)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and used_over_http(again.url, ADMIN_KEY, "user:ann") != {
        ("tokens", "day"): 60
    }:
        time.sleep(0.2)
    assert used_over_http(again.url, ADMIN_KEY, "user:ann") == {("tokens", "day"): 60}
    stored = stored_event_keys(postgres_url)
    assert {k: stored[k] for k in (f"o{i}" for i in range(5))} == {f"o{i}": 1 for i in range(5)}


def test_with_redis_cached_limits_are_still_enforced_while_postgresql_is_away(
    postgres_url: str, redis_url: str, clock: FrozenClock
) -> None:
    """The hot path needs only Redis once a replica has a subject's limits cached."""
    proxy, db = _proxied(postgres_url)
    with proxy, tokenquota.open(db, redis=redis_url, clock=clock) as quota:
        quota.set_limit("user:ann", "tokens", "day", 100)
        assert quota.consume("user:ann", tokens=60).allowed
        proxy.cut()
        enforced = quota.consume("user:ann", tokens=30)
        assert enforced.allowed
        assert not enforced.failed_open
        assert not quota.consume("user:ann", tokens=30).allowed  # 90 + 30 > 100
        with pytest.raises(StoreUnavailable):  # not cached: PostgreSQL must answer
            quota.consume("user:new", tokens=1)
        proxy.restore()
        assert used(quota, "user:ann") == 90
        assert len(quota.events(subject="user:ann").items) == 2
