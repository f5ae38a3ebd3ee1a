"""The official OpenAI SDK against the gateway: every endpoint, sync, async and streaming.

What the ledger records must be what the test upstream reported, to the token
(tests/gateway/upstream.py counts its prompt differently from the gateway's
estimate on purpose, so a gateway committing its estimate would fail here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.conftest import UPSTREAM_KEY, Gateway
from tests.gateway.ledger import amounts, events
from tokenquota.domain.prices import TAG_UPSTREAM
from tokenquota.gateway import tokens

USER = "user:alice"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name four Greek letters, please."},
]


def member(gateway: Gateway, subject: str = USER) -> str:
    """A member key for ``subject``, which gets roomy limits so that what it holds shows."""
    gateway.quota.put_subject(subject)
    gateway.quota.set_limits(
        subject,
        [
            {"metric": "tokens", "window": "day", "limit": 1_000_000},
            {"metric": "requests", "window": "day", "limit": 1_000},
            {"metric": "concurrent_requests", "window": None, "limit": 100},
        ],
    )
    return gateway.key("member", subject)


def only_event(gateway: Gateway, subject: str = USER) -> dict[str, object]:
    found = events(gateway.quota, subject)
    assert len(found) == 1, found
    event = found[0]
    assert event.kind == "commit"
    return {**amounts(event), "model": event.model, "upstream": event.tags.get(TAG_UPSTREAM)}


def test_models_list_and_retrieve(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    ids = [m.id for m in sdk.models.list()]
    assert ids == sorted(f"local/{m}" for m in gateway.upstream.models)
    assert sdk.models.retrieve("local/gpt-4o").owned_by == "local"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("local/no-such-model")


def test_chat_commits_the_reported_usage(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    answer = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    assert answer.choices[0].message.content == " alpha beta gamma delta alpha"
    assert only_event(gateway) == {
        "input_tokens": answer.usage.prompt_tokens,
        "output_tokens": 5,
        "tokens": answer.usage.total_tokens,
        "requests": 1,
        "model": "gpt-4o-mini",
        "upstream": "local",
    }
    assert gateway.held(USER) == {}


def test_the_upstream_sees_its_own_key_and_the_gateways_cap(gateway: Gateway) -> None:
    key = member(gateway)
    gateway.sdk(key).chat.completions.create(model="local/gpt-4o", messages=MESSAGES)
    seen = gateway.upstream.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in str(seen.headers)
    assert seen.body["model"] == "gpt-4o"
    assert seen.body["max_tokens"] == 1024  # the configured default, reserved and sent
    assert only_event(gateway)["output_tokens"] == gateway.upstream.output_tokens


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_passes_through_and_commits(gateway: Gateway, include_usage: bool) -> None:
    sdk = gateway.sdk(member(gateway))
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True} if include_usage else openai.omit,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " alpha beta gamma delta alpha beta gamma"
    reported = [c.usage for c in chunks if c.usage is not None]
    assert gateway.upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    event = only_event(gateway)
    assert event["output_tokens"] == 7
    if include_usage:
        assert len(reported) == 1
        assert event["input_tokens"] == reported[0].prompt_tokens
        assert event["tokens"] == reported[0].total_tokens
    else:
        assert reported == []  # the chunk the client did not ask for is dropped
        assert event["input_tokens"] == gateway.upstream.chat_prompt_tokens({"messages": MESSAGES})
    assert gateway.held(USER) == {}


def test_completions_sync_and_stream(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    answer = sdk.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=3)
    assert answer.usage is not None
    assert answer.choices[0].text == " alpha beta gamma"
    streamed = list(
        sdk.completions.create(
            model="gpt-4o-mini",
            prompt=["Once", "upon"],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in streamed if c.usage is not None]
    assert len(usage) == 1
    found = [amounts(e) for e in events(gateway.quota, USER)]
    assert [(f["input_tokens"], f["output_tokens"]) for f in found] == [
        (answer.usage.prompt_tokens, 3),
        (usage[0].prompt_tokens, 4),
    ]
    assert gateway.held(USER) == {}


def test_embeddings(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    answer = sdk.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    assert len(answer.data) == 2
    event = only_event(gateway)
    assert event["input_tokens"] == answer.usage.prompt_tokens
    assert event.get("output_tokens", 0) == 0
    assert event["model"] == "text-embedding-3-small"


def test_async_sdk_every_endpoint(gateway: Gateway) -> None:
    key = member(gateway)

    async def run() -> tuple[int, int]:
        async with gateway.async_sdk(key) as sdk:
            chat = await sdk.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=2
            )
            stream = await sdk.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = [c.usage async for c in stream if c.usage is not None]
            await sdk.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
            await sdk.embeddings.create(model="text-embedding-3-small", input="hello")
            assert chat.usage is not None
            return chat.usage.prompt_tokens, usage[0].prompt_tokens

    chat_prompt, stream_prompt = asyncio.run(run())
    found = [amounts(e) for e in events(gateway.quota, USER)]
    assert [(f["input_tokens"], f.get("output_tokens", 0)) for f in found] == [
        (chat_prompt, 2),
        (stream_prompt, 6),
        (tokens.count("gpt-4o", "x"), 1),
        (tokens.count("text-embedding-3-small", "hello"), 0),
    ]
    assert gateway.held(USER) == {}


def test_a_service_key_names_who_pays(gateway: Gateway) -> None:
    gateway.quota.put_subject("user:bob")
    gateway.quota.put_subject("user:carol")
    sdk = gateway.sdk(gateway.key("service"))
    sdk.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=1,
        extra_headers={"X-TokenQuota-Subject": "user:bob"},
    )
    sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1, user="user:carol")
    assert len(events(gateway.quota, "user:bob")) == 1
    assert len(events(gateway.quota, "user:carol")) == 1
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "X-TokenQuota-Subject"
    assert error["type"] == "invalid_request_error"


def test_a_member_pays_only_as_itself(gateway: Gateway) -> None:
    gateway.quota.put_subject("user:bob")
    sdk = gateway.sdk(member(gateway))
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_headers={"X-TokenQuota-Subject": "user:bob"},
        )
    # The OpenAI user field is the application's end-user id: a member still pays.
    sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1, user="user:bob")
    assert len(events(gateway.quota, USER)) == 1
    assert events(gateway.quota, "user:bob") == []


def test_bad_keys_and_bodies_are_openai_errors(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.sdk("not-a-key").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "invalid_api_key"
    with gateway.http(member(gateway)) as http:
        for body, field in [
            (b"not json", "body"),
            (b'{"model": "local/' + b"m" * 200 + b'", "messages": []}', "model"),
            (b'{"model": "gpt-4o", "messages": [1]}', "messages"),
            (b'{"model": "gpt-4o", "messages": [{}], "stream": "yes"}', "stream"),
            (b"[]", "body"),
            (b'{"messages": []}', "model"),
            (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
            (
                b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], '
                b'"max_tokens": -1}',
                "max_tokens",
            ),
        ]:
            answer = http.post("/chat/completions", content=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["param"] == field
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert events(gateway.quota, USER) == []
    assert [r.path for r in gateway.upstream.requests if r.path != "/v1/models"] == []


def test_unknown_model_is_an_openai_404(gateway: Gateway) -> None:
    sdk = gateway.sdk(member(gateway))
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    assert gateway.held(USER) == {}


def test_upstream_errors_pass_through_and_charge_nothing(gateway: Gateway) -> None:
    gateway.upstream.fail_status = 503
    sdk = gateway.sdk(member(gateway))
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream)
        assert caught.value.status_code == 503
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["message"] == "the upstream failed (test knob)"
    assert events(gateway.quota, USER) == []
    assert gateway.held(USER) == {}


def test_an_unreachable_upstream_is_a_502_and_charges_nothing(
    make_gateway: Any,
) -> None:
    gateway = make_gateway(upstream_settings={"url": "http://127.0.0.1:9/v1", "models": ["m"]})
    sdk = gateway.sdk(member(gateway))
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert events(gateway.quota, USER) == []
    assert gateway.held(USER) == {}


def test_routing_by_name_and_configured_lists(make_gateway: Any, serve_upstream: Any) -> None:
    other = serve_upstream(models=("llama-3-8b", "gpt-4o"))
    first = serve_upstream(api_key=UPSTREAM_KEY)
    gateway = make_gateway(
        upstream=first,
        upstreams=[
            {"name": "a", "url": first.url, "api_key": UPSTREAM_KEY, "models": ["gpt-4o-mini"]},
            {"name": "b", "url": other.url},
        ],
    )
    sdk = gateway.sdk(member(gateway))
    sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    sdk.chat.completions.create(model="llama-3-8b", messages=MESSAGES, max_tokens=1)
    sdk.chat.completions.create(model="b/gpt-4o", messages=MESSAGES, max_tokens=1)
    assert [(e.model, e.tags[TAG_UPSTREAM]) for e in events(gateway.quota, USER)] == [
        ("gpt-4o-mini", "a"),
        ("llama-3-8b", "b"),
        ("gpt-4o", "b"),
    ]
    assert len(first.upstream.requests) == 1
    assert [r.path for r in other.upstream.requests] == [
        "/v1/models",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ]


def test_raw_http_error_shape_has_no_native_fields(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
        answer = http.get("/models")
    assert answer.status_code == 401
    assert set(answer.json()) == {"error"}
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
