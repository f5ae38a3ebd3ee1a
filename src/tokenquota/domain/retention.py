"""What pruning may remove, and from when: the horizons (docs/retention.md).

Pure arithmetic over windows and times: each store's pruner deletes what is
older than these cutoffs, in bounded batches, and nothing else. A cutoff is
chosen so that no answer the service can still give reads what it removes:

- a calendar bucket is read by a decision in its period and by a back-dated
  consume whose timestamp falls in it, and a timestamp may be back-dated up
  to the engine's ``retention``; so a calendar bucket is kept while its
  period may still hold an accepted timestamp;
- a rolling bucket is read only as of now (a back-dated consume is measured
  as of now), so it is kept while it is in the window;
- the ``total`` bucket is read by every ``total`` limit and the 63-bit bound:
  never pruned;
- idempotency answers and finished holds and leases are kept for their own
  horizons (answers at least 24 h: SPEC section 5).

``grace`` widens every cutoff so a replica whose clock is behind still finds
what it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.windows import Window

MIN_IDEMPOTENCY: Final = timedelta(hours=24)
DEFAULT_IDEMPOTENCY: Final = timedelta(days=7)
DEFAULT_HOLDS: Final = timedelta(days=7)
DEFAULT_GRACE: Final = timedelta(hours=1)
DEFAULT_BATCH: Final = 500
MAX_BATCH: Final = 10_000

# What a pruner removes, in the order it removes them.
KINDS: Final = ("counters", "idempotency", "reservations", "leases")


@dataclass(frozen=True, slots=True)
class Horizons:
    """How long each kind of record is kept; ``backdate`` is the engine's retention."""

    backdate: timedelta
    idempotency: timedelta = DEFAULT_IDEMPOTENCY
    holds: timedelta = DEFAULT_HOLDS
    grace: timedelta = DEFAULT_GRACE

    def __post_init__(self) -> None:
        if self.idempotency < MIN_IDEMPOTENCY:
            raise ValidationError(
                "idempotency_horizon", "idempotency keys are kept at least 24 hours"
            )
        for name in ("backdate", "holds", "grace"):
            if getattr(self, name) < timedelta(0):
                raise ValidationError(name, "must not be negative")


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """One run's cutoffs, all from one ``now``: what is older goes."""

    now: datetime
    counters: Mapping[str, int]  # window key -> the first bucket kept; absent: keep all
    idempotency: datetime  # answers stored before this go
    holds: datetime  # reservations and leases finished (or expired) before this go
    kinds: tuple[str, ...] = field(default=KINDS)


def first_kept_bucket(window: Window, now: datetime, tz: ZoneInfo, h: Horizons) -> int | None:
    """The oldest bucket of ``window`` any read from ``now`` on may need; None: keep all."""
    if window.is_total:
        return None
    if window.is_rolling:
        return window.read_range(now - h.grace, tz)[0]
    return window.bucket_of(now - h.backdate - h.grace, tz)


def cutoffs(
    windows: Iterable[Window],
    now: datetime,
    tz: ZoneInfo,
    h: Horizons,
    kinds: Iterable[str] = KINDS,
) -> Cutoffs:
    counters: dict[str, int] = {}
    for window in windows:
        first = first_kept_bucket(window, now, tz, h)
        if first is not None:
            counters[window.key] = first
    chosen = tuple(k for k in KINDS if k in set(kinds))
    return Cutoffs(
        now=now,
        counters=counters,
        idempotency=now - h.idempotency - h.grace,
        holds=now - h.holds - h.grace,
        kinds=chosen,
    )
