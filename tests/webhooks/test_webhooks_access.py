"""Who may manage which endpoint, what each gets, and bad input (every backend).

A member's endpoint belongs to its subject and gets events of its subtree only
(contract §10); another member's endpoints and deliveries are 404s to it. Bad
input is a 4xx naming the field, and changes nothing.
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


def put_subject(admin: httpx.Client, ref: str, *parents: str) -> None:
    answer = admin.put(f"/v1/subjects/{ref}", json={"parents": list(parents)})
    assert answer.status_code in (200, 201), answer.text


def endpoints_state(admin: httpx.Client) -> list[dict[str, Any]]:
    return list(admin.get("/v1/webhooks").json()["items"])


def test_a_member_endpoint_never_gets_a_siblings_event(hooked: Api) -> None:
    mine, sibling, staff_hook = Receiver(), Receiver(), Receiver()
    try:
        with hooked.client() as admin:
            put_subject(admin, "company:acme")
            put_subject(admin, "team:red", "company:acme")
            put_subject(admin, "team:blue", "company:acme")
            put_subject(admin, "user:rita", "team:red")
            put_subject(admin, "user:bob", "team:blue")
            red = hooked.key("member", "team:red")
            blue = hooked.key("member", "team:blue")
            with hooked.client(red) as red_client, hooked.client(blue) as blue_client:
                made = red_client.post("/v1/webhooks", json={"url": mine.url})
                assert made.status_code == 201, made.text
                assert made.json()["owner"] == "team:red"
                red_id = made.json()["id"]
                blue_id = blue_client.post("/v1/webhooks", json={"url": sibling.url}).json()["id"]
                admin.post("/v1/webhooks", json={"url": staff_hook.url})
                # Events: one in red's subtree, one in blue's, one above both.
                record(hooked.quota, alert("user:rita"))
                record(hooked.quota, alert("user:bob"))
                record(hooked.quota, alert("company:acme"))
                record(hooked.quota, alert("team:red"))
                staff_got = staff_hook.wait_for(4)
                red_got = mine.wait_for(2)
                blue_got = sibling.wait_for(1)
                # Each sees only its own endpoint, and the other's is not found.
                assert [e["id"] for e in endpoints_state(red_client)] == [red_id]
                assert red_client.get(f"/v1/webhooks/{blue_id}").status_code == 404
                assert red_client.get(f"/v1/webhooks/{blue_id}/deliveries").status_code == 404
                assert red_client.get(f"/v1/webhooks/{blue_id}/secret").status_code == 404
                assert red_client.delete(f"/v1/webhooks/{blue_id}").status_code == 404
                assert (
                    red_client.patch(f"/v1/webhooks/{blue_id}", json={"enabled": False})
                ).status_code == 404
                blue_page = blue_client.get(f"/v1/webhooks/{blue_id}/deliveries").json()
                for delivery in blue_page["items"]:
                    assert red_client.get(f"/v1/deliveries/{delivery['id']}").status_code == 404
                    answer = red_client.post(f"/v1/deliveries/{delivery['id']}/redeliver")
                    assert answer.status_code == 404
                assert len(endpoints_state(admin)) == 3  # staff see every endpoint
            # A service key has no use for webhooks.
            service = hooked.key("service")
            with hooked.client(service) as service_client:
                assert service_client.get("/v1/webhooks").status_code == 403
                assert (
                    service_client.post("/v1/webhooks", json={"url": mine.url}).status_code == 403
                )
            time.sleep(0.3)  # several worker passes: nothing else arrives
        assert sorted(r.event["data"]["subject"] for r in mine.received()) == [
            "team:red",
            "user:rita",
        ]
        assert [r.event["data"]["subject"] for r in sibling.received()] == ["user:bob"]
        assert len(red_got) == 2
        assert len(blue_got) == 1
        assert len(staff_got) == 4
        assert len(staff_hook.received()) == 4
    finally:
        for receiver in (mine, sibling, staff_hook):
            receiver.close()


BAD_CREATE = [
    ({"url": "ftp://example.com/hook"}, "url"),
    ({"url": "example.com/hook"}, "url"),
    ({"url": "http://"}, "url"),
    ({"url": "http://exa mple.com/"}, "url"),
    ({"url": "http://example.com:99999/"}, "url"),
    ({"url": "http://user:pw@example.com/"}, "url"),
    ({"url": "https://example.com/" + "a" * 2100}, "url"),
    ({"url": ""}, "url"),
    ({"url": 5}, "url"),
    ({}, "url"),
    ({"url": "https://example.com/", "events": []}, "events"),
    ({"url": "https://example.com/", "events": "threshold.crossed"}, "events"),
    ({"url": "https://example.com/", "events": ["threshold.crossed", "nope"]}, "events[1]"),
    ({"url": "https://example.com/", "events": [7]}, "events"),
    ({"url": "https://example.com/", "description": "x" * 300}, "description"),
    ({"url": "https://example.com/", "secret": "short"}, "secret"),
    ({"url": "https://example.com/", "secret": "ünïcode-secret-is-not-ascii"}, "secret"),
    ({"url": "https://example.com/", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CREATE)
def test_bad_endpoint_input_names_the_field_and_changes_nothing(
    hooked: Api, body: dict[str, Any], field: str
) -> None:
    with hooked.client() as admin:
        answer = admin.post("/v1/webhooks", json=body)
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["error"]["details"]["field"], answer.json()
        assert endpoints_state(admin) == []


def test_bad_ids_and_patches_name_the_field_and_change_nothing(hooked: Api) -> None:
    with hooked.client() as admin:
        made = admin.post("/v1/webhooks", json={"url": "https://example.com/hook"}).json()
        before = endpoints_state(admin)
        for path in ("/v1/webhooks/nope", "/v1/webhooks/wh_%00x", "/v1/webhooks/wh_" + "a" * 40):
            answer = admin.get(path)
            assert answer.status_code in (404, 422), answer.text
            if answer.status_code == 422:
                assert answer.json()["error"]["details"]["field"] in ("id", "endpoint_id")
        assert admin.get("/v1/webhooks/wh_000000000000000000000000").status_code == 404
        for bad in ("abc", "-1", "0", "1.5", "99999999999999999999"):
            answer = admin.get(f"/v1/deliveries/{bad}")
            assert answer.status_code == 422, (bad, answer.text)
            assert answer.json()["error"]["details"]["field"] == "id"
            answer = admin.post(f"/v1/deliveries/{bad}/redeliver")
            assert answer.status_code == 422, (bad, answer.text)
        assert admin.get("/v1/deliveries/123456").status_code == 404
        assert admin.post("/v1/deliveries/123456/redeliver").status_code == 404
        for patch in ({"enabled": "yes"}, {"enabled": None}, {}, {"enabled": True, "url": "x"}):
            answer = admin.patch(f"/v1/webhooks/{made['id']}", json=patch)
            assert answer.status_code == 422, (patch, answer.text)
        for query in ({"limit": 0}, {"limit": 5000}, {"offset": -1}):
            answer = admin.get(f"/v1/webhooks/{made['id']}/deliveries", params=query)
            assert answer.status_code == 422, (query, answer.text)
        assert endpoints_state(admin) == before


def test_without_a_server_key_endpoints_are_refused_with_how_to_set_it(
    make_api: ServerFactory,
) -> None:
    api = make_api(**{**FAST, "webhook_key": None})
    with api.client() as admin:
        answer = admin.post("/v1/webhooks", json={"url": "https://example.com/hook"})
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert error["code"] == "webhook_key_unset"
        assert "TOKENQUOTA_WEBHOOK_KEY" in error["message"]
        assert endpoints_state(admin) == []
        # Bad input is still named first: nothing about the key is needed to say so.
        answer = admin.post("/v1/webhooks", json={"url": "ftp://x"})
        assert answer.status_code == 422
