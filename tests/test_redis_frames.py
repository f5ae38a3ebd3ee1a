"""A warm debit step copied from a frame is the step its plan builds (storage/redis/ops.py).

On a single Redis, ``Runner.begin`` keeps a placed plan's step (the ledger
step, the checks, the increments) as a ``Frame`` and copies it for every
request of the same shape. These tests put each copy beside a step built
afresh for the same plan, across the edges that must rebuild it: the next
minute of a window only another subject's limit tracks (the plan's own
placement does not move then), new metrics spent, and a changed configuration;
and new amounts, which a copy fills in (they are not part of the shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import tokenquota
from tokenquota import FrozenClock, Quota
from tokenquota.domain.decisions import DebitPlan, Mode
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.redis import RedisStore
from tokenquota.storage.redis import shapes as redis_shapes

START = datetime(2026, 3, 31, 21, 58, 59, 500_000, tzinfo=UTC)


@pytest.fixture
def quota(postgres_url: str, redis_url: str) -> Iterator[Quota]:
    with tokenquota.open(postgres_url, redis=redis_url, clock=FrozenClock(START)) as opened:
        opened.set_parents("user:ann", ["company:acme"])
        opened.set_limit("user:ann", "tokens", "day", 10**12)
        opened.set_limit("company:acme", "tokens", "month", 10**12)
        # Only bob's limit tracks the minute: ann's placement spans a day, while
        # her usage is still counted per minute.
        opened.set_limit("user:bob", "tokens", "minute", 10**12)
        yield opened


def built(store: RedisStore, plan: DebitPlan, *, fresh: bool) -> tuple[Any, ...]:
    """The keys, spec and check places of ``plan``'s step before its effects."""
    runner = store.meter.ops
    if fresh:
        runner._frames.clear()
    tracked, _ = store.meter._context(plan, True)
    op, step = runner.begin(plan, tracked, (0, store.layout.stream(0)), {}, guards=None)
    places = [None if e is None else e[1:] for e in op.checks]
    assert all(e is None or e[0] is step for e in op.checks)
    return list(step.keys), dict(step.spec), places


def test_a_copied_step_is_the_step_the_plan_builds(
    quota: Quota, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = quota.store
    assert isinstance(store, RedisStore)
    clock = quota.clock
    assert isinstance(clock, FrozenClock)
    copies: list[int] = []
    copy = redis_shapes.Frame.copy

    def counted(frame: redis_shapes.Frame, *args: Any) -> Any:
        copies.append(1)
        return copy(frame, *args)

    monkeypatch.setattr(redis_shapes.Frame, "copy", counted)
    ann = SubjectRef.parse("user:ann")
    for step in [timedelta(0), timedelta(milliseconds=300), timedelta(seconds=1)] * 2 + [
        timedelta(days=40)
    ]:
        clock.advance(step)
        # the last shape of a round is the first of the next: its frame meets the new time
        for amounts in ({"tokens": 7}, {"tokens": 5, "requests": 3}, {"tokens": 7}):
            quota.consume(ann, amounts)  # keeps the frame of this shape
            plan = quota.planner.plan(ann, amounts, Mode.ENFORCE, None)
            assert plan.placement is not None
            before = len(copies)
            warm = built(store, plan, fresh=False)
            assert warm == built(store, plan, fresh=True)
            assert len(copies) == before + 1  # the first was a copy
    quota.set_limit("company:acme", "tokens", "month", 10**11)  # a new configuration
    plan = quota.planner.plan(ann, {"tokens": 7}, Mode.ENFORCE, None)
    assert built(store, plan, fresh=False) == built(store, plan, fresh=True)
    (day, month) = quota.usage("user:ann", include_ancestors=True).limits
    assert day.used == 19  # 40 days on: the last round's day and month
    assert month.used == 19


def test_requests_of_different_amounts_share_one_frame_and_count_exactly(
    quota: Quota, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real traffic varies its token counts: a frame kept per amounts would be built
    again for nearly every request. Every amount a step carries (each counter's and
    lifetime counter's delta, each check's amount) is the request's own."""
    store = quota.store
    assert isinstance(store, RedisStore)
    quota.set_limit("user:ann", "tokens", "total", 10**12)  # a lifetime counter with a check
    quota.set_limit("user:ann", "requests", "day", 10**12)
    builds: list[int] = []
    init = redis_shapes.Frame.__init__

    def counted(frame: redis_shapes.Frame, *args: Any) -> None:
        builds.append(1)
        init(frame, *args)

    monkeypatch.setattr(redis_shapes.Frame, "__init__", counted)
    ann = SubjectRef.parse("user:ann")
    amounts = [7, 1_000, 3, 123_456, 7, 42]
    for tokens in amounts:
        assert quota.consume(ann, {"tokens": tokens}).allowed
    assert len(builds) == 1
    assert len(store.meter.ops._frames) == 1
    usage = quota.usage(ann, include_ancestors=True)
    used = {(u.subject, u.metric, u.window): u.used for u in usage.limits}
    assert used == {
        ("user:ann", "tokens", "day"): sum(amounts),
        ("user:ann", "tokens", "total"): sum(amounts),
        ("user:ann", "requests", "day"): len(amounts),
        ("company:acme", "tokens", "month"): sum(amounts),
    }
    # a request that would pass a limit is refused by the script: each check's
    # amount is the request's, not that of the request the frame was built for
    quota.set_limit("user:ann", "tokens", "day", sum(amounts) + 10)
    assert quota.consume(ann, {"tokens": 10}).allowed
    refused = quota.consume(ann, {"tokens": 1})
    assert not refused.allowed
    assert len(builds) == 2  # one more for the new configuration, then a copy
    day = {(u.metric, u.window): u.used for u in quota.usage(ann).limits}
    assert day["tokens", "day"] == sum(amounts) + 10
