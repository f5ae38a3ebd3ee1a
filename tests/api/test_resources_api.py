"""Resource quotas over real HTTP: /v1/resources/{ref}/quota and `resource` on consume."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory
from tokenquota.wire.catalog import encode_resource_quota

LLAMA = "deployment:llama-70b"
QUOTA: dict[str, Any] = {
    "default_rules": [{"metric": "requests", "window": "minute", "limit": 2}],
    "policies": [
        {
            "consumer": "group:research",
            "rules": [{"metric": "requests", "window": "minute", "limit": 10}],
            "reserved": 0.25,
        }
    ],
    "capacity": {"value": 4, "units": "requests"},
    "saturation_threshold": "0.5",
}


def test_put_get_delete_a_quota(api: Api, admin: httpx.Client) -> None:
    put = admin.put(f"/v1/resources/{LLAMA}/quota", json=QUOTA)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["resource"] == LLAMA
    assert body["policies"][0]["reserved"] == "0.25"
    assert body["saturation_threshold"] == "0.5"
    assert admin.get(f"/v1/resources/{LLAMA}/quota").json() == body
    assert encode_resource_quota(api.quota.get_resource_quota(LLAMA))["capacity"] == {
        "value": 4,
        "units": "requests",
    }
    audit = admin.get("/v1/audit", params={"subject": f"resources/{LLAMA}"}).json()
    assert [a["action"] for a in audit["items"]] == ["quota.set"]
    assert admin.delete(f"/v1/resources/{LLAMA}/quota").status_code == 204
    assert admin.get(f"/v1/resources/{LLAMA}/quota").status_code == 404


def test_consume_on_a_resource_obeys_its_quota(api: Api, admin: httpx.Client) -> None:
    admin.put(f"/v1/resources/{LLAMA}/quota", json=QUOTA)
    body = {"subject": "user:alice", "resource": LLAMA}
    assert admin.post("/v1/consume", json=body).status_code == 200
    assert admin.post("/v1/consume", json=body).status_code == 200
    third = admin.post("/v1/consume", json=body)
    assert third.status_code == 429
    assert third.headers["Retry-After"]
    blocked = third.json()["error"]["details"]["blocked_by"]
    assert [(b["subject"], b["source"]) for b in blocked] == [(f"{LLAMA}~user:alice", "resource")]
    # C = 4, s = 0.5, research keeps r*C = 1. U = 2: bob's U + a = 3 > s*C, saturated,
    # bound C - 1 = 3, admitted. Then U + a = 4 > 3: refused, the last one is research's.
    bob = {"subject": "user:bob", "resource": LLAMA}
    assert admin.post("/v1/consume", json=bob).status_code == 200
    refused = admin.post("/v1/consume", json=bob)
    assert refused.status_code == 429
    assert refused.json()["error"]["details"]["blocked_by"][0]["source"] == "saturation"
    research = {"subject": "group:research", "resource": LLAMA}
    assert admin.post("/v1/consume", json=research).status_code == 200


def test_bad_quotas_are_422_naming_the_field_and_change_nothing(admin: httpx.Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**QUOTA, "saturation_threshold": "1.5"}, "saturation_threshold"),
        ({"policies": [{**QUOTA["policies"][0], "reserved": 2}]}, "policies[0].reserved"),
        (
            {
                "policies": [
                    {"consumer": "user:a", "rules": [], "reserved": 0.6},
                    {"consumer": "user:b", "rules": [], "reserved": 0.6},
                ]
            },
            "policies",
        ),
        ({"policies": [{"consumer": "nobody", "rules": []}]}, "policies[0].consumer"),
        ({"capacity": {"value": -1, "units": "requests"}}, "capacity.value"),
        ({"capacity": {"value": 1, "units": "credits"}}, "capacity.units"),
        ({"default_rules": [{"metric": "tokens", "limit": 5}]}, "default_rules[0].window"),
        ({"surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        response = admin.put(f"/v1/resources/{LLAMA}/quota", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["details"]["field"] == field, (body, response.text)
    assert admin.get(f"/v1/resources/{LLAMA}/quota").status_code == 404


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_booleans_are_no_numbers_in_a_quota(
    make_api: ServerFactory, request: pytest.FixtureRequest, db: str
) -> None:
    """JSON true and false were read as 1 and 0: a share of all the capacity, a limit of 0."""
    settings = {"db": request.getfixturevalue("postgres_url")} if db == "postgres" else {}
    api = make_api(**settings)
    policy = QUOTA["policies"][0]
    rule = QUOTA["default_rules"][0]
    cases: list[tuple[dict[str, Any], str]] = [
        ({**QUOTA, "saturation_threshold": True}, "saturation_threshold"),
        ({**QUOTA, "policies": [{**policy, "reserved": True}]}, "policies[0].reserved"),
        ({**QUOTA, "policies": [{**policy, "reserved": False}]}, "policies[0].reserved"),
        ({**QUOTA, "default_rules": [{**rule, "limit": False}]}, "default_rules[0].limit"),
        (
            {**QUOTA, "policies": [{**policy, "rules": [{**rule, "limit": True}]}]},
            "policies[0].rules[0].limit",
        ),
        ({**QUOTA, "capacity": {"value": True, "units": "requests"}}, "capacity.value"),
    ]
    with api.client() as admin:
        stored = admin.put(f"/v1/resources/{LLAMA}/quota", json=QUOTA).json()
        for body, field in cases:
            response = admin.put(f"/v1/resources/{LLAMA}/quota", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["details"]["field"] == field, response.text
        assert admin.get(f"/v1/resources/{LLAMA}/quota").json() == stored


def test_roles_on_quotas(api: Api) -> None:
    for role, read, write in (("staff", 200, 200), ("service", 200, 403)):
        with api.client(api.key(role)) as client:
            assert client.put(f"/v1/resources/{LLAMA}/quota", json=QUOTA).status_code == write
            assert client.get(f"/v1/resources/{LLAMA}/quota").status_code == read
    with api.client(api.key("member", "user:alice")) as member:
        assert member.get(f"/v1/resources/{LLAMA}/quota").status_code == 403
        assert member.delete(f"/v1/resources/{LLAMA}/quota").status_code == 403
    with api.client(None) as anonymous:
        assert anonymous.get(f"/v1/resources/{LLAMA}/quota").status_code == 401
