"""The write side of the alert outbox in SQL: an ``AlertEvent`` as its row, and what
this process already recorded.

The hot transaction (``SqlMeter``) and the Redis mover both insert with
``ON CONFLICT (dedupe) DO NOTHING``: the unique key is the guarantee that a
threshold is recorded once per window period. ``Recorded`` is only a shortcut
in front of it, so a subject that keeps being denied does not write (or even
send) the same row with every refusal.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.clock import to_micros
from tokenquota.storage.sql import schema as t

# Dedupe keys remembered per process; past this the memory starts afresh (a key
# forgotten costs one more INSERT that the unique key turns into nothing).
MAX_REMEMBERED: Final = 100_000


def alert_values(event: AlertEvent) -> tuple[Any, ...]:
    """The row in ``statements.Sql.alert``'s column order."""
    return (
        event.dedupe,
        event.kind.value,
        event.subject,
        event.metric,
        event.window,
        None if event.period_start is None else to_micros(event.period_start),
        event.threshold,
        event.used,
        event.limit,
        None if event.reset_at is None else to_micros(event.reset_at),
        to_micros(event.at),
    )


_COLUMNS: Final = (
    "dedupe",
    "kind",
    "subject",
    "metric",
    "window",
    "period_start",
    "threshold",
    "used",
    "limit_value",
    "reset_at",
    "at",
)


def insert_alerts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert outbox rows (``_COLUMNS``) through SQLAlchemy; a dedupe key present already
    is skipped. For writers outside the hot transaction (the Redis mover)."""
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(t.alert_events).on_conflict_do_nothing(index_elements=["dedupe"]), rows)


def alert_row(event: AlertEvent) -> dict[str, Any]:
    return dict(zip(_COLUMNS, alert_values(event), strict=True))


class Recorded:
    """The dedupe keys of denials and shadow blocks this process has written: skip them.

    Only for the kinds that repeat with every refusal. A threshold is crossed
    by one decision a period, and a crossing whose transaction failed must be
    recorded by the retry that crosses it again, so it never goes through here.
    A refusal whose transaction fails after this remembered it is not written
    again by this process until the memory starts afresh (another replica, or
    the next period, records it): the price of not writing on every refusal.
    """

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def fresh(self, events: Sequence[AlertEvent]) -> list[AlertEvent]:
        """The events not recorded yet by this process, now remembered as recorded
        (threshold crossings always pass)."""
        out = []
        with self._lock:
            keys = self._keys
            for event in events:
                if event.kind is AlertKind.THRESHOLD:
                    out.append(event)
                    continue
                key = event.dedupe
                if key in keys:
                    continue
                if len(keys) >= MAX_REMEMBERED:
                    keys.clear()
                keys.add(key)
                out.append(event)
        return out


__all__ = ["MAX_REMEMBERED", "Recorded", "alert_row", "alert_values", "insert_alerts"]
