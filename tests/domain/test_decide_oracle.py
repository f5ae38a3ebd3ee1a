"""The fast ``decide`` answers exactly what the straightforward one did (issue 13, part 5).

``decide_reference.py`` holds the decision code as it was before it was made
fast. Hypothesis builds plans of every shape a store can be asked to decide
(calendar, rolling, total and windowless limits, shadow and unlimited ones,
back-dated events, holds, leases, reservations, prepaid wallets, a resource's
capacity with reserved shares) with readings around the limits, and both
versions must give the same decision, compared by ``repr`` so that a Reason
turned into a str or a Decimal into an int would show.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain import decide_reference as reference
from tokenquota.domain.decisions import (
    CapacityPlan,
    Check,
    DebitPlan,
    Mode,
    Prepaid,
    Reading,
    blocks,
    capacity_refuses,
    decide,
    prepaid_status,
    status,
)
from tokenquota.domain.grants import Grant
from tokenquota.domain.limits import UNLIMITED, EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import COUNTERS, CREDIT_SCALE, Amounts, Metric
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import SubjectRef, consumer_ref
from tokenquota.domain.windows import TOTAL, Window

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Stockholm", "Australia/Lord_Howe")]
# The eve of a DST change in Stockholm (and near Lord Howe's), give or take days.
BASE = datetime(2026, 3, 28, 23, 59, 30, tzinfo=UTC)
SUBJECTS = [SubjectRef("user", "alice"), SubjectRef("team", "a"), SubjectRef("company", "acme")]
RESOURCE = SubjectRef("deployment", "llama")
WINDOWS = [
    Window.parse(w)
    for w in ("minute", "hour", "day", "week", "month", "year", "rolling:1h", "rolling:2d")
] + [TOTAL]


@st.composite
def limits(draw: st.DrawFn) -> EffectiveLimit:
    metric = draw(st.sampled_from(list(Metric)))
    window = draw(st.sampled_from(WINDOWS)) if metric.is_counter else None
    scale = CREDIT_SCALE if metric is Metric.CREDITS else 1
    value = draw(st.one_of(st.just(UNLIMITED), st.integers(0, 60).map(lambda v: v * scale)))
    return EffectiveLimit(
        draw(st.sampled_from(SUBJECTS)),
        LimitKey(metric, window),
        value,
        draw(st.sampled_from([Source.OVERRIDE, Source.PLAN, Source.DEFAULT, Source.NONE])),
        draw(st.booleans()),
    )


def check_of(
    limit: EffectiveLimit, amounts: Amounts, at: datetime, now: datetime, tz: ZoneInfo
) -> Check:
    """What the planner builds for a consume (engine/planner.py ``Planner.check``)."""
    window = limit.key.window
    if window is None:
        if limit.key.metric is Metric.CONCURRENT_REQUESTS:
            return Check(limit, 1, now, 0, 0, None)
        return Check(limit, amounts[Metric.INPUT_TOKENS], at, 0, 0, None)
    read_at = now if window.is_rolling else at
    lo, hi = window.read_range(read_at, tz)
    bucket = window.bucket_of(at, tz)
    return Check(
        limit, amounts[limit.key.metric], read_at, lo, hi, bucket if lo <= bucket <= hi else None
    )


@st.composite
def readings(draw: st.DrawFn, check: Check, now: datetime) -> Reading:
    window = check.limit.key.window
    scale = CREDIT_SCALE if check.limit.key.metric is Metric.CREDITS else 1
    units = st.integers(0, 40).map(lambda v: v * scale)
    buckets: dict[int, int] = {}
    if window is not None and window.rolling_seconds:
        step = window.bucket_seconds
        for bucket in draw(st.lists(st.integers(0, 59), max_size=4)):
            buckets[check.lo + bucket * step] = draw(units)
    elif (window is not None or check.limit.key.metric is Metric.CONCURRENT_REQUESTS) and draw(
        st.booleans()
    ):
        buckets[check.lo] = draw(units)
    reserved = draw(st.one_of(st.just(0), units))
    held_until = draw(
        st.one_of(st.none(), st.integers(1, 7_200).map(lambda s: now + timedelta(seconds=s)))
    )
    return Reading(buckets, reserved, held_until)


@st.composite
def prepaids(draw: st.DrawFn, now: datetime) -> list[Prepaid]:
    out = []
    for subject in draw(st.lists(st.sampled_from(SUBJECTS), unique=True, max_size=2)):
        grants = []
        for i in range(draw(st.integers(0, 3))):
            amount = draw(st.integers(1, 50)) * CREDIT_SCALE
            granted = now - timedelta(hours=draw(st.integers(0, 48)))
            expires = draw(
                st.one_of(st.none(), st.integers(-24, 48).map(lambda h: now + timedelta(hours=h)))
            )
            left = draw(st.integers(0, amount // CREDIT_SCALE)) * CREDIT_SCALE
            grants.append(Grant(f"g{i}", subject, amount, granted, expires, left))
        out.append(Prepaid(subject, tuple(grants), draw(st.integers(0, 5)) * CREDIT_SCALE))
    return out


@st.composite
def capacities(
    draw: st.DrawFn, amounts: Amounts, at: datetime, now: datetime, tz: ZoneInfo
) -> tuple[CapacityPlan, list[Reading]]:
    units = draw(st.sampled_from(["requests", "tokens"]))
    others = [SubjectRef("user", "bob"), SubjectRef("user", "carol")]
    policies = [
        {"consumer": str(other), "rules": [], "reserved": draw(st.sampled_from(["0.1", "0.3"]))}
        for other in draw(st.lists(st.sampled_from(others), unique=True, max_size=2))
    ]
    quota = ResourceQuota.parse(
        {
            "capacity": {"value": draw(st.integers(0, 80)), "units": units},
            "saturation_threshold": draw(st.sampled_from([None, "0", "0.5", "1"])),
            "policies": policies,
        }
    )
    assert quota.capacity is not None
    key = LimitKey(quota.capacity.units, Window.parse("minute"))

    def series(subject: SubjectRef, amount: int) -> Check:
        limit = EffectiveLimit(subject, key, UNLIMITED, Source.RESOURCE, False)
        check = check_of(limit, amounts, at, now, tz)
        return Check(limit, amount, check.read_at, check.lo, check.hi, check.bucket)

    amount = amounts[quota.capacity.units]
    consumer = SUBJECTS[0]
    plan = CapacityPlan(
        quota=quota,
        resource=RESOURCE,
        consumer=consumer,
        amount=amount,
        total=series(RESOURCE, amount),
        shares=tuple(
            (other, series(consumer_ref(RESOURCE, other), 0)) for other in quota.reserved_shares()
        ),
    )
    reads = [draw(readings(c, now)) for c in plan.reads]
    return plan, reads


@st.composite
def cases(draw: st.DrawFn) -> tuple[DebitPlan, list[Reading], list[Prepaid]]:
    tz = draw(st.sampled_from(ZONES))
    now = BASE + timedelta(seconds=draw(st.integers(-3 * 86_400, 3 * 86_400)))
    at = now - timedelta(seconds=draw(st.sampled_from([0, 0, 30, 3_600, 90_000, 400_000])))
    amounts = Amounts(
        {
            metric: draw(st.integers(0, 70)) * (CREDIT_SCALE if metric is Metric.CREDITS else 1)
            for metric in draw(st.lists(st.sampled_from(COUNTERS), unique=True, max_size=4))
        }
    )
    intent = draw(st.sampled_from(["consume", "reserve", "acquire"]))
    chosen = draw(st.lists(limits(), max_size=6))
    checks = [
        check_of(limit, amounts, at, now, tz)
        for limit in chosen
        if (limit.key.metric is Metric.CONCURRENT_REQUESTS) == (intent == "acquire")
    ]
    capacity: CapacityPlan | None = None
    capacity_reads: list[Reading] = []
    if intent != "acquire" and draw(st.booleans()):
        capacity, capacity_reads = draw(capacities(amounts, at, now, tz))
    plan = DebitPlan(
        subject=SUBJECTS[0],
        charged=tuple(SUBJECTS),
        amounts=amounts,
        mode=draw(st.sampled_from(list(Mode))),
        timestamp=at,
        now=now,
        tz=tz,
        checks=tuple(checks),
        hold=intent == "reserve",
        resource=RESOURCE if capacity is not None else None,
        capacity=capacity,
    )
    reads = [draw(readings(c, now)) for c in checks] + capacity_reads
    return plan, reads, draw(prepaids(now))


@settings(max_examples=600, deadline=None)
@given(case=cases(), event_id=st.one_of(st.none(), st.integers(1, 10**6)))
def test_decide_answers_what_the_reference_answers(
    case: tuple[DebitPlan, list[Reading], list[Prepaid]], event_id: int | None
) -> None:
    plan, reads, prepaid = case
    fast = decide(plan, reads, event_id, prepaid)
    slow = reference.decide(plan, reads, event_id, prepaid)
    assert repr(fast) == repr(slow)
    assert fast == slow
    cut = reads[len(plan.checks) :]
    assert capacity_refuses(plan, cut) == reference.capacity_refuses(plan, cut)


@settings(max_examples=300, deadline=None)
@given(case=cases(), added=st.integers(0, 50), held=st.integers(0, 50))
def test_status_and_blocks_answer_what_the_reference_answers(
    case: tuple[DebitPlan, list[Reading], list[Prepaid]], added: int, held: int
) -> None:
    plan, reads, prepaid = case
    for check, reading in zip(plan.checks, reads, strict=False):
        assert blocks(check, reading) == reference.blocks(check, reading)
        fast = status(check, reading, plan.tz, added=added, held=held)
        assert repr(fast) == repr(reference.status(check, reading, plan.tz, added=added, held=held))
    for wallet in prepaid:
        if wallet.grants:
            fast = prepaid_status(wallet, plan.now, plan.tz)
            assert repr(fast) == repr(reference.prepaid_status(wallet, plan.now, plan.tz))


def test_a_credits_status_keeps_its_decimals() -> None:
    limit = EffectiveLimit(
        SUBJECTS[0], LimitKey(Metric.CREDITS, TOTAL), 5 * CREDIT_SCALE, Source.OVERRIDE, False
    )
    check = Check(limit, CREDIT_SCALE // 2, BASE, 0, 0, 0)
    seen = status(check, Reading({0: CREDIT_SCALE}), ZONES[0], added=CREDIT_SCALE // 2)
    assert (seen.limit, seen.used, seen.remaining) == (Decimal(5), Decimal("1.5"), Decimal("3.5"))
    assert isinstance(seen.reserved, Decimal)
