"""The Redis meter's warm decisions (``decisions.admitted``) are ``decide``'s, exactly.

A placed plan (calendar and ``total`` windows, caps) the script admitted, with
no wallet and no live hold, is decided from one number per check parsed out of
the script's reply (``Runner.used``) rather than from a ``Reading`` per check
(``Runner.answers``). These tests run real requests on a real Redis and, for
every request the warm path answered, decide the same reply the other way,
through ``answers`` and ``decide``: the decision, its wire body and its
RateLimit headers must be the same. Idempotent retries (recomputed by
``decide`` from what the script stored) must answer what the first attempt
answered. A live hold, a rolling window, a wallet, a shadow block and a
refusal must not take the warm path.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import tokenquota
from tokenquota import FrozenClock, Quota
from tokenquota.api.routes.metering import rate_limit_headers
from tokenquota.domain import decisions
from tokenquota.domain.decisions import DebitPlan, Decision, decide
from tokenquota.storage.redis import RedisStore
from tokenquota.storage.redis import meter as redis_meter
from tokenquota.storage.redis import ops as redis_ops
from tokenquota.wire.decisions import encode_decision

START = datetime(2026, 3, 31, 21, 58, 59, 500_000, tzinfo=UTC)


class Paths:
    """What each decision went through: the warm path's answers, each beside
    ``decide``'s answer to the very reply it was made from."""

    def __init__(self) -> None:
        self.warm: list[tuple[Decision, Decision]] = []
        self.last_reply: tuple[redis_ops.Runner, Any, list[Any]] | None = None
        self.declined = 0  # ``used`` looked, found a check read otherwise


@pytest.fixture
def quota(postgres_url: str, redis_url: str) -> Iterator[Quota]:
    with tokenquota.open(postgres_url, redis=redis_url, clock=FrozenClock(START)) as opened:
        assert isinstance(opened.store, RedisStore)
        assert not opened.store.cluster
        opened.set_parents("user:ann", ["company:acme"])
        opened.set_limit("user:ann", "tokens", "minute", 100)
        opened.set_limit("user:ann", "tokens", "day", 1_000, thresholds=[50, 90])
        opened.set_limit("user:ann", "input_sequence_length", None, 40)
        opened.set_limit("user:ann", "requests", "day", 8, shadow=True)
        opened.set_limit("company:acme", "tokens", "month", 10_000)
        opened.set_limit("company:acme", "requests", "total", 1_000)
        # no cap: every check reads a bucket (``Runner.used``'s short way)
        opened.set_parents("user:bob", ["company:acme"])
        opened.set_limit("user:bob", "tokens", "minute", 50)
        yield opened


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Paths:
    """Spies on the real ``Runner.used`` and ``admitted``: they still decide."""
    seen = Paths()
    used = redis_ops.Runner.used
    admitted = decisions.admitted

    def spied_used(runner: redis_ops.Runner, op: Any, replies: list[Any]) -> Any:
        seen.last_reply = (runner, op, replies)
        found = used(runner, op, replies)
        seen.declined += found is None
        return found

    def spied_admitted(plan: DebitPlan, counts: Any, event_id: int | None = None) -> Any:
        fast = admitted(plan, counts, event_id)
        if fast is not None:
            assert seen.last_reply is not None
            runner, op, replies = seen.last_reply
            readings, prepaid = runner.answers(op, replies)
            assert not prepaid
            seen.warm.append((fast, decide(plan, readings, event_id)))
        return fast

    monkeypatch.setattr(redis_ops.Runner, "used", spied_used)
    monkeypatch.setattr(redis_meter, "admitted", spied_admitted)
    return seen


def same(fast: Decision, slow: Decision, now: datetime) -> None:
    """One answer: the decision, what the API sends of it, its headers."""
    assert encode_decision(fast) == encode_decision(slow)
    assert rate_limit_headers(fast, now) == rate_limit_headers(slow, now)
    assert fast == slow
    assert fast.limits  # read after the comparisons above too: built once, the same


def test_warm_decisions_are_decides_on_the_same_reply(quota: Quota, paths: Paths) -> None:
    clock = quota.clock
    assert isinstance(clock, FrozenClock)
    answers: list[Decision] = []
    for tokens, extra in [
        (10, {}),
        (25, {"input_tokens": 30}),
        (7, {"requests": 1}),
        (30, {"input_tokens": 12}),  # past 50% of the day: an alert with it
    ]:
        answers.append(quota.consume("user:ann", {"tokens": tokens, **extra}))
        clock.advance(timedelta(seconds=20))  # into the next minute on the way
        answers.append(quota.consume("user:bob", tokens=tokens))
    answers.append(quota.consume("user:ann", tokens=5, mode="record"))
    answers.append(quota.consume("user:ann", tokens=3, idempotency_key="k1"))
    reserved = quota.reserve("user:ann", tokens=4)
    assert reserved.decision.allowed
    assert reserved.reservation is not None
    answers.append(reserved.decision)
    assert len(paths.warm) == len(answers) == 11
    for answer, (fast, slow) in zip(answers, paths.warm, strict=True):
        assert answer is fast
        assert fast.allowed
        same(fast, slow, clock.now())
    day = [(s.metric, s.used) for s in answers[6].limits if s.window == "day"]
    assert ("tokens", 72) in day
    assert ("requests", 4) in day
    minute = next(s for s in answers[-1].limits if s.window == "minute")
    assert (minute.used, minute.reserved) == (8, 4)  # a hold shows as reserved


def test_an_idempotent_retry_answers_the_warm_first_answer(quota: Quota, paths: Paths) -> None:
    first = quota.consume("user:ann", tokens=9, idempotency_key="k1")
    assert len(paths.warm) == 1
    quota.consume("user:ann", tokens=11)
    again = quota.consume("user:ann", tokens=9, idempotency_key="k1")
    assert len(paths.warm) == 2  # the retry is recomputed by ``decide``: not warm
    assert again.replayed
    assert again.event_id == first.event_id
    assert encode_decision(again) == {**encode_decision(first), "replayed": True}
    assert rate_limit_headers(again, START) == rate_limit_headers(first, START)


@pytest.mark.parametrize(("subject", "limit"), [("user:ann", 100), ("user:bob", 50)])
def test_a_live_hold_is_decided_through_readings(
    quota: Quota, paths: Paths, subject: str, limit: int
) -> None:
    """(ann has a cap, which reads nothing; bob's every check reads a bucket.)"""
    held = quota.reserve(subject, tokens=20)  # warm: nothing held before it
    assert held.reservation is not None
    assert len(paths.warm) == 1
    declined = paths.declined
    decision = quota.consume(subject, tokens=10)
    assert decision.allowed
    assert len(paths.warm) == 1
    assert paths.declined == declined + 1
    minute = next(s for s in decision.limits if s.window == "minute")
    assert (minute.used, minute.reserved, minute.remaining) == (10, 20, limit - 30)
    quota.release(held.reservation.id)
    again = quota.consume(subject, tokens=1)
    assert len(paths.warm) == 2  # no hold live again: warm again
    fast, slow = paths.warm[-1]
    assert again is fast
    same(fast, slow, START)
    minute = next(s for s in again.limits if s.window == "minute")
    assert (minute.used, minute.reserved) == (11, 0)


def test_a_rolling_window_or_a_wallet_is_not_warm(quota: Quota, paths: Paths) -> None:
    quota.set_limit("user:bob", "tokens", "rolling:1h", 100)
    assert quota.consume("user:bob", tokens=10).allowed
    assert not paths.warm  # no placement: ``used`` is never asked
    quota.grant("user:cat", 10)
    quota.set_limit("user:cat", "tokens", "day", 100)
    decision = quota.consume("user:cat", tokens=10, credits=2)
    assert decision.allowed
    assert not paths.warm
    assert {s.window for s in decision.limits} == {"day", "prepaid"}
    assert paths.declined == 0


def test_a_shadow_block_or_a_refusal_is_decided_by_decide(quota: Quota, paths: Paths) -> None:
    for _ in range(8):
        assert quota.consume("user:ann", tokens=1).allowed
    assert len(paths.warm) == 8
    shadowed = quota.consume("user:ann", tokens=1)  # requests/day 8 (shadow) reached
    assert shadowed.allowed
    assert shadowed.shadow_blocked
    refused = quota.consume("user:ann", tokens=200)
    assert not refused.allowed
    assert refused.blocked_by
    capped = quota.consume("user:ann", tokens=1, input_tokens=41)
    assert not capped.allowed
    assert len(paths.warm) == 8
