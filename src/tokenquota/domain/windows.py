"""Windows (contract §3): over which span usage is summed, and when it resets.

Counting is done in *buckets* named by an integer (seconds since the epoch of
the bucket's start):

- a calendar window has one bucket per period, named by the period's start;
  periods are half-open ``[start, end)`` and computed in the configured IANA
  time zone from the local calendar, so a local day lasts 23 or 25 hours
  across a DST change, a month is a calendar month and weeks start on Monday;
- a rolling window of length W keeps buckets of exactly W/60 seconds aligned
  to the epoch; its usage at ``now`` is the sum of the 60 buckets ending with
  the one that contains ``now``. Usage therefore leaves the window between
  W - W/60 and W after it happened: never later, at most 1/60 of W early;
- ``total`` has a single bucket, 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenquota.domain.clock import EPOCH
from tokenquota.domain.errors import ValidationError

ROLLING_BUCKETS: Final = 60
# Every instant: the span of ``total``'s one bucket (``Window.bucket_span``).
ALWAYS: Final = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
MAX_ROLLING_SECONDS: Final = 3660 * 86_400
_ROLLING_RE: Final = re.compile(r"rolling:([1-9][0-9]{0,9})([mhd])")
_UNIT_SECONDS: Final = {"m": 60, "h": 3_600, "d": 86_400}


class Calendar(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


def parse_timezone(name: object, field: str = "timezone") -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValidationError(field, "must be an IANA time zone name such as Europe/Stockholm")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(field, f"unknown time zone {name!r}") from None


@dataclass(frozen=True, slots=True)
class Window:
    """One window form. ``key`` is its wire and storage name."""

    key: str
    calendar: Calendar | None = None
    rolling_seconds: int = 0
    # Calendar windows: the last period asked for, as (zone, start, end, bucket).
    # A decision asks each of its windows for the period several times (its
    # read range, its bucket, its reset time, the event's counters) and every
    # decision until the boundary asks for the same one, so the answer is kept
    # on the window itself, one attribute away. Periods tile time, so while
    # ``at`` lies in [start, end) the answer is exact; it is keyed by the
    # ``at`` given, never by the wall clock. Not part of the value: equality,
    # hashing and repr ignore it.
    _period: tuple[ZoneInfo, datetime, datetime, int] | None = field(
        default=None, init=False, compare=False, hash=False, repr=False
    )

    @classmethod
    def parse(cls, value: object, field: str = "window") -> Window:
        if isinstance(value, Window):
            return value
        if not isinstance(value, str):
            raise ValidationError(field, "must be a string such as day, month or rolling:30d")
        if value == "total":
            return TOTAL
        try:
            return cls(value, calendar=Calendar(value))
        except ValueError:
            pass
        match = _ROLLING_RE.fullmatch(value)
        if match is None:
            raise ValidationError(
                field,
                f"unknown window {value!r}; expected minute, hour, day, week, month, year, "
                "total or rolling:<N>m|h|d",
            )
        seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
        if seconds > MAX_ROLLING_SECONDS:
            raise ValidationError(field, "a rolling window may be at most 3660 days long")
        return cls(f"rolling:{int(match[1])}{match[2]}", rolling_seconds=seconds)

    def __str__(self) -> str:
        return self.key

    @property
    def is_total(self) -> bool:
        return self.calendar is None and not self.rolling_seconds

    @property
    def is_rolling(self) -> bool:
        return bool(self.rolling_seconds)

    @property
    def bucket_seconds(self) -> int:
        """Rolling windows only: W/60, a whole number of seconds for every allowed W."""
        return self.rolling_seconds // ROLLING_BUCKETS

    def _period_at(self, at: datetime, tz: ZoneInfo) -> tuple[ZoneInfo, datetime, datetime, int]:
        """Calendar windows only: (zone, start, end, bucket) of the period holding ``at``."""
        last = self._period
        if last is not None and last[0] is tz and last[1] <= at < last[2]:
            return last
        assert self.calendar is not None
        start, end = calendar_period(self.calendar, at, tz)
        last = (tz, start, end, _epoch_seconds(start))
        object.__setattr__(self, "_period", last)  # one tuple: readers see old or new
        return last

    def bucket_of(self, at: datetime, tz: ZoneInfo) -> int:
        """The bucket an event at ``at`` is counted in."""
        if self.calendar is not None:
            return self._period_at(at, tz)[3]
        if self.rolling_seconds:
            step = self.rolling_seconds // ROLLING_BUCKETS
            return (_epoch_seconds(at) // step) * step
        return 0

    def bucket_span(self, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The half-open span of instants counted in the same bucket as ``at``.

        A calendar period, a rolling window's bucket, ``ALWAYS`` for ``total``:
        a store that counts many events may keep their buckets while they fall
        in it (storage/memory/state.py, ``Counting``).
        """
        if self.calendar is not None:
            _, start, end, _ = self._period_at(at, tz)
            return start, end
        if self.rolling_seconds:
            step = self.rolling_seconds // ROLLING_BUCKETS
            first = (_epoch_seconds(at) // step) * step
            try:
                return _from_epoch(first), _from_epoch(first + step)
            except OverflowError:  # the last bucket before datetime.max
                return _from_epoch(first), ALWAYS[1]
        return ALWAYS

    def read_range(self, at: datetime, tz: ZoneInfo) -> tuple[int, int]:
        """The inclusive range of buckets whose sum is the usage as of ``at``."""
        if self.calendar is not None:
            current = self._period_at(at, tz)[3]
            return current, current
        if self.rolling_seconds:
            current = self.bucket_of(at, tz)
            return current - self.rolling_seconds + self.bucket_seconds, current
        return 0, 0

    def placement(
        self, at: datetime, now: datetime, tz: ZoneInfo
    ) -> tuple[datetime, int, int, int | None]:
        """Where an event at ``at`` is measured: (read_at, lo, hi, bucket).

        A calendar window (and ``total``) is read in the period holding the
        event, a rolling one as of ``now``, where a back-dated event may still
        count: ``bucket`` is the event's bucket, or None when it lies outside
        ``[lo, hi]``. What ``read_range`` and ``bucket_of`` say, in one call:
        the planner asks it for every limit of every plan.
        """
        if self.calendar is not None:
            bucket = self._period_at(at, tz)[3]
            return at, bucket, bucket, bucket
        if self.rolling_seconds:
            step = self.rolling_seconds // ROLLING_BUCKETS
            hi = (_epoch_seconds(now) // step) * step
            lo = hi - self.rolling_seconds + step
            bucket = (_epoch_seconds(at) // step) * step
            return now, lo, hi, bucket if lo <= bucket <= hi else None
        return at, 0, 0, 0

    def reset_at(self, at: datetime, tz: ZoneInfo, buckets: Mapping[int, int]) -> datetime | None:
        """When usage next drops (contract §3).

        Calendar: the start of the next period. Rolling: when the oldest bucket
        still holding usage leaves the window, or None when nothing is in it.
        Total: None.
        """
        if self.calendar is not None:
            return self._period_at(at, tz)[2]
        if self.rolling_seconds:
            held = [b for b, v in buckets.items() if v > 0]
            return _from_epoch(min(held) + self.rolling_seconds) if held else None
        return None

    def admits_at(
        self,
        at: datetime,
        tz: ZoneInfo,
        buckets: Mapping[int, int],
        amount: int,
        limit: int,
        *,
        held: int = 0,
    ) -> datetime | None:
        """The first moment at or after ``at`` when this window would admit ``amount``.

        None when it never will (``total``, or a cap the amount alone exceeds). This
        assumes no other usage arrives meanwhile, which is what Retry-After promises,
        and that ``held`` (reserved, not yet used) stays held throughout.
        """
        used = sum(buckets.values()) + held
        if admits(used, amount, limit):
            return at
        if not admits(held, amount, limit) or self.is_total:
            return None
        if self.calendar is not None:
            return self._period_at(at, tz)[2]
        for bucket in sorted(b for b, v in buckets.items() if v > 0):
            used -= buckets[bucket]
            if admits(used, amount, limit):
                return _from_epoch(bucket + self.rolling_seconds)
        return None  # unreachable: emptying every bucket admits


def admits(used: int, amount: int, limit: int) -> bool:
    """The one admission rule: still within the limit, and the amount fits.

    ``used < limit`` makes a request that carries none of a metric (amount 0)
    wait once that metric's budget is spent, and makes a cap of 0 block all.
    """
    return used < limit and used + amount <= limit


# The last period computed per (unit, zone). Periods tile time, so while ``at``
# stays inside it the answer is the same: a decision asks for each of its
# windows' periods several times, and every decision until the boundary asks
# for the same ones. Keyed by the ``at`` given, never by the wall clock.
_LAST_PERIOD: dict[tuple[Calendar, ZoneInfo], tuple[datetime, datetime]] = {}
_MAX_REMEMBERED_PERIODS: Final = 256  # units x zones in use; more only if zones churn


def calendar_period(unit: Calendar, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The half-open period ``[start, end)`` of ``unit`` containing ``at``, in UTC."""
    last = _LAST_PERIOD.get((unit, tz))
    if last is not None and last[0] <= at < last[1]:
        return last
    period = _compute_period(unit, at, tz)
    if len(_LAST_PERIOD) >= _MAX_REMEMBERED_PERIODS:
        _LAST_PERIOD.clear()
    _LAST_PERIOD[(unit, tz)] = period
    return period


def _compute_period(unit: Calendar, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    local = at.astimezone(tz)
    if unit in (Calendar.MINUTE, Calendar.HOUR):
        # Truncate the wall clock under the offset in force at `at`, so the two
        # 01:00 hours of a DST fall-back night stay two distinct periods.
        offset = local.utcoffset() or timedelta(0)
        wall = local.replace(tzinfo=None, second=0, microsecond=0)
        if unit is Calendar.HOUR:
            wall = wall.replace(minute=0)
        start = (wall - offset).replace(tzinfo=UTC)
        step = timedelta(minutes=1) if unit is Calendar.MINUTE else timedelta(hours=1)
        end = start + step
        # A shift that is not a whole number of periods (Lord Howe moves its clocks
        # by 30 minutes) moves the grid of periods: the period in force at the
        # change is cut short at the transition, so consecutive periods still tile
        # time. (A whole-hour shift leaves the grid, and every hour, as it is.)
        instant = at.astimezone(UTC)
        if (_offset(start, tz) - offset) % step:
            start = _transition(start, instant, tz)
        if (_offset(end - _TICK, tz) - offset) % step:
            end = _transition(instant, end - _TICK, tz)
        return start, end
    day = local.date()
    if unit is Calendar.DAY:
        first, after = day, day + timedelta(days=1)
    elif unit is Calendar.WEEK:
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif unit is Calendar.MONTH:
        first = day.replace(day=1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        first, after = date(day.year, 1, 1), date(day.year + 1, 1, 1)
    return _local_midnight(first, tz), _local_midnight(after, tz)


_TICK: Final = timedelta(microseconds=1)


def _offset(at: datetime, tz: ZoneInfo) -> timedelta:
    return at.astimezone(tz).utcoffset() or timedelta(0)


def _transition(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in ``(before, after]`` whose UTC offset is no longer ``before``'s."""
    old = _offset(before, tz)
    while after - before > _TICK:
        middle = before + (after - before) // 2
        if _offset(middle, tz) == old:
            before = middle
        else:
            after = middle
    return after


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # Where midnight does not exist (a DST gap at 00:00), fold=0 maps it to the
    # transition instant, which is when that local day really begins.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _epoch_seconds(at: datetime) -> int:
    delta = at - EPOCH
    return delta.days * 86_400 + delta.seconds


def _from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


TOTAL: Final = Window("total")
