"""Random interleavings of reserve, commit, release and consume.

Committed plus held never exceeds a limit in enforce mode (commits here use at
most what they held, as an honest caller's would), and memory and SQLite make
the same decisions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenquota
from tokenquota import FrozenClock, Quota

START = datetime(2026, 5, 31, 23, 50, tzinfo=UTC)
SUBJECTS = ["user:a", "user:b", "company:c"]
LIMITS = [("company:c", "day", 100), ("user:a", "rolling:10m", 60), ("user:b", "total", 80)]


@dataclass(frozen=True)
class Step:
    op: str  # reserve | commit | release | consume | wait
    subject: str
    amount: int
    pick: int  # which open reservation a commit or release applies to
    seconds: int


steps = st.lists(
    st.builds(
        Step,
        st.sampled_from(["reserve", "reserve", "commit", "release", "consume", "wait"]),
        st.sampled_from(SUBJECTS),
        st.integers(0, 40),
        st.integers(0, 10),
        st.sampled_from([1, 30, 61, 300, 900]),
    ),
    min_size=1,
    max_size=40,
)


def run(quota: Quota, clock: FrozenClock, script: list[Step]) -> list[object]:
    quota.set_parents("user:a", ["company:c"])
    quota.set_parents("user:b", ["company:c"])
    for subject, window, value in LIMITS:
        quota.set_limit(subject, "tokens", window, value)
    open_holds: list[tuple[str, int]] = []
    outcomes: list[object] = []
    for step in script:
        if step.op == "wait":
            clock.advance(seconds=step.seconds)
            outcomes.append(None)
        elif step.op == "reserve":
            reserved = quota.reserve(step.subject, tokens=step.amount, ttl=120)
            if reserved.reservation is not None:
                open_holds.append((reserved.reservation.id, step.amount))
            outcomes.append(replace(reserved.decision, event_id=None))
        elif step.op == "consume":
            decision = quota.consume(step.subject, tokens=step.amount)
            outcomes.append(replace(decision, event_id=None))
        elif open_holds:
            hold_id, held = open_holds.pop(step.pick % len(open_holds))
            if step.op == "release":
                outcomes.append(quota.release(hold_id))
            elif quota.get_reservation(hold_id).live(clock.now()):
                decision = quota.commit(hold_id, tokens=min(step.amount, held))
                outcomes.append(replace(decision, event_id=None))
        for subject in SUBJECTS:
            for status in quota.usage(subject).limits:
                assert isinstance(status.used, int)
                assert isinstance(status.reserved, int)
                assert isinstance(status.limit, int)
                assert status.used + status.reserved <= status.limit, (step, status)
    return outcomes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_holds_and_spends_never_exceed_a_limit(script: list[Step]) -> None:
    clock = FrozenClock(START)
    with tokenquota.open("memory://", clock=clock) as quota:
        run(quota, clock, script)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_memory_and_sqlite_hold_alike(script: list[Step]) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for url in ("memory://", f"sqlite:///{Path(tmp) / 'h.db'}"):
            clock = FrozenClock(START)
            with tokenquota.open(url, clock=clock) as quota:
                results.append(run(quota, clock, script))
    assert results[0] == results[1]
