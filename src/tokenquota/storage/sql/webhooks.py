"""The alert outbox and the webhook tables on SQLite and PostgreSQL (storage/webhooks.py).

Writes here take no configuration lock: ``tx(write=True, global_key=False,
announce=False)`` is ``BEGIN IMMEDIATE`` on SQLite (one short write
transaction, so two replicas' claims are serialised) and a plain transaction on
PostgreSQL, where ``FOR UPDATE SKIP LOCKED`` lets each replica claim rows no
other replica holds without waiting for it. Nothing here ever waits on, or
delays, a decision's series locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.alerts import AlertEvent, AlertKind
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.webhooks import (
    AUDIT_CREATE,
    AUDIT_DELETE,
    AUDIT_SECRET,
    AUDIT_UPDATE,
    Delivery,
    DeliveryStatus,
    Endpoint,
)
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.webhooks import AuditRow, audit_entry

E = t.webhook_endpoints
D = t.webhook_deliveries
A = t.alert_events


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        events=frozenset(AlertKind(k) for k in row.events.split(",") if k),
        owner=row.owner,
        description=row.description,
        created_at=from_micros(row.created_at),
        disabled_at=_time(row.disabled_at),
        sealed=row.sealed_secret,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=int(row.id),
        event_id=int(row.event_id),
        endpoint_id=row.endpoint_id,
        status=DeliveryStatus(row.status),
        attempts=int(row.attempts),
        next_attempt_at=from_micros(row.next_attempt_at),
        last_status=row.last_status,
        last_error=row.last_error,
        last_attempt_at=_time(row.last_attempt_at),
        delivered_at=_time(row.delivered_at),
        created_at=from_micros(row.created_at),
    )


def _alert(row: Any) -> AlertEvent:
    return AlertEvent(
        kind=AlertKind(row.kind),
        subject=row.subject,
        metric=row.metric,
        window=row.window,
        period_start=_time(row.period_start),
        threshold=row.threshold,
        used=int(row.used),
        limit=int(row.limit_value),
        reset_at=_time(row.reset_at),
        at=from_micros(row.at),
        id=int(row.id),
    )


def _audit(conn: Connection, row: AuditRow) -> None:
    """The entry in the catalog's audit table (parts.CatalogBase.write_audit's row), in
    the caller's transaction: the change and its entry commit together or not at all."""
    conn.execute(
        t.audit.insert().values(
            at=to_micros(row.at),
            actor=row.actor,
            action=row.action,
            target=row.target,
            before=row.before,
            after=row.after,
        )
    )


class SqlWebhooks:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _write(self) -> Any:
        return self.db.tx(write=True, global_key=False, announce=False)

    # the alert outbox (AlertLog) ---------------------------------------------------
    def alert_events(self, *, after: int, limit: int) -> list[AlertEvent]:
        with self.db.tx() as conn:
            rows = conn.execute(sa.select(A).where(A.c.id > after).order_by(A.c.id).limit(limit))
            return [_alert(r) for r in rows]

    def unfanned_alert_events(self, limit: int) -> list[AlertEvent]:
        with self.db.tx() as conn:
            rows = conn.execute(
                sa.select(A).where(A.c.fanned_out == sa.false()).order_by(A.c.id).limit(limit)
            )
            return [_alert(r) for r in rows]

    def mark_alerts_fanned(self, ids: Sequence[int]) -> None:
        if ids:
            with self._write() as conn:
                self._mark(conn, ids)

    def _mark(self, conn: Connection, ids: Sequence[int]) -> None:
        conn.execute(sa.update(A).where(A.c.id.in_(list(ids))).values(fanned_out=True))

    def alert_event(self, event_id: int) -> AlertEvent | None:
        with self.db.tx() as conn:
            row = conn.execute(sa.select(A).where(A.c.id == event_id)).first()
            return None if row is None else _alert(row)

    def subject_alerts(
        self, subject: str, *, offset: int, limit: int
    ) -> tuple[list[AlertEvent], int]:
        with self.db.tx() as conn:
            # Counted first: rows only arrive (the Redis mover, decisions), so under READ
            # COMMITTED a page read after its count never holds fewer rows than it says.
            total = conn.execute(
                sa.select(sa.func.count()).select_from(A).where(A.c.subject == subject)
            ).scalar_one()
            rows = conn.execute(
                sa.select(A)
                .where(A.c.subject == subject)
                .order_by(A.c.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return [_alert(r) for r in rows], int(total)

    def event_deliveries(self, event_ids: Sequence[int]) -> list[Delivery]:
        if not event_ids:
            return []
        with self.db.tx() as conn:
            rows = conn.execute(
                sa.select(D).where(D.c.event_id.in_(list(event_ids))).order_by(D.c.id)
            )
            return [_delivery(r) for r in rows]

    # endpoints ------------------------------------------------------------------------
    def add_endpoint(self, endpoint: Endpoint, *, actor: str) -> None:
        with self._write() as conn:
            conn.execute(
                sa.insert(E).values(
                    id=endpoint.id,
                    url=endpoint.url,
                    events=",".join(sorted(k.value for k in endpoint.events)),
                    owner=endpoint.owner,
                    description=endpoint.description,
                    created_at=to_micros(endpoint.created_at),
                    disabled_at=_micros(endpoint.disabled_at),
                    sealed_secret=endpoint.sealed,
                )
            )
            entry = audit_entry(AUDIT_CREATE, None, endpoint, actor=actor, at=endpoint.created_at)
            _audit(conn, entry)

    def _locked(self, conn: Connection, endpoint_id: str) -> Endpoint | None:
        """The endpoint's row, locked until the write commits (PostgreSQL; SQLite's write
        transaction holds the whole database): its audit's "before" is what is changed."""
        row = conn.execute(sa.select(E).where(E.c.id == endpoint_id).with_for_update()).first()
        return None if row is None else _endpoint(row)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self.db.tx() as conn:
            row = conn.execute(sa.select(E).where(E.c.id == endpoint_id)).first()
            return None if row is None else _endpoint(row)

    def endpoints(self, *, owner: str | None = None) -> list[Endpoint]:
        query = sa.select(E).order_by(E.c.created_at, E.c.id)
        if owner is not None:
            query = query.where(E.c.owner == owner)
        with self.db.tx() as conn:
            return [_endpoint(r) for r in conn.execute(query)]

    def set_disabled(
        self, endpoint_id: str, at: datetime | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        with self._write() as conn:
            before = self._locked(conn, endpoint_id)
            if before is None:
                return None
            if before.enabled == (at is None):
                return before  # no change, no entry
            conn.execute(sa.update(E).where(E.c.id == endpoint_id).values(disabled_at=_micros(at)))
            after = self._locked(conn, endpoint_id)
            _audit(conn, audit_entry(AUDIT_UPDATE, before, after, actor=actor, at=now))
            return after

    def set_sealed(
        self, endpoint_id: str, sealed: str | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        with self._write() as conn:
            before = self._locked(conn, endpoint_id)
            if before is None:
                return None
            conn.execute(sa.update(E).where(E.c.id == endpoint_id).values(sealed_secret=sealed))
            after = self._locked(conn, endpoint_id)
            _audit(conn, audit_entry(AUDIT_SECRET, before, after, actor=actor, at=now))
            return after

    def remove_endpoint(self, endpoint_id: str, *, actor: str, now: datetime) -> bool:
        with self._write() as conn:
            before = self._locked(conn, endpoint_id)
            if before is None:
                return False
            conn.execute(sa.delete(D).where(D.c.endpoint_id == endpoint_id))
            conn.execute(sa.delete(E).where(E.c.id == endpoint_id))
            _audit(conn, audit_entry(AUDIT_DELETE, before, None, actor=actor, at=now))
            return True

    # deliveries -----------------------------------------------------------------------
    def fan_out(
        self, pairs: Sequence[tuple[int, str]], events: Sequence[int], now: datetime
    ) -> int:
        at = to_micros(now)
        inserted = 0
        with self._write() as conn:
            for event_id, endpoint_id in pairs:
                stmt = (
                    self.db.insert(D)
                    .values(
                        event_id=event_id,
                        endpoint_id=endpoint_id,
                        status=DeliveryStatus.PENDING.value,
                        attempts=0,
                        next_attempt_at=at,
                        created_at=at,
                    )
                    .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
                    .returning(D.c.id)
                )
                # Counted by the rows returned: rowcount is not reliable with RETURNING.
                inserted += len(conn.execute(stmt).all())
            if events:
                self._mark(conn, events)
        return inserted

    def claim(self, now: datetime, until: datetime, limit: int) -> list[Delivery]:
        at = to_micros(now)
        base = (
            sa.select(D.c.id)
            .join(E, E.c.id == D.c.endpoint_id)
            .where(
                D.c.status == DeliveryStatus.PENDING.value,
                D.c.next_attempt_at <= at,
                sa.or_(D.c.claimed_until.is_(None), D.c.claimed_until <= at),
                E.c.disabled_at.is_(None),
            )
        )
        # Looked for first without the write lock: on SQLite a write transaction takes
        # the database's one write lock, which decisions wait for; most passes find nothing.
        with self.db.tx() as conn:
            if conn.execute(base.limit(1)).first() is None:
                return []
        due = (
            base.order_by(D.c.next_attempt_at, D.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=D)
        )
        with self._write() as conn:
            ids = [int(r.id) for r in conn.execute(due)]
            if not ids:
                return []
            conn.execute(sa.update(D).where(D.c.id.in_(ids)).values(claimed_until=to_micros(until)))
            rows = conn.execute(sa.select(D).where(D.c.id.in_(ids)).order_by(D.c.id))
            return [_delivery(r) for r in rows]

    def finish(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_status: int | None,
        last_error: str | None,
        at: datetime,
    ) -> None:
        values: dict[str, Any] = {
            "status": status.value,
            "attempts": attempts,
            "next_attempt_at": to_micros(next_attempt_at),
            "claimed_until": None,
            "last_status": last_status,
            "last_error": last_error,
            "last_attempt_at": to_micros(at),
        }
        if status is DeliveryStatus.DELIVERED:
            values["delivered_at"] = to_micros(at)
        with self._write() as conn:
            conn.execute(
                sa.update(D)
                .where(D.c.id == delivery_id, D.c.status == DeliveryStatus.PENDING.value)
                .values(**values)
            )

    def delivery(self, delivery_id: int) -> Delivery | None:
        with self.db.tx() as conn:
            row = conn.execute(sa.select(D).where(D.c.id == delivery_id)).first()
            return None if row is None else _delivery(row)

    def deliveries(
        self, endpoint_id: str, *, offset: int, limit: int
    ) -> tuple[list[Delivery], int]:
        with self.db.tx() as conn:
            # Counted first, as subject_alerts: the fan-out only adds rows.
            total = conn.execute(
                sa.select(sa.func.count()).select_from(D).where(D.c.endpoint_id == endpoint_id)
            ).scalar_one()
            rows = conn.execute(
                sa.select(D)
                .where(D.c.endpoint_id == endpoint_id)
                .order_by(D.c.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return [_delivery(r) for r in rows], int(total)

    def redeliver(self, delivery_id: int, now: datetime) -> Delivery | None:
        with self._write() as conn:
            conn.execute(
                sa.update(D)
                .where(D.c.id == delivery_id)
                .values(
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=to_micros(now),
                    claimed_until=None,
                )
            )
            row = conn.execute(sa.select(D).where(D.c.id == delivery_id)).first()
            return None if row is None else _delivery(row)

    def delivery_counts(self) -> dict[str, int]:
        with self.db.tx() as conn:
            rows = conn.execute(sa.select(D.c.status, sa.func.count()).group_by(D.c.status))
            counts = dict.fromkeys((s.value for s in DeliveryStatus), 0)
            for status, count in rows:
                counts[str(status)] = int(count)
            return counts
