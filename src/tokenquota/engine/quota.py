"""The engine's facade: ``Quota``, the one place that turns a request into a decision.

Each public method validates its input (``inputs``), asks the ``Planner``
for a ``DebitPlan`` naming every bucket to read, and lets the store decide
and write atomically. It holds no state of its own that decides anything,
so any number of engines may share one store. The one exception is
``on_store_error="open"``: while the store is unreachable, the ``Outage``
admits from its spool and the keys it has seen (docs/outages.md).

This file holds the consume path and the reads of usage; ``Quota`` inherits
the reservations, leases and grants from ``holds.py`` and the configuration
methods from ``config.py``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from tokenquota.domain.clock import Clock, SystemClock, ensure_utc
from tokenquota.domain.decisions import (
    Decision,
    Mode,
    decide,
    prepaid_status,
    status,
)
from tokenquota.domain.errors import StoreUnavailable, StoreUnreachable, ValidationError
from tokenquota.domain.insights import DEFAULT_TOP, TopConsumers
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Amounts, Metric, from_units, merge_amounts
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import (
    Granularity,
    GroupBy,
    HistoryPoint,
    Page,
    Usage,
)
from tokenquota.domain.windows import Calendar, calendar_period, parse_timezone
from tokenquota.engine import inputs
from tokenquota.engine.holds import Holds
from tokenquota.engine.insights import Insights
from tokenquota.engine.keycache import KEY_CACHE_SECONDS, KeyCache
from tokenquota.engine.outage import Outage
from tokenquota.engine.planner import (
    STALE_MESSAGE,
    STALE_ROUNDS,
    Planner,
    parse_config_defaults,
)
from tokenquota.engine.spool import Spool
from tokenquota.storage import Store, open_store
from tokenquota.storage.base import RebuildProgress, StaleConfig

if TYPE_CHECKING:  # redis is optional: its mover is reached through the store
    from tokenquota.storage.redis.mover import LedgerLag

shadow_log = logging.getLogger("tokenquota.shadow")

MAX_HISTORY_POINTS: Final = 10_000
DEFAULT_RETENTION: Final = timedelta(days=400)
OnStoreError = Literal["closed", "open"]
# Compared by identity per consume: reading a member off its enum class is a
# Python-level attribute lookup in 3.11, several times a global's cost.
_ENFORCE: Final = Mode.ENFORCE


class Quota(Holds):
    """The library's entry point; see ``tokenquota.open``."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        strict_subjects: bool = False,
        defaults: Iterable[Mapping[str, object]] = (),
        retention: timedelta = DEFAULT_RETENTION,
        on_store_error: OnStoreError = "closed",
        spool: str | Path | None = None,
        key_cache_seconds: float = KEY_CACHE_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        # How long a looked-up API key is trusted without the store (engine/keycache.py);
        # failing open, the keys last seen live also answer while the store is away.
        self.keys = KeyCache(
            self.clock, key_cache_seconds, keep_last_known=on_store_error == "open"
        )
        self.tz = store.tz
        self.strict_subjects = strict_subjects
        self.retention = retention
        self.planner = Planner(
            store, self.clock, defaults=parse_config_defaults(defaults), retention=retention
        )
        self.store.track(  # each kind's defaults, counted in the series of that kind
            {kind: [r.key for r in rules] for kind, rules in self.planner.config_defaults.items()},
            self.clock.now(),
        )
        if on_store_error not in ("closed", "open"):
            raise ValidationError("on_store_error", "must be closed or open")
        # on_store_error="open" (contract §5): see docs/outages.md.
        self.outage = Outage(
            store,
            self.planner,
            self.clock,
            spool=spool,
            fail_open=on_store_error == "open",
            create_subject=not strict_subjects,
        )

    @property
    def spool(self) -> Spool | None:
        """The local queue of usage admitted without the store; None when failing closed."""
        return self.outage.spool

    def ledger_lag(self) -> LedgerLag | None:
        """How far the SQL ledger is behind Redis's streams; None on a store without
        a mover (SQL and memory stores write the ledger in the decision itself)."""
        mover = getattr(getattr(self.store, "meter", None), "mover", None)
        lag: LedgerLag | None = mover.lag() if mover is not None else None
        return lag

    def close(self) -> None:
        self.outage.close()
        self.store.close()

    def __enter__(self) -> Quota:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # operations -------------------------------------------------------------
    def check(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        timestamp: datetime | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """The decision a consume in enforce mode would get now, spending nothing."""
        ref = SubjectRef.parse(subject)
        raw = merge_amounts(amounts, metric_amounts)

        def attempt() -> Decision:
            self._require_known(ref)
            plan = self.planner.plan(ref, raw, Mode.ENFORCE, timestamp, resource=resource)
            return decide(
                plan,
                self.store.read(plan.reads, plan.now),
                prepaid=self.store.prepaid(plan.charged, plan.now),
            )

        return self._or_outage(attempt, lambda outage: outage.check(ref, raw, timestamp))

    def consume(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        mode: str | Mode = Mode.ENFORCE,
        idempotency_key: str | None = None,
        timestamp: datetime | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Spend, all or nothing across the subject, its ancestors and every limit.

        ``mode="record"`` stores usage that already happened, whatever the limits
        say. A retry with the same ``idempotency_key`` returns the first answer
        and charges nothing; a denied call is not remembered, so it may be retried.
        """
        # The checks of ``inputs``, each called only for a value given: the defaults
        # (no key, model or tags) are the common call, and need no call to check.
        ref = SubjectRef.parse(subject)
        parsed_mode = mode if mode is _ENFORCE else inputs.mode(mode)
        # Keyword amounts alone arrive in a dict of this call's own: no copy needed.
        raw = metric_amounts if amounts is None else merge_amounts(amounts, metric_amounts)
        key = (
            None
            if idempotency_key is None
            else inputs.bounded_text(idempotency_key, "idempotency_key", inputs.MAX_KEY_LENGTH)
        )
        if model is not None:
            model = inputs.bounded_text(model, "model", inputs.MAX_MODEL_LENGTH)
        parsed_tags = {} if tags is None else inputs.tags(tags)
        parsed = Amounts.parse(raw)  # where the planner would: after every check above
        try:
            # ``planned`` and ``_or_outage`` written out, without their closures:
            # plan again while the step finds the configuration moved, and when
            # the store is unreachable, queue through the outage if it admits.
            for _ in range(STALE_ROUNDS):
                try:
                    plan = self.planner.plan(
                        ref,
                        parsed,
                        parsed_mode,
                        timestamp,
                        idempotency_key=key,
                        model=model,
                        tags=parsed_tags,
                        resource=resource,
                    )
                    decision = self.store.debit(plan, create_subject=not self.strict_subjects)
                    break
                except StaleConfig:
                    continue
            else:
                raise StoreUnavailable(STALE_MESSAGE)
        except StoreUnreachable:
            if not self.outage.admits:
                raise
            decision = self.outage.queue(
                ref,
                parsed,
                parsed_mode,
                key=key,
                timestamp=timestamp,
                model=model,
                tags=parsed_tags,
                resource=resource,
            )
        for hit in decision.shadow_blocked:
            shadow_log.warning(
                "shadow limit would have blocked %s: %s %s used %s of %s",
                decision.subject,
                hit.subject,
                f"{hit.metric}/{hit.window}",
                hit.used,
                hit.limit,
            )
        return decision

    def drain(self) -> int:
        """Store what was admitted while the store was unreachable; see ``Outage.drain``."""
        return self.outage.drain()

    # reads ------------------------------------------------------------------
    def usage(self, subject: str | SubjectRef, *, include_ancestors: bool = False) -> Usage:
        """Every effective limit with what is used, left and when it resets."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        now = self.clock.now()
        # From the snapshot: limits here may lag a change elsewhere by its bound (1 s).
        view = self.store.config()
        chain = self.planner.effective_chain(ref, with_ancestors=include_ancestors, view=view)
        checks = [self.planner.usage_check(limit, now) for _, limits in chain for limit in limits]
        readings = self.store.read(checks, now)
        subjects = [s for s, _ in chain]
        wallets = [prepaid_status(p, now, self.tz) for p in self.store.prepaid(subjects, now)]
        return Usage(
            str(ref),
            now,
            tuple(status(c, r, self.tz) for c, r in zip(checks, readings, strict=True))
            + tuple(wallets),
        )

    def shadow_hits(self, subject: str | SubjectRef) -> dict[str, int]:
        """How many decisions each shadow limit of the subject would have blocked."""
        return {str(k): v for k, v in self.store.shadow_hits(SubjectRef.parse(subject)).items()}

    def history(
        self,
        subject: str | SubjectRef,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str = "day",
        group_by: str = "metric",
    ) -> list[HistoryPoint]:
        """A time series from the ledger, in periods of the configured time zone."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        try:
            grain = Granularity(granularity)
        except ValueError:
            raise ValidationError("granularity", "must be hour, day or month") from None
        try:
            grouping = GroupBy(group_by)
        except ValueError:
            raise ValidationError("group_by", "must be metric or model") from None
        unit = Calendar(grain.value)
        # By default: through the end of the current period, so "now" is included.
        stop = (
            ensure_utc(end, "end") if end else calendar_period(unit, self.clock.now(), self.tz)[1]
        )
        begin = ensure_utc(start, "start") if start else stop - timedelta(days=30)
        if begin >= stop:
            raise ValidationError("start", "must be before end")
        first = calendar_period(unit, begin, self.tz)[0]
        if (stop - first) / _GRAIN_SPAN[grain] > MAX_HISTORY_POINTS:
            raise ValidationError(
                "start", f"the range spans more than {MAX_HISTORY_POINTS} periods"
            )
        sums: dict[tuple[datetime, str, str | None], int] = defaultdict(int)
        ends: dict[datetime, datetime] = {}
        for event in self.store.iter_events(subject=ref, start=begin, end=stop):
            if not event.is_usage:
                continue  # grants are credit, not usage
            period_start, period_end = calendar_period(unit, event.timestamp, self.tz)
            ends[period_start] = period_end
            model = (event.model or "") if grouping is GroupBy.MODEL else None
            for metric, units in event.amounts.items():
                sums[(period_start, metric.value, model)] += units
        return [
            HistoryPoint(p, ends[p], metric, model, from_units(Metric(metric), units))
            for (p, metric, model), units in sorted(
                sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
            )
        ]

    def events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Event]:
        return self.store.events(
            subject=SubjectRef.parse(subject) if subject is not None else None,
            start=ensure_utc(start, "start") if start else None,
            end=ensure_utc(end, "end") if end else None,
            offset=inputs.offset(offset),
            limit=inputs.limit(limit),
        )

    def iter_events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Event]:
        """Every matching event, streamed in batches: for exports."""
        return self.store.iter_events(
            subject=SubjectRef.parse(subject) if subject is not None else None,
            start=ensure_utc(start, "start") if start else None,
            end=ensure_utc(end, "end") if end else None,
        )

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
    ) -> TopConsumers:
        """Who used most of ``metric`` in a window's current period (default month) or a
        range; under ``parent``, its direct children by what they spent in it.

        The same method as the clients' (/v1/insights/top-consumers), so code moves
        between the library and the service unchanged; see ``Insights``.
        """
        return Insights(self.store, self.clock).top_consumers(
            metric, window=window, start=start, end=end, parent=parent, kind=kind, limit=limit
        )

    def rebuild(self, *, on_progress: RebuildProgress | None = None) -> int:
        """Recompute every counter from the ledger; returns the number of events replayed.

        ``on_progress(replayed, total)`` is called now and then while the ledger
        is replayed (the CLI's progress bar); it must not call back into the store.
        """
        return self.store.rebuild(on_progress)


_GRAIN_SPAN: Final = {
    Granularity.HOUR: timedelta(hours=1),
    Granularity.DAY: timedelta(days=1),
    Granularity.MONTH: timedelta(days=28),
}


def open(
    url: str = "sqlite:///tokenquota.db",
    *,
    redis: str | None = None,
    clock: Clock | None = None,
    timezone: str | None = None,
    move_timezone: bool = False,
    strict_subjects: bool = False,
    defaults: Iterable[Mapping[str, object]] = (),
    retention: timedelta = DEFAULT_RETENTION,
    on_store_error: OnStoreError = "closed",
    spool: str | Path | None = None,
    key_cache_seconds: float = KEY_CACHE_SECONDS,
) -> Quota:
    """Open a quota store: ``memory://``, ``sqlite:///path.db`` or ``postgresql://…``.

    SQL stores are migrated on open. ``redis="redis://host:port"`` keeps the
    hot counters in Redis (or a Redis Cluster) beside a SQL store that holds
    the ledger: see docs/redis.md.

    Calendar windows are counted in one IANA ``timezone`` kept with the data:
    a new store takes the one given (UTC by default), an existing one keeps its
    own, and asking it for another is refused unless ``move_timezone`` is set,
    which recomputes every counter in the new zone.

    ``on_store_error="open"`` admits consumes, checks, reservations and leases
    while the store is unreachable, and keeps the usage in a local ``spool``
    file (``tokenquota-spool.db`` by default) until the store takes it; see
    docs/outages.md. The default, ``"closed"``, answers StoreUnavailable.

    ``authenticate`` trusts a key it looked up for ``key_cache_seconds`` (at
    most 1, 0 to ask the store every time): a key revoked through another
    engine stops working here within that bound (docs/api.md).
    """
    tz = parse_timezone(timezone) if timezone is not None else None
    store = open_store(url, tz, move_timezone=move_timezone, redis=redis)
    try:
        return Quota(
            store,
            clock=clock,
            strict_subjects=strict_subjects,
            defaults=defaults,
            retention=retention,
            on_store_error=on_store_error,
            spool=spool,
            key_cache_seconds=key_cache_seconds,
        )
    except BaseException:
        store.close()  # bad settings: no connection pool or mover thread left behind
        raise


__all__ = ["DEFAULT_RETENTION", "OnStoreError", "Quota", "open"]
