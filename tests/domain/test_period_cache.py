"""The remembered period answers exactly what computing it afresh answers.

``calendar_period`` keeps the last period per (unit, zone) and answers from it
while the instant asked about lies inside; these tests walk instants forwards,
backwards and across DST changes and compare with the uncached computation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.domain.windows import Calendar, _compute_period, calendar_period

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
