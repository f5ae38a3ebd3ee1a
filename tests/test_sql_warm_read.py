"""SQLite's one-row read of a warm consume (storage/sql/warm.py).

A warm consume reads one row (each limit's bucket, the lifetime counters, the
subject, the version, the key's answer, the next event number) and is
decided through ``decisions.admitted``; anything else (live holds, grants,
thresholds, a capacity, a plan without a placement) takes the general read.
Each one-row read is checked against the general read in the same
transaction, and a whole run of consumes, reservations, grants, refusals,
replays and shadow blocks must answer and store exactly what it does with
the one-row read switched off: every answer, event, counter, idempotency
answer, alert and shadow hit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tokenquota
from tests.conftest import START, migrated_sqlite
from tokenquota import FrozenClock, Quota
from tokenquota.domain.decisions import DebitPlan, Decision, Mode
from tokenquota.domain.ledger import increments, usage_event
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.sql import hot, reads, warm
from tokenquota.wire import stored


@pytest.fixture
def quota(sqlite_template: Path, tmp_path: Path) -> Iterator[Quota]:
    """A store on a migrated SQLite file, its clock frozen at START."""
    with tokenquota.open(
        migrated_sqlite(sqlite_template, tmp_path / "q.db"), clock=FrozenClock(START)
    ) as opened:
        yield opened


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every one-row read is compared with the general read of the same plan, in the
    same transaction, and every consume's counters with ``ledger.increments``; yields
    [one-row reads answered, ones that needed the general read, counters compared]."""
    monkeypatch.setattr(warm, "_WARM", {})
    original = hot.HotTx._warm
    count = [0, 0, 0]

    def compare(self: hot.HotTx, plan: DebitPlan, keyed: bool, bounded: bool) -> Any:
        got = original(self, plan, keyed, bounded)
        if got is None:
            count[1] += 1
            return None
        count[0] += 1
        general = reads.Reads(
            self.sql,
            reads.Tracked(self._tracked.pairs),
            dataclasses.replace(plan, placement=None),
            keyed=keyed,
            bounded=bounded,
            numbered=False,
        )
        found = general.found(self.run(general.stmts))
        assert plan.placement is not None
        assert got.used is not None
        assert warm.readings(plan.placement, got.used) == found.readings
        assert got.lifetime == found.lifetime
        assert got.replay == found.replay
        assert got.subject_known == found.subject_known
        assert got.series == found.series
        assert not found.prepaid
        assert not found.grants
        (row,) = self.raw.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchall()
        assert got.event_id == row[0]
        return got

    monkeypatch.setattr(hot.HotTx, "_warm", compare)
    bumps = warm.Warm.bumps

    def counted(self: warm.Warm, plan: DebitPlan, tz: Any, tracked: Any) -> Any:
        text, params = got = bumps(self, plan, tz, tracked)
        rows = {}  # the upsert's rows, its numbered parameters put in
        for row in re.findall(r"\(((?:\?\d+, ){4}\?\d+)\)", text):
            s, m, w, b, v = (params[int(p[1:]) - 1] for p in row.split(", "))
            rows[(s, m, w, b)] = v
        expected = increments(self.series, plan.amounts, plan.timestamp, tz, tracked)
        assert list(rows.items()) == list(expected.items())
        assert self.deltas(plan, tz, tracked) == expected
        count[2] += 1
        return got

    monkeypatch.setattr(warm.Warm, "bumps", counted)
    return count


def _scenario(quota: Quota, clock: FrozenClock) -> list[Any]:
    """Warm consumes and every way out of the one-row read; the answers, in order."""
    out: list[Any] = []

    def call(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:  # the error is the answer
            out.append((type(exc).__name__, str(exc)))

    quota.set_parents("user:alice", ["team:red", "company:acme"])
    for subject in ("user:alice", "team:red", "company:acme"):
        for window in ("minute", "hour", "day", "month"):
            quota.set_limit(subject, "tokens", window, 400)
    quota.set_limit("user:alice", "requests", "total", 60)
    quota.set_limit("user:alice", "input_sequence_length", None, 30)
    quota.set_limit("user:bob", "tokens", "minute", 50)
    quota.set_limit("user:bob", "tokens", "hour", 30, shadow=True)
    quota.set_limit("user:ann", "tokens", "day", 100, thresholds=[50, 80])
    quota.grant("user:carol", 50)
    # One placement for the month, while the minute and hour counters (tracked for
    # the others' limits) move on: its counters change within its placement.
    quota.set_limit("user:dave", "tokens", "month", 10**6)
    for i in range(8):
        call(quota.consume, "user:alice", tokens=10, idempotency_key=f"k{i}")
        call(quota.consume, "user:alice", tokens=10, idempotency_key=f"k{i}")  # a replay
        call(quota.consume, "user:alice", tokens=11, idempotency_key=f"k{i}")  # a conflict
        call(quota.consume, "user:alice", tokens=5, input_tokens=3, model="m", tags={"a": "b"})
        call(quota.consume, "user:alice", tokens=2, input_tokens=40)  # past the cap
        call(quota.consume, "user:bob", tokens=20)  # the shadow hour, then the minute
        call(quota.consume, "user:bob", tokens=20, mode="record")
        call(quota.consume, "user:ann", tokens=15)  # thresholds: the general read
        call(quota.consume, "user:carol", tokens=5, credits=1)  # a grant: the general read
        call(quota.consume, f"user:new{i}", tokens=1)  # a subject made by its consume
        call(quota.consume, "user:dave", tokens=3, requests=1)
        clock.advance(seconds=25)  # inside a minute, then across one
    reservation = quota.reserve("user:alice", tokens=40)
    out.append(reservation.decision)
    assert reservation.reservation is not None
    call(quota.consume, "user:alice", tokens=7)  # a live hold: the general read
    call(quota.commit, reservation.reservation.id, {"tokens": 30})
    call(quota.consume, "user:alice", tokens=7)
    call(quota.consume, "user:alice", tokens=2**62, idempotency_key="big")
    call(quota.consume, "user:alice", tokens=2**62, idempotency_key="big2")  # past 2^63 - 1
    clock.advance(timedelta(days=40))
    call(quota.consume, "user:alice", tokens=7, idempotency_key="late")
    out.append(quota.usage("user:alice", include_ancestors=True))
    return out


def _stored(quota: Quota) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a decision writes, by table."""
    store: Any = quota.store
    engine = store.engine
    order = {
        "events": "id",
        "event_subjects": "subject, ts, event_id",
        "counters": 'subject, metric, "window", bucket',
        "idempotency": 'subject, "key"',
        "alert_events": "id",
        "shadow_hits": 'subject, metric, "window"',
        "subjects": "ref",
        "grants": "id",
    }
    with engine.connect() as conn:
        return {
            # Grant and reservation ids are random: each as a placeholder, the rest exact.
            table: [
                tuple(_RANDOM_ID.sub("<id>", v) if isinstance(v, str) else v for v in r)
                for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {by}"))
            ]
            for table, by in order.items()
        }


_RANDOM_ID = re.compile("[0-9a-f]{32}")


def _wire(answer: Any) -> Any:
    if isinstance(answer, Decision):
        return stored.encode_decision(answer)
    return repr(answer)


def _run(url: str) -> tuple[list[Any], dict[str, list[tuple[Any, ...]]]]:
    clock = FrozenClock(START)
    quota = tokenquota.open(url, clock=clock)
    try:
        answers = [_wire(a) for a in _scenario(quota, clock)]
        return answers, _stored(quota)
    finally:
        quota.close()


def test_the_one_row_read_is_the_general_reads_answer(
    sqlite_template: Path, tmp_path: Path, checked: list[int]
) -> None:
    _run(migrated_sqlite(sqlite_template, tmp_path / "q.db"))
    assert checked[0] >= 40  # alice's, bob's, the new subjects' consumes
    assert checked[1] >= 8  # ann's thresholds, carol's grant, alice's hold
    assert checked[2] >= 30  # the admitted ones' counters, across minutes and months


def test_answers_and_rows_are_those_of_the_general_read(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "_WARM", {})
    used = [0]
    original = warm.Warm.found

    def counted(self: warm.Warm, row: Any, plan: DebitPlan) -> Any:
        found = original(self, row, plan)
        used[0] += found is not None
        return found

    monkeypatch.setattr(warm.Warm, "found", counted)
    with_warm = _run(migrated_sqlite(sqlite_template, tmp_path / "warm.db"))
    assert used[0] >= 40
    monkeypatch.setattr(hot, "warm", lambda plan, **flags: None)
    without = _run(migrated_sqlite(sqlite_template, tmp_path / "general.db"))
    assert with_warm[0] == without[0]
    assert with_warm[1] == without[1]
    assert with_warm[1]["events"]
    assert with_warm[1]["alert_events"]
    assert with_warm[1]["shadow_hits"]
    assert with_warm[1]["idempotency"]


def test_a_shape_that_needed_the_general_read_cools_off(quota: Quota, checked: list[int]) -> None:
    """A subject with a grant finds it in the one row, reads again, and its next
    ``_COOL`` consumes go straight to the general read (not two reads each)."""
    quota.set_limit("user:carol", "tokens", "day", 10**9)
    quota.grant("user:carol", 10**6)
    for _ in range(3):  # the first decisions of a store read more (tracked pairs)
        quota.consume("user:carol", tokens=1, credits=1)
    (shape,) = warm._WARM.values()
    shape.cool = 0
    tries = checked[1]
    assert quota.consume("user:carol", tokens=1, credits=1).allowed
    assert shape.cool == warm._COOL
    for _ in range(5):
        assert quota.consume("user:carol", tokens=1, credits=1).allowed
    assert shape.cool == warm._COOL - 5
    assert checked[1] == tries + 6
    assert checked[0] == 0


def test_an_entry_of_another_placement_is_not_used(quota: Quota, checked: list[int]) -> None:
    quota.set_limit("user:alice", "tokens", "minute", 100)
    for _ in range(3):
        quota.consume("user:alice", tokens=1)
    assert warm._WARM
    # As if each placement had died and its id been reused by another object:
    # an entry used anyway would read nothing.
    for shape in warm._WARM.values():
        shape.placement = object()  # type: ignore[assignment]
        shape.text = "SELECT 1"
    before = checked[0]
    assert quota.consume("user:alice", tokens=1).allowed
    assert checked[0] == before + 1
    assert quota.usage("user:alice").limits[0].used == 4


def test_the_kept_rows_are_bounded(
    quota: Quota, checked: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "_WARM_KEPT", 3)
    for i in range(10):
        quota.set_limit(f"user:u{i}", "tokens", "minute", 100)
    for i in range(10):
        assert quota.consume(f"user:u{i}", tokens=1).allowed
        assert len(warm._WARM) <= 3
    assert checked[0] >= 8


@pytest.mark.parametrize(
    ("amounts", "extra"),
    [
        ({"tokens": 10}, {}),
        ({"tokens": 7, "input_tokens": 3, "credits": "0.25"}, {"model": "gpt-x"}),
        ({"requests": 1}, {"tags": {"team": "red", "quote": 'a "b" \\ é'}}),
        ({"tokens": 2**62}, {"idempotency_key": "k-1", "mode": Mode.RECORD}),
    ],
)
def test_a_consumes_event_values_are_those_of_its_event_row(
    amounts: dict[str, object], extra: dict[str, Any]
) -> None:
    """``hot.consume_values`` (the one-row read's consume) writes what the event row
    would, to the byte."""
    clock = FrozenClock(START)
    with tokenquota.open("memory://", clock=clock) as quota:
        quota.set_parents("user:alice", ["team:red", "company:acme"])
        quota.set_limit("user:alice", "tokens", "minute", 100)
        plan = quota.planner.plan(
            SubjectRef.parse("user:alice"),
            amounts,
            extra.pop("mode", Mode.ENFORCE),
            None,
            **extra,
        )
    assert plan.placement is not None
    charged = tuple(str(s) for s in plan.charged)
    assert hot.consume_values(plan, charged) == hot.event_values(event_row(usage_event(plan)))


def test_a_row_too_wide_for_one_select_takes_the_general_read(
    quota: Quota, checked: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm, "_MOST_COLUMNS", 3)
    quota.set_limit("user:alice", "tokens", "minute", 100)
    for _ in range(5):
        assert quota.consume("user:alice", tokens=1).allowed
    assert checked[0] == 0
    assert checked[1] >= 3
    assert quota.usage("user:alice").limits[0].used == 5
