"""``decisions.admitted`` answers what ``decide`` answers, on the plans it takes.

The memory meter decides a plan whose every check reads one bucket (calendar
and ``total`` windows, per-request caps), with no reservation, wallet or
capacity, through ``admitted``; it must give the very decision ``decide``
gives on the readings those buckets make, and decline (None) exactly when
some check refuses, so the meter falls back to ``decide``. The plans are the
decide oracle's, kept to the shapes ``admitted`` is defined on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain.test_decide_oracle import cases
from tokenquota.domain.decisions import Check, DebitPlan, Mode, Reading, admitted, decide
from tokenquota.domain.limits import EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Window


def one_bucket(plan: DebitPlan) -> bool:
    """A plan ``admitted`` is defined on: every check read in one bucket, nothing held."""
    for check in plan.checks:
        window = check.limit.key.window
        if check.limit.key.metric is Metric.CONCURRENT_REQUESTS:
            return False
        if window is not None and (window.rolling_seconds or check.lo != check.hi):
            return False
    return plan.capacity is None


@settings(max_examples=600, deadline=None)
@given(
    case=cases(),
    event_id=st.one_of(st.none(), st.integers(1, 10**6)),
    data=st.data(),
)
def test_admitted_is_decide_or_declines(
    case: tuple[DebitPlan, list[Reading], object], event_id: int | None, data: st.DataObject
) -> None:
    plan, _, _ = case
    if not one_bucket(plan):
        return
    used = [
        data.draw(st.integers(0, 80)) if check.limit.key.window is not None else 0
        for check in plan.checks
    ]
    reads = [
        Reading({check.lo: units} if units else {})
        for check, units in zip(plan.checks, used, strict=True)
    ]
    expected = decide(plan, reads, event_id)
    fast = admitted(plan, used, event_id)
    refused = bool(expected.blocked_by or expected.shadow_blocked) or not expected.allowed
    if refused:
        assert fast is None
        return
    assert fast is not None
    assert repr(fast) == repr(expected)  # builds the deferred statuses of both
    assert fast == expected


def test_admitted_reads_its_own_copy_of_the_numbers() -> None:
    """The caller's list may be reused after the step; the statuses are built later."""
    plan, reads = _plain_plan()
    used = [3]
    fast = admitted(plan, used, 1)
    assert fast is not None
    used[0] = 10**9
    assert fast.limits == decide(plan, reads, 1).limits
    assert fast.limits[0].used == 3 + plan.checks[0].amount


def _plain_plan() -> tuple[DebitPlan, list[Reading]]:
    """A consume of 5 tokens against a day limit of 100 with 3 used."""
    at = datetime(2026, 3, 10, 12, tzinfo=UTC)
    alice = SubjectRef("user", "alice")
    window = Window.parse("day")
    limit = EffectiveLimit(alice, LimitKey(Metric.TOKENS, window), 100, Source.OVERRIDE, False)
    utc = ZoneInfo("UTC")
    bucket = window.bucket_of(at, utc)
    plan = DebitPlan(
        subject=alice,
        charged=(alice,),
        amounts=Amounts({Metric.TOKENS: 5, Metric.REQUESTS: 1}),
        mode=Mode.ENFORCE,
        timestamp=at,
        now=at,
        tz=utc,
        checks=(Check(limit, 5, at, bucket, bucket, bucket),),
    )
    return plan, [Reading({bucket: 3})]
