"""The SQL meter: counters, decide-and-apply, holds, grants and the ledger, in SQL.

Every hot write is one transaction that locks its series (``Database.tx``
says how), reads what the decision needs, calls the pure ``decide`` and, if
admitted, appends the event and bumps the counters in the same commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.bounds import LIFETIME_BUCKET, check_granted, check_lifetime
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Prepaid, Reading, decide
from tokenquota.domain.errors import IdempotencyConflict, NotFound
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
    check_extendable,
    check_lease_releasable,
    check_releasable,
)
from tokenquota.domain.ledger import Event, grant_event, increments, usage_event
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import COUNTERS, Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page
from tokenquota.storage.ledger_rows import grant_audit
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlCounters, SqlLedger, grant_from_row
from tokenquota.storage.sql.shadow import ShadowHits
from tokenquota.storage.sql.tx import Database, plan_series
from tokenquota.wire import stored


class SqlMeter:
    def __init__(
        self, db: Database, catalog: SqlCatalog, ledger: SqlLedger, counters: SqlCounters
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.ledger = ledger
        self.counters = counters
        self.shadow = ShadowHits(db)

    @property
    def tz(self) -> ZoneInfo:
        return self.db.tz

    # counting ---------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        with self.db.tx() as conn:
            return [self._read(conn, c, now) for c in checks]

    def _read(self, conn: Connection, check: Check, now: datetime) -> Reading:
        key = check.limit.key
        subject = str(check.limit.subject)
        live = to_micros(now)
        if key.metric is Metric.CONCURRENT_REQUESTS:
            lh = t.lease_holders.c
            count, first = conn.execute(
                sa.select(sa.func.count(), sa.func.min(lh.expires_at)).where(
                    lh.subject == subject, lh.expires_at > live
                )
            ).one()
            if not count:
                return Reading()
            return Reading({0: int(count)}, held_until=from_micros(int(first)))
        if key.window is None:
            return Reading()
        c = t.counters.c
        rows = conn.execute(
            sa.select(c.bucket, c.value).where(
                c.subject == subject,
                c.metric == key.metric.value,
                c.window == key.window.key,
                c.bucket.between(check.lo, check.hi),
            )
        )
        # int(): a counter is an integer; never let a driver's type leak to the wire.
        buckets = {r.bucket: int(r.value) for r in rows if r.value}
        h = t.holds.c
        held, last = conn.execute(
            sa.select(sa.func.sum(h.amount), sa.func.max(h.expires_at)).where(
                h.subject == subject, h.metric == key.metric.value, h.expires_at > live
            )
        ).one()
        if not held:
            return Reading(buckets)
        return Reading(buckets, int(held), from_micros(int(last)))

    def _require_subject(self, conn: Connection, plan: DebitPlan, create: bool) -> None:
        if not create and self.catalog.subject_in(conn, plan.subject) is None:
            raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
        self.catalog.ensure_subject(conn, plan.subject, plan.now)

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        with self.db.tx() as conn:
            return self._prepaid(conn, subjects, now)

    def _prepaid(
        self, conn: Connection, subjects: Sequence[SubjectRef], now: datetime
    ) -> list[Prepaid]:
        """Grants of the subjects that have any, with the credits held against them."""
        by_subject: dict[str, list[Grant]] = defaultdict(list)
        for grant in self.ledger.grants_of(conn, subjects):
            by_subject[str(grant.subject)].append(grant)
        out = []
        h = t.holds.c
        for subject in subjects:
            grants = by_subject.get(str(subject))
            if not grants:
                continue
            held = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(h.amount), 0)).where(
                    h.subject == str(subject),
                    h.metric == Metric.CREDITS.value,
                    h.expires_at > to_micros(now),
                )
            ).scalar_one()
            out.append(Prepaid(subject, tuple(grants), int(held)))
        return out

    def _decide(self, conn: Connection, plan: DebitPlan) -> Decision:
        decision = decide(
            plan,
            [self._read(conn, c, plan.now) for c in plan.reads],
            prepaid=self._prepaid(conn, plan.charged, plan.now),
        )
        self.shadow.count(conn, decision)
        return decision

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        subject = str(plan.subject)
        with self.db.tx(hot=True) as conn:
            self.db.lock_series(conn, plan_series(plan))
            self.catalog.verify_version(conn, plan)
            if plan.idempotency_key:
                row = conn.execute(
                    sa.select(t.idempotency).where(
                        t.idempotency.c.subject == subject,
                        t.idempotency.c.key == plan.idempotency_key,
                    )
                ).first()
                if row is not None:
                    if row.fingerprint != plan.fingerprint:
                        raise IdempotencyConflict(
                            "this idempotency key was used for a different request",
                            details={"field": "idempotency_key"},
                        )
                    return stored.decode_decision(row.decision).as_replay()
            self._require_subject(conn, plan, create_subject)
            decision = self._apply(conn, plan)
            if decision.allowed and plan.idempotency_key:
                conn.execute(
                    t.idempotency.insert().values(
                        subject=subject,
                        key=plan.idempotency_key,
                        fingerprint=plan.fingerprint,
                        decision=stored.encode_decision(decision),
                        created_at=to_micros(plan.now),
                    )
                )
            return decision

    def _check_bounds(self, conn: Connection, plan: DebitPlan) -> None:
        """Refuse usage past the 63-bit bound; the series are locked, so this is race-free."""
        metrics = [m.value for m in COUNTERS if plan.amounts[m]]
        if not metrics:
            return
        c = t.counters.c
        rows = conn.execute(
            sa.select(c.subject, c.metric, c.value).where(
                c.subject.in_(plan.series),
                c.metric.in_(metrics),
                c.window == "total",
                c.bucket == LIFETIME_BUCKET,
            )
        )
        lifetime = {(r.subject, Metric(r.metric)): int(r.value) for r in rows}
        check_lifetime(plan.series, plan.amounts, lifetime)

    def _apply(
        self, conn: Connection, plan: DebitPlan, reservation_id: str | None = None
    ) -> Decision:
        """Decide and, when admitted, append the event and bump the counters.

        ``reservation_id`` makes the event a commit of that reservation."""
        self._check_bounds(conn, plan)  # before _decide, which counts shadow hits
        decision = self._decide(conn, plan)
        if not decision.allowed:
            return decision
        event_id = self.ledger.append(conn, usage_event(plan, reservation_id))
        self.counters.add(
            conn,
            increments(
                plan.series,
                plan.amounts,
                plan.timestamp,
                self.db.tz,
                self.catalog.tracked_for(conn, plan),
            ),
        )
        self.ledger.burn(conn, plan.charged, plan.amounts[Metric.CREDITS], plan.now)
        return replace(decision, event_id=event_id)

    # prepaid credits ----------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        with self.db.tx(hot=True) as conn:
            # A debit of this subject reads its grants to decide, then burns them:
            # a grant must not appear between the two.
            self.db.lock_series(conn, [str(grant.subject)])
            check_granted(
                str(grant.subject), self.ledger.granted(conn, grant.subject), grant.amount
            )
            self.catalog.ensure_subject(conn, grant.subject, grant.granted_at)
            self.ledger.insert_grant(conn, grant)
            event_id = self.ledger.append(conn, grant_event(grant))
            self.catalog.write_audit(conn, grant.granted_at, actor, *grant_audit(grant))
            return event_id

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self.db.tx() as conn:
            rows = conn.execute(
                sa.select(t.grants)
                .where(t.grants.c.subject == str(subject))
                .order_by(t.grants.c.granted_at, t.grants.c.id)
            ).all()
        return [grant_from_row(r) for r in rows]

    # reservations and leases ---------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        with self.db.tx(hot=True) as conn:
            self.db.lock_series(conn, plan_series(plan) | set(reservation.series))
            self.catalog.verify_version(conn, plan)
            self._require_subject(conn, plan, create_subject)
            decision = self._decide(conn, plan)
            if not decision.allowed:
                return decision
            expires = to_micros(reservation.expires_at)
            conn.execute(
                t.reservations.insert().values(
                    id=reservation.id,
                    subject=str(reservation.subject),
                    charged=[str(s) for s in reservation.charged],
                    amounts=reservation.amounts.to_units_json(),
                    created_at=to_micros(reservation.created_at),
                    expires_at=expires,
                    state=HoldState.HELD.value,
                    decision=None,
                    resource=str(reservation.resource) if reservation.resource else None,
                )
            )
            conn.execute(
                t.holds.insert(),
                [
                    {
                        "subject": s,
                        "metric": m.value,
                        "expires_at": expires,
                        "reservation_id": reservation.id,
                        "amount": units,
                    }
                    for s in reservation.series
                    for m, units in reservation.amounts.items()
                ],
            )
            return decision

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        with self.db.tx() as conn:
            return self._reservation(conn, reservation_id)

    def _reservation(self, conn: Connection, reservation_id: str) -> Reservation | None:
        row = conn.execute(
            sa.select(t.reservations).where(t.reservations.c.id == reservation_id)
        ).first()
        if row is None:
            return None
        return Reservation(
            id=row.id,
            subject=SubjectRef.parse(row.subject),
            charged=tuple(SubjectRef.parse(s) for s in row.charged),
            amounts=Amounts.from_units_json(row.amounts),
            created_at=from_micros(row.created_at),
            expires_at=from_micros(row.expires_at),
            state=HoldState(row.state),
            committed=stored.decode_decision(row.decision) if row.decision else None,
            resource=SubjectRef.parse(row.resource) if row.resource else None,
        )

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        with self.db.tx(hot=True) as conn:
            self.db.lock_hold(conn, plan, self._reservation(conn, reservation_id))
            self.catalog.verify_version(conn, plan)
            reservation = self._reservation(conn, reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.committed is not None:
                return reservation.committed.as_replay()
            conn.execute(t.holds.delete().where(t.holds.c.reservation_id == reservation_id))
            decision = self._apply(conn, plan, reservation_id)
            conn.execute(
                t.reservations.update()
                .where(t.reservations.c.id == reservation_id)
                .values(state=HoldState.COMMITTED.value, decision=stored.encode_decision(decision))
            )
            return decision

    def release(self, reservation_id: str, now: datetime) -> bool:
        with self.db.tx(hot=True) as conn:
            self.db.lock_hold(conn, None, self._reservation(conn, reservation_id))
            reservation = self._reservation(conn, reservation_id)
            if not check_releasable(reservation, reservation_id):
                return False
            conn.execute(t.holds.delete().where(t.holds.c.reservation_id == reservation_id))
            conn.execute(
                t.reservations.update()
                .where(t.reservations.c.id == reservation_id)
                .values(state=HoldState.RELEASED.value)
            )
            return True

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        with self.db.tx(hot=True) as conn:
            self.db.lock_series(conn, plan_series(plan) | set(lease.series))
            self.catalog.verify_version(conn, plan)
            self._require_subject(conn, plan, create_subject)
            decision = self._decide(conn, plan)
            if not decision.allowed:
                return decision
            expires = to_micros(lease.expires_at)
            conn.execute(
                t.leases.insert().values(
                    id=lease.id,
                    subject=str(lease.subject),
                    charged=[str(s) for s in lease.charged],
                    created_at=to_micros(lease.created_at),
                    expires_at=expires,
                    released_at=None,
                    resource=str(lease.resource) if lease.resource else None,
                )
            )
            conn.execute(
                t.lease_holders.insert(),
                [{"subject": s, "expires_at": expires, "lease_id": lease.id} for s in lease.series],
            )
            return decision

    def get_lease(self, lease_id: str) -> Lease | None:
        with self.db.tx() as conn:
            return self._lease(conn, lease_id)

    def _lease(self, conn: Connection, lease_id: str) -> Lease | None:
        row = conn.execute(sa.select(t.leases).where(t.leases.c.id == lease_id)).first()
        if row is None:
            return None
        return Lease(
            id=row.id,
            subject=SubjectRef.parse(row.subject),
            charged=tuple(SubjectRef.parse(s) for s in row.charged),
            created_at=from_micros(row.created_at),
            expires_at=from_micros(row.expires_at),
            released_at=from_micros(row.released_at) if row.released_at is not None else None,
            resource=SubjectRef.parse(row.resource) if row.resource else None,
        )

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        with self.db.tx(hot=True) as conn:
            self.db.lock_hold(conn, None, self._lease(conn, lease_id))
            lease = self._lease(conn, lease_id)
            if not check_lease_releasable(lease, lease_id):
                return False
            conn.execute(t.lease_holders.delete().where(t.lease_holders.c.lease_id == lease_id))
            conn.execute(
                t.leases.update()
                .where(t.leases.c.id == lease_id)
                .values(released_at=to_micros(now))
            )
            return True

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        with self.db.tx(hot=True) as conn:
            self.db.lock_hold(conn, None, self._lease(conn, lease_id))
            lease = self._lease(conn, lease_id)
            check_extendable(lease, lease_id, now)
            expires = to_micros(expires_at)
            conn.execute(
                t.lease_holders.update()
                .where(t.lease_holders.c.lease_id == lease_id)
                .values(expires_at=expires)
            )
            conn.execute(
                t.leases.update().where(t.leases.c.id == lease_id).values(expires_at=expires)
            )
            extended = self._lease(conn, lease_id)
            assert extended is not None
            return extended

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        return self.shadow.of(ref)

    # the ledger ---------------------------------------------------------------
    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        return self.ledger.events(subject=subject, start=start, end=end, offset=offset, limit=limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        return self.ledger.iter_events(subject=subject, start=start, end=end)

    def rebuild(self) -> int:
        with self.db.tx(write=True) as conn:
            return self.rebuild_in(conn)

    def rebuild_in(self, conn: Connection) -> int:
        """Every counter and grant balance again from the ledger, inside ``conn``."""
        conn.execute(t.counters.delete())
        self.counters.add(conn, self.ledger.replay(conn, self.catalog.tracked(conn)))
        self.ledger.restore_grants(conn)
        return self.ledger.count(conn)
