"""What the library answers with: the value types a caller reads back.

``Quota`` (the engine) and ``Client`` / ``AsyncClient`` (over HTTP) answer
with the same types, so they live here, below both: the client then needs
nothing but ``domain`` and can never drift from the engine's idea of an
answer. They are plain data, without I/O, like the rest of ``domain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from tokenquota.domain.decisions import Decision, LimitStatus
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.limits import EffectiveLimit, Plan, Rule
from tokenquota.domain.metrics import Number

T = TypeVar("T")


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class GroupBy(StrEnum):
    METRIC = "metric"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Usage:
    subject: str
    at: datetime
    limits: tuple[LimitStatus, ...]  # the subject's, then each ancestor's when asked for


@dataclass(frozen=True, slots=True)
class LimitsView:
    subject: str
    overrides: tuple[Rule, ...]
    plan: Plan | None
    effective: tuple[EffectiveLimit, ...]


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    start: datetime
    end: datetime
    metric: str
    model: str | None  # set when grouped by model ("" for events that named none)
    value: Number


@dataclass(frozen=True, slots=True)
class DefaultRule:
    kind: str
    rule: Rule
    origin: str  # "runtime" (set through the API or CLI, wins) or "config"


@dataclass(frozen=True, slots=True)
class Reserved:
    """A reserve's answer: the decision, and the reservation when it was admitted."""

    decision: Decision
    reservation: Reservation | None

    @property
    def allowed(self) -> bool:
        return self.reservation is not None


@dataclass(frozen=True, slots=True)
class Acquired:
    decision: Decision
    lease: Lease | None

    @property
    def allowed(self) -> bool:
        return self.lease is not None


class Committer(Protocol):
    """What a hold commits through: the engine, or the synchronous HTTP client."""

    def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision: ...


class Hold:
    """A live reservation inside ``reservation(...)``; commit it with the real usage."""

    def __init__(self, owner: Committer, reservation: Reservation) -> None:
        self.owner = owner
        self.reservation = reservation
        self.result: Decision | None = None

    @property
    def id(self) -> str:
        return self.reservation.id

    def commit(
        self, amounts: Mapping[str, object] | None = None, **metric_amounts: object
    ) -> Decision:
        self.result = self.owner.commit(self.id, amounts, **metric_amounts)
        return self.result
