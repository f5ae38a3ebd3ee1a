"""PostgreSQL's hot step in few statements (storage/sql/statements.py, hot.py, reads.py).

A decision on PostgreSQL takes its locks in one statement, reads in one
tagged ``UNION ALL`` select and writes admitted usage in one statement of
data-modifying CTEs, its lists as JSON texts. What must hold: the global key
shared and every series lock exclusive once the lock statement has run (in
one statement or, past a bound, two); the stored rows exactly those the
decisions describe (an event's JSON columns to the byte, its subject links,
the counters, burns and idempotency answers); live holds past 2^63 - 1 on a
metric with no limit not breaking the read; lists with ints past 64 bits
still encoded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START
from tokenquota import FrozenClock
from tokenquota.domain.clock import to_micros
from tokenquota.storage.sql import statements
from tokenquota.storage.sql.hot import HotTx
from tokenquota.storage.sql.statements import POSTGRES, json_text
from tokenquota.storage.sql.tx import series_keys

GLOBAL_KEY = 29809
SERIES = ["user:alice", "company:acme", "team:red", 'user:"odd\\name"']


def _oid(value: int) -> int:
    """A signed int4 key as pg_locks shows it (an oid, unsigned)."""
    return value & 0xFFFFFFFF


@pytest.mark.parametrize("in_one", [256, 1])
def test_the_lock_statement_takes_the_global_key_shared_and_every_series_lock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, in_one: int
) -> None:
    monkeypatch.setattr(statements, "_LOCKS_IN_ONE", in_one)  # 1: the two-statement form
    quota = tokenquota.open(postgres_url, clock=FrozenClock(START))
    try:
        db = quota.store.meter.db  # type: ignore[attr-defined]
        with db.tx(hot=True, global_key=False) as conn:
            tx = HotTx(conn)
            tx.lock(SERIES)
            assert len(tx.pending) == (1 if in_one > len(SERIES) else 2)
            tx.flush()
            rows = conn.exec_driver_sql(
                "SELECT classid::bigint, objid::bigint, objsubid, mode FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
            ).all()
            conn.rollback()
    finally:
        quota.close()
    held = {(int(c), int(o), int(s), m) for c, o, s, m in rows}
    expected = {(0, GLOBAL_KEY, 1, "ShareLock")}
    expected |= {(_oid(hi), _oid(lo), 2, "ExclusiveLock") for hi, lo in series_keys(SERIES)}
    assert held == expected


def _columns(conn: sa.Connection, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.exec_driver_sql(sql).all()]


def test_one_write_statement_stores_exactly_the_rows_it_is_given(postgres_url: str) -> None:
    """Events (their JSON columns kept as written, odd text included), their links
    from their own charged lists, counter upserts added to what is there, burns and
    idempotency answers: one statement, as a lone decision and a batch write them."""
    quota = tokenquota.open(postgres_url, clock=FrozenClock(START))
    try:
        quota.grant("user:alice", 100)
        (grant,) = quota.grants("user:alice")
        db = quota.store.meter.db  # type: ignore[attr-defined]
        ts = to_micros(START)
        charged = ["user:alice", 'team:"r\\ed\u00e9"']
        events = [
            (
                9001,
                "consume",
                "user:alice",
                json.dumps(charged),
                ts,
                ts + 1,
                "enforce",
                '{"tokens": 10, "requests": 1}',
                None,
                json.dumps({"k": 'v"\u00e9\n'}),
                "key-1",
                None,
            ),
            (
                9002,
                "consume",
                "user:bob",
                '["user:bob"]',
                ts,
                ts,
                "enforce",
                "{}",
                "m",
                "{}",
                None,
                "resource:x",
            ),
        ]
        deltas = {
            ("user:alice", "tokens", "minute", 60): 10,
            ("user:alice", "tokens", "total", 0): 2**62,
        }
        answer = json.dumps({"allowed": True, "event_id": 9001})
        remembers = [("user:alice", "key-1", "fp", answer, ts)]
        with db.tx() as conn:
            before = _columns(conn, f"SELECT remaining FROM grants WHERE id = '{grant.id}'")
        with db.tx(hot=True) as conn:
            conn.exec_driver_sql(
                'INSERT INTO counters (subject, metric, "window", bucket, value)'
                " VALUES ('user:alice', 'tokens', 'minute', 60, 5)"
            )
            tx = HotTx(conn)
            tx.pending.append(POSTGRES.record(events, deltas, {grant.id: 30}, remembers))
            tx.flush()
        with db.tx() as conn:
            stored = _columns(
                conn,
                "SELECT id, kind, subject, charged::text, ts, recorded_at, mode, amounts::text,"
                " model, tags::text, idempotency_key, resource FROM events"
                " WHERE id IN (9001, 9002) ORDER BY id",
            )
            links = _columns(
                conn,
                "SELECT event_id, subject, ts FROM event_subjects"
                " WHERE event_id IN (9001, 9002) ORDER BY event_id, subject",
            )
            counters = _columns(
                conn,
                'SELECT metric, "window", bucket, value FROM counters'
                " WHERE subject = 'user:alice' ORDER BY \"window\"",
            )
            remaining = _columns(conn, f"SELECT remaining FROM grants WHERE id = '{grant.id}'")
            kept = _columns(conn, "SELECT fingerprint, decision::text, created_at FROM idempotency")
    finally:
        quota.close()
    assert stored == [tuple(e) for e in events]
    assert links == sorted(
        [(9001, s, ts) for s in charged] + [(9002, "user:bob", ts)], key=lambda r: (r[0], r[1])
    )
    assert counters == [("tokens", "minute", 60, 15), ("tokens", "total", 0, 2**62)]
    assert remaining == [(before[0][0] - 30,)]
    assert kept == [("fp", answer, ts)]


def test_live_holds_past_63_bits_on_a_metric_with_no_limit_do_not_break_a_decision(
    postgres_url: str,
) -> None:
    quota = tokenquota.open(postgres_url, clock=FrozenClock(START))
    try:
        quota.set_limit("user:alice", "requests", "minute", 10)
        for _ in range(3):  # 3 * 2^62 tokens held: past a bigint
            assert quota.reserve("user:alice", tokens=2**62, requests=1).decision.allowed
        assert quota.consume("user:alice", tokens=1, requests=1).allowed
        assert not quota.consume("user:alice", requests=7).allowed  # 3 held + 1 + 7 > 10
    finally:
        quota.close()


def test_json_text_writes_ints_past_64_bits_as_json_does() -> None:
    values = [["user:a", 2**70, -(2**65)], ["user:\u00e9", None, 1]]
    assert json.loads(json_text(values)) == values
    assert json_text([["a", 1]]) == '[["a",1]]'
