"""The webhook signature: what a receiver checks, and every way a forged one fails."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenquota.domain.webhooks import SignatureError, parse, sign, verify

SECRET = "whsec_test"
BODY = b'{"type":"threshold.crossed","threshold":80}'
NOW = 1_800_000_000


def test_header_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"t={NOW},v1={expected}"


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=64))
def test_a_signed_body_verifies(body: bytes, secret: str) -> None:
    assert verify(secret, body, sign(secret, NOW, body), now=NOW + 5) == NOW


@pytest.mark.parametrize(
    ("secret", "body", "message"),
    [
        ("other", BODY, "no signature matches"),
        (SECRET, BODY + b" ", "no signature matches"),
    ],
)
def test_another_secret_or_body_fails(secret: str, body: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(secret, body, sign(SECRET, NOW, BODY), now=NOW)


def test_an_old_delivery_fails_the_freshness_check() -> None:
    header = sign(SECRET, NOW, BODY)
    verify(SECRET, BODY, header, now=NOW + 300)
    with pytest.raises(SignatureError, match="300 s"):
        verify(SECRET, BODY, header, now=NOW + 301)


def test_a_moved_timestamp_breaks_the_signature() -> None:
    header = sign(SECRET, NOW, BODY).replace(f"t={NOW}", f"t={NOW + 60}")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(SECRET, BODY, header, now=NOW + 60)


def test_during_a_rotation_one_matching_signature_is_enough() -> None:
    old = sign("old-secret", NOW, BODY).split(",")[1]
    header = f"{sign(SECRET, NOW, BODY)},{old}"
    assert parse(header)[1][1] == old.removeprefix("v1=")
    verify("old-secret", BODY, header, now=NOW)
    verify(SECRET, BODY, header, now=NOW)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "not name=value"),
        ("v1=abc", "no t="),
        (f"t={NOW}", "no v1="),
        ("t=-5,v1=ab", "unix seconds"),
        (f"t={NOW},t={NOW},v1=ab", "once"),
        ("t=1," + "v1=a" * 400, "longer than"),
    ],
)
def test_malformed_headers_say_what_is_wrong(header: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, BODY, header, now=NOW)
