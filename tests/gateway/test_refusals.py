"""Refusals speak OpenAI: 429, OpenAI's error body, Retry-After and x-ratelimit-* headers,
and a member never sees its ancestors' or a resource's figures in them (contract §10).
"""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import Gateway
from tests.gateway.ledger import events
from tests.gateway.test_sdk import MESSAGES, USER, member

COMPANY = "company:acme"


def completions_sent(gateway: Gateway) -> int:
    return sum(1 for r in gateway.upstream.requests if r.path != "/v1/models")


def test_a_company_budget_refuses_with_openai_headers_without_its_figures(
    gateway: Gateway,
) -> None:
    gateway.quota.put_subject(COMPANY)
    key = member(gateway)
    gateway.quota.put_subject(USER, parents=[COMPANY])
    gateway.quota.set_limit(COMPANY, "tokens", "day", 100)
    sdk = gateway.sdk(key)
    first = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    assert first.usage is not None
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    refusal = caught.value
    assert refusal.status_code == 429
    assert isinstance(refusal.body, dict)
    assert set(refusal.body) == {"message", "type", "param", "code"}
    assert refusal.body["code"] == "rate_limit_exceeded"
    assert "an ancestor's tokens limit" in refusal.body["message"]
    assert COMPANY not in refusal.body["message"]
    headers = refusal.response.headers
    assert int(headers["Retry-After"]) > 0
    # The member's own tokens/day limit, never the company's 100.
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    assert headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - first.usage.total_tokens)
    assert headers["x-ratelimit-limit-requests"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "999"
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "100" not in [v for k, v in headers.items() if k.startswith("x-ratelimit")]
    assert completions_sent(gateway) == 1
    assert gateway.held(USER) == {}

    # A service key sees whatever is tightest, the company included.
    service = gateway.sdk(gateway.key("service"))
    with pytest.raises(openai.RateLimitError) as seen_by_service:
        service.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=50,
            extra_headers={"X-TokenQuota-Subject": USER},
        )
    assert seen_by_service.value.response.headers["x-ratelimit-limit-tokens"] == "100"
    assert COMPANY in str(seen_by_service.value.message)


def test_answers_carry_the_rate_limit_headers(gateway: Gateway) -> None:
    with gateway.http(member(gateway)) as http:
        answer = http.post(
            "/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 3},
        )
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"
    # Measured with the reservation in place: prompt + max_tokens held.
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) < 1_000_000


def test_a_budget_that_can_never_fit_is_insufficient_quota(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    gateway.quota.set_limit(USER, "tokens", "day", 10)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "insufficient_quota"
    assert "Retry-After" not in caught.value.response.headers
    assert completions_sent(gateway) == 0


def test_input_sequence_length_is_enforced_before_forwarding(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    gateway.quota.set_limit(USER, "input_sequence_length", None, 20)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "word " * 40}],
            max_tokens=1,
        )
    assert completions_sent(gateway) == 0
    sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "short"}], max_tokens=1
    )
    assert len(events(gateway.quota, USER)) == 1


def test_a_concurrency_limit_holds_a_slot_per_running_call(gateway: Gateway) -> None:
    gateway.upstream.pause_after = 1
    sdk = gateway.sdk(member(gateway))
    gateway.quota.set_limit(USER, "concurrent_requests", None, 1)
    running = sdk.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=5, stream=True
    )
    next(iter(running))
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    running.close()
    gateway.upstream.pause_after = None
    for _ in range(200):  # the slot comes back once the gateway has seen the disconnect
        try:
            sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
            break
        except openai.RateLimitError:
            pass
    else:
        raise AssertionError("the slot never came back")


def test_a_resource_quota_on_the_upstream_is_charged(gateway: Gateway) -> None:
    gateway.quota.set_resource_quota(
        "deployment:local", {"capacity": {"value": 2, "units": "requests"}}
    )
    sdk = gateway.sdk(member(gateway))
    for _ in range(2):
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    assert "a resource's requests limit" in caught.value.message
    assert [str(e.resource) for e in events(gateway.quota, USER)] == ["deployment:local"] * 2
