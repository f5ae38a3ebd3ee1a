"""Webhooks end to end over a live server: register, record an event, receive it signed.

The receiver is a real HTTP server on a port (receiver.py); the events are put
in the outbox by hand (outbox.py) until the decision step records them.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory
from tests.webhooks.conftest import FAST
from tests.webhooks.outbox import alert, record
from tests.webhooks.receiver import Receiver
from tokenquota.client import Client, SignatureError, verify_webhook
from tokenquota.domain.alerts import AlertKind


def wait_status(
    admin: httpx.Client, delivery_id: int, status: str, timeout: float = 60.0
) -> dict[str, Any]:
    """The delivery once it has ``status`` (a bound for a stuck test, not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        got = admin.get(f"/v1/deliveries/{delivery_id}")
        assert got.status_code == 200, got.text
        if got.json()["status"] == status:
            return dict(got.json())
        assert time.monotonic() < deadline, f"still {got.json()}"
        time.sleep(0.02)


def only_delivery(admin: httpx.Client, endpoint_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        page = admin.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()
        if page["items"]:
            assert page["total"] == 1, page
            return dict(page["items"][0])
        assert time.monotonic() < deadline, "no delivery row was made"
        time.sleep(0.02)


def test_a_delivery_arrives_signed_and_verifies(hooked: Api, receiver: Receiver) -> None:
    with hooked.client() as admin:
        made = admin.post("/v1/webhooks", json={"url": receiver.url, "description": "ops"})
        assert made.status_code == 201, made.text
        endpoint = made.json()
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["events"] == sorted(k.value for k in AlertKind)
        event_id = record(hooked.quota, alert("user:alice", used=812, limit=1000))
        [got] = receiver.wait_for(1)
        delivery = wait_status(admin, only_delivery(admin, endpoint["id"])["id"], "delivered")
    # The client's helper verifies the raw bytes under the secret shown at creation.
    signature = got.header("TokenQuota-Signature")
    verify_webhook(endpoint["secret"], got.body, signature)
    with pytest.raises(SignatureError):
        verify_webhook("whsec_another", got.body, signature)
    with pytest.raises(SignatureError):
        verify_webhook(endpoint["secret"], got.body + b" ", signature)
    assert got.header("TokenQuota-Event-Id") == str(event_id)
    assert got.header("TokenQuota-Delivery-Id") == str(delivery["id"])
    assert got.header("Content-Type") == "application/json"
    body = got.event
    assert body["id"] == event_id
    assert body["type"] == "threshold.crossed"
    assert body["data"]["subject"] == "user:alice"
    assert body["data"]["used"] == 812
    assert body["data"]["limit"] == 1000
    assert body["data"]["threshold"] == 80
    assert body["data"]["window"] == "day"
    assert delivery["attempts"] == 1
    assert delivery["last_status"] == 200
    assert delivery["delivered_at"] is not None


def test_credits_travel_as_the_api_shows_them(make_api: ServerFactory, receiver: Receiver) -> None:
    api = make_api(**FAST)
    with api.client() as admin:
        assert admin.post("/v1/webhooks", json={"url": receiver.url}).status_code == 201
        # 0.3 of 0.5 credits, in units of 10^-9 credits.
        record(api.quota, alert(metric="credits", used=300_000_000, limit=500_000_000))
        [got] = receiver.wait_for(1)
    assert got.event["data"]["used"] == "0.3"
    assert got.event["data"]["limit"] == "0.5"


def test_a_receiver_failing_twice_gets_it_on_the_third_try(
    make_api: ServerFactory,
) -> None:
    receiver = Receiver([500, 503])
    try:
        api = make_api(**FAST)
        with api.client() as admin:
            endpoint = admin.post("/v1/webhooks", json={"url": receiver.url}).json()
            record(api.quota, alert())
            got = receiver.wait_for(3)
            delivery = wait_status(admin, only_delivery(admin, endpoint["id"])["id"], "delivered")
    finally:
        receiver.close()
    assert [r.status for r in got] == [500, 503, 200]
    assert delivery["attempts"] == 3
    assert delivery["last_status"] == 200
    assert len({r.header("TokenQuota-Delivery-Id") for r in got}) == 1  # one delivery, 3 tries
    # Each attempt is signed afresh, each verifies.
    for request in got:
        verify_webhook(endpoint["secret"], request.body, request.header("TokenQuota-Signature"))


def test_dead_letter_after_the_attempt_bound_then_redeliver(make_api: ServerFactory) -> None:
    receiver = Receiver(default=500)
    try:
        api = make_api(**FAST, webhook_max_attempts=3)
        with api.client() as admin:
            endpoint = admin.post("/v1/webhooks", json={"url": receiver.url}).json()
            record(api.quota, alert())
            first = only_delivery(admin, endpoint["id"])
            dead = wait_status(admin, first["id"], "failed")
            assert dead["attempts"] == 3
            assert dead["last_status"] == 500
            assert "500" in dead["last_error"]
            assert dead["next_attempt_at"] is None
            assert len(receiver.received()) == 3  # no attempt past the bound
            time.sleep(0.3)  # longer than the backoff cap: still nothing more is sent
            assert len(receiver.received()) == 3
            metrics = admin.get("/metrics").text
            assert 'tokenquota_webhook_deliveries{status="failed"} 1.0' in metrics
            assert 'tokenquota_webhook_attempts_total{outcome="failed"} 1.0' in metrics
            assert 'tokenquota_webhook_attempts_total{outcome="retry"} 2.0' in metrics
            # The receiver is fixed; redelivery over the API sends it again.
            receiver.default = 200
            again = admin.post(f"/v1/deliveries/{first['id']}/redeliver")
            assert again.status_code == 202, again.text
            assert again.json()["status"] == "pending"
            assert again.json()["attempts"] == 0
            done = wait_status(admin, first["id"], "delivered")
    finally:
        receiver.close()
    assert done["attempts"] == 1
    assert [r.status for r in receiver.received()] == [500, 500, 500, 200]


def test_user_supplied_secret_is_sealed_and_signs(
    make_api: ServerFactory, receiver: Receiver
) -> None:
    api = make_api(**FAST)
    own = "my-own-receiver-secret-123"
    with api.client() as admin:
        made = admin.post("/v1/webhooks", json={"url": receiver.url, "secret": own}).json()
        assert made["secret"] == own
        assert made["secret_source"] == "supplied"
        shown = admin.get(f"/v1/webhooks/{made['id']}/secret").json()
        assert shown == {"id": made["id"], "secret": own}
        listed = admin.get(f"/v1/webhooks/{made['id']}").json()
        assert "secret" not in listed
        record(api.quota, alert())
        [got] = receiver.wait_for(1)
    verify_webhook(own, got.body, got.header("TokenQuota-Signature"))
    # Never in clear in the table.
    sealed = api.quota.store.db.engine  # type: ignore[attr-defined]
    with sealed.connect() as conn:
        stored = conn.exec_driver_sql("SELECT sealed_secret FROM webhook_endpoints").scalar_one()
    assert own not in stored
    assert stored.startswith("v1.")


def test_a_disabled_endpoint_gets_nothing_and_enabled_again_gets_new_events(
    make_api: ServerFactory, receiver: Receiver
) -> None:
    api = make_api(**FAST)
    with api.client() as admin:
        endpoint = admin.post("/v1/webhooks", json={"url": receiver.url}).json()
        off = admin.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False})
        assert off.status_code == 200
        assert off.json()["enabled"] is False
        record(api.quota, alert("user:quiet"))
        # Wait until the worker handed the event out (to nobody), then enable.
        deadline = time.monotonic() + 30
        while not _fanned(api):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert admin.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["total"] == 0
        on = admin.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": True})
        assert on.json()["enabled"] is True
        record(api.quota, alert("user:loud"))
        [got] = receiver.wait_for(1)
    assert got.event["data"]["subject"] == "user:loud"


def _fanned(api: Api) -> bool:
    with api.quota.store.db.engine.connect() as conn:  # type: ignore[attr-defined]
        return not conn.exec_driver_sql(
            "SELECT COUNT(*) FROM alert_events WHERE NOT fanned_out"
        ).scalar_one()


def test_the_client_manages_endpoints_and_deliveries(
    make_api: ServerFactory, receiver: Receiver
) -> None:
    api = make_api(**FAST)
    with Client(api.url, "test-bootstrap-admin-key-0123456789abcdef") as client:
        endpoint, secret = client.create_webhook(
            receiver.url, events=["threshold.crossed"], description="pager"
        )
        assert client.webhook_secret(endpoint.id) == secret
        assert [e.id for e in client.webhooks()] == [endpoint.id]
        assert client.get_webhook(endpoint.id).description == "pager"
        record(api.quota, alert(kind=AlertKind.DENIED))  # not a kind it asked for
        record(api.quota, alert())
        [got] = receiver.wait_for(1)
        assert got.event["type"] == "threshold.crossed"
        verify_webhook(secret, got.body, got.header("TokenQuota-Signature"))
        deadline = time.monotonic() + 30
        while (page := client.deliveries(endpoint.id)).items[0].status.value != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert page.total == 1
        delivery = client.get_delivery(page.items[0].id)
        assert delivery.attempts == 1
        assert client.redeliver(delivery.id).status.value == "pending"
        receiver.wait_for(2)
        assert not client.set_webhook_enabled(endpoint.id, False).enabled
        client.delete_webhook(endpoint.id)
        assert client.webhooks() == []
