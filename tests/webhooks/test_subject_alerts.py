"""A subject's alerts over /v1 and on its dashboard page, seen as each role may see them."""

from __future__ import annotations

import time

import httpx

from tests.api.conftest import Api
from tests.webhooks.receiver import Receiver

WAIT_SECONDS = 60.0  # a bound for a stuck test on busy cores, not a speed check


def cross_all(api: Api, subject: str) -> None:
    """A 100-token day limit with 50/80/100 % thresholds, spent to the last token."""
    with api.client() as admin:
        rule = {"metric": "tokens", "window": "day", "limit": 100, "thresholds": [50, 80, 100]}
        answer = admin.put(f"/v1/subjects/{subject}/limits", json={"limits": [rule]})
        assert answer.status_code == 200, answer.text
        for _ in range(2):  # 50 each: the first crosses 50, the second 80 and 100
            spent = admin.post("/v1/consume", json={"subject": subject, "amounts": {"tokens": 50}})
            assert spent.status_code == 200, spent.text
        refused = admin.post("/v1/consume", json={"subject": subject, "amounts": {"tokens": 1}})
        assert refused.status_code == 429


def alerts(client: httpx.Client, subject: str) -> httpx.Response:
    return client.get(f"/v1/subjects/{subject}/alerts")


def test_a_subject_s_alerts_newest_first_with_the_webhook_body(hooked: Api) -> None:
    cross_all(hooked, "user:ada")
    with hooked.client() as admin:
        deadline = time.monotonic() + WAIT_SECONDS
        while (page := alerts(admin, "user:ada").json())["total"] < 4:  # Redis: the mover
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
        empty = alerts(admin, "user:nobody").json()
    assert page["total"] == 4
    ids = [a["id"] for a in page["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert sorted((a["type"], a["data"]["threshold"] or 0) for a in page["items"]) == [
        ("limit.denied", 0),
        ("threshold.crossed", 50),
        ("threshold.crossed", 80),
        ("threshold.crossed", 100),
    ]
    crossed = sorted(
        (a["data"]["threshold"], a["data"]["used"])
        for a in page["items"]
        if a["type"] == "threshold.crossed"
    )
    assert crossed == [(50, 50), (80, 100), (100, 100)]
    assert all(a["data"]["subject"] == "user:ada" for a in page["items"])
    assert all(a["data"]["limit"] == 100 for a in page["items"])
    assert all(a["deliveries"] == [] for a in page["items"])  # no endpoint: none sent
    assert empty == {"items": [], "total": 0, "offset": 0, "limit": 100}


def test_each_role_sees_its_own_alerts_and_deliveries(hooked: Api, receiver: Receiver) -> None:
    with hooked.client() as admin:
        staff_hook = admin.post("/v1/webhooks", json={"url": receiver.url}).json()
    ada = hooked.key("member", "user:ada")
    with hooked.client(ada) as member:
        own_hook = member.post("/v1/webhooks", json={"url": receiver.url}).json()
    cross_all(hooked, "user:ada")
    receiver.wait_for(8, WAIT_SECONDS)  # 4 events to each of the two endpoints
    with hooked.client() as admin:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            staff = alerts(admin, "user:ada").json()
            if staff["total"] == 4 and all(
                len(a["deliveries"]) == 2
                and {d["status"] for d in a["deliveries"]} == {"delivered"}
                for a in staff["items"]
            ):
                break
            assert time.monotonic() < deadline, staff
            time.sleep(0.05)
    with hooked.client(ada) as member:
        mine = alerts(member, "user:ada").json()
    with hooked.client(hooked.key("member", "user:bob")) as sibling:
        refused = alerts(sibling, "user:ada")
    with hooked.client(hooked.key("service")) as service:
        spender = alerts(service, "user:ada").json()
    assert staff["total"] == mine["total"] == spender["total"] == 4
    assert {d["endpoint_id"] for a in staff["items"] for d in a["deliveries"]} == {
        staff_hook["id"],
        own_hook["id"],
    }
    # A member sees the deliveries to its own endpoint only; a service key, none.
    assert {d["endpoint_id"] for a in mine["items"] for d in a["deliveries"]} == {own_hook["id"]}
    assert all(a["deliveries"] == [] for a in spender["items"])
    assert refused.status_code == 403


def test_bad_paging_is_a_422_naming_the_field(hooked: Api) -> None:
    with hooked.client() as admin:
        for params, field in (({"limit": 0}, "limit"), ({"offset": -1}, "offset")):
            answer = admin.get("/v1/subjects/user:ada/alerts", params=params)
            assert answer.status_code == 422, answer.text
            assert field in answer.text
        assert admin.get("/v1/subjects/no-colon/alerts").status_code == 422


def test_the_dashboard_shows_a_subject_s_alerts(hooked: Api) -> None:
    cross_all(hooked, "user:ada")
    with httpx.Client(base_url=hooked.url, timeout=30) as browser:
        assert (
            browser.post("/dashboard/login", data={"key": hooked.key("admin")}).status_code == 303
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while (page := browser.get("/dashboard/subjects/user:ada")).text.count(
            "threshold.crossed"
        ) < 3:  # Redis: the mover
            assert page.status_code == 200, page.text
            assert time.monotonic() < deadline, page.text
            time.sleep(0.05)
    assert 'data-testid="alerts"' in page.text
    assert "limit.denied" in page.text
    for mark in ("50 %", "80 %", "100 %"):
        assert mark in page.text
