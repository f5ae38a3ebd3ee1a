"""Hostile input to the gateway's routes: an OpenAI-shaped 4xx, never a 5xx, nothing charged.

Generated bodies put hostile values (wrong types, huge and negative numbers,
control characters, deep nesting, lone surrogates) where the gateway reads
fields; each answer must be a 4xx in OpenAI's error shape naming the field, or
a success the upstream really answered, and nothing may stay held.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import Gateway
from tests.gateway.ledger import events
from tests.gateway.test_sdk import USER, member

HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\x00", "\ud800", "user:\x07", "a" * 5_000, "local/", "/", "user:"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELDS = (
    "model",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "user",
)
VALID: dict[str, dict[str, Any]] = {
    "/chat/completions": {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/completions": {"model": "gpt-4o", "prompt": "hi", "max_tokens": 2},
    "/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
}


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


def check(answer: httpx.Response, what: str) -> None:
    said = f"{what}: {answer.status_code} {answer.text[:300]}"
    assert answer.status_code < 500, said
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, said


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(sorted(VALID)),
    field=st.sampled_from(FIELDS),
    value=HOSTILE,
)
def test_hostile_fields(gateway: Gateway, path: str, field: str, value: Any) -> None:
    key = member(gateway)
    body = {**VALID[path], field: value}
    before = len(events(gateway.quota, USER))
    with gateway.http(key) as http:
        answer = http.post(path, content=encode(body), headers={"content-type": "application/json"})
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            answer.read()
    check(answer, f"{path} with {field}={value!r}")
    if answer.status_code >= 400:
        assert len(events(gateway.quota, USER)) == before
    assert gateway.held(USER) == {}


def test_hostile_whole_bodies(gateway: Gateway) -> None:
    key = member(gateway)
    deep = b"[" * 100_000 + b"]" * 100_000
    with gateway.http(key) as http:
        for path in VALID:
            for raw in (b"", b"null", b"1", b'"x"', b"{", deep, b"\xff\xfe", encode({"model": 1})):
                answer = http.post(path, content=raw, headers={"content-type": "application/json"})
                check(answer, f"{path} with {raw[:20]!r}")
                assert answer.status_code in (413, 422), answer.text
    assert events(gateway.quota, USER) == []
