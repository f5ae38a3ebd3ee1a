"""The thin request path: what each shortcut must still answer exactly as before.

- a cached key is answered on the event loop (``KeyCache.answer``): the same
  verdicts as ``Quota.authenticate``, and a miss for everything only the store
  can settle;
- decision answers are encoded with orjson: the same bytes Starlette's encoder
  writes, and Starlette's encoder for whatever orjson refuses;
- lanes are thread pools of their own: a call sees the request's context
  variables and is counted while it runs;
- the OpenAPI document still names both key schemes on every authenticated
  operation, though only one is a dependency.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from hypothesis import given
from hypothesis import strategies as st

import tokenquota
from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock
from tokenquota.engine.keycache import MISS, KeyCache
from tokenquota.http.capacity import Threads
from tokenquota.http.responses import FastJSONResponse
from tokenquota.wire.decisions import encode_decision

START = datetime(2026, 3, 10, 12, tzinfo=UTC)


# the key cache, on the event loop ---------------------------------------------------
def test_the_cache_answers_as_the_engine_does_and_misses_what_only_the_store_knows() -> None:
    clock = FrozenClock(START)
    with tokenquota.open("memory://", clock=clock) as quota:
        key, secret = quota.create_key("service")
        assert quota.keys.answer(secret) is MISS  # never looked up here
        assert quota.authenticate(secret) == key
        assert quota.keys.answer(secret) == key

        wrong = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")
        assert quota.keys.answer(wrong) is None  # refused without the store
        assert quota.authenticate(wrong) is None
        assert quota.keys.answer("not-a-key") is None
        assert quota.authenticate("not-a-key") is None
        assert quota.keys.answer(f"tq_{'0' * 16}_{'x' * 43}") is MISS  # unknown id

        clock.advance(seconds=1)  # past the bound: only the store may say
        assert quota.keys.answer(secret) is MISS
        assert quota.authenticate(secret) == key
        quota.revoke_key(key.id)
        assert quota.keys.answer(secret) is MISS
        assert quota.authenticate(secret) is None


def test_a_cache_turned_off_always_misses() -> None:
    with tokenquota.open("memory://", clock=FrozenClock(START), key_cache_seconds=0) as quota:
        _, secret = quota.create_key("service")
        assert quota.authenticate(secret) is not None
        assert quota.keys.answer(secret) is MISS


def test_a_revoked_entry_is_never_answered_from_the_cache() -> None:
    clock = FrozenClock(START)
    with tokenquota.open("memory://", clock=clock) as quota:
        key, secret = quota.create_key("service")
        found = quota.store.get_key(key.id)
        assert found is not None
        cache = KeyCache(clock, 1.0)
        cache.put(key.id, (replace(found[0], revoked_at=START), found[1]))
        assert cache.answer(secret) is MISS  # put() forgets it; the store decides


def test_over_http_a_key_revoked_elsewhere_is_refused_within_the_bound(
    make_api: ServerFactory, tmp_path: Path
) -> None:
    clock = FrozenClock(START)
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    one = make_api(clock=clock, db=db)
    other = make_api(clock=clock, db=db)
    key, secret = one.quota.create_key("service")
    body = {"subject": "user:ann", "amounts": {"tokens": 1}}

    def consume(api: Api) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/consume", json=body, headers={"X-API-Key": secret})

    assert consume(other).status_code == 200  # a miss: looked up on a thread
    assert consume(other).status_code == 200  # a hit: answered on the loop
    with httpx.Client(base_url=one.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        assert admin.delete(f"/v1/keys/{key.id}").status_code == 204
    assert consume(other).status_code == 200  # still within its bound
    clock.advance(seconds=1)
    refused = consume(other)
    assert refused.status_code == 401
    assert refused.json()["error"] == {
        "code": "unauthorized",
        "message": "the API key is not valid",
        "details": {},
    }
    assert refused.headers["WWW-Authenticate"] == "Bearer"


# orjson, with Starlette's bytes ------------------------------------------------------
def starlette_bytes(content: Any) -> bytes:
    return bytes(JSONResponse(content).body)


def test_a_decision_is_encoded_to_the_same_bytes() -> None:
    with tokenquota.open("memory://", clock=FrozenClock(START)) as quota:
        quota.set_parents("user:ann", ["company:acme"])
        quota.set_limit("user:ann", "tokens", "day", 100)
        quota.set_limit("company:acme", "credits", "month", "12.5")
        quota.set_limit("user:ann", "requests", "minute", -1)
        allowed = quota.consume("user:ann", {"tokens": 60, "credits": "0.000001"})
        denied = quota.consume("user:ann", {"tokens": 60})
    for decision in (allowed, denied):
        body = encode_decision(decision)
        assert bytes(FastJSONResponse(body).body) == starlette_bytes(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_wire_values_are_encoded_to_the_same_bytes(value: Any) -> None:
    assert bytes(FastJSONResponse(value).body) == starlette_bytes(value)


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70},  # past 64 bits: orjson refuses
        {1: "a non-str key"},
        {"nested": [{"x": -(2**64)}]},
    ],
)
def test_what_orjson_refuses_falls_back_to_starlettes_encoder(value: Any) -> None:
    assert bytes(FastJSONResponse(value).body) == starlette_bytes(value)


def test_what_neither_encodes_fails_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        JSONResponse({"text": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        FastJSONResponse({"text": "\ud800"})


# lanes -----------------------------------------------------------------------------
def test_a_lane_runs_calls_on_its_own_threads_with_the_requests_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    lane = Threads("decisions", 2)
    entered = threading.Barrier(3)
    release = threading.Event()

    def call() -> tuple[str, str]:
        entered.wait(timeout=30)
        release.wait(timeout=30)
        return threading.current_thread().name, request_id.get()

    async def main() -> list[tuple[str, str]]:
        async def one(name: str) -> tuple[str, str]:
            request_id.set(name)
            return await lane.run(call)

        tasks = [asyncio.create_task(one(name)) for name in ("a", "b")]
        await asyncio.to_thread(entered.wait, 30)
        running = lane.borrowed_tokens
        release.set()
        answers = await asyncio.gather(*tasks)
        assert running == 2
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        lane.close()
    assert [seen for _, seen in answers] == ["a", "b"]
    assert all(thread.startswith("tokenquota-decisions") for thread, _ in answers)
    assert lane.borrowed_tokens == 0
    assert asyncio.run(lane.run(lambda: 7)) == 7  # a closed lane opens again when used
    lane.close()


# the OpenAPI document ----------------------------------------------------------------
def test_every_authenticated_operation_documents_both_key_schemes(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {
            "type": "http",
            "description": "Authorization: Bearer <key> (or Token <key>)",
            "scheme": "bearer",
        },
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    both: list[dict[str, list[str]]] = [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    secured = [
        (path, method)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if "security" in operation
    ]
    assert ("/v1/consume", "post") in secured
    assert ("/api/chat-quota/usage/", "get") in secured  # a surface's too
    for path, method in secured:
        assert schema["paths"][path][method]["security"] == both, (path, method)
    public = {"/healthz", "/readyz", "/metrics"}
    assert public.isdisjoint(path for path, _ in secured)
