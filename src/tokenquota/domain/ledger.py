"""The ledger: the source of truth that counters are derived from.

Each event records who was charged (the subject and its ancestors at that
moment), so replaying the ledger reproduces the counters exactly even after
the hierarchy has changed since.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tokenquota.domain.decisions import DebitPlan, Mode
from tokenquota.domain.frozen import builder
from tokenquota.domain.grants import Grant
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef, consumer_series
from tokenquota.domain.tracking import Counted

CounterKey = tuple[str, str, str, int]  # subject, metric, window key, bucket

# Event kinds that are usage: they add to counters and burn credits. A
# "commit" is the usage a reservation turned into; it names the reservation
# in its tags (RESERVATION_TAG), as a "grant" names its grant.
USAGE_KINDS = frozenset({"consume", "commit"})
RESERVATION_TAG = "reservation"


def usage_kind(tags: Mapping[str, str], reservation_id: str | None) -> tuple[str, dict[str, str]]:
    """The kind and tags of a usage event: a commit names the reservation it settles."""
    if reservation_id is None:
        return "consume", dict(tags)
    return "commit", {**tags, RESERVATION_TAG: reservation_id}


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    subject: SubjectRef
    charged: tuple[SubjectRef, ...]
    timestamp: datetime
    recorded_at: datetime
    mode: Mode
    amounts: Amounts
    model: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    kind: str = "consume"
    resource: SubjectRef | None = None  # the protected resource the usage was made on

    @property
    def is_usage(self) -> bool:
        """A consume or a commit; a grant adds credits to spend and is not usage."""
        return self.kind in USAGE_KINDS

    @property
    def reservation_id(self) -> str | None:
        """The reservation a commit event settled."""
        return self.tags.get(RESERVATION_TAG) if self.kind == "commit" else None

    @property
    def series(self) -> tuple[str, ...]:
        """Every counter subject this event adds to: charged subjects and the consumer share."""
        charged = tuple(map(str, self.charged))
        if self.resource is None:
            return charged
        return (*charged, consumer_series(self.resource, self.subject))


_new_event: Final = builder(Event)  # Event(...) without its frozen __init__: one per consume


def usage_event(plan: DebitPlan, reservation_id: str | None = None, event_id: int = 0) -> Event:
    """The event an admitted plan appends, before the store numbers it.

    Every backend builds its usage events here (the memory store keeps the
    Event, the SQL and Redis stores its row, ``storage.ledger_rows``), so a
    replay from any of them counts the same amounts in the same series.
    """
    if reservation_id is None:  # ``usage_kind``, in line: nearly every event is a consume
        kind, tags = "consume", dict(plan.tags) if plan.tags else {}
    else:
        kind, tags = usage_kind(plan.tags, reservation_id)
    # Positional, in Event's field order (a call by keyword matches each name).
    return _new_event(
        event_id,  # id
        plan.subject,
        plan.charged,
        plan.timestamp,
        plan.now,  # recorded_at
        plan.mode,
        plan.amounts,
        plan.model,
        tags,
        plan.idempotency_key,
        kind,
        plan.resource,
    )


def grant_event(grant: Grant, event_id: int = 0) -> Event:
    """The event a grant appends: credits to spend, recorded when granted; not usage."""
    return Event(
        id=event_id,
        subject=grant.subject,
        charged=(grant.subject,),
        timestamp=grant.granted_at,
        recorded_at=grant.granted_at,
        mode=Mode.RECORD,
        amounts=Amounts({Metric.CREDITS: grant.amount}),
        tags={"grant": grant.id},
        kind="grant",
    )


def increments(
    charged: Iterable[SubjectRef | str],
    amounts: Amounts,
    timestamp: datetime,
    tz: Any,
    tracked: Counted,
) -> dict[CounterKey, int]:
    """What one event adds to the counters it is counted in: each series in the pairs
    of its kind (``tracking.Tracking.of_series``)."""
    out: dict[CounterKey, int] = {}
    units = dict(amounts.items())
    # each pair some series counts, and the series counting it (``Tracking.shape``)
    for key, subjects in tracked.shape(tuple(map(str, charged))):
        window = key.window
        amount = units.get(key.metric) if window is not None else None
        if not amount:
            continue
        assert window is not None
        metric, name, bucket = key.metric._value_, window.key, window.bucket_of(timestamp, tz)
        for subject in subjects:
            counter = (subject, metric, name, bucket)
            out[counter] = out.get(counter, 0) + amount
    return out


# Audit targets that are not subjects contain a "/", which no subject ref may,
# so "kind:user" the subject and the defaults of kind "user" never collide.
def defaults_target(kind: str) -> str:
    return f"defaults/{kind}"


def plan_target(plan_id: str) -> str:
    return f"plans/{plan_id}"


def key_target(key_id: str) -> str:
    return f"keys/{key_id}"


def resource_target(resource: str) -> str:
    return f"resources/{resource}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str  # e.g. limit.set, default.set, plan.create, plan.assign
    target: str  # a subject ref, or defaults/<kind>, plans/<id>, keys/<id> (see below)
    before: Any
    after: Any
