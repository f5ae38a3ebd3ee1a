"""A Redis step adds a usage to the counters ``domain.ledger.increments`` names.

``shapes.Counting`` names a shape's counters once and places their buckets once
per span of time, reused while usage falls in it. These tests put the step a
plan builds beside the domain's own rule, for a sequence of instants that
crosses every edge of those spans (a minute, an hour, a day, a month, a DST
change, a rolling window's bucket), back-dated usage, several metrics and
several charged subjects, on a single Redis and on a cluster (one step per
slot).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import tokenquota
from tokenquota import FrozenClock, Quota
from tokenquota.domain.decisions import DebitPlan, Mode
from tokenquota.domain.ledger import increments
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Shape, Tracking, shape_of
from tokenquota.storage.redis import RedisStore

# The last second of March 2026 in Stockholm, after its DST change (29 March).
START = datetime(2026, 3, 31, 21, 59, 59, 500_000, tzinfo=UTC)
STEPS = [
    timedelta(0),
    timedelta(milliseconds=300),  # the same second: every bucket as before
    timedelta(milliseconds=200),  # the next minute, hour, day and month at once
    timedelta(seconds=59),
    timedelta(minutes=1),  # the next minute alone
    timedelta(hours=1),
    timedelta(days=40),
]


@pytest.fixture(params=["redis", "cluster"])
def quota(request: pytest.FixtureRequest) -> Iterator[Quota]:
    redis = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    db = request.getfixturevalue("postgres_url")
    with tokenquota.open(
        db, redis=redis, timezone="Europe/Stockholm", clock=FrozenClock(START)
    ) as opened:
        opened.set_parents("user:ann", ["team:red"])
        opened.set_parents("team:red", ["company:acme"])
        for window in ("minute", "hour", "day", "rolling:2h", "total"):
            opened.set_limit("user:ann", "tokens", window, 10**12)
        opened.set_limit("team:red", "requests", "month", 10**12)
        opened.set_limit("company:acme", "tokens", "month", 10**12)
        yield opened


def store_of(quota: Quota) -> RedisStore:
    assert isinstance(quota.store, RedisStore)
    return quota.store


def step_adds(store: RedisStore, plan: DebitPlan) -> tuple[dict[tuple[str, str], int], set[str]]:
    """What the steps of ``plan`` add, per (counter key, bucket), and the labels of the
    lifetime counters they check against 2^63 - 1 (and add: they are not in "incr")."""
    tracked, _ = store.meter._context(plan, True)
    op = store.meter.ops.op()
    store.meter.ops.add_increments(op, plan, tracked)
    added: dict[tuple[str, str], int] = {}
    capped: set[str] = set()
    for step in op.steps.ordered():
        incr = step.spec.get("incr", [])
        for i in range(0, len(incr), 3):
            kidx, bucket, delta = incr[i : i + 3]
            at = step.keys[kidx - 1], bucket
            added[at] = added.get(at, 0) + int(delta)
        cap = step.spec.get("cap", [])
        for i in range(0, len(cap), 4):  # a lifetime counter: added by its cap entry alone
            kidx, bucket, delta, label = cap[i : i + 4]
            at = step.keys[kidx - 1], bucket
            assert at not in added
            added[at] = int(delta)
            capped.add(label)
    return added, capped


class WithLimits:
    """The pairs a series is counted in, and each plan limit's pair in its own series."""

    def __init__(self, tracked: Tracking, plan: DebitPlan) -> None:
        self.tracked, self.plan = tracked, plan

    def of_series(self, series: str) -> frozenset[LimitKey]:
        mine = {c.limit.key for c in self.plan.checks if str(c.limit.subject) == series}
        return self.tracked.of_series(series) | mine

    def shape(self, series: tuple[str, ...]) -> Shape:
        return shape_of(self, series)


def domain_adds(store: RedisStore, plan: DebitPlan) -> tuple[dict[tuple[str, str], int], set[str]]:
    """The same, by the domain's rule, with every name formatted afresh."""
    tracked, _ = store.meter._context(plan, True)
    keys = WithLimits(tracked, plan)
    prefix = store.layout.prefix
    added: dict[tuple[str, str], int] = {}
    capped: set[str] = set()
    for (series, metric, window, bucket), delta in increments(
        plan.series, plan.amounts, plan.timestamp, store.db.tz, keys
    ).items():
        tag = series.split("~", 1)[0]
        added[f"{prefix}:{{{tag}}}:c:{series}:{metric}:{window}", str(bucket)] = delta
        if window == "total":
            capped.add(f"{metric}|{series}")
    return added, capped


def test_a_step_adds_what_the_domain_counts(quota: Quota) -> None:
    store = store_of(quota)
    clock = quota.clock
    assert isinstance(clock, FrozenClock)
    ann = SubjectRef.parse("user:ann")
    seen = 0
    for step in STEPS:
        clock.advance(step)
        now = clock.now()
        for amounts, back in [
            ({"tokens": 7}, None),
            ({"tokens": 5, "requests": 3}, None),
            ({"tokens": 11}, now - timedelta(minutes=90)),  # in the rolling window still
            ({"tokens": 2}, now - timedelta(hours=3)),  # past it
            ({"requests": 1}, now - timedelta(days=31)),
            ({"tokens": 0, "requests": 2}, None),  # a metric without units counts nowhere
        ]:
            plan = quota.planner.plan(ann, amounts, Mode.ENFORCE, back)
            assert step_adds(store, plan) == domain_adds(store, plan)
            seen += 1
            # and the step runs: every counter it names is where the next reads it
            quota.consume(ann, amounts, timestamp=back)
    assert seen == len(STEPS) * 6


def test_a_subject_charged_twice_counts_twice(quota: Quota) -> None:
    """The domain adds a series once per time it is charged; so does the shape."""
    store = store_of(quota)
    plan = quota.planner.plan(SubjectRef.parse("user:ann"), {"tokens": 4}, Mode.ENFORCE, None)
    ann = plan.charged[0]
    twice = DebitPlan(
        plan.subject,
        (ann, *plan.charged),
        plan.amounts,
        plan.mode,
        plan.timestamp,
        plan.now,
        plan.tz,
        plan.checks,
        config_version=plan.config_version,
    )
    added, _ = step_adds(store, twice)
    assert added == domain_adds(store, twice)[0]
    assert max(added.values()) == 8
