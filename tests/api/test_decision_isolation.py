"""What a decision shows, over real HTTP on every backend (contract §10, issue 11).

- A member key sees only its subject and descendants in check, consume, reserve,
  acquire and commit answers, in the 429 body and in the RateLimit-* headers; a
  refusal by an ancestor (or a resource) says so, and when to retry, without
  naming it or giving its figures. Its events' ``charged`` stop at its subject.
- A request larger than a limit's whole size is refused with ``reason:
  exceeds_limit`` and no Retry-After, since no wait helps.
- RateLimit-* describe the limit with the smallest remaining fraction, and never
  a period that has already ended (a back-dated record).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.conftest import Api, ServerFactory
from tests.conftest import store_url
from tokenquota import FrozenClock

NOW = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # an hour before the day ends
ANCESTORS = ("company:acmeq7", "team:crimsonq9")
MEMBER = "user:alice"

LiveFactory = Callable[..., Api]


@pytest.fixture
def live(
    backend: str, make_api: ServerFactory, tmp_path: Any, request: pytest.FixtureRequest
) -> LiveFactory:
    """A live server on ``backend``; Redis and the cluster sit beside PostgreSQL."""

    def factory(clock: FrozenClock | None = None) -> Api:
        settings: dict[str, Any] = {}
        if backend in ("postgres", "redis", "cluster"):
            settings["db"] = request.getfixturevalue("postgres_url")
        else:
            settings["db"] = store_url(backend, tmp_path, "live.db")
        if backend in ("redis", "cluster"):
            fixture = {"redis": "redis_url", "cluster": "cluster_url"}[backend]
            settings["redis"] = request.getfixturevalue(fixture)
        return make_api(clock=clock or FrozenClock(NOW), **settings)

    return factory


def hierarchy(api: Api) -> None:
    api.quota.set_parents("team:crimsonq9", ["company:acmeq7"])
    api.quota.set_parents(MEMBER, ["team:crimsonq9"])


def leaks(response: httpx.Response) -> list[str]:
    """Every ancestor named anywhere in the answer: body or header."""
    text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    return [name for name in ANCESTORS if name in text or name.split(":")[1] in text]


def test_a_refusal_by_an_ancestor_names_no_ancestor_to_a_member(live: LiveFactory) -> None:
    api = live()
    hierarchy(api)
    api.quota.set_limit("company:acmeq7", "tokens", "day", 1_000)
    api.quota.set_limit("team:crimsonq9", "tokens", "day", 5_000)
    api.quota.set_limit(MEMBER, "tokens", "day", 10_000)
    api.quota.consume(MEMBER, {"tokens": 900})
    payload = {"subject": MEMBER, "amounts": {"tokens": 200}}
    with api.client(api.key("member", MEMBER)) as member:
        refused = member.post("/v1/consume", json=payload)
        checked = member.post("/v1/check", json=payload)
        admitted = member.post("/v1/consume", json={**payload, "amounts": {"tokens": 50}})
    assert refused.status_code == 429, refused.text
    assert leaks(refused) == []
    details = refused.json()["error"]["details"]
    assert details["blocked_by"] == []
    assert details["blocked_outside"] == [{"reason": "ancestor_limit", "metric": "tokens"}]
    assert details["reason"] == "limit_reached"
    assert details["retry_after"] == 3600
    assert refused.headers["Retry-After"] == "3600"
    # The headers describe the member's own limit: 9 100 of 10 000 left.
    assert refused.headers["RateLimit-Limit"] == "10000"
    assert refused.headers["RateLimit-Remaining"] == "9100"
    assert [s["subject"] for s in details["decision"]["limits"]] == [MEMBER]
    assert "an ancestor's tokens limit" in refused.json()["error"]["message"]
    assert checked.status_code == 200
    assert leaks(checked) == []
    assert checked.json()["blocked_outside"] == [{"reason": "ancestor_limit", "metric": "tokens"}]
    assert admitted.status_code == 200
    assert leaks(admitted) == []
    assert [s["subject"] for s in admitted.json()["limits"]] == [MEMBER]
    # A service key still sees everything.
    with api.client(api.key("service")) as service:
        full = service.post("/v1/consume", json=payload)
    assert full.status_code == 429
    blocked = full.json()["error"]["details"]["blocked_by"]
    assert [(b["subject"], b["used"]) for b in blocked] == [("company:acmeq7", 950)]
    assert full.json()["error"]["details"]["blocked_outside"] == []


def test_holds_show_a_member_only_its_own_limits(live: LiveFactory) -> None:
    api = live()
    hierarchy(api)
    api.quota.set_limit("company:acmeq7", "tokens", "day", 1_000)
    api.quota.set_limit("company:acmeq7", "concurrent_requests", None, 1)
    with api.client(api.key("member", MEMBER)) as member:
        reserved = member.post(
            "/v1/reservations", json={"subject": MEMBER, "amounts": {"tokens": 10}}
        )
        refused = member.post(
            "/v1/reservations", json={"subject": MEMBER, "amounts": {"tokens": 5000}}
        )
        hold_id = reserved.json()["reservation"]["id"]
        committed = member.post(
            f"/v1/reservations/{hold_id}/commit", json={"amounts": {"tokens": 7}}
        )
        leased = member.post("/v1/leases", json={"subject": MEMBER})
        full = member.post("/v1/leases", json={"subject": MEMBER})
    for answer, status in (
        (reserved, 201),
        (refused, 429),
        (committed, 200),
        (leased, 201),
        (full, 429),
    ):
        assert answer.status_code == status, answer.text
        assert leaks(answer) == [], answer.text
    assert reserved.json()["decision"]["limits"] == []
    assert refused.json()["error"]["details"]["blocked_outside"] == [
        {"reason": "ancestor_limit", "metric": "tokens"}
    ]
    assert full.json()["error"]["details"]["blocked_outside"] == [
        {"reason": "ancestor_limit", "metric": "concurrent_requests"}
    ]


def test_a_members_events_are_charged_no_higher_than_its_subject(live: LiveFactory) -> None:
    api = live()
    hierarchy(api)
    api.quota.set_parents("user:alice-bot", [MEMBER])
    api.quota.consume("user:alice-bot", {"tokens": 3}, mode="record")
    with api.client(api.key("member", MEMBER)) as member:
        page = member.get("/v1/events", params={"subject": MEMBER})
        csv = member.get("/v1/events", params={"subject": MEMBER, "format": "csv"})
        lines = member.get("/v1/events", params={"subject": MEMBER, "format": "jsonl"})
    for answer in (page, csv, lines):
        assert answer.status_code == 200, answer.text
        assert leaks(answer) == [], answer.text
    assert [e["charged"] for e in page.json()["items"]] == [["user:alice-bot", MEMBER]]
    with api.client() as admin:
        everything = admin.get("/v1/events", params={"subject": MEMBER}).json()["items"]
    assert everything[0]["charged"] == [
        "user:alice-bot",
        MEMBER,
        "team:crimsonq9",
        "company:acmeq7",
    ]


def test_more_than_a_whole_limit_is_refused_as_exceeding_it_not_as_a_wait(
    live: LiveFactory,
) -> None:
    api = live()
    api.quota.set_limit(MEMBER, "tokens", "day", 1_000)
    api.quota.set_resource_quota(
        "deployment:llama", {"capacity": {"value": 4, "units": "requests"}}
    )
    with api.client() as admin:
        too_big = admin.post("/v1/consume", json={"subject": MEMBER, "amounts": {"tokens": 1_001}})
        too_many = admin.post(
            "/v1/consume",
            json={
                "subject": "user:bob",
                "amounts": {"requests": 5},
                "resource": "deployment:llama",
            },
        )
        waits = admin.post(
            "/v1/consume",
            json={
                "subject": "user:bob",
                "amounts": {"requests": 4},
                "resource": "deployment:llama",
            },
        )
        waits = admin.post(
            "/v1/consume",
            json={
                "subject": "user:bob",
                "amounts": {"requests": 1},
                "resource": "deployment:llama",
            },
        )
    for answer in (too_big, too_many):
        assert answer.status_code == 429, answer.text
        assert "Retry-After" not in answer.headers
        details = answer.json()["error"]["details"]
        assert details["reason"] == "exceeds_limit"
        assert details["retry_after"] is None
        assert [b["reason"] for b in details["blocked_by"]] == ["exceeds_limit"]
    # One more than what is left of a capacity that fits it: waiting helps.
    assert waits.status_code == 429
    assert waits.json()["error"]["details"]["reason"] == "limit_reached"
    assert int(waits.headers["Retry-After"]) > 0


def test_rate_limit_headers_describe_the_smallest_remaining_fraction(live: LiveFactory) -> None:
    api = live()
    api.quota.set_limit(MEMBER, "credits", "day", "10.5")
    api.quota.set_limit(MEMBER, "tokens", "day", 100)
    with api.client() as admin:
        answer = admin.post(
            "/v1/consume", json={"subject": MEMBER, "amounts": {"credits": "0.1", "tokens": 50}}
        )
    assert answer.status_code == 200, answer.text
    # credits: 10.4 of 10.5 left (99 %); tokens: 50 of 100 (50 %).
    assert answer.headers["RateLimit-Limit"] == "100"
    assert answer.headers["RateLimit-Remaining"] == "50"


def test_a_back_dated_record_answers_no_reset_in_a_past_period(live: LiveFactory) -> None:
    api = live()
    api.quota.set_limit(MEMBER, "tokens", "day", 100)
    api.quota.set_limit(MEMBER, "requests", "month", 1_000)
    with api.client() as admin:
        answer = admin.post(
            "/v1/consume",
            json={
                "subject": MEMBER,
                "amounts": {"tokens": 10},
                "mode": "record",
                "timestamp": "2026-03-09T12:00:00Z",
            },
        )
    assert answer.status_code == 200, answer.text
    # The day limit's figures are of March 9, which has ended: the month's describe now.
    assert answer.headers["RateLimit-Limit"] == "1000"
    assert int(answer.headers["RateLimit-Reset"]) > 0
