"""Stored decisions have their own versioned codec, apart from the API's.

Idempotency rows (SQL), Redis answer fields and spool entries outlive the code
that wrote them, so: version 1 is pinned by a golden sample; the unversioned
form written before versions existed still reads, and still replays on SQLite,
Redis and the spool; and the API codec can change without touching either.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

import tokenquota
from tests.conftest import START
from tests.wire.test_roundtrip import any_decision
from tokenquota import FrozenClock, Quota, TokenQuotaError
from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reason, WithheldBlock
from tokenquota.engine.spool import Spool
from tokenquota.wire import decisions, stored

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

SAMPLE = Decision(
    allowed=False,
    subject="user:ann",
    mode=Mode.ENFORCE,
    amounts={"tokens": 90, "credits": Decimal("0.5"), "requests": 1},
    timestamp=AT,
    limits=(
        LimitStatus(
            "user:ann",
            "tokens",
            "day",
            100,
            "override",
            False,
            40,
            0,
            60,
            AT + timedelta(hours=12),
            False,
            "limit_reached",
        ),
        LimitStatus(
            "user:ann",
            "credits",
            "prepaid",
            Decimal("10.125"),
            "grant",
            False,
            None,
            Decimal(0),
            Decimal("9.625"),
            None,
            True,
        ),
    ),
    blocked_by=(
        LimitStatus(
            "user:ann",
            "tokens",
            "day",
            100,
            "override",
            False,
            40,
            0,
            60,
            AT + timedelta(hours=12),
            False,
            "limit_reached",
        ),
    ),
    shadow_blocked=(),
    retry_after=43200,
    event_id=None,
    replayed=False,
    failed_open=False,
    reason="limit_reached",
    blocked_outside=(WithheldBlock(Reason.ANCESTOR_LIMIT, "tokens"),),
)

_TOKENS_DAY: dict[str, Any] = {
    "subject": "user:ann",
    "metric": "tokens",
    "window": "day",
    "limit": 100,
    "source": "override",
    "shadow": False,
    "used": 40,
    "reserved": 0,
    "remaining": 60,
    "reset_at": "2026-03-11T00:00:00+00:00",
    "within_limit": False,
    "reason": "limit_reached",
}
# Version 1 as written: this literal is the format's definition. Never edit it;
# a new format is a new version with a sample of its own.
GOLDEN_V1: dict[str, Any] = {
    "v": 1,
    "allowed": False,
    "subject": "user:ann",
    "mode": "enforce",
    "amounts": {"tokens": 90, "credits": "0.5", "requests": 1},
    "timestamp": "2026-03-10T12:00:00+00:00",
    "limits": [
        _TOKENS_DAY,
        {
            "subject": "user:ann",
            "metric": "credits",
            "window": "prepaid",
            "limit": "10.125",
            "source": "grant",
            "shadow": False,
            "used": None,
            "reserved": "0",
            "remaining": "9.625",
            "reset_at": None,
            "within_limit": True,
            "reason": None,
        },
    ],
    "blocked_by": [_TOKENS_DAY],
    "shadow_blocked": [],
    "retry_after": 43200,
    "event_id": None,
    "replayed": False,
    "failed_open": False,
    "reason": "limit_reached",
    "blocked_outside": [{"reason": "ancestor_limit", "metric": "tokens"}],
}


def _oldest(body: dict[str, Any]) -> dict[str, Any]:
    """The unversioned form of the first releases: no version, and none of the fields
    added later (``failed_open``, ``reason``, ``blocked_outside``, a status's ``reason``)."""
    old = {k: v for k, v in body.items() if k not in ("v", "failed_open", "reason")}
    old.pop("blocked_outside", None)
    for name in ("limits", "blocked_by", "shadow_blocked"):
        old[name] = [{k: v for k, v in s.items() if k != "reason"} for s in body[name]]
    return old


def test_version_1_is_the_golden_sample() -> None:
    assert stored.encode_decision(SAMPLE) == GOLDEN_V1
    assert json.loads(json.dumps(GOLDEN_V1)) == GOLDEN_V1  # plain JSON, nothing Python-only
    assert stored.decode_decision(GOLDEN_V1) == SAMPLE


def test_the_unversioned_forms_stored_before_still_read() -> None:
    unversioned = {k: v for k, v in GOLDEN_V1.items() if k != "v"}  # the API form of the day
    assert stored.decode_decision(unversioned) == SAMPLE
    oldest = stored.decode_decision(_oldest(GOLDEN_V1))
    assert oldest.failed_open is False
    assert oldest.reason is None
    assert oldest.blocked_outside == ()
    assert [s.reason for s in oldest.limits] == [None, None]
    assert [s.remaining for s in oldest.limits] == [60, Decimal("9.625")]


@given(any_decision())
def test_any_decision_round_trips_through_the_stored_form(decision: Decision) -> None:
    body = json.loads(json.dumps(stored.encode_decision(decision)))
    assert body["v"] == stored.DECISION_VERSION
    assert stored.decode_decision(body) == decision


def test_a_version_from_the_future_is_refused_not_misread() -> None:
    with pytest.raises(TokenQuotaError, match="version 2"):
        stored.decode_decision({**GOLDEN_V1, "v": 2})


def test_the_stored_form_does_not_follow_the_api_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renaming a field of the API's decision or status leaves the stored form as it is."""
    assert stored.encode_decision is not decisions.encode_decision
    assert stored.decode_decision is not decisions.decode_decision
    api_status = decisions.encode_limit_status

    def renamed(status: LimitStatus) -> dict[str, Any]:
        body = api_status(status)
        body["resets_at"] = body.pop("reset_at")
        return body

    monkeypatch.setattr(decisions, "encode_limit_status", renamed)
    assert "resets_at" in decisions.encode_decision(SAMPLE)["limits"][0]  # the API changed
    assert stored.encode_decision(SAMPLE) == GOLDEN_V1  # the stored form did not
    assert stored.decode_decision(GOLDEN_V1) == SAMPLE


# replays of answers stored in the unversioned form -----------------------------------


def _legacy_json(decision: Decision) -> str:
    """A decision as releases before the stored codec wrote it: the API's form, unversioned."""
    return json.dumps({k: v for k, v in stored.encode_decision(decision).items() if k != "v"})


@pytest.fixture
def sqlite_quota(tmp_path: Path) -> Iterator[tuple[Quota, Path]]:
    path = tmp_path / "quota.db"
    with tokenquota.open(f"sqlite:///{path}", clock=FrozenClock(START)) as opened:
        yield opened, path


def test_sqlite_replays_an_idempotency_answer_stored_unversioned(
    sqlite_quota: tuple[Quota, Path],
) -> None:
    quota, path = sqlite_quota
    quota.set_limit("user:ann", "tokens", "day", 14)
    first = quota.consume("user:ann", tokens=7, idempotency_key="k1")
    with sqlite3.connect(path) as conn:
        [(written,)] = conn.execute("SELECT decision FROM idempotency").fetchall()
        assert json.loads(written)["v"] == 1  # what this release writes
        conn.execute("UPDATE idempotency SET decision = ?", (_legacy_json(first),))

    again = quota.consume("user:ann", tokens=7, idempotency_key="k1")

    assert again == first.as_replay()
    assert quota.usage("user:ann").limits[0].used == 7


def test_sqlite_replays_a_commit_stored_unversioned(sqlite_quota: tuple[Quota, Path]) -> None:
    quota, path = sqlite_quota
    held = quota.reserve("user:ann", tokens=5).reservation
    assert held is not None
    first = quota.commit(held.id, tokens=4)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE reservations SET decision = ?", (_legacy_json(first),))

    assert quota.commit(held.id, tokens=4) == first.as_replay()


@pytest.mark.parametrize("redis_fixture", ["redis_url", "cluster_url"])
def test_redis_replays_an_answer_stored_unversioned(
    redis_fixture: str, postgres_url: str, request: pytest.FixtureRequest
) -> None:
    """Releases before the one-step script kept the answer in the key's "d" field;
    with the plan gone, only that field can answer the retry, so it is what is read."""
    from tests.test_redis import store_of

    redis = request.getfixturevalue(redis_fixture)
    with tokenquota.open(postgres_url, redis=redis, clock=FrozenClock(START)) as quota:
        quota.set_limit("user:ann", "tokens", "day", 14)
        first = quota.consume("user:ann", tokens=7, idempotency_key="k1")
        store = store_of(quota)
        key = store.layout.idem("user:ann", "k1")[1]
        store.redis.hset(key, "d", _legacy_json(first))
        store.redis.hdel(key, "p")

        again = quota.consume("user:ann", tokens=7, idempotency_key="k1")

        assert again == first.as_replay()
        assert again.limits  # from the stored answer: the ledger alone shows no limits


def test_the_spool_replays_a_queued_answer_stored_unversioned(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    answer = Decision(True, "user:ann", Mode.ENFORCE, {"tokens": 3}, AT, (), failed_open=True)
    assert spool.queue("user:ann", "k1", {"tokens": 3}, answer, "fp") == answer
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        [(written,)] = conn.execute("SELECT answer FROM queued").fetchall()
        assert json.loads(written)["v"] == 1
        conn.execute("UPDATE queued SET answer = ?", (_legacy_json(answer),))

    assert spool.queue("user:ann", "k1", {"tokens": 3}, answer, "fp") == answer.as_replay()
