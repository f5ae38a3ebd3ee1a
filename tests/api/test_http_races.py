"""Races over real HTTP (contract §10): no overspend, and a retried key charges once.

The engine's own race tests call it directly; these go through uvicorn, the
thread pool the routes run on and the SQLite store, as a fleet of clients would.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock
from tokenquota.wire.metrics import encode_amounts

pytestmark = pytest.mark.slow

CALLERS = 64
LIMIT_TOKENS = 1_000
TOKENS_PER_REQUEST = 10
# Each caller stops at its first 429; at most LIMIT / PER requests are admitted in all,
# so no caller can legitimately need more tries than this.
MAX_TRIES_PER_CALLER = LIMIT_TOKENS // TOKENS_PER_REQUEST + 2
BARRIER_TIMEOUT_SECONDS = 30.0
JOIN_TIMEOUT_SECONDS = 120.0
# Midday, so the day window cannot roll over while the test runs.
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def race_to_the_limit(api: Api, subjects: list[str]) -> tuple[int, Counter[int], int]:
    """CALLERS threads, caller i consuming for subjects[i % len], each until its first 429.

    Returns (tokens admitted, status codes seen, callers that ran out of tries).
    """
    barrier = threading.Barrier(CALLERS, timeout=BARRIER_TIMEOUT_SECONDS)
    lock = threading.Lock()
    admitted = 0
    statuses: Counter[int] = Counter()
    exhausted = 0
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        nonlocal admitted, exhausted
        subject = subjects[index % len(subjects)]
        body = {"subject": subject, "amounts": {"tokens": TOKENS_PER_REQUEST}}
        try:
            with api.client() as client:
                barrier.wait()
                for _ in range(MAX_TRIES_PER_CALLER):
                    response = client.post("/v1/consume", json=body)
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code == 200:
                            admitted += response.json()["amounts"]["tokens"]
                    if response.status_code != 200:
                        return
                with lock:
                    exhausted += 1
        except BaseException as exc:  # reported by the main thread, which can fail the test
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a caller did not finish"
    assert not errors, errors
    return admitted, statuses, exhausted


def ledger_tokens(api: Api, subject: str) -> int:
    """Tokens in the ledger's events for the subject: the source of truth, not a counter."""
    total = 0
    for event in api.quota.iter_events(subject=subject):
        tokens = encode_amounts(event.amounts).get("tokens")
        assert isinstance(tokens, int), event
        total += tokens
    return total


def test_64_concurrent_callers_are_admitted_exactly_the_limit(make_api: ServerFactory) -> None:
    api = make_api(clock=FrozenClock(NOON))
    api.quota.set_limit("user:alice", "tokens", "day", LIMIT_TOKENS)

    admitted, statuses, exhausted = race_to_the_limit(api, ["user:alice"])

    assert admitted == LIMIT_TOKENS
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] == LIMIT_TOKENS // TOKENS_PER_REQUEST
    assert statuses[429] == CALLERS  # every caller stopped on a denial
    assert exhausted == 0
    assert api.quota.usage("user:alice").limits[0].used == LIMIT_TOKENS
    assert ledger_tokens(api, "user:alice") == LIMIT_TOKENS


def test_siblings_racing_for_their_parents_limit_never_overspend_it(
    make_api: ServerFactory,
) -> None:
    api = make_api(clock=FrozenClock(NOON))
    users = [f"user:u{i}" for i in range(16)]
    for user in users:
        api.quota.set_parents(user, ["company:acme"])
    api.quota.set_limit("company:acme", "tokens", "day", LIMIT_TOKENS)

    admitted, statuses, exhausted = race_to_the_limit(api, users)

    assert admitted == LIMIT_TOKENS
    assert set(statuses) == {200, 429}, statuses
    assert exhausted == 0
    assert api.quota.usage("company:acme").limits[0].used == LIMIT_TOKENS
    assert sum(ledger_tokens(api, user) for user in users) == LIMIT_TOKENS


RETRIES = 20


async def retry_concurrently(api: Api, body: dict[str, object]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # One connection per retry, as separate clients retrying after a timeout would.
    limits = httpx.Limits(max_connections=RETRIES)
    async with httpx.AsyncClient(
        base_url=api.url, headers=headers, timeout=30, limits=limits
    ) as client:
        return await asyncio.wait_for(
            asyncio.gather(*(client.post("/v1/consume", json=body) for _ in range(RETRIES))),
            timeout=JOIN_TIMEOUT_SECONDS,
        )


def test_concurrent_retries_of_one_idempotency_key_charge_once(make_api: ServerFactory) -> None:
    api = make_api(clock=FrozenClock(NOON))
    api.quota.set_limit("user:bob", "tokens", "day", 1_000)
    body: dict[str, object] = {
        "subject": "user:bob",
        "amounts": {"tokens": 300},
        "idempotency_key": "req-7f3a",
    }

    responses = asyncio.run(retry_concurrently(api, body))

    assert [r.status_code for r in responses] == [200] * RETRIES
    decisions = [r.json() for r in responses]
    assert sum(not d["replayed"] for d in decisions) == 1
    assert {d["event_id"] for d in decisions} == {decisions[0]["event_id"]}
    assert all(d["allowed"] for d in decisions)
    assert api.quota.events(subject="user:bob").total == 1
    assert api.quota.usage("user:bob").limits[0].used == 300
    assert ledger_tokens(api, "user:bob") == 300
