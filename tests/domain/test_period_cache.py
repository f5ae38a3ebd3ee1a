"""The remembered period answers exactly what computing it afresh answers.

``calendar_period`` keeps the last period per (unit, zone), and each calendar
``Window`` its own last period and bucket, and answer from them while the
instant asked about lies inside; these tests walk instants forwards, backwards
and across DST changes and compare with the uncached computation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.domain.clock import EPOCH
from tokenquota.domain.windows import Calendar, Window, _compute_period, calendar_period

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Stockholm", "Australia/Lord_Howe", "Asia/Kolkata")]
START = datetime(2026, 3, 28, 22, 59, 59, 999_999, tzinfo=UTC)  # the eve of a DST change


@settings(max_examples=200, deadline=None)
@given(
    unit=st.sampled_from(list(Calendar)),
    zone=st.sampled_from(ZONES),
    steps=st.lists(st.integers(-3 * 86_400 * 10**6, 3 * 86_400 * 10**6), max_size=30),
)
def test_every_answer_is_the_computed_period(
    unit: Calendar, zone: ZoneInfo, steps: list[int]
) -> None:
    at = START
    for step in steps:
        at += timedelta(microseconds=step)
        assert calendar_period(unit, at, zone) == _compute_period(unit, at, zone)


def test_a_boundary_moves_to_the_next_period_and_back() -> None:
    zone = ZoneInfo("Europe/Stockholm")
    start, end = calendar_period(Calendar.DAY, START, zone)
    assert start <= START < end
    after = calendar_period(Calendar.DAY, end, zone)
    assert after[0] == end
    assert calendar_period(Calendar.DAY, end - timedelta(microseconds=1), zone) == (start, end)
    # The same instant in another zone's offset is the same instant: same period.
    assert calendar_period(Calendar.DAY, START.astimezone(zone), zone) == (start, end)


# Each window remembers its own last period (zone, start, end, bucket) on
# itself. One window object per unit is shared by every example below, as one
# limit's window is shared by every decision, so the memo is exercised across
# examples, zones and boundaries; every answer must be the fresh computation's.
SHARED = {unit: Window.parse(unit.value) for unit in Calendar}


def fresh(unit: Calendar, at: datetime, zone: ZoneInfo) -> tuple[int, datetime]:
    start, end = _compute_period(unit, at, zone)
    return int((start - EPOCH).total_seconds()), end


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from(list(Calendar)),
    moves=st.lists(
        st.tuples(st.sampled_from(ZONES), st.integers(-3 * 86_400 * 10**6, 3 * 86_400 * 10**6)),
        max_size=30,
    ),
)
def test_a_windows_remembered_period_is_the_computed_one(
    unit: Calendar, moves: list[tuple[ZoneInfo, int]]
) -> None:
    window = SHARED[unit]
    at = START
    for zone, step in moves:
        at += timedelta(microseconds=step)
        bucket, end = fresh(unit, at, zone)
        assert window.bucket_of(at, zone) == bucket
        assert window.read_range(at, zone) == (bucket, bucket)
        assert window.reset_at(at, zone, {}) == end
        # Full: admitted again when the period ends.
        assert window.admits_at(at, zone, {bucket: 5}, 1, 5) == end
        # A copy compares equal whatever either remembers.
        assert Window.parse(unit.value) == window
        assert hash(Window.parse(unit.value)) == hash(window)


@settings(max_examples=100, deadline=None)
@given(
    unit=st.sampled_from([Calendar.MINUTE, Calendar.HOUR, Calendar.DAY]),
    zone=st.sampled_from(ZONES),
    offsets=st.lists(st.integers(-2, 2), min_size=1, max_size=20),
)
def test_a_windows_memo_is_exact_on_both_sides_of_each_boundary(
    unit: Calendar, zone: ZoneInfo, offsets: list[int]
) -> None:
    """A microsecond either side of a period's end (DST nights included) asks afresh."""
    window = Window.parse(unit.value)
    at = START
    for offset in offsets:
        _, end = fresh(unit, at, zone)
        at = end + timedelta(microseconds=offset)
        bucket, next_end = fresh(unit, at, zone)
        assert window.bucket_of(at, zone) == bucket
        assert window.reset_at(at, zone, {}) == next_end


@settings(max_examples=300, deadline=None)
@given(
    window=st.sampled_from(
        [
            "minute",
            "hour",
            "day",
            "week",
            "month",
            "year",
            "total",
            "rolling:1m",
            "rolling:90m",
            "rolling:7d",
            "rolling:3660d",
        ]
    ),
    zone=st.sampled_from(ZONES),
    now_step=st.integers(-3 * 86_400 * 10**6, 3 * 86_400 * 10**6),
    back=st.integers(0, 400 * 86_400 * 10**6),
)
def test_placement_is_read_range_and_bucket_of(
    window: str, zone: ZoneInfo, now_step: int, back: int
) -> None:
    """``Window.placement`` answers what the planner computed from the two calls."""
    parsed = Window.parse(window)
    now = START + timedelta(microseconds=now_step)
    at = now - timedelta(microseconds=back)
    read_at = now if parsed.is_rolling else at
    lo, hi = parsed.read_range(read_at, zone)
    bucket = parsed.bucket_of(at, zone)
    expected = (read_at, lo, hi, bucket if lo <= bucket <= hi else None)
    assert parsed.placement(at, now, zone) == expected
    assert Window.parse(window).placement(at, now, zone) == expected  # a fresh one, uncached
