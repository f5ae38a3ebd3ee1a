"""check and consume over real HTTP."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime

import httpx

from tests.api.conftest import Api, ServerFactory
from tokenquota import FrozenClock


def test_consume_answers_the_decision_with_rate_limit_headers(
    api: Api, admin: httpx.Client
) -> None:
    api.quota.set_limit("user:alice", "tokens", "day", 10_000)
    response = admin.post(
        "/v1/consume", json={"subject": "user:alice", "amounts": {"tokens": 1200}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["allowed"] is True
    assert body["limits"][0]["remaining"] == 8_800
    assert response.headers["RateLimit-Limit"] == "10000"
    assert response.headers["RateLimit-Remaining"] == "8800"
    assert int(response.headers["RateLimit-Reset"]) > 0


def test_denied_consume_is_429_with_retry_after_and_the_blocking_limits(
    make_api: ServerFactory,
) -> None:
    clock = FrozenClock(datetime(2026, 3, 10, 23, 0, tzinfo=UTC))
    api = make_api(clock=clock)
    api.quota.set_parents("user:alice", ["company:acme"])
    api.quota.set_limit("company:acme", "tokens", "day", 1_000)
    with api.client() as admin:
        admin.post("/v1/consume", json={"subject": "user:alice", "amounts": {"tokens": 900}})
        response = admin.post(
            "/v1/consume", json={"subject": "user:alice", "amounts": {"tokens": 200}}
        )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3600"
    assert response.headers["RateLimit-Remaining"] == "100"
    assert response.headers["RateLimit-Reset"] == "3600"
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert [(b["subject"], b["window"]) for b in error["details"]["blocked_by"]] == [
        ("company:acme", "day")
    ]
    assert api.quota.usage("company:acme").limits[0].used == 900


def test_check_spends_nothing_and_answers_200_either_way(api: Api, admin: httpx.Client) -> None:
    api.quota.set_limit("user:alice", "requests", "minute", 0)
    response = admin.post("/v1/check", json={"subject": "user:alice"})
    assert response.status_code == 200
    assert response.json()["allowed"] is False
    assert api.quota.events().total == 0


def test_bad_input_is_422_naming_the_field(api: Api, admin: httpx.Client) -> None:
    cases = [
        ({"subject": "alice", "amounts": {"tokens": 1}}, "subject"),
        ({"subject": "user:alice", "amounts": {"tokens": -1}}, "amounts.tokens"),
        ({"subject": "user:alice", "amounts": {"tokens": {"x": 1}}}, "amounts.tokens"),
        ({"subject": "user:alice", "mode": "maybe"}, "mode"),
        ({"subject": "user:alice", "timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ({"subject": "user:alice", "resource": "deployment"}, "resource"),
        ({"amounts": {}}, "subject"),
        ({"subject": "user:alice", "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        response = admin.post("/v1/consume", json=body)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["field"] == field, (body, error)
    assert (
        admin.post(
            "/v1/consume", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert api.quota.events().total == 0


def test_every_key_header_form_works_and_bad_keys_are_401(api: Api) -> None:
    key = api.key("service")
    body = {"subject": "user:alice", "amounts": {"tokens": 1}}
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"Authorization": f"Token {key}"},
        {"X-API-Key": key},
    ):
        assert httpx.post(f"{api.url}/v1/consume", json=body, headers=headers).status_code == 200
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": key[:-1] + "x"},
        {"Authorization": key},
    ):
        response = httpx.post(f"{api.url}/v1/consume", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_oversized_bodies_are_413(api: Api, admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/consume", content=b"x" * 300_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_health_readiness_metrics_and_openapi(api: Api, admin: httpx.Client) -> None:
    release = importlib.metadata.version("tokenquota")
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "version": release}
    assert httpx.get(f"{api.url}/readyz").status_code == 200
    admin.post("/v1/consume", json={"subject": "user:alice"})
    metrics = httpx.get(f"{api.url}/metrics").text
    assert (
        'tokenquota_decisions_total{mode="enforce",operation="consume",outcome="allowed"} 1.0'
        in metrics
    )
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert "/v1/consume" in schema["paths"]
    assert schema["info"]["version"] == release
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_bodies_that_are_not_json_are_422_naming_the_body(api: Api, admin: httpx.Client) -> None:
    for raw in (b"{not json", b"\xff"):
        response = admin.post(
            "/v1/consume", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, raw
        assert response.json()["error"]["details"]["field"] == "body"


def test_a_body_sent_without_a_json_content_type_says_to_send_json(
    api: Api, admin: httpx.Client
) -> None:
    body = b'{"subject": "user:alice", "amounts": {"tokens": 1}}'
    for headers in (
        {"content-type": "application/x-www-form-urlencoded"},  # what curl -d sends
        {"content-type": "text/plain"},
        {},
    ):
        request = admin.build_request("POST", "/v1/consume", content=body, headers=headers)
        request.headers.pop("content-type", None)  # httpx adds none for bytes; be sure
        request.headers.update(headers)
        response = admin.send(request)
        assert response.status_code == 422, headers
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["field"] == "body"
        assert error["message"] == (
            "body: send the body as JSON with Content-Type: application/json"
        ), headers
    assert api.quota.events().total == 0


def test_malformed_json_names_the_line_and_column(admin: httpx.Client) -> None:
    raw = b'{\n  "subject": "user:alice",\n  "amounts": {"tokens": 1,}\n}'
    response = admin.post("/v1/consume", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    offset = raw.decode().index(",}") + 1
    assert error["details"]["field"] == "body"
    assert (error["details"]["line"], error["details"]["column"]) == (3, 27)
    assert error["details"]["position"] == offset
    assert "line 3 column 27" in error["message"]
    assert f"(char {offset})" in error["message"]
    assert error["message"].startswith("body: not valid JSON: ")
