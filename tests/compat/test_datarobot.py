"""DataRobot's quotas API (seed 002) over real HTTP, against the same engine as /v1."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory

DEPLOYMENT = "llama-70b"
QUOTA_ID = f"deployment:{DEPLOYMENT}"
QUOTA: dict[str, Any] = {
    "resourceId": DEPLOYMENT,
    "resourceType": "deployment",
    "defaultRules": [
        {"rule": "requests", "window": "min", "limit": 2},
        {"rule": "token", "window": "day", "limit": 100_000},
        {"rule": "concurrentRequests", "limit": 4},
    ],
    "policies": [
        {
            "consumerId": "research",
            "consumerType": "usergroup",
            "consumerName": "Research",
            "reserved": 0.25,
            "rules": [{"rule": "requests", "window": "hour", "limit": 10}],
        },
        {
            "consumerId": "bob",
            "consumerType": "user",
            "rules": [{"rule": "inputSequenceLength", "window": "min", "limit": 8192}],
        },
    ],
    "capacity": {"capacity": 4, "units": "requests"},
    "saturationThreshold": 0.5,
}
RULE_FIELDS = {"limit": int, "rule": str, "window": str}
POLICY_FIELDS = {
    "consumerId": str,
    "consumerName": (str, type(None)),
    "consumerType": str,
    "reserved": (float, int, type(None)),
    "rules": list,
}
QUOTA_FIELDS = {
    "capacity": dict,
    "defaultRules": list,
    "id": str,
    "policies": list,
    "resourceId": str,
    "resourceType": str,
    "saturationThreshold": (float, int, type(None)),
    "userId": str,
}
PAGE_FIELDS = {"count": int, "data": list, "next": (str, type(None)), "previous": (str, type(None))}
PAGE_FIELDS["totalCount"] = int
PAGE = {"offset": 0, "limit": 100}


def create(admin: httpx.Client, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = admin.post("/api/v2/quotas/", json=body or QUOTA)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def check_types(item: dict[str, Any], fields: dict[str, Any]) -> None:
    assert set(item) == set(fields), set(item) ^ set(fields)
    for name, kind in fields.items():
        assert isinstance(item[name], kind), (name, item[name])
        assert not isinstance(item[name], bool), name


def check_rule(rule: dict[str, Any]) -> None:
    check_types(rule, RULE_FIELDS)
    assert rule["rule"] in {"concurrentRequests", "inputSequenceLength", "requests", "token"}
    assert rule["window"] in {"day", "hour", "min"}
    assert rule["limit"] >= 0


def check_quota(quota: dict[str, Any]) -> None:
    check_types(quota, QUOTA_FIELDS)
    assert quota["resourceType"] == "deployment"
    assert set(quota["capacity"]) == {"capacity", "units"}
    assert quota["capacity"]["units"] in {"requests", "token"}
    for rule in quota["defaultRules"]:
        check_rule(rule)
    for policy in quota["policies"]:
        check_types(policy, POLICY_FIELDS)
        assert policy["consumerType"] in {"deployment", "user", "usergroup"}
        for rule in policy["rules"]:
            check_rule(rule)


# quotas: create, read, list, patch, delete ---------------------------------------------
def test_create_answers_every_documented_field(api: Api, admin: httpx.Client) -> None:
    created = create(admin)
    check_quota(created)
    assert created["id"] == QUOTA_ID
    assert created["resourceId"] == DEPLOYMENT
    assert created["userId"] == "key:bootstrap"
    assert created["capacity"] == {"capacity": 4, "units": "requests"}
    assert created["saturationThreshold"] == 0.5
    assert created["defaultRules"] == [
        {"limit": 2, "rule": "requests", "window": "min"},
        {"limit": 100_000, "rule": "token", "window": "day"},
        {"limit": 4, "rule": "concurrentRequests", "window": "min"},
    ]
    assert created["policies"] == [
        {
            "consumerId": "research",
            "consumerName": "Research",
            "consumerType": "usergroup",
            "reserved": 0.25,
            "rules": [{"limit": 10, "rule": "requests", "window": "hour"}],
        },
        {
            "consumerId": "bob",
            "consumerName": None,
            "consumerType": "user",
            "reserved": None,
            "rules": [{"limit": 8192, "rule": "inputSequenceLength", "window": "min"}],
        },
    ]
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").json() == created
    # The consumer name lives on the consumer subject.
    assert api.quota.get_subject("usergroup:research").name == "Research"


def test_a_quota_without_capacity_or_threshold_leaves_capacity_out(admin: httpx.Client) -> None:
    created = create(admin, {"resourceId": "small", "resourceType": "deployment"})
    assert "capacity" not in created
    assert created["saturationThreshold"] is None
    assert created["defaultRules"] == created["policies"] == []


def test_creating_a_second_quota_on_a_deployment_is_a_conflict(admin: httpx.Client) -> None:
    create(admin)
    again = admin.post(
        "/api/v2/quotas/", json={**QUOTA, "capacity": {"capacity": 9, "units": "token"}}
    )
    assert again.status_code == 409
    assert set(again.json()) == {"message"}
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").json()["capacity"]["capacity"] == 4


def test_patch_changes_only_the_fields_given(api: Api, admin: httpx.Client) -> None:
    created = create(admin)
    patched = admin.patch(
        f"/api/v2/quotas/{QUOTA_ID}/", json={"capacity": {"capacity": 1000, "units": "token"}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**created, "capacity": {"capacity": 1000, "units": "token"}}

    rules = [{"rule": "token", "window": "hour", "limit": 7}]
    patched = admin.patch(
        f"/api/v2/quotas/{QUOTA_ID}/", json={"defaultRules": rules, "saturationThreshold": None}
    )
    assert patched.json()["defaultRules"] == [{"limit": 7, "rule": "token", "window": "hour"}]
    assert patched.json()["saturationThreshold"] is None
    assert patched.json()["policies"] == created["policies"]

    policies = [{"consumerId": "carol", "consumerType": "user", "reserved": 1, "rules": []}]
    patched = admin.patch(f"/api/v2/quotas/{QUOTA_ID}/", json={"policies": policies})
    assert patched.json()["policies"] == [
        {
            "consumerId": "carol",
            "consumerName": None,
            "consumerType": "user",
            "reserved": 1,
            "rules": [],
        }
    ]
    # No body at all changes nothing.
    unchanged = admin.patch(f"/api/v2/quotas/{QUOTA_ID}/")
    assert unchanged.status_code == 200
    assert unchanged.json() == patched.json()
    actions = [a.action for a in api.quota.audit(subject=f"resources/{QUOTA_ID}").items]
    assert actions == ["quota.set"] * 4


def test_delete_removes_the_quota(admin: httpx.Client) -> None:
    create(admin)
    deleted = admin.delete(f"/api/v2/quotas/{QUOTA_ID}/")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").status_code == 404
    assert admin.delete(f"/api/v2/quotas/{QUOTA_ID}/").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v2/quotas/deployment:nothing-here/"),
        ("PATCH", "/api/v2/quotas/deployment:nothing-here/"),
        ("DELETE", "/api/v2/quotas/deployment:nothing-here/"),
        ("GET", "/api/v2/quotas/llama-70b/"),  # a bare resource id is not a quota id
        ("GET", "/api/v2/quotas/model:llama/"),  # only deployments carry DataRobot quotas
        ("GET", "/api/v2/quotas/deployment:bad id!/"),
        ("GET", "/api/v2/quotaTemplates/no-such-template/"),
    ],
)
def test_unknown_ids_are_404(admin: httpx.Client, method: str, path: str) -> None:
    response = admin.request(method, path)
    assert response.status_code == 404
    assert set(response.json()) == {"message"}
    assert isinstance(response.json()["message"], str)


# lists and pagination ---------------------------------------------------------------------
def test_quota_list_pages_with_absolute_urls(api: Api, admin: httpx.Client) -> None:
    for i in range(5):
        create(admin, {"resourceId": f"d{i}", "resourceType": "deployment"})
    # A quota on another kind of resource is not a DataRobot quota.
    api.quota.set_resource_quota("model:m1", {"default_rules": []})

    first = admin.get("/api/v2/quotas/", params={"offset": 0, "limit": 2})
    assert first.status_code == 200
    page = first.json()
    check_types(page, PAGE_FIELDS)
    assert page["count"] == 2
    assert page["totalCount"] == 5
    assert [q["id"] for q in page["data"]] == ["deployment:d0", "deployment:d1"]
    for quota in page["data"]:
        check_types(quota, {k: v for k, v in QUOTA_FIELDS.items() if k != "capacity"})
    assert page["previous"] is None
    assert page["next"] == f"{api.url}/api/v2/quotas/?offset=2&limit=2"

    second = admin.get(page["next"]).json()
    assert [q["id"] for q in second["data"]] == ["deployment:d2", "deployment:d3"]
    assert second["previous"] == f"{api.url}/api/v2/quotas/?offset=0&limit=2"
    last = admin.get(second["next"]).json()
    assert last["count"] == 1
    assert last["next"] is None
    assert last["previous"] == f"{api.url}/api/v2/quotas/?offset=2&limit=2"

    beyond = admin.get("/api/v2/quotas/", params={"offset": 50, "limit": 10}).json()
    assert beyond["count"] == 0
    assert beyond["data"] == []
    assert beyond["totalCount"] == 5
    assert beyond["previous"] == f"{api.url}/api/v2/quotas/?offset=40&limit=10"


def test_quota_list_filters_by_resource(admin: httpx.Client) -> None:
    create(admin)
    create(admin, {"resourceId": "other", "resourceType": "deployment"})
    by_id = admin.get("/api/v2/quotas/", params={**PAGE, "resourceId": DEPLOYMENT}).json()
    assert [q["id"] for q in by_id["data"]] == [QUOTA_ID]
    assert by_id["totalCount"] == 1
    check_quota(by_id["data"][0])
    none = admin.get("/api/v2/quotas/", params={**PAGE, "resourceId": "absent"}).json()
    assert (none["count"], none["totalCount"], none["data"]) == (0, 0, [])
    typed = admin.get("/api/v2/quotas/", params={**PAGE, "resourceType": "deployment"}).json()
    assert typed["totalCount"] == 2
    other = admin.get("/api/v2/quotas/", params={**PAGE, "resourceType": "model"}).json()
    assert other["totalCount"] == 0


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v2/quotas/", {"offset": 0}, "limit"),
        ("/api/v2/quotas/", {"limit": 10}, "offset"),
        ("/api/v2/quotas/", {"offset": 0, "limit": 0}, "limit"),
        ("/api/v2/quotas/", {"offset": 0, "limit": 10_001}, "limit"),
        ("/api/v2/quotas/", {"offset": -1, "limit": 10}, "offset"),
        ("/api/v2/quotas/", {"offset": 0, "limit": "ten"}, "limit"),
        ("/api/v2/quotaTemplates/", {"offset": 0, "limit": 101}, "limit"),
        ("/api/v2/quotaTemplates/", {"offset": 0, "limit": 0}, "limit"),
        ("/api/v2/quotaTemplates/", {"limit": 10}, "offset"),
    ],
)
def test_pagination_bounds_are_422(
    admin: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    response = admin.get(path, params=params)
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"message", "errors"}
    assert field in body["errors"]


def test_limit_bounds_are_inclusive(admin: httpx.Client) -> None:
    assert admin.get("/api/v2/quotas/", params={"offset": 0, "limit": 10_000}).status_code == 200
    assert admin.get("/api/v2/quotas/", params={"offset": 0, "limit": 1}).status_code == 200
    templates = admin.get("/api/v2/quotaTemplates/", params={"offset": 0, "limit": 100})
    assert templates.status_code == 200


# templates = plans ---------------------------------------------------------------------------
TEMPLATE: dict[str, Any] = {
    "name": "Gold",
    "rules": [
        {"rule": "token", "window": "day", "limit": 500_000},
        {"rule": "requests", "limit": 100},
        {"rule": "concurrentRequests", "window": "hour", "limit": 3},
    ],
}


def test_template_create_get_list(api: Api, admin: httpx.Client) -> None:
    created = admin.post("/api/v2/quotaTemplates/", json=TEMPLATE)
    assert created.status_code == 201, created.text
    template = created.json()
    check_types(template, {"id": str, "name": str, "rules": list})
    assert template["name"] == "Gold"
    assert sorted(template["rules"], key=lambda r: r["rule"]) == [
        {"limit": 3, "rule": "concurrentRequests", "window": "min"},  # windowless: reads as min
        {"limit": 100, "rule": "requests", "window": "min"},  # the documented default window
        {"limit": 500_000, "rule": "token", "window": "day"},
    ]
    for rule in template["rules"]:
        check_rule(rule)
    assert admin.get(f"/api/v2/quotaTemplates/{template['id']}/").json() == template

    listed = admin.get("/api/v2/quotaTemplates/", params=PAGE)
    assert listed.status_code == 200
    page = listed.json()
    check_types(page, PAGE_FIELDS)
    assert page["data"] == [template]
    assert (page["count"], page["totalCount"], page["next"], page["previous"]) == (1, 1, None, None)

    # The template is a plan.
    plans = admin.get("/v1/plans").json()["items"]
    assert [(p["id"], p["name"]) for p in plans] == [(template["id"], "Gold")]
    assert {(r["metric"], r["window"], r["limit"]) for r in plans[0]["rules"]} == {
        ("tokens", "day", 500_000),
        ("requests", "minute", 100),
        ("concurrent_requests", None, 3),
    }


def test_template_names_are_unique(admin: httpx.Client) -> None:
    assert admin.post("/api/v2/quotaTemplates/", json=TEMPLATE).status_code == 201
    again = admin.post("/api/v2/quotaTemplates/", json=TEMPLATE)
    assert again.status_code == 409
    assert set(again.json()) == {"message"}


def test_a_native_plan_is_a_template_with_what_datarobot_can_express(
    api: Api, admin: httpx.Client
) -> None:
    plan = admin.post(
        "/v1/plans",
        json={
            "name": "Mixed",
            "rules": [
                {"metric": "tokens", "window": "hour", "limit": 10},
                {"metric": "credits", "window": "month", "limit": 5},  # no DataRobot rule
                {"metric": "requests", "window": "month", "limit": 5},  # no DataRobot window
                {"metric": "requests", "window": "day", "limit": -1},  # unlimited
            ],
        },
    ).json()
    template = admin.get(f"/api/v2/quotaTemplates/{plan['id']}/").json()
    assert template == {
        "id": plan["id"],
        "name": "Mixed",
        "rules": [{"limit": 10, "rule": "token", "window": "hour"}],
    }


def test_template_pages(api: Api, admin: httpx.Client) -> None:
    for name in ("A", "B", "C"):
        api.quota.create_plan(name, [])
    page = admin.get("/api/v2/quotaTemplates/", params={"offset": 1, "limit": 1}).json()
    assert [t["name"] for t in page["data"]] == ["B"]
    assert page["totalCount"] == 3
    assert page["next"] == f"{api.url}/api/v2/quotaTemplates/?offset=2&limit=1"
    assert page["previous"] == f"{api.url}/api/v2/quotaTemplates/?offset=0&limit=1"


# validation: every constraint of the seed -> 422 in DataRobot's shape, nothing changed ---------
def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(QUOTA)
    target: Any = body
    for part in path[:-1]:
        target = target[part]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DROP = object()
BAD_QUOTAS = [
    (("defaultRules", 0, "limit"), -1, "defaultRules[0].limit"),
    (("defaultRules", 0, "limit"), 2**63, "defaultRules[0].limit"),
    (("defaultRules", 0, "limit"), "5", "defaultRules[0].limit"),
    (("defaultRules", 0, "limit"), 1.5, "defaultRules[0].limit"),
    (("defaultRules", 0, "limit"), _DROP, "defaultRules[0].limit"),
    (("defaultRules", 0, "rule"), "tokens", "defaultRules[0].rule"),
    (("defaultRules", 0, "rule"), _DROP, "defaultRules[0].rule"),
    (("defaultRules", 0, "window"), "minute", "defaultRules[0].window"),
    (("defaultRules", 0, "extra"), 1, "defaultRules[0].extra"),
    (("defaultRules",), [{"rule": "token", "window": "hour", "limit": 1}] * 101, "defaultRules"),
    (("defaultRules",), None, "defaultRules"),
    # The same rule and window twice: refused by the engine, named as DataRobot names it.
    (
        ("defaultRules",),
        [{"rule": "token", "limit": 1}, {"rule": "token", "window": "min", "limit": 2}],
        "defaultRules[1]",
    ),
    (("policies", 0, "reserved"), 1.01, "policies[0].reserved"),
    (("policies", 0, "reserved"), -0.1, "policies[0].reserved"),
    (("policies", 0, "reserved"), "0.5", "policies[0].reserved"),
    (("policies", 0, "consumerType"), "group", "policies[0].consumerType"),
    (("policies", 0, "consumerType"), _DROP, "policies[0].consumerType"),
    (("policies", 0, "consumerId"), _DROP, "policies[0].consumerId"),
    (("policies", 0, "consumerId"), "not an id!", "policies[0].consumerId"),
    (("policies", 0, "consumerName"), "x" * 257, "policies[0].consumerName"),
    (("policies", 0, "rules"), _DROP, "policies[0].rules"),
    (("policies", 0, "rules", 0, "limit"), -5, "policies[0].rules[0].limit"),
    (
        ("policies", 0, "rules"),
        [{"rule": "requests", "window": "day", "limit": 1}] * 101,
        "policies[0].rules",
    ),
    # Reserved shares summing to more than 1.
    (("policies", 1, "reserved"), 0.8, "policies"),
    # The same consumer twice.
    (("policies", 1), {"consumerId": "research", "consumerType": "usergroup", "rules": []}, None),
    (("capacity", "capacity"), -1, "capacity.capacity"),
    (("capacity", "capacity"), _DROP, "capacity.capacity"),
    (("capacity", "units"), "tokens", "capacity.units"),
    (("capacity",), None, "capacity"),
    (("saturationThreshold",), 1.5, "saturationThreshold"),
    (("saturationThreshold",), -0.5, "saturationThreshold"),
    (("saturationThreshold",), True, "saturationThreshold"),
    (("resourceType",), "model", "resourceType"),
    (("resourceId",), _DROP, "resourceId"),
    (("resourceId",), "bad id!", "resourceId"),
    (("id",), "deployment:x", "id"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD_QUOTAS)
def test_every_seed_constraint_on_create_is_422(
    api: Api, admin: httpx.Client, path: tuple[Any, ...], value: Any, field: str | None
) -> None:
    response = admin.post("/api/v2/quotas/", json=_with(path, value))
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"message", "errors"}
    assert isinstance(body["message"], str)
    assert all(isinstance(v, str) for v in body["errors"].values())
    if field is None:
        assert any(k.startswith("policies[1]") for k in body["errors"]), body
    else:
        assert field in body["errors"], body
    assert api.quota.resource_quotas().total == 0
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").status_code == 404


def test_more_than_10000_policies_is_422(make_api: ServerFactory) -> None:
    api = make_api(max_body_bytes=4_000_000)  # 10 001 policies do not fit in the default cap
    policies = [{"consumerId": f"u{i}", "consumerType": "user", "rules": []} for i in range(10_001)]
    with api.client() as admin:
        response = admin.post("/api/v2/quotas/", json={**QUOTA, "policies": policies})
        assert response.status_code == 422, response.text
        assert "policies" in response.json()["errors"]
        assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").status_code == 404
        accepted = admin.post("/api/v2/quotas/", json={**QUOTA, "policies": policies[:10_000]})
        assert accepted.status_code == 201
        assert len(accepted.json()["policies"]) == 10_000


PATCH_FIELDS = {"defaultRules", "policies", "capacity", "saturationThreshold", "extra"}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        case
        for case in BAD_QUOTAS
        if case[0][0] in PATCH_FIELDS
        and case[1] is not _DROP
        and not (case[0][0] == "policies" and len(case[0]) == 1 and case[1] is not None)
    ]
    + [(("extra",), 1, "extra")],
)
def test_every_seed_constraint_on_patch_is_422_and_changes_nothing(
    api: Api, admin: httpx.Client, path: tuple[Any, ...], value: Any, field: str | None
) -> None:
    before = create(admin)
    full = _with(path, value)
    body = {path[0]: full[path[0]]}
    response = admin.patch(f"/api/v2/quotas/{QUOTA_ID}/", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert field is None or field in errors, errors
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").json() == before
    assert len(api.quota.audit(subject=f"resources/{QUOTA_ID}").items) == 1


def test_bad_json_is_422_in_datarobot_shape(admin: httpx.Client) -> None:
    response = admin.post(
        "/api/v2/quotas/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert set(response.json()) == {"message", "errors"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "rules": []}, "name"),
        ({"name": "   ", "rules": []}, "name"),
        ({"name": "x" * 129, "rules": []}, "name"),
        ({"rules": []}, "name"),
        ({"name": "T"}, "rules"),
        ({"name": "T", "rules": [{"rule": "token", "limit": -1}]}, "rules[0].limit"),
        ({"name": "T", "rules": [{"rule": "credits", "limit": 1}]}, "rules[0].rule"),
        (
            {"name": "T", "rules": [{"rule": "token", "window": "week", "limit": 1}]},
            "rules[0].window",
        ),
        ({"name": "T", "rules": [{"rule": "token", "limit": 1}] * 101}, "rules"),
        ({"name": "T", "rules": [{"rule": "token", "limit": 1}] * 2}, "rules[1]"),
    ],
)
def test_every_template_constraint_is_422(
    admin: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = admin.post("/api/v2/quotaTemplates/", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"], response.json()
    assert admin.get("/v1/plans").json()["items"] == []


# roles -----------------------------------------------------------------------------------
WRITES = [
    ("POST", "/api/v2/quotas/", QUOTA),
    ("PATCH", f"/api/v2/quotas/{QUOTA_ID}/", {"saturationThreshold": 0.9}),
    ("DELETE", f"/api/v2/quotas/{QUOTA_ID}/", None),
    ("POST", "/api/v2/quotaTemplates/", TEMPLATE),
]
READS = [
    f"/api/v2/quotas/{QUOTA_ID}/",
    "/api/v2/quotas/?offset=0&limit=10",
    "/api/v2/quotaTemplates/?offset=0&limit=10",
]


def test_without_a_valid_key_everything_is_401(api: Api, admin: httpx.Client) -> None:
    create(admin)
    for key in (None, "not-a-key"):
        with api.client(key) as client:
            for path in READS:
                response = client.get(path)
                assert response.status_code == 401
                assert set(response.json()) == {"message"}
                assert response.headers["WWW-Authenticate"] == "Bearer"
            for method, path, body in WRITES:
                assert client.request(method, path, json=body).status_code == 401


def test_service_reads_but_may_not_write_and_member_gets_nothing(
    api: Api, admin: httpx.Client
) -> None:
    create(admin)
    template = admin.post("/api/v2/quotaTemplates/", json={**TEMPLATE, "name": "T"}).json()
    with api.client(api.key("service")) as service:
        for path in [*READS, f"/api/v2/quotaTemplates/{template['id']}/"]:
            assert service.get(path).status_code == 200, path
        for method, path, body in WRITES:
            response = service.request(method, path, json=body)
            assert response.status_code == 403, (method, path)
            assert set(response.json()) == {"message"}
    with api.client(api.key("member", "user:bob")) as member:
        for path in READS:
            assert member.get(path).status_code == 403
        for method, path, body in WRITES:
            assert member.request(method, path, json=body).status_code == 403
    with api.client(api.key("staff")) as staff:
        patched = staff.patch(f"/api/v2/quotas/{QUOTA_ID}/", json={"saturationThreshold": 0.9})
        assert patched.status_code == 200
        assert patched.json()["userId"].startswith("key:")
        assert patched.json()["userId"] != "key:bootstrap"
    # Nothing the refused keys tried changed anything.
    assert admin.get(f"/api/v2/quotas/{QUOTA_ID}/").json()["saturationThreshold"] == 0.9
    assert len(admin.get("/v1/plans").json()["items"]) == 1


# the same engine as /v1 ----------------------------------------------------------------------
def test_a_quota_set_here_reads_back_natively_and_the_other_way(admin: httpx.Client) -> None:
    create(admin)
    native = admin.get(f"/v1/resources/{QUOTA_ID}/quota").json()
    assert native["resource"] == QUOTA_ID
    assert native["capacity"] == {"value": 4, "units": "requests"}
    assert native["saturation_threshold"] == "0.5"
    assert native["policies"][0] == {
        "consumer": "usergroup:research",
        "rules": [{"metric": "requests", "window": "hour", "limit": 10}],
        "reserved": "0.25",
    }
    assert {"metric": "concurrent_requests", "window": None, "limit": 4} in native["default_rules"]

    put = admin.put(
        "/v1/resources/deployment:mistral/quota",
        json={
            "default_rules": [{"metric": "tokens", "window": "day", "limit": 9}],
            "policies": [
                {"consumer": "deployment:caller", "rules": [], "reserved": "0.5"},
                {"consumer": "team:red", "rules": [], "reserved": "0.5"},
            ],
            "capacity": {"value": 1000, "units": "tokens"},
        },
    )
    assert put.status_code == 200, put.text
    seen = admin.get("/api/v2/quotas/deployment:mistral/").json()
    check_quota(seen)
    assert seen["defaultRules"] == [{"limit": 9, "rule": "token", "window": "day"}]
    assert seen["capacity"] == {"capacity": 1000, "units": "token"}
    # team:red has no consumerType in DataRobot: left out of this view...
    assert [(p["consumerType"], p["consumerId"], p["reserved"]) for p in seen["policies"]] == [
        ("deployment", "caller", 0.5)
    ]
    # ...and kept when DataRobot replaces the policies it can see.
    replaced = admin.patch(
        "/api/v2/quotas/deployment:mistral/",
        json={"policies": [{"consumerId": "a", "consumerType": "user", "rules": []}]},
    )
    assert replaced.status_code == 200, replaced.text
    consumers = [
        p["consumer"]
        for p in admin.get("/v1/resources/deployment:mistral/quota").json()["policies"]
    ]
    assert consumers == ["user:a", "team:red"]


def test_a_quota_created_here_governs_consumption(admin: httpx.Client) -> None:
    create(admin)
    alice = {"subject": "user:alice", "resource": QUOTA_ID}
    # Default rule: 2 requests a minute per consumer.
    assert admin.post("/v1/consume", json=alice).status_code == 200
    assert admin.post("/v1/consume", json=alice).status_code == 200
    refused = admin.post("/v1/consume", json=alice)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"]

    # Capacity 4 a minute, threshold 0.5, research keeps 0.25 * 4 = 1: carol gets one
    # more (U = 3 <= 4 - 1), then the last request is research's.
    carol = {"subject": "user:carol", "resource": QUOTA_ID}
    assert admin.post("/v1/consume", json=carol).status_code == 200
    assert admin.post("/v1/consume", json=carol).status_code == 429
    research = {"subject": "usergroup:research", "resource": QUOTA_ID}
    assert admin.post("/v1/consume", json=research).status_code == 200
    # Capacity used up: everyone waits, research too.
    assert admin.post("/v1/consume", json=research).status_code == 429


def test_a_consumer_policy_rule_governs_consumption(admin: httpx.Client) -> None:
    create(
        admin,
        {
            "resourceId": "gpt",
            "resourceType": "deployment",
            "policies": [
                {
                    "consumerId": "bob",
                    "consumerType": "user",
                    "rules": [{"rule": "token", "window": "hour", "limit": 100}],
                }
            ],
        },
    )
    bob = {"subject": "user:bob", "resource": "deployment:gpt"}
    assert admin.post("/v1/consume", json={**bob, "amounts": {"tokens": 60}}).status_code == 200
    over = admin.post("/v1/consume", json={**bob, "amounts": {"tokens": 60}})
    assert over.status_code == 429
    # Another consumer has no rule.
    alice = {"subject": "user:alice", "resource": "deployment:gpt", "amounts": {"tokens": 500}}
    assert admin.post("/v1/consume", json=alice).status_code == 200


def test_a_usergroup_policy_holds_its_members(api: Api, admin: httpx.Client) -> None:
    """A member without a policy of its own is held to its nearest group's policy."""
    create(
        admin,
        {
            "resourceId": "grp",
            "resourceType": "deployment",
            "defaultRules": [{"rule": "requests", "window": "min", "limit": 100}],
            "policies": [
                {
                    "consumerId": "research",
                    "consumerType": "usergroup",
                    "rules": [{"rule": "requests", "window": "min", "limit": 2}],
                },
                {
                    "consumerId": "lead",
                    "consumerType": "user",
                    "rules": [{"rule": "requests", "window": "min", "limit": 5}],
                },
            ],
        },
    )
    for user in ("ann", "lead"):
        api.quota.put_subject(f"user:{user}", parents=["usergroup:research"])
    ann = {"subject": "user:ann", "resource": "deployment:grp"}
    assert admin.post("/v1/consume", json=ann).status_code == 200
    assert admin.post("/v1/consume", json=ann).status_code == 200
    refused = admin.post("/v1/consume", json=ann)
    assert refused.status_code == 429, refused.text
    assert [b["limit"] for b in refused.json()["error"]["details"]["blocked_by"]] == [2]
    # Its own policy wins over its group's; an outsider keeps the default rules.
    lead = {"subject": "user:lead", "resource": "deployment:grp"}
    assert all(admin.post("/v1/consume", json=lead).status_code == 200 for _ in range(5))
    assert admin.post("/v1/consume", json=lead).status_code == 429
    bob = {"subject": "user:bob", "resource": "deployment:grp"}
    assert all(admin.post("/v1/consume", json=bob).status_code == 200 for _ in range(6))


def test_a_usergroup_reservation_is_its_members_to_use(api: Api, admin: httpx.Client) -> None:
    """Saturated, a member may use its group's reserved share; an outsider may not."""
    create(
        admin,
        {
            "resourceId": "res",
            "resourceType": "deployment",
            "policies": [
                {
                    "consumerId": "research",
                    "consumerType": "usergroup",
                    "rules": [],
                    "reserved": 0.5,
                },
            ],
            "capacity": {"capacity": 4, "units": "requests"},
            "saturationThreshold": 0,
        },
    )
    api.quota.put_subject("user:ann", parents=["usergroup:research"])
    outsider = {"subject": "user:bob", "resource": "deployment:res"}
    assert admin.post("/v1/consume", json=outsider).status_code == 200
    assert admin.post("/v1/consume", json=outsider).status_code == 200
    assert admin.post("/v1/consume", json=outsider).status_code == 429  # 2 kept for research
    ann = {"subject": "user:ann", "resource": "deployment:res"}
    assert admin.post("/v1/consume", json=ann).status_code == 200
    assert admin.post("/v1/consume", json=ann).status_code == 200
    assert admin.post("/v1/consume", json=ann).status_code == 429  # capacity used up


def test_the_openapi_document_lists_the_seed_operations(admin: httpx.Client) -> None:
    schema = admin.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/api/v2/quotaTemplates/"]) == {"get", "post"}
    assert set(paths["/api/v2/quotaTemplates/{quotaTemplateId}/"]) == {"get"}
    assert set(paths["/api/v2/quotas/"]) == {"get", "post"}
    assert set(paths["/api/v2/quotas/{quotaId}/"]) == {"get", "patch", "delete"}
    params = {p["name"]: p["required"] for p in paths["/api/v2/quotas/"]["get"]["parameters"]}
    assert params == {"offset": True, "limit": True, "resourceId": False, "resourceType": False}
