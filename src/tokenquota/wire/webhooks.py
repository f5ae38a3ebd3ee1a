"""Webhook endpoints and deliveries as the API answers them (and the client reads them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.webhooks import Delivery, DeliveryStatus, Endpoint, SubjectAlert, event_body
from tokenquota.wire.fields import iso, number, optional_time, time


def encode_endpoint(endpoint: Endpoint, secret: str | None = None) -> dict[str, Any]:
    """The endpoint; ``secret`` only in the answers that show it (creation, ``/secret``)."""
    data: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": sorted(k.value for k in endpoint.events),
        "owner": endpoint.owner,
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "secret_source": "derived" if endpoint.sealed is None else "supplied",
        "created_at": iso(endpoint.created_at),
        "disabled_at": iso(endpoint.disabled_at),
    }
    if secret is not None:
        data["secret"] = secret
    return data


def decode_endpoint(data: Any) -> Endpoint:
    return Endpoint(
        id=str(data["id"]),
        url=str(data["url"]),
        events=frozenset(AlertKind(k) for k in data["events"]),
        owner=data.get("owner"),
        description=data.get("description"),
        created_at=time(data["created_at"]),
        disabled_at=optional_time(data.get("disabled_at")),
        # Never the sealed text itself: only whether the secret was the user's.
        sealed="supplied" if data.get("secret_source") == "supplied" else None,
    )


def encode_delivery(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "endpoint_id": delivery.endpoint_id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "next_attempt_at": (
            iso(delivery.next_attempt_at) if delivery.status is DeliveryStatus.PENDING else None
        ),
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "last_attempt_at": iso(delivery.last_attempt_at),
        "delivered_at": iso(delivery.delivered_at),
        "created_at": iso(delivery.created_at),
    }


def decode_delivery(data: Any) -> Delivery:
    status = DeliveryStatus(data["status"])
    created = time(data["created_at"])
    return Delivery(
        id=int(data["id"]),
        event_id=int(data["event_id"]),
        endpoint_id=str(data["endpoint_id"]),
        status=status,
        attempts=int(data["attempts"]),
        next_attempt_at=optional_time(data.get("next_attempt_at")) or created,
        last_status=data.get("last_status"),
        last_error=data.get("last_error"),
        last_attempt_at=optional_time(data.get("last_attempt_at")),
        delivered_at=optional_time(data.get("delivered_at")),
        created_at=created,
    )


def encode_alert(event: AlertEvent, deliveries: Sequence[Delivery]) -> dict[str, Any]:
    """A subject's alert as ``GET /v1/subjects/{ref}/alerts`` answers it: the body a
    delivery carries (``domain.webhooks.event_body``) and the deliveries shown beside it."""
    return {**event_body(event), "deliveries": [encode_delivery(d) for d in deliveries]}


def decode_alert(data: Any) -> SubjectAlert:
    body = data["data"]
    metric = str(body["metric"])
    return SubjectAlert(
        id=int(data["id"]),
        type=AlertKind(data["type"]),
        created_at=time(data["created_at"]),
        subject=str(body["subject"]),
        metric=metric,
        window=body.get("window"),
        period_start=optional_time(body.get("period_start")),
        threshold=body.get("threshold"),
        used=number(metric, body["used"]),
        limit=number(metric, body["limit"]),
        reset_at=optional_time(body.get("reset_at")),
        deliveries=tuple(decode_delivery(d) for d in data.get("deliveries", ())),
    )
