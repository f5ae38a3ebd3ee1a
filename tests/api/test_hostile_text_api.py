"""Hostile text over real HTTP: a 422 naming the field, and the connection lives on.

The bodies are raw JSON text, so ``\\u0000`` and a lone ``\\ud800`` escape reach
the server exactly as a hostile client sends them.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory

NUL = "x\\u0000y"  # JSON escapes, not Python ones: the text goes on the wire as is
SURROGATE = "x\\ud800y"

BODIES: list[tuple[str, str, str, str]] = [
    ("POST", "/v1/consume", '{"subject":"user:m","amounts":{"tokens":1},"model":"%s"}', "model"),
    (
        "POST",
        "/v1/consume",
        '{"subject":"user:m","amounts":{"tokens":1},"idempotency_key":"%s"}',
        "idempotency_key",
    ),
    ("POST", "/v1/consume", '{"subject":"user:m","amounts":{"%s":1}}', "amounts"),
    ("POST", "/v1/consume", '{"subject":"user:%s","amounts":{"tokens":1}}', "subject"),
    ("POST", "/v1/plans", '{"name":"%s","rules":[]}', "name"),
    ("PUT", "/v1/subjects/user:m", '{"name":"%s"}', "name"),
    ("PUT", "/v1/subjects/user:m/plan", '{"plan_id":"%s"}', "plan_id"),
]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def api(request: pytest.FixtureRequest, make_api: ServerFactory) -> Api:
    if request.param == "sqlite":
        return make_api()
    db = request.getfixturevalue("postgres_url")
    if request.param == "postgres":
        return make_api(db=db)
    return make_api(db=db, redis=request.getfixturevalue("redis_url"))


@pytest.fixture
def admin(api: Api) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.mark.parametrize("text", [NUL, SURROGATE])
@pytest.mark.parametrize(("method", "path", "body", "field"), BODIES)
def test_hostile_text_is_a_422_and_the_connection_survives(
    admin: httpx.Client, method: str, path: str, body: str, field: str, text: str
) -> None:
    bad = admin.request(
        method, path, content=body % text, headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 422, bad.text
    error = bad.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["field"].startswith(field)
    echoed = error["message"] + error["details"]["field"]
    assert not any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in echoed)  # escaped
    # The same keep-alive connection answers the next request.
    good = admin.post("/v1/consume", json={"subject": "user:m", "amounts": {"tokens": 1}})
    assert good.status_code == 200, good.text
    assert admin.get("/v1/events").status_code == 200


@pytest.mark.parametrize("path", ["/v1/leases/%00/heartbeat", "/v1/reservations/%00/commit"])
def test_a_hold_id_with_nul_is_a_422(admin: httpx.Client, path: str) -> None:
    answer = admin.post(path)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"]["field"] == "id"


def test_a_member_key_cannot_poison_the_ledger(api: Api) -> None:
    """The audit's reproduction: a member key's consume with NUL in the model."""
    with api.client(api.key("member", "user:m")) as member:
        body = '{"subject":"user:m","amounts":{"tokens":1},"model":"x\\u0000y"}'
        bad = member.post("/v1/consume", content=body, headers={"Content-Type": "application/json"})
        assert bad.status_code == 422
        assert member.post(
            "/v1/consume", json={"subject": "user:m", "amounts": {"tokens": 1}}
        ).is_success
    with api.client() as admin:
        events = admin.get("/v1/events")
        assert events.status_code == 200
        assert events.json()["total"] == 1


def test_the_subject_ref_path_pattern_is_documented(admin: httpx.Client) -> None:
    spec = admin.get("/openapi.json").json()
    params = spec["paths"]["/v1/subjects/{ref}"]["get"]["parameters"]
    ref = next(p for p in params if p["name"] == "ref")
    assert ref["schema"]["pattern"] == r"^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9._@-]{1,128}$"
