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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.metrics import Metric, from_units, wire_number
from tokenquota.domain.text import check_text

SIGNATURE_HEADER: Final = "TokenQuota-Signature"
EVENT_ID_HEADER: Final = "TokenQuota-Event-Id"
DELIVERY_ID_HEADER: Final = "TokenQuota-Delivery-Id"
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


# endpoints and deliveries ---------------------------------------------------------
MAX_URL_LENGTH: Final = 2048  # the column's width
MAX_DESCRIPTION_LENGTH: Final = 256
# A secret the user brings must be worth signing with, and fit a sealed column.
MIN_SECRET_LENGTH: Final = 16
MAX_SECRET_LENGTH: Final = 256
ENDPOINT_PREFIX: Final = "wh_"
MAX_ERROR_LENGTH: Final = 512


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or its first)
    DELIVERED = "delivered"  # a 2xx answered
    FAILED = "failed"  # every attempt failed: the dead letter, until redelivered


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where alert events go. ``owner`` is the member subject that made it (None: staff's).

    An endpoint with an owner gets only events of that subject and the subjects
    below it (contract §10). ``sealed`` is the user's own secret, sealed under
    the server's key; None when the secret is derived from the key and the id.
    """

    id: str
    url: str
    events: frozenset[AlertKind]
    owner: str | None
    description: str | None
    created_at: datetime
    disabled_at: datetime | None
    sealed: str | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert event on its way to one endpoint: what the worker claims and retries."""

    id: int
    event_id: int
    endpoint_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


# The audit log's actions for endpoint changes (docs/webhooks.md, "Audit").
AUDIT_CREATE: Final = "webhook.create"
AUDIT_UPDATE: Final = "webhook.update"
AUDIT_DELETE: Final = "webhook.delete"
AUDIT_SECRET: Final = "webhook.secret"


def audit_target(endpoint: Endpoint) -> str:
    """Whom an endpoint's changes are audited under: its owner's subject ref, so the
    subject's audit trail shows them; ``webhooks/<id>`` for staff's endpoints, which
    belong to no subject (a "/" no subject ref may hold, as ``plans/<id>``)."""
    return endpoint.owner if endpoint.owner is not None else f"webhooks/{endpoint.id}"


@dataclass(frozen=True, slots=True)
class SubjectAlert:
    """One alert event as ``GET /v1/subjects/{ref}/alerts`` shows it: the webhook body's
    fields, with amounts in the metric's own numbers (Decimal for credits), and the
    deliveries the caller may see."""

    id: int
    type: AlertKind
    created_at: datetime
    subject: str
    metric: str
    window: str | None
    period_start: datetime | None
    threshold: int | None
    used: int | Decimal
    limit: int | Decimal
    reset_at: datetime | None
    deliveries: tuple[Delivery, ...] = ()


def parse_url(value: object, field: str = "url") -> str:
    """An absolute http(s) URL with a host, at most MAX_URL_LENGTH characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be an http:// or https:// URL")
    if len(value) > MAX_URL_LENGTH:
        raise ValidationError(field, f"must be at most {MAX_URL_LENGTH} characters")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValidationError(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        # Read for its check alone: a port that is not a number in range raises here,
        # not later in the delivery worker, where nobody would see why.
        _ = parts.port
    except ValueError as exc:
        raise ValidationError(field, f"is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise ValidationError(field, "must start with http:// or https://")
    if not parts.hostname:
        raise ValidationError(field, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(field, "must not carry credentials; the signature authenticates")
    return value


def parse_kinds(value: object, field: str = "events") -> frozenset[AlertKind]:
    """A non-empty list of event types (``AlertKind`` values); None means all of them."""
    if value is None:
        return frozenset(AlertKind)
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or not value:
        raise ValidationError(
            field, f"must be a non-empty list of: {', '.join(k.value for k in AlertKind)}"
        )
    kinds = set()
    for i, item in enumerate(value):
        try:
            kinds.add(AlertKind(item))
        except ValueError:
            raise ValidationError(
                f"{field}[{i}]", f"must be one of: {', '.join(k.value for k in AlertKind)}"
            ) from None
    return frozenset(kinds)


def parse_description(value: object, field: str = "description") -> str | None:
    """Free text (domain.text: no NUL, controls or lone surrogates), at most 256 characters."""
    if value is None:
        return None
    return check_text(value, field, max_length=MAX_DESCRIPTION_LENGTH, allow_empty=True)


def parse_secret(value: object, field: str = "secret") -> str | None:
    """A user's own signing secret: printable ASCII, 16 to 256 characters; None: derive one."""
    if value is None:
        return None
    if not isinstance(value, str) or not MIN_SECRET_LENGTH <= len(value) <= MAX_SECRET_LENGTH:
        raise ValidationError(
            field, f"must be {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters"
        )
    if not value.isascii() or not value.isprintable():
        raise ValidationError(field, "must be printable ASCII")
    return value


def parse_endpoint_id(value: object, field: str = "id") -> str:
    if (
        not isinstance(value, str)
        or not value.startswith(ENDPOINT_PREFIX)
        or not 4 <= len(value) <= 32
        or not value[len(ENDPOINT_PREFIX) :].isalnum()
        or not value.isascii()
    ):
        raise ValidationError(field, "is not a webhook endpoint id (wh_...)")
    return value


def parse_delivery_id(value: object, field: str = "id") -> int:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValidationError(field, "is not a delivery id (a positive whole number)")
    number = int(text)
    if number < 1:
        raise ValidationError(field, "is not a delivery id (a positive whole number)")
    return number


def derive_secret(server_key: bytes, endpoint_id: str) -> str:
    """The signing secret of an endpoint without a secret of its own.

    HMAC of the endpoint id under the server's key: nothing secret is stored,
    every replica with the key computes the same secret, and a new server key
    changes every derived secret at once (a rotation).
    """
    mac = hmac.new(server_key, b"tokenquota-webhook-secret:" + endpoint_id.encode(), hashlib.sha256)
    return "whsec_" + mac.hexdigest()


def backoff(attempts: int, base: float, cap: float, draw: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: full jitter.

    ``draw`` is uniform in [0, 1) from the caller: the delay is uniform in
    [0, min(cap, base * 2^(attempts-1))), so replicas retrying a receiver that
    came back do not all knock at the same moment.
    """
    ceiling: float = min(cap, base * 2.0 ** max(0, attempts - 1))
    return ceiling * draw


def event_body(event: AlertEvent) -> dict[str, Any]:
    """The JSON a delivery carries; numbers as the API shows them (credits as strings)."""
    metric = Metric(event.metric)
    return {
        "id": event.id,
        "type": event.kind.value,
        "created_at": event.at.isoformat(),
        "data": {
            "subject": event.subject,
            "metric": event.metric,
            "window": event.window or None,
            "period_start": None if event.period_start is None else event.period_start.isoformat(),
            "threshold": event.threshold,
            "used": wire_number(from_units(metric, event.used)),
            "limit": wire_number(from_units(metric, event.limit)),
            "reset_at": None if event.reset_at is None else event.reset_at.isoformat(),
        },
    }


__all__ = [
    "AUDIT_CREATE",
    "AUDIT_DELETE",
    "AUDIT_SECRET",
    "AUDIT_UPDATE",
    "DEFAULT_TOLERANCE",
    "DELIVERY_ID_HEADER",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "Delivery",
    "DeliveryStatus",
    "Endpoint",
    "SignatureError",
    "SubjectAlert",
    "audit_target",
    "backoff",
    "derive_secret",
    "event_body",
    "parse",
    "parse_delivery_id",
    "parse_description",
    "parse_endpoint_id",
    "parse_kinds",
    "parse_secret",
    "parse_url",
    "sign",
    "signature",
    "verify",
]
