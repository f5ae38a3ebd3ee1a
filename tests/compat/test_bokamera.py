"""BokaMera's AI chat usage API (seeds 001 and 003), over real HTTP against a live server.

Limits are set and usage is made natively (engine or ``/v1``), the clock is frozen,
so each answer can be stated exactly; then the same store is read back natively.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import FrozenClock

PATH = "/assistant/ai-chat/usage"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
COMPANY_ID = "5b8f1c2e-3a4d-4e6f-8a9b-0c1d2e3f4a5b"
OTHER_ID = "9e8d7c6b-5a49-4382-9170-a1b2c3d4e5f6"
USER_ID = "0f1e2d3c-4b5a-4697-8877-665544332211"
COMPANY = f"company:{COMPANY_ID}"
OTHER = f"company:{OTHER_ID}"
USER = f"user:{USER_ID}"
INT32_MAX = 2**31 - 1
UNCAPPED = 2**53 - 1  # TokensRemaining when the company has no limit on the window

# AiChatUsageResponse as the seeds declare it: name -> JSON type (ResponseStatus only on errors).
FIELDS: dict[str, type] = {
    "CompanyId": str,  # a Guid
    "TokensUsed": int,  # Long
    "TokenLimit": int,  # Integer
    "TokensRemaining": int,  # Long
    "IsWithinBudget": bool,
    "WindowDays": int,  # Integer
}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def server(make_api: ServerFactory, clock: FrozenClock) -> Api:
    api = make_api(clock=clock)
    api.quota.set_parents(USER, [COMPANY])
    return api


@pytest.fixture
def native(server: Api) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def member(server: Api) -> str:
    """A member key bound to a user of COMPANY, as a BokaMera user is."""
    return server.key("member", USER)


def call(
    server: Api,
    method: str,
    key: str | None,
    *,
    params: dict[str, Any] | None = None,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Authorization": f"Bearer {key}"} if key is not None else {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.request(
            method,
            PATH,
            params=params,
            json=json,
            content=content,
            headers={**sent, **(headers or {})},
        )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == set(FIELDS), body
    for name, kind in FIELDS.items():
        value = body[name]
        # bool is an int in Python; keep the two apart.
        assert isinstance(value, kind), (name, body)
        assert (kind is bool) == isinstance(value, bool), (name, body)
    assert str(uuid.UUID(body["CompanyId"])) == body["CompanyId"]
    assert 0 <= body["TokenLimit"] <= INT32_MAX
    assert 0 <= body["TokensRemaining"] <= 2**63 - 1
    return body


def get(server: Api, key: str | None, **params: Any) -> dict[str, Any]:
    return ok(call(server, "GET", key, params=params))


def post(server: Api, key: str | None, body: Any, **params: Any) -> dict[str, Any]:
    return ok(call(server, "POST", key, json=body, params=params))


def servicestack_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """``{"ResponseStatus": {"ErrorCode", "Message", "Errors": [...]}}`` with the status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"ResponseStatus"}, body
    status_body: dict[str, Any] = body["ResponseStatus"]
    assert set(status_body) == {"ErrorCode", "Message", "Errors"}, body
    assert status_body["ErrorCode"] == code, body
    assert isinstance(status_body["Message"], str)
    assert status_body["Message"]
    for error in status_body["Errors"]:
        assert set(error) == {"ErrorCode", "FieldName", "Message"}, body
    if field is None:
        assert status_body["Errors"] == []
    else:
        assert status_body["Errors"][0]["FieldName"] == field, body
        assert field in status_body["Message"], body
    return status_body


def events(server: Api, subject: str = COMPANY) -> int:
    return server.quota.events(subject=subject).total


def set_limit(native: httpx.Client, ref: str, window: str, limit: object, **extra: Any) -> None:
    rule = {"metric": "tokens", "window": window, "limit": limit, **extra}
    response = native.put(f"/v1/subjects/{ref}/limits", json={"limits": [rule]})
    assert response.status_code == 200, response.text


# the answer, field for field ----------------------------------------------------------
def test_get_answers_every_documented_field_with_its_type(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 10_000)
    server.quota.consume(USER, tokens=1_200)
    assert get(server, member) == {
        "CompanyId": COMPANY_ID,
        "TokensUsed": 1_200,
        "TokenLimit": 10_000,
        "TokensRemaining": 8_800,
        "IsWithinBudget": True,
        "WindowDays": 30,
    }


def test_post_records_the_turn_and_answers_the_updated_usage(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 10_000)
    expected = {
        "CompanyId": COMPANY_ID,
        "TokensUsed": 300,
        "TokenLimit": 10_000,
        "TokensRemaining": 9_700,
        "IsWithinBudget": True,
        "WindowDays": 30,
    }
    assert post(server, member, {"TokensUsed": 300}) == expected
    assert get(server, member) == expected
    # The seed's example body names the company too.
    assert post(server, member, {"CompanyId": COMPANY_ID, "TokensUsed": 0})["TokensUsed"] == 300


def test_post_beyond_the_budget_is_recorded_and_never_refused(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 1_000)
    first = post(server, member, {"TokensUsed": 600})
    assert (first["TokensRemaining"], first["IsWithinBudget"]) == (400, True)
    over = post(server, member, {"TokensUsed": 600})
    assert over["TokensUsed"] == 1_200
    assert (over["TokensRemaining"], over["IsWithinBudget"]) == (0, False)
    again = post(server, member, {"TokensUsed": 5})
    assert (again["TokensUsed"], again["TokensRemaining"], again["IsWithinBudget"]) == (
        1_205,
        0,
        False,
    )
    assert events(server) == 3


def test_exactly_at_the_limit_is_no_longer_within_budget(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 1_000)
    at_limit = post(server, member, {"TokensUsed": 1_000})
    assert (at_limit["TokensRemaining"], at_limit["IsWithinBudget"]) == (0, False)


def test_a_company_without_a_limit_reports_the_largest_budget_and_stays_within_it(
    server: Api, native: httpx.Client, member: str
) -> None:
    server.quota.consume(USER, tokens=250)
    none_set = get(server, member)
    assert none_set == {
        "CompanyId": COMPANY_ID,
        "TokensUsed": 250,
        "TokenLimit": INT32_MAX,
        "TokensRemaining": UNCAPPED,
        "IsWithinBudget": True,
        "WindowDays": 30,
    }
    set_limit(native, COMPANY, "rolling:30d", -1)  # explicitly unlimited: the same answer
    assert get(server, member) == none_set


def test_a_shadow_limit_is_not_reported_as_the_budget(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 100, shadow=True)
    body = post(server, member, {"TokensUsed": 500})
    assert (body["TokenLimit"], body["TokensRemaining"], body["IsWithinBudget"]) == (
        INT32_MAX,
        UNCAPPED,
        True,
    )


def test_a_limit_beyond_int32_is_capped_in_token_limit_only(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 5_000_000_000)
    body = post(server, member, {"TokensUsed": 1_000})
    assert body["TokenLimit"] == INT32_MAX
    assert body["TokensRemaining"] == 4_999_999_000
    assert body["IsWithinBudget"] is True


# WindowDays -----------------------------------------------------------------------------
def test_window_days_defaults_to_30_and_may_be_chosen(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 10_000)
    set_limit(native, COMPANY, "rolling:7d", 2_000)
    server.quota.consume(USER, tokens=500, timestamp=NOW - timedelta(days=10))
    server.quota.consume(USER, tokens=300, timestamp=NOW - timedelta(days=1))

    thirty = get(server, member)
    assert (thirty["WindowDays"], thirty["TokensUsed"], thirty["TokenLimit"]) == (30, 800, 10_000)
    assert thirty["TokensRemaining"] == 9_200

    seven = get(server, member, WindowDays=7)
    assert seven == {
        "CompanyId": COMPANY_ID,
        "TokensUsed": 300,  # the turn 10 days ago is outside the last 7 days
        "TokenLimit": 2_000,
        "TokensRemaining": 1_700,
        "IsWithinBudget": True,
        "WindowDays": 7,
    }
    assert post(server, member, {"TokensUsed": 50, "WindowDays": 7})["TokensUsed"] == 350


def test_usage_leaves_the_window_as_the_clock_moves(
    server: Api, native: httpx.Client, member: str, clock: FrozenClock
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 1_000)
    assert post(server, member, {"TokensUsed": 1_000})["IsWithinBudget"] is False
    clock.advance(days=8)
    assert get(server, member, WindowDays=7)["TokensUsed"] == 0
    assert get(server, member)["TokensUsed"] == 1_000
    clock.advance(days=23)
    back = get(server, member)
    assert (back["TokensUsed"], back["TokensRemaining"], back["IsWithinBudget"]) == (
        0,
        1_000,
        True,
    )


def test_a_window_without_a_limit_counts_as_a_limit_on_it_would(
    server: Api, native: httpx.Client, member: str
) -> None:
    server.quota.consume(USER, tokens=500, timestamp=NOW - timedelta(days=10))
    server.quota.consume(USER, tokens=300, timestamp=NOW - timedelta(days=1))
    from_the_ledger = get(server, member, WindowDays=7)
    assert (from_the_ledger["TokensUsed"], from_the_ledger["TokenLimit"]) == (300, INT32_MAX)
    set_limit(native, COMPANY, "rolling:7d", 1_000)
    from_counters = get(server, member, WindowDays=7)
    assert (from_counters["TokensUsed"], from_counters["TokenLimit"]) == (300, 1_000)


def test_without_window_days_the_companys_own_rolling_limit_is_used(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:7d", 2_000)
    body = post(server, member, {"TokensUsed": 100})
    assert (body["WindowDays"], body["TokenLimit"], body["TokensRemaining"]) == (7, 2_000, 1_900)


def test_a_limit_written_in_hours_counts_by_its_length_in_days(
    server: Api, native: httpx.Client, member: str
) -> None:
    set_limit(native, COMPANY, "rolling:720h", 900)
    set_limit(native, COMPANY, "rolling:36h", 50)  # not whole days: never BokaMera's window
    body = post(server, member, {"TokensUsed": "100"})  # a number in a string, as ServiceStack
    assert (body["WindowDays"], body["TokenLimit"], body["TokensRemaining"]) == (30, 900, 800)


# CompanyId and who may name which company ---------------------------------------------------
@pytest.mark.parametrize("bound_to", ["user", "company", "user-in-a-team"])
def test_company_id_defaults_to_the_callers_company(
    server: Api, native: httpx.Client, bound_to: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 1_000)
    subject = {"user": USER, "company": COMPANY, "user-in-a-team": "user:in-a-team"}[bound_to]
    if bound_to == "user-in-a-team":
        server.quota.set_parents("team:support", [COMPANY])
        server.quota.set_parents(subject, ["team:support"])
    key = server.key("member", subject)
    recorded = post(server, key, {"TokensUsed": 40})
    assert (recorded["CompanyId"], recorded["TokensUsed"]) == (COMPANY_ID, 40)
    assert get(server, key)["CompanyId"] == COMPANY_ID
    assert get(server, key, CompanyId=COMPANY_ID)["TokensUsed"] == 40
    # The seed's placeholder, Guid.Empty, is how a ServiceStack client sends "not set".
    assert get(server, key, CompanyId=str(uuid.UUID(int=0)))["CompanyId"] == COMPANY_ID
    # A member's turn is charged to its own subject, and so to the company above it.
    assert [str(e.subject) for e in server.quota.events(subject=COMPANY).items] == [subject]


def test_a_member_naming_another_company_is_403_and_nothing_is_recorded(
    server: Api, member: str
) -> None:
    for response in (
        call(server, "GET", member, params={"CompanyId": OTHER_ID}),
        call(server, "POST", member, json={"CompanyId": OTHER_ID, "TokensUsed": 10}),
        call(server, "POST", member, json={"TokensUsed": 10}, params={"CompanyId": OTHER_ID}),
    ):
        servicestack_error(response, 403, "Forbidden")
    assert events(server, OTHER) == events(server, COMPANY) == 0


def test_a_member_outside_any_company_must_and_may_not_name_one(server: Api) -> None:
    loner = server.key("member", "user:loner")
    servicestack_error(call(server, "GET", loner), 400, "NotEmpty", "CompanyId")
    servicestack_error(
        call(server, "GET", loner, params={"CompanyId": COMPANY_ID}), 403, "Forbidden"
    )


def test_admin_staff_and_service_name_any_company(server: Api, native: httpx.Client) -> None:
    set_limit(native, OTHER, "rolling:30d", 500)
    service = server.key("service")
    staff = server.key("staff")
    recorded = post(server, service, {"CompanyId": OTHER_ID, "TokensUsed": 200})
    assert (recorded["CompanyId"], recorded["TokensUsed"], recorded["TokensRemaining"]) == (
        OTHER_ID,
        200,
        300,
    )
    assert post(server, ADMIN_KEY, {"TokensUsed": 100}, CompanyId=OTHER_ID)["TokensUsed"] == 300
    assert get(server, staff, CompanyId=OTHER_ID)["TokensUsed"] == 300
    # The charge lands on the company itself.
    assert {str(e.subject) for e in server.quota.events(subject=OTHER).items} == {OTHER}


def test_staff_may_read_but_not_record(server: Api) -> None:
    staff = server.key("staff")
    response = call(server, "POST", staff, json={"CompanyId": COMPANY_ID, "TokensUsed": 1})
    servicestack_error(response, 403, "Forbidden")
    assert events(server) == 0


@pytest.mark.parametrize("role", ["admin", "service", "staff"])
def test_a_key_without_a_company_must_name_one(server: Api, role: str) -> None:
    key = ADMIN_KEY if role == "admin" else server.key(role)
    servicestack_error(call(server, "GET", key), 400, "NotEmpty", "CompanyId")
    response = call(server, "POST", key, json={"TokensUsed": 1})
    servicestack_error(response, 400, "NotEmpty", "CompanyId")
    assert events(server) == 0


def test_an_unknown_company_is_404_with_strict_subjects(make_api: ServerFactory) -> None:
    strict = make_api(clock=FrozenClock(NOW), strict_subjects=True)
    response = call(strict, "GET", ADMIN_KEY, params={"CompanyId": COMPANY_ID})
    servicestack_error(response, 404, "NotFound")


# authentication -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tq_0000000000000000_" + "x" * 43}, {"X-API-Key": "nope"}],
    ids=["no-key", "unknown-key", "bad-x-api-key"],
)
def test_without_a_valid_key_it_is_401(server: Api, headers: dict[str, str]) -> None:
    for method, body in (("GET", None), ("POST", {"CompanyId": COMPANY_ID, "TokensUsed": 10})):
        response = call(server, method, None, json=body, headers=headers)
        servicestack_error(response, 401, "Unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert events(server) == 0


def test_a_revoked_key_is_401(server: Api, member: str) -> None:
    server.quota.revoke_key(member.split("_")[1])
    servicestack_error(call(server, "GET", member), 401, "Unauthorized")


def test_the_key_may_come_in_x_api_key_or_token(server: Api, member: str) -> None:
    for headers in ({"X-API-Key": member}, {"Authorization": f"Token {member}"}):
        response = call(server, "GET", None, headers=headers)
        assert ok(response)["CompanyId"] == COMPANY_ID


# bad input ----------------------------------------------------------------------------------
BAD_POSTS: list[tuple[str, dict[str, Any], Any, str, str]] = [
    # (id, query, JSON body, FieldName, ErrorCode)
    ("no-tokens", {}, {}, "TokensUsed", "NotEmpty"),
    ("null-tokens", {}, {"TokensUsed": None}, "TokensUsed", "InvalidValue"),
    ("negative", {}, {"TokensUsed": -5}, "TokensUsed", "GreaterThanOrEqual"),
    ("fraction", {}, {"TokensUsed": 1.5}, "TokensUsed", "InvalidValue"),
    ("text", {}, {"TokensUsed": "many"}, "TokensUsed", "InvalidValue"),
    ("bool", {}, {"TokensUsed": True}, "TokensUsed", "InvalidValue"),
    (
        "over-63-bits",
        {"CompanyId": COMPANY_ID},
        {"TokensUsed": 2**63},
        "TokensUsed",
        "InvalidValue",
    ),
    ("company-not-a-guid", {}, {"TokensUsed": 1, "CompanyId": "acme"}, "CompanyId", "InvalidValue"),
    ("company-a-number", {}, {"TokensUsed": 1, "CompanyId": 7}, "CompanyId", "InvalidValue"),
    ("query-company", {"CompanyId": "acme"}, {"TokensUsed": 1}, "CompanyId", "InvalidValue"),
    (
        "two-companies",
        {"CompanyId": OTHER_ID},
        {"TokensUsed": 1, "CompanyId": COMPANY_ID},
        "CompanyId",
        "InvalidValue",
    ),
    ("window-zero", {}, {"TokensUsed": 1, "WindowDays": 0}, "WindowDays", "GreaterThanOrEqual"),
    ("window-huge", {"WindowDays": 3661}, {"TokensUsed": 1}, "WindowDays", "LessThanOrEqual"),
    ("a-list", {}, [{"TokensUsed": 1}], "Body", "InvalidValue"),
]


@pytest.mark.parametrize(
    ("query", "body", "field", "code"), [c[1:] for c in BAD_POSTS], ids=[c[0] for c in BAD_POSTS]
)
def test_bad_post_input_is_400_naming_the_field_and_changes_nothing(
    server: Api, native: httpx.Client, query: dict[str, Any], body: Any, field: str, code: str
) -> None:
    set_limit(native, COMPANY, "rolling:30d", 1_000)
    response = call(server, "POST", ADMIN_KEY, json=body, params=query)
    errors = servicestack_error(response, 400, code, field)
    assert errors["Errors"][0]["ErrorCode"] == code
    assert events(server) == 0
    assert get(server, ADMIN_KEY, CompanyId=COMPANY_ID)["TokensUsed"] == 0


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b"\xff\xfe"], ids=["not-json", "empty", "not-utf8"]
)
def test_a_body_that_is_not_json_is_400(server: Api, member: str, content: bytes) -> None:
    response = call(
        server, "POST", member, content=content, headers={"Content-Type": "application/json"}
    )
    servicestack_error(response, 400, response.json()["ResponseStatus"]["ErrorCode"], "Body")
    assert events(server) == 0


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"CompanyId": "not-a-guid"}, "CompanyId", "InvalidValue"),
        ({"companyid": "not-a-guid"}, "CompanyId", "InvalidValue"),
        ({"WindowDays": "seven"}, "WindowDays", "InvalidValue"),
        ({"WindowDays": "0"}, "WindowDays", "GreaterThanOrEqual"),
        ({"windowDays": "-3"}, "WindowDays", "GreaterThanOrEqual"),
        ({"WindowDays": "3661"}, "WindowDays", "LessThanOrEqual"),
    ],
)
def test_bad_get_input_is_400_naming_the_field(
    server: Api, member: str, params: dict[str, str], field: str, code: str
) -> None:
    servicestack_error(call(server, "GET", member, params=params), 400, code, field)


def test_field_names_are_matched_in_any_case_as_servicestack_does(
    server: Api, native: httpx.Client
) -> None:
    set_limit(native, COMPANY, "rolling:7d", 100)
    body = post(server, ADMIN_KEY, {"companyId": COMPANY_ID, "tokensused": 30, "windowDays": 7})
    assert (body["CompanyId"], body["TokensUsed"], body["WindowDays"]) == (COMPANY_ID, 30, 7)
    read = get(server, ADMIN_KEY, companyId=COMPANY_ID.upper(), windowdays=7)
    assert (read["TokensUsed"], read["TokensRemaining"]) == (30, 70)


def test_unknown_paths_and_methods_answer_in_the_same_shape(server: Api, member: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {member}"}
        servicestack_error(client.get("/assistant/ai-chat/other", headers=headers), 404, "NotFound")
        servicestack_error(client.delete(PATH, headers=headers), 405, "MethodNotAllowed")


# the round trip with the native API ------------------------------------------------------------
def test_round_trip_with_the_native_api(server: Api, native: httpx.Client, member: str) -> None:
    set_limit(native, COMPANY, "rolling:30d", 5_000)
    assert get(server, member)["TokenLimit"] == 5_000

    assert post(server, member, {"TokensUsed": 700})["TokensRemaining"] == 4_300
    usage = native.get(f"/v1/subjects/{COMPANY}/usage")
    assert usage.status_code == 200, usage.text
    (tokens,) = [s for s in usage.json()["limits"] if s["metric"] == "tokens"]
    assert (tokens["window"], tokens["used"], tokens["remaining"]) == ("rolling:30d", 700, 4_300)

    listed = native.get("/v1/events", params={"subject": COMPANY})
    assert listed.status_code == 200, listed.text
    (event,) = listed.json()["items"]
    assert (event["subject"], event["mode"], event["amounts"]["tokens"]) == (USER, "record", 700)
    assert set(event["charged"]) == {USER, COMPANY}

    # And the other way: usage recorded natively shows here.
    consumed = native.post(
        "/v1/consume", json={"subject": USER, "amounts": {"tokens": 300}, "mode": "record"}
    )
    assert consumed.status_code == 200, consumed.text
    assert get(server, member)["TokensUsed"] == 1_000


def test_the_openapi_document_describes_the_surface(server: Api) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        document = client.get("/openapi.json").json()
    operations = document["paths"][PATH]
    assert set(operations) == {"get", "post"}
    schemas = document["components"]["schemas"]
    assert set(schemas["AiChatUsageResponse"]["properties"]) == {*FIELDS, "ResponseStatus"}
    assert set(schemas["RecordAiChatUsage"]["required"]) == {"TokensUsed"}
    for operation in operations.values():
        assert {"200", "400", "401", "403"} <= set(operation["responses"])
        assert "422" not in operation["responses"]
        assert [p["name"] for p in operation["parameters"]] == ["CompanyId", "WindowDays"]
