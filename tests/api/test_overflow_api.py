"""The 63-bit bound and non-number amounts over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api, ServerFactory
from tests.compat.test_bokamera import COMPANY, USER, call

MAX = 2**63 - 1


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, make_api: ServerFactory) -> Api:
    if request.param == "postgres":
        return make_api(db=request.getfixturevalue("postgres_url"))
    return make_api()


def test_amounts_past_the_bound_and_non_numbers_are_422s(server: Api) -> None:
    with server.client() as admin:
        record = {"subject": "user:a", "amounts": {"tokens": MAX}, "mode": "record"}
        assert admin.post("/v1/consume", json=record).status_code == 200
        again = admin.post("/v1/consume", json=record)
        assert again.status_code == 422, again.text
        error = again.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("amount_too_large", "amounts.tokens")
        null = {"subject": "user:a", "amounts": {"tokens": None}, "mode": "record"}
        refused = admin.post("/v1/consume", json=null)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"]["field"] == "amounts.tokens"
        assert admin.get("/v1/events").json()["total"] == 1
        admin.put(
            "/v1/subjects/user:a/limits",
            json={"limits": [{"metric": "tokens", "window": "day", "limit": -1}]},
        ).raise_for_status()
        [status] = admin.get("/v1/subjects/user:a/usage").json()["limits"]
        assert status["used"] == MAX  # a JSON integer, not "9223372036854775807.000000"
        for credits in (True, None):
            grant = admin.post("/v1/subjects/user:a/grants", json={"credits": credits})
            assert grant.status_code == 422, grant.text
            assert grant.json()["error"]["details"]["field"] == "credits"
        assert admin.get("/v1/subjects/user:a/grants").json()["items"] == []


def test_bokamera_tokens_used_past_the_bound_is_its_400(server: Api) -> None:
    server.quota.set_parents(USER, [COMPANY])
    member = server.key("member", USER)
    first = call(server, "POST", member, json={"TokensUsed": MAX})
    assert first.status_code == 200, first.text
    second = call(server, "POST", member, json={"TokensUsed": MAX})
    assert second.status_code == 400, second.text
    [problem] = second.json()["ResponseStatus"]["Errors"]
    assert problem["FieldName"] == "TokensUsed"
    assert call(server, "GET", member).json()["TokensUsed"] == MAX
