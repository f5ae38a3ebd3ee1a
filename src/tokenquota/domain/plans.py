"""Plans: what a request is measured against, and what a store reads to decide it.

The planner (engine/planner.py) builds a ``DebitPlan`` naming every bucket to
read; a store reads them inside its atomic step (``Reading``, ``Prepaid``)
and calls ``decisions.decide``. Kept apart from ``decisions`` so that the
value a store receives reads in one place; ``decisions`` re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.frozen import builder, built_on_read
from tokenquota.domain.grants import Grant
from tokenquota.domain.limits import UNLIMITED, EffectiveLimit
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import SubjectRef, consumer_series


class Mode(StrEnum):
    ENFORCE = "enforce"
    RECORD = "record"


@dataclass(frozen=True, slots=True)
class Check:
    """One effective limit a request is measured against."""

    limit: EffectiveLimit
    amount: int  # units this request adds to the limit's metric (0 when absent)
    read_at: datetime  # the instant whose window holds the request
    lo: int  # inclusive bucket range to sum; unused for per-request caps
    hi: int
    # The bucket the request lands in, or None when it lands outside [lo, hi]
    # (a back-dated event older than a rolling window): then it only reports.
    bucket: int | None

    @property
    def is_cap(self) -> bool:
        return self.limit.key.window is None


_new_check: Final = builder(Check)  # Check(...) without its frozen __init__


@dataclass(frozen=True, slots=True)
class Placement:
    """Where every request of one span of time is measured, limit by limit.

    For limits whose windows are all calendar or ``total`` ones, or caps, a
    request's checks differ only in its amounts and instant while it falls in
    one span (``engine.planner.Layout``): each limit is read in one bucket,
    the one the request lands in. The planner shares this value between the
    plans of a span, and a plan made with it builds its ``Check``s only when
    something reads them (``DebitPlan.checks``); a store that reads the
    placement instead (the memory meter's warm path) never builds them.
    """

    limits: tuple[EffectiveLimit, ...]  # the skeleton's, the same tuple for every span
    # Per limit: the metric whose amount it adds (input tokens for a cap), and the
    # one bucket it is read in and lands in (None for a cap, which reads nothing).
    metrics: tuple[Metric, ...]
    buckets: tuple[int | None, ...]
    # What ``decisions.admitted`` compares, sorted out once per span rather than
    # per request: (position, metric, limit) of each finite limit read in a
    # bucket, and (metric, limit) of each finite input_sequence_length cap. An
    # unlimited limit, or any other cap, never refuses there.
    bounded: tuple[tuple[int, Metric, int], ...] = field(init=False, repr=False, compare=False)
    capped: tuple[tuple[Metric, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounded: list[tuple[int, Metric, int]] = []
        capped: list[tuple[Metric, int]] = []
        for i, (limit, metric, bucket) in enumerate(
            zip(self.limits, self.metrics, self.buckets, strict=True)
        ):
            value = limit.value
            if value == UNLIMITED:
                continue
            if limit.key.metric is Metric.INPUT_SEQUENCE_LENGTH:
                capped.append((metric, value))
            elif bucket is not None:
                bounded.append((i, metric, value))
        object.__setattr__(self, "bounded", tuple(bounded))
        object.__setattr__(self, "capped", tuple(capped))

    def checks(self, amounts: Amounts, at: datetime) -> tuple[Check, ...]:
        """``Planner.check`` of each limit for a request of ``amounts`` at ``at``."""
        units = amounts.units()
        out = []
        for limit, metric, bucket in zip(self.limits, self.metrics, self.buckets, strict=True):
            if bucket is None:
                out.append(_new_check(limit, units.get(metric, 0), at, 0, 0, None))
            else:
                out.append(_new_check(limit, units.get(metric, 0), at, bucket, bucket, bucket))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """The contract §6 capacity test for a request that names a resource.

    ``total`` reads the resource's usage this minute in the capacity's unit;
    ``shares`` read the usage of each consumer holding a reserved share.
    """

    quota: ResourceQuota
    resource: SubjectRef
    consumer: SubjectRef
    amount: int
    total: Check
    shares: tuple[tuple[SubjectRef, Check], ...]

    @property
    def reads(self) -> tuple[Check, ...]:
        return (self.total, *(check for _, check in self.shares))


@dataclass(frozen=True, slots=True)
class DebitPlan:
    subject: SubjectRef
    charged: tuple[SubjectRef, ...]  # the subject first, then every ancestor
    amounts: Amounts
    mode: Mode
    timestamp: datetime  # when the usage happened (may be back-dated)
    now: datetime
    tz: ZoneInfo
    checks: tuple[Check, ...]
    idempotency_key: str | None = None
    fingerprint: str = ""
    model: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # A reservation: admitted amounts are held (shown as reserved), not used.
    hold: bool = False
    resource: SubjectRef | None = None
    capacity: CapacityPlan | None = None
    # The configuration version the plan was made from: the step that decides on
    # it refuses it when the store's token moved since (None: checked by nobody).
    config_version: str | None = None
    # Set when ``checks`` are this placement's at ``timestamp`` with ``amounts``: then
    # the plan may be a ``PlacedPlan``, whose ``checks`` are made on first read.
    placement: Placement | None = field(default=None, compare=False, repr=False)

    @property
    def series(self) -> tuple[str, ...]:
        """Every counter subject the request adds to (see ``ledger.Event.series``)."""
        charged = tuple(map(str, self.charged))
        if self.resource is None:
            return charged
        return (*charged, consumer_series(self.resource, self.subject))

    @property
    def reads(self) -> tuple[Check, ...]:
        """Everything the store must read atomically: the checks, then the capacity series."""
        return self.checks + (self.capacity.reads if self.capacity else ())


def _placed_checks(plan: DebitPlan) -> tuple[Check, ...]:
    assert plan.placement is not None  # a PlacedPlan is built with one
    return plan.placement.checks(plan.amounts, plan.timestamp)


# A ``DebitPlan`` whose ``checks`` are built from its ``placement`` when first read.
PlacedPlan: Final = built_on_read(
    DebitPlan,
    "checks",
    _placed_checks,
    doc="""A ``DebitPlan`` whose ``checks`` are built from its ``placement`` when first read.

    Built by ``placed_plan`` (the planner's warm path) with that slot unset: a
    store that decides from the placement (the memory meter) never builds
    them; a SQL or Redis step reads them and so gets an ordinary plan
    (``frozen.built_on_read``).
    """,
)

# A PlacedPlan, built positionally: DebitPlan's fields in order without ``checks``.
placed_plan: Final = builder(PlacedPlan, defer=("checks", "placement"))


@dataclass(frozen=True, slots=True)
class Reading:
    """What a store found for one check, inside the atomic section."""

    buckets: Mapping[int, int] = field(default_factory=dict)  # bucket -> units used
    # Live reservations holding this metric (windows) or live leases (concurrency):
    reserved: int = 0
    held_until: datetime | None = None  # when the last of those lapses by itself


Readings = Sequence[Reading]


@dataclass(frozen=True, slots=True)
class Prepaid:
    """A charged subject's grants and the credits live reservations hold against them."""

    subject: SubjectRef
    grants: tuple[Grant, ...]
    held: int = 0
