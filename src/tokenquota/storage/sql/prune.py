"""Pruning SQLite and PostgreSQL, in short transactions of bounded size.

Every batch walks the next ``batch`` rows of one table in primary-key order
(an index range, so a batch costs the same at the start of a large table as
at its end) and deletes those of them the cutoffs allow, in one transaction
of its own. On PostgreSQL a batch holds the global advisory key *shared*, as
a decision does, and takes no series lock: it deletes only rows no decision
reads (domain/retention.py), so it never waits for a decision or makes one
wait for more than its row locks. On SQLite a batch is one short write
transaction, so a decision waits at most one batch. The idempotency answers
go oldest first by their ``created_at`` index, and the ledger archive walks
events by their ``ts`` index, one archiver at a time (an advisory lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tokenquota.domain.clock import to_micros
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Metric
from tokenquota.domain.retention import Cutoffs, archivable, carry_key, fold, is_carry
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.ledger import event_from_row
from tokenquota.storage.sql.tx import BATCH, Database

ARCHIVE_LOCK = "tokenquota:archive"  # a series name no subject can have (a kind is [a-z]...)


class SqlPruner:
    def __init__(self, db: Database) -> None:
        self.db = db

    def prune(self, cutoffs: Cutoffs, batch: int) -> Iterator[tuple[str, int]]:
        for kind in cutoffs.kinds:
            for removed in getattr(self, f"_{kind}")(cutoffs, batch):
                yield kind, removed

    def archive(
        self, cutoff: datetime, batch: int, sink: Callable[[Sequence[Event]], None]
    ) -> Iterator[int]:
        # In (ts, id) order through the index on ts; what stays is stepped over by the key.
        e = t.events.c
        cut = to_micros(cutoff)
        last = (-1, 0)
        while True:
            with self.db.tx(hot=True) as conn:
                # One archiver at a time across replicas: two would fold one event twice.
                self.db.lock_series(conn, [ARCHIVE_LOCK])
                rows = conn.execute(
                    sa.select(t.events)
                    .where(e.ts < cut, sa.tuple_(e.ts, e.id) > sa.tuple_(*map(sa.literal, last)))
                    .order_by(e.ts, e.id)
                    .limit(batch)
                ).all()
                if not rows:
                    return
                last = (rows[-1].ts, rows[-1].id)
                chosen = [
                    event
                    for event in map(event_from_row, rows)
                    if archivable(
                        kind_is_usage=event.is_usage,
                        tags=event.tags,
                        credits=event.amounts[Metric.CREDITS],
                        recorded_at=event.recorded_at,
                        cutoff=cutoff,
                    )
                ]
                if chosen:
                    self._fold(conn, chosen, sink)
            yield len(chosen)
            if len(rows) < batch:
                return

    def _fold(
        self, conn: sa.Connection, chosen: list[Event], sink: Callable[[Sequence[Event]], None]
    ) -> None:
        e, es = t.events.c, t.event_subjects.c
        subjects = sorted({str(ev.subject) for ev in chosen})
        found = conn.execute(
            sa.select(t.events)
            .join(t.event_subjects, es.event_id == e.id)
            .where(es.subject.in_(subjects), es.ts == 0)
        ).all()
        carries = {carry_key(ev): ev for ev in map(event_from_row, found) if is_carry(ev.tags)}
        sink(chosen)  # durable before anything is deleted
        written, deleted = fold(chosen, carries)
        for carry in written:
            row = event_row(carry)
            conn.execute(t.events.update().where(e.id == carry.id).values(**row))
            conn.execute(t.event_subjects.update().where(es.event_id == carry.id).values(ts=0))
        for start in range(0, len(deleted), BATCH):
            ids = deleted[start : start + BATCH]
            conn.execute(t.event_subjects.delete().where(es.event_id.in_(ids)))
            conn.execute(t.events.delete().where(e.id.in_(ids)))

    def _walk(
        self,
        table: sa.Table,
        pk: Sequence[sa.Column[Any]],
        batch: int,
        act: Callable[[sa.Connection, sa.ColumnElement[bool]], int],
    ) -> Iterator[int]:
        """``act`` on each next ``batch`` rows in key order, in a transaction of its own.

        ``act`` gets the connection and a condition naming the rows of its batch
        and returns how many it removed; that is yielded after the commit.
        """
        last: tuple[Any, ...] | None = None
        key = sa.tuple_(*pk)
        while True:
            with self.db.tx(hot=True) as conn:
                query = sa.select(*pk).order_by(*pk).limit(batch)
                after = None if last is None else key > sa.tuple_(*map(sa.literal, last))
                if after is not None:
                    query = query.where(after)
                rows = conn.execute(query).all()
                if not rows:
                    return
                high = tuple(rows[-1])
                span = key <= sa.tuple_(*map(sa.literal, high))
                removed = act(conn, span if after is None else sa.and_(after, span))
            yield removed
            if len(rows) < batch:
                return
            last = high

    def _counters(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        c = t.counters.c
        if not cutoffs.counters:
            return
        old = sa.or_(
            *(sa.and_(c.window == w, c.bucket < first) for w, first in cutoffs.counters.items())
        )
        pk = [c.subject, c.metric, c.window, c.bucket]
        yield from self._walk(
            t.counters,
            pk,
            batch,
            lambda conn, span: conn.execute(t.counters.delete().where(span, old)).rowcount,
        )

    def _idempotency(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        # created_at is indexed: the oldest answers come first, and the walk stops at the cutoff.
        c = t.idempotency.c
        cut = to_micros(cutoffs.idempotency)
        oldest = (
            sa.select(c.subject, c.key)
            .where(c.created_at < cut)
            .order_by(c.created_at)
            .limit(batch)
        )
        # One statement per batch: the oldest ``batch`` answers, by the created_at index.
        delete = t.idempotency.delete().where(sa.tuple_(c.subject, c.key).in_(oldest))
        while True:
            with self.db.tx(hot=True) as conn:
                removed = conn.execute(delete).rowcount
            if removed:
                yield removed
            if removed < batch:
                return

    def _reservations(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        # Settled before it expired, or expired: either way, over by its expiry.
        c = t.reservations.c
        cut = to_micros(cutoffs.holds)

        def act(conn: sa.Connection, span: sa.ColumnElement[bool]) -> int:
            ids = list(conn.execute(sa.select(c.id).where(span, c.expires_at < cut)).scalars())
            if ids:
                conn.execute(t.holds.delete().where(t.holds.c.reservation_id.in_(ids)))
                conn.execute(t.reservations.delete().where(c.id.in_(ids)))
            return len(ids)

        yield from self._walk(t.reservations, [c.id], batch, act)

    def _leases(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        c = t.leases.c
        cut = to_micros(cutoffs.holds)
        over = sa.or_(c.expires_at < cut, c.released_at < cut)

        def act(conn: sa.Connection, span: sa.ColumnElement[bool]) -> int:
            ids = list(conn.execute(sa.select(c.id).where(span, over)).scalars())
            if ids:
                conn.execute(t.lease_holders.delete().where(t.lease_holders.c.lease_id.in_(ids)))
                conn.execute(t.leases.delete().where(c.id.in_(ids)))
            return len(ids)

        yield from self._walk(t.leases, [c.id], batch, act)
