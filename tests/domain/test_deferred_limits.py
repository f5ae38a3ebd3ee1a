"""A decision's ``limits`` built on first read (``Decision._pending``) answer what eager ones did.

``decide`` leaves the statuses of a decision no check refused to be built when
someone reads ``limits``. These tests read them late (after the caller's list
of readings was emptied), through every way a dataclass reads its fields
(``==``, ``repr``, ``replace``, pickling, ``visible_to``), and from many
threads at once, and compare with the reference ``decide`` of
``decide_reference.py``.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain import decide_reference as reference
from tests.domain.test_decide_oracle import cases
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
    Scope,
    decide,
)
from tokenquota.domain.limits import EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Window

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
ALICE = SubjectRef("user", "alice")
ACME = SubjectRef("company", "acme")


def plan_of(value: int, amount: int = 10) -> tuple[DebitPlan, list[Reading]]:
    """The bench's shape: alice per minute, hour and day; acme per month; 5 used in each."""
    amounts = Amounts({Metric.TOKENS: amount})
    checks = []
    for subject, window in ((ALICE, "minute"), (ALICE, "hour"), (ALICE, "day"), (ACME, "month")):
        parsed = Window.parse(window)
        limit = EffectiveLimit(
            subject, LimitKey(Metric.TOKENS, parsed), value, Source.OVERRIDE, False
        )
        lo, hi = parsed.read_range(NOW, UTC_ZONE)
        checks.append(Check(limit, amount, NOW, lo, hi, parsed.bucket_of(NOW, UTC_ZONE)))
    plan = DebitPlan(
        subject=ALICE,
        charged=(ALICE, ACME),
        amounts=amounts,
        mode=Mode.ENFORCE,
        timestamp=NOW,
        now=NOW,
        tz=UTC_ZONE,
        checks=tuple(checks),
    )
    return plan, [Reading({c.lo: 5}) for c in checks]


@settings(max_examples=300, deadline=None)
@given(case=cases(), event_id=st.one_of(st.none(), st.integers(1, 10**6)))
def test_limits_read_late_are_the_reference_ones(
    case: tuple[DebitPlan, list[Reading], list[Prepaid]], event_id: int | None
) -> None:
    plan, reads, prepaid = case
    expected = reference.decide(plan, list(reads), event_id, prepaid)
    fast = decide(plan, reads, event_id, prepaid)
    reads.clear()  # a store's list of readings, reused: the decision keeps its own
    assert repr(fast.limits) == repr(expected.limits)
    assert fast == expected


def test_an_admitted_decision_builds_its_limits_once_on_first_read() -> None:
    plan, reads = plan_of(100)
    decision = decide(plan, reads, 7)
    assert decision.allowed
    assert decision._pending is not None  # not built yet
    first = decision.limits
    assert decision._pending is None
    assert decision.limits is first  # from the slot now
    assert [s.used for s in first] == [15, 15, 15, 15]
    assert [s.remaining for s in first] == [85, 85, 85, 85]
    assert repr(first) == repr(reference.decide(plan, reads, 7).limits)


def test_a_refused_decision_builds_its_limits_at_once() -> None:
    plan, reads = plan_of(12)
    decision = decide(plan, reads)
    assert not decision.allowed
    assert decision._pending is None
    assert decision.blocked_by == decision.limits
    assert {s.reason for s in decision.blocked_by} == {"limit_reached"}


def test_every_way_of_reading_a_decision_sees_its_limits() -> None:
    plan, reads = plan_of(100)
    expected = reference.decide(plan, reads, 7)
    assert decide(plan, reads, 7) == expected
    assert repr(decide(plan, reads, 7)) == repr(expected)
    assert replace(decide(plan, reads, 7), replayed=True) == replace(expected, replayed=True)
    assert decide(plan, reads, 7).as_replay().limits == expected.limits
    assert pickle.loads(pickle.dumps(decide(plan, reads, 7))) == expected
    assert orjson.dumps(decide(plan, reads, 7)) == orjson.dumps(expected)
    numbered = decide(plan, reads, None).numbered(9)
    assert numbered._pending is not None  # still not built
    assert numbered == replace(expected, event_id=9)
    refused, _ = plan_of(12)
    assert decide(refused, reads).numbered(9) == replace(
        reference.decide(refused, reads), event_id=9
    )
    scope = Scope(frozenset({"user:alice"}))
    assert decide(plan, reads, 7).visible_to(scope) == expected.visible_to(scope)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        decide(plan, reads, 7).nothing  # type: ignore[attr-defined]  # noqa: B018


def test_threads_reading_a_fresh_decision_at_once_see_the_same_limits() -> None:
    plan, reads = plan_of(100)
    expected = reference.decide(plan, reads, 7).limits
    threads = 16
    for _ in range(50):
        decision: Decision = decide(plan, reads, 7)
        seen: list[object] = []
        barrier = threading.Barrier(threads)

        def read(
            decision: Decision = decision,
            seen: list[object] = seen,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            seen.append(decision.limits)

        workers = [threading.Thread(target=read) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(seen) == threads
        assert all(limits == expected for limits in seen)
        assert decision._pending is None
        assert decision.limits == expected
