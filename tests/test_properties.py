"""Property tests: random hierarchies and traffic against an independent tally."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tokenquota
from tokenquota import Decision, FrozenClock, Quota
from tokenquota.domain.windows import Window, admits

START = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # crosses a day and a month boundary
USERS = ["user:u0", "user:u1", "user:u2"]
GROUPS = ["company:c0", "group:g0"]
WINDOWS = ["minute", "hour", "day", "month", "rolling:10m", "rolling:1h", "total"]
METRICS = ["tokens", "requests"]
ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class Op:
    subject: str
    tokens: int
    advance: int  # seconds before the call
    record: bool


@dataclass(frozen=True)
class Scenario:
    parents: dict[str, list[str]]
    limits: list[tuple[str, str, str, int]]
    ops: list[Op]


@st.composite
def scenarios(draw: st.DrawFn, allow_record: bool) -> Scenario:
    parents = {u: draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=2)) for u in USERS}
    if draw(st.booleans()):
        parents["group:g0"] = ["company:c0"]
    limits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(USERS + GROUPS),
                st.sampled_from(METRICS),
                st.sampled_from(WINDOWS),
                st.integers(0, 40),
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda t: t[:3],
        )
    )
    ops = draw(
        st.lists(
            st.builds(
                Op,
                st.sampled_from(USERS + GROUPS),
                st.integers(0, 12),
                st.sampled_from([0, 0, 1, 7, 59, 61, 300, 1_800, 3_600]),
                st.booleans() if allow_record else st.just(False),
            ),
            min_size=1,
            max_size=30,
        )
    )
    return Scenario(parents, limits, ops)


def run(quota: Quota, clock: FrozenClock, scenario: Scenario) -> list[Decision]:
    for child, parents in scenario.parents.items():
        quota.set_parents(child, parents)
    for subject, metric, window, value in scenario.limits:
        quota.set_limit(subject, metric, window, value)
    decisions = []
    for op in scenario.ops:
        clock.advance(seconds=op.advance)
        decisions.append(
            quota.consume(op.subject, tokens=op.tokens, mode="record" if op.record else "enforce")
        )
    return decisions


def ancestors(scenario: Scenario, subject: str) -> set[str]:
    out: set[str] = set()
    frontier = list(scenario.parents.get(subject, []))
    while frontier:
        parent = frontier.pop()
        if parent not in out:
            out.add(parent)
            frontier += scenario.parents.get(parent, [])
    return out


def tally(
    scenario: Scenario, admitted: list[tuple[datetime, Op]], at: datetime
) -> dict[tuple[str, str, str], int]:
    """Window sums computed straight from the admitted requests, without any store."""
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for subject, metric, window_name, _ in scenario.limits:
        window = Window.parse(window_name)
        lo, hi = window.read_range(at, ZONE)
        for ts, op in admitted:
            if subject != op.subject and subject not in ancestors(scenario, op.subject):
                continue
            if lo <= window.bucket_of(ts, ZONE) <= hi:
                out[(subject, metric, window_name)] += op.tokens if metric == "tokens" else 1
    return out


BOUNDARY = Scenario(
    {"user:u0": ["company:c0"]},
    [("company:c0", "tokens", "day", 10), ("user:u0", "requests", "rolling:10m", 3)],
    [
        Op("user:u0", 6, 0, False),
        Op("user:u0", 5, 0, False),
        Op("user:u0", 4, 1, False),
        Op("user:u0", 0, 1, False),
        Op("user:u0", 1, 600, False),
        Op("company:c0", 0, 1_800, False),
    ],
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(allow_record=False))
@example(BOUNDARY)
def test_enforce_admits_exactly_what_fits_and_never_exceeds_a_limit(scenario: Scenario) -> None:
    clock = FrozenClock(START)
    quota = tokenquota.open("memory://", clock=clock)
    caps = {(s, m, w): v for s, m, w, v in scenario.limits}
    admitted: list[tuple[datetime, Op]] = []
    for child, parents in scenario.parents.items():
        quota.set_parents(child, parents)
    for subject, metric, window, value in scenario.limits:
        quota.set_limit(subject, metric, window, value)
    for op in scenario.ops:
        clock.advance(seconds=op.advance)
        before = tally(scenario, admitted, clock.now())
        charged = {op.subject} | ancestors(scenario, op.subject)
        fits = all(
            admits(before.get((s, m, w), 0), op.tokens if m == "tokens" else 1, cap)
            for (s, m, w), cap in caps.items()
            if s in charged
        )
        assert quota.consume(op.subject, tokens=op.tokens).allowed == fits
        if fits:
            admitted.append((clock.now(), op))
        sums = tally(scenario, admitted, clock.now())
        for key, used in sums.items():
            assert used <= caps[key], (key, used)
        reported = {
            (s.subject, s.metric, s.window): s.used
            for subject in USERS + GROUPS
            for s in quota.usage(subject).limits
        }
        assert reported == {key: sums.get(key, 0) for key in caps}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(allow_record=True))
@example(BOUNDARY)
def test_memory_and_sqlite_decide_alike_and_rebuild_reproduces(scenario: Scenario) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for url in ("memory://", f"sqlite:///{Path(tmp) / 'q.db'}"):
            clock = FrozenClock(START)
            with tokenquota.open(url, clock=clock) as quota:
                decisions = [replace(d, event_id=None) for d in run(quota, clock, scenario)]
                usage = [quota.usage(s, include_ancestors=True) for s in USERS + GROUPS]
                quota.rebuild()
                assert [quota.usage(s, include_ancestors=True) for s in USERS + GROUPS] == usage
                results.append((decisions, usage))
    assert results[0] == results[1]


def test_tally_sees_a_rolling_window_empty_after_it_passes() -> None:
    # Guards the oracle itself: an hour later, a rolling hour holds nothing.
    scenario = Scenario({}, [("user:u0", "tokens", "rolling:1h", 10)], [Op("user:u0", 5, 0, False)])
    admitted = [(START, scenario.ops[0])]
    assert tally(scenario, admitted, START) == {("user:u0", "tokens", "rolling:1h"): 5}
    assert tally(scenario, admitted, START + timedelta(hours=1)) == {}
