"""The hot routes' short way (``http.fastpath``) answers exactly what FastAPI's path answers.

A ``Content-Type`` with a charset is not exactly ``application/json``, so the
same request with one goes the usual way: each test sends both and compares
status, headers and bytes. Refusals (a bad body, a bad key) are declined by
the short way and answered by the framework, with the body replayed.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import tokenquota
from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock
from tokenquota.http.auth import KeyLookups

START = datetime(2026, 3, 10, 12, tzinfo=UTC)
SHORT = "application/json"
USUAL = "application/json; charset=utf-8"  # not exactly JSON's type: the usual path


def both(api: Api, path: str, content: bytes, headers: dict[str, str]) -> list[httpx.Response]:
    return [
        httpx.post(f"{api.url}{path}", content=content, headers={**headers, "Content-Type": kind})
        for kind in (SHORT, USUAL)
    ]


def same(answers: list[httpx.Response]) -> httpx.Response:
    short, usual = answers
    assert short.status_code == usual.status_code
    assert short.content == usual.content
    assert headers_of(short) == headers_of(usual)
    return short


def headers_of(answer: httpx.Response) -> dict[str, str]:
    """The headers, but the two that differ between any two answers: the date and the
    request id the service made up (test_observability.py checks that one)."""
    assert answer.headers.get("x-request-id")
    return {
        name: value
        for name, value in answer.headers.items()
        if name not in ("date", "x-request-id")
    }


def fresh(make_api: ServerFactory) -> Api:
    api = make_api(clock=FrozenClock(START))
    api.quota.set_limit("user:ann", "tokens", "day", 100)
    return api


@pytest.fixture
def frozen(make_api: ServerFactory) -> Api:
    return fresh(make_api)


@pytest.mark.parametrize(
    "body",
    [
        b'{"subject": "user:ann", "amounts": {"tokens": 5}}',
        b'{"subject": "user:ann", "amounts": {"tokens": 500}}',  # denied: 429 for consume
        b'{"subject": "not a subject", "amounts": {"tokens": 5}}',  # the engine's 422
        b'{"subject": "user:ann", "amounts": {"tokens": -1}}',
        b'{"subject": "user:ann", "amounts": {"tokens": 1e400}}',  # json.loads: inf
        b'{"subject": "user:ann", "amounts": {"tokens": 123456789012345678901234567890}}',
        b'{"subject": "user:ann", "amounts": {"tokens": 5}, "mode": "sideways"}',
        b'{"subject": "user:ann", "amounts": {"tokens": 5}, "extra": 1}',  # FastAPI's 422
        b'{"subject": "user:ann"',  # not JSON
        b"[1, 2]",
        b'{"subject": "user:ann", "amounts": {"\\ud800": 5}}',  # a lone surrogate
    ],
)
@pytest.mark.parametrize("path", ["/v1/check", "/v1/consume"])
def test_every_answer_is_the_usual_paths(make_api: ServerFactory, path: str, body: bytes) -> None:
    # Two servers alike, one request each: a consume spends, so both must start equal.
    answers = []
    for kind in (SHORT, USUAL):
        api = fresh(make_api)
        headers = {"X-API-Key": api.key("service"), "Content-Type": kind}
        httpx.post(f"{api.url}/v1/check", content=b"{}", headers=headers)  # the key, cached
        answers.append(httpx.post(f"{api.url}{path}", content=body, headers=headers))
    same(answers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "tq_nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"Authorization": f"Token {ADMIN_KEY}", "X-API-Key": "tq_nope"},
    ],
)
def test_keys_are_settled_as_the_usual_path_settles_them(
    frozen: Api, headers: dict[str, str]
) -> None:
    body = b'{"subject": "user:ann", "amounts": {"tokens": 5}}'
    same(both(frozen, "/v1/check", body, headers))


def test_a_member_spending_for_another_is_refused_alike(frozen: Api) -> None:
    member = frozen.key("member", "user:bob")
    body = b'{"subject": "user:ann", "amounts": {"tokens": 5}}'
    answer = same(both(frozen, "/v1/consume", body, {"X-API-Key": member}))
    assert answer.status_code == 403


def test_an_answer_on_the_short_way_is_timed_under_its_route(frozen: Api) -> None:
    secret = frozen.key("service")
    body = b'{"subject": "user:ann", "amounts": {"tokens": 1}}'
    for _ in range(2):  # the first is a key cache miss either way
        answer = httpx.post(
            f"{frozen.url}/v1/consume",
            content=body,
            headers={"X-API-Key": secret, "Content-Type": SHORT},
        )
        assert answer.status_code == 200
    with httpx.Client(base_url=frozen.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        metrics = admin.get("/metrics").text
    assert 'tokenquota_request_seconds_count{method="POST",route="/v1/consume"} 2.0' in metrics


def test_a_streamed_body_is_read_once_whichever_way_it_goes(frozen: Api) -> None:
    secret = frozen.key("service")

    def chunks(body: bytes) -> Any:
        yield body[:7]
        yield body[7:]

    for body, status in [
        (b'{"subject": "user:ann", "amounts": {"tokens": 1}}', 200),
        (b'{"subject": "user:ann", "amounts": {"tokens": "x"}}', 422),
    ]:
        answer = httpx.post(
            f"{frozen.url}/v1/check",
            content=chunks(body),
            headers={"X-API-Key": secret, "Content-Type": SHORT},
        )
        assert answer.status_code == status, answer.text


def test_concurrent_misses_share_one_store_lookup() -> None:
    with tokenquota.open("memory://", clock=FrozenClock(START)) as quota:
        key, secret = quota.create_key("service")
        calls: list[str] = []
        lock = threading.Lock()
        real = quota.authenticate

        def counted(presented: str) -> Any:
            with lock:
                calls.append(presented)
            return real(presented)

        quota.authenticate = counted  # type: ignore[method-assign]
        lookups = KeyLookups()

        async def many() -> list[Any]:
            return await asyncio.gather(*(lookups.caller(quota, secret) for _ in range(20)))

        assert asyncio.run(many()) == [key] * 20
        assert len(calls) == 1
        assert asyncio.run(many()) == [key] * 20  # now cached: no lookup at all
        assert len(calls) == 1
        assert asyncio.run(lookups.caller(quota, secret[:-2] + "zz")) is None
