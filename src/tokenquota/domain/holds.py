"""Reservations and leases: budget held for a call that has not finished yet.

A reservation holds amounts of counter metrics on the subject and every
ancestor; a lease holds one concurrent_requests slot on each. Both lapse by
themselves at ``expires_at``: every read counts only holds with
``expires_at > now``, so a crashed client can never keep budget past its TTL
and no background job is needed for correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, TypeGuard

from tokenquota.domain.decisions import Decision
from tokenquota.domain.errors import Conflict, NotFound, ValidationError
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.subjects import SubjectRef, consumer_series

MIN_TTL: Final = timedelta(seconds=1)
MAX_TTL: Final = timedelta(days=1)
DEFAULT_TTL: Final = 60.0  # seconds, when a caller names no ttl


class HoldState(StrEnum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    subject: SubjectRef
    charged: tuple[SubjectRef, ...]
    amounts: Amounts
    created_at: datetime
    expires_at: datetime
    state: HoldState = HoldState.HELD
    committed: Decision | None = None  # the commit's answer, replayed on a second commit
    resource: SubjectRef | None = None

    @property
    def series(self) -> tuple[str, ...]:
        """The counter subjects the hold weighs on: the charged ones and a consumer share."""
        return hold_series(self.charged, self.subject, self.resource)

    def live(self, now: datetime) -> bool:
        return self.state is HoldState.HELD and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    subject: SubjectRef
    charged: tuple[SubjectRef, ...]
    created_at: datetime
    expires_at: datetime
    released_at: datetime | None = None
    resource: SubjectRef | None = None

    @property
    def series(self) -> tuple[str, ...]:
        return hold_series(self.charged, self.subject, self.resource)

    def live(self, now: datetime) -> bool:
        return self.released_at is None and now < self.expires_at


def hold_series(
    charged: tuple[SubjectRef, ...], subject: SubjectRef, resource: SubjectRef | None
) -> tuple[str, ...]:
    names = tuple(str(s) for s in charged)
    return names if resource is None else (*names, consumer_series(resource, subject))


def parse_ttl(value: object, field: str = "ttl") -> timedelta:
    """Seconds, from 1 s to a day: long enough for any LLM call, short enough to heal."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(field, "must be a number of seconds")
    if not MIN_TTL.total_seconds() <= seconds <= MAX_TTL.total_seconds():
        raise ValidationError(field, "must be between 1 and 86400 seconds")
    return timedelta(seconds=seconds)


def check_committable(reservation: Reservation | None, reservation_id: str, now: datetime) -> None:
    """Commit is refused clearly when there is nothing left to commit (a repeat is fine)."""
    if reservation is None:
        raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
    if reservation.state is HoldState.COMMITTED:
        return
    if reservation.state is HoldState.RELEASED:
        raise ReservationClosed(f"reservation {reservation_id} was released")
    if now >= reservation.expires_at:
        raise ReservationClosed(
            f"reservation {reservation_id} expired at {reservation.expires_at.isoformat()}; "
            "its hold is gone: record the usage with a consume in record mode"
        )


def check_extendable(lease: Lease | None, lease_id: str, now: datetime) -> None:
    if lease is None:
        raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
    if not lease.live(now):
        raise ReservationClosed(f"lease {lease_id} is no longer held; acquire a new one")


def check_releasable(
    reservation: Reservation | None, reservation_id: str
) -> TypeGuard[Reservation]:
    """Whether a release has a hold to free: an unknown id is refused, a closed one a no-op."""
    if reservation is None:
        raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
    return reservation.state is HoldState.HELD


def check_lease_releasable(lease: Lease | None, lease_id: str) -> TypeGuard[Lease]:
    """Whether a lease release frees a slot: an unknown id is refused, a repeat a no-op."""
    if lease is None:
        raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
    return lease.released_at is None


class ReservationClosed(Conflict):
    """The hold is gone (released, or expired): nothing to commit or extend."""

    code = "hold_closed"
