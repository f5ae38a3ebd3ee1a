"""Webhook endpoints and deliveries as the API answers them (and the client reads them)."""

from __future__ import annotations

from typing import Any

from tokenquota.domain.alerts import AlertKind
from tokenquota.domain.webhooks import Delivery, DeliveryStatus, Endpoint
from tokenquota.wire.fields import iso, optional_time, time


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
