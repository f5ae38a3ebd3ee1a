"""Prepaid credits over real HTTP."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api


def test_grant_then_spend_then_read_the_balance(api: Api, admin: httpx.Client) -> None:
    made = admin.post("/v1/subjects/workspace:w1/grants", json={"credits": "2.5"})
    assert made.status_code == 201, made.text
    assert made.json()["remaining"] == "2.5"
    spend = {"subject": "workspace:w1", "amounts": {"credits": "2"}}
    assert admin.post("/v1/consume", json=spend).status_code == 200
    denied = admin.post("/v1/consume", json=spend)
    assert denied.status_code == 429
    assert "Retry-After" not in denied.headers
    listed = admin.get("/v1/subjects/workspace:w1/grants").json()
    assert listed["balance"]["remaining"] == "0.5"
    assert [g["state"] for g in listed["items"]] == ["active"]
    usage = admin.get("/v1/subjects/workspace:w1/usage").json()["limits"]
    assert [(s["window"], s["remaining"]) for s in usage] == [("prepaid", "0.5")]


def test_bad_grants_and_roles(api: Api, admin: httpx.Client) -> None:
    for body, field in (
        ({"credits": 0}, "credits"),
        ({"credits": "x"}, "credits"),
        ({"credits": 1, "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"credits": 1, "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({}, "credits"),
    ):
        response = admin.post("/v1/subjects/workspace:w1/grants", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["details"]["field"] == field
    with api.client(api.key("service")) as service:
        response = service.post("/v1/subjects/workspace:w1/grants", json={"credits": 1})
        assert response.status_code == 403
        assert service.get("/v1/subjects/workspace:w1/grants").json()["balance"] is None
    with api.client(api.key("member", "workspace:w2")) as member:
        assert member.get("/v1/subjects/workspace:w1/grants").status_code == 403
        assert member.get("/v1/subjects/workspace:w2/grants").status_code == 200
