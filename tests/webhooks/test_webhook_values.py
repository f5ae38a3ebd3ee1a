"""The pure parts: URL and input checks, the backoff, the body, the secrets and their seal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.webhooks.outbox import alert
from tokenquota.domain.alerts import AlertKind
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.webhooks import (
    Endpoint,
    backoff,
    derive_secret,
    event_body,
    parse_delivery_id,
    parse_endpoint_id,
    parse_kinds,
    parse_url,
)
from tokenquota.engine.webhooks import SecretUnavailable, ServerKey

KEY = "a-server-key-of-enough-length"


def endpoint(sealed: str | None = None, id: str = "wh_0123456789abcdef01234567") -> Endpoint:
    return Endpoint(
        id=id,
        url="https://example.com/hook",
        events=frozenset(AlertKind),
        owner=None,
        description=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        disabled_at=None,
        sealed=sealed,
    )


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "http://127.0.0.1:8080/x?y=1", "https://[::1]/a"]
)
def test_good_urls_pass(url: str) -> None:
    assert parse_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["", "   ", "ftp://x.org/", "javascript:alert(1)", "http:///path", "https://x.org/\n", None],
)
def test_bad_urls_name_the_field(url: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_url(url, "url")
    assert caught.value.field == "url"


def test_kinds_default_to_all_and_repeat_once() -> None:
    assert parse_kinds(None) == frozenset(AlertKind)
    assert parse_kinds(["limit.denied", "limit.denied"]) == {AlertKind.DENIED}


@pytest.mark.parametrize("value", ["0", "-3", "x", "1e3", True, 0, " 1"])
def test_bad_delivery_ids(value: object) -> None:
    with pytest.raises(ValidationError):
        parse_delivery_id(value)


def test_ids_parse() -> None:
    assert parse_delivery_id("42") == 42
    assert parse_delivery_id(7) == 7
    assert parse_endpoint_id("wh_abc123") == "wh_abc123"
    with pytest.raises(ValidationError):
        parse_endpoint_id("wh_../../x")


@given(
    attempts=st.integers(1, 60),
    base=st.floats(0, 100),
    cap=st.floats(0, 10_000),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_full_jitter_under_the_exponential_ceiling(
    attempts: int, base: float, cap: float, draw: float
) -> None:
    wait = backoff(attempts, base, cap, draw)
    assert 0 <= wait <= min(cap, base * 2 ** (attempts - 1))


def test_backoff_grows_exponentially_until_the_cap() -> None:
    ceilings = [backoff(n, 1.0, 10.0, 0.999999) for n in range(1, 7)]
    assert ceilings == pytest.approx([1, 2, 4, 8, 10, 10], rel=1e-5)


def test_the_body_carries_wire_numbers() -> None:
    event = replace(alert(metric="credits", used=1_500_000_000, limit=2_000_000_000), id=9)
    body = event_body(event)
    assert body["id"] == 9
    assert body["type"] == "threshold.crossed"
    assert body["data"]["used"] == "1.5"
    assert body["data"]["limit"] == "2"
    assert set(body["data"]) == {
        "subject", "metric", "window", "period_start", "threshold", "used", "limit", "reset_at"
    }  # fmt: skip


def test_derived_secrets_depend_on_key_and_id() -> None:
    a = derive_secret(b"k1-xxxxxxxxxxxxxxxx", "wh_a")
    assert a == derive_secret(b"k1-xxxxxxxxxxxxxxxx", "wh_a")
    assert a != derive_secret(b"k1-xxxxxxxxxxxxxxxx", "wh_b")
    assert a != derive_secret(b"k2-xxxxxxxxxxxxxxxx", "wh_a")
    assert ServerKey(KEY).secret_of(endpoint()) == derive_secret(KEY.encode(), endpoint().id)


def test_a_sealed_secret_opens_only_under_its_key_and_for_its_endpoint() -> None:
    key = ServerKey(KEY)
    sealed = key.seal("the-users-own-secret", endpoint().id)
    assert "the-users-own-secret" not in sealed
    assert key.secret_of(endpoint(sealed)) == "the-users-own-secret"
    assert key.seal("the-users-own-secret", endpoint().id) != sealed  # a fresh nonce each time
    with pytest.raises(SecretUnavailable):
        ServerKey("another-server-key-entirely").secret_of(endpoint(sealed))
    with pytest.raises(SecretUnavailable):  # a row copied onto another endpoint
        key.secret_of(endpoint(sealed, id="wh_ffffffffffffffffffffffff"))
    with pytest.raises(SecretUnavailable):
        key.secret_of(endpoint(sealed[:-4] + "AAAA"))


def test_a_short_server_key_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        ServerKey("short")
    assert caught.value.field == "webhook_key"
