"""Holds in flight on SQLite and PostgreSQL (storage/inflight.py): two bounded counts.

Read in one read transaction, taking no lock a decision waits for. The tables
hold settled and lapsed holds too until pruning removes them (the holds
horizon, docs/retention.md), so a count walks them: without an index on the
state and expiry, which would cost every reserve and commit a second index
write for a number read once per scrape (and cached, http/metrics.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tokenquota.domain.clock import to_micros
from tokenquota.domain.holds import HoldState
from tokenquota.storage.inflight import CAP, InFlight
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database

R = t.reservations
L = t.leases


def _bounded(conn: Any, table: sa.Table, *where: Any) -> int:
    """``count(*)`` of the rows matching, stopping at ``CAP``."""
    rows = sa.select(sa.literal(1)).select_from(table).where(*where).limit(CAP).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one())


class SqlInFlight:
    def __init__(self, db: Database) -> None:
        self.db = db

    def in_flight(self, now: datetime) -> InFlight:
        at = to_micros(now)
        with self.db.tx() as conn:
            reservations = _bounded(conn, R, R.c.state == HoldState.HELD.value, R.c.expires_at > at)
            leases = _bounded(conn, L, L.c.released_at.is_(None), L.c.expires_at > at)
        return InFlight(reservations, leases)
