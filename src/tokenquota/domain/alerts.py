"""Alert thresholds on a limit, and the one rule that says when one is crossed.

A threshold is a whole percentage of a limit (50, 80, 100…). It is crossed by
the one decision that takes the counted usage of a window period from below
``threshold % of limit`` to at or above it. Decisions on one series are
serialised by the store's atomic step, so exactly one decision per window
period sees ``before < mark <= after``: that is what makes "once per threshold
per period" hold with many replicas, with no coordination beyond the step the
decision already takes. The comparison is done in integers (``used * 100``
against ``threshold * limit``), so a credit limit of 0.3 and a 100 % threshold
cross at exactly 0.3 credits, never at a rounded figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from tokenquota.domain.clock import EPOCH
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Mode, Reading, blocks
from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import Metric
from tokenquota.domain.thresholds import MAX_PERCENT, MAX_THRESHOLDS, parse_thresholds


def crossed(thresholds: Iterable[int], limit: int, before: int, after: int) -> tuple[int, ...]:
    """The thresholds a change of usage from ``before`` to ``after`` crosses upward.

    An unlimited limit has no thresholds to cross; a limit of 0 is crossed by any
    usage above 0. Usage that falls (a released hold) crosses nothing: a mark
    already reached in this period was sent once and stays sent.
    """
    if limit == UNLIMITED or after <= before:
        return ()
    # A limit of 0 puts every mark at 0: the first usage reaches them all at once.
    first = limit == 0 and before == 0
    return tuple(t for t in thresholds if first or before * 100 < t * limit <= after * 100)


class AlertKind(StrEnum):
    """What an alert event says happened; stable wire values (the webhook's ``type``)."""

    THRESHOLD = "threshold.crossed"  # usage reached a threshold of a limit
    DENIED = "limit.denied"  # an enforced limit refused a request (first in its period)
    SHADOW = "shadow.blocked"  # a shadow limit would have refused (first in its period)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One row of the alert outbox: what happened to one limit of one subject.

    ``used`` and ``limit`` are in the metric's units (domain.metrics), as the
    counters are; the webhook body converts them to the metric's wire numbers.
    ``period_start`` is the window period the event belongs to (None for a
    ``total`` window or a windowless limit). ``dedupe`` is unique in the store:
    it names (kind, subject, metric, window, period, threshold), so a second
    writer of the same crossing, or a retry, records nothing. ``id`` is 0 until
    the store assigns it.
    """

    kind: AlertKind
    subject: str
    metric: str
    window: str  # "" for a windowless limit, as LimitKey.window_key
    period_start: datetime | None
    threshold: int | None  # the percentage; None for denied and shadow events
    used: int
    limit: int
    reset_at: datetime | None
    at: datetime  # the decision's time
    id: int = 0

    @property
    def dedupe(self) -> str:
        period = "" if self.period_start is None else self.period_start.isoformat()
        threshold = "" if self.threshold is None else str(self.threshold)
        return "|".join(
            (self.kind.value, self.subject, self.metric, self.window, period, threshold)
        )


def mark(threshold: int, limit: int) -> int:
    """The least usage that reaches ``threshold`` % of ``limit``: ``crossed`` says
    ``before < mark <= after`` (for a limit above 0), in integers. What a store that
    decides inside a script (Redis) compares, instead of multiplying there."""
    return -(-threshold * limit // 100)


def period_start(check: Check, tz: ZoneInfo) -> datetime | None:
    """The window period an event of ``check`` belongs to; its once-per-period key.

    A calendar window: the period holding the request (its bucket). A rolling
    window has no periods of its own, so it is cut into epochs of its length
    counted from 1970-01-01 UTC (a ``rolling:30d`` one: 30-day spans), taken at
    the decision's reading time. ``total`` and windowless limits: None.
    """
    window = check.limit.key.window
    if window is None or window.is_total:
        return None
    if window.calendar is not None:
        return EPOCH + timedelta(seconds=window.bucket_of(check.read_at, tz))
    seconds = int((check.read_at - EPOCH).total_seconds())
    span = window.rolling_seconds
    return EPOCH + timedelta(seconds=seconds // span * span)


def has_thresholds(checks: Sequence[Check]) -> bool:
    """Whether any limit of a plan has thresholds: a plain loop, as it runs per decision."""
    for check in checks:  # noqa: SIM110 - any() over a generator allocates one per call
        if check.limit.thresholds:
            return True
    return False


def threshold_checks(plan: DebitPlan) -> list[int]:
    """The checks of ``plan`` whose usage this request may take across a threshold.

    Enforced, windowed limits with thresholds, where the request adds usage: a
    reservation holds (usage comes with its commit), a back-dated request outside
    a rolling window adds nothing to it. Shadow limits have no thresholds of their
    own to alert on: a trial reports what it would block (``shadow.blocked``).
    """
    if plan.hold:
        return []
    out = []
    for i, check in enumerate(plan.checks):
        limit = check.limit
        if (
            limit.thresholds
            and not limit.shadow
            and limit.value != UNLIMITED
            and limit.key.window is not None
            and check.bucket is not None
            and check.amount > 0
        ):
            out.append(i)
    return out


def crossings(plan: DebitPlan, index: int, reading: Reading) -> list[AlertEvent]:
    """The ``threshold.crossed`` events of check ``index`` (one of ``threshold_checks``)
    when the request is admitted on ``reading``."""
    check = plan.checks[index]
    before = sum(reading.buckets.values())
    after = before + check.amount
    limit = check.limit
    return [
        _event(AlertKind.THRESHOLD, plan, check, reading, threshold, after, check.amount)
        for threshold in crossed(limit.thresholds, limit.value, before, after)
    ]


def threshold_candidates(plan: DebitPlan) -> list[tuple[int, int, AlertEvent]]:
    """For a store that learns the usage only inside its script (Redis): per threshold
    of ``threshold_checks``, (check index, ``mark``, the event with ``used`` 0).

    The script adds the event when ``before < mark <= before + amount`` (for a
    limit of 0, mark 0: when ``before`` is 0), filling in ``used`` and, for a
    rolling window, ``reset_at``: exactly what ``alert_events`` would record.
    """
    out = []
    empty = Reading()
    for i in threshold_checks(plan):
        check = plan.checks[i]
        limit = check.limit
        for threshold in limit.thresholds:
            event = _event(AlertKind.THRESHOLD, plan, check, empty, threshold, 0, 0)
            out.append((i, mark(threshold, limit.value), event))
    return out


def _used(check: Check, reading: Reading) -> int:
    if check.limit.key.window is None and check.limit.key.metric is not Metric.CONCURRENT_REQUESTS:
        return check.amount  # a per-request cap: what the request asked for
    return sum(reading.buckets.values())


def _event(
    kind: AlertKind,
    plan: DebitPlan,
    check: Check,
    reading: Reading,
    threshold: int | None,
    used: int,
    added: int,
) -> AlertEvent:
    limit = check.limit
    window = limit.key.window
    reset_at = None
    if window is not None:
        buckets = reading.buckets
        if added and window.rolling_seconds and check.bucket is not None:
            buckets = {**buckets, check.bucket: buckets.get(check.bucket, 0) + added}
        reset_at = window.reset_at(check.read_at, plan.tz, buckets)
    subject, metric, window_key, _ = limit.names()
    return AlertEvent(
        kind=kind,
        subject=subject,
        metric=metric,
        window=window_key or "",
        period_start=period_start(check, plan.tz),
        threshold=threshold,
        used=used,
        limit=limit.value,
        reset_at=reset_at,
        at=plan.now,
    )


def alert_events(
    plan: DebitPlan, readings: Sequence[Reading], decision: Decision
) -> Sequence[AlertEvent]:
    """What one decision records in the alert outbox, computed inside the store's step.

    ``readings`` are what the step read before writing (``plan.reads`` order).
    An admitted decision records ``threshold.crossed`` per threshold its usage
    crosses (``threshold_checks``; the usage read plus what the request adds,
    holds not counted). An enforced refusal records ``limit.denied`` per
    blocking limit (the plan's checks; a resource's capacity and a prepaid
    balance are not limits with periods); a shadow limit that would have
    blocked records ``shadow.blocked``. Each is a candidate: the outbox keeps
    the first of its dedupe key, so a period records it once.

    Returns at once, allocating nothing, for the common case: an admitted
    decision with no shadow block on a plan without thresholds.
    """
    allowed = decision.allowed
    if allowed and not decision.shadow_blocked and not has_thresholds(plan.checks):
        return ()
    events: list[AlertEvent] = []
    if allowed:
        for i in threshold_checks(plan):
            events += crossings(plan, i, readings[i])
    events += refusal_events(plan, readings, decision)
    return events


def refusal_events(
    plan: DebitPlan, readings: Sequence[Reading], decision: Decision
) -> Sequence[AlertEvent]:
    """The ``limit.denied`` and ``shadow.blocked`` part of ``alert_events``."""
    refused = not decision.allowed and plan.mode is Mode.ENFORCE
    if not refused and not decision.shadow_blocked:
        return ()
    events = []
    for check, reading in zip(plan.checks, readings, strict=False):
        shadow = check.limit.shadow
        if (shadow or refused) and blocks(check, reading):
            kind = AlertKind.SHADOW if shadow else AlertKind.DENIED
            events.append(_event(kind, plan, check, reading, None, _used(check, reading), 0))
    return events


__all__ = [
    "MAX_PERCENT",
    "MAX_THRESHOLDS",
    "AlertEvent",
    "AlertKind",
    "alert_events",
    "crossed",
    "crossings",
    "has_thresholds",
    "mark",
    "parse_thresholds",
    "period_start",
    "refusal_events",
    "threshold_candidates",
    "threshold_checks",
]
