"""The SQL ledger: events, the grants they spend, and counters replayed from them.

Shared by the SQL meter and the Redis meter (whose events the mover copies
here): the ledger is the source of truth both rebuild their counters from.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import Mode
from tokenquota.domain.grants import Grant, allocate
from tokenquota.domain.ledger import CounterKey, Event, increments
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Added, Counted
from tokenquota.storage.base import PROGRESS_EVERY, Page, RebuildProgress
from tokenquota.storage.ledger_rows import event_links, event_row
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import BATCH, Database

log = logging.getLogger("tokenquota.sql")


class Counters(Protocol):
    """Where counters replayed from the ledger land: SQL's table, or Redis.

    The catalog calls it when a newly tracked (metric, window) needs its
    counters backfilled; the meters when they rebuild.
    """

    def backfill(self, conn: Connection, keys: Added, start: datetime) -> None: ...


class SqlLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, conn: Connection, event: Event) -> int:
        """Insert an event (its id assigned here) and its subject links; returns the id."""
        row = event_row(event)
        inserted = conn.execute(t.events.insert().values(**row)).inserted_primary_key
        assert inserted is not None
        event_id = int(inserted[0])
        conn.execute(t.event_subjects.insert(), event_links(event_id, row))
        return event_id

    def copy(
        self, conn: Connection, rows: list[dict[str, Any]], links: list[dict[str, Any]]
    ) -> None:
        """Insert rows that carry their ids already, skipping the ones present (the mover)."""
        if rows:
            insert = self.db.insert(t.events).on_conflict_do_nothing(index_elements=["id"])
            conn.execute(insert, rows)
        if links:
            conn.execute(self.db.insert(t.event_subjects).on_conflict_do_nothing(), links)

    def get(self, conn: Connection, event_id: int) -> Event | None:
        row = conn.execute(sa.select(t.events).where(t.events.c.id == event_id)).first()
        return None if row is None else event_from_row(row)

    def count(self, conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one())

    def _query(
        self, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> sa.Select[Any]:
        query = sa.select(t.events)
        ts = t.events.c.ts
        if subject is not None:
            es = t.event_subjects.c
            query = query.join(t.event_subjects, es.event_id == t.events.c.id).where(
                es.subject == str(subject)
            )
            ts = es.ts
        if start is not None:
            query = query.where(ts >= to_micros(start))
        if end is not None:
            query = query.where(ts < to_micros(end))
        return query

    def scan(
        self,
        conn: Connection,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
    ) -> Iterator[Event]:
        last = 0
        query = self._query(subject, start, end)
        while True:
            rows = conn.execute(
                query.where(t.events.c.id > last).order_by(t.events.c.id).limit(BATCH)
            ).all()
            for row in rows:
                yield event_from_row(row)
            if len(rows) < BATCH:
                return
            last = rows[-1].id

    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        query = self._query(subject, start, end)
        with self.db.tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            rows = conn.execute(query.order_by(t.events.c.id).offset(offset).limit(limit)).all()
        return Page([event_from_row(r) for r in rows], total, offset, limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        # Batches in short read transactions: an export never holds a snapshot open for long.
        last = 0
        query = self._query(subject, start, end)
        while True:
            with self.db.tx() as conn:
                rows = conn.execute(
                    query.where(t.events.c.id > last).order_by(t.events.c.id).limit(BATCH)
                ).all()
            yield from (event_from_row(r) for r in rows)
            if len(rows) < BATCH:
                return
            last = rows[-1].id

    def replay(
        self,
        conn: Connection,
        keys: Counted,
        start: datetime | None = None,
        *,
        on_progress: RebuildProgress | None = None,
    ) -> dict[CounterKey, int]:
        """What the ledger adds to the counters ``keys`` counts each series in (a
        ``Tracking``, or a backfill's ``Added``): the one path for backfill and rebuild.

        Rebuild replays it all (``start`` None); a backfill only the events from
        ``start`` on, read through the index on ``ts``. Only with ``on_progress``
        is the ledger counted first, for the total it is told.
        """
        totals: dict[CounterKey, int] = defaultdict(int)
        events = self.scan(conn, None, None, None) if start is None else self._since(conn, start)
        total = self.count(conn) if on_progress is not None else 0
        read = 0
        for event in events:
            if on_progress is not None and read % PROGRESS_EVERY == 0:
                on_progress(read, total)
            read += 1
            if not event.is_usage:
                continue  # a grant adds credits to spend; it is not usage
            for key, units in increments(
                event.series, event.amounts, event.timestamp, self.db.tz, keys
            ).items():
                totals[key] += units
        if on_progress is not None:
            on_progress(read, max(read, total))
        if start is not None:
            log.info(
                "backfilled %s from %d ledger events since %s",
                keys,
                read,
                start,
            )
        return totals

    def _since(self, conn: Connection, start: datetime) -> Iterator[Event]:
        stmt = sa.select(t.events).where(t.events.c.ts >= to_micros(start))
        result = conn.execute(
            stmt.order_by(t.events.c.ts, t.events.c.id).execution_options(yield_per=BATCH)
        )
        for row in result:
            yield event_from_row(row)

    # grants: what the ledger's grant events gave, less what its usage burned --------
    def grants_of(self, conn: Connection, subjects: Sequence[SubjectRef]) -> list[Grant]:
        rows = conn.execute(
            sa.select(t.grants).where(t.grants.c.subject.in_([str(s) for s in subjects]))
        ).all()
        return [grant_from_row(r) for r in rows]

    def granted(self, conn: Connection, subject: SubjectRef) -> int:
        """Every credit the subject was ever granted: what the 63-bit bound is checked on."""
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.grants.c.amount), 0)).where(
                    t.grants.c.subject == str(subject)
                )
            ).scalar_one()
        )

    def insert_grant(self, conn: Connection, grant: Grant) -> None:
        conn.execute(
            t.grants.insert().values(
                id=grant.id,
                subject=str(grant.subject),
                amount=grant.amount,
                granted_at=to_micros(grant.granted_at),
                expires_at=to_micros(grant.expires_at) if grant.expires_at else None,
                remaining=grant.remaining,
            )
        )

    def burn(
        self, conn: Connection, charged: Sequence[SubjectRef], credits: int, at: datetime
    ) -> None:
        """Spend credits from each charged subject's grants, earliest expiry first."""
        if not credits:
            return
        grants = self.grants_of(conn, charged)
        for subject in charged:
            mine = [g for g in grants if g.subject == subject]
            burned, _ = allocate(mine, credits, at)
            for grant_id, units in burned.items():
                conn.execute(
                    t.grants.update()
                    .where(t.grants.c.id == grant_id)
                    .values(remaining=t.grants.c.remaining - units)
                )

    def restore_grants(self, conn: Connection) -> None:
        """Every grant's balance again from the ledger: full, less each usage's burn."""
        conn.execute(t.grants.update().values(remaining=t.grants.c.amount))
        for event in self.scan(conn, None, None, None):
            if event.is_usage:
                self.burn(conn, event.charged, event.amounts[Metric.CREDITS], event.recorded_at)


class SqlCounters:
    """The SQL meter's counters table, as the sink of ledger replays."""

    def __init__(self, db: Database, ledger: SqlLedger) -> None:
        self.db = db
        self.ledger = ledger
        upsert = db.insert(t.counters)
        self._bump = upsert.on_conflict_do_update(
            index_elements=["subject", "metric", "window", "bucket"],
            set_={"value": t.counters.c.value + upsert.excluded.value},
        )

    def add(self, conn: Connection, deltas: dict[CounterKey, int]) -> None:
        if not deltas:
            return
        rows = [
            {"subject": s, "metric": m, "window": w, "bucket": b, "value": v}
            for (s, m, w, b), v in deltas.items()
        ]
        # One statement, many parameter sets: compiled once, then served from
        # SQLAlchemy's cache (a multi-row VALUES would be compiled every time).
        for start in range(0, len(rows), BATCH):
            conn.execute(self._bump, rows[start : start + BATCH])

    def backfill(self, conn: Connection, keys: Added, start: datetime) -> None:
        self.add(conn, self.ledger.replay(conn, keys, start))


def event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        kind=row.kind,
        subject=SubjectRef.parse(row.subject),
        charged=tuple(SubjectRef.parse(s) for s in row.charged),
        timestamp=from_micros(row.ts),
        recorded_at=from_micros(row.recorded_at),
        mode=Mode(row.mode),
        amounts=Amounts.from_units_json(row.amounts),
        model=row.model,
        tags=dict(row.tags),
        idempotency_key=row.idempotency_key,
        resource=SubjectRef.parse(row.resource) if row.resource else None,
    )


def grant_from_row(row: Any) -> Grant:
    return Grant(
        id=row.id,
        subject=SubjectRef.parse(row.subject),
        amount=row.amount,
        granted_at=from_micros(row.granted_at),
        expires_at=from_micros(row.expires_at) if row.expires_at is not None else None,
        remaining=row.remaining,
    )
