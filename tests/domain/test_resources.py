"""Resource quotas (contract §6): validation, and the shared-capacity formula.

The admission tests compare ``capacity_admits`` with ``reference``, an
independent transcription of the contract §6 formula in ``fractions.Fraction``
(exact rationals, no Decimal contexts), and with hand-computed expectations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import MAX_UNITS, Metric
from tokenquota.domain.resources import (
    MAX_POLICIES,
    MAX_RULES,
    MAX_SHARE_PLACES,
    Capacity,
    CapacityVerdict,
    DenyReason,
    Policy,
    ResourceQuota,
    ResourceRule,
    capacity_admits,
)
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Window
from tokenquota.wire.catalog import encode_policy, encode_resource_quota

A = SubjectRef("user", "a")
B = SubjectRef("user", "b")
C_ = SubjectRef("group", "c")  # never has a policy
OUTSIDER = SubjectRef("user", "outsider")


def ref(value: str) -> SubjectRef:
    return SubjectRef.parse(value)


# ---------------------------------------------------------------------------
# The reference: contract §6 written out directly, in exact rationals.


@dataclass(frozen=True)
class Expected:
    admitted: bool
    saturated: bool
    headroom: Fraction | None
    reason: str | None


def reference(
    capacity: int | None,
    threshold: Fraction | None,
    shares: dict[SubjectRef, Fraction],
    consumer: SubjectRef,
    amount: int,
    total: int,
    used: dict[SubjectRef, int],
) -> Expected:
    if capacity is None:
        return Expected(True, False, None, None)
    demand = total + amount
    saturated = threshold is not None and demand > threshold * capacity
    bound = Fraction(capacity)
    if saturated:
        kept_for_others = sum(
            (
                max(Fraction(0), r * capacity - used.get(who, 0))
                for who, r in shares.items()
                if who != consumer
            ),
            Fraction(0),
        )
        bound = capacity - kept_for_others
    # "used < limit and used + amount <= limit", as everywhere else.
    if not (total < capacity and demand <= capacity):
        return Expected(False, saturated, bound, "capacity")
    if not (total < bound and demand <= bound):
        return Expected(False, saturated, bound, "reserved_for_others")
    return Expected(True, saturated, bound, None)


def quota_of(
    capacity: int | None, threshold: str | None, shares: dict[SubjectRef, str]
) -> ResourceQuota:
    return ResourceQuota(
        policies=tuple(Policy(who, (), Decimal(r)) for who, r in shares.items()),
        capacity=None if capacity is None else Capacity(capacity, Metric.TOKENS),
        saturation_threshold=None if threshold is None else Decimal(threshold),
    )


def as_expected(verdict: CapacityVerdict) -> Expected:
    headroom = None if verdict.headroom is None else Fraction(verdict.headroom)
    reason = None if verdict.reason is None else verdict.reason.value
    return Expected(verdict.admitted, verdict.saturated, headroom, reason)


# ---------------------------------------------------------------------------
# Worked examples. C = 1000 tokens, s = 0.8, A reserves 30 %, B 20 % unless said.

AB = {A: "0.3", B: "0.2"}

# (id, capacity, threshold, shares, consumer, amount, U, U_i, admitted, saturated, headroom, reason)
EXAMPLES: list[tuple[Any, ...]] = [
    ("below threshold", 1000, "0.8", AB, C_, 100, 500, {}, True, False, 1000, None),
    ("exactly at threshold", 1000, "0.8", AB, C_, 100, 700, {}, True, False, 1000, None),
    # 850 > 800: saturated; A keeps 300 and B 200 back, so the bound is 500.
    ("saturated, reserves untouched", 1000, "0.8", AB, C_, 150, 700, {}, False, True, 500,
     "reserved_for_others"),
    # A used 250 of its 300 (keeps 50), B used all of its 200: bound 950.
    ("a consumer under its share", 1000, "0.8", AB, C_, 100, 800, {A: 250, B: 200}, True, True,
     950, None),
    ("under its share, one over the bound", 1000, "0.8", AB, C_, 151, 800, {A: 250, B: 200},
     False, True, 950, "reserved_for_others"),
    # A is past its share (keeps nothing, never less than nothing); B keeps 150: bound 850.
    ("a consumer over its share, fits", 1000, "0.8", AB, C_, 50, 800, {A: 400, B: 50}, True, True,
     850, None),
    ("a consumer over its share, too much", 1000, "0.8", AB, C_, 51, 800, {A: 400, B: 50}, False,
     True, 850, "reserved_for_others"),
    # A's own unused 300 never counts against A: only B's unused 100 is kept back.
    ("own share never blocks", 1000, "0.8", AB, A, 150, 700, {A: 0, B: 100}, True, True, 900,
     None),
    ("own share never blocks, others' do", 1000, "0.8", AB, A, 201, 700, {A: 0, B: 100}, False,
     True, 900, "reserved_for_others"),
    ("reserving consumer eats its own share", 1000, "0.8", AB, B, 200, 650, {A: 300, B: 0}, True,
     True, 1000, None),
    ("over capacity", 1000, "0.8", AB, C_, 100, 950, {}, False, True, 500, "capacity"),
    ("over capacity, not saturated", 1000, None, AB, C_, 51, 950, {}, False, False, 1000,
     "capacity"),
    ("zero amount at full capacity", 1000, None, AB, C_, 0, 1000, {}, False, False, 1000,
     "capacity"),
    ("zero amount with room", 1000, None, AB, C_, 0, 999, {}, True, False, 1000, None),
    # Shares summing to exactly 1: an outsider gets only what others used past their share.
    ("shares sum to 1, outsider blocked", 100, "0.5", {A: "0.5", B: "0.5"}, C_, 5, 90,
     {A: 60, B: 30}, False, True, 80, "reserved_for_others"),
    ("shares sum to 1, owner admitted", 100, "0.5", {A: "0.5", B: "0.5"}, B, 10, 90,
     {A: 60, B: 30}, True, True, 100, None),
    ("shares sum to 1, outsider at zero", 100, "0", {A: "0.5", B: "0.5"}, C_, 1, 0, {}, False,
     True, 0, "reserved_for_others"),
    ("threshold null never saturates", 1000, None, AB, C_, 250, 700, {}, True, False, 1000, None),
    ("threshold 0: reserves always honoured", 1000, "0", AB, C_, 1, 0, {}, True, True, 500, None),
    ("threshold 0: first unit past the bound", 1000, "0", AB, C_, 2, 499, {}, False, True, 500,
     "reserved_for_others"),
    ("threshold 0, nothing asked, nothing used", 1000, "0", AB, C_, 0, 0, {}, True, False, 1000,
     None),
    ("threshold 1: saturation only past capacity", 1000, "1", AB, C_, 100, 900, {}, True, False,
     1000, None),
    ("C = 0 refuses a zero amount", 0, "0.8", {}, C_, 0, 0, {}, False, False, 0, "capacity"),
    ("C = 0 refuses any amount", 0, "0.8", AB, A, 1, 0, {}, False, True, 0, "capacity"),
    ("no capacity: no check", None, "0.8", AB, C_, 10**18, 10**18, {}, True, False, None, None),
    # r·C = 2.5 is not whole: the bound is 7.5, compared exactly, not rounded.
    ("fractional reservation, zero amount fits", 10, "0", {A: "0.25"}, C_, 0, 7, {}, True, True,
     Fraction(15, 2), None),
    ("fractional reservation, one unit does not", 10, "0", {A: "0.25"}, C_, 1, 7, {}, False, True,
     Fraction(15, 2), "reserved_for_others"),
    # The one admission rule holds for the saturated bound too: nothing asked, no room, denied.
    ("zero amount at the saturated bound", 1000, "0", AB, C_, 0, 500, {}, False, True, 500,
     "reserved_for_others"),
    ("zero amount past a fractional bound", 10, "0", {A: "0.25"}, C_, 0, 8, {}, False, True,
     Fraction(15, 2), "reserved_for_others"),
    ("usage of non-reserving consumers is ignored", 1000, "0.8", AB, C_, 100, 800,
     {C_: 800, A: 300, B: 200}, True, True, 1000, None),
    # Threshold 1/3 as a decimal: 0.3333333333 * 3 = 0.9999999999 < 1 = U + a.
    ("threshold with many places", 3, "0.3333333333", {A: "0.5"}, C_, 1, 0, {}, True, True,
     Fraction(3, 2), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("capacity", "threshold", "shares", "consumer", "amount", "total", "used", "expected"),
    [
        pytest.param(
            cap,
            s,
            shares,
            who,
            a,
            u,
            used,
            Expected(ok, sat, None if room is None else Fraction(room), why),
            id=name,
        )
        for name, cap, s, shares, who, a, u, used, ok, sat, room, why in EXAMPLES
    ],
)
def test_worked_examples(
    capacity: int | None,
    threshold: str | None,
    shares: dict[SubjectRef, str],
    consumer: SubjectRef,
    amount: int,
    total: int,
    used: dict[SubjectRef, int],
    expected: Expected,
) -> None:
    quota = quota_of(capacity, threshold, shares)
    verdict = capacity_admits(quota, consumer, amount, total, used)
    assert as_expected(verdict) == expected
    independent = reference(
        capacity,
        None if threshold is None else Fraction(threshold),
        {who: Fraction(r) for who, r in shares.items()},
        consumer,
        amount,
        total,
        used,
    )
    assert independent == expected
    assert (verdict.reason is None) == verdict.admitted


def test_reason_values_are_stable() -> None:
    assert {r.value for r in DenyReason} == {"capacity", "reserved_for_others"}


def test_negative_usage_is_a_programming_error() -> None:
    quota = quota_of(100, "0", {A: "0.5"})
    with pytest.raises(ValueError, match="negative"):
        capacity_admits(quota, B, -1, 0, {})
    with pytest.raises(ValueError, match="negative"):
        capacity_admits(quota, B, 0, -1, {})
    with pytest.raises(ValueError, match="negative"):
        capacity_admits(quota, B, 1, 0, {A: -1})


def test_huge_numbers_stay_exact() -> None:
    # r·C has 40 digits here; a 28-digit context would round it.
    share = "0.12345678901234567891"
    quota = quota_of(MAX_UNITS, "0", {A: share})
    kept = Fraction(share) * MAX_UNITS
    bound = MAX_UNITS - kept
    floor = bound.numerator // bound.denominator
    at_bound = capacity_admits(quota, B, 1, floor - 1, {})
    assert at_bound.admitted
    assert Fraction(at_bound.headroom or 0) == bound
    assert not capacity_admits(quota, B, 2, floor - 1, {}).admitted


def test_many_policies_are_fast_enough() -> None:
    shares = {SubjectRef("user", f"u{i}"): "0.0001" for i in range(MAX_POLICIES)}
    quota = quota_of(10**6, "0", shares)
    verdict = capacity_admits(quota, OUTSIDER, 1, 0, {})
    assert verdict.headroom == 0  # the shares sum to exactly 1, all unused
    assert verdict.reason is DenyReason.RESERVED_FOR_OTHERS


# ---------------------------------------------------------------------------
# Property: random quotas and usage.


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, ...]:
    capacity = draw(st.one_of(st.integers(0, 1_000), st.integers(0, MAX_UNITS)))
    places = draw(st.integers(0, 8))
    scale = 10**places
    consumers = [SubjectRef("user", f"r{i}") for i in range(draw(st.integers(0, 5)))]
    # Cut [0, 1] at sorted points: the pieces are shares summing to at most 1 (maybe exactly).
    cuts = sorted(draw(st.lists(st.integers(0, scale), min_size=len(consumers) + 1,
                                max_size=len(consumers) + 1)))  # fmt: skip
    shares = {
        who: Decimal(cuts[i + 1] - cuts[i]).scaleb(-places) for i, who in enumerate(consumers)
    }
    threshold = draw(
        st.one_of(
            st.none(),
            st.sampled_from([Decimal(0), Decimal(1)]),
            st.decimals(min_value=0, max_value=1, places=4),
        )
    )
    span = max(capacity, 1)
    used = {who: draw(st.integers(0, 2 * span)) for who in consumers if draw(st.booleans())}
    others = draw(st.integers(0, span))
    total = sum(used.values()) + others
    consumer = draw(st.sampled_from([*consumers, OUTSIDER]))
    amount = draw(st.one_of(st.integers(0, 3), st.integers(0, span + 1)))
    return capacity, threshold, shares, consumer, amount, total, used


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_admission_never_overruns_capacity_or_others_reservations(
    scenario: tuple[Any, ...],
) -> None:
    capacity, threshold, shares, consumer, amount, total, used = scenario
    quota = ResourceQuota(
        policies=tuple(Policy(who, (), r) for who, r in shares.items()),
        capacity=Capacity(capacity, Metric.REQUESTS),
        saturation_threshold=threshold,
    )
    verdict = capacity_admits(quota, consumer, amount, total, used)

    exact_shares = {who: Fraction(r) for who, r in shares.items()}
    s = None if threshold is None else Fraction(threshold)
    expected = reference(capacity, s, exact_shares, consumer, amount, total, used)
    assert as_expected(verdict) == expected

    demand = total + amount
    if verdict.admitted:
        assert demand <= capacity
    if verdict.admitted and verdict.saturated:
        others_unused = sum(
            (
                max(Fraction(0), r * capacity - used.get(who, 0))
                for who, r in exact_shares.items()
                if who != consumer
            ),
            Fraction(0),
        )
        assert capacity - demand >= others_unused
    if not verdict.saturated:
        assert s is None or demand <= s * capacity

    # One's own share and usage never change one's own verdict.
    if consumer in shares:
        without_own = ResourceQuota(
            policies=tuple(
                Policy(who, (), Decimal(0) if who == consumer else r) for who, r in shares.items()
            ),
            capacity=quota.capacity,
            saturation_threshold=threshold,
        )
        moved = {**used, consumer: used.get(consumer, 0) + 7}
        assert capacity_admits(without_own, consumer, amount, total, moved) == verdict


# ---------------------------------------------------------------------------
# Parsing: a full quota, round trips, and what each constraint names.

FULL: dict[str, Any] = {
    "default_rules": [
        {"metric": "requests", "window": "minute", "limit": 60},
        {"metric": "tokens", "window": "day", "limit": "100000"},
        {"metric": "concurrent_requests", "limit": 4},
        {"metric": "input_sequence_length", "window": None, "limit": 8192.0},
    ],
    "policies": [
        {
            "consumer": "group:research",
            "rules": [{"metric": "tokens", "window": "minute", "limit": 5000}],
            "reserved": 0.1,
        },
        {"consumer": "user:alice", "rules": [], "reserved": "0.20"},
        {"consumer": "deployment:agent-1", "rules": [{"metric": "requests", "window": "hour",
                                                      "limit": 0}]},
    ],
    "capacity": {"value": 120000, "units": "tokens"},
    "saturation_threshold": "0.8",
}  # fmt: skip


def test_parse_full_quota() -> None:
    quota = ResourceQuota.parse(FULL)
    assert quota.default_rules == (
        ResourceRule(Metric.REQUESTS, Window.parse("minute"), 60),
        ResourceRule(Metric.TOKENS, Window.parse("day"), 100_000),
        ResourceRule(Metric.CONCURRENT_REQUESTS, None, 4),
        ResourceRule(Metric.INPUT_SEQUENCE_LENGTH, None, 8192),
    )
    research, alice, agent = quota.policies
    assert research.consumer == ref("group:research")
    # The float 0.1 is read by its repr: 0.1, not 0.1000000000000000055511151231257827.
    assert research.reserved == Decimal("0.1")
    assert alice.reserved == Decimal("0.2")
    assert agent.reserved is None
    assert quota.capacity == Capacity(120_000, Metric.TOKENS)
    assert quota.saturation_threshold == Decimal("0.8")
    shares = quota.reserved_shares()
    assert shares == {research.consumer: Decimal("0.1"), alice.consumer: Decimal("0.2")}
    assert quota.default_rules[0].key == LimitKey(Metric.REQUESTS, Window.parse("minute"))


def test_to_wire_round_trips() -> None:
    quota = ResourceQuota.parse(FULL)
    wire = encode_resource_quota(quota)
    assert wire == {
        "default_rules": [
            {"metric": "requests", "window": "minute", "limit": 60},
            {"metric": "tokens", "window": "day", "limit": 100_000},
            {"metric": "concurrent_requests", "window": None, "limit": 4},
            {"metric": "input_sequence_length", "window": None, "limit": 8192},
        ],
        "policies": [
            {
                "consumer": "group:research",
                "rules": [{"metric": "tokens", "window": "minute", "limit": 5000}],
                "reserved": "0.1",
            },
            {"consumer": "user:alice", "rules": [], "reserved": "0.2"},
            {
                "consumer": "deployment:agent-1",
                "rules": [{"metric": "requests", "window": "hour", "limit": 0}],
                "reserved": None,
            },
        ],
        "capacity": {"value": 120_000, "units": "tokens"},
        "saturation_threshold": "0.8",
    }
    assert ResourceQuota.parse(wire) == quota
    assert hash(ResourceQuota.parse(wire)) == hash(quota)


def test_empty_quota_is_valid() -> None:
    quota = ResourceQuota.parse({})
    assert quota == ResourceQuota()
    assert encode_resource_quota(quota) == {
        "default_rules": [],
        "policies": [],
        "capacity": None,
        "saturation_threshold": None,
    }
    assert capacity_admits(quota, A, 10**9, 10**9, {}) == CapacityVerdict(True, False, None)


def test_rules_for() -> None:
    quota = ResourceQuota.parse(FULL)
    assert quota.rules_for(ref("group:research")) == (
        ResourceRule(Metric.TOKENS, Window.parse("minute"), 5000),
    )
    # A policy replaces the defaults wholesale, even with no rules at all.
    assert quota.rules_for(ref("user:alice")) == ()
    assert quota.rules_for(ref("user:bob")) == quota.default_rules
    assert quota.policy_for(ref("user:bob")) is None
    assert quota.policy_for(ref("user:alice")) == quota.policies[1]


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ("0.50", "0.5"),
        (0.5, "0.5"),
        (0.1, "0.1"),
        (Decimal("1.000"), "1"),
        (1, "1"),
        (0, "0"),
        ("-0", "0"),
        ("0E+3", "0"),
        ("1E-8", "0.00000001"),
        ("1e-20", "0.00000000000000000001"),
        (" 0.25 ", "0.25"),
    ],
)
def test_shares_are_exact_and_canonical(raw: object, wire: str) -> None:
    quota = ResourceQuota.parse(
        {"policies": [{"consumer": "user:a", "rules": [], "reserved": raw}],
         "saturation_threshold": raw}
    )  # fmt: skip
    assert encode_resource_quota(quota)["saturation_threshold"] == wire
    assert encode_policy(quota.policies[0])["reserved"] == wire


def test_float_shares_sum_exactly() -> None:
    # Added as floats these shares make 1.0000000000000002 and would be refused.
    floats = [0.13, 0.16, 0.17, 0.2, 0.34]
    assert sum(floats) > 1
    policies = [
        {"consumer": f"user:u{i}", "rules": [], "reserved": r} for i, r in enumerate(floats)
    ]
    quota = ResourceQuota.parse({"policies": policies})
    assert sum(p.reserved or 0 for p in quota.policies) == 1


def test_accepts_datarobot_sized_lists() -> None:
    # DataRobot's maxItems: 10 000 policies; the compat layer must be able to pass them on.
    assert MAX_POLICIES == 10_000
    assert MAX_RULES == 100
    policies = [{"consumer": f"user:u{i}", "rules": [], "reserved": "0.0001"}
                for i in range(MAX_POLICIES)]  # fmt: skip
    quota = ResourceQuota.parse({"policies": policies})
    assert len(quota.policies) == MAX_POLICIES
    assert quota.rules_for(ref("user:u9999")) == ()


def rule(**fields: object) -> dict[str, object]:
    return {"metric": "tokens", "window": "minute", "limit": 10, **fields}


def policy(**fields: object) -> dict[str, object]:
    return {"consumer": "user:a", "rules": [], **fields}


BAD: list[tuple[str, object, str]] = [
    ("not an object", [], "body"),
    ("unknown top-level field", {"defaultRules": []}, "body"),
    ("rules not a list", {"default_rules": "tokens"}, "default_rules"),
    ("rules null", {"default_rules": None}, "default_rules"),
    ("too many rules", {"default_rules": [rule()] * (MAX_RULES + 1)}, "default_rules"),
    ("rule not an object", {"default_rules": [5]}, "default_rules[0]"),
    ("unknown rule field", {"default_rules": [rule(rule="token")]}, "default_rules[0]"),
    ("DataRobot metric name", {"default_rules": [rule(metric="token")]}, "default_rules[0].metric"),
    ("credits not a resource metric", {"default_rules": [rule(metric="credits")]},
     "default_rules[0].metric"),
    ("input_tokens not a resource metric", {"default_rules": [rule(metric="input_tokens")]},
     "default_rules[0].metric"),
    ("metric missing", {"default_rules": [{"window": "minute", "limit": 1}]},
     "default_rules[0].metric"),
    ("window missing", {"default_rules": [{"metric": "tokens", "limit": 1}]},
     "default_rules[0].window"),
    ("window null", {"default_rules": [rule(window=None)]}, "default_rules[0].window"),
    ("DataRobot window name", {"default_rules": [rule(window="min")]}, "default_rules[0].window"),
    ("week not allowed", {"default_rules": [rule(window="week")]}, "default_rules[0].window"),
    ("rolling not allowed", {"default_rules": [rule(window="rolling:1h")]},
     "default_rules[0].window"),
    ("window on concurrent_requests",
     {"default_rules": [rule(metric="concurrent_requests", window="minute")]},
     "default_rules[0].window"),
    ("window on input_sequence_length",
     {"default_rules": [rule(metric="input_sequence_length", window="day")]},
     "default_rules[0].window"),
    ("empty window on concurrent_requests",
     {"default_rules": [rule(metric="concurrent_requests", window="")]},
     "default_rules[0].window"),
    ("limit missing", {"default_rules": [{"metric": "tokens", "window": "day"}]},
     "default_rules[0].limit"),
    ("limit null", {"default_rules": [rule(limit=None)]}, "default_rules[0].limit"),
    ("limit negative", {"default_rules": [rule(limit=-1)]}, "default_rules[0].limit"),
    ("limit fractional", {"default_rules": [rule(limit=1.5)]}, "default_rules[0].limit"),
    ("limit boolean", {"default_rules": [rule(limit=True)]}, "default_rules[0].limit"),
    ("limit text", {"default_rules": [rule(limit="ten")]}, "default_rules[0].limit"),
    ("limit too large", {"default_rules": [rule(limit=2**63)]}, "default_rules[0].limit"),
    ("limit infinite", {"default_rules": [rule(limit="Infinity")]}, "default_rules[0].limit"),
    ("duplicate (metric, window)", {"default_rules": [rule(), rule(limit=5)]},
     "default_rules[1]"),
    ("duplicate windowless rule",
     {"default_rules": [rule(), {"metric": "concurrent_requests", "limit": 1},
                        {"metric": "concurrent_requests", "limit": 2}]},
     "default_rules[2]"),
    ("policies not a list", {"policies": {"user:a": {}}}, "policies"),
    ("too many policies", {"policies": [policy()] * (MAX_POLICIES + 1)}, "policies"),
    ("policy not an object", {"policies": ["user:a"]}, "policies[0]"),
    ("unknown policy field", {"policies": [policy(consumerType="user")]}, "policies[0]"),
    ("consumer missing", {"policies": [{"rules": []}]}, "policies[0].consumer"),
    ("consumer without kind", {"policies": [policy(consumer="alice")]}, "policies[0].consumer"),
    ("consumer bad kind", {"policies": [policy(consumer="User:alice")]}, "policies[0].consumer"),
    ("consumer bad id", {"policies": [policy(consumer="user:al ice")]}, "policies[0].consumer"),
    ("consumer not a string", {"policies": [policy(consumer=7)]}, "policies[0].consumer"),
    ("policy rules missing", {"policies": [{"consumer": "user:a"}]}, "policies[0].rules"),
    ("policy rule bad", {"policies": [policy(), policy(consumer="user:b", rules=[rule(limit=-2)])]},
     "policies[1].rules[0].limit"),
    ("policy duplicate rule", {"policies": [policy(rules=[rule(), rule()])]},
     "policies[0].rules[1]"),
    ("reserved negative", {"policies": [policy(reserved=-0.1)]}, "policies[0].reserved"),
    ("reserved above 1", {"policies": [policy(reserved="1.01")]}, "policies[0].reserved"),
    ("reserved as percent", {"policies": [policy(reserved=30)]}, "policies[0].reserved"),
    ("reserved text", {"policies": [policy(reserved="half")]}, "policies[0].reserved"),
    ("reserved boolean", {"policies": [policy(reserved=True)]}, "policies[0].reserved"),
    ("reserved NaN", {"policies": [policy(reserved="NaN")]}, "policies[0].reserved"),
    ("reserved NaN float", {"policies": [policy(reserved=float("nan"))]}, "policies[0].reserved"),
    ("reserved list", {"policies": [policy(reserved=[0.5])]}, "policies[0].reserved"),
    ("reserved too fine", {"policies": [policy(reserved=f"1e-{MAX_SHARE_PLACES + 1}")]},
     "policies[0].reserved"),
    ("duplicate consumer",
     {"policies": [policy(), policy(consumer="user:b"), policy(consumer="user:a")]},
     "policies[2].consumer"),
    ("shares sum above 1",
     {"policies": [policy(reserved="0.6"), policy(consumer="user:b", reserved=0.5)]},
     "policies"),
    ("shares sum just above 1",
     {"policies": [policy(reserved="0.5"), policy(consumer="user:b", reserved="0.5"),
                   policy(consumer="user:c", reserved="1e-20")]},
     "policies"),
    ("capacity not an object", {"capacity": 100}, "capacity"),
    ("capacity unknown field", {"capacity": {"capacity": 1, "units": "tokens"}}, "capacity"),
    ("capacity value missing", {"capacity": {"units": "tokens"}}, "capacity.value"),
    ("capacity negative", {"capacity": {"value": -1, "units": "tokens"}}, "capacity.value"),
    ("capacity fractional", {"capacity": {"value": 0.5, "units": "tokens"}}, "capacity.value"),
    ("capacity too large", {"capacity": {"value": 2**63, "units": "tokens"}}, "capacity.value"),
    ("capacity units DataRobot name", {"capacity": {"value": 1, "units": "token"}},
     "capacity.units"),
    ("capacity units credits", {"capacity": {"value": 1, "units": "credits"}}, "capacity.units"),
    ("capacity units missing", {"capacity": {"value": 1}}, "capacity.units"),
    ("threshold negative", {"saturation_threshold": -0.01}, "saturation_threshold"),
    ("threshold above 1", {"saturation_threshold": "1.5"}, "saturation_threshold"),
    ("threshold infinite", {"saturation_threshold": float("inf")}, "saturation_threshold"),
    ("threshold boolean", {"saturation_threshold": False}, "saturation_threshold"),
    ("threshold text", {"saturation_threshold": "high"}, "saturation_threshold"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field"), [pytest.param(d, f, id=n) for n, d, f in BAD])
def test_validation_names_the_field(data: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ResourceQuota.parse(data, field="")
    assert info.value.field == field
    assert info.value.status == 422
    assert info.value.details["field"] == field


def test_field_prefix() -> None:
    data = {"policies": [policy(reserved="0.6"), policy(consumer="user:b", reserved="0.6")]}
    with pytest.raises(ValidationError) as info:
        ResourceQuota.parse(data)
    assert info.value.field == "quota.policies"
    assert "sum to 1.2" in info.value.message
    with pytest.raises(ValidationError) as info:
        ResourceQuota.parse({"policies": [policy(reserved=2)]}, field="body.quota")
    assert info.value.field == "body.quota.policies[0].reserved"
    with pytest.raises(ValidationError) as info:
        ResourceQuota.parse([], field="quota")  # type: ignore[arg-type]
    assert info.value.field == "quota"


def test_shares_summing_to_exactly_one_are_accepted() -> None:
    data = {
        "policies": [
            policy(reserved="0.5"),
            policy(consumer="user:b", reserved="0.25"),
            policy(consumer="user:c", reserved=0.25),
            policy(consumer="user:d", reserved=0),
            policy(consumer="user:e", reserved=None),
        ]
    }
    quota = ResourceQuota.parse(data)
    assert set(quota.reserved_shares()) == {ref("user:a"), ref("user:b"), ref("user:c")}


def test_distinct_windows_are_not_duplicates() -> None:
    rules = [rule(window=w) for w in ("minute", "hour", "day")]
    rules += [rule(metric="requests", window=w) for w in ("minute", "hour", "day")]
    rules += [{"metric": "concurrent_requests", "limit": 1},
              {"metric": "input_sequence_length", "limit": 1}]  # fmt: skip
    assert len(ResourceQuota.parse({"default_rules": rules}).default_rules) == 8


def test_direct_construction_is_validated_too() -> None:
    minute = Window.parse("minute")
    with pytest.raises(ValidationError, match="metric"):
        ResourceRule(Metric.CREDITS, minute, 1)
    with pytest.raises(ValidationError, match="window"):
        ResourceRule(Metric.TOKENS, None, 1)
    with pytest.raises(ValidationError, match="window"):
        ResourceRule(Metric.TOKENS, Window.parse("week"), 1)
    with pytest.raises(ValidationError, match="window"):
        ResourceRule(Metric.CONCURRENT_REQUESTS, minute, 1)
    with pytest.raises(ValidationError, match="limit"):
        ResourceRule(Metric.TOKENS, minute, -1)
    with pytest.raises(ValidationError, match="limit"):
        ResourceRule(Metric.TOKENS, minute, MAX_UNITS + 1)
    with pytest.raises(ValidationError, match="units"):
        Capacity(1, Metric.CREDITS)
    with pytest.raises(ValidationError, match="value"):
        Capacity(-1, Metric.TOKENS)
    with pytest.raises(ValidationError) as info:
        Policy(A, (ResourceRule(Metric.TOKENS, minute, 1),) * 2)
    assert info.value.field == "rules[1]"
    with pytest.raises(ValidationError) as info:
        Policy(A, (), Decimal("1.5"))
    assert info.value.field == "reserved"
    with pytest.raises(ValidationError) as info:
        quota_of(10, None, {A: "0.6", B: "0.41"})
    assert info.value.field == "policies"
    with pytest.raises(ValidationError) as info:
        ResourceQuota(policies=(Policy(A), Policy(B), Policy(A)))
    assert info.value.field == "policies[2].consumer"
    with pytest.raises(ValidationError) as info:
        ResourceQuota(saturation_threshold=Decimal("-0.5"))
    assert info.value.field == "saturation_threshold"
    assert replace(ResourceQuota(), saturation_threshold=Decimal("0.50")).saturation_threshold == (
        Decimal("0.5")
    )
