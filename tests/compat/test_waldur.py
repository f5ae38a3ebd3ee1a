"""Waldur's chat quota API (seed 000) on a live server: fields, semantics, roles, errors.

Driven with plain httpx and, when it is installed, with Waldur's own generated
client (``waldur-api-client``), as an existing Waldur integration would call it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory
from tokenquota import FrozenClock
from tokenquota.domain.keys import split_key
from tokenquota.wire.catalog import encode_rule

try:  # the generated client is a dev-only extra; see docs/compat/waldur.md
    from waldur_api_client.api.chat_quota import chat_quota_set_quota, chat_quota_usage_retrieve
    from waldur_api_client.client import AuthenticatedClient
    from waldur_api_client.errors import UnexpectedStatus
    from waldur_api_client.models.set_token_quota_request import SetTokenQuotaRequest

    HAS_CLIENT = True
except ImportError:  # pragma: no cover - only without the dev dependency
    HAS_CLIENT = False

needs_client = pytest.mark.skipif(not HAS_CLIENT, reason="waldur-api-client is not installed")

USAGE = "/api/chat-quota/usage/"
SET_QUOTA = "/api/chat-quota/set_quota/"
PERIODS = {"daily": "day", "weekly": "week", "monthly": "month"}
# Waldur's TokenQuotaUsageResponse, in its order.
FIELDS = [
    f"{period}_{part}"
    for period in PERIODS
    for part in ("limit", "usage", "remaining", "reset_at", "system_default")
]
TUESDAY = datetime(2026, 1, 13, 14, 30, tzinfo=UTC)


# helpers ---------------------------------------------------------------------------
def waldur(api: Api, key: str | None) -> httpx.Client:
    """A client as Waldur's own sends: ``Authorization: Token <key>``."""
    headers = {"Authorization": f"Token {key}"} if key else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=30)


def new_user() -> tuple[str, str]:
    user = str(uuid.uuid4())
    return user, f"user:{user}"


def key_id(key: str) -> str:
    parts = split_key(key)
    assert parts is not None
    return parts[0]


def overrides(api: Api, ref: str) -> dict[str, Any]:
    """The subject's own tokens limits per window, read through the engine."""
    view = api.quota.limits(ref)
    return {
        r.key.window.key: encode_rule(r)["limit"]
        for r in view.overrides
        if r.key.metric.value == "tokens" and r.key.window is not None
    }


def usage(api: Api, key: str, user: str | None = None) -> dict[str, Any]:
    params = {"user_uuid": user} if user is not None else {}
    with waldur(api, key) as client:
        response = client.get(USAGE, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def set_quota(api: Api, key: str, body: object) -> httpx.Response:
    with waldur(api, key) as client:
        return client.post(SET_QUOTA, json=body)


@pytest.fixture
def staff(api: Api) -> str:
    return api.key("staff")


@pytest.fixture
def frozen(make_api: ServerFactory) -> Api:
    return make_api(clock=FrozenClock(TUESDAY))


# the usage answer ----------------------------------------------------------------
def test_usage_has_every_documented_field_with_its_type_and_casing(api: Api) -> None:
    _, ref = new_user()
    api.quota.set_limit(ref, "tokens", "day", 1_000)
    api.quota.consume(ref, {"tokens": 250})

    body = usage(api, api.key("member", ref))

    assert list(body) == FIELDS  # exactly these, snake_case, in Waldur's order
    for period in PERIODS:
        assert isinstance(body[f"{period}_usage"], int)
        assert isinstance(body[f"{period}_system_default"], int)
        for name in ("limit", "remaining"):
            value = body[f"{period}_{name}"]
            assert value is None or (isinstance(value, int) and not isinstance(value, bool))
        reset_at = body[f"{period}_reset_at"]
        assert isinstance(reset_at, str)
        assert datetime.fromisoformat(reset_at).tzinfo is not None
    assert body["daily_limit"] == 1_000
    assert body["daily_usage"] == 250
    assert body["daily_remaining"] == 750


def test_nothing_set_means_no_limit_no_default_and_usage_still_counted(api: Api) -> None:
    _, ref = new_user()
    api.quota.consume(ref, {"input_tokens": 30, "output_tokens": 12})

    body = usage(api, api.key("member", ref))

    for period in PERIODS:
        assert body[f"{period}_limit"] is None  # no override of its own
        assert body[f"{period}_system_default"] == -1  # none set for kind user
        assert body[f"{period}_remaining"] is None  # so nothing limits it
        assert body[f"{period}_usage"] == 42  # counted from the ledger all the same


def test_system_default_shows_and_applies_while_the_limit_is_null(
    api: Api, admin: httpx.Client
) -> None:
    _, ref = new_user()
    response = admin.put(
        "/v1/defaults",
        json={
            "defaults": [
                {"kind": "user", "metric": "tokens", "window": "day", "limit": 1_000},
                {"kind": "user", "metric": "tokens", "window": "month", "limit": -1},
                {"kind": "company", "metric": "tokens", "window": "week", "limit": 7},
            ]
        },
    )
    assert response.status_code == 200, response.text
    api.quota.consume(ref, {"tokens": 400})

    body = usage(api, api.key("member", ref))

    assert body["daily_limit"] is None
    assert body["daily_system_default"] == 1_000
    assert body["daily_remaining"] == 600  # the default is what applies
    assert body["weekly_system_default"] == -1  # the company default is not the user's
    assert body["weekly_remaining"] is None
    assert body["monthly_system_default"] == -1  # set, and unlimited
    assert body["monthly_remaining"] is None
    assert body["monthly_usage"] == 400


def test_config_file_defaults_are_system_defaults_too(make_api: ServerFactory) -> None:
    api = make_api(
        defaults=[{"kind": "user", "metric": "tokens", "window": "week", "limit": 5_000}]
    )
    _, ref = new_user()
    api.quota.consume(ref, {"tokens": 1_200})

    body = usage(api, api.key("member", ref))

    assert body["weekly_system_default"] == 5_000
    assert body["weekly_limit"] is None
    assert body["weekly_remaining"] == 3_800


def test_own_limit_wins_over_the_default_and_minus_one_is_unlimited(api: Api) -> None:
    _, ref = new_user()
    api.quota.set_default("user", "tokens", "day", 1_000)
    api.quota.set_default("user", "tokens", "week", 1_000)
    api.quota.set_limit(ref, "tokens", "day", -1)
    api.quota.set_limit(ref, "tokens", "week", 5_000)
    api.quota.consume(ref, {"tokens": 1_500})

    body = usage(api, api.key("member", ref))

    assert (body["daily_limit"], body["daily_system_default"]) == (-1, 1_000)
    assert body["daily_remaining"] is None
    assert (body["weekly_limit"], body["weekly_system_default"]) == (5_000, 1_000)
    assert body["weekly_remaining"] == 3_500


def test_remaining_is_never_negative(api: Api) -> None:
    _, ref = new_user()
    api.quota.set_limit(ref, "tokens", "day", 100)
    api.quota.consume(ref, {"tokens": 250}, mode="record")  # already spent: stored anyway

    body = usage(api, api.key("member", ref))

    assert (body["daily_usage"], body["daily_remaining"]) == (250, 0)


def test_a_plan_limit_applies_but_is_not_the_users_own(api: Api) -> None:
    _, ref = new_user()
    api.quota.create_plan("Chat", [{"metric": "tokens", "window": "day", "limit": 300}])
    api.quota.assign_plan(ref, "Chat")
    api.quota.consume(ref, {"tokens": 100})

    body = usage(api, api.key("member", ref))

    assert body["daily_limit"] is None  # Waldur's limit is the user's own
    assert body["daily_remaining"] == 200  # but the plan's cap is what applies


# reset times ------------------------------------------------------------------------
def test_reset_times_on_a_tuesday(frozen: Api) -> None:
    assert TUESDAY.weekday() == 1
    _, ref = new_user()
    frozen.quota.set_limit(ref, "tokens", "day", 1_000)  # one period from the counters,
    # the others from the ledger: both paths give the same calendar.

    body = usage(frozen, frozen.key("member", ref))

    assert body["daily_reset_at"] == "2026-01-14T00:00:00Z"  # next midnight
    assert body["weekly_reset_at"] == "2026-01-19T00:00:00Z"  # next Monday 00:00
    assert body["monthly_reset_at"] == "2026-02-01T00:00:00Z"  # first of next month


def test_reset_times_follow_the_configured_time_zone(make_api: ServerFactory) -> None:
    api = make_api(clock=FrozenClock(TUESDAY), timezone="Europe/Stockholm")
    _, ref = new_user()

    body = usage(api, api.key("member", ref))

    assert body["daily_reset_at"] == "2026-01-13T23:00:00Z"  # 00:00 in Stockholm (UTC+1)
    assert body["weekly_reset_at"] == "2026-01-18T23:00:00Z"
    assert body["monthly_reset_at"] == "2026-01-31T23:00:00Z"


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "unlimited"])
def test_usage_starts_again_when_its_period_resets(frozen: Api, limited: bool) -> None:
    clock = frozen.clock
    assert clock is not None
    _, ref = new_user()
    if limited:
        for window in PERIODS.values():
            frozen.quota.set_limit(ref, "tokens", window, 10_000)
    key = frozen.key("member", ref)
    frozen.quota.consume(ref, {"tokens": 700})

    clock.set(datetime(2026, 1, 14, 0, 0, tzinfo=UTC))  # Wednesday: a new day only
    body = usage(frozen, key)
    assert (body["daily_usage"], body["weekly_usage"], body["monthly_usage"]) == (0, 700, 700)

    clock.set(datetime(2026, 1, 19, 0, 0, tzinfo=UTC))  # Monday: a new week
    body = usage(frozen, key)
    assert (body["daily_usage"], body["weekly_usage"], body["monthly_usage"]) == (0, 0, 700)

    clock.set(datetime(2026, 2, 1, 0, 0, tzinfo=UTC))  # a new month
    assert usage(frozen, key)["monthly_usage"] == 0


# who may read whose ------------------------------------------------------------------
def test_a_member_reads_its_own_usage_with_or_without_naming_itself(api: Api) -> None:
    user, ref = new_user()
    api.quota.consume(ref, {"tokens": 5})
    key = api.key("member", ref)

    assert usage(api, key)["daily_usage"] == 5
    assert usage(api, key, user)["daily_usage"] == 5
    # Any spelling of the same UUID is the same user, as in Waldur.
    assert usage(api, key, user.upper())["daily_usage"] == 5
    assert usage(api, key, uuid.UUID(user).hex)["daily_usage"] == 5


def test_a_member_naming_another_user_is_refused(api: Api) -> None:
    _, ref = new_user()
    other, other_ref = new_user()
    api.quota.consume(other_ref, {"tokens": 5})
    with waldur(api, api.key("member", ref)) as client:
        response = client.get(USAGE, params={"user_uuid": other})
    assert response.status_code == 403
    assert response.json() == {"detail": "You can only view your own usage."}


def test_a_member_naming_a_user_below_it_is_refused_too(api: Api) -> None:
    # Natively a member reads its descendants; Waldur lets only staff name a user.
    user, ref = new_user()
    api.quota.set_parents(ref, ["company:acme"])
    with waldur(api, api.key("member", "company:acme")) as client:
        response = client.get(USAGE, params={"user_uuid": user})
    assert response.status_code == 403
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("role", ["staff", "admin"])
def test_staff_and_admin_read_any_user(api: Api, role: str) -> None:
    user, ref = new_user()
    api.quota.consume(ref, {"tokens": 77})

    assert usage(api, api.key(role), user)["monthly_usage"] == 77


@pytest.mark.parametrize("role", ["staff", "admin"])
def test_staff_and_admin_must_name_a_user(api: Api, role: str) -> None:
    with waldur(api, api.key(role)) as client:
        response = client.get(USAGE)
    assert response.status_code == 400
    assert response.json() == {"user_uuid": ["This field is required."]}


def test_a_service_key_has_no_user_and_may_not_name_one(api: Api) -> None:
    user, _ = new_user()
    with waldur(api, api.key("service")) as client:
        for params in ({}, {"user_uuid": user}):
            response = client.get(USAGE, params=params)
            assert response.status_code == 403
            assert set(response.json()) == {"detail"}


def test_a_bad_user_uuid_is_a_400_naming_it(api: Api, staff: str) -> None:
    with waldur(api, staff) as client:
        response = client.get(USAGE, params={"user_uuid": "not-a-uuid"})
    assert response.status_code == 400
    assert response.json() == {"user_uuid": ["Must be a valid UUID."]}


@pytest.mark.parametrize("path", [USAGE, SET_QUOTA])
@pytest.mark.parametrize("key", [None, "tq_0123456789abcdef_" + "x" * 43, "nonsense"])
def test_no_valid_key_is_401_in_drf_shape(api: Api, path: str, key: str | None) -> None:
    user, _ = new_user()
    with waldur(api, key) as client:
        if path == USAGE:
            response = client.get(path, params={"user_uuid": user})
        else:
            response = client.post(path, json={"user_uuid": user, "daily_limit": 5})
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str)
    assert response.headers["WWW-Authenticate"] == "Token"


def test_an_unknown_user_is_404_with_strict_subjects(make_api: ServerFactory) -> None:
    api = make_api(strict_subjects=True)
    user, ref = new_user()
    staff = api.key("staff")
    with waldur(api, staff) as client:
        read = client.get(USAGE, params={"user_uuid": user})
        write = client.post(SET_QUOTA, json={"user_uuid": user, "daily_limit": 5})
    for response in (read, write):
        assert response.status_code == 404
        assert set(response.json()) == {"detail"}
    assert api.quota.list_subjects(kind="user").total == 0

    api.quota.put_subject(ref)
    assert set_quota(api, staff, {"user_uuid": user, "daily_limit": 5}).status_code == 200
    assert usage(api, staff, user)["daily_limit"] == 5


# set_quota -------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["staff", "admin"])
def test_set_quota_answers_200_with_no_body_and_sets_the_users_own_limits(
    api: Api, role: str
) -> None:
    user, ref = new_user()
    response = set_quota(
        api,
        api.key(role),
        {"user_uuid": user, "daily_limit": 1_000, "weekly_limit": -1, "monthly_limit": 0},
    )

    assert response.status_code == 200
    assert response.content == b""
    assert overrides(api, ref) == {"day": 1_000, "week": -1, "month": 0}


def test_set_quota_null_and_an_omitted_field_both_return_to_the_default(
    api: Api, staff: str
) -> None:
    user, ref = new_user()
    api.quota.set_default("user", "tokens", "day", 2_000)
    api.quota.set_default("user", "tokens", "month", 9_000)
    assert (
        set_quota(
            api,
            staff,
            {"user_uuid": user, "daily_limit": 10, "weekly_limit": -1, "monthly_limit": 5_000},
        ).status_code
        == 200
    )

    # Seed 000: "Omit field or send null: Use system default".
    response = set_quota(api, staff, {"user_uuid": user, "daily_limit": None})

    assert response.status_code == 200
    assert overrides(api, ref) == {}  # daily sent as null, weekly and monthly left out
    body = usage(api, staff, user)
    assert (body["daily_limit"], body["daily_system_default"]) == (None, 2_000)
    assert body["daily_remaining"] == 2_000  # the default applies again
    assert (body["weekly_limit"], body["weekly_system_default"]) == (None, -1)
    assert body["weekly_remaining"] is None  # no default for the week: not limited
    assert (body["monthly_limit"], body["monthly_remaining"]) == (None, 9_000)


def test_set_quota_with_one_field_resets_the_other_two(api: Api, staff: str) -> None:
    """The audit's case: weekly -1 and monthly 5000 do not survive a call naming only daily."""
    user, ref = new_user()
    first = {"user_uuid": user, "daily_limit": 100, "weekly_limit": -1, "monthly_limit": 5_000}
    assert set_quota(api, staff, first).status_code == 200

    assert set_quota(api, staff, {"user_uuid": user, "daily_limit": 200}).status_code == 200

    assert overrides(api, ref) == {"day": 200}
    body = usage(api, staff, user)
    assert (body["weekly_limit"], body["monthly_limit"]) == (None, None)


def test_set_quota_with_only_a_user_returns_every_period_to_the_default(
    api: Api, staff: str
) -> None:
    user, ref = new_user()
    api.quota.set_limit(ref, "tokens", "month", 99)

    assert set_quota(api, staff, {"user_uuid": user}).status_code == 200
    assert overrides(api, ref) == {}


def test_waldur_reads_the_enforced_limit_not_a_shadow_trial(api: Api, staff: str) -> None:
    """A shadow rule sits beside the enforced one; Waldur's one limit per period is the latter."""
    user, ref = new_user()
    api.quota.set_default("user", "tokens", "day", 1_000)
    api.quota.set_default("user", "tokens", "week", 50, shadow=True)
    api.quota.set_limit(ref, "tokens", "day", 10, shadow=True)
    api.quota.consume(ref, {"tokens": 300})

    body = usage(api, staff, user)

    assert (body["daily_limit"], body["daily_usage"], body["daily_remaining"]) == (None, 300, 700)
    assert body["daily_system_default"] == 1_000
    # Only a trial on the week: nothing enforces it, and the trial is no system default.
    assert (body["weekly_usage"], body["weekly_remaining"]) == (300, None)
    assert body["weekly_system_default"] == -1


def test_set_quota_takes_integers_as_drf_does(api: Api, staff: str) -> None:
    user, ref = new_user()
    body = {"user_uuid": user.upper(), "daily_limit": "12", "weekly_limit": 30.0}
    response = set_quota(api, staff, {**body, "unknown": "ignored, as DRF ignores it"})

    assert response.status_code == 200, response.text
    assert overrides(api, ref) == {"day": 12, "week": 30}


def test_set_quota_is_audited_under_the_callers_key(api: Api, staff: str) -> None:
    user, ref = new_user()
    assert set_quota(api, staff, {"user_uuid": user, "daily_limit": 5}).status_code == 200

    entries = api.quota.audit(subject=ref).items
    assert [e.actor for e in entries] == [f"key:{key_id(staff)}"]


@pytest.mark.parametrize("role", ["member", "service"])
def test_set_quota_is_for_staff_only(api: Api, role: str) -> None:
    user, ref = new_user()
    key = api.key(role, ref if role == "member" else None)
    for body in (
        {"user_uuid": user, "daily_limit": 1_000_000},
        {"user_uuid": "not-a-uuid: the 403 comes before the 400"},
    ):
        response = set_quota(api, key, body)
        assert response.status_code == 403
        assert response.json() == {"detail": "You do not have permission to perform this action."}
    assert overrides(api, ref) == {}


BAD_BODIES: list[tuple[object, dict[str, list[str]]]] = [
    ({}, {"user_uuid": ["This field is required."]}),
    ({"user_uuid": None, "daily_limit": 1}, {"user_uuid": ["This field may not be null."]}),
    ({"user_uuid": "nope", "daily_limit": 1}, {"user_uuid": ["Must be a valid UUID."]}),
    ({"user_uuid": 12, "daily_limit": 1}, {"user_uuid": ["Must be a valid UUID."]}),
    (
        {"daily_limit": -2},
        {
            "user_uuid": ["This field is required."],
            "daily_limit": ["Ensure this value is greater than or equal to -1."],
        },
    ),
    ({"weekly_limit": "lots"}, {"weekly_limit": ["A valid integer is required."]}),
    ({"monthly_limit": 1.5}, {"monthly_limit": ["A valid integer is required."]}),
    ({"monthly_limit": True}, {"monthly_limit": ["A valid integer is required."]}),
    ({"daily_limit": [1]}, {"daily_limit": ["A valid integer is required."]}),
    (
        {"daily_limit": 2**63},
        {"daily_limit": [f"Ensure this value is less than or equal to {2**63 - 1}."]},
    ),
    ([1, 2], {"non_field_errors": ["Invalid data. Expected a dictionary."]}),
]


@pytest.mark.parametrize(("body", "expected"), BAD_BODIES)
def test_bad_input_is_a_400_in_drf_shape_and_changes_nothing(
    api: Api, staff: str, body: object, expected: dict[str, list[str]]
) -> None:
    user, ref = new_user()
    api.quota.set_limit(ref, "tokens", "day", 500)
    if isinstance(body, dict) and "user_uuid" not in body and "user_uuid" not in expected:
        body = {"user_uuid": user, **body}

    response = set_quota(api, staff, body)

    assert response.status_code == 400
    assert response.json() == expected
    assert overrides(api, ref) == {"day": 500}
    assert len(api.quota.audit(subject=ref).items) == 1  # only the set_limit above


def test_a_body_that_is_not_json_is_a_400(api: Api, staff: str) -> None:
    with waldur(api, staff) as client:
        response = client.post(
            SET_QUOTA, content=b"{not json", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}


# one core: the native API and the Waldur surface see the same rules -----------------
def test_set_through_waldur_read_natively(api: Api, admin: httpx.Client, staff: str) -> None:
    user, ref = new_user()
    response = set_quota(api, staff, {"user_uuid": user, "daily_limit": 100, "monthly_limit": -1})
    assert response.status_code == 200

    limits = admin.get(f"/v1/subjects/{ref}/limits")
    assert limits.status_code == 200
    native = {(o["metric"], o["window"]): o["limit"] for o in limits.json()["overrides"]}
    assert native == {("tokens", "day"): 100, ("tokens", "month"): -1}
    effective = {(e["window"], e["source"]) for e in limits.json()["effective"]}
    assert effective == {("day", "override"), ("month", "override")}
    assert overrides(api, ref) == {"day": 100, "month": -1}

    # ...and it is enforced: the same rules, not a copy of them.
    consumed = admin.post("/v1/consume", json={"subject": ref, "amounts": {"tokens": 60}})
    assert consumed.status_code == 200, consumed.text
    denied = admin.post("/v1/consume", json={"subject": ref, "amounts": {"tokens": 60}})
    assert denied.status_code == 429
    body = usage(api, staff, user)
    assert (body["daily_usage"], body["daily_remaining"]) == (60, 40)


def test_set_natively_read_through_waldur(api: Api, admin: httpx.Client) -> None:
    _, ref = new_user()
    response = admin.put(
        f"/v1/subjects/{ref}/limits",
        json={
            "limits": [
                {"metric": "tokens", "window": "day", "limit": 3_000},
                {"metric": "tokens", "window": "week", "limit": -1},
                {"metric": "requests", "window": "day", "limit": 5},  # not Waldur's business
            ]
        },
    )
    assert response.status_code == 200, response.text
    api.quota.consume(ref, {"tokens": 1_000})

    body = usage(api, api.key("member", ref))

    assert (body["daily_limit"], body["daily_usage"], body["daily_remaining"]) == (
        3_000,
        1_000,
        2_000,
    )
    assert (body["weekly_limit"], body["weekly_remaining"]) == (-1, None)
    assert body["monthly_limit"] is None

    # Removing it natively is Waldur's null.
    removed = admin.put(
        f"/v1/subjects/{ref}/limits",
        json={"limits": [{"metric": "tokens", "window": "day", "limit": None}]},
    )
    assert removed.status_code == 200
    assert usage(api, api.key("member", ref))["daily_limit"] is None


# the OpenAPI document -------------------------------------------------------------
def test_openapi_documents_both_operations_in_waldur_terms(admin: httpx.Client) -> None:
    spec = admin.get("/openapi.json").json()
    get = spec["paths"]["/api/chat-quota/usage/"]["get"]
    post = spec["paths"]["/api/chat-quota/set_quota/"]["post"]

    assert get["operationId"] == "chat_quota_usage_retrieve"
    assert post["operationId"] == "chat_quota_set_quota"
    assert [p["name"] for p in get["parameters"]] == ["user_uuid"]
    schemas = spec["components"]["schemas"]
    assert list(schemas["TokenQuotaUsageResponse"]["properties"]) == FIELDS
    assert list(schemas["SetTokenQuotaRequest"]["properties"]) == [
        "user_uuid",
        "daily_limit",
        "weekly_limit",
        "monthly_limit",
    ]
    assert schemas["SetTokenQuotaRequest"]["required"] == ["user_uuid"]
    assert "content" not in post["responses"]["200"]  # no body
    for operation in (get, post):
        assert "422" not in operation["responses"]  # bad input is a 400 here
        assert "400" in operation["responses"]


# Waldur's own generated client ------------------------------------------------------
ClientFactory = Callable[[str], "AuthenticatedClient"]


@pytest.fixture
def waldur_client(api: Api) -> Iterator[ClientFactory]:
    def make(key: str) -> AuthenticatedClient:
        client = AuthenticatedClient(base_url=api.url, token=key)  # sends "Token <key>"
        clients.append(client)
        return client

    clients: list[AuthenticatedClient] = []
    yield make
    for client in clients:
        client.get_httpx_client().close()


@needs_client
def test_waldur_api_client_reads_and_sets(api: Api, waldur_client: ClientFactory) -> None:
    user, ref = new_user()
    staff = waldur_client(api.key("staff"))
    member = waldur_client(api.key("member", ref))
    api.quota.set_limit(ref, "tokens", "month", 5_000)  # the client leaves monthly_limit out

    sent = chat_quota_set_quota.sync_detailed(
        client=staff,
        body=SetTokenQuotaRequest(user_uuid=uuid.UUID(user), daily_limit=900, weekly_limit=-1),
    )
    assert sent.status_code == 200
    assert sent.parsed is None
    api.quota.consume(ref, {"tokens": 100})

    got = chat_quota_usage_retrieve.sync(client=member, user_uuid=uuid.UUID(user))

    assert got is not None
    assert got.additional_properties == {}  # nothing the client does not know
    assert (got.daily_limit, got.daily_usage, got.daily_remaining) == (900, 100, 800)
    assert (got.weekly_limit, got.weekly_remaining) == (-1, None)
    assert got.monthly_limit is None  # left out by the client: back to the default
    assert got.monthly_remaining is None  # no default set: not limited
    assert got.monthly_system_default == -1
    assert got.daily_reset_at.tzinfo is not None
    assert got.daily_reset_at - datetime.now(UTC) <= timedelta(days=1)


@needs_client
def test_waldur_api_client_sees_refusals_as_unexpected_statuses(
    api: Api, waldur_client: ClientFactory
) -> None:
    user, ref = new_user()
    other, _ = new_user()
    member = waldur_client(api.key("member", ref))

    with pytest.raises(UnexpectedStatus) as read:
        chat_quota_usage_retrieve.sync(client=member, user_uuid=uuid.UUID(other))
    assert read.value.status_code == 403

    with pytest.raises(UnexpectedStatus) as write:
        chat_quota_set_quota.sync_detailed(
            client=member, body=SetTokenQuotaRequest(user_uuid=uuid.UUID(user), daily_limit=1)
        )
    assert write.value.status_code == 403
    assert overrides(api, ref) == {}
