"""The ledger: the source of truth that counters are derived from.

Each event records who was charged (the subject and its ancestors at that
moment), so replaying the ledger reproduces the counters exactly even after
the hierarchy has changed since.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokenquota.domain.decisions import Mode
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.subjects import SubjectRef, consumer_series

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
        charged = tuple(str(s) for s in self.charged)
        if self.resource is None:
            return charged
        return (*charged, consumer_series(self.resource, self.subject))

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": str(self.subject),
            "charged": [str(s) for s in self.charged],
            "timestamp": self.timestamp.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "mode": self.mode.value,
            "amounts": {
                k: v if isinstance(v, int) else str(v) for k, v in self.amounts.to_wire().items()
            },
            "model": self.model,
            "tags": dict(self.tags),
            "idempotency_key": self.idempotency_key,
            "resource": str(self.resource) if self.resource else None,
        }


def increments(
    charged: Iterable[SubjectRef | str],
    amounts: Amounts,
    timestamp: datetime,
    tz: Any,
    tracked: Iterable[LimitKey],
) -> dict[CounterKey, int]:
    """What one event adds to the counters of every tracked (metric, window)."""
    out: dict[CounterKey, int] = defaultdict(int)
    subjects = [str(s) for s in charged]
    for key in tracked:
        amount = amounts[key.metric]
        if key.window is None or not amount:
            continue
        bucket = key.window.bucket_of(timestamp, tz)
        for subject in subjects:
            out[(subject, key.metric.value, key.window.key, bucket)] += amount
    return dict(out)


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

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
        }
