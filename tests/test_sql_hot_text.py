"""The SQL hot step's own texts: an event's JSON columns and SQLite's folded reads.

An event's ``charged``, ``amounts`` and ``tags`` are stored as the text
``json.dumps`` writes (exports and the Redis mover's rows are compared with
it), but the hot step builds the first two without it (storage/sql/hot.py):
the text must stay the same to the byte. SQLite reads a decision in one
compound select, split over several statements past a number of parts
(statements.sqlite_reads): a split read must answer as an unsplit one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START, migrated_sqlite
from tokenquota import FrozenClock
from tokenquota.storage.sql import hot, statements


@pytest.mark.parametrize(
    "units",
    [
        {},
        {"tokens": 10},
        {"tokens": 0, "requests": 1, "credits": -5},
        {"input_tokens": 2**62, "output_tokens": 7},
        {"tokens": True},  # not an int: json.dumps writes true
        {"tokens": 1.5},
        {"not a metric \u00e9": 3},
        {'quo"te': 1},
    ],
)
def test_units_text_is_json_dumps(units: dict[str, Any]) -> None:
    assert hot._units_json(units) == json.dumps(units)


@pytest.mark.parametrize(
    "charged",
    [[], ["user:alice"], ["user:alice", "company:acme"], ['user:\u00e9"x', "team:a\\b"]],
)
def test_charged_text_is_json_dumps(charged: list[str]) -> None:
    assert hot._charged_json(charged) == json.dumps(charged)
    assert hot._charged_json(list(charged)) == json.dumps(charged)  # remembered


def test_charged_memo_starts_over_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hot, "_CHARGED_KEPT", 3)
    monkeypatch.setattr(hot, "_CHARGED_JSON", {})
    for i in range(10):
        assert hot._charged_json([f"user:u{i}"]) == json.dumps([f"user:u{i}"])
        assert len(hot._CHARGED_JSON) <= 3


def test_stored_event_columns_are_json_dumps(sqlite_template: Path, tmp_path: Path) -> None:
    url = migrated_sqlite(sqlite_template, tmp_path / "q.db")
    quota = tokenquota.open(url, clock=FrozenClock(START))
    try:
        quota.set_parents("user:alice", ["team:red", "company:acme"])
        quota.consume("user:alice", tokens=10)
        quota.consume("user:alice", input_tokens=3, output_tokens=4, tags={"k": "v\u00e9"})
        quota.consume("company:acme", requests=1, model="m")
    finally:
        quota.close()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            raw = conn.exec_driver_sql(
                "SELECT charged, amounts, tags FROM events ORDER BY id"
            ).all()
    finally:
        engine.dispose()
    assert len(raw) == 3
    for charged, amounts, tags in raw:
        # The text as written, and as json.dumps writes what it decodes to.
        assert charged == json.dumps(json.loads(charged))
        assert amounts == json.dumps(json.loads(amounts))
        assert tags == json.dumps(json.loads(tags))
    assert json.loads(raw[0][0]) == ["user:alice", "team:red", "company:acme"]
    assert json.loads(raw[1][2]) == {"k": "v\u00e9"}


def _answers(url: str) -> list[Any]:
    """A sequence touching every part of the folded read: limits on three levels,
    a lease limit, holds, grants, a replay and a denial."""
    quota = tokenquota.open(url, clock=FrozenClock(START))
    out: list[Any] = []
    try:
        quota.set_parents("user:alice", ["team:red", "company:acme"])
        for subject in ("user:alice", "team:red", "company:acme"):
            for window in ("minute", "hour", "day"):
                quota.set_limit(subject, "tokens", window, 100)
        quota.set_limit("user:alice", "concurrent_requests", None, 2)
        quota.grant("user:alice", 50)
        out.append(quota.consume("user:alice", tokens=30, credits=5, idempotency_key="k1"))
        out.append(quota.consume("user:alice", tokens=30, credits=5, idempotency_key="k1"))
        out.append(quota.reserve("user:alice", tokens=40, credits=5).decision)
        out.append(quota.acquire("user:alice").decision)
        out.append(quota.consume("user:alice", tokens=40))
        out.append(quota.consume("user:alice", tokens=20))
        out.append(quota.usage("user:alice"))
        out.append(quota.balance("user:alice"))
    finally:
        quota.close()
    return out


def test_a_split_read_answers_as_one(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _answers(migrated_sqlite(sqlite_template, tmp_path / "whole.db"))
    statements.sqlite_reads.cache_clear()
    monkeypatch.setattr(statements, "_READ_CHUNK", 2)
    try:
        assert len(statements.sqlite_reads((1, 0, 1, 3, 2, 1, 2, 1))) == 6  # 11 parts
        split = _answers(migrated_sqlite(sqlite_template, tmp_path / "split.db"))
    finally:
        statements.sqlite_reads.cache_clear()
    assert split == whole
    assert whole[3].allowed is False or whole[4].allowed is False  # a denial was read
