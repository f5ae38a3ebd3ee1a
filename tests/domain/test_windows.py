"""Windows (contract §3): parsing, calendar periods, rolling buckets, resets, retry timing.

Every instant here is fixed; nothing reads the wall clock.
"""

from __future__ import annotations

import calendar as cal
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota import ValidationError
from tokenquota.domain.clock import EPOCH
from tokenquota.domain.windows import (
    MAX_ROLLING_SECONDS,
    ROLLING_BUCKETS,
    TOTAL,
    Calendar,
    Window,
    admits,
    calendar_period,
    parse_timezone,
)

Z_UTC = ZoneInfo("UTC")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
CHATHAM = ZoneInfo("Pacific/Chatham")

ZONES = (Z_UTC, STOCKHOLM, NEW_YORK, KOLKATA, LORD_HOWE, CHATHAM)
# The largest clock shift each zone has made since 1990 (Lord Howe moves by 30 minutes).
MAX_SHIFT = {
    "UTC": timedelta(0),
    "Europe/Stockholm": timedelta(hours=1),
    "America/New_York": timedelta(hours=1),
    "Asia/Kolkata": timedelta(0),
    "Australia/Lord_Howe": timedelta(minutes=30),
    "Pacific/Chatham": timedelta(hours=1),
}

TICK = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def epoch(at: datetime) -> int:
    """Whole seconds since the epoch (floor), the unit buckets are named in."""
    return (at - EPOCH) // timedelta(seconds=1)


def from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def window_usage(window: Window, buckets: Mapping[int, int], at: datetime) -> int:
    """What a store would sum for ``window`` as of ``at``."""
    lo, hi = window.read_range(at, Z_UTC)
    return sum(units for bucket, units in buckets.items() if lo <= bucket <= hi)


def in_range(window: Window, buckets: Mapping[int, int], at: datetime) -> dict[int, int]:
    """The buckets a store would hand to reset_at / admits_at as of ``at``."""
    lo, hi = window.read_range(at, Z_UTC)
    return {bucket: units for bucket, units in buckets.items() if lo <= bucket <= hi}


def add(window: Window, buckets: dict[int, int], at: datetime, units: int) -> None:
    bucket = window.bucket_of(at, Z_UTC)
    buckets[bucket] = buckets.get(bucket, 0) + units


# ---------------------------------------------------------------------------
# 1. Window.parse
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [c.value for c in Calendar])
def test_parse_calendar_names(name: str) -> None:
    window = Window.parse(name)
    assert window.calendar is Calendar(name)
    assert window.key == name
    assert str(window) == name
    assert not window.is_rolling
    assert not window.is_total
    assert window.rolling_seconds == 0


def test_calendar_names_are_exactly_the_six_of_the_spec() -> None:
    assert {c.value for c in Calendar} == {"minute", "hour", "day", "week", "month", "year"}


def test_parse_total() -> None:
    window = Window.parse("total")
    assert window is TOTAL
    assert window.key == "total"
    assert window.is_total
    assert not window.is_rolling
    assert window.calendar is None


@pytest.mark.parametrize(
    ("key", "seconds"),
    [
        ("rolling:1m", 60),
        ("rolling:90m", 90 * 60),
        ("rolling:1h", 3_600),
        ("rolling:24h", 86_400),
        ("rolling:1d", 86_400),
        ("rolling:30d", 30 * 86_400),
        ("rolling:3660d", 3660 * 86_400),
        ("rolling:87840h", 3660 * 86_400),
        ("rolling:5270400m", 3660 * 86_400),
    ],
)
def test_parse_rolling(key: str, seconds: int) -> None:
    window = Window.parse(key)
    assert window.key == key
    assert str(window) == key
    assert window.rolling_seconds == seconds
    assert window.is_rolling
    assert not window.is_total
    assert window.calendar is None


def test_rolling_bound_is_3660_days() -> None:
    assert MAX_ROLLING_SECONDS == 3660 * 86_400
    assert Window.parse("rolling:3660d").rolling_seconds == MAX_ROLLING_SECONDS


@pytest.mark.parametrize(
    "key", ["minute", "day", "month", "total", "rolling:1m", "rolling:7d", "rolling:12h"]
)
def test_parse_round_trips_its_key(key: str) -> None:
    window = Window.parse(key)
    assert Window.parse(window.key) == window
    assert Window.parse(window) is window
    assert hash(Window.parse(key)) == hash(window)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Day",
        "DAY",
        " day",
        "day ",
        "days",
        "daily",
        "weekly",
        "fortnight",
        "quarter",
        "second",
        "Total",
        "total ",
        "lifetime",
        "rolling",
        "rolling:",
        "rolling:h",
        "rolling:0d",
        "rolling:0m",
        "rolling:0h",
        "rolling:00h",
        "rolling:01h",
        "rolling:-1h",
        "rolling:+1h",
        "rolling:1w",
        "rolling:1s",
        "rolling:1y",
        "rolling:1H",
        "rolling:1.5h",
        "rolling: 1h",
        "rolling:1h ",
        "rolling:1h\n",
        "rolling:1 h",
        "rolling:1hh",
        "Rolling:1h",
        "rolling=1h",
        "rolling:5000d",
        "rolling:3661d",
        "rolling:87841h",
        "rolling:5270401m",
        "rolling:9999999999d",
        "rolling:99999999999d",
        "rolling:1d:1h",
    ],
)
def test_parse_rejects(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Window.parse(value, "limits[2].window")
    assert info.value.field == "limits[2].window"
    assert info.value.status == 422
    assert info.value.details["field"] == "limits[2].window"


@pytest.mark.parametrize("value", [None, 1, 0, 1.5, True, b"day", ["day"], {"day": 1}, 3600])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Window.parse(value, "rules.window")
    assert info.value.field == "rules.window"


def test_parse_default_field_is_window() -> None:
    with pytest.raises(ValidationError) as info:
        Window.parse("fortnight")
    assert info.value.field == "window"


def test_parse_timezone() -> None:
    assert parse_timezone("Europe/Stockholm") == STOCKHOLM
    for bad in ["Mars/Olympus_Mons", "", None, 3, "../etc/passwd"]:
        with pytest.raises(ValidationError) as info:
            parse_timezone(bad, "config.timezone")
        assert info.value.field == "config.timezone"


# ---------------------------------------------------------------------------
# 2. Calendar periods
# ---------------------------------------------------------------------------


def test_month_of_31_days_then_february_2027() -> None:
    january = (utc(2027, 1, 1), utc(2027, 2, 1))
    for day in (1, 29, 30, 31):
        for at in (utc(2027, 1, day), utc(2027, 1, day, 12), utc(2027, 1, day, 23, 59, 59)):
            assert calendar_period(Calendar.MONTH, at, Z_UTC) == january
    assert january[1] - january[0] == timedelta(days=31)
    february = calendar_period(Calendar.MONTH, utc(2027, 2, 1), Z_UTC)
    assert february == (utc(2027, 2, 1), utc(2027, 3, 1))
    assert february[1] - february[0] == timedelta(days=28)
    assert calendar_period(Calendar.MONTH, utc(2027, 2, 28, 23, 59, 59), Z_UTC) == february


def test_february_2028_has_29_days() -> None:
    february = calendar_period(Calendar.MONTH, utc(2028, 2, 29, 23, 59, 59, 999_999), Z_UTC)
    assert february == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert february[1] - february[0] == timedelta(days=29)
    assert calendar_period(Calendar.MONTH, utc(2028, 3, 1), Z_UTC)[0] == utc(2028, 3, 1)
    assert calendar_period(Calendar.DAY, utc(2028, 2, 29, 5), Z_UTC) == (
        utc(2028, 2, 29),
        utc(2028, 3, 1),
    )


@pytest.mark.parametrize("day", [29, 30, 31])
def test_month_window_bucket_range_and_reset(day: int) -> None:
    month = Window.parse("month")
    at = utc(2027, 1, day, 23, 59, 59)
    bucket = month.bucket_of(at, Z_UTC)
    assert bucket == epoch(utc(2027, 1, 1))
    assert month.read_range(at, Z_UTC) == (bucket, bucket)
    assert month.reset_at(at, Z_UTC, {}) == utc(2027, 2, 1)
    assert month.reset_at(at, Z_UTC, {bucket: 5}) == utc(2027, 2, 1)
    # The first instant of February is the next period, with its own bucket.
    after = utc(2027, 2, 1)
    assert month.bucket_of(after - TICK, Z_UTC) == bucket
    assert month.bucket_of(after, Z_UTC) == epoch(after)
    assert month.reset_at(after, Z_UTC, {}) == utc(2027, 3, 1)


@pytest.mark.parametrize(
    ("unit", "start"),
    [
        (Calendar.MINUTE, utc(2026, 12, 31, 23, 59)),
        (Calendar.HOUR, utc(2026, 12, 31, 23)),
        (Calendar.DAY, utc(2026, 12, 31)),
        (Calendar.MONTH, utc(2026, 12, 1)),
        (Calendar.YEAR, utc(2026, 1, 1)),
    ],
)
def test_new_year(unit: Calendar, start: datetime) -> None:
    last = utc(2026, 12, 31, 23, 59, 59)
    assert calendar_period(unit, last, Z_UTC) == (start, utc(2027, 1, 1))
    assert calendar_period(unit, last + timedelta(microseconds=999_999), Z_UTC)[1] == utc(
        2027, 1, 1
    )
    assert calendar_period(unit, utc(2027, 1, 1), Z_UTC)[0] == utc(2027, 1, 1)
    window = Window.parse(unit.value)
    assert window.reset_at(last, Z_UTC, {}) == utc(2027, 1, 1)


def test_new_year_on_a_sunday_is_a_new_week() -> None:
    assert date(2028, 12, 31).weekday() == 6
    last = utc(2028, 12, 31, 23, 59, 59)
    assert calendar_period(Calendar.WEEK, last, Z_UTC) == (utc(2028, 12, 25), utc(2029, 1, 1))
    assert Window.parse("week").reset_at(last, Z_UTC, {}) == utc(2029, 1, 1)
    assert calendar_period(Calendar.WEEK, utc(2029, 1, 1), Z_UTC)[0] == utc(2029, 1, 1)


def test_a_week_straddles_new_year_when_it_falls_midweek() -> None:
    assert date(2026, 12, 31).weekday() == 3  # Thursday
    week = (utc(2026, 12, 28), utc(2027, 1, 4))
    assert calendar_period(Calendar.WEEK, utc(2026, 12, 31, 23, 59, 59), Z_UTC) == week
    assert calendar_period(Calendar.WEEK, utc(2027, 1, 1), Z_UTC) == week
    assert calendar_period(Calendar.WEEK, utc(2027, 1, 3, 23, 59, 59), Z_UTC) == week


def test_weeks_start_on_monday() -> None:
    sunday_night = utc(2026, 3, 15, 23, 59, 59)
    assert sunday_night.weekday() == 6
    week = calendar_period(Calendar.WEEK, sunday_night, Z_UTC)
    assert week == (utc(2026, 3, 9), utc(2026, 3, 16))
    assert week[0].weekday() == 0
    assert Window.parse("week").reset_at(sunday_night, Z_UTC, {}) == utc(2026, 3, 16)
    monday = utc(2026, 3, 16)
    assert calendar_period(Calendar.WEEK, monday, Z_UTC) == (monday, utc(2026, 3, 23))
    for day in range(9, 16):
        assert calendar_period(Calendar.WEEK, utc(2026, 3, day, 12), Z_UTC) == week


@pytest.mark.parametrize("unit", list(Calendar))
def test_half_open_periods(unit: Calendar) -> None:
    """An instant exactly at a period start belongs to the new period, not the old one."""
    start, end = calendar_period(unit, utc(2026, 3, 10, 12, 34, 56, 789), Z_UTC)
    assert calendar_period(unit, start, Z_UTC) == (start, end)
    assert calendar_period(unit, end, Z_UTC)[0] == end
    assert calendar_period(unit, end - TICK, Z_UTC) == (start, end)
    assert calendar_period(unit, start - TICK, Z_UTC)[1] == start
    window = Window.parse(unit.value)
    assert window.bucket_of(end, Z_UTC) == epoch(end) != window.bucket_of(end - TICK, Z_UTC)
    assert window.reset_at(start, Z_UTC, {}) == end
    assert window.reset_at(end, Z_UTC, {}) != end


@pytest.mark.parametrize(
    ("unit", "start", "end"),
    [
        (Calendar.MINUTE, utc(2026, 3, 10, 12, 34), utc(2026, 3, 10, 12, 35)),
        (Calendar.HOUR, utc(2026, 3, 10, 12), utc(2026, 3, 10, 13)),
        (Calendar.DAY, utc(2026, 3, 10), utc(2026, 3, 11)),
        (Calendar.WEEK, utc(2026, 3, 9), utc(2026, 3, 16)),
        (Calendar.MONTH, utc(2026, 3, 1), utc(2026, 4, 1)),
        (Calendar.YEAR, utc(2026, 1, 1), utc(2027, 1, 1)),
    ],
)
def test_calendar_periods_in_utc(unit: Calendar, start: datetime, end: datetime) -> None:
    at = utc(2026, 3, 10, 12, 34, 56, 789)
    assert calendar_period(unit, at, Z_UTC) == (start, end)
    # The same instant expressed in another offset is the same instant.
    assert calendar_period(unit, at.astimezone(STOCKHOLM), Z_UTC) == (start, end)
    window = Window.parse(unit.value)
    assert window.bucket_of(at, Z_UTC) == epoch(start)
    assert window.read_range(at, Z_UTC) == (epoch(start), epoch(start))
    assert window.reset_at(at, Z_UTC, {epoch(start): 7}) == end


@pytest.mark.parametrize(
    ("zone", "local_day", "start", "end", "hours"),
    [
        (STOCKHOLM, date(2026, 3, 29), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),
        (STOCKHOLM, date(2026, 10, 25), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
        (STOCKHOLM, date(2026, 3, 10), utc(2026, 3, 9, 23), utc(2026, 3, 10, 23), 24),
        (NEW_YORK, date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
        (NEW_YORK, date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
        (NEW_YORK, date(2026, 3, 10), utc(2026, 3, 10, 4), utc(2026, 3, 11, 4), 24),
    ],
)
def test_local_days_across_dst(
    zone: ZoneInfo, local_day: date, start: datetime, end: datetime, hours: int
) -> None:
    assert end - start == timedelta(hours=hours)
    day = Window.parse("day")
    # Every instant of the local day, in half-hour steps, is in the one period.
    at = start
    while at < end:
        assert calendar_period(Calendar.DAY, at, zone) == (start, end)
        assert at.astimezone(zone).date() == local_day
        assert day.bucket_of(at, zone) == epoch(start)
        # reset_at is the next local midnight, expressed in UTC.
        reset = day.reset_at(at, zone, {})
        assert reset == end
        assert reset is not None
        assert reset.utcoffset() == timedelta(0)
        assert reset.astimezone(zone).date() == local_day + DAY
        assert reset.astimezone(zone).time() == time(0)
        at += timedelta(minutes=30)
    assert calendar_period(Calendar.DAY, end - TICK, zone) == (start, end)
    assert calendar_period(Calendar.DAY, end, zone)[0] == end
    assert calendar_period(Calendar.DAY, start - TICK, zone)[1] == start


def test_reset_at_day_just_before_local_midnight() -> None:
    day = Window.parse("day")
    # 23:59:59 CEST on the 23-hour day is 21:59:59 UTC.
    assert day.reset_at(utc(2026, 3, 29, 21, 59, 59), STOCKHOLM, {}) == utc(2026, 3, 29, 22)
    # 23:59:59 CET on the 25-hour day is 22:59:59 UTC.
    assert day.reset_at(utc(2026, 10, 25, 22, 59, 59), STOCKHOLM, {}) == utc(2026, 10, 25, 23)
    # 23:59:59 EST on New York's 25-hour day is 04:59:59 UTC the next day.
    assert day.reset_at(utc(2026, 11, 2, 4, 59, 59), NEW_YORK, {}) == utc(2026, 11, 2, 5)


def test_new_york_fall_back_has_two_one_oclock_hours() -> None:
    first = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)  # EDT, fold=0
    second = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK, fold=1)  # EST
    assert first.astimezone(UTC) == utc(2026, 11, 1, 5, 30)
    assert second.astimezone(UTC) == utc(2026, 11, 1, 6, 30)
    p1 = calendar_period(Calendar.HOUR, first, NEW_YORK)
    p2 = calendar_period(Calendar.HOUR, second, NEW_YORK)
    assert p1 == (utc(2026, 11, 1, 5), utc(2026, 11, 1, 6))
    assert p2 == (utc(2026, 11, 1, 6), utc(2026, 11, 1, 7))
    for start, end in (p1, p2):
        assert end - start == HOUR
        local = start.astimezone(NEW_YORK)
        assert (local.date(), local.time()) == (date(2026, 11, 1), time(1))
    hour = Window.parse("hour")
    assert hour.bucket_of(first, NEW_YORK) != hour.bucket_of(second, NEW_YORK)
    assert hour.reset_at(first, NEW_YORK, {}) == utc(2026, 11, 1, 6)
    assert hour.reset_at(second, NEW_YORK, {}) == utc(2026, 11, 1, 7)
    # 00:xx EDT before and 02:xx EST after are ordinary hours.
    assert calendar_period(Calendar.HOUR, utc(2026, 11, 1, 4, 59), NEW_YORK) == (
        utc(2026, 11, 1, 4),
        utc(2026, 11, 1, 5),
    )
    assert calendar_period(Calendar.HOUR, utc(2026, 11, 1, 7), NEW_YORK) == (
        utc(2026, 11, 1, 7),
        utc(2026, 11, 1, 8),
    )


def test_new_york_spring_forward_hours() -> None:
    # 01:59:59 EST is followed by 03:00:00 EDT.
    before = utc(2026, 3, 8, 6, 59, 59)
    assert before.astimezone(NEW_YORK).hour == 1
    assert calendar_period(Calendar.HOUR, before, NEW_YORK) == (
        utc(2026, 3, 8, 6),
        utc(2026, 3, 8, 7),
    )
    after = utc(2026, 3, 8, 7)
    assert after.astimezone(NEW_YORK).hour == 3
    assert calendar_period(Calendar.HOUR, after, NEW_YORK) == (after, utc(2026, 3, 8, 8))


def test_stockholm_hours_across_both_changes() -> None:
    # Spring: 01:59:59 CET (00:59:59 UTC) is followed by 03:00 CEST (01:00 UTC).
    assert calendar_period(Calendar.HOUR, utc(2026, 3, 29, 0, 59, 59), STOCKHOLM) == (
        utc(2026, 3, 29, 0),
        utc(2026, 3, 29, 1),
    )
    assert calendar_period(Calendar.HOUR, utc(2026, 3, 29, 1), STOCKHOLM) == (
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 2),
    )
    # Autumn: 02:xx CEST then 02:xx CET, two distinct hours.
    assert calendar_period(Calendar.HOUR, utc(2026, 10, 25, 0, 30), STOCKHOLM) == (
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
    )
    assert calendar_period(Calendar.HOUR, utc(2026, 10, 25, 1, 30), STOCKHOLM) == (
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    )


@pytest.mark.parametrize(
    ("zone", "at", "start", "end"),
    [
        # Week of Sunday 2026-03-29 in Stockholm: Monday 00:00 CET to Monday 00:00 CEST.
        (STOCKHOLM, utc(2026, 3, 29, 12), utc(2026, 3, 22, 23), utc(2026, 3, 29, 22)),
        # Week of Sunday 2026-10-25: Monday 00:00 CEST to Monday 00:00 CET.
        (STOCKHOLM, utc(2026, 10, 25, 12), utc(2026, 10, 18, 22), utc(2026, 10, 25, 23)),
        # New York: week of Sunday 2026-03-08 and of Sunday 2026-11-01.
        (NEW_YORK, utc(2026, 3, 8, 12), utc(2026, 3, 2, 5), utc(2026, 3, 9, 4)),
        (NEW_YORK, utc(2026, 11, 1, 12), utc(2026, 10, 26, 4), utc(2026, 11, 2, 5)),
        # Sunday 23:59:59 local is still the old week; local Monday 00:00 the new one.
        (STOCKHOLM, utc(2026, 3, 29, 21, 59, 59), utc(2026, 3, 22, 23), utc(2026, 3, 29, 22)),
        (STOCKHOLM, utc(2026, 3, 29, 22), utc(2026, 3, 29, 22), utc(2026, 4, 5, 22)),
    ],
)
def test_weeks_across_dst(zone: ZoneInfo, at: datetime, start: datetime, end: datetime) -> None:
    assert calendar_period(Calendar.WEEK, at, zone) == (start, end)
    for boundary in (start, end):
        local = boundary.astimezone(zone)
        assert local.weekday() == 0
        assert local.time() == time(0)
    assert Window.parse("week").reset_at(at, zone, {}) == end


@pytest.mark.parametrize(
    ("zone", "at", "start", "end"),
    [
        (STOCKHOLM, utc(2026, 3, 15), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),
        (STOCKHOLM, utc(2026, 10, 15), utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)),
        (NEW_YORK, utc(2026, 3, 15), utc(2026, 3, 1, 5), utc(2026, 4, 1, 4)),
        (NEW_YORK, utc(2026, 11, 15), utc(2026, 11, 1, 4), utc(2026, 12, 1, 5)),
        # 2026-03-31 23:30 CEST is still March; 2026-03-31 22:00 UTC is April 1st in Stockholm.
        (STOCKHOLM, utc(2026, 3, 31, 21, 30), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),
        (STOCKHOLM, utc(2026, 3, 31, 22), utc(2026, 3, 31, 22), utc(2026, 4, 30, 22)),
        # UTC midnight on 1 March is still 28 February, 19:00 EST, in New York.
        (NEW_YORK, utc(2026, 3, 1), utc(2026, 2, 1, 5), utc(2026, 3, 1, 5)),
    ],
)
def test_months_across_dst(zone: ZoneInfo, at: datetime, start: datetime, end: datetime) -> None:
    assert calendar_period(Calendar.MONTH, at, zone) == (start, end)
    for boundary in (start, end):
        local = boundary.astimezone(zone)
        assert local.day == 1
        assert local.time() == time(0)
    assert Window.parse("month").reset_at(at, zone, {}) == end


def test_year_in_stockholm() -> None:
    assert calendar_period(Calendar.YEAR, utc(2026, 6, 1), STOCKHOLM) == (
        utc(2025, 12, 31, 23),
        utc(2026, 12, 31, 23),
    )
    # 2026-12-31 23:30 UTC is already 2027 in Stockholm.
    assert calendar_period(Calendar.YEAR, utc(2026, 12, 31, 23, 30), STOCKHOLM)[0] == utc(
        2026, 12, 31, 23
    )


def test_kolkata_half_hour_offset_hours() -> None:
    at = utc(2026, 3, 10, 12)  # 17:30 IST
    assert calendar_period(Calendar.HOUR, at, KOLKATA) == (
        utc(2026, 3, 10, 11, 30),
        utc(2026, 3, 10, 12, 30),
    )
    start = utc(2026, 3, 10, 11, 30)  # 17:00 IST exactly: a new hour
    assert calendar_period(Calendar.HOUR, start, KOLKATA)[0] == start
    assert calendar_period(Calendar.HOUR, start - TICK, KOLKATA) == (
        utc(2026, 3, 10, 10, 30),
        start,
    )
    hour = Window.parse("hour")
    assert hour.bucket_of(at, KOLKATA) == epoch(start)
    assert hour.reset_at(at, KOLKATA, {}) == utc(2026, 3, 10, 12, 30)
    # Minutes are unaffected by the half-hour offset.
    assert calendar_period(Calendar.MINUTE, utc(2026, 3, 10, 12, 0, 30), KOLKATA) == (
        utc(2026, 3, 10, 12),
        utc(2026, 3, 10, 12, 1),
    )
    # The local day starts at 18:30 UTC the day before.
    assert calendar_period(Calendar.DAY, at, KOLKATA) == (
        utc(2026, 3, 9, 18, 30),
        utc(2026, 3, 10, 18, 30),
    )


def test_chatham_quarter_hour_offset_hours() -> None:
    at = utc(2026, 3, 10, 12)  # 01:45 CHADT (+13:45) on 11 March
    assert at.astimezone(CHATHAM).utcoffset() == timedelta(hours=13, minutes=45)
    assert calendar_period(Calendar.HOUR, at, CHATHAM) == (
        utc(2026, 3, 10, 11, 15),
        utc(2026, 3, 10, 12, 15),
    )


def test_chatham_changes_clocks_mid_hour_but_hours_stay_whole() -> None:
    """Chatham moves by a whole hour at 03:45 local: its UTC grid of hours (:15) is unchanged."""
    transition = utc(2026, 4, 4, 14)  # 2026-04-05 03:45 CHADT (+13:45) -> 02:45 CHAST (+12:45)
    assert _offset(transition - TICK, CHATHAM) == timedelta(hours=13, minutes=45)
    assert _offset(transition, CHATHAM) == timedelta(hours=12, minutes=45)
    hour = (utc(2026, 4, 4, 13, 15), utc(2026, 4, 4, 14, 15))
    assert calendar_period(Calendar.HOUR, transition - TICK, CHATHAM) == hour
    assert calendar_period(Calendar.HOUR, transition, CHATHAM) == hour


def test_lord_howe_days_last_23_and_a_half_or_24_and_a_half_hours() -> None:
    # Lord Howe moves its clocks by 30 minutes: back on 2026-04-05, forward on 2026-10-04.
    start, end = calendar_period(
        Calendar.DAY, datetime(2026, 4, 5, 12, tzinfo=LORD_HOWE), LORD_HOWE
    )
    assert end - start == timedelta(hours=24, minutes=30)
    start, end = calendar_period(
        Calendar.DAY, datetime(2026, 10, 4, 12, tzinfo=LORD_HOWE), LORD_HOWE
    )
    assert end - start == timedelta(hours=23, minutes=30)


@pytest.mark.parametrize(
    ("transition", "before", "after"),
    [
        # 2026-04-05 02:00 LHDT (+11) -> 01:30 LHST (+10:30): 01:30-02:00 happens twice.
        (utc(2026, 4, 4, 15), (utc(2026, 4, 4, 14), utc(2026, 4, 4, 15)), utc(2026, 4, 4, 15, 30)),
        # 2026-10-04 02:00 LHST (+10:30) -> 02:30 LHDT (+11): 02:00-02:30 never happens.
        (
            utc(2026, 10, 3, 15, 30),
            (utc(2026, 10, 3, 14, 30), utc(2026, 10, 3, 15, 30)),
            utc(2026, 10, 3, 16),
        ),
    ],
)
def test_lord_howe_hours_tile_across_its_half_hour_shift(
    transition: datetime, before: tuple[datetime, datetime], after: datetime
) -> None:
    """Hour periods stay half-open and disjoint when the clock moves by 30 minutes.

    The hour in force at the transition is cut to 30 minutes: it starts at the
    transition, not at a wall-clock hour that (in the new offset) lies before it.
    """
    assert (transition - TICK).astimezone(LORD_HOWE).utcoffset() != transition.astimezone(
        LORD_HOWE
    ).utcoffset()
    assert calendar_period(Calendar.HOUR, transition - TICK, LORD_HOWE) == before
    assert calendar_period(Calendar.HOUR, transition, LORD_HOWE) == (transition, after)
    assert calendar_period(Calendar.HOUR, after, LORD_HOWE)[0] == after


# ---------------------------------------------------------------------------
# 3. Rolling windows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "bucket"),
    [
        ("rolling:1m", 1),
        ("rolling:5m", 5),
        ("rolling:1h", 60),
        ("rolling:24h", 1_440),
        ("rolling:1d", 1_440),
        ("rolling:7d", 10_080),
        ("rolling:30d", 12 * 3_600),
        ("rolling:3660d", 61 * 86_400),
    ],
)
def test_bucket_is_one_sixtieth(key: str, bucket: int) -> None:
    window = Window.parse(key)
    assert window.bucket_seconds == bucket
    assert window.bucket_seconds * ROLLING_BUCKETS == window.rolling_seconds
    assert ROLLING_BUCKETS == 60


@pytest.mark.parametrize("key", ["rolling:1m", "rolling:1h", "rolling:30d", "rolling:7d"])
@pytest.mark.parametrize("zone", [Z_UTC, STOCKHOLM, KOLKATA, LORD_HOWE])
def test_read_range_is_60_buckets_ending_at_the_current_one(key: str, zone: ZoneInfo) -> None:
    window = Window.parse(key)
    step = window.bucket_seconds
    at = utc(2026, 3, 10, 12, 34, 56, 789)
    current = window.bucket_of(at, zone)
    # Buckets are aligned to the epoch, whatever the time zone.
    assert current % step == 0
    assert current == window.bucket_of(at, Z_UTC)
    assert from_epoch(current) <= at < from_epoch(current + step)
    lo, hi = window.read_range(at, zone)
    assert hi == current
    assert (hi - lo) % step == 0
    assert len(range(lo, hi + 1, step)) == 60
    assert from_epoch(hi + step) - from_epoch(lo) == timedelta(seconds=window.rolling_seconds)


def test_rolling_hour_bucket_of() -> None:
    window = Window.parse("rolling:1h")
    assert window.bucket_of(utc(2026, 3, 10, 12, 34, 56, 789), Z_UTC) == epoch(
        utc(2026, 3, 10, 12, 34)
    )
    assert window.bucket_of(utc(2026, 3, 10, 12, 34), Z_UTC) == epoch(utc(2026, 3, 10, 12, 34))
    thirty = Window.parse("rolling:30d")
    assert thirty.bucket_of(utc(2026, 3, 10, 13), Z_UTC) == epoch(utc(2026, 3, 10, 12))
    assert thirty.bucket_of(utc(2026, 3, 10, 11, 59, 59), Z_UTC) == epoch(utc(2026, 3, 10))


def test_usage_leaves_a_rolling_hour_bucket_by_bucket() -> None:
    window = Window.parse("rolling:1h")
    buckets: dict[int, int] = {}
    add(window, buckets, utc(2026, 3, 10, 10), 100)  # long gone by 12:00
    add(window, buckets, utc(2026, 3, 10, 12, 0, 30), 5)
    add(window, buckets, utc(2026, 3, 10, 12, 0, 45), 1)  # same bucket
    add(window, buckets, utc(2026, 3, 10, 12, 10), 3)
    add(window, buckets, utc(2026, 3, 10, 12, 59, 59), 2)
    assert len(buckets) == 4

    expected = [
        (utc(2026, 3, 10, 12, 0, 59), 6, utc(2026, 3, 10, 13)),
        (utc(2026, 3, 10, 12, 59, 59), 11, utc(2026, 3, 10, 13)),
        # The 12:00 bucket leaves 59 min 30 s after its first event: at most W/60 early.
        (utc(2026, 3, 10, 13), 5, utc(2026, 3, 10, 13, 10)),
        (utc(2026, 3, 10, 13, 9, 59), 5, utc(2026, 3, 10, 13, 10)),
        (utc(2026, 3, 10, 13, 10), 2, utc(2026, 3, 10, 13, 59)),
        (utc(2026, 3, 10, 13, 58, 59), 2, utc(2026, 3, 10, 13, 59)),
        (utc(2026, 3, 10, 13, 59), 0, None),
        (utc(2026, 3, 10, 15), 0, None),
    ]
    for at, used, reset in expected:
        assert window_usage(window, buckets, at) == used, at
        assert window.reset_at(at, Z_UTC, in_range(window, buckets, at)) == reset, at


def test_usage_leaves_a_rolling_30_days_in_12_hour_steps() -> None:
    window = Window.parse("rolling:30d")
    buckets: dict[int, int] = {}
    add(window, buckets, utc(2026, 3, 10, 13), 40)  # bucket 12:00
    add(window, buckets, utc(2026, 3, 10, 23, 59), 2)  # same bucket
    add(window, buckets, utc(2026, 3, 11, 0, 1), 7)  # bucket 00:00 next day
    leaves = utc(2026, 4, 9, 12)  # 30 days after the bucket started
    assert window.reset_at(utc(2026, 3, 20), Z_UTC, buckets) == leaves
    assert window_usage(window, buckets, leaves - TICK) == 49
    assert window_usage(window, buckets, leaves) == 7
    assert window.reset_at(leaves, Z_UTC, in_range(window, buckets, leaves)) == utc(2026, 4, 10)
    assert window_usage(window, buckets, utc(2026, 4, 10)) == 0
    assert (
        window.reset_at(utc(2026, 4, 10), Z_UTC, in_range(window, buckets, utc(2026, 4, 10)))
        is None
    )


def test_rolling_reset_at_ignores_empty_buckets() -> None:
    window = Window.parse("rolling:1h")
    at = utc(2026, 3, 10, 12, 30)
    assert window.reset_at(at, Z_UTC, {}) is None
    b1 = epoch(utc(2026, 3, 10, 12))
    b2 = epoch(utc(2026, 3, 10, 12, 20))
    assert window.reset_at(at, Z_UTC, {b1: 0, b2: 0}) is None
    assert window.reset_at(at, Z_UTC, {b1: 0, b2: 4}) == utc(2026, 3, 10, 13, 20)


def test_total_window() -> None:
    at = utc(2026, 3, 10, 12)
    assert TOTAL.bucket_of(at, Z_UTC) == 0
    assert TOTAL.bucket_of(utc(1999, 1, 1), STOCKHOLM) == 0
    assert TOTAL.read_range(at, Z_UTC) == (0, 0)
    assert TOTAL.reset_at(at, Z_UTC, {0: 10}) is None


# ---------------------------------------------------------------------------
# 4. Admission and retry timing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "amount", "limit", "ok"),
    [
        (0, 0, 0, False),  # a cap of 0 blocks everything
        (0, 1, 0, False),
        (0, 1, 1, True),
        (0, 10, 10, True),  # filling the budget exactly is allowed
        (0, 11, 10, False),
        (5, 5, 10, True),
        (5, 6, 10, False),
        (9, 0, 10, True),
        (10, 0, 10, False),  # a spent budget makes even a zero amount wait
        (11, 0, 10, False),
        (12, 1, 10, False),
    ],
)
def test_admits(used: int, amount: int, limit: int, ok: bool) -> None:
    assert admits(used, amount, limit) is ok


def test_admits_at_calendar_is_now_or_the_next_period() -> None:
    day = Window.parse("day")
    at = utc(2026, 3, 10, 12)
    bucket = {day.bucket_of(at, Z_UTC): 90}
    assert day.admits_at(at, Z_UTC, bucket, 10, 100) == at
    assert day.admits_at(at, Z_UTC, bucket, 11, 100) == utc(2026, 3, 11)
    assert day.admits_at(at, Z_UTC, {day.bucket_of(at, Z_UTC): 100}, 0, 100) == utc(2026, 3, 11)
    # In Stockholm: the next local midnight, 23:00 UTC.
    assert day.admits_at(at, STOCKHOLM, bucket, 11, 100) == utc(2026, 3, 10, 23)
    # On the 23-hour day the next midnight is at 22:00 UTC.
    assert day.admits_at(utc(2026, 3, 29, 12), STOCKHOLM, {1: 100}, 1, 100) == utc(2026, 3, 29, 22)
    month = Window.parse("month")
    assert month.admits_at(at, Z_UTC, {1: 100}, 1, 100) == utc(2026, 4, 1)
    minute = Window.parse("minute")
    assert minute.admits_at(at, Z_UTC, {1: 100}, 1, 100) == utc(2026, 3, 10, 12, 1)


def test_admits_at_never() -> None:
    at = utc(2026, 3, 10, 12)
    for key in ("day", "rolling:1h", "total"):
        window = Window.parse(key)
        assert window.admits_at(at, Z_UTC, {}, 101, 100) is None, key  # more than the cap
        assert window.admits_at(at, Z_UTC, {}, 0, 0) is None, key  # a cap of 0
        assert window.admits_at(at, Z_UTC, {}, 1, 0) is None, key
        assert window.admits_at(at, Z_UTC, {}, 100, 100) == at, key
    assert TOTAL.admits_at(at, Z_UTC, {0: 100}, 1, 100) is None
    assert TOTAL.admits_at(at, Z_UTC, {0: 99}, 1, 100) == at


def test_admits_at_rolling_waits_for_enough_buckets_to_leave() -> None:
    window = Window.parse("rolling:1h")
    buckets: dict[int, int] = {}
    add(window, buckets, utc(2026, 3, 10, 12, 0, 30), 5)
    add(window, buckets, utc(2026, 3, 10, 12, 10), 3)
    add(window, buckets, utc(2026, 3, 10, 12, 59), 2)
    at = utc(2026, 3, 10, 12, 59, 59)
    assert window.admits_at(at, Z_UTC, buckets, 0, 11) == at
    assert window.admits_at(at, Z_UTC, buckets, 1, 11) == at
    assert window.admits_at(at, Z_UTC, buckets, 2, 11) == utc(2026, 3, 10, 13)
    assert window.admits_at(at, Z_UTC, buckets, 0, 10) == utc(2026, 3, 10, 13)
    assert window.admits_at(at, Z_UTC, buckets, 5, 10) == utc(2026, 3, 10, 13)
    assert window.admits_at(at, Z_UTC, buckets, 6, 10) == utc(2026, 3, 10, 13, 10)
    assert window.admits_at(at, Z_UTC, buckets, 8, 10) == utc(2026, 3, 10, 13, 10)
    assert window.admits_at(at, Z_UTC, buckets, 9, 10) == utc(2026, 3, 10, 13, 59)
    assert window.admits_at(at, Z_UTC, buckets, 10, 10) == utc(2026, 3, 10, 13, 59)
    assert window.admits_at(at, Z_UTC, buckets, 11, 10) is None
    # Zero buckets never delay anything.
    assert window.admits_at(
        at, Z_UTC, {**buckets, epoch(utc(2026, 3, 10, 12, 5)): 0}, 6, 10
    ) == utc(2026, 3, 10, 13, 10)
    # What admits_at promises holds: the window admits then and not a moment before.
    for amount in range(11):
        when = window.admits_at(at, Z_UTC, buckets, amount, 10)
        assert when is not None
        assert admits(window_usage(window, buckets, when), amount, 10)
        if when > at:
            assert not admits(window_usage(window, buckets, when - TICK), amount, 10)


# ---------------------------------------------------------------------------
# 5. Properties
# ---------------------------------------------------------------------------


def _offset(at: datetime, zone: ZoneInfo) -> timedelta:
    offset = at.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _transitions(zone: ZoneInfo, first_year: int, last_year: int) -> list[datetime]:
    """The instants at which ``zone`` changes its UTC offset, found by bisection."""
    found: list[datetime] = []
    day = utc(first_year, 1, 1)
    stop = utc(last_year + 1, 1, 1)
    while day < stop:
        after = day + DAY
        if _offset(day, zone) != _offset(after, zone):
            lo, hi = epoch(day), epoch(after)  # zones change offset on whole seconds
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(from_epoch(mid), zone) == _offset(day, zone):
                    lo = mid
                else:
                    hi = mid
            found.append(from_epoch(hi))
        day = after
    return found


TRANSITIONS = {
    zone.key: _transitions(zone, 2025, 2027) + _transitions(zone, 2040, 2040) for zone in ZONES
}
LOW = epoch(utc(1990, 1, 1))
HIGH = epoch(utc(2100, 1, 1))


@st.composite
def zoned_instants(draw: st.DrawFn) -> tuple[ZoneInfo, datetime]:
    """A zone and an aware instant: uniform, near a DST change, or on a local wall clock."""
    zone = draw(st.sampled_from(ZONES))
    how = draw(st.sampled_from(["uniform", "transition", "wall"]))
    if how == "transition" and TRANSITIONS[zone.key]:
        base = draw(st.sampled_from(TRANSITIONS[zone.key]))
        seconds = draw(
            st.one_of(st.integers(-2 * 3_600, 2 * 3_600), st.integers(-3 * 86_400, 3 * 86_400))
        )
        at = base + timedelta(seconds=seconds, microseconds=draw(st.sampled_from([0, 999_999])))
    elif how == "wall":
        year = draw(st.integers(1990, 2099))
        month = draw(st.integers(1, 12))
        day = draw(st.integers(1, cal.monthrange(year, month)[1]))
        at = datetime(
            year,
            month,
            day,
            draw(st.integers(0, 23)),
            draw(st.sampled_from([0, 0, 15, 29, 30, 45, 59])),
            draw(st.sampled_from([0, 0, 59])),
            draw(st.sampled_from([0, 0, 999_999])),
            tzinfo=zone,
            fold=draw(st.integers(0, 1)),
        )
    else:
        at = EPOCH + timedelta(microseconds=draw(st.integers(LOW * 10**6, HIGH * 10**6)))
    # Hand it over in a random representation: UTC or the zone itself.
    return zone, at.astimezone(draw(st.sampled_from([UTC, zone])))


def check_tiling(unit: Calendar, zone: ZoneInfo, at: datetime) -> None:
    start, end = calendar_period(unit, at, zone)
    assert start.utcoffset() == timedelta(0)
    assert end.utcoffset() == timedelta(0)
    assert start <= at < end
    # Consecutive periods tile time: the next begins where this one ends,
    # and every instant of [start, end) maps back to this very period.
    assert calendar_period(unit, end, zone)[0] == end
    assert calendar_period(unit, start - TICK, zone)[1] == start
    assert calendar_period(unit, start, zone) == (start, end)
    assert calendar_period(unit, end - TICK, zone) == (start, end)
    window = Window.parse(unit.value)
    assert window.bucket_of(at, zone) == epoch(start)
    assert window.reset_at(at, zone, {}) == end


def check_length(unit: Calendar, zone: ZoneInfo, at: datetime) -> None:
    start, end = calendar_period(unit, at, zone)
    length = end - start
    shift = MAX_SHIFT[zone.key]
    if unit is Calendar.MINUTE:
        assert length == timedelta(minutes=1)
        return
    if unit is Calendar.HOUR:
        # A whole-hour shift leaves every hour 60 minutes long; Lord Howe's
        # 30-minute shift makes the hour at each change 30 minutes long.
        if zone.key == "Australia/Lord_Howe":
            assert length in (timedelta(minutes=30), HOUR)
        else:
            assert length == HOUR
        return
    local_start = start.astimezone(zone)
    local_end = end.astimezone(zone)
    # Calendar periods run from local midnight to local midnight...
    assert local_start.time() == time(0)
    assert local_end.time() == time(0)
    first = local_start.date()
    if unit is Calendar.DAY:
        after = first + DAY
    elif unit is Calendar.WEEK:
        assert first.weekday() == 0
        after = first + timedelta(days=7)
    elif unit is Calendar.MONTH:
        assert first.day == 1
        after = (first + timedelta(days=31)).replace(day=1)
        assert 28 <= (after - first).days <= 31
    else:
        assert (first.month, first.day) == (1, 1)
        after = first.replace(year=first.year + 1)
        assert (after - first).days == (366 if cal.isleap(first.year) else 365)
    assert local_end.date() == after
    assert first <= at.astimezone(zone).date() < after
    # ... so they last the nominal span, corrected by the DST shift between the two midnights.
    nominal = after - first
    assert length == nominal + _offset(start, zone) - _offset(end, zone)
    assert nominal - shift <= length <= nominal + shift
    if unit is Calendar.DAY:
        low, high = {
            timedelta(0): (timedelta(hours=24), timedelta(hours=24)),
            timedelta(minutes=30): (timedelta(hours=23.5), timedelta(hours=24.5)),
            timedelta(hours=1): (timedelta(hours=23), timedelta(hours=25)),
        }[shift]
        assert low <= length <= high


@settings(max_examples=200, deadline=None)
@given(zoned_instants())
def test_calendar_periods_tile_time(zoned: tuple[ZoneInfo, datetime]) -> None:
    """start <= t < end, and the period of ``end`` starts at ``end``, for every unit."""
    zone, at = zoned
    for unit in Calendar:
        check_tiling(unit, zone, at)


@settings(max_examples=200, deadline=None)
@given(zoned_instants())
def test_calendar_period_lengths(zoned: tuple[ZoneInfo, datetime]) -> None:
    zone, at = zoned
    for unit in Calendar:
        check_length(unit, zone, at)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([z for z in ZONES if TRANSITIONS[z.key]]),
    st.data(),
    st.integers(-90 * 60, 90 * 60),
    st.sampled_from([0, 1, 999_999]),
)
def test_calendar_periods_around_dst_changes(
    zone: ZoneInfo, data: st.DataObject, seconds: int, micros: int
) -> None:
    """The same properties, within 90 minutes of a change of UTC offset."""
    transition = data.draw(st.sampled_from(TRANSITIONS[zone.key]), label="transition")
    at = transition + timedelta(seconds=seconds, microseconds=micros)
    for unit in Calendar:
        check_tiling(unit, zone, at)
        check_length(unit, zone, at)


ROLLING_KEYS = st.one_of(
    st.sampled_from(["rolling:1m", "rolling:1h", "rolling:24h", "rolling:30d", "rolling:3660d"]),
    st.builds(lambda n: f"rolling:{n}m", st.integers(1, 10_000)),
    st.builds(lambda n: f"rolling:{n}h", st.integers(1, 10_000)),
    st.builds(lambda n: f"rolling:{n}d", st.integers(1, 3660)),
)


@settings(max_examples=200, deadline=None)
@given(zoned_instants(), ROLLING_KEYS, st.data())
def test_rolling_range_semantics(
    zoned: tuple[ZoneInfo, datetime], key: str, data: st.DataObject
) -> None:
    """[lo, hi + bucket) is exactly W long and holds ``at``; usage leaves between W - W/60 and W."""
    zone, at = zoned
    window = Window.parse(key)
    step = window.bucket_seconds
    width = timedelta(seconds=window.rolling_seconds)
    lo, hi = window.read_range(at, zone)
    assert hi == window.bucket_of(at, zone)
    assert hi % step == 0
    assert from_epoch(lo) <= at < from_epoch(hi + step)
    assert from_epoch(hi) <= at
    assert from_epoch(hi + step) - from_epoch(lo) == width
    # An event some time before `at` is counted iff its bucket is in [lo, hi].
    width_us = window.rolling_seconds * 10**6
    step_us = step * 10**6
    age_us = data.draw(
        st.one_of(
            st.integers(0, 2 * width_us),
            st.sampled_from([width_us - step_us, width_us - step_us + 1, width_us - 1, width_us]),
        ),
        label="age_us",
    )
    age = timedelta(microseconds=age_us)
    # In UTC: arithmetic on a datetime in a DST zone would move its wall clock instead.
    event = at.astimezone(UTC) - age
    counted = lo <= window.bucket_of(event, zone) <= hi
    if age <= width - timedelta(seconds=step):
        assert counted
    if age >= width:
        assert not counted
    if counted:
        reset = window.reset_at(at, zone, {window.bucket_of(event, zone): 1})
        assert reset is not None
        assert at < reset <= event + width
        assert reset >= event + width - timedelta(seconds=step)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["rolling:1m", "rolling:1h", "rolling:30d"]),
    st.dictionaries(st.integers(0, 59), st.integers(0, 50), max_size=12),
    st.integers(0, 120),
    st.integers(0, 300),
    st.integers(0, 10**9),
)
def test_rolling_admits_at_is_the_first_admitting_moment(
    key: str, offsets: dict[int, int], amount: int, limit: int, micros: int
) -> None:
    window = Window.parse(key)
    step = window.bucket_seconds
    at = utc(2026, 3, 10, 12) + timedelta(microseconds=micros)
    lo, _ = window.read_range(at, Z_UTC)
    buckets = {lo + i * step: units for i, units in offsets.items()}
    when = window.admits_at(at, Z_UTC, buckets, amount, limit)
    if amount > limit or limit == 0:
        assert when is None
        return
    assert when is not None
    assert when >= at
    assert admits(window_usage(window, buckets, when), amount, limit)
    if when > at:
        assert not admits(window_usage(window, buckets, when - TICK), amount, limit)
