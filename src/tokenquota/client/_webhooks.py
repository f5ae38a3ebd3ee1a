"""Webhook endpoints and deliveries as requests (``_protocol.Call``), and the receiver's check.

Apart from ``_protocol.py`` only to keep each file short; the clients send these
``Call`` values exactly as the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tokenquota.client._protocol import (
    Call,
    _nothing,
    _params,
    _ref,
    _segment,
    _without_none,
)
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Page
from tokenquota.domain.webhooks import (
    DEFAULT_TOLERANCE,
    Delivery,
    Endpoint,
    SubjectAlert,
    verify,
)
from tokenquota.wire.views import decode_page
from tokenquota.wire.webhooks import decode_alert, decode_delivery, decode_endpoint


def verify_webhook(
    secret: str | bytes,
    body: bytes,
    signature: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a delivery a receiver got: ``body`` the raw bytes, ``signature`` the
    ``TokenQuota-Signature`` header. Returns the signed timestamp, or raises
    ``SignatureError`` (a ``ValueError``) saying what did not hold.

    ``now`` defaults to this machine's clock; a delivery signed more than
    ``tolerance`` seconds away from it is refused, so a replayed one fails.
    """
    return verify(
        secret, body, signature, now=time.time() if now is None else now, tolerance=tolerance
    )


def _path(endpoint_id: str) -> str:
    return f"/v1/webhooks/{_segment(endpoint_id, 'id')}"


def _delivery_path(delivery_id: int | str) -> str:
    return f"/v1/deliveries/{_segment(str(delivery_id), 'id')}"


def create_webhook(
    url: str, *, events: Sequence[str] | None, description: str | None, secret: str | None
) -> Call[tuple[Endpoint, str]]:
    body = {"url": url} | _without_none(
        events=list(events) if events is not None else None, description=description, secret=secret
    )
    return Call("POST", "/v1/webhooks", lambda d: (decode_endpoint(d), str(d["secret"])), body=body)


def webhooks() -> Call[list[Endpoint]]:
    return Call("GET", "/v1/webhooks", lambda d: [decode_endpoint(x) for x in d["items"]])


def get_webhook(endpoint_id: str) -> Call[Endpoint]:
    return Call("GET", _path(endpoint_id), decode_endpoint)


def webhook_secret(endpoint_id: str) -> Call[str]:
    return Call("GET", _path(endpoint_id) + "/secret", lambda d: str(d["secret"]))


def set_webhook_secret(endpoint_id: str, secret: str | None) -> Call[tuple[Endpoint, str]]:
    return Call(
        "PUT",
        _path(endpoint_id) + "/secret",
        lambda d: (decode_endpoint(d), str(d["secret"])),
        body=_without_none(secret=secret),
    )


def set_webhook_enabled(endpoint_id: str, enabled: bool) -> Call[Endpoint]:
    return Call("PATCH", _path(endpoint_id), decode_endpoint, body={"enabled": enabled})


def delete_webhook(endpoint_id: str) -> Call[None]:
    return Call("DELETE", _path(endpoint_id), _nothing)


def deliveries(endpoint_id: str, *, offset: int, limit: int) -> Call[Page[Delivery]]:
    return Call(
        "GET",
        _path(endpoint_id) + "/deliveries",
        lambda d: decode_page(d, decode_delivery),
        params=_params(offset=offset, limit=limit),
    )


def get_delivery(delivery_id: int | str) -> Call[Delivery]:
    return Call("GET", _delivery_path(delivery_id), decode_delivery)


def redeliver(delivery_id: int | str) -> Call[Delivery]:
    return Call("POST", _delivery_path(delivery_id) + "/redeliver", decode_delivery)


def subject_alerts(
    subject: str | SubjectRef, *, offset: int, limit: int
) -> Call[Page[SubjectAlert]]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/alerts",
        lambda d: decode_page(d, decode_alert),
        params=_params(offset=offset, limit=limit),
    )
