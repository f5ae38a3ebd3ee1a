"""Each API codec reads back what it writes: ``decode(encode(x)) == x``.

Values come from a real engine (memory backend) so they are the shapes the
routes actually render, and for decisions also from hypothesis, which reaches
the corners (credits with many places, unlimited, withheld refusals).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokenquota
from tests.conftest import START
from tokenquota import FrozenClock, Quota
from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reason, WithheldBlock
from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import MAX_UNITS, Metric, from_units
from tokenquota.wire import catalog, decisions, holds, ledger, metrics, views

LLAMA = "deployment:llama"


@pytest.fixture
def quota() -> Iterator[Quota]:
    clock = FrozenClock(START.replace(microsecond=123456))
    with tokenquota.open("memory://", clock=clock) as opened:
        yield opened


def _json(value: object) -> object:
    """Through JSON text and back, as the answer travels."""
    return json.loads(json.dumps(value))


def test_decisions_round_trip(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 100)
    quota.set_limit("user:ann", "credits", "month", "2.5")
    quota.set_limit("user:ann", "requests", "minute", 1, shadow=True)
    quota.grant("user:ann", "10.125")
    allowed = quota.consume("user:ann", tokens=40, credits="1.25", model="m", tags={"a": "b"})
    denied = quota.consume("user:ann", tokens=90)
    for decision in (allowed, denied, quota.check("user:ann", tokens=1)):
        assert decisions.decode_decision(_json(decisions.encode_decision(decision))) == decision  # type: ignore[arg-type]
    assert denied.blocked_by
    assert not denied.allowed


def test_holds_round_trip(quota: Quota) -> None:
    now = quota.clock.now()
    held = quota.reserve("user:ann", tokens=5, credits="0.5", ttl=60, resource=LLAMA).reservation
    assert held is not None
    back = holds.decode_reservation(_json(holds.encode_reservation(held, now)))
    assert back == replace(held, charged=())  # the wire never shows the ancestors
    lease = quota.acquire("user:ann", ttl=30).lease
    assert lease is not None
    assert holds.decode_lease(_json(holds.encode_lease(lease, now))) == replace(lease, charged=())
    assert holds.encode_hold(lease, now) == holds.encode_lease(lease, now)
    # An expired hold reads as "expired" and comes back held (live() says the rest).
    later = now + timedelta(hours=1)
    wire = holds.encode_reservation(held, later)
    assert wire["state"] == "expired"
    assert holds.decode_reservation(wire).live(later) is False


def test_catalog_round_trips(quota: Quota) -> None:
    quota.put_subject("team:core", name="Core")
    subject = quota.put_subject(
        "user:ann", name="Ann", parents=["team:core"], metadata={"tier": "gold", "n": 3}
    )
    assert catalog.decode_subject(_json(catalog.encode_subject(subject))) == subject
    plan = quota.create_plan(
        "pro",
        [
            {"metric": "tokens", "window": "day", "limit": 1000},
            {"metric": "credits", "window": "month", "limit": "12.345"},
            {"metric": "input_sequence_length", "limit": 4096, "shadow": True},
        ],
    )
    assert catalog.decode_plan(_json(catalog.encode_plan(plan))) == plan
    quota.assign_plan("user:ann", plan.id)
    quota.set_limit("user:ann", "requests", "hour", -1)
    view = quota.limits("user:ann")
    wire = {
        "subject": view.subject,
        "overrides": [catalog.encode_rule(r) for r in view.overrides],
        "plan": catalog.encode_plan(view.plan) if view.plan else None,
        "effective": [catalog.encode_effective_limit(e) for e in view.effective],
    }
    assert catalog.decode_limits_view(_json(wire)) == view
    assert any(r.value == UNLIMITED for r in view.overrides)
    defaults = quota.set_defaults(
        [{"kind": "user", "metric": "tokens", "window": "day", "limit": 7}]
    )
    wire_defaults = {"defaults": [catalog.encode_default_rule(d) for d in defaults]}
    assert catalog.decode_default_rules(_json(wire_defaults)) == defaults
    key, _ = quota.create_key("member", subject="user:ann", name="ci")
    assert catalog.decode_key(_json(catalog.encode_key(key))) == key
    quota.revoke_key(key.id)
    [revoked] = [k for k in quota.list_keys().items if k.id == key.id]
    assert catalog.decode_key(_json(catalog.encode_key(revoked))) == revoked
    resource_quota = quota.set_resource_quota(
        LLAMA,
        {
            "default_rules": [{"metric": "requests", "window": "minute", "limit": 60}],
            "policies": [{"consumer": "user:ann", "rules": [], "reserved": "0.25"}],
            "capacity": {"value": 1000, "units": "tokens"},
            "saturation_threshold": "0.9",
        },
    )
    answer = {"resource": LLAMA, **catalog.encode_resource_quota(resource_quota)}
    assert catalog.decode_resource_quota(_json(answer)) == resource_quota


def test_ledger_round_trips(quota: Quota) -> None:
    now = quota.clock.now()
    grant = quota.grant("user:ann", "3.5", expires_at=now + timedelta(days=1))
    assert ledger.decode_grant(_json(ledger.encode_grant(grant, now))) == grant
    wallet = quota.balance("user:ann")
    assert wallet is not None
    assert ledger.decode_balance(_json(ledger.encode_balance(wallet))) == wallet
    quota.consume("user:ann", tokens=3, credits="0.5", model="m", tags={"k": "v"}, resource=LLAMA)
    events = quota.events().items
    assert events
    for event in events:
        assert ledger.decode_event(_json(ledger.encode_event(event))) == event
    entries = quota.audit().items
    assert entries
    for entry in entries:
        assert ledger.decode_audit_entry(_json(ledger.encode_audit_entry(entry))) == entry
    page = quota.events()
    wire = views.encode_page([ledger.encode_event(e) for e in page.items], page)
    assert views.decode_page(_json(wire), ledger.decode_event) == page


def test_amounts_round_trip(quota: Quota) -> None:
    assert quota.consume("user:ann", input_tokens=2, output_tokens=3, credits="0.000001").allowed
    [event] = quota.events(subject="user:ann").items
    wire = metrics.encode_amounts(event.amounts)
    assert wire["credits"] == "0.000001"
    assert wire["tokens"] == 5
    assert metrics.decode_amounts(_json(wire)) == event.amounts


def test_usage_round_trips(quota: Quota) -> None:
    quota.set_limit("user:ann", "tokens", "day", 10)
    quota.set_limit("user:ann", "credits", "day", -1)
    quota.consume("user:ann", tokens=4, credits="0.5")
    usage = quota.usage("user:ann")
    wire = {
        "subject": usage.subject,
        "at": usage.at.isoformat(),
        "limits": [decisions.encode_limit_status(s) for s in usage.limits],
    }
    assert views.decode_usage(_json(wire)) == usage


# hypothesis: decisions and limit statuses ---------------------------------------------

_METRICS = st.sampled_from(list(Metric))
_TIMES = st.datetimes(timezones=st.just(UTC))


@st.composite
def _statuses(draw: st.DrawFn) -> LimitStatus:
    metric = draw(_METRICS)
    amount = st.integers(0, MAX_UNITS).map(lambda units: from_units(metric, units))
    return LimitStatus(
        subject=draw(st.text(min_size=1, max_size=20)),
        metric=metric.value,
        window=draw(st.one_of(st.none(), st.sampled_from(["minute", "day", "rolling:1h"]))),
        limit=draw(st.one_of(st.just(UNLIMITED), amount)),
        source=draw(st.sampled_from(["override", "plan", "default", "grant", "capacity"])),
        shadow=draw(st.booleans()),
        used=draw(st.one_of(st.none(), amount)),
        reserved=draw(amount),
        remaining=draw(st.one_of(st.none(), amount)),
        reset_at=draw(st.one_of(st.none(), _TIMES)),
        within_limit=draw(st.booleans()),
        reason=draw(st.one_of(st.none(), st.sampled_from([r.value for r in Reason]))),
    )


@st.composite
def any_decision(draw: st.DrawFn) -> Decision:
    statuses = st.lists(_statuses(), max_size=3).map(tuple)
    amounts = draw(st.dictionaries(_METRICS, st.integers(0, MAX_UNITS), max_size=4))
    return Decision(
        allowed=draw(st.booleans()),
        subject=draw(st.text(min_size=1, max_size=20)),
        mode=draw(st.sampled_from(list(Mode))),
        amounts={m.value: from_units(m, u) for m, u in amounts.items()},
        timestamp=draw(_TIMES),
        limits=draw(statuses),
        blocked_by=draw(statuses),
        shadow_blocked=draw(statuses),
        retry_after=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        event_id=draw(st.one_of(st.none(), st.integers(1, 2**62))),
        replayed=draw(st.booleans()),
        failed_open=draw(st.booleans()),
        reason=draw(st.one_of(st.none(), st.sampled_from([r.value for r in Reason]))),
        blocked_outside=tuple(
            draw(
                st.lists(
                    st.builds(
                        WithheldBlock,
                        st.sampled_from(list(Reason)),
                        st.sampled_from(["tokens", "credits"]),
                    ),
                    max_size=2,
                )
            )
        ),
    )


@given(any_decision())
def test_any_decision_round_trips_through_json(decision: Decision) -> None:
    wire = _json(decisions.encode_decision(decision))
    assert decisions.decode_decision(wire) == decision  # type: ignore[arg-type]


@given(_statuses())
def test_any_limit_status_round_trips(status: LimitStatus) -> None:
    back = decisions.decode_limit_status(_json(decisions.encode_limit_status(status)))  # type: ignore[arg-type]
    assert back == status
    # Credits stay exact: a Decimal comes back, never a float.
    assert not any(isinstance(v, float) for v in (back.limit, back.used, back.reserved))


def test_credits_travel_as_strings() -> None:
    status = LimitStatus(
        "user:a", "credits", "day", Decimal("1.5"), "override", False,
        Decimal("0.000001"), Decimal(0), Decimal("1.499999"), None, True,
    )  # fmt: skip
    wire = decisions.encode_limit_status(status)
    assert (wire["limit"], wire["used"], wire["remaining"]) == ("1.5", "0.000001", "1.499999")
