"""Time comes from one injected clock so tests move it instead of sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC datetime."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, at: datetime) -> None:
        self._at = ensure_utc(at, "at")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> None:
        with self._lock:
            self._at = ensure_utc(at, "at")

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        step = delta if delta is not None else timedelta(**kwargs)
        with self._lock:
            self._at += step
            return self._at


def ensure_utc(value: datetime, field: str) -> datetime:
    """Naive datetimes are ambiguous, so they are refused rather than guessed."""
    from tokenquota.domain.errors import ValidationError

    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "must carry a time zone (e.g. end in Z or +00:00)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    # A bound keeps every period arithmetic (next month, next year) in range.
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValidationError(field, "must be between 1970-01-01 and 9000-01-01")
    return utc


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch: the storage form, exact and sortable on every dialect."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = EPOCH
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
