"""A subject's alert as the API writes it and the clients read it back (wire/webhooks.py).

The alert is the webhook body plus its deliveries; the client's ``SubjectAlert``
keeps every field, with amounts in the metric's own numbers (exact Decimal for
credits, never a float), and the deliveries as ``Delivery`` values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.metrics import Metric, to_units
from tokenquota.domain.webhooks import Delivery, DeliveryStatus
from tokenquota.wire.webhooks import decode_alert, encode_alert

AT = datetime(2026, 12, 7, 10, 14, 3, 512000, tzinfo=UTC)


def delivery(number: int, status: DeliveryStatus) -> Delivery:
    return Delivery(
        id=number,
        event_id=812,
        endpoint_id="wh_abc",
        status=status,
        attempts=2,
        # Only a pending delivery's travels; the others' read back as their creation.
        next_attempt_at=AT + timedelta(seconds=20) if status is DeliveryStatus.PENDING else AT,
        last_status=503 if status is not DeliveryStatus.DELIVERED else 204,
        last_error="HTTP 503" if status is not DeliveryStatus.DELIVERED else None,
        last_attempt_at=AT,
        delivered_at=AT if status is DeliveryStatus.DELIVERED else None,
        created_at=AT,
    )


@pytest.mark.parametrize(
    ("metric", "used", "limit"),
    [
        ("tokens", 8012, 10000),
        ("credits", Decimal("0.300000001"), Decimal("0.3")),
        ("requests", 0, 0),
    ],
)
def test_an_alert_reads_back_as_written(metric: str, used: object, limit: object) -> None:
    event = AlertEvent(
        kind=AlertKind.THRESHOLD,
        subject="user:alice",
        metric=metric,
        window="day",
        period_start=AT.replace(hour=0, minute=0, second=0, microsecond=0),
        threshold=80,
        used=to_units(Metric(metric), used, "used"),
        limit=to_units(Metric(metric), limit, "limit"),
        reset_at=AT.replace(day=8, hour=0, minute=0, second=0, microsecond=0),
        at=AT,
        id=812,
    )
    sent = [delivery(1, DeliveryStatus.DELIVERED), delivery(2, DeliveryStatus.PENDING)]
    back = decode_alert(json.loads(json.dumps(encode_alert(event, sent))))
    assert (back.id, back.type, back.created_at, back.subject) == (
        812,
        event.kind,
        AT,
        event.subject,
    )
    assert (back.metric, back.window, back.threshold) == (metric, "day", 80)
    assert (back.period_start, back.reset_at) == (event.period_start, event.reset_at)
    assert (back.used, back.limit) == (used, limit)
    assert type(back.used) is type(used)
    assert back.deliveries == tuple(sent)


def test_an_alert_without_window_or_threshold() -> None:
    event = AlertEvent(
        kind=AlertKind.DENIED,
        subject="user:bo",
        metric="concurrent_requests",
        window="",
        period_start=None,
        threshold=None,
        used=2,
        limit=2,
        reset_at=None,
        at=AT,
        id=3,
    )
    back = decode_alert(json.loads(json.dumps(encode_alert(event, []))))
    assert (back.type, back.window, back.period_start, back.threshold) == (
        AlertKind.DENIED,
        None,
        None,
        None,
    )
    assert (back.used, back.limit, back.reset_at, back.deliveries) == (2, 2, None, ())
