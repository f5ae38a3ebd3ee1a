"""A plan made from a ``Placement`` (``PlacedPlan``) is the plan the planner made before.

The planner's warm path shares one ``Placement`` between the plans of a span
(``Layout.placement``) and builds their ``Check``s only when read; the memory
meter decides from the placement without them (``decisions.admitted``). Here
the placement's checks are compared with the reference ``check_of`` over the
decide oracle's plans (calendar, ``total`` and cap limits, across DST nights),
its decisions with those of the same plan built with its checks, and a
``PlacedPlan`` with a ``DebitPlan`` in every way of reading a dataclass.
"""

from __future__ import annotations

import copy
import pickle
import threading
from dataclasses import astuple, fields, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain.test_admitted import one_bucket
from tests.domain.test_decide_oracle import cases, check_of
from tokenquota.domain.decisions import DebitPlan, Mode, Reading, admitted, decide
from tokenquota.domain.limits import EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.plans import PlacedPlan, Placement, placed_plan
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine.planner import Layout

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
ZONE = ZoneInfo("UTC")
ALICE = SubjectRef("user", "alice")


def placed(plan: DebitPlan, placement: Placement) -> DebitPlan:
    """``plan`` built as the planner's warm path builds it: its checks left unset."""
    values = [getattr(plan, f.name) for f in fields(DebitPlan) if f.name != "checks"]
    return placed_plan(*values[:-1], placement)


@settings(max_examples=500, deadline=None)
@given(case=cases(), event_id=st.one_of(st.none(), st.integers(1, 10**6)), data=st.data())
def test_a_placed_plan_decides_as_the_plan_with_its_checks(
    case: tuple[DebitPlan, list[Reading], object], event_id: int | None, data: st.DataObject
) -> None:
    plan, _, _ = case
    if not one_bucket(plan) or plan.capacity is not None:
        return
    limits = tuple(check.limit for check in plan.checks)
    placement = Layout(limits).placement(plan.timestamp, plan.tz)
    assert placement is not None  # no rolling window, no lease: placed per span
    expected = tuple(
        check_of(c.limit, plan.amounts, plan.timestamp, plan.now, plan.tz) for c in plan.checks
    )
    assert placement.checks(plan.amounts, plan.timestamp) == expected == plan.checks

    used = [
        data.draw(st.integers(0, 80)) if check.limit.key.window is not None else 0
        for check in plan.checks
    ]
    fast = admitted(placed(plan, placement), used, event_id)
    slow = admitted(plan, used, event_id)
    assert repr(fast) == repr(slow)  # builds the deferred statuses of both

    reads = [Reading({c.lo: u} if u else {}) for c, u in zip(plan.checks, used, strict=True)]
    assert repr(decide(placed(plan, placement), reads, event_id)) == repr(
        decide(plan, reads, event_id)
    )


def test_a_layout_places_per_span_only_calendar_total_and_cap_limits() -> None:
    def limit(metric: str, window: str | None) -> EffectiveLimit:
        return EffectiveLimit(ALICE, LimitKey.parse(metric, window), 10, Source.OVERRIDE, False)

    calendar = (
        limit("tokens", "day"),
        limit("tokens", "total"),
        limit("input_sequence_length", None),
    )
    assert Layout(calendar).placement(NOW, ZONE) is not None
    for other in (limit("tokens", "rolling:5m"), limit("concurrent_requests", None)):
        assert Layout((*calendar, other)).placement(NOW, ZONE) is None


def _pair() -> tuple[DebitPlan, DebitPlan]:
    """One plan twice: as a PlacedPlan (checks unset) and as a DebitPlan with its checks."""
    day = EffectiveLimit(ALICE, LimitKey.parse("tokens", "day"), 100, Source.OVERRIDE, False)
    assert day.key.window is not None
    bucket = day.key.window.bucket_of(NOW, ZONE)
    placement = Placement((day,), (Metric.TOKENS,), (bucket,))
    amounts = Amounts({Metric.TOKENS: 5, Metric.REQUESTS: 1})
    eager = DebitPlan(
        ALICE,
        (ALICE,),
        amounts,
        Mode.ENFORCE,
        NOW,
        NOW,
        ZONE,
        placement.checks(amounts, NOW),
        placement=placement,
    )
    return placed(eager, placement), eager


def test_a_placed_plan_is_a_debit_plan_in_every_respect() -> None:
    for read in (
        lambda p: p.checks,
        repr,
        lambda p: p == _pair()[1],
        lambda p: _pair()[1] == p,
        lambda p: pickle.loads(pickle.dumps(p)),
        copy.deepcopy,
        copy.copy,
        lambda p: replace(p, hold=True),
        astuple,
    ):
        plan, eager = _pair()
        assert type(plan) is PlacedPlan
        read(plan)
        assert type(plan) is DebitPlan  # relabelled by the first read of its checks
        assert plan == eager
        assert repr(plan) == repr(eager)
        assert pickle.loads(pickle.dumps(plan)) == eager
    plan, eager = _pair()
    assert plan.subject == eager.subject
    assert plan.placement is eager.placement
    assert type(plan) is PlacedPlan  # other fields are read without building checks
    with pytest.raises(TypeError):
        hash(plan)  # as a DebitPlan: its tags are a dict


def test_threads_reading_a_placed_plan_at_once_see_its_checks() -> None:
    plan, eager = _pair()
    seen: list[object] = []
    start = threading.Barrier(16)

    def read() -> None:
        start.wait()
        seen.append(plan.checks)

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [eager.checks] * 16
