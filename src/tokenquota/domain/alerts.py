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
from datetime import datetime
from enum import StrEnum
from typing import Final

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import UNLIMITED

MAX_THRESHOLDS: Final = 10
# Above 100 % still means something: record-mode usage and shadow limits pass a limit.
MAX_PERCENT: Final = 1000


def parse_thresholds(value: object, field: str = "thresholds") -> tuple[int, ...]:
    """Whole percentages in 1..1000, at most ten, answered sorted and without repeats."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValidationError(field, "must be a list of whole percentages, e.g. [50, 80, 100]")
    if len(value) > MAX_THRESHOLDS:
        raise ValidationError(field, f"at most {MAX_THRESHOLDS} thresholds")
    seen: set[int] = set()
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValidationError(f"{field}[{i}]", "must be a whole percentage")
        if not 1 <= item <= MAX_PERCENT:
            raise ValidationError(f"{field}[{i}]", f"must be between 1 and {MAX_PERCENT}")
        seen.add(item)
    return tuple(sorted(seen))


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


__all__ = [
    "MAX_PERCENT",
    "MAX_THRESHOLDS",
    "AlertEvent",
    "AlertKind",
    "crossed",
    "parse_thresholds",
]
