"""Aggregates for people watching usage: top consumers, for /v1/insights and the dashboard.

Apart from ``Quota`` (engine/quota.py) on purpose: it reads, never decides,
and needs only the store and the clock. A range is either the current period
of a window, as a limit on that window would count it now, or explicit
``start``/``end`` times; the sums come from the ledger (storage/insights.py),
so any (metric, window) can be ranked, tracked by a rule or not.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tokenquota.domain.clock import Clock, ensure_utc
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.insights import DEFAULT_TOP, MAX_TOP, Consumer, TopConsumers
from tokenquota.domain.metrics import COUNTERS, from_units, parse_metric
from tokenquota.domain.subjects import SubjectRef, parse_kind
from tokenquota.domain.windows import Window, calendar_period
from tokenquota.storage import Store
from tokenquota.storage.insights import insights_of

DEFAULT_WINDOW = "month"


class Insights:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def top_consumers(
        self,
        metric: str,
        *,
        window: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        parent: str | SubjectRef | None = None,
        kind: str | None = None,
        limit: int = DEFAULT_TOP,
        within: str | SubjectRef | None = None,
    ) -> TopConsumers:
        """The subjects that used most of ``metric`` in the range, highest first.

        ``window`` (default month when no ``start``/``end`` is given) ranks its
        current period; ``start``/``end`` rank that range instead (either may
        be left open). ``parent`` ranks its direct children by what they spent
        in it; ``within`` keeps only usage charged to that subject (a member
        key's subtree).
        """
        parsed = parse_metric(metric)
        if parsed not in COUNTERS:
            raise ValidationError("metric", f"{parsed.value} is not summed over time")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOP:
            raise ValidationError("limit", f"must be an integer from 1 to {MAX_TOP}")
        if window is not None and (start is not None or end is not None):
            raise ValidationError("window", "give a window or start/end, not both")
        key: str | None = None
        if start is None and end is None:
            key, (start, end) = self._period(window or DEFAULT_WINDOW)
        else:
            start = ensure_utc(start, "start") if start is not None else None
            end = ensure_utc(end, "end") if end is not None else None
            if start is not None and end is not None and start >= end:
                raise ValidationError("start", "must be before end")
        parent_ref = SubjectRef.parse(parent, "parent") if parent is not None else None
        within_ref = SubjectRef.parse(within, "within") if within is not None else None
        kind = parse_kind(kind) if kind is not None else None
        spent = insights_of(self.store).top_consumers(
            parsed,
            start=start,
            end=end,
            parent=parent_ref,
            within=within_ref,
            # Charged by the same events, but above the subtree asked for.
            hidden=frozenset(self.store.ancestors(within_ref)) if within_ref else frozenset(),
            kind=kind,
            limit=limit,
        )
        return TopConsumers(
            metric=parsed.value,
            window=key,
            start=start,
            end=end,
            parent=str(parent_ref) if parent_ref else None,
            kind=kind,
            consumers=tuple(
                Consumer(str(s.subject), from_units(parsed, s.units), s.events) for s in spent
            ),
        )

    def _period(self, window: str) -> tuple[str, tuple[datetime | None, datetime | None]]:
        parsed = Window.parse(window)
        now = self.clock.now()
        tz = self.store.tz
        if parsed.calendar is not None:
            return parsed.key, calendar_period(parsed.calendar, now, tz)
        if parsed.is_rolling:
            # The buckets a limit on this window sums now (domain/windows.py).
            first, last = parsed.read_range(now, tz)
            return parsed.key, (_epoch(first), _epoch(last + parsed.bucket_seconds))
        return parsed.key, (None, None)  # total: the whole ledger


def _epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
