"""A retry of an admitted request answers its original admission (issue 11, item 6).

The limit may be reached between the first attempt and the retry; the retry
must still answer 200 with the first answer's figures, on every backend.
"""

from __future__ import annotations

from datetime import timedelta

from tokenquota import FrozenClock, Quota


def test_a_retry_after_the_limit_was_reached_answers_the_first_admission(
    quota: Quota, clock: FrozenClock
) -> None:
    quota.set_limit("user:ann", "tokens", "day", 14)
    first = quota.consume("user:ann", tokens=7, idempotency_key="k1")
    assert first.allowed
    assert quota.consume("user:ann", tokens=7, idempotency_key="k2").allowed
    clock.advance(timedelta(seconds=5))  # a retry comes later: its own plan has another now

    again = quota.consume("user:ann", tokens=7, idempotency_key="k1")

    assert again.allowed
    assert again.replayed
    assert again.event_id == first.event_id
    assert again.limits == first.limits
    assert again.limits[0].used == 7  # what the first answer said, not today's 14
    assert quota.usage("user:ann").limits[0].used == 14  # and nothing charged twice


def test_a_retry_of_a_commit_after_the_limit_was_reached_answers_the_first_commit(
    quota: Quota,
) -> None:
    quota.set_limit("user:ann", "tokens", "day", 14)
    held = quota.reserve("user:ann", tokens=7).reservation
    assert held is not None
    first = quota.commit(held.id, tokens=7)
    assert quota.consume("user:ann", tokens=7).allowed

    again = quota.commit(held.id, tokens=7)

    assert again.allowed
    assert again.event_id == first.event_id
    assert again.limits == first.limits
