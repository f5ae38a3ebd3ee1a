"""The kept folded reads of SQLite and PostgreSQL (storage/sql/reads.py ``_Shape``).

A warm decision's read statement and parameters come from the last decision
of the same placement and request shape, with its own idempotency key and
time put in. Every read built that way must be, to the parameter, the read
built from the plan's own checks (the plan without its placement), through
idempotency keys, times inside and across spans, leases, holds and grants;
an entry whose placement is not the plan's own is never used; the kept
entries are bounded.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tokenquota
from tests.conftest import START, migrated_sqlite
from tokenquota import FrozenClock
from tokenquota.domain.decisions import DebitPlan
from tokenquota.storage.sql import hot, reads


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every read of a placed plan is compared with the one built without the cache;
    yields the number of such reads. SQLite's one-row read of a warm consume
    (``warm.py``, tests/test_sql_warm_read.py) is off: these are the general read's."""
    monkeypatch.setattr(reads, "_SHAPES", {})
    monkeypatch.setattr(hot, "warm", lambda plan, **flags: None)
    original = hot.HotTx.reads
    count = [0]

    def checked(self: hot.HotTx, plan: DebitPlan, **flags: Any) -> reads.Reads:
        tracked = reads.Tracked(self._tracked.pairs, self._tracked.asking)
        got = original(self, plan, **flags)
        if plan.placement is not None:
            built = reads.Reads(
                self.sql, tracked, dataclasses.replace(plan, placement=None), **flags
            )
            assert got.stmts == built.stmts
            assert got.lifetime == built.lifetime
            assert got.ranges.keys == built.ranges.keys
            assert got.ranges.names == built.ranges.names
            count[0] += 1
        return got

    monkeypatch.setattr(hot.HotTx, "reads", checked)
    return count


def _run(url: str, clock: FrozenClock) -> list[Any]:
    quota = tokenquota.open(url, clock=clock)
    out: list[Any] = []
    try:
        quota.set_parents("user:alice", ["team:red", "company:acme"])
        for subject in ("user:alice", "team:red", "company:acme"):
            for window in ("minute", "hour", "day"):
                quota.set_limit(subject, "tokens", window, 1000)
        quota.set_limit("user:bob", "tokens", "minute", 50)
        quota.set_limit("user:alice", "concurrent_requests", None, 2)
        quota.grant("user:alice", 50)
        for i in range(6):
            out.append(quota.consume("user:alice", tokens=10, idempotency_key=f"k{i}"))
            out.append(quota.consume("user:alice", tokens=10, idempotency_key=f"k{i}"))  # replay
            out.append(quota.consume("user:alice", tokens=5, credits=1))
            out.append(quota.consume("user:bob", tokens=20))
            clock.advance(seconds=25)  # inside a minute, then across one
        out.append(quota.reserve("user:alice", tokens=40).decision)
        out.append(quota.acquire("user:alice").decision)
        out.append(quota.consume("user:alice", tokens=7, input_tokens=3))
        clock.advance(timedelta(hours=1))
        out.append(quota.consume("user:alice", tokens=7, idempotency_key="late"))
        out.append(quota.usage("user:alice"))
    finally:
        quota.close()
    return out


def test_a_kept_read_is_the_read_of_the_plans_own_checks(
    sqlite_template: Path, tmp_path: Path, compared: list[int]
) -> None:
    answers = _run(migrated_sqlite(sqlite_template, tmp_path / "q.db"), FrozenClock(START))
    assert compared[0] >= 20  # the placed plans' reads were all compared
    assert any(not a.allowed for a in answers[:-1] if hasattr(a, "allowed"))  # bob's minute
    assert reads._SHAPES


def test_a_kept_postgres_read_is_the_read_of_the_plans_own_checks(
    postgres_url: str, compared: list[int]
) -> None:
    """PostgreSQL's one read statement (its lists as JSON texts) is kept the same way."""
    answers = _run(postgres_url, FrozenClock(START))
    assert compared[0] >= 20
    assert any(not a.allowed for a in answers[:-1] if hasattr(a, "allowed"))
    assert reads._SHAPES


def test_an_entry_of_another_placement_is_not_used(
    sqlite_template: Path, tmp_path: Path, compared: list[int]
) -> None:
    clock = FrozenClock(START)
    url = migrated_sqlite(sqlite_template, tmp_path / "q.db")
    quota = tokenquota.open(url, clock=clock)
    try:
        quota.set_limit("user:alice", "tokens", "minute", 100)
        for _ in range(3):  # the first decisions of a store read more (tracked pairs)
            quota.consume("user:alice", tokens=1)
        assert reads._SHAPES
        # As if each placement had died and its id been reused by another object:
        # an entry used anyway would read nothing.
        for shape in reads._SHAPES.values():
            shape.placement = object()  # type: ignore[assignment]
            shape.chunks = []
        before = compared[0]
        assert quota.consume("user:alice", tokens=1).allowed
        assert compared[0] > before
    finally:
        quota.close()


def test_the_kept_reads_are_bounded(
    sqlite_template: Path,
    tmp_path: Path,
    compared: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reads, "_SHAPES_KEPT", 3)
    quota = tokenquota.open(
        migrated_sqlite(sqlite_template, tmp_path / "q.db"), clock=FrozenClock(START)
    )
    try:
        for i in range(10):
            quota.set_limit(f"user:u{i}", "tokens", "minute", 100)
        for i in range(10):
            assert quota.consume(f"user:u{i}", tokens=1).allowed
            assert len(reads._SHAPES) <= 3
    finally:
        quota.close()
    assert compared[0] >= 10
