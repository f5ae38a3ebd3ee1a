"""Subjects, limits, plans, defaults, keys and the audit log over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from tests.api.conftest import Api, ServerFactory
from tokenquota.api.admin_schemas import (
    AuditPage,
    DefaultsOut,
    KeyCreatedOut,
    KeyPage,
    LimitsOut,
    PlanOut,
    PlansOut,
    SubjectOut,
    SubjectPage,
)
from tokenquota.wire.catalog import encode_plan


def ok(response: httpx.Response, model: type[BaseModel], status: int = 200) -> dict[str, Any]:
    """The body of a success, checked against the model the OpenAPI document promises."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def error(response: httpx.Response, status: int, code: str, field: str | None = None) -> str:
    """Assert the one error shape; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["details"]["field"] == field, body
    message: str = body["error"]["message"]
    return message


def key_id(quota_key: str) -> str:
    return quota_key[3:19]  # tq_<16 hex id>_<secret>


# subjects ---------------------------------------------------------------------------
def test_subject_upsert_get_list_delete(api: Api, admin: httpx.Client) -> None:
    body = ok(
        admin.put(
            "/v1/subjects/user:alice",
            json={"name": "Alice", "parents": ["company:acme"], "metadata": {"tier": "pro"}},
        ),
        SubjectOut,
    )
    assert body == {
        "ref": "user:alice",
        "kind": "user",
        "id": "alice",
        "name": "Alice",
        "metadata": {"tier": "pro"},
        "parents": ["company:acme"],
        "plan_id": None,
    }
    # Absent fields keep what is stored.
    body = ok(admin.put("/v1/subjects/user:alice", json={"name": "Alice B."}), SubjectOut)
    assert (body["name"], body["metadata"], body["parents"]) == (
        "Alice B.",
        {"tier": "pro"},
        ["company:acme"],
    )
    assert ok(admin.get("/v1/subjects/user:alice"), SubjectOut) == body
    assert ok(admin.get("/v1/subjects/company:acme"), SubjectOut)["parents"] == []
    admin.put("/v1/subjects/user:bob", json={"parents": ["company:acme"]})
    admin.put("/v1/subjects/user:carol", json={})

    page = ok(admin.get("/v1/subjects", params={"kind": "user", "limit": 2}), SubjectPage)
    assert [s["ref"] for s in page["items"]] == ["user:alice", "user:bob"]
    assert (page["total"], page["offset"], page["limit"]) == (3, 0, 2)
    page = ok(admin.get("/v1/subjects", params={"kind": "user", "offset": 2}), SubjectPage)
    assert [s["ref"] for s in page["items"]] == ["user:carol"]
    page = ok(admin.get("/v1/subjects", params={"parent": "company:acme"}), SubjectPage)
    assert [s["ref"] for s in page["items"]] == ["user:alice", "user:bob"]

    response = admin.delete("/v1/subjects/user:carol")
    assert response.status_code == 204
    assert response.content == b""
    error(admin.get("/v1/subjects/user:carol"), 404, "not_found", "subject")
    error(admin.delete("/v1/subjects/user:carol"), 404, "not_found")
    assert api.quota.list_subjects(kind="user").total == 2


def test_subject_conflicts_and_bad_input(api: Api, admin: httpx.Client) -> None:
    admin.put("/v1/subjects/user:alice", json={"parents": ["team:a"]})
    admin.put("/v1/subjects/team:a", json={"parents": ["company:acme"]})
    before = api.quota.get_subject("company:acme")

    error(
        admin.put("/v1/subjects/company:acme", json={"parents": ["user:alice"]}),
        409,
        "parent_cycle",
        "parents",
    )
    error(admin.delete("/v1/subjects/team:a"), 409, "conflict")  # it has a child
    error(admin.get("/v1/subjects/user:nobody"), 404, "not_found", "subject")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/subjects/alice", {}, "ref"),
        ("/v1/subjects/User:alice", {}, "ref"),
        ("/v1/subjects/user:al%20ice", {}, "ref"),
        ("/v1/subjects/company:acme", {"surprise": 1}, "surprise"),
        ("/v1/subjects/company:acme", {"parents": ["nope"]}, "parents[0]"),
        ("/v1/subjects/company:acme", {"parents": "team:a"}, "parents"),
        ("/v1/subjects/company:acme", {"metadata": [1]}, "metadata"),
        ("/v1/subjects/company:acme", {"metadata": {"x": "y" * 17_000}}, "metadata"),
        ("/v1/subjects/company:acme", {"name": "n" * 300}, "name"),
    ]
    for path, body, field in cases:
        error(admin.put(path, json=body), 422, "validation_error", field)
    error(admin.get("/v1/subjects/alice"), 422, "validation_error", "ref")
    error(admin.get("/v1/subjects", params={"kind": "User"}), 422, "validation_error", "kind")
    error(admin.get("/v1/subjects", params={"parent": "x"}), 422, "validation_error", "parent")
    error(admin.get("/v1/subjects", params={"limit": 0}), 422, "validation_error", "limit")
    error(admin.get("/v1/subjects", params={"limit": 1001}), 422, "validation_error", "limit")
    error(admin.get("/v1/subjects", params={"offset": -1}), 422, "validation_error", "offset")
    assert api.quota.get_subject("company:acme") == before
    assert api.quota.list_subjects().total == 3


# limits and plans -----------------------------------------------------------------------
def test_limits_set_read_and_remove(api: Api, admin: httpx.Client) -> None:
    api.quota.set_default("user", "requests", "minute", 60)
    body = ok(
        admin.put(
            "/v1/subjects/user:alice/limits",
            json={
                "limits": [
                    {"metric": "tokens", "window": "day", "limit": 10_000},
                    {"metric": "credits", "window": "month", "limit": "12.5", "shadow": True},
                    {"metric": "concurrent_requests", "limit": 2},
                ]
            },
        ),
        LimitsOut,
    )
    assert body["subject"] == "user:alice"
    assert body["plan"] is None
    none: list[int] = []  # no alert thresholds (docs/alerts.md)
    assert body["overrides"] == [
        {
            "metric": "concurrent_requests",
            "window": None,
            "limit": 2,
            "shadow": False,
            "thresholds": none,
        },
        {
            "metric": "credits",
            "window": "month",
            "limit": "12.5",
            "shadow": True,
            "thresholds": none,
        },
        {"metric": "tokens", "window": "day", "limit": 10_000, "shadow": False, "thresholds": none},
    ]
    assert {(e["metric"], e["window"], e["limit"], e["source"]) for e in body["effective"]} == {
        ("concurrent_requests", None, 2, "override"),
        ("credits", "month", -1, "none"),  # only a shadow rule: nothing enforces credits
        ("credits", "month", "12.5", "override"),
        ("tokens", "day", 10_000, "override"),
        ("requests", "minute", 60, "default"),
    }
    assert ok(admin.get("/v1/subjects/user:alice/limits"), LimitsOut) == body

    body = ok(
        admin.put(
            "/v1/subjects/user:alice/limits",
            json={"limits": [{"metric": "tokens", "window": "day", "limit": None}]},
        ),
        LimitsOut,
    )
    assert [o["metric"] for o in body["overrides"]] == ["concurrent_requests", "credits"]
    assert [r.key.metric.value for r in api.quota.limits("user:alice").overrides] == [
        "concurrent_requests",
        "credits",
    ]


def test_bad_limits_change_nothing(api: Api, admin: httpx.Client) -> None:
    api.quota.set_limit("user:alice", "tokens", "day", 100)
    before = api.quota.limits("user:alice")
    good = {"metric": "requests", "window": "minute", "limit": 5}
    second: list[tuple[dict[str, Any], str]] = [
        ({"metric": "tokens", "limit": 5}, "limits[1].window"),
        ({"metric": "tokenz", "window": "day", "limit": 5}, "limits[1].metric"),
        ({"metric": "tokens", "window": "fortnight", "limit": 5}, "limits[1].window"),
        ({"metric": "tokens", "window": "day", "limit": -2}, "limits[1].limit"),
        ({"metric": "tokens", "window": "day", "limit": 1.5}, "limits[1].limit"),
        ({"metric": "concurrent_requests", "window": "day", "limit": 1}, "limits[1].window"),
        (good, "limits[1]"),
    ]
    cases: list[tuple[dict[str, Any], str]] = [
        *(({"limits": [good, item]}, field) for item, field in second),
        ({"limits": [{"metric": "tokens", "window": "day"}]}, "limits[0].limit"),
        ({"limits": [{**good, "surprise": 1}]}, "limits[0].surprise"),
        ({"limits": [good], "extra": True}, "extra"),
        ({}, "limits"),
    ]
    for body, field in cases:
        error(
            admin.put("/v1/subjects/user:alice/limits", json=body), 422, "validation_error", field
        )
    error(
        admin.put("/v1/subjects/nope/limits", json={"limits": [good]}),
        422,
        "validation_error",
        "ref",
    )
    assert api.quota.limits("user:alice") == before
    assert api.quota.audit().total == 1


def test_plan_assignment(api: Api, admin: httpx.Client) -> None:
    plan = ok(
        admin.post(
            "/v1/plans",
            json={"name": "Gold", "rules": [{"metric": "tokens", "window": "day", "limit": 500}]},
        ),
        PlanOut,
        201,
    )
    body = ok(admin.put("/v1/subjects/user:alice/plan", json={"plan_id": plan["id"]}), LimitsOut)
    assert body["plan"] == plan
    assert [(e["limit"], e["source"]) for e in body["effective"]] == [(500, "plan")]
    assert ok(admin.get("/v1/subjects/user:alice"), SubjectOut)["plan_id"] == plan["id"]
    assert api.quota.get_subject("user:alice").plan_id == plan["id"]

    error(
        admin.put("/v1/subjects/user:alice/plan", json={"plan_id": "nope"}),
        404,
        "not_found",
        "plan_id",
    )
    error(admin.put("/v1/subjects/user:alice/plan", json={}), 422, "validation_error", "plan_id")
    assert api.quota.get_subject("user:alice").plan_id == plan["id"]

    body = ok(admin.delete("/v1/subjects/user:alice/plan"), LimitsOut)
    assert (body["plan"], body["effective"]) == (None, [])
    assert api.quota.get_subject("user:alice").plan_id is None
    actions = [a.action for a in api.quota.audit(subject="user:alice").items]
    assert actions == ["plan.assign", "plan.assign"]


def test_plans_crud(api: Api, admin: httpx.Client) -> None:
    rules = [
        {"metric": "credits", "window": "month", "limit": "2000.5"},
        {"metric": "requests", "window": "minute", "limit": 100, "shadow": True},
    ]
    gold = ok(admin.post("/v1/plans", json={"name": "Gold", "rules": rules}), PlanOut, 201)
    assert gold["name"] == "Gold"
    assert gold["rules"] == [
        {
            "metric": "credits",
            "window": "month",
            "limit": "2000.5",
            "shadow": False,
            "thresholds": [],
        },
        {"metric": "requests", "window": "minute", "limit": 100, "shadow": True, "thresholds": []},
    ]
    free = ok(admin.post("/v1/plans", json={"name": "Free"}), PlanOut, 201)
    assert free["rules"] == []
    error(admin.post("/v1/plans", json={"name": "Gold"}), 409, "conflict", "name")
    error(admin.post("/v1/plans", json={"name": " "}), 422, "validation_error", "name")
    error(admin.post("/v1/plans", json={"rules": []}), 422, "validation_error", "name")
    error(
        admin.post("/v1/plans", json={"name": "X", "rules": [{"metric": "tokens", "limit": 1}]}),
        422,
        "validation_error",
        "rules[0].window",
    )

    listed = ok(admin.get("/v1/plans"), PlansOut)
    assert [p["name"] for p in listed["items"]] == ["Free", "Gold"]
    assert ok(admin.get(f"/v1/plans/{gold['id']}"), PlanOut) == gold
    error(admin.get("/v1/plans/nope"), 404, "not_found", "plan_id")

    updated = ok(
        admin.put(
            f"/v1/plans/{gold['id']}",
            json={"name": "Platinum", "rules": [{"metric": "tokens", "window": "day", "limit": 9}]},
        ),
        PlanOut,
    )
    assert updated["id"] == gold["id"]
    assert updated["name"] == "Platinum"
    assert updated["rules"] == [
        {"metric": "tokens", "window": "day", "limit": 9, "shadow": False, "thresholds": []}
    ]
    assert ok(admin.put(f"/v1/plans/{gold['id']}", json={}), PlanOut) == updated
    error(admin.put(f"/v1/plans/{gold['id']}", json={"name": "Free"}), 409, "conflict", "name")
    error(admin.put("/v1/plans/nope", json={"name": "Y"}), 404, "not_found")
    error(admin.put(f"/v1/plans/{gold['id']}", json={"id": "x"}), 422, "validation_error", "id")
    assert api.quota.get_plan(gold["id"]).name == "Platinum"

    api.quota.assign_plan("user:alice", gold["id"])
    error(admin.delete(f"/v1/plans/{gold['id']}"), 409, "conflict")
    api.quota.assign_plan("user:alice", None)
    assert admin.delete(f"/v1/plans/{gold['id']}").status_code == 204
    error(admin.get(f"/v1/plans/{gold['id']}"), 404, "not_found")
    error(admin.delete(f"/v1/plans/{gold['id']}"), 404, "not_found")
    assert [p.name for p in api.quota.plans()] == ["Free"]


# defaults -----------------------------------------------------------------------------
def test_defaults_runtime_wins_over_config(make_api: ServerFactory) -> None:
    api = make_api(defaults=[{"kind": "user", "metric": "tokens", "window": "day", "limit": 100}])
    with api.client() as admin:
        body = ok(admin.get("/v1/defaults"), DefaultsOut)
        assert body == {
            "defaults": [
                {
                    "kind": "user",
                    "metric": "tokens",
                    "window": "day",
                    "limit": 100,
                    "shadow": False,
                    "thresholds": [],
                    "origin": "config",
                }
            ]
        }
        body = ok(
            admin.put(
                "/v1/defaults",
                json={
                    "defaults": [
                        {"kind": "user", "metric": "tokens", "window": "day", "limit": 200},
                        {"kind": "company", "metric": "credits", "window": "month", "limit": "9.5"},
                    ]
                },
            ),
            DefaultsOut,
        )
        assert [(d["kind"], d["limit"], d["origin"]) for d in body["defaults"]] == [
            ("company", "9.5", "runtime"),
            ("user", 200, "runtime"),
        ]
        limits = ok(admin.get("/v1/subjects/user:x/limits"), LimitsOut)
        assert [(e["limit"], e["source"]) for e in limits["effective"]] == [(200, "default")]

        body = ok(
            admin.put(
                "/v1/defaults",
                json={
                    "defaults": [
                        {"kind": "user", "metric": "tokens", "window": "day", "limit": None}
                    ]
                },
            ),
            DefaultsOut,
        )
        assert [(d["kind"], d["limit"], d["origin"]) for d in body["defaults"]] == [
            ("company", "9.5", "runtime"),
            ("user", 100, "config"),
        ]
        before = api.quota.defaults()
        good = {"kind": "user", "metric": "requests", "window": "minute", "limit": 5}
        for bad, field in [
            ({**good, "kind": "User"}, "defaults[1].kind"),
            ({**good, "window": "nope"}, "defaults[1].window"),
            ({**good, "shadow": "maybe"}, "defaults[1].shadow"),
            ({"kind": "user", "metric": "tokens", "window": "day"}, "defaults[1].limit"),
        ]:
            error(
                admin.put("/v1/defaults", json={"defaults": [good, bad]}),
                422,
                "validation_error",
                field,
            )
        assert api.quota.defaults() == before


# keys -----------------------------------------------------------------------------------
def test_keys_create_list_revoke(api: Api, admin: httpx.Client) -> None:
    created = ok(
        admin.post("/v1/keys", json={"role": "service", "name": "billing"}), KeyCreatedOut, 201
    )
    secret = created["key"]
    assert created["role"] == "service"
    assert (created["subject"], created["name"], created["revoked_at"]) == (None, "billing", None)
    assert secret.startswith(f"tq_{created['id']}_")
    member = ok(
        admin.post("/v1/keys", json={"role": "member", "subject": "user:alice"}),
        KeyCreatedOut,
        201,
    )
    assert member["subject"] == "user:alice"

    with api.client(secret) as service:
        assert service.get("/v1/plans").status_code == 200

    listed = admin.get("/v1/keys")
    page = ok(listed, KeyPage)
    assert [k["id"] for k in page["items"]] == [created["id"], member["id"]]
    assert all(
        set(k) == {"id", "role", "subject", "name", "created_at", "revoked_at"}
        for k in page["items"]
    )
    assert secret not in listed.text
    assert secret.split("_", 2)[2] not in listed.text
    assert member["key"] not in listed.text
    assert ok(admin.get("/v1/keys", params={"offset": 1, "limit": 1}), KeyPage)["items"] == [
        {k: v for k, v in member.items() if k != "key"}
    ]

    assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
    with api.client(secret) as service:
        error(service.get("/v1/plans"), 401, "unauthorized")
    error(admin.delete(f"/v1/keys/{created['id']}"), 404, "not_found", "id")
    error(admin.delete("/v1/keys/0123456789abcdef"), 404, "not_found", "id")
    revoked = ok(admin.get("/v1/keys"), KeyPage)["items"][0]
    assert revoked["revoked_at"] is not None

    for body, field in [
        ({"role": "root"}, "role"),
        ({"role": "member"}, "subject"),
        ({"role": "service", "subject": "user:alice"}, "subject"),
        ({"role": "member", "subject": "alice"}, "subject"),
        ({"role": "service", "name": ""}, "name"),
        ({"role": "service", "secret": "mine"}, "secret"),
        ({}, "role"),
    ]:
        error(admin.post("/v1/keys", json=body), 422, "validation_error", field)
    assert api.quota.list_keys().total == 2


# audit ----------------------------------------------------------------------------------
def test_audit_names_the_key_that_made_each_change(api: Api, admin: httpx.Client) -> None:
    staff_key, staff_secret = api.quota.create_key("staff")
    with api.client(staff_secret) as staff:
        staff.put(
            "/v1/subjects/user:alice/limits",
            json={"limits": [{"metric": "tokens", "window": "day", "limit": 10}]},
        )
        staff.put(
            "/v1/subjects/user:alice/limits",
            json={"limits": [{"metric": "tokens", "window": "day", "limit": 20}]},
        )
        plan = staff.post("/v1/plans", json={"name": "Gold"}).json()
        page = ok(staff.get("/v1/audit", params={"subject": "user:alice"}), AuditPage)
    admin.put(
        "/v1/defaults",
        json={"defaults": [{"kind": "user", "metric": "tokens", "window": "day", "limit": 5}]},
    )
    created = admin.post("/v1/keys", json={"role": "service"}).json()

    assert page["total"] == 2
    first, second = page["items"]
    assert (first["actor"], first["action"], first["target"]) == (
        f"key:{staff_key.id}",
        "override.set",
        "user:alice",
    )
    assert first["before"] is None
    assert first["after"] == {
        "metric": "tokens",
        "window": "day",
        "limit": 10,
        "shadow": False,
        "thresholds": [],
    }
    assert (second["before"]["limit"], second["after"]["limit"]) == (10, 20)

    plan_audit = ok(admin.get("/v1/audit", params={"subject": f"plans/{plan['id']}"}), AuditPage)
    assert [(a["actor"], a["action"]) for a in plan_audit["items"]] == [
        (f"key:{staff_key.id}", "plan.create")
    ]
    defaults = ok(admin.get("/v1/audit", params={"subject": "defaults/user"}), AuditPage)
    assert [(a["actor"], a["action"]) for a in defaults["items"]] == [
        ("key:bootstrap", "default.set")
    ]
    keys = ok(admin.get("/v1/audit", params={"subject": f"keys/{created['id']}"}), AuditPage)
    assert [(a["actor"], a["action"]) for a in keys["items"]] == [("key:bootstrap", "key.create")]
    assert created["key"] not in admin.get("/v1/audit").text

    everything = ok(admin.get("/v1/audit", params={"offset": 1, "limit": 2}), AuditPage)
    assert (everything["total"], len(everything["items"]), everything["offset"]) == (
        api.quota.audit().total,
        2,
        1,
    )
    full = ok(admin.get("/v1/audit"), AuditPage)["items"]
    assert everything["items"] == full[1:3]
    error(admin.get("/v1/audit", params={"subject": "nope"}), 422, "validation_error", "subject")
    error(admin.get("/v1/audit", params={"limit": 5000}), 422, "validation_error", "limit")


# round trips ------------------------------------------------------------------------------
def test_set_through_the_api_read_through_the_engine_and_back(
    api: Api, admin: httpx.Client
) -> None:
    admin.put("/v1/subjects/user:alice", json={"name": "Alice", "parents": ["company:acme"]})
    admin.put(
        "/v1/subjects/company:acme/limits",
        json={"limits": [{"metric": "tokens", "window": "month", "limit": 1_000}]},
    )
    subject = api.quota.get_subject("user:alice")
    assert (subject.name, [str(p) for p in subject.parents]) == ("Alice", ["company:acme"])
    (effective,) = api.quota.limits("company:acme").effective
    assert (effective.value, effective.source.value) == (1_000, "override")
    assert api.quota.consume("user:alice", tokens=1_001).allowed is False

    api.quota.put_subject("user:bob", name="Bob", parents=["company:acme"], metadata={"a": 1})
    plan = api.quota.create_plan("Gold", [{"metric": "requests", "window": "day", "limit": 7}])
    api.quota.assign_plan("user:bob", plan.id)
    api.quota.set_default("company", "credits", "month", "3.25")
    body = ok(admin.get("/v1/subjects/user:bob"), SubjectOut)
    assert (body["name"], body["metadata"], body["plan_id"]) == ("Bob", {"a": 1}, plan.id)
    assert ok(admin.get("/v1/subjects/user:bob/limits"), LimitsOut)["plan"] == encode_plan(plan)
    assert ok(admin.get(f"/v1/plans/{plan.id}"), PlanOut) == encode_plan(plan)
    defaults = ok(admin.get("/v1/defaults"), DefaultsOut)["defaults"]
    assert [(d["kind"], d["limit"], d["origin"]) for d in defaults] == [
        ("company", "3.25", "runtime")
    ]
    children = ok(admin.get("/v1/subjects", params={"parent": "company:acme"}), SubjectPage)
    assert [s["ref"] for s in children["items"]] == ["user:alice", "user:bob"]


# the OpenAPI document -----------------------------------------------------------------------
BUILT = [
    ("put", "/v1/subjects/{ref}"),
    ("get", "/v1/subjects/{ref}"),
    ("delete", "/v1/subjects/{ref}"),
    ("get", "/v1/subjects"),
    ("put", "/v1/subjects/{ref}/limits"),
    ("get", "/v1/subjects/{ref}/limits"),
    ("put", "/v1/subjects/{ref}/plan"),
    ("delete", "/v1/subjects/{ref}/plan"),
    ("get", "/v1/subjects/{ref}/usage"),
    ("get", "/v1/subjects/{ref}/history"),
    ("get", "/v1/events"),
    ("get", "/v1/defaults"),
    ("put", "/v1/defaults"),
    ("get", "/v1/plans"),
    ("post", "/v1/plans"),
    ("get", "/v1/plans/{plan_id}"),
    ("put", "/v1/plans/{plan_id}"),
    ("delete", "/v1/plans/{plan_id}"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{key_id}"),
    ("get", "/v1/audit"),
]


def test_openapi_documents_every_endpoint(api: Api) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    for method, path in BUILT:
        operation = schema["paths"][path][method]
        assert operation["summary"], path
        assert operation.get("description"), path
        responses = operation["responses"]
        for status in ("401", "403", "422"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"
            }, (method, path, status)
        success = next(s for s in responses if s.startswith("2"))
        if success != "204":
            assert "$ref" in responses[success]["content"]["application/json"]["schema"], path
    events = schema["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"application/json", "text/csv", "application/x-ndjson"}
