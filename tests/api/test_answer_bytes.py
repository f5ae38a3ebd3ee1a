"""A decision's answer over HTTP is the general way's, byte for byte.

``metering.decision_response`` encodes a 200 straight from the decision
(``wire.decisions.decision_json``, ``http.responses.JSONBytesResponse``). The
general way is ``metering.decision_answer``'s dicts rendered by
``FastJSONResponse``, as every answer was before: it is served here on a
second route, ``/general/v1/...``, running the same handler. Two servers with
the same store, clock and setup get the same requests in the same order, one
on the hot routes (both of their ways in: ``http.fastpath`` for exactly
``application/json``, FastAPI's for any other type) and one on the general
routes, and every answer must match: status, headers (but the date and the
request id) and bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from tests.api.conftest import ADMIN_KEY, Api, LiveServer
from tests.conftest import migrated_sqlite
from tokenquota import FrozenClock
from tokenquota.api.app import create_app
from tokenquota.api.routes import metering
from tokenquota.api.schemas import CheckIn, ConsumeIn
from tokenquota.domain.decisions import Decision
from tokenquota.domain.keys import ApiKey
from tokenquota.http.auth import Caller
from tokenquota.http.responses import FastJSONResponse
from tokenquota.settings import Settings

NOW = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # an hour before the day ends
TYPES = ("application/json", "application/json; charset=utf-8")  # fast path, FastAPI's


def general_response(
    request: Request, decision: Decision, operation: str, caller: ApiKey
) -> JSONResponse:
    """The general way: ``decision_answer``'s dicts, rendered by ``FastJSONResponse``."""
    status, body, headers = metering.decision_answer(request, decision, operation, caller)
    return FastJSONResponse(body, status_code=status, headers=headers)


def with_general_routes(app: FastAPI) -> None:
    def consume(body: ConsumeIn, request: Request, caller: Caller) -> JSONResponse:
        return metering.decide_consume(body, request, caller, respond=general_response)

    def check(body: CheckIn, request: Request, caller: Caller) -> JSONResponse:
        return metering.decide_check(body, request, caller, respond=general_response)

    app.add_api_route("/general/v1/consume", consume, methods=["POST"])
    app.add_api_route("/general/v1/check", check, methods=["POST"])


def shaped(api: Api) -> dict[str, str]:
    """The same setup on each server; the keys each made (a member's, a service's)."""
    quota = api.quota
    quota.set_parents("team:t", ["company:c"])
    quota.set_parents("user:u", ["team:t"])
    quota.set_limit("company:c", "tokens", "day", 1_000)
    quota.set_limit("team:t", "tokens", "month", 5_000)
    quota.set_limit("team:t", "requests", "total", 40)
    quota.set_limit("user:u", "tokens", "minute", 400)
    quota.set_limit("user:u", "tokens", "hour", 10**15)
    quota.set_limit("user:u", "requests", "day", -1)
    quota.set_limit("user:u", "input_sequence_length", None, 300)
    quota.set_limit("user:u", "credits", "day", "2.5")
    quota.set_limit("user:s", "tokens", "day", 50, shadow=True)
    quota.set_limit("user:s", "tokens", "hour", 10_000)
    return {"member": api.key("member", "user:u"), "service": api.key("service")}


def in_order(answer: httpx.Response) -> list[tuple[str, str]]:
    """The headers as sent, in order, but the date and the request id (which always
    differ; test_observability.py checks the id)."""
    assert answer.headers.get("x-request-id")
    return [(k, v) for k, v in answer.headers.multi_items() if k not in ("date", "x-request-id")]


class Pair:
    """The two servers, and each one's keys by role."""

    def __init__(self, fast: Api, general: Api) -> None:
        self.fast = fast
        self.general = general
        self.keys = (shaped(fast), shaped(general))

    def same(self, path: str, body: dict[str, Any], role: str = "admin") -> httpx.Response:
        """Send ``body`` to both (both ways in on the hot side); their answers, compared."""
        answers: list[httpx.Response] = []
        for kind in TYPES:
            sides = []
            for api, keys, prefix in (
                (self.fast, self.keys[0], ""),
                (self.general, self.keys[1], "/general"),
            ):
                key = ADMIN_KEY if role == "admin" else keys[role]
                sides.append(
                    httpx.post(
                        f"{api.url}{prefix}{path}",
                        json=body,
                        headers={"Authorization": f"Bearer {key}", "Content-Type": kind},
                    )
                )
            fast, general = sides
            assert fast.status_code == general.status_code, (fast.text, general.text)
            assert fast.content == general.content
            assert in_order(fast) == in_order(general)
            answers.append(fast)
        return answers[0]


@pytest.fixture
def pair(tmp_path: Path, sqlite_template: Path) -> Iterator[Pair]:
    """As ``make_api`` makes servers, the second with the general routes added."""
    servers: list[LiveServer] = []
    try:
        for name in ("fast", "general"):
            db = migrated_sqlite(sqlite_template, tmp_path / f"{name}.db")
            app = create_app(
                Settings(db=db, admin_key=SecretStr(ADMIN_KEY)), clock=FrozenClock(NOW)
            )
            if name == "general":
                with_general_routes(app)
            servers.append(LiveServer(app))
        fast, general = (Api(s.url, s.app.state.quota, None) for s in servers)
        yield Pair(fast, general)
    finally:
        for server in servers:
            server.stop()


def test_admitted_answers_are_the_general_ones(pair: Pair) -> None:
    admitted = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 10}})
    assert admitted.status_code == 200
    assert admitted.headers["RateLimit-Limit"] == "400"
    limits = admitted.json()["limits"]
    assert {s["window"] for s in limits} >= {"minute", "hour", "day", "month", "total", None}
    service = pair.same(
        "/v1/consume", {"subject": "user:u", "amounts": {"tokens": 7, "requests": 1}}, "service"
    )
    assert service.json()["event_id"] is not None
    pair.same("/v1/consume", {"subject": "user:new", "amounts": {"tokens": 1}})  # no limits


def test_credits_caps_and_back_dated_instants_are_the_general_ones(pair: Pair) -> None:
    credits = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"credits": "0.25"}})
    assert credits.status_code == 200, credits.text
    assert "2.25" in credits.text  # a credits limit's figures travel as strings
    earlier = "2026-03-10T22:59:58.123456+00:00"
    pair.same(
        "/v1/consume",
        {"subject": "user:u", "amounts": {"tokens": 3}, "timestamp": earlier, "mode": "record"},
    )
    pair.same(
        "/v1/consume",
        {"subject": "user:u", "amounts": {"input_tokens": 200, "output_tokens": 5}},
    )


def test_refusals_and_checks_are_the_general_ones(pair: Pair) -> None:
    body = {"subject": "user:u", "amounts": {"tokens": 390}}
    pair.same("/v1/consume", body)
    refused = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 20}})
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    too_big = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 5_000}})
    assert too_big.status_code == 429
    assert "Retry-After" not in too_big.headers
    assert pair.same("/v1/check", {"subject": "user:u", "amounts": {"tokens": 1}}).json()["allowed"]
    denied = pair.same("/v1/check", {"subject": "user:u", "amounts": {"tokens": 20}})
    assert denied.status_code == 200
    assert denied.json()["allowed"] is False
    recorded = pair.same(
        "/v1/consume", {"subject": "user:u", "amounts": {"tokens": 20}, "mode": "record"}
    )
    assert recorded.json()["allowed"] is True


def test_a_member_sees_its_subtree_in_either_way(pair: Pair) -> None:
    pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 300}})
    pair.same("/v1/consume", {"subject": "team:t", "amounts": {"tokens": 650}})
    admitted = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 5}}, "member")
    assert {s["subject"] for s in admitted.json()["limits"]} == {"user:u"}
    refused = pair.same("/v1/consume", {"subject": "user:u", "amounts": {"tokens": 60}}, "member")
    assert refused.status_code == 429
    details = refused.json()["error"]["details"]
    assert details["blocked_outside"] == [{"reason": "ancestor_limit", "metric": "tokens"}]
    checked = pair.same("/v1/check", {"subject": "user:u", "amounts": {"tokens": 60}}, "member")
    assert checked.json()["blocked_outside"]


def test_replays_and_shadow_refusals_are_the_general_ones(pair: Pair) -> None:
    body = {"subject": "user:u", "amounts": {"tokens": 4}, "idempotency_key": "k-1"}
    first = pair.same("/v1/consume", body)
    again = pair.same("/v1/consume", body)  # both ways in: a replay each time
    assert again.json()["replayed"] is True
    assert again.json()["event_id"] == first.json()["event_id"]
    shadowed = pair.same("/v1/consume", {"subject": "user:s", "amounts": {"tokens": 60}})
    assert shadowed.status_code == 200
    assert shadowed.json()["shadow_blocked"]
