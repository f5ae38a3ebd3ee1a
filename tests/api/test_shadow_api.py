"""Shadow limits over real HTTP: enforced beside the trial, and hits per shadow limit."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from tests.api.conftest import Api
from tokenquota.api.admin_schemas import LimitsOut
from tokenquota.api.schemas import UsageOut


def ok(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(i["metric"], i["limit"], i["source"], i["shadow"], i["shadow_hits"]) for i in items]


def test_usage_and_limits_answers_carry_shadow_hits_per_shadow_limit(
    api: Api, admin: httpx.Client
) -> None:
    api.quota.set_default("user", "tokens", "day", 100)
    ok(
        admin.put(
            "/v1/subjects/user:h/limits",
            json={
                "limits": [
                    {"metric": "tokens", "window": "day", "limit": 50, "shadow": True},
                    {"metric": "requests", "window": "day", "limit": 1, "shadow": True},
                ]
            },
        ),
        LimitsOut,
    )
    consume = {"subject": "user:h", "amounts": {"tokens": 60}}
    assert admin.post("/v1/consume", json=consume).status_code == 200
    assert admin.post("/v1/consume", json=consume).status_code == 429  # the default enforces
    service = api.client(api.key("service"))
    assert service.post("/v1/consume", json={**consume, "amounts": {"tokens": 1}}).is_success

    usage = ok(admin.get("/v1/subjects/user:h/usage"), UsageOut)
    # tokens: over 50 on all three; requests: the second and third went over 1.
    assert rows(usage["limits"]) == [
        ("requests", -1, "none", False, None),
        ("requests", 1, "override", True, 2),
        ("tokens", 100, "default", False, None),
        ("tokens", 50, "override", True, 3),
    ]
    limits = ok(admin.get("/v1/subjects/user:h/limits"), LimitsOut)
    assert rows(limits["effective"]) == rows(usage["limits"])
    member = api.client(api.key("member", "user:h"))
    assert rows(ok(member.get("/v1/subjects/user:h/usage"), UsageOut)["limits"]) == rows(
        usage["limits"]
    )
    service.close()
    member.close()


def test_openapi_documents_shadow_hits_and_source_none(admin: httpx.Client) -> None:
    schemas = admin.get("/openapi.json").json()["components"]["schemas"]
    for name in ("UsageLimitOut", "EffectiveLimitOut"):
        fields = schemas[name]["properties"]
        assert "would have blocked" in fields["shadow_hits"]["description"]
        assert "none" in fields["source"]["description"]
