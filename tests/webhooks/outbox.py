"""Alert events put in the outbox by hand, as the decision step writes them.

The delivery tests that need many events, or events of a given shape, write
the rows the step would write: through ``State.record_alert`` on memory, as an insert
into ``alert_events`` on SQL (and beside Redis, where the mover writes them).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tokenquota import Quota
from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.clock import to_micros
from tokenquota.storage.memory.store import MemoryStore
from tokenquota.storage.sql import schema as t

_periods = itertools.count()


def alert(
    subject: str = "user:alice",
    *,
    kind: AlertKind = AlertKind.THRESHOLD,
    metric: str = "tokens",
    threshold: int | None = 80,
    used: int = 800,
    limit: int = 1000,
) -> AlertEvent:
    """A threshold event in a period of its own, so each call is a new dedupe key."""
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=next(_periods))
    return AlertEvent(
        kind=kind,
        subject=subject,
        metric=metric,
        window="day",
        period_start=start,
        threshold=threshold if kind is AlertKind.THRESHOLD else None,
        used=used,
        limit=limit,
        reset_at=start + timedelta(days=1),
        at=start + timedelta(hours=1),
    )


def record(quota: Quota, event: AlertEvent) -> int:
    """Put ``event`` in ``quota``'s outbox; its id."""
    store = quota.store
    if isinstance(store, MemoryStore):
        state = store.meter._s
        with state.lock:
            numbered = state.record_alert(event)
        assert numbered is not None
        return numbered.id
    db = store.db  # type: ignore[attr-defined]
    return insert_sql(db.engine, event)


def insert_sql(engine: sa.Engine, event: AlertEvent) -> int:
    with engine.begin() as conn:
        row = conn.execute(
            sa.insert(t.alert_events).values(**columns(event)).returning(t.alert_events.c.id)
        ).one()
    return int(row.id)


def insert_url(url: str, event: AlertEvent) -> int:
    engine = sa.create_engine(url)
    try:
        return insert_sql(engine, event)
    finally:
        engine.dispose()


def columns(event: AlertEvent) -> dict[str, object]:
    return {
        "dedupe": event.dedupe,
        "kind": event.kind.value,
        "subject": event.subject,
        "metric": event.metric,
        "window": event.window,
        "period_start": None if event.period_start is None else to_micros(event.period_start),
        "threshold": event.threshold,
        "used": event.used,
        "limit_value": event.limit,
        "reset_at": None if event.reset_at is None else to_micros(event.reset_at),
        "at": to_micros(event.at),
    }
