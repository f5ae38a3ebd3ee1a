"""Prepaid credits: grants burned earliest-expiry first, lapsing on time, on every backend."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from tokenquota import FrozenClock, Quota, ValidationError
from tokenquota.wire.ledger import encode_balance, encode_grant


def left(quota: Quota, subject: str = "workspace:w1") -> Decimal:
    found = quota.balance(subject)
    assert found is not None
    return Decimal(encode_balance(found)["remaining"])


def remaining(quota: Quota, subject: str = "workspace:w1") -> list[str]:
    return [encode_grant(g, quota.clock.now())["remaining"] for g in quota.grants(subject)]


def test_a_prepaid_subject_spends_only_what_it_was_granted(quota: Quota) -> None:
    assert quota.consume("workspace:w1", credits="5").allowed  # not prepaid yet
    quota.grant("workspace:w1", "10.5")
    assert quota.consume("workspace:w1", credits="10").allowed
    denied = quota.consume("workspace:w1", credits="0.6")
    assert not denied.allowed
    assert denied.retry_after is None  # waiting adds no credits
    assert [(b.window, b.source, b.remaining) for b in denied.blocked_by] == [
        ("prepaid", "grant", Decimal("0.5"))
    ]
    assert quota.consume("workspace:w1", credits="0.5").allowed
    assert quota.consume("workspace:w1", tokens=100).allowed  # no credits, no balance needed
    assert left(quota) == 0


def test_earliest_expiry_burns_first_and_never_expiring_last(
    quota: Quota, clock: FrozenClock
) -> None:
    forever = quota.grant("workspace:w1", 5)
    month = quota.grant("workspace:w1", 5, expires_at=clock.now() + timedelta(days=30))
    week = quota.grant("workspace:w1", 5, expires_at=clock.now() + timedelta(days=7))
    quota.consume("workspace:w1", credits=7)

    def state() -> dict[str, tuple[str, str]]:
        wires = [encode_grant(g, clock.now()) for g in quota.grants("workspace:w1")]
        return {w["id"]: (w["remaining"], w["state"]) for w in wires}

    assert state() == {
        week.id: ("0", "spent"),
        month.id: ("3", "active"),
        forever.id: ("5", "active"),
    }
    clock.advance(days=8)  # the 7-day grant was spent anyway; nothing lapses
    assert left(quota) == 8
    clock.advance(days=30)  # the 30-day grant's 3 lapse on time
    assert left(quota) == 5
    assert state()[month.id] == ("3", "expired")
    assert not quota.consume("workspace:w1", credits=6).allowed
    assert quota.consume("workspace:w1", credits=5).allowed


def test_recorded_usage_beyond_the_balance_reports_zero_never_negative(quota: Quota) -> None:
    quota.grant("workspace:w1", 3)
    decision = quota.consume("workspace:w1", credits=5, mode="record")
    assert decision.allowed
    (wallet,) = [s for s in decision.limits if s.window == "prepaid"]
    assert wallet.remaining == 0
    assert left(quota) == 0
    (shown,) = [s for s in quota.usage("workspace:w1").limits if s.window == "prepaid"]
    assert (shown.remaining, shown.within_limit) == (0, False)


def test_a_company_grant_is_burned_by_its_users(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme"])
    quota.grant("company:acme", 10)
    assert quota.consume("user:alice", credits=8).allowed
    assert not quota.consume("user:alice", credits=3).allowed
    usage = quota.usage("user:alice", include_ancestors=True).limits
    assert [(s.subject, s.remaining) for s in usage if s.window == "prepaid"] == [
        ("company:acme", Decimal(2))
    ]


def test_reservations_hold_credits_and_commits_burn_them(quota: Quota) -> None:
    quota.grant("workspace:w1", 10)
    held = quota.reserve("workspace:w1", credits=8)
    assert held.reservation is not None
    assert not quota.consume("workspace:w1", credits=3).allowed
    quota.commit(held.reservation.id, credits=6)
    assert left(quota) == 4
    assert quota.consume("workspace:w1", credits=4).allowed


def test_rebuild_recomputes_what_is_left_of_every_grant(quota: Quota, clock: FrozenClock) -> None:
    quota.grant("workspace:w1", 4, expires_at=clock.now() + timedelta(days=1))
    quota.grant("workspace:w1", 10)
    for _ in range(3):
        quota.consume("workspace:w1", credits="1.5")
        clock.advance(hours=10)
    before = sorted(remaining(quota))
    assert before == ["0", "9.5"]
    quota.rebuild()
    assert sorted(remaining(quota)) == before
    assert quota.history("workspace:w1", granularity="day")[0].metric == "credits"
    assert quota.events(subject="workspace:w1").total == 5  # two grants, three spends


def test_bad_grants_are_refused(quota: Quota, clock: FrozenClock) -> None:
    for credits, expires, field in (
        (0, None, "credits"),
        (-1, None, "credits"),
        ("0.0000000001", None, "credits"),
        (5, clock.now() - timedelta(seconds=1), "expires_at"),
    ):
        with pytest.raises(ValidationError) as caught:
            quota.grant("workspace:w1", credits, expires_at=expires)
        assert caught.value.field == field
    assert quota.grants("workspace:w1") == []
    assert quota.balance("workspace:w1") is None


def test_a_grant_is_audited_alike_on_every_backend(quota: Quota, clock: FrozenClock) -> None:
    """Every backend writes the one grant_audit entry: who, when, and the grant as granted."""
    quota.put_subject("workspace:w1")
    given = quota.grant("workspace:w1", "2.5", actor="billing")
    entries = [a for a in quota.audit(subject="workspace:w1").items if a.action == "grant.add"]
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.actor, entry.target, entry.at, entry.before) == (
        "billing",
        "workspace:w1",
        given.granted_at,
        None,
    )
    assert entry.after == encode_grant(given, given.granted_at)
    assert entry.after["id"] == given.id
