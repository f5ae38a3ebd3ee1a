"""Signed webhook bodies: how a receiver knows a delivery came from us, unchanged.

A delivery carries one header, ``TokenQuota-Signature: t=<unix seconds>,v1=<hex>``,
where ``v1`` is HMAC-SHA256 under the endpoint's secret of ``"<t>.<body>"``. The
timestamp is inside the signed text, so a captured delivery replayed later fails
the receiver's freshness check (``verify``'s ``tolerance``) instead of passing as
new. A header may carry several ``v1`` values while a secret is being rotated:
one matching value is enough. The scheme is the common one of payment and
messaging webhooks, so receivers can check it with a few lines in any language;
``verify`` is that check for Python, and the client re-exports it.

Pure code: the caller passes the time, as everywhere in the domain.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "TokenQuota-Signature"
SCHEME: Final = "v1"
# Five minutes: longer than any sane clock skew and delivery delay, short enough that
# a body captured in transit is useless soon after.
DEFAULT_TOLERANCE: Final = 300
# A header is short; a receiver should not parse an unbounded one from the network.
MAX_HEADER_LENGTH: Final = 1024


class SignatureError(ValueError):
    """A delivery whose signature does not hold; the message says which part failed."""


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    signed = str(int(timestamp)).encode() + b"." + body
    return hmac.new(_secret_bytes(secret), signed, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``TokenQuota-Signature`` header value for one delivery of ``body``."""
    return f"t={int(timestamp)},{SCHEME}={signature(secret, timestamp, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and every ``v1`` signature of a header; SignatureError if malformed."""
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError(f"the header is longer than {MAX_HEADER_LENGTH} characters")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"{part.strip()!r} is not name=value")
        if name == "t":
            if not value.isdigit() or timestamp is not None:
                raise SignatureError("t must appear once, as unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value)
        # Other schemes are ignored, so a later scheme can be added beside v1.
    if timestamp is None:
        raise SignatureError("the header has no t=")
    if not signatures:
        raise SignatureError(f"the header has no {SCHEME}=")
    return timestamp, signatures


def verify(
    secret: str | bytes,
    body: bytes,
    header: str,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> int:
    """Check a delivery as received; returns its timestamp, or raises SignatureError.

    ``body`` must be the raw bytes received (re-encoding parsed JSON changes them);
    ``now`` is the receiver's clock in unix seconds.
    """
    timestamp, signatures = parse(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"the timestamp is more than {tolerance} s from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("no signature matches the body under this secret")
    return timestamp


__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "SignatureError",
    "parse",
    "sign",
    "signature",
    "verify",
]
