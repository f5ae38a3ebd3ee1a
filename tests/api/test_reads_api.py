"""Usage, history and the ledger (pages and exports) over real HTTP."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from tests.api.conftest import Api, ServerFactory
from tokenquota import FrozenClock
from tokenquota.api.admin_schemas import EventPage, HistoryOut
from tokenquota.api.schemas import UsageOut
from tokenquota.export import CSV_COLUMNS
from tokenquota.wire.ledger import encode_event

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday


def ok(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def error(response: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["details"]["field"] == field, body


@pytest.fixture
def frozen(make_api: ServerFactory) -> Api:
    return make_api(clock=FrozenClock(NOW))


# usage ------------------------------------------------------------------------------------
def test_usage_reports_used_remaining_and_reset(frozen: Api) -> None:
    quota = frozen.quota
    quota.set_parents("user:alice", ["company:acme"])
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.set_limit("user:alice", "credits", "month", "5")
    quota.set_limit("company:acme", "requests", "minute", -1)
    quota.consume("user:alice", tokens=300, credits="1.25")
    with frozen.client() as admin:
        body = ok(admin.get("/v1/subjects/user:alice/usage"), UsageOut)
        assert body["subject"] == "user:alice"
        assert datetime.fromisoformat(body["at"]) == NOW
        by_metric = {s["metric"]: s for s in body["limits"]}
        assert set(by_metric) == {"credits", "tokens"}
        assert by_metric["tokens"] == {
            "subject": "user:alice",
            "metric": "tokens",
            "window": "day",
            "limit": 1_000,
            "source": "override",
            "shadow": False,
            "used": 300,
            "reserved": 0,
            "remaining": 700,
            "reset_at": "2026-03-11T00:00:00+00:00",
            "within_limit": True,
            "shadow_hits": None,  # an enforced limit; shadow limits carry their count
            "reason": None,
        }
        assert (by_metric["credits"]["used"], by_metric["credits"]["remaining"]) == (
            "1.25",
            "3.75",
        )
        body = ok(
            admin.get("/v1/subjects/user:alice/usage", params={"include_ancestors": "true"}),
            UsageOut,
        )
        assert [(s["subject"], s["metric"]) for s in body["limits"]] == [
            ("user:alice", "credits"),
            ("user:alice", "tokens"),
            ("company:acme", "requests"),
        ]
        assert body["limits"][2]["remaining"] is None  # unlimited
        error(admin.get("/v1/subjects/alice/usage"), 422, "validation_error", "ref")
        error(
            admin.get("/v1/subjects/user:alice/usage", params={"include_ancestors": "perhaps"}),
            422,
            "validation_error",
            "include_ancestors",
        )


def test_a_member_sees_no_ancestor_above_its_own_subject(api: Api) -> None:
    api.quota.set_parents("user:a1", ["company:a", "group:g"])
    for subject in ("user:a1", "company:a", "group:g"):
        api.quota.set_limit(subject, "tokens", "day", 100)
    with api.client(api.key("member", "company:a")) as member:
        body = ok(
            member.get("/v1/subjects/user:a1/usage", params={"include_ancestors": True}), UsageOut
        )
    assert [s["subject"] for s in body["limits"]] == ["user:a1", "company:a"]
    with api.client() as admin:
        body = ok(
            admin.get("/v1/subjects/user:a1/usage", params={"include_ancestors": True}), UsageOut
        )
    assert [s["subject"] for s in body["limits"]] == ["user:a1", "company:a", "group:g"]


def test_usage_of_an_unknown_subject_is_404_with_strict_subjects(make_api: ServerFactory) -> None:
    api = make_api(strict_subjects=True)
    with api.client() as admin:
        error(admin.get("/v1/subjects/user:ghost/usage"), 404, "not_found", "subject")
        admin.put("/v1/subjects/user:ghost", json={})
        assert admin.get("/v1/subjects/user:ghost/usage").json()["limits"] == []


# history ----------------------------------------------------------------------------------
def test_history_groups_by_period_metric_and_model(frozen: Api) -> None:
    quota = frozen.quota
    quota.set_parents("user:alice", ["company:acme"])
    day1 = datetime(2026, 3, 8, 9, 30, tzinfo=UTC)
    day2 = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)
    quota.consume("user:alice", tokens=100, model="gpt", timestamp=day1)
    quota.consume("user:alice", tokens=50, model="llama", timestamp=day1 + timedelta(minutes=10))
    quota.consume("user:bob", tokens=1, timestamp=day1)  # not in alice's history
    quota.consume("user:alice", tokens=7, credits="0.5", timestamp=day2)
    params = {"start": "2026-03-08T00:00:00Z", "end": "2026-03-10T00:00:00+00:00"}
    with frozen.client() as admin:
        body = ok(admin.get("/v1/subjects/user:alice/history", params=params), HistoryOut)
        assert (body["subject"], body["granularity"], body["group_by"]) == (
            "user:alice",
            "day",
            "metric",
        )
        points = [(p["start"][:10], p["metric"], p["model"], p["value"]) for p in body["points"]]
        assert points == [
            ("2026-03-08", "requests", None, 2),
            ("2026-03-08", "tokens", None, 150),
            ("2026-03-09", "credits", None, "0.5"),
            ("2026-03-09", "requests", None, 1),
            ("2026-03-09", "tokens", None, 7),
        ]
        assert body["points"][0]["end"] == "2026-03-09T00:00:00+00:00"

        body = ok(
            admin.get(
                "/v1/subjects/user:alice/history",
                params={**params, "granularity": "hour", "group_by": "model"},
            ),
            HistoryOut,
        )
        tokens = [
            (p["start"], p["model"], p["value"]) for p in body["points"] if p["metric"] == "tokens"
        ]
        assert tokens == [
            ("2026-03-08T09:00:00+00:00", "gpt", 100),
            ("2026-03-08T09:00:00+00:00", "llama", 50),
            ("2026-03-09T15:00:00+00:00", "", 7),
        ]

        # The company's history holds what its users spent; the default range ends today.
        body = ok(
            admin.get("/v1/subjects/company:acme/history", params={"granularity": "month"}),
            HistoryOut,
        )
        assert [(p["start"][:7], p["metric"], p["value"]) for p in body["points"]] == [
            ("2026-03", "credits", "0.5"),
            ("2026-03", "requests", 3),
            ("2026-03", "tokens", 157),
        ]

        for bad, field in [
            ({"granularity": "week"}, "granularity"),
            ({"group_by": "tag"}, "group_by"),
            ({"start": "2026-03-08T00:00:00"}, "start"),
            ({"end": "yesterday"}, "end"),
            ({"start": "2026-03-10T00:00:00Z", "end": "2026-03-09T00:00:00Z"}, "start"),
            ({"start": "1990-01-01T00:00:00Z", "granularity": "hour"}, "start"),
            ({"end": "9999-12-31T23:00:00Z", "granularity": "month"}, "end"),
            ({"start": "0001-01-01T00:00:00+14:00"}, "start"),
        ]:
            error(
                admin.get("/v1/subjects/user:alice/history", params=bad),
                422,
                "validation_error",
                field,
            )


# events -------------------------------------------------------------------------------------
def _seed_events(quota: Any) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.consume("user:alice", tokens=10, model="gpt", tags={"feature": "chat"})
    quota.consume("user:bob", input_tokens=3, output_tokens=4, idempotency_key="k1")
    quota.consume("user:alice", credits="0.125", mode="record")


def test_events_pages_and_filters(frozen: Api) -> None:
    quota = frozen.quota
    _seed_events(quota)
    quota.consume(
        "user:alice", tokens=1, timestamp=NOW - timedelta(days=2)
    )  # back-dated: id 4, oldest timestamp
    with frozen.client() as admin:
        page = ok(admin.get("/v1/events"), EventPage)
        assert (page["total"], page["offset"], page["limit"]) == (4, 0, 100)
        assert page["items"] == [encode_event(e) for e in quota.events().items]
        first = page["items"][0]
        assert first["subject"] == "user:alice"
        assert first["charged"] == ["user:alice", "company:acme"]
        assert (first["model"], first["tags"]) == ("gpt", {"feature": "chat"})
        assert first["amounts"] == {"tokens": 10, "requests": 1}
        assert page["items"][2]["amounts"] == {"credits": "0.125", "requests": 1}

        page = ok(admin.get("/v1/events", params={"offset": 1, "limit": 2}), EventPage)
        assert [e["id"] for e in page["items"]] == [2, 3]
        page = ok(admin.get("/v1/events", params={"subject": "company:acme"}), EventPage)
        assert [e["id"] for e in page["items"]] == [1, 3, 4]
        page = ok(
            admin.get(
                "/v1/events",
                params={"subject": "user:alice", "end": (NOW - timedelta(days=1)).isoformat()},
            ),
            EventPage,
        )
        assert [e["id"] for e in page["items"]] == [4]
        page = ok(admin.get("/v1/events", params={"start": NOW.isoformat()}), EventPage)
        assert [e["id"] for e in page["items"]] == [1, 2, 3]

        cases: list[tuple[dict[str, str | int], str]] = [
            ({"subject": "alice"}, "subject"),
            ({"start": "2026-03-08T00:00:00"}, "start"),
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"offset": -1}, "offset"),
            ({"format": "xml"}, "format"),
            ({"start": "0001-01-01T00:00:00+14:00"}, "start"),
            ({"end": "9999-12-31T23:59:59-14:00"}, "end"),
            ({"end": "2026-01-01T00:00:00+25:00"}, "end"),
        ]
        for bad, field in cases:
            error(admin.get("/v1/events", params=bad), 422, "validation_error", field)


def test_csv_export_streams_every_event(api: Api, admin: httpx.Client) -> None:
    _seed_events(api.quota)
    for i in range(500):  # past one page and one storage batch
        api.quota.consume("user:carol", tokens=i, mode="record")
    with admin.stream("GET", "/v1/events", params={"format": "csv"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        text = response.read().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(csv.DictReader(io.StringIO(text)).fieldnames or ()) == CSV_COLUMNS
    assert CSV_COLUMNS == (
        "id",
        "kind",
        "subject",
        "charged",
        "timestamp",
        "recorded_at",
        "mode",
        "tokens",
        "input_tokens",
        "output_tokens",
        "requests",
        "credits",
        "model",
        "tags",
        "idempotency_key",
        "resource",
    )
    assert len(rows) == 503
    assert [int(r["id"]) for r in rows] == list(range(1, 504))
    alice, bob, credits = rows[:3]
    assert alice["charged"].split(" ") == ["user:alice", "company:acme"]
    assert (alice["tokens"], alice["credits"], alice["model"]) == ("10", "", "gpt")
    assert json.loads(alice["tags"]) == {"feature": "chat"}
    assert datetime.fromisoformat(alice["timestamp"]) == api.quota.events().items[0].timestamp
    assert (bob["input_tokens"], bob["output_tokens"], bob["tokens"]) == ("3", "4", "7")
    assert (bob["idempotency_key"], json.loads(bob["tags"])) == ("k1", {})
    assert (credits["credits"], credits["mode"]) == ("0.125", "record")
    assert sum(int(r["tokens"] or 0) for r in rows[3:]) == sum(range(500))

    only_alice = admin.get("/v1/events", params={"format": "csv", "subject": "user:alice"})
    assert [r["id"] for r in csv.DictReader(io.StringIO(only_alice.text))] == ["1", "3"]


def test_jsonl_export_matches_the_ledger(api: Api, admin: httpx.Client) -> None:
    _seed_events(api.quota)
    response = admin.get("/v1/events", params={"format": "jsonl", "limit": 1})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    assert [json.loads(line) for line in lines] == [
        encode_event(e) for e in api.quota.iter_events()
    ]
    assert len(lines) == 3
    empty = admin.get("/v1/events", params={"format": "jsonl", "subject": "user:nobody"})
    assert (empty.status_code, empty.text) == (200, "")
    header_only = admin.get("/v1/events", params={"format": "csv", "subject": "user:nobody"})
    assert header_only.text.strip() == ",".join(CSV_COLUMNS)


def test_a_member_reads_events_only_within_its_scope(api: Api) -> None:
    _seed_events(api.quota)
    with api.client(api.key("member", "company:acme")) as member:
        page = ok(member.get("/v1/events", params={"subject": "company:acme"}), EventPage)
        assert [e["id"] for e in page["items"]] == [1, 3]
        page = ok(member.get("/v1/events", params={"subject": "user:alice"}), EventPage)
        assert [e["id"] for e in page["items"]] == [1, 3]
        exported = member.get("/v1/events", params={"subject": "user:alice", "format": "jsonl"})
        assert len(exported.text.splitlines()) == 2
        for params in (
            {},
            {"format": "csv"},
            {"subject": "user:bob"},
            {"subject": "user:bob", "format": "jsonl"},
        ):
            error(member.get("/v1/events", params=params), 403, "forbidden")
