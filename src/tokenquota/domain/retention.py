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
  horizons (answers at least 24 h: contract §5).

``grace`` widens every cutoff so a replica whose clock is behind still finds
what it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.clock import EPOCH
from tokenquota.domain.decisions import Mode
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Amounts
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


# The ledger archive ---------------------------------------------------------
# Archived usage is folded into one **carry** event per (subject, charged,
# resource): a record-mode consume at the epoch, tagged with this key, whose
# amounts are the sum of everything archived for that group. Rebuild replays
# it like any event, so lifetime (``total``) counters stay exact; every other
# window reads only buckets after the archive's cutoff, which it never reaches.
CARRY_TAG: Final = "tokenquota:archived"
CarryKey = tuple[str, tuple[str, ...], str | None]


def is_carry(tags: Mapping[str, str]) -> bool:
    return CARRY_TAG in tags


def archivable(
    *,
    kind_is_usage: bool,
    tags: Mapping[str, str],
    credits: int,
    recorded_at: datetime,
    cutoff: datetime,
) -> bool:
    """Whether an event older than ``cutoff`` may leave the ledger.

    Usage only: a grant event is what a balance is rebuilt from. Never one that
    moved credits: rebuild burns credits from grants event by event, in order,
    and a sum would burn them differently. Never a carry (it is folded into).
    """
    return kind_is_usage and not credits and not is_carry(tags) and recorded_at < cutoff


def archive_cutoff(now: datetime, age: timedelta, c: Cutoffs) -> datetime:
    """The latest instant before which events may be archived: ``age`` ago, and never later
    than the oldest bucket, answer or hold any read may still need (their events stay)."""
    latest = min(now - age, c.idempotency, c.holds)
    if c.counters:
        oldest = min(c.counters.values())
        latest = min(latest, EPOCH + timedelta(seconds=oldest))
    return latest


def carry_key(event: Event) -> CarryKey:
    return (
        str(event.subject),
        tuple(map(str, event.charged)),
        str(event.resource) if event.resource else None,
    )


def fold(
    events: Sequence[Event], carries: Mapping[CarryKey, Event]
) -> tuple[list[Event], list[int]]:
    """Fold archived ``events`` into their carries: (carries to write, event ids to delete).

    A group without a carry yet turns its first event into one (keeping its id,
    so no id is ever made here: on Redis the ids come from Redis); every other
    event of the batch is deleted.
    """
    groups: dict[CarryKey, list[Event]] = {}
    for event in events:
        groups.setdefault(carry_key(event), []).append(event)
    written: list[Event] = []
    deleted: list[int] = []
    for key, group in groups.items():
        base = carries.get(key)
        units: dict[str, int] = dict(base.amounts.to_units_json()) if base else {}
        count = int(base.tags[CARRY_TAG]) if base else 0
        for event in group:
            for metric, amount in event.amounts.to_units_json().items():
                units[metric] = units.get(metric, 0) + amount
        count += len(group)
        keep = base or group[0]
        deleted.extend(e.id for e in group if e.id != keep.id)
        written.append(
            replace(
                keep,
                kind="consume",
                timestamp=EPOCH,
                recorded_at=max(keep.recorded_at, *(e.recorded_at for e in group)),
                mode=Mode.RECORD,
                amounts=Amounts.from_units_json(units),
                model=None,
                tags={CARRY_TAG: str(count)},
                idempotency_key=None,
            )
        )
    return written, deleted
