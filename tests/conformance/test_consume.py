"""Consume, check and usage: the behaviour every backend must share."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import QuotaFactory
from tokenquota import FrozenClock, IdempotencyConflict, NotFound, Quota


def test_consume_within_limit_is_allowed_and_counted(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 10_000)

    decision = quota.consume("user:alice", tokens=1_200)

    assert decision.allowed
    assert decision.event_id is not None
    (status,) = [s for s in decision.limits if s.metric == "tokens"]
    assert (status.used, status.remaining, status.within_limit) == (1_200, 8_800, True)
    (usage,) = quota.usage("user:alice").limits
    assert usage.used == 1_200


def test_denied_consume_charges_nothing_and_names_the_limit(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.consume("user:alice", tokens=900)

    decision = quota.consume("user:alice", tokens=200)

    assert not decision.allowed
    assert [(b.subject, b.metric, b.window) for b in decision.blocked_by] == [
        ("user:alice", "tokens", "day")
    ]
    assert decision.event_id is None
    assert decision.retry_after == 12 * 3600  # the frozen clock stands at noon UTC
    assert quota.usage("user:alice").limits[0].used == 900
    assert quota.events(subject="user:alice").total == 1


def test_exactly_filling_a_limit_is_allowed_then_everything_waits(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    assert quota.consume("user:alice", tokens=1_000).allowed
    # A request carrying no tokens still waits once the token budget is spent.
    assert not quota.consume("user:alice", requests=1).allowed
    assert not quota.check("user:alice", tokens=1).allowed


def test_zero_limit_blocks_everything(quota: Quota) -> None:
    quota.set_limit("user:bob", "requests", "minute", 0)
    decision = quota.consume("user:bob", tokens=5)
    assert not decision.allowed
    assert decision.retry_after is None  # waiting does not help


def test_hierarchy_is_all_or_nothing(quota: Quota) -> None:
    quota.set_parents("user:alice", ["company:acme", "group:research"])
    quota.set_limit("company:acme", "tokens", "month", 100_000)
    quota.set_limit("group:research", "tokens", "day", 500)

    assert quota.consume("user:alice", tokens=400).allowed
    denied = quota.consume("user:alice", tokens=200)

    assert not denied.allowed
    assert [b.subject for b in denied.blocked_by] == ["group:research"]
    usage = {
        (s.subject, s.window): s.used
        for s in quota.usage("user:alice", include_ancestors=True).limits
    }
    assert usage == {("company:acme", "month"): 400, ("group:research", "day"): 400}


def test_ancestors_of_ancestors_are_charged(quota: Quota) -> None:
    quota.set_parents("user:alice", ["team:ml"])
    quota.set_parents("team:ml", ["company:acme"])
    quota.set_limit("company:acme", "tokens", "total", 1_000)

    quota.consume("user:alice", tokens=600)
    quota.consume("user:bob", tokens=600)  # not in acme: counts nowhere near it
    decision = quota.consume("team:ml", tokens=500)

    assert not decision.allowed
    assert decision.retry_after is None  # a total never resets by itself
    assert quota.usage("company:acme").limits[0].used == 600


def test_record_mode_stores_over_the_limit_and_remaining_stays_at_zero(quota: Quota) -> None:
    quota.set_limit("company:acme", "tokens", "day", 1_000)
    decision = quota.consume("company:acme", tokens=1_500, mode="record")
    assert decision.allowed
    (status,) = [s for s in decision.limits if s.metric == "tokens"]
    assert (status.used, status.remaining, status.within_limit) == (1_500, 0, False)
    assert not quota.consume("company:acme", tokens=1).allowed


def test_check_spends_nothing(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "hour", 100)
    assert quota.check("user:alice", tokens=100).allowed
    assert not quota.check("user:alice", tokens=101).allowed
    assert quota.events().total == 0
    assert quota.usage("user:alice").limits[0].used == 0


def test_requests_count_one_per_call_unless_told(quota: Quota) -> None:
    quota.set_limit("user:alice", "requests", "minute", 3)
    quota.consume("user:alice", tokens=1)
    quota.consume("user:alice", requests=2)
    assert not quota.consume("user:alice").allowed


def test_tokens_are_input_plus_output_when_only_those_are_given(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.set_limit("user:alice", "output_tokens", "day", 300)
    decision = quota.consume("user:alice", input_tokens=500, output_tokens=250)
    used = {s.metric: s.used for s in decision.limits}
    assert used == {"tokens": 750, "output_tokens": 250}
    assert not quota.consume("user:alice", input_tokens=10, output_tokens=60).allowed


def test_credits_are_exact_decimals(quota: Quota) -> None:
    quota.set_limit("workspace:w1", "credits", "month", "1.0")
    for _ in range(10):
        assert quota.consume("workspace:w1", credits="0.1").allowed
    decision = quota.consume("workspace:w1", credits="0.000000001")
    assert not decision.allowed
    (status,) = quota.usage("workspace:w1").limits
    assert status.used == Decimal("1")
    assert status.remaining == Decimal("0")


def test_input_sequence_length_refuses_long_inputs_and_counts_nothing(quota: Quota) -> None:
    quota.set_limit("deployment:llama", "input_sequence_length", None, 4_096)
    quota.set_limit("deployment:llama", "requests", "day", 100)
    denied = quota.consume("deployment:llama", input_tokens=5_000)
    assert not denied.allowed
    assert denied.blocked_by[0].metric == "input_sequence_length"
    assert denied.retry_after is None
    assert quota.consume("deployment:llama", input_tokens=4_096).allowed
    usage = {s.metric: s.used for s in quota.usage("deployment:llama").limits}
    assert usage == {"input_sequence_length": None, "requests": 1}


def test_idempotent_retry_returns_the_first_answer_and_charges_once(quota: Quota) -> None:
    quota.set_limit("user:alice", "tokens", "day", 10_000)
    first = quota.consume("user:alice", tokens=1_200, idempotency_key="req-81")
    again = quota.consume("user:alice", tokens=1_200, idempotency_key="req-81")
    assert again.replayed
    assert not first.replayed
    assert again.event_id == first.event_id
    assert again.limits == first.limits
    assert quota.usage("user:alice").limits[0].used == 1_200
    # The key belongs to the subject: another subject may use the same key.
    assert not quota.consume("user:bob", tokens=1, idempotency_key="req-81").replayed


def test_idempotency_key_reused_for_another_request_is_a_conflict(quota: Quota) -> None:
    quota.consume("user:alice", tokens=5, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        quota.consume("user:alice", tokens=6, idempotency_key="k")
    assert quota.events().total == 1


def test_a_denied_call_is_not_remembered_so_its_retry_is_decided_afresh(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_limit("user:alice", "tokens", "minute", 10)
    quota.consume("user:alice", tokens=10)
    assert not quota.consume("user:alice", tokens=5, idempotency_key="k").allowed
    clock.advance(minutes=1)
    assert quota.consume("user:alice", tokens=5, idempotency_key="k").allowed


def test_strict_subjects_refuses_unknown_subjects(make_quota: QuotaFactory) -> None:
    quota = make_quota(strict_subjects=True)
    with pytest.raises(NotFound):
        quota.consume("user:ghost", tokens=1)
    with pytest.raises(NotFound):
        quota.usage("user:ghost")
    quota.put_subject("user:known")
    assert quota.consume("user:known", tokens=1).allowed


def test_subjects_are_created_on_first_use(quota: Quota) -> None:
    quota.consume("user:new", tokens=1)
    assert quota.get_subject("user:new").ref.id == "new"


def test_shadow_limit_never_blocks_but_counts_and_logs(
    quota: Quota, caplog: pytest.LogCaptureFixture
) -> None:
    quota.set_limit("user:alice", "tokens", "day", 100, shadow=True)
    with caplog.at_level(logging.WARNING, logger="tokenquota.shadow"):
        for _ in range(3):
            assert quota.consume("user:alice", tokens=60).allowed
        decision = quota.consume("user:alice", tokens=60)
    assert decision.allowed
    assert [s.metric for s in decision.shadow_blocked] == ["tokens"]
    # The first consume fitted; the next three would each have been refused.
    assert quota.shadow_hits("user:alice") == {"tokens/day": 3}
    assert sum("would have blocked" in r.getMessage() for r in caplog.records) == 3


def test_rolling_window_releases_usage_bucket_by_bucket(quota: Quota, clock: FrozenClock) -> None:
    quota.set_limit("user:alice", "tokens", "rolling:1h", 100)
    quota.consume("user:alice", tokens=60)
    clock.advance(minutes=30)
    quota.consume("user:alice", tokens=40)
    denied = quota.consume("user:alice", tokens=50)
    assert not denied.allowed
    # The first 60 leave one hour after their one-minute bucket began.
    assert denied.retry_after == 30 * 60
    assert quota.usage("user:alice").limits[0].reset_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    clock.advance(minutes=30)
    status = quota.usage("user:alice").limits[0]
    assert status.used == 40
    assert quota.consume("user:alice", tokens=50).allowed
    clock.advance(hours=1)
    assert quota.usage("user:alice").limits[0].used == 0
    assert quota.usage("user:alice").limits[0].reset_at is None


def test_calendar_day_resets_at_midnight_in_the_configured_zone(
    make_quota: QuotaFactory, clock: FrozenClock
) -> None:
    quota = make_quota(timezone="Europe/Stockholm")
    clock.set(datetime(2026, 3, 10, 22, 30, tzinfo=UTC))  # 23:30 in Stockholm
    quota.set_limit("user:alice", "tokens", "day", 100)
    quota.consume("user:alice", tokens=100)
    (status,) = quota.usage("user:alice").limits
    assert status.reset_at == datetime(2026, 3, 10, 23, 0, tzinfo=UTC)
    assert quota.consume("user:alice", tokens=1).retry_after == 30 * 60
    clock.set(datetime(2026, 3, 10, 23, 0, tzinfo=UTC))
    assert quota.consume("user:alice", tokens=100).allowed


def test_back_dated_event_counts_in_the_window_of_its_timestamp(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.set_limit("user:alice", "tokens", "month", 5_000)
    yesterday = clock.now() - timedelta(days=1)

    decision = quota.consume("user:alice", tokens=800, timestamp=yesterday, mode="record")

    assert decision.timestamp == yesterday
    by_window = {s.window: s.used for s in quota.usage("user:alice").limits}
    assert by_window == {"day": 0, "month": 800}
    # Enforce measures the day that holds the timestamp, not today.
    assert not quota.consume("user:alice", tokens=300, timestamp=yesterday).allowed
    assert quota.consume("user:alice", tokens=300).allowed


def test_usage_reports_every_effective_limit_with_its_source(quota: Quota) -> None:
    quota.set_default("user", "tokens", "day", 50_000)
    quota.set_default("user", "requests", "minute", 10)
    plan = quota.create_plan(
        "Gold",
        [
            {"metric": "tokens", "window": "day", "limit": 200_000},
            {"metric": "credits", "window": "month", "limit": 2_000},
        ],
    )
    quota.assign_plan("user:alice", plan.id)
    quota.set_limit("user:alice", "requests", "minute", -1)
    quota.consume("user:alice", tokens=10)

    rows = {
        (s.metric, s.window): (s.limit, s.source, s.remaining)
        for s in quota.usage("user:alice").limits
    }

    assert rows == {
        ("tokens", "day"): (200_000, "plan", 199_990),
        ("credits", "month"): (Decimal(2000), "plan", Decimal(2000)),
        ("requests", "minute"): (-1, "override", None),
    }
    bob = {(s.metric, s.window): s.source for s in quota.usage("user:bob").limits}
    assert bob == {("tokens", "day"): "default", ("requests", "minute"): "default"}
    assert quota.usage("company:acme").limits == ()


def test_reopened_sqlite_store_keeps_every_acknowledged_consume(
    backend: str, make_quota: QuotaFactory
) -> None:
    if backend == "memory":
        pytest.skip("memory:// keeps nothing across processes by design")
    quota = make_quota()
    quota.set_limit("user:alice", "tokens", "day", 1_000)
    quota.consume("user:alice", tokens=400, idempotency_key="a")
    quota.close()
    reopened = make_quota()
    assert reopened.usage("user:alice").limits[0].used == 400
    assert reopened.consume("user:alice", tokens=400, idempotency_key="a").replayed
