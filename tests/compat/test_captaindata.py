"""Captain Data's ``GET /v1/quotas`` (seed 004), over real HTTP against a live server.

Usage is made through the native API (``POST /v1/consume``), limits and plans are set
through it too, and the clock is frozen, so each answer can be stated exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis

from tests.api.conftest import Api, ServerFactory
from tokenquota import FrozenClock

WS_ID = "123e4567-e89b-12d3-a456-426614174000"
WS = f"workspace:{WS_ID}"
MID_JANUARY = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
UNCAPPED = 2**53 - 1

# The seed's own example answer, field for field.
SEED_EXAMPLE = {
    "name": "Acme Corporation",
    "uid": "123e4567-e89b-12d3-a456-426614174000",
    "credits_left": 1250.5,
    "credits_max": 2000,
    "credits_used": 749.5,
    "plan_name": "Gold",
    "current_month_start": "2024-01-01T00:00:00Z",
    "current_month_end": "2024-01-31T23:59:59Z",
}
FIELDS = set(SEED_EXAMPLE)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(MID_JANUARY)


@pytest.fixture
def server(make_api: ServerFactory, clock: FrozenClock) -> Api:
    return make_api(clock=clock)


@pytest.fixture
def native(server: Api) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def quotas(server: Api, key: str | None, **headers: str) -> httpx.Response:
    sent = {"X-API-Key": key} if key is not None else {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.get("/v1/quotas", headers={**sent, **headers})


def ok(server: Api, key: str) -> dict[str, Any]:
    response = quotas(server, key)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def put_subject(native: httpx.Client, ref: str, **body: Any) -> None:
    response = native.put(f"/v1/subjects/{ref}", json=body)
    assert response.status_code == 200, response.text


def consume(native: httpx.Client, subject: str, credits: str, **extra: Any) -> None:
    body = {"subject": subject, "amounts": {"credits": credits}, **extra}
    response = native.post("/v1/consume", json=body)
    assert response.status_code == 200, response.text


def set_month_credits(native: httpx.Client, ref: str, limit: object, **extra: Any) -> None:
    rule = {"metric": "credits", "window": "month", "limit": limit, **extra}
    response = native.put(f"/v1/subjects/{ref}/limits", json={"limits": [rule]})
    assert response.status_code == 200, response.text


def gold_plan(native: httpx.Client, credits: int = 2000) -> str:
    rules = [{"metric": "credits", "window": "month", "limit": credits}]
    response = native.post("/v1/plans", json={"name": "Gold", "rules": rules})
    assert response.status_code == 201, response.text
    plan_id: str = response.json()["id"]
    return plan_id


def assign(native: httpx.Client, ref: str, plan_id: str) -> None:
    response = native.put(f"/v1/subjects/{ref}/plan", json={"plan_id": plan_id})
    assert response.status_code == 200, response.text


# the answer ---------------------------------------------------------------------------
def test_the_seed_example_is_answered_field_for_field(server: Api, native: httpx.Client) -> None:
    put_subject(native, WS, name="Acme Corporation")
    assign(native, WS, gold_plan(native))
    consume(native, WS, "749.5")

    response = quotas(server, server.key("member", WS))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == SEED_EXAMPLE


def test_every_documented_field_has_its_documented_type(server: Api, native: httpx.Client) -> None:
    put_subject(native, WS, name="Acme Corporation")
    set_month_credits(native, WS, 100)
    consume(native, WS, "0.25")

    body = ok(server, server.key("member", WS))

    assert set(body) == FIELDS
    assert str(uuid.UUID(body["uid"])) == body["uid"]
    assert isinstance(body["name"], str)
    assert len(body["name"]) <= 55
    assert type(body["credits_max"]) is int
    assert body["credits_max"] >= 0
    for field in ("credits_left", "credits_used"):
        assert isinstance(body[field], int | float)
        assert not isinstance(body[field], bool)
        assert body[field] >= 0
    assert body["plan_name"] is None or isinstance(body["plan_name"], str)
    for field in ("current_month_start", "current_month_end"):
        assert body[field].endswith("Z")
        assert datetime.fromisoformat(body[field]).tzinfo is not None
    assert body == {
        "name": "Acme Corporation",
        "uid": WS_ID,
        "credits_left": 99.75,
        "credits_max": 100,
        "credits_used": 0.25,
        "plan_name": None,
        "current_month_start": "2024-01-01T00:00:00Z",
        "current_month_end": "2024-01-31T23:59:59Z",
    }


def test_the_openapi_document_declares_the_seed_fields(server: Api, native: httpx.Client) -> None:
    document = native.get("/openapi.json").json()
    operation = document["paths"]["/v1/quotas"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    props = schema["properties"]

    assert set(props) == FIELDS
    assert set(schema["required"]) == FIELDS
    assert props["credits_max"]["type"] == "integer"
    assert props["credits_left"]["type"] == props["credits_used"]["type"] == "number"
    assert props["credits_max"]["minimum"] == props["credits_left"]["minimum"] == 0
    assert props["name"]["maxLength"] == 55
    assert props["current_month_start"]["format"] == "date-time"
    assert {"type": "null"} in props["plan_name"]["anyOf"]
    for status in ("401", "403"):
        error = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert document["components"]["schemas"][error.rsplit("/", 1)[1]]["required"] == ["message"]


@pytest.mark.parametrize("capped", [True, False], ids=["capped", "uncapped"])
def test_a_200_answer_conforms_to_the_openapi_document(
    server: Api, native: httpx.Client, capped: bool
) -> None:
    # tests/api/test_schemathesis.py calls with an admin key, which only ever gets 403 here.
    put_subject(native, WS, name="Acme Corporation")
    if capped:
        assign(native, WS, gold_plan(native))
    consume(native, WS, "749.5")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=30)
    case = schema["/v1/quotas"]["GET"].Case()

    response = case.call_and_validate(headers={"X-API-Key": server.key("member", WS)})

    assert response.status_code == 200


def test_credits_are_exact_decimals_written_as_json_numbers(
    server: Api, native: httpx.Client
) -> None:
    set_month_credits(native, WS, 1)
    consume(native, WS, "0.1")
    consume(native, WS, "0.2")

    response = quotas(server, server.key("member", WS))

    # 0.1 + 0.2 in floats would be 0.30000000000000004; the decimals leave exact.
    assert '"credits_used":0.3,' in response.text
    assert '"credits_left":0.7,' in response.text


# usage ----------------------------------------------------------------------------------
def test_native_consumes_below_the_workspace_count_and_their_keys_see_it(
    server: Api, native: httpx.Client
) -> None:
    put_subject(native, "user:alice", parents=["group:research"])
    put_subject(native, "group:research", parents=[WS])
    set_month_credits(native, WS, 50)
    consume(native, "user:alice", "10")
    consume(native, WS, "2.5")
    consume(native, "user:bob", "1000")  # in no workspace: not ours

    for key in (server.key("member", WS), server.key("member", "user:alice")):
        body = ok(server, key)
        assert body["uid"] == WS_ID
        assert body["credits_used"] == 12.5
        assert body["credits_left"] == 37.5
        assert body["credits_max"] == 50


def test_the_nearest_workspace_above_the_key_is_the_callers(
    server: Api, native: httpx.Client
) -> None:
    put_subject(native, "user:carol", parents=["team:blue"])
    put_subject(native, "team:blue", parents=["workspace:near"])
    put_subject(native, "workspace:near", parents=["workspace:far"])

    put_subject(native, "user:erin", parents=["workspace:second", "workspace:first"])

    assert ok(server, server.key("member", "user:carol"))["uid"] == "near"
    # Two at the same distance: the parent listed first.
    assert ok(server, server.key("member", "user:erin"))["uid"] == "second"


def test_credits_left_is_never_negative_after_a_record_mode_overspend(
    server: Api, native: httpx.Client
) -> None:
    set_month_credits(native, WS, 10)
    consume(native, WS, "15.5", mode="record")

    body = ok(server, server.key("member", WS))

    assert body["credits_used"] == 15.5
    assert body["credits_left"] == 0
    assert body["credits_max"] == 10


def test_an_enforced_consume_over_the_limit_changes_nothing(
    server: Api, native: httpx.Client
) -> None:
    set_month_credits(native, WS, 10)
    consume(native, WS, "4")
    denied = native.post("/v1/consume", json={"subject": WS, "amounts": {"credits": "7"}})
    assert denied.status_code == 429

    body = ok(server, server.key("member", WS))

    assert (body["credits_used"], body["credits_left"]) == (4, 6)


# the month ------------------------------------------------------------------------------
def test_the_month_turns_over_from_january_31_to_february(
    server: Api, native: httpx.Client, clock: FrozenClock
) -> None:
    set_month_credits(native, WS, 100)
    key = server.key("member", WS)
    clock.set(datetime(2024, 1, 31, 23, 59, 59, 500_000, tzinfo=UTC))
    consume(native, WS, "30")

    january = ok(server, key)
    assert january["current_month_start"] == "2024-01-01T00:00:00Z"
    assert january["current_month_end"] == "2024-01-31T23:59:59Z"
    assert january["credits_used"] == 30

    clock.advance(timedelta(milliseconds=500))  # 2024-02-01T00:00:00Z
    february = ok(server, key)
    assert february["current_month_start"] == "2024-02-01T00:00:00Z"
    assert february["current_month_end"] == "2024-02-29T23:59:59Z"  # a leap year
    assert (february["credits_used"], february["credits_left"]) == (0, 100)


def test_the_month_is_the_store_time_zones(make_api: ServerFactory) -> None:
    clock = FrozenClock(datetime(2024, 1, 31, 22, 30, tzinfo=UTC))  # 23:30 in Stockholm
    server = make_api(clock=clock, timezone="Europe/Stockholm")
    with server.client() as native:
        set_month_credits(native, WS, 100)
        consume(native, WS, "30")  # still January there
        key = server.key("member", WS)

        clock.set(datetime(2024, 1, 31, 23, 30, tzinfo=UTC))  # 00:30 on February 1 there
        consume(native, WS, "5")
        body = ok(server, key)

    assert body["current_month_start"] == "2024-01-31T23:00:00Z"
    assert body["current_month_end"] == "2024-02-29T22:59:59Z"
    assert body["credits_used"] == 5


# plans and limits set natively ------------------------------------------------------------
def test_plan_name_follows_the_assigned_plan(server: Api, native: httpx.Client) -> None:
    put_subject(native, WS, name="Acme")
    key = server.key("member", WS)
    assert ok(server, key)["plan_name"] is None

    plan_id = gold_plan(native, credits=2000)
    assign(native, WS, plan_id)
    assert (ok(server, key)["plan_name"], ok(server, key)["credits_max"]) == ("Gold", 2000)

    renamed = native.put(f"/v1/plans/{plan_id}", json={"name": "Platinum"})
    assert renamed.status_code == 200, renamed.text
    assert ok(server, key)["plan_name"] == "Platinum"

    assert native.delete(f"/v1/subjects/{WS}/plan").status_code == 200
    assert ok(server, key)["plan_name"] is None


def test_a_credits_per_month_limit_set_natively_is_credits_max(
    server: Api, native: httpx.Client
) -> None:
    key = server.key("member", WS)
    assign(native, WS, gold_plan(native, credits=2000))
    consume(native, WS, "100")

    set_month_credits(native, WS, 500)  # the override wins over the plan
    assert ok(server, key)["credits_max"] == 500
    assert ok(server, key)["credits_left"] == 400

    limits = native.get(f"/v1/subjects/{WS}/limits").json()["effective"]
    month = [x for x in limits if (x["metric"], x["window"]) == ("credits", "month")]
    assert [(x["limit"], x["source"]) for x in month] == [("500", "override")]

    set_month_credits(native, WS, None)  # removed: the plan's limit again
    assert ok(server, key)["credits_max"] == 2000


def test_a_limit_set_after_the_usage_still_counts_that_usage(
    server: Api, native: httpx.Client
) -> None:
    consume(native, WS, "42")
    set_month_credits(native, WS, 100)

    assert ok(server, server.key("member", WS))["credits_used"] == 42


def test_a_fractional_limit_rounds_credits_max_down_but_not_credits_left(
    server: Api, native: httpx.Client
) -> None:
    set_month_credits(native, WS, "500.75")
    consume(native, WS, "0.5")

    body = ok(server, server.key("member", WS))

    assert (body["credits_max"], body["credits_left"]) == (500, 500.25)


@pytest.mark.parametrize(
    "limit",
    [None, -1, "shadow"],
    ids=["no-limit", "unlimited", "shadow-limit"],
)
def test_uncapped_credits_report_the_largest_exact_integer_as_max_and_left(
    server: Api, native: httpx.Client, limit: object
) -> None:
    if limit == "shadow":
        set_month_credits(native, WS, 10, shadow=True)
    elif limit is not None:
        set_month_credits(native, WS, limit)
    consume(native, WS, "12.5")
    consume(native, WS, "7", timestamp="2023-12-31T23:00:00Z")  # last month: not counted

    body = ok(server, server.key("member", WS))

    assert body["credits_max"] == UNCAPPED
    assert body["credits_used"] == 12.5
    assert body["credits_left"] == UNCAPPED


def test_only_the_month_window_is_reported(server: Api, native: httpx.Client) -> None:
    day = {"metric": "credits", "window": "day", "limit": 5}
    month = {"metric": "credits", "window": "month", "limit": 300}
    response = native.put(f"/v1/subjects/{WS}/limits", json={"limits": [day, month]})
    assert response.status_code == 200
    consume(native, WS, "3")

    body = ok(server, server.key("member", WS))

    assert (body["credits_max"], body["credits_used"], body["credits_left"]) == (300, 3, 297)


# name --------------------------------------------------------------------------------
def test_name_is_cut_to_55_characters_and_falls_back_to_the_id(
    server: Api, native: httpx.Client
) -> None:
    put_subject(native, WS, name="A" * 80)
    assert ok(server, server.key("member", WS))["name"] == "A" * 55

    other = "workspace:0f8fad5b-d9cb-469f-a165-70867728950e"
    consume(native, other, "1")  # created on first use, with no name
    assert ok(server, server.key("member", other))["name"] == other.split(":")[1]


# authentication and errors --------------------------------------------------------------
def test_no_key_is_401_in_captain_data_shape(server: Api) -> None:
    response = quotas(server, None)

    assert response.status_code == 401
    assert set(response.json()) == {"message"}
    assert response.json()["message"]


@pytest.mark.parametrize("bad", ["nope", "tq_0000000000000000_wrong-secret"])
def test_a_bad_key_is_401_in_captain_data_shape(server: Api, bad: str) -> None:
    response = quotas(server, bad)

    assert response.status_code == 401
    assert response.json() == {"message": "the API key is not valid"}


def test_a_revoked_key_is_401(server: Api, native: httpx.Client) -> None:
    key, secret = server.quota.create_key("member", subject=WS)
    assert quotas(server, secret).status_code == 200
    assert native.delete(f"/v1/keys/{key.id}").status_code == 204

    assert quotas(server, secret).status_code == 401


@pytest.mark.parametrize("role", ["admin", "staff", "service"])
def test_a_key_of_no_workspace_is_403(server: Api, role: str) -> None:
    response = quotas(server, server.key(role))

    assert response.status_code == 403
    assert set(response.json()) == {"message"}
    assert "workspace" in response.json()["message"]


def test_a_member_key_outside_every_workspace_is_403(server: Api, native: httpx.Client) -> None:
    put_subject(native, "user:dave", parents=["company:acme"])

    response = quotas(server, server.key("member", "user:dave"))

    assert response.status_code == 403
    assert response.json() == {"message": "this key's subject user:dave is in no workspace"}


def test_an_unknown_workspace_under_strict_subjects_is_404(make_api: ServerFactory) -> None:
    server = make_api(clock=FrozenClock(MID_JANUARY), strict_subjects=True)

    response = quotas(server, server.key("member", WS))

    assert response.status_code == 404
    assert set(response.json()) == {"message"}


def test_the_other_key_headers_work_too(server: Api) -> None:
    key = server.key("member", WS)
    for header in (f"Bearer {key}", f"Token {key}"):
        response = quotas(server, None, Authorization=header)
        assert response.status_code == 200, response.text
        assert response.json()["uid"] == WS_ID


def test_other_errors_under_the_prefix_take_the_same_shape(server: Api) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wrong_method = client.post("/v1/quotas", headers={"X-API-Key": server.key("member", WS)})
        unknown = client.get("/v1/quotas/elsewhere")

    assert wrong_method.status_code == 405
    assert unknown.status_code == 404
    for response in (wrong_method, unknown):
        assert set(response.json()) == {"message"}
