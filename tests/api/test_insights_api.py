"""/v1/insights/top-consumers over real HTTP: the ranking, its bounds and its isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY, Api, ServerFactory
from tokenquota import AsyncClient, Client, FrozenClock
from tokenquota.api.routes.insights import TopConsumersOut
from tokenquota.domain.errors import Forbidden, ValidationError
from tokenquota.domain.insights import MAX_TOP

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PATH = "/v1/insights/top-consumers"


@pytest.fixture
def acme(make_api: ServerFactory) -> Api:
    api = make_api(clock=FrozenClock(NOW))
    quota = api.quota
    quota.put_subject("org:acme")
    quota.put_subject("org:other")
    quota.put_subject("team:a", parents=["org:acme"])
    quota.put_subject("user:a1", parents=["team:a"])
    quota.put_subject("user:a2", parents=["org:acme"])
    quota.put_subject("user:o1", parents=["org:other"])
    quota.consume("user:a1", tokens=40)
    quota.consume("user:a2", tokens=25)
    quota.consume("user:o1", tokens=100)
    quota.consume("user:a2", tokens=1_000, mode="record", timestamp=NOW - timedelta(days=20))
    return api


def ranked(response: httpx.Response) -> list[tuple[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    TopConsumersOut.model_validate(body)
    return [(c["subject"], c["value"]) for c in body["consumers"]]


def test_admin_ranks_everyone_a_kind_or_a_parent_s_children(acme: Api) -> None:
    with acme.client() as admin:
        body = admin.get(PATH, params={"metric": "tokens"}).json()
        assert (body["window"], body["start"], body["end"]) == (
            "month",
            "2026-03-01T00:00:00+00:00",
            "2026-04-01T00:00:00+00:00",
        )
        assert ranked(admin.get(PATH, params={"metric": "tokens", "kind": "user"})) == [
            ("user:o1", 100),
            ("user:a1", 40),
            ("user:a2", 25),
        ]
        assert ranked(admin.get(PATH, params={"metric": "tokens", "parent": "org:acme"})) == [
            ("team:a", 40),
            ("user:a2", 25),
        ]
        start = (NOW - timedelta(days=30)).isoformat()
        params: dict[str, str | int] = {
            "metric": "tokens",
            "kind": "user",
            "start": start,
            "limit": 1,
        }
        assert ranked(admin.get(PATH, params=params)) == [("user:a2", 1_025)]


def test_a_member_sees_only_its_own_subtree(acme: Api) -> None:
    key = acme.key("member", "org:acme")
    with acme.client(key) as member:
        assert ranked(member.get(PATH, params={"metric": "tokens"})) == [
            ("org:acme", 65),
            ("team:a", 40),
            ("user:a1", 40),
            ("user:a2", 25),
        ]
        assert ranked(member.get(PATH, params={"metric": "tokens", "parent": "team:a"})) == [
            ("user:a1", 40)
        ]
        refused = member.get(PATH, params={"metric": "tokens", "parent": "org:other"})
        assert refused.status_code == 403, refused.text
    with acme.client(acme.key("member", "user:a1")) as user:
        # Its ancestors spent through it, but are not its to see.
        assert ranked(user.get(PATH, params={"metric": "tokens"})) == [("user:a1", 40)]
        assert user.get(PATH, params={"metric": "tokens", "parent": "org:acme"}).status_code == 403
    # Moved out of acme's subtree since: its past spend there is no longer acme's to see.
    acme.quota.put_subject("user:a2", parents=["org:other"])
    with acme.client(key) as member:
        assert ("user:a2", 25) not in ranked(member.get(PATH, params={"metric": "tokens"}))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "metric"),
        ({"metric": "tokens", "limit": MAX_TOP + 1}, "limit"),
        ({"metric": "tokens", "limit": 0}, "limit"),
        ({"metric": "tokens", "window": "fortnight"}, "window"),
        ({"metric": "tokens", "window": "day", "start": NOW.isoformat()}, "window"),
        ({"metric": "concurrent_requests"}, "metric"),
        ({"metric": "tokens", "parent": "nope"}, "parent"),
    ],
)
def test_bad_queries_are_422_naming_the_field(
    acme: Api, params: dict[str, Any], field: str
) -> None:
    with acme.client() as admin:
        response = admin.get(PATH, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["field"] == field


def test_no_key_is_401(acme: Api) -> None:
    with acme.client(None) as anonymous:
        assert anonymous.get(PATH, params={"metric": "tokens"}).status_code == 401


def test_the_clients_read_the_ranking(acme: Api) -> None:
    with Client(acme.url, ADMIN_KEY, timeout=30) as client:
        top = client.top_consumers("tokens", parent="org:acme")
        assert [(c.subject, c.value, c.events) for c in top.consumers] == [
            ("team:a", 40, 1),
            ("user:a2", 25, 1),
        ]
        assert (top.window, top.parent, top.start) == (
            "month",
            "org:acme",
            NOW.replace(day=1, hour=0),
        )
        with pytest.raises(ValidationError):
            client.top_consumers("tokens", limit=MAX_TOP + 1)
    member_key = acme.key("member", "user:a1")
    with Client(acme.url, member_key, timeout=30) as member, pytest.raises(Forbidden):
        member.top_consumers("tokens", parent="org:other")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_client_reads_the_ranking(acme: Api) -> None:
    async with AsyncClient(acme.url, ADMIN_KEY, timeout=30) as client:
        top = await client.top_consumers("tokens", window="total", kind="user", limit=1)
    assert [(c.subject, c.value) for c in top.consumers] == [("user:a2", 1_025)]
    assert (top.start, top.end) == (None, None)
