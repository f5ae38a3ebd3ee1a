"""The SQL meter: counters, decide-and-apply, holds, grants and the ledger, in SQL.

Every hot write is one transaction that locks its series (``Database.tx``
says how), reads what the decision needs, calls the pure ``decide`` and, if
admitted, appends the event and bumps the counters in the same commit. The
statements are in ``hot.py``; debits, reservations and leases of concurrent
callers share one transaction and one commit (``group.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.alerts import alert_events
from tokenquota.domain.bounds import check_granted, check_lifetime
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Prepaid,
    Reading,
    admitted,
    decide,
)
from tokenquota.domain.errors import StoreUnreachable
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
from tokenquota.domain.ledger import CounterKey, Event, grant_event, usage_event
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page, RebuildProgress
from tokenquota.storage.ledger_rows import grant_audit
from tokenquota.storage.sql import batch
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.batch import Debit
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.group import GroupCommit, Job, WriterTurns
from tokenquota.storage.sql.hot import HotTx
from tokenquota.storage.sql.ledger import SqlCounters, SqlLedger, grant_from_row
from tokenquota.storage.sql.outbox import Recorded
from tokenquota.storage.sql.reads import Found, require_known
from tokenquota.storage.sql.shadow import ShadowHits
from tokenquota.storage.sql.tx import Database, plan_series
from tokenquota.storage.sql.warm import readings as warm_readings
from tokenquota.wire import stored

R = TypeVar("R")


class SqlMeter:
    # Steps of concurrent callers share a transaction (group.py). False gives each its
    # own, as before group commit: bench/bench_group_commit.py measures both in one run
    # (through ``SqlStore._group_commit``). Nothing else should.
    grouped: bool = True
    # Consecutive consumes of a batch decided from one read and one write (batch.py,
    # PostgreSQL). False decides each under its own savepoint, as before:
    # bench/bench_group_commit.py measures both. Nothing else should.
    batched: bool = True

    def __init__(
        self, db: Database, catalog: SqlCatalog, ledger: SqlLedger, counters: SqlCounters
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.ledger = ledger
        self.counters = counters
        self.shadow = ShadowHits(db)
        self.group = GroupCommit(self._run_batch)
        if db.dialect == "sqlite":  # leaders of several processes take turns (group.py)
            self.group.turns = WriterTurns.beside(db.engine.url.database)
        self.alerted = Recorded()

    @property
    def tz(self) -> ZoneInfo:
        return self.db.tz

    def close(self) -> None:
        """Let go of the leaders' turn file (``WriterTurns``); the store closes the database."""
        if self.group.turns is not None:
            self.group.turns.close()

    # the hot transaction ------------------------------------------------------
    def _step(
        self, step: Callable[[HotTx], R], series: frozenset[str], debit: Debit | None = None
    ) -> R:
        """A plan-taking step under the locks of ``series``: grouped, or on its own.
        A ``debit`` may be decided with the debits next to it in its batch (batch.py)."""
        if self.grouped:
            return self.group.submit(step, series, debit)
        with self.db.tx(hot=True, global_key=False) as conn:
            tx = HotTx(conn, single_lock=self.db.single_lock)
            tx.defer_writes = True
            tx.lock(series)
            result = step(tx)
            tx.commit()
            return result

    def _series(self, plan: DebitPlan, held: Sequence[str] = ()) -> frozenset[str]:
        """The series a step locks (``HotTx.lock``); none on SQLite, whose BEGIN
        IMMEDIATE already makes the step the only writer, so none are worked out."""
        if self.db.dialect != "postgresql":
            return frozenset()
        return frozenset(plan_series(plan).union(held))

    def _run_batch(self, jobs: Sequence[Job[Any]]) -> None:
        """The steps of ``jobs`` in one transaction, one commit; each job gets its own answer.

        The series locks of every step are taken at once, first, in one sorted
        statement (``Database.lock_series``), so a batch is as deadlock-free as
        one step. With more than one step, each runs under a savepoint: an
        error (a conflicting idempotency key, an unknown subject, an amount
        past the bound) undoes that step alone and is its caller's answer; the
        others go on and commit. An error the savepoint cannot contain (the
        connection lost, the commit failing) leaves the block and fails every
        job of the batch (``GroupCommit``): none of them was acknowledged.
        """
        retried = False
        while True:
            committing = reused = False
            try:
                with self.db.leader_tx() as (conn, reused):
                    tx = HotTx(conn, single_lock=self.db.single_lock, raw=self.db.driver(conn))
                    self._batch(tx, jobs)
                    committing = True  # from here, a failure may have committed
                    tx.commit()
                return
            except StoreUnreachable:
                if committing or not reused or retried:
                    raise
                retried = True  # a kept connection gone stale: once more on a fresh one
                for job in jobs:
                    job.result, job.error = None, None

    def _batch(self, tx: HotTx, jobs: Sequence[Job[Any]]) -> None:
        if tx.sql.postgres:  # SQLite's BEGIN IMMEDIATE locked everything
            tx.lock(frozenset().union(*(job.series for job in jobs)))
        # A step's writes answer nothing it needs: they go with the next batch of
        # statements (the next step's reads, or the COMMIT), one round trip a step
        # instead of two (PostgreSQL). A write failing there surfaces in the next
        # step, whose savepoint never began: its undo cannot find it and the error
        # leaves the batch, failing every job of it (none was acknowledged).
        tx.defer_writes = True
        if len(jobs) == 1:
            jobs[0].result = jobs[0].step(tx)
            return
        i = 0
        while i < len(jobs):
            # A run of two or more consumes: one read and one write for all (batch.py).
            end = i
            while tx.sql.postgres and end < len(jobs) and jobs[end].batchable is not None:
                end += 1
            if end - i >= 2:
                batch.run_debits(
                    batch.Context(self.catalog.snapshot, self.db.tz, self.alerted),
                    tx,
                    jobs[i:end],
                )
                i = end
                continue
            job = jobs[i]
            i += 1
            tx.savepoint()
            try:
                job.result = job.step(tx)
            except Exception as exc:
                tx.undo()
                job.error = exc
            else:
                tx.release()

    def _settle(
        self,
        tx: HotTx,
        plan: DebitPlan,
        found: Found,
        decision: Decision,
        *,
        create: bool,
        usage: bool,
        reservation_id: str | None = None,
        remember: bool = False,
    ) -> Decision:
        """The writes of a decided step: the subject if ``create`` finds it new, and shadow
        hits, whatever the decision; when it is admitted ``usage``, the event, its
        counters, the burn and the idempotency key's answer."""
        usage = usage and decision.allowed
        deltas: dict[CounterKey, int] = {}
        burns: dict[str, int] = {}
        bumps = None
        if usage and found.counting is not None:  # a one-row read's: no grant, counters kept
            bumps = found.counting.bumps(plan, self.db.tz, tx.tracked())
        elif usage:
            deltas, burns = tx.spent(plan, found, self.db.tz)
        event_id = tx.write(
            subject=plan.subject if create and not found.subject_known else None,
            now=plan.now,
            shadow=decision if decision.shadow_blocked else None,
            # A one-row read's consume: its event's values straight from the plan.
            event=(
                None
                if not usage
                else plan
                if found.used is not None and reservation_id is None
                else usage_event(plan, reservation_id)
            ),
            charged=found.series,
            event_id=found.event_id,
            deltas=deltas,
            burns=burns,
            bumps=bumps,
            remember=(
                (str(plan.subject), plan.idempotency_key, plan.fingerprint, decision)
                if usage and remember and plan.idempotency_key
                else None
            ),
        )
        # A one-row read's plan has no thresholds (warm.py): an admitted decision with
        # no shadow block records nothing, and its checks need not be built to see that.
        if found.used is None or not decision.allowed or decision.shadow_blocked:
            alerts = alert_events(plan, found.readings, decision)
            if alerts:  # in this transaction: recorded if, and only if, the decision is
                tx.alerts(self.alerted.fresh(alerts))
        if not usage or decision.event_id == event_id:  # (numbered when decided)
            return decision
        return decision.numbered(event_id)

    def _found(
        self,
        tx: HotTx,
        plan: DebitPlan,
        *,
        keyed: bool = True,
        bounded: bool = True,
        numbered: bool = False,
    ) -> Found:
        """The step's reads, the plan's configuration version verified among them.

        ``HotTx.read`` refuses a plan of another version (``StaleConfig``: the
        engine plans again) in the batch that takes the locks, so the tracked
        pairs may come from the snapshot of the plan's version, and, read once,
        are kept there. A step that found the version current is also the
        snapshot's answer for a while (``Snapshot.confirm``): a busy replica
        never asks the store separately.
        """
        snapshot = self.catalog.snapshot
        since = snapshot.monotonic()
        view = snapshot.at(plan.config_version)
        known = None
        if view is not None:
            known = view.known(("tracked",))
            tx.use_tracked(known)
        found = tx.read(plan, keyed=keyed, bounded=bounded, numbered=numbered)
        if known is None and view is not None and plan.config_version is not None:
            version = plan.config_version
            view.cached(("tracked",), lambda: (version, tx.tracked()))
        snapshot.confirm(plan.config_version, since)
        return found

    # counting ---------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        with self.db.tx() as conn:
            return HotTx(conn).readings(checks, now)

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

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        return self._step(
            lambda tx: self._debit(tx, plan, create_subject),
            self._series(plan),
            Debit(plan, create_subject) if self.batched else None,
        )

    def _debit(self, tx: HotTx, plan: DebitPlan, create: bool) -> Decision:
        found = self._found(tx, plan, numbered=True)
        replay = found.replayed(plan.fingerprint)
        if replay is not None:
            return replay
        require_known(found, plan, create)
        return self._apply(tx, plan, found, create=create, remember=True)

    def _apply(
        self,
        tx: HotTx,
        plan: DebitPlan,
        found: Found,
        *,
        create: bool,
        reservation_id: str | None = None,
        remember: bool = False,
    ) -> Decision:
        """Refuse past the 63-bit bound, decide, and write what the decision says.

        The series are locked, so the bound's read is race-free; it comes before
        anything is written (shadow hits included), so a refusal changes nothing.
        ``reservation_id`` makes the event a commit of that reservation."""
        check_lifetime(found.series or plan.series, plan.amounts, found.lifetime)
        decision = None
        used = found.used
        if used is not None:  # the one-row read (warm.py): no hold, grant, capacity or threshold
            decision = admitted(plan, used, found.event_id)
            if decision is None:  # a limit may refuse: ``decide`` says how, from the same numbers
                assert plan.placement is not None
                found.readings = warm_readings(plan.placement, used)
        if decision is None:
            decision = decide(plan, found.readings, prepaid=found.prepaid)
        return self._settle(
            tx,
            plan,
            found,
            decision,
            create=create,
            usage=True,
            reservation_id=reservation_id,
            remember=remember,
        )

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
        series = self._series(plan, reservation.series)
        return self._step(lambda tx: self._reserve(tx, plan, reservation, create_subject), series)

    def _reserve(
        self, tx: HotTx, plan: DebitPlan, reservation: Reservation, create: bool
    ) -> Decision:
        found = self._found(tx, plan, keyed=False, bounded=False)
        require_known(found, plan, create)
        decision = decide(plan, found.readings, prepaid=found.prepaid)
        decision = self._settle(tx, plan, found, decision, create=create, usage=False)
        if not decision.allowed:
            return decision
        tx.hold_reservation(reservation)
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
            reservation = self._reservation(conn, reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.committed is not None:
                return reservation.committed.as_replay()
            conn.execute(t.holds.delete().where(t.holds.c.reservation_id == reservation_id))
            tx = HotTx(conn)
            found = self._found(tx, plan, keyed=False, numbered=True)
            decision = self._apply(tx, plan, found, create=False, reservation_id=reservation_id)
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
        series = self._series(plan, lease.series)
        return self._step(lambda tx: self._acquire(tx, plan, lease, create_subject), series)

    def _acquire(self, tx: HotTx, plan: DebitPlan, lease: Lease, create: bool) -> Decision:
        found = self._found(tx, plan, keyed=False, bounded=False)
        require_known(found, plan, create)
        decision = decide(plan, found.readings, prepaid=found.prepaid)
        decision = self._settle(tx, plan, found, decision, create=create, usage=False)
        if not decision.allowed:
            return decision
        tx.hold_lease(lease)
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

    def rebuild(self, on_progress: RebuildProgress | None = None) -> int:
        with self.db.tx(write=True) as conn:
            return self.rebuild_in(conn, on_progress)

    def rebuild_in(self, conn: Connection, on_progress: RebuildProgress | None = None) -> int:
        """Every counter and grant balance again from the ledger, inside ``conn``."""
        conn.execute(t.counters.delete())
        tracked = self.catalog.tracked(conn)
        self.counters.add(conn, self.ledger.replay(conn, tracked, on_progress=on_progress))
        self.ledger.restore_grants(conn)
        return self.ledger.count(conn)
