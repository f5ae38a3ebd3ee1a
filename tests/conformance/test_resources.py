"""Shared-capacity quotas on a resource (contract §6), through the engine, on every backend."""

from __future__ import annotations

import pytest

from tokenquota import FrozenClock, Quota, QuotaExceeded, ValidationError
from tokenquota.wire.catalog import encode_resource_quota

LLAMA = "deployment:llama"


def test_default_rules_apply_to_each_consumer_separately(quota: Quota) -> None:
    quota.set_resource_quota(
        LLAMA, {"default_rules": [{"metric": "requests", "window": "minute", "limit": 2}]}
    )
    assert quota.consume("user:alice", resource=LLAMA).allowed
    assert quota.consume("user:alice", resource=LLAMA).allowed
    denied = quota.consume("user:alice", resource=LLAMA)
    assert not denied.allowed
    assert [(b.subject, b.source) for b in denied.blocked_by] == [
        ("deployment:llama~user:alice", "resource")
    ]
    assert denied.retry_after == 60  # the frozen clock stands on a whole minute
    assert quota.consume("user:bob", resource=LLAMA).allowed
    assert quota.consume("user:alice").allowed  # without the resource, its rules do not apply


def test_a_policy_replaces_the_default_rules_for_its_consumer(quota: Quota) -> None:
    quota.set_resource_quota(
        LLAMA,
        {
            "default_rules": [{"metric": "tokens", "window": "hour", "limit": 100}],
            "policies": [
                {
                    "consumer": "group:research",
                    "rules": [{"metric": "tokens", "window": "hour", "limit": 1_000}],
                }
            ],
        },
    )
    assert quota.consume("group:research", tokens=900, resource=LLAMA).allowed
    assert not quota.consume("user:alice", tokens=101, resource=LLAMA).allowed


def test_capacity_caps_the_whole_resource_per_minute(quota: Quota, clock: FrozenClock) -> None:
    quota.set_resource_quota(LLAMA, {"capacity": {"value": 3, "units": "requests"}})
    for user in ("user:a", "user:b", "user:c"):
        assert quota.consume(user, resource=LLAMA).allowed
    denied = quota.consume("user:d", resource=LLAMA)
    assert not denied.allowed
    assert [(b.subject, b.source, b.limit) for b in denied.blocked_by] == [(LLAMA, "capacity", 3)]
    assert denied.retry_after == 60
    clock.advance(minutes=1)
    assert quota.consume("user:d", resource=LLAMA).allowed


def test_saturation_honours_the_shares_reserved_for_others(quota: Quota) -> None:
    # C = 100 tokens a minute, s = 0.5; alice holds 30 % and bob 20 %.
    quota.set_resource_quota(
        LLAMA,
        {
            "capacity": {"value": 100, "units": "tokens"},
            "saturation_threshold": "0.5",
            "policies": [
                {"consumer": "user:alice", "rules": [], "reserved": "0.3"},
                {"consumer": "user:bob", "rules": [], "reserved": "0.2"},
            ],
        },
    )
    # U + a = 40 <= s*C = 50: not saturated, anyone may use it.
    assert quota.consume("user:carol", tokens=40, resource=LLAMA).allowed
    # U + a = 60 > 50: saturated; carol may use only C - 30 - 20 = 50 in all.
    denied = quota.consume("user:carol", tokens=20, resource=LLAMA)
    assert not denied.allowed
    assert denied.blocked_by[0].source == "saturation"
    assert quota.consume("user:carol", tokens=10, resource=LLAMA).allowed
    # alice's own share never blocks her: her bound is C - bob's 20 = 80.
    assert quota.consume("user:alice", tokens=30, resource=LLAMA).allowed
    # U = 80 now; bob still has his 20 reserved and untouched.
    assert not quota.consume("user:alice", tokens=1, resource=LLAMA).allowed
    assert quota.consume("user:bob", tokens=20, resource=LLAMA).allowed


def test_input_sequence_length_and_concurrency_rules_per_consumer(quota: Quota) -> None:
    quota.set_resource_quota(
        LLAMA,
        {
            "default_rules": [
                {"metric": "input_sequence_length", "limit": 4_096},
                {"metric": "concurrent_requests", "limit": 1},
            ]
        },
    )
    assert not quota.consume("user:alice", input_tokens=5_000, resource=LLAMA).allowed
    assert quota.consume("user:alice", input_tokens=4_000, resource=LLAMA).allowed
    first = quota.acquire("user:alice", resource=LLAMA)
    assert first.allowed
    assert not quota.acquire("user:alice", resource=LLAMA).allowed
    assert quota.acquire("user:bob", resource=LLAMA).allowed
    assert quota.acquire("user:alice").allowed  # outside the resource: no rule


def test_a_lease_on_a_resource_holds_the_consumer_slot_until_the_block_ends(
    quota: Quota,
) -> None:
    """``Quota.lease(resource=)`` takes the slot ``acquire(resource=)`` takes, and frees it."""
    quota.set_resource_quota(
        LLAMA, {"default_rules": [{"metric": "concurrent_requests", "limit": 1}]}
    )
    with quota.lease("user:alice", resource=LLAMA) as lease:
        assert lease.resource is not None
        assert str(lease.resource) == LLAMA
        assert quota.get_lease(lease.id).resource == lease.resource
        with pytest.raises(QuotaExceeded) as full, quota.lease("user:alice", resource=LLAMA):
            pytest.fail("a second slot on the resource was granted")
        assert [(b.subject, b.source) for b in full.value.decision.blocked_by] == [
            ("deployment:llama~user:alice", "resource")
        ]
        with quota.lease("user:bob", resource=LLAMA):
            pass  # each consumer has a slot of its own
        with quota.lease("user:alice"):
            pass  # outside the resource its rules do not apply
    assert not quota.get_lease(lease.id).live(quota.clock.now())
    with quota.lease("user:alice", resource=LLAMA):
        pass  # released when the block ended


def test_reservations_on_a_resource_hold_the_consumer_share_and_capacity(quota: Quota) -> None:
    quota.set_resource_quota(
        LLAMA,
        {
            "capacity": {"value": 1_000, "units": "tokens"},
            "default_rules": [{"metric": "tokens", "window": "minute", "limit": 600}],
        },
    )
    held = quota.reserve("user:alice", tokens=600, resource=LLAMA)
    assert held.allowed
    assert not quota.consume("user:alice", tokens=1, resource=LLAMA).allowed
    assert not quota.consume("user:bob", tokens=401, resource=LLAMA).allowed
    assert held.reservation is not None
    quota.commit(held.reservation.id, tokens=100)
    assert quota.consume("user:alice", tokens=500, resource=LLAMA).allowed


def test_the_resource_is_charged_as_a_subject_and_rebuild_keeps_shares(quota: Quota) -> None:
    quota.set_limit(LLAMA, "tokens", "day", 1_000)
    quota.set_resource_quota(
        LLAMA, {"default_rules": [{"metric": "tokens", "window": "day", "limit": 500}]}
    )
    quota.consume("user:alice", tokens=400, resource=LLAMA)
    quota.consume("user:bob", tokens=400, resource=LLAMA)
    assert quota.usage(LLAMA).limits[0].used == 800
    assert quota.events(subject=LLAMA).total == 2
    quota.rebuild()
    assert not quota.consume("user:alice", tokens=101, resource=LLAMA).allowed
    assert quota.consume("user:alice", tokens=100, resource=LLAMA).allowed
    assert not quota.consume("user:carol", tokens=101, resource=LLAMA).allowed  # 1000 in all


def test_quota_crud_validates_and_is_audited(quota: Quota) -> None:
    with pytest.raises(ValidationError) as caught:
        quota.set_resource_quota(
            LLAMA,
            {
                "policies": [
                    {"consumer": "user:a", "rules": [], "reserved": "0.6"},
                    {"consumer": "user:b", "rules": [], "reserved": "0.5"},
                ]
            },
        )
    assert caught.value.field == "policies"
    quota.set_resource_quota(LLAMA, {"capacity": {"value": 5, "units": "requests"}})
    assert encode_resource_quota(quota.get_resource_quota(LLAMA))["capacity"] == {
        "value": 5,
        "units": "requests",
    }
    assert [r for r, _ in quota.resource_quotas().items] == [quota.get_subject(LLAMA).ref]
    assert [e.action for e in quota.audit(subject=f"resources/{LLAMA}").items] == ["quota.set"]
    quota.delete_resource_quota(LLAMA)
    assert quota.resource_quotas().total == 0


def test_check_sees_capacity_and_prepaid_balances_as_consume_does(quota: Quota) -> None:
    quota.set_resource_quota(LLAMA, {"capacity": {"value": 1, "units": "requests"}})
    assert quota.check("user:dave", resource=LLAMA).allowed
    quota.consume("user:dave", resource=LLAMA)
    denied = quota.check("user:erin", resource=LLAMA)
    assert not denied.allowed
    assert denied.blocked_by[0].source == "capacity"
    quota.grant("workspace:w1", 2)
    assert quota.check("workspace:w1", credits=2).allowed
    assert not quota.check("workspace:w1", credits=3).allowed
    assert quota.events(subject="workspace:w1").total == 1  # the grant; checks spend nothing
