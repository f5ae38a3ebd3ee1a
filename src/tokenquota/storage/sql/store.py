"""SQLite and PostgreSQL via SQLAlchemy Core, with the same queries.

Atomicity on SQLite: every write runs in ``BEGIN IMMEDIATE``, which takes the
database's single write lock before the first read, so the read-decide-write
of a debit is serialised across threads and processes; WAL lets readers go on
meanwhile. ``synchronous=FULL`` makes a commit durable before we answer.

On PostgreSQL writes are serialised per counter series instead, so one hot
company does not hold up every other one: see ``SqlStore._tx`` and
``SqlStore._lock_series`` for the locks and why they cannot deadlock. A commit
is durable when it returns.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from tokenquota.domain.bounds import (
    LIFETIME,
    LIFETIME_BUCKET,
    backfill_start,
    check_granted,
    check_lifetime,
)
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
    decide,
)
from tokenquota.domain.errors import (
    Conflict,
    IdempotencyConflict,
    NotFound,
    StoreUnreachable,
    ValidationError,
)
from tokenquota.domain.grants import Grant, allocate
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
    check_extendable,
)
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.ledger import (
    AuditEntry,
    CounterKey,
    Event,
    increments,
    key_target,
    plan_target,
    resource_target,
    usage_kind,
)
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.metrics import COUNTERS, Amounts, Metric
from tokenquota.domain.subjects import Subject, SubjectRef, ancestors_of, check_acyclic
from tokenquota.storage.base import Layer, Page, RuleSet, Scope
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.migrate import upgrade

log = logging.getLogger("tokenquota.sql")

BATCH = 500
# The global advisory key, "tq" in ASCII, in PostgreSQL's one-bigint key space.
# Every write transaction takes it first: shared by the hot operations, which then
# lock their series; exclusive by everything that needs a quiet store. Released
# by the transaction's end, like every lock below.
_GLOBAL_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(29809)")
_GLOBAL_EXCLUSIVE = sa.text("SELECT pg_advisory_xact_lock(29809)")
# Series locks live in the two-int4 key space, which PostgreSQL keeps apart from
# the bigint one, so no series hash can ever equal the global key. unnest scans
# the arrays in order and the locks are taken row by row in that order: the
# order the keys are given in (sorted, see ``_series_keys``).
_SERIES_LOCKS = sa.text(
    "SELECT pg_advisory_xact_lock(k.hi, k.lo)"
    " FROM unnest(CAST(:hi AS integer[]), CAST(:lo AS integer[])) AS k(hi, lo)"
)
SQLITE_BUSY_SECONDS = 60


class SqlStore:
    # True takes the global key exclusively in every write, as before issue 6,
    # and no series locks: bench/bench_hot_rows.py sets it to measure both
    # designs in one run. Nothing else should.
    _single_lock: bool = False

    def __init__(
        self,
        url: str,
        tz: ZoneInfo | None,
        *,
        move_timezone: bool = False,
        migrate: bool = True,
    ) -> None:
        self.engine = _create_engine(url)
        self._dialect = self.engine.dialect.name
        upsert = self._insert(t.counters)
        self._bump = upsert.on_conflict_do_update(
            index_elements=["subject", "metric", "window", "bucket"],
            set_={"value": t.counters.c.value + upsert.excluded.value},
        )
        try:
            if migrate:
                try:
                    upgrade(self.engine)
                except OperationalError as exc:
                    raise StoreUnreachable(f"cannot open the database: {exc.orig}") from exc
            self.tz = self._pin_timezone(tz, move_timezone)
        except BaseException:
            self.engine.dispose()  # a store that failed to open keeps no connections
            raise

    def _pin_timezone(self, wanted: ZoneInfo | None, move: bool) -> ZoneInfo:
        """Calendar counters are bucketed in one zone; keep it with the data.

        The first opener decides (UTC unless told); later openers get it by
        default, and asking for another zone is refused unless ``move`` is set,
        which re-buckets every counter in the same transaction.
        """
        with self._tx(write=True) as conn:
            stored = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "timezone")
            ).scalar()
            if stored is None:
                self.tz = wanted or ZoneInfo("UTC")
                conn.execute(t.meta.insert().values(key="timezone", value=self.tz.key))
                return self.tz
            if wanted is None or wanted.key == stored:
                return ZoneInfo(stored)
            if not move:
                raise ValidationError(
                    "timezone",
                    f"this store keeps calendar windows in {stored}; open it without a time "
                    f"zone (or with {stored}), or move it with "
                    f"`tokenquota rebuild --timezone {wanted.key}`",
                )
            self.tz = wanted
            conn.execute(t.meta.update().where(t.meta.c.key == "timezone").values(value=wanted.key))
            self._rebuild(conn)
            return wanted

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self._tx() as conn:
            conn.execute(sa.text("SELECT 1"))

    @contextmanager
    def _tx(self, *, write: bool = False, hot: bool = False) -> Iterator[Connection]:
        """One transaction; ``write`` or ``hot`` ones are serialised against each other.

        SQLite: every write is ``BEGIN IMMEDIATE``, one writer at a time.

        PostgreSQL: a write first takes the global advisory key. A ``hot`` write
        (debit, reserve, commit, release, leases, grants) takes it *shared*, so
        hot writes run side by side, and must then call ``_lock_series`` before
        it reads anything it decides on. Every other write takes it
        *exclusively*: rebuild, backfill of a newly tracked window, a time zone
        move and the admin changes (subjects, rules, plans, quotas, keys) see
        and leave a store no hot write is half-way through, exactly as under
        the single lock this replaced.

        Why no deadlock: the global key is always the first lock a transaction
        takes, so a transaction waiting for it holds nothing anyone waits for;
        a hot one then takes all its series locks in one statement in one
        global order (``_series_keys``) and never another advisory lock after
        them. The rows hot writes change are the rows of series they have
        locked (counters, holds, grants, idempotency keys, shadow hits) or new
        rows with unique ids (events, reservations, leases), so no row lock
        wait can close a cycle either. The exclusive key waits for the shared
        holders, and new shared requests queue behind a waiting exclusive one,
        so admin changes are not starved.

        Why still no overspend: two writes that touch a common series hold a
        common series lock, so their read-decide-write steps are serialised as
        before, and READ COMMITTED reads afresh after the lock: each sees every
        change committed by the one before. Writes with no common series share
        no counter, hold, grant or key, so running them at once changes nothing
        either of them reads.
        """
        try:
            with self.engine.connect() as conn:
                if write or hot:
                    conn.execution_options(tokenquota_write=True)
                conn.info["tokenquota_series_locked"] = False  # info outlives the checkout
                with conn.begin():
                    if (write or hot) and self._dialect == "postgresql":
                        shared = hot and not self._single_lock
                        conn.execute(_GLOBAL_SHARED if shared else _GLOBAL_EXCLUSIVE)
                    yield conn
        except OperationalError as exc:
            raise StoreUnreachable(f"the database did not answer: {exc.orig}") from exc

    def _lock_series(self, conn: Connection, names: Iterable[str]) -> None:
        """Lock every counter series a hot write reads or writes, before its first read.

        ``names`` must be the whole set: the subjects and the resource-consumer
        series the decision reads (capacity shares too), the ones the write
        adds to, holds on or burns grants of, and the subject whose idempotency
        key is used. One call per transaction, so the locks are taken in one
        sorted order and a second batch can never be taken out of that order.
        """
        if self._dialect != "postgresql" or self._single_lock:
            return  # SQLite's BEGIN IMMEDIATE (or the exclusive key) already serialises
        assert not conn.info.get("tokenquota_series_locked"), "series locked twice in one tx"
        conn.info["tokenquota_series_locked"] = True
        keys = _series_keys(names)
        conn.execute(_SERIES_LOCKS, {"hi": [k[0] for k in keys], "lo": [k[1] for k in keys]})

    def _lock_hold(
        self, conn: Connection, plan: DebitPlan | None, hold: Reservation | Lease | None
    ) -> None:
        """Lock the series of an existing hold (and of a commit's plan) by its first read.

        That read, made before any series lock, is used only for the hold's
        series, which never change once it is written; the caller reads the
        hold again under the locks for its state. Two calls on one hold (a
        commit racing a release, two releases) lock its series in common, so
        the second sees what the first did.
        """
        names = set(hold.series) if hold is not None else set()
        if plan is not None:
            names |= _plan_series(plan)
        if names:
            self._lock_series(conn, names)

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # subjects ---------------------------------------------------------------
    def get_subject(self, ref: SubjectRef) -> Subject | None:
        with self._tx() as conn:
            return self._get_subject(conn, ref)

    def _get_subject(self, conn: Connection, ref: SubjectRef) -> Subject | None:
        row = conn.execute(sa.select(t.subjects).where(t.subjects.c.ref == str(ref))).first()
        if row is None:
            return None
        return Subject(
            ref,
            row.name,
            dict(row.metadata),
            tuple(self._parents(conn, ref)),
            row.plan_id,
        )

    def _parents(self, conn: Connection, ref: SubjectRef) -> list[SubjectRef]:
        rows = conn.execute(
            sa.select(t.subject_parents.c.parent)
            .where(t.subject_parents.c.child == str(ref))
            .order_by(t.subject_parents.c.position)
        )
        return [SubjectRef.parse(r.parent) for r in rows]

    def _ensure_subject(self, conn: Connection, ref: SubjectRef, now: datetime) -> None:
        conn.execute(
            self._insert(t.subjects)
            .values(
                ref=str(ref),
                kind=ref.kind,
                name=None,
                metadata={},
                plan_id=None,
                created_at=to_micros(now),
            )
            .on_conflict_do_nothing()
        )

    def put_subject(
        self,
        ref: SubjectRef,
        *,
        name: str | None,
        metadata: dict[str, Any] | None,
        parents: tuple[SubjectRef, ...] | None,
        now: datetime,
        actor: str,
    ) -> Subject:
        with self._tx(write=True) as conn:
            existing = self._get_subject(conn, ref)
            before = existing.to_wire() if existing else None
            self._ensure_subject(conn, ref, now)
            values: dict[str, Any] = {}
            if name is not None:
                values["name"] = name
            if metadata is not None:
                values["metadata"] = metadata
            if values:
                conn.execute(
                    t.subjects.update().where(t.subjects.c.ref == str(ref)).values(**values)
                )
            if parents is not None:
                check_acyclic(ref, parents, lambda r: self._parents(conn, r))
                ancestors_of(ref, lambda r: parents if r == ref else self._parents(conn, r))
                for parent in parents:
                    self._ensure_subject(conn, parent, now)
                conn.execute(
                    t.subject_parents.delete().where(t.subject_parents.c.child == str(ref))
                )
                if parents:
                    conn.execute(
                        t.subject_parents.insert(),
                        [
                            {"child": str(ref), "parent": str(p), "position": i}
                            for i, p in enumerate(parents)
                        ],
                    )
            subject = self._get_subject(conn, ref)
            assert subject is not None
            if subject.to_wire() != before:
                self._audit(conn, now, actor, "subject.put", str(ref), before, subject.to_wire())
            return subject

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._tx(write=True) as conn:
            if self._get_subject(conn, ref) is None:
                return False
            child = conn.execute(
                sa.select(t.subject_parents.c.child)
                .where(t.subject_parents.c.parent == str(ref))
                .limit(1)
            ).first()
            if child is not None:
                raise Conflict(f"{ref} still has children; detach them first")
            scope = Scope(Layer.OVERRIDE, str(ref))
            before = self._rules(conn, scope)
            conn.execute(_scope_filter(t.rules.delete(), scope))
            conn.execute(t.subject_parents.delete().where(t.subject_parents.c.child == str(ref)))
            conn.execute(t.subjects.delete().where(t.subjects.c.ref == str(ref)))
            self._audit(
                conn, now, actor, "subject.delete", str(ref), [r.to_wire() for r in before], None
            )
            return True

    def list_subjects(
        self, *, kind: str | None, parent: SubjectRef | None, offset: int, limit: int
    ) -> Page[Subject]:
        query = sa.select(t.subjects.c.ref)
        if kind is not None:
            query = query.where(t.subjects.c.kind == kind)
        if parent is not None:
            query = query.join(
                t.subject_parents, t.subject_parents.c.child == t.subjects.c.ref
            ).where(t.subject_parents.c.parent == str(parent))
        with self._tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            refs = conn.execute(
                query.order_by(t.subjects.c.ref).offset(offset).limit(limit)
            ).scalars()
            items = [self._get_subject(conn, SubjectRef.parse(r)) for r in refs]
        return Page([s for s in items if s], total, offset, limit)

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        with self._tx() as conn:
            return ancestors_of(ref, lambda r: self._parents(conn, r))

    # rules ------------------------------------------------------------------
    def _rules(self, conn: Connection, scope: Scope) -> list[Rule]:
        rows = conn.execute(_scope_filter(sa.select(t.rules), scope))
        return sorted(
            (Rule(LimitKey.from_storage(r.metric, r.window), r.value, r.shadow) for r in rows),
            key=lambda r: r.key.sort_key,
        )

    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        with self._tx() as conn:
            chain = [ref]
            if with_ancestors:
                chain += ancestors_of(ref, lambda r: self._parents(conn, r))
            return self._rule_sets(conn, chain)

    def _rule_sets(
        self, conn: Connection, chain: list[SubjectRef]
    ) -> list[tuple[SubjectRef, RuleSet]]:
        """Every layer of every subject in three queries, however long the chain."""
        names = [str(s) for s in chain]
        plan_of = {
            row.ref: row.plan_id
            for row in conn.execute(
                sa.select(t.subjects.c.ref, t.subjects.c.plan_id).where(
                    t.subjects.c.ref.in_(names), t.subjects.c.plan_id.is_not(None)
                )
            )
        }
        plan_names = (
            {
                row.id: row.name
                for row in conn.execute(
                    sa.select(t.plans.c.id, t.plans.c.name).where(
                        t.plans.c.id.in_(set(plan_of.values()))
                    )
                )
            }
            if plan_of
            else {}
        )
        r = t.rules.c
        found: dict[tuple[str, str], list[Rule]] = defaultdict(list)
        for row in conn.execute(
            sa.select(t.rules).where(
                sa.or_(
                    sa.and_(r.layer == Layer.OVERRIDE.value, r.scope.in_(names)),
                    sa.and_(r.layer == Layer.DEFAULT.value, r.scope.in_({s.kind for s in chain})),
                    sa.and_(r.layer == Layer.PLAN.value, r.scope.in_(list(plan_names))),
                )
            )
        ):
            rule = Rule(LimitKey.from_storage(row.metric, row.window), row.value, row.shadow)
            found[(row.layer, row.scope)].append(rule)

        def layer(name: Layer, scope: str) -> tuple[Rule, ...]:
            return tuple(sorted(found.get((name.value, scope), []), key=lambda x: x.key.sort_key))

        out = []
        for subject in chain:
            plan_id = plan_of.get(str(subject))
            plan = (
                Plan(plan_id, plan_names[plan_id], layer(Layer.PLAN, plan_id))
                if plan_id is not None and plan_id in plan_names
                else None
            )
            rules = RuleSet(
                layer(Layer.OVERRIDE, str(subject)), plan, layer(Layer.DEFAULT, subject.kind)
            )
            out.append((subject, rules))
        return out

    def get_rules(self, scope: Scope) -> list[Rule]:
        with self._tx() as conn:
            return self._rules(conn, scope)

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        with self._tx(write=True) as conn:
            if scope.layer is Layer.PLAN and self._plan(conn, scope.name) is None:
                raise NotFound(f"no plan {scope.name!r}")
            if scope.layer is Layer.OVERRIDE:
                self._ensure_subject(conn, SubjectRef.parse(scope.name), now)
            current = {r.key: r for r in self._rules(conn, scope)}
            for change in changes:
                before = current.get(change.key)
                after = (
                    None if change.value is None else Rule(change.key, change.value, change.shadow)
                )
                if before == after:
                    continue
                where = _scope_filter(t.rules.delete(), scope).where(
                    t.rules.c.metric == change.key.metric.value,
                    t.rules.c.window == change.key.window_key,
                )
                conn.execute(where)
                if after is not None:
                    conn.execute(t.rules.insert().values(**_rule_row(scope, after)))
                self._audit(
                    conn,
                    now,
                    actor,
                    f"{scope.layer.value}.set",
                    scope.audit_target,
                    before.to_wire() if before else None,
                    after.to_wire() if after else None,
                )
            self._track(conn, [c.key for c in changes if c.value is not None], now)
            return self._rules(conn, scope)

    def list_default_kinds(self) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.rules.c.scope).where(t.rules.c.layer == Layer.DEFAULT.value).distinct()
            )
            return sorted(r.scope for r in rows)

    def track(self, keys: Sequence[LimitKey], now: datetime) -> None:
        with self._tx(write=True) as conn:
            self._track(conn, keys, now)

    def _tracked(self, conn: Connection) -> set[LimitKey]:
        # Migration 0006 adds the LIFETIME pairs to the table; the union keeps a
        # store counting them even if a row was removed by hand.
        return set(LIFETIME) | {
            LimitKey.from_storage(r.metric, r.window) for r in conn.execute(sa.select(t.tracked))
        }

    def _track(self, conn: Connection, keys: Sequence[LimitKey], now: datetime) -> None:
        new = {k for k in keys if k.window is not None} - self._tracked(conn)
        if not new:
            return
        conn.execute(
            t.tracked.insert(), [{"metric": k.metric.value, "window": k.window_key} for k in new]
        )
        starts: dict[datetime | None, set[LimitKey]] = defaultdict(set)
        for key in new:
            starts[backfill_start(key, now, self.tz)].add(key)
        for start, group in starts.items():
            if start is not None:  # None: a lifetime pair, kept from the first event
                self._add_counters(conn, self._replay(conn, group, start))

    def _replay(
        self, conn: Connection, keys: set[LimitKey], start: datetime | None = None
    ) -> dict[CounterKey, int]:
        """What the ledger adds to ``keys``: the one path for backfill and rebuild.

        Rebuild replays it all (``start`` None); a backfill only the events from
        ``start`` on, read through the index on ``ts``.
        """
        totals: dict[CounterKey, int] = defaultdict(int)
        events = self._scan(conn, None, None, None) if start is None else self._since(conn, start)
        read = 0
        for event in events:
            read += 1
            if not event.is_usage:
                continue  # a grant adds credits to spend; it is not usage
            for key, units in increments(
                event.series, event.amounts, event.timestamp, self.tz, keys
            ).items():
                totals[key] += units
        if start is not None:
            log.info(
                "backfilled %s from %d ledger events since %s",
                ", ".join(sorted(map(str, keys))),
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
            yield _event(row)

    def _add_counters(self, conn: Connection, deltas: dict[CounterKey, int]) -> None:
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

    # plans ------------------------------------------------------------------
    def _plan(self, conn: Connection, plan_id: str) -> Plan | None:
        row = conn.execute(sa.select(t.plans).where(t.plans.c.id == plan_id)).first()
        if row is None:
            return None
        return Plan(row.id, row.name, tuple(self._rules(conn, Scope(Layer.PLAN, row.id))))

    def create_plan(self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime) -> Plan:
        plan_id = uuid4().hex
        scope = Scope(Layer.PLAN, plan_id)
        with self._tx(write=True) as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.plans.insert().values(id=plan_id, name=name, created_at=to_micros(now))
                    )
            except IntegrityError:
                raise Conflict(f"a plan named {name!r} exists", details={"field": "name"}) from None
            if rules:
                conn.execute(t.rules.insert(), [_rule_row(scope, r) for r in rules])
            self._track(conn, [r.key for r in rules], now)
            plan = self._plan(conn, plan_id)
            assert plan is not None
            self._audit(conn, now, actor, "plan.create", plan_target(plan_id), None, plan.to_wire())
            return plan

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan:
        with self._tx(write=True) as conn:
            before = self._plan(conn, plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            if name is not None and name != before.name:
                taken = conn.execute(sa.select(t.plans.c.id).where(t.plans.c.name == name)).first()
                if taken is not None:
                    raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
                conn.execute(t.plans.update().where(t.plans.c.id == plan_id).values(name=name))
                self._audit(
                    conn, now, actor, "plan.rename", plan_target(plan_id), before.name, name
                )
            plan = self._plan(conn, plan_id)
            assert plan is not None
            return plan

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None:
        with self._tx(write=True) as conn:
            before = self._plan(conn, plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            users = conn.execute(
                sa.select(sa.func.count()).where(t.subjects.c.plan_id == plan_id)
            ).scalar_one()
            if users:
                raise Conflict(f"plan {before.name!r} is assigned to {users} subject(s)")
            conn.execute(_scope_filter(t.rules.delete(), Scope(Layer.PLAN, plan_id)))
            conn.execute(t.plans.delete().where(t.plans.c.id == plan_id))
            self._audit(
                conn, now, actor, "plan.delete", plan_target(plan_id), before.to_wire(), None
            )

    def get_plan(self, plan_id: str) -> Plan | None:
        with self._tx() as conn:
            return self._plan(conn, plan_id)

    def find_plan(self, name: str) -> Plan | None:
        with self._tx() as conn:
            plan_id = conn.execute(sa.select(t.plans.c.id).where(t.plans.c.name == name)).scalar()
            return self._plan(conn, plan_id) if plan_id else None

    def list_plans(self) -> list[Plan]:
        with self._tx() as conn:
            ids = conn.execute(sa.select(t.plans.c.id).order_by(t.plans.c.name)).scalars().all()
            return [p for p in (self._plan(conn, i) for i in ids) if p]

    def assign_plan(
        self, ref: SubjectRef, plan_id: str | None, *, actor: str, now: datetime
    ) -> None:
        with self._tx(write=True) as conn:
            if plan_id is not None and self._plan(conn, plan_id) is None:
                raise NotFound(f"no plan {plan_id!r}")
            self._ensure_subject(conn, ref, now)
            before = conn.execute(
                sa.select(t.subjects.c.plan_id).where(t.subjects.c.ref == str(ref))
            ).scalar()
            if before != plan_id:
                conn.execute(
                    t.subjects.update().where(t.subjects.c.ref == str(ref)).values(plan_id=plan_id)
                )
                self._audit(conn, now, actor, "plan.assign", str(ref), before, plan_id)

    # counting ---------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        with self._tx() as conn:
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
        if not create and self._get_subject(conn, plan.subject) is None:
            raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
        self._ensure_subject(conn, plan.subject, plan.now)

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        with self._tx() as conn:
            return self._prepaid(conn, subjects, now)

    def _prepaid(
        self, conn: Connection, subjects: Sequence[SubjectRef], now: datetime
    ) -> list[Prepaid]:
        """Grants of the subjects that have any, with the credits held against them."""
        rows = conn.execute(
            sa.select(t.grants).where(t.grants.c.subject.in_([str(s) for s in subjects]))
        ).all()
        by_subject: dict[str, list[Grant]] = defaultdict(list)
        for row in rows:
            by_subject[row.subject].append(_grant(row))
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
        self._count_shadow(conn, decision)
        return decision

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        subject = str(plan.subject)
        with self._tx(hot=True) as conn:
            self._lock_series(conn, _plan_series(plan))
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
                    return Decision.from_wire(row.decision).as_replay()
            self._require_subject(conn, plan, create_subject)
            decision = self._apply(conn, plan)
            if decision.allowed and plan.idempotency_key:
                conn.execute(
                    t.idempotency.insert().values(
                        subject=subject,
                        key=plan.idempotency_key,
                        fingerprint=plan.fingerprint,
                        decision=decision.to_wire(),
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
        kind, tags = usage_kind(plan.tags, reservation_id)
        inserted = conn.execute(
            t.events.insert().values(
                kind=kind,
                subject=str(plan.subject),
                charged=[str(s) for s in plan.charged],
                ts=to_micros(plan.timestamp),
                recorded_at=to_micros(plan.now),
                mode=plan.mode.value,
                amounts=plan.amounts.to_units_json(),
                model=plan.model,
                tags=tags,
                idempotency_key=plan.idempotency_key,
                resource=str(plan.resource) if plan.resource else None,
            )
        ).inserted_primary_key
        assert inserted is not None
        event_id = int(inserted[0])
        conn.execute(
            t.event_subjects.insert(),
            [
                {"subject": str(s), "ts": to_micros(plan.timestamp), "event_id": event_id}
                for s in plan.charged
            ],
        )
        self._add_counters(
            conn,
            increments(plan.series, plan.amounts, plan.timestamp, self.tz, self._tracked(conn)),
        )
        self._burn(conn, plan.charged, plan.amounts[Metric.CREDITS], plan.now)
        return replace(decision, event_id=event_id)

    def _burn(
        self, conn: Connection, charged: Sequence[SubjectRef], credits: int, at: datetime
    ) -> None:
        """Spend credits from each charged subject's grants, earliest expiry first."""
        if not credits:
            return
        rows = conn.execute(
            sa.select(t.grants).where(t.grants.c.subject.in_([str(s) for s in charged]))
        ).all()
        grants = [_grant(r) for r in rows]
        for subject in charged:
            mine = [g for g in grants if g.subject == subject]
            burned, _ = allocate(mine, credits, at)
            for grant_id, units in burned.items():
                conn.execute(
                    t.grants.update()
                    .where(t.grants.c.id == grant_id)
                    .values(remaining=t.grants.c.remaining - units)
                )

    # prepaid credits ----------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        with self._tx(hot=True) as conn:
            # A debit of this subject reads its grants to decide, then burns them:
            # a grant must not appear between the two.
            self._lock_series(conn, [str(grant.subject)])
            granted = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.grants.c.amount), 0)).where(
                    t.grants.c.subject == str(grant.subject)
                )
            ).scalar_one()
            check_granted(str(grant.subject), int(granted), grant.amount)
            self._ensure_subject(conn, grant.subject, grant.granted_at)
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
            stamp = to_micros(grant.granted_at)
            inserted = conn.execute(
                t.events.insert().values(
                    kind="grant",
                    subject=str(grant.subject),
                    charged=[str(grant.subject)],
                    ts=stamp,
                    recorded_at=stamp,
                    mode=Mode.RECORD.value,
                    amounts={Metric.CREDITS.value: grant.amount},
                    model=None,
                    tags={"grant": grant.id},
                    idempotency_key=None,
                    resource=None,
                )
            ).inserted_primary_key
            assert inserted is not None
            event_id = int(inserted[0])
            conn.execute(
                t.event_subjects.insert().values(
                    subject=str(grant.subject), ts=stamp, event_id=event_id
                )
            )
            self._audit(
                conn,
                grant.granted_at,
                actor,
                "grant.add",
                str(grant.subject),
                None,
                grant.to_wire(grant.granted_at),
            )
            return event_id

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(t.grants)
                .where(t.grants.c.subject == str(subject))
                .order_by(t.grants.c.granted_at, t.grants.c.id)
            ).all()
        return [_grant(r) for r in rows]

    # reservations and leases ---------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        with self._tx(hot=True) as conn:
            self._lock_series(conn, _plan_series(plan) | set(reservation.series))
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
        with self._tx() as conn:
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
            committed=Decision.from_wire(row.decision) if row.decision else None,
            resource=SubjectRef.parse(row.resource) if row.resource else None,
        )

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        with self._tx(hot=True) as conn:
            self._lock_hold(conn, plan, self._reservation(conn, reservation_id))
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
                .values(state=HoldState.COMMITTED.value, decision=decision.to_wire())
            )
            return decision

    def release(self, reservation_id: str, now: datetime) -> bool:
        with self._tx(hot=True) as conn:
            self._lock_hold(conn, None, self._reservation(conn, reservation_id))
            reservation = self._reservation(conn, reservation_id)
            if reservation is None:
                raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
            if reservation.state is not HoldState.HELD:
                return False
            conn.execute(t.holds.delete().where(t.holds.c.reservation_id == reservation_id))
            conn.execute(
                t.reservations.update()
                .where(t.reservations.c.id == reservation_id)
                .values(state=HoldState.RELEASED.value)
            )
            return True

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        with self._tx(hot=True) as conn:
            self._lock_series(conn, _plan_series(plan) | set(lease.series))
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
        with self._tx() as conn:
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
        with self._tx(hot=True) as conn:
            self._lock_hold(conn, None, self._lease(conn, lease_id))
            lease = self._lease(conn, lease_id)
            if lease is None:
                raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
            if lease.released_at is not None:
                return False
            conn.execute(t.lease_holders.delete().where(t.lease_holders.c.lease_id == lease_id))
            conn.execute(
                t.leases.update()
                .where(t.leases.c.id == lease_id)
                .values(released_at=to_micros(now))
            )
            return True

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        with self._tx(hot=True) as conn:
            self._lock_hold(conn, None, self._lease(conn, lease_id))
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

    def _count_shadow(self, conn: Connection, decision: Decision) -> None:
        for status in decision.shadow_blocked:
            stmt = self._insert(t.shadow_hits).values(
                subject=status.subject, metric=status.metric, window=status.window or "", hits=1
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["subject", "metric", "window"],
                    set_={"hits": t.shadow_hits.c.hits + 1},
                )
            )

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(t.shadow_hits).where(t.shadow_hits.c.subject == str(ref)))
            return {LimitKey.from_storage(r.metric, r.window): r.hits for r in rows}

    # ledger -----------------------------------------------------------------
    def _event_query(
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

    def _scan(
        self,
        conn: Connection,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
    ) -> Iterator[Event]:
        last = 0
        query = self._event_query(subject, start, end)
        while True:
            rows = conn.execute(
                query.where(t.events.c.id > last).order_by(t.events.c.id).limit(BATCH)
            ).all()
            for row in rows:
                yield _event(row)
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
        query = self._event_query(subject, start, end)
        with self._tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            rows = conn.execute(query.order_by(t.events.c.id).offset(offset).limit(limit)).all()
        return Page([_event(r) for r in rows], total, offset, limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        # Batches in short read transactions: an export never holds a snapshot open for long.
        last = 0
        query = self._event_query(subject, start, end)
        while True:
            with self._tx() as conn:
                rows = conn.execute(
                    query.where(t.events.c.id > last).order_by(t.events.c.id).limit(BATCH)
                ).all()
            yield from (_event(r) for r in rows)
            if len(rows) < BATCH:
                return
            last = rows[-1].id

    def _audit(
        self,
        conn: Connection,
        at: datetime,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
    ) -> None:
        conn.execute(
            t.audit.insert().values(
                at=to_micros(at),
                actor=actor,
                action=action,
                target=target,
                before=before,
                after=after,
            )
        )

    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]:
        query = sa.select(t.audit)
        if target is not None:
            query = query.where(t.audit.c.target == target)
        with self._tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            rows = conn.execute(query.order_by(t.audit.c.id).offset(offset).limit(limit)).all()
        return Page(
            [
                AuditEntry(r.id, from_micros(r.at), r.actor, r.action, r.target, r.before, r.after)
                for r in rows
            ],
            total,
            offset,
            limit,
        )

    def rebuild(self) -> int:
        with self._tx(write=True) as conn:
            return self._rebuild(conn)

    def _rebuild(self, conn: Connection) -> int:
        conn.execute(t.counters.delete())
        self._add_counters(conn, self._replay(conn, self._tracked(conn)))
        conn.execute(t.grants.update().values(remaining=t.grants.c.amount))
        for event in self._scan(conn, None, None, None):
            if event.is_usage:
                self._burn(conn, event.charged, event.amounts[Metric.CREDITS], event.recorded_at)
        return int(conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one())

    # API keys ---------------------------------------------------------------
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                t.api_keys.insert().values(
                    id=key.id,
                    role=key.role.value,
                    subject=str(key.subject) if key.subject else None,
                    name=key.name,
                    secret_hash=secret_hash,
                    created_at=to_micros(key.created_at),
                    revoked_at=None,
                )
            )
            self._audit(
                conn, key.created_at, actor, "key.create", key_target(key.id), None, key.to_wire()
            )

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
        return None if row is None else (_key(row), row.secret_hash)

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]:
        with self._tx() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t.api_keys)).scalar_one()
            rows = conn.execute(
                sa.select(t.api_keys)
                .order_by(t.api_keys.c.created_at, t.api_keys.c.id)
                .offset(offset)
                .limit(limit)
            ).all()
        return Page([_key(r) for r in rows], total, offset, limit)

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool:
        with self._tx(write=True) as conn:
            row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
            if row is None or row.revoked_at is not None:
                return False
            conn.execute(
                t.api_keys.update()
                .where(t.api_keys.c.id == key_id)
                .values(revoked_at=to_micros(now))
            )
            before = _key(row)
            after = replace(before, revoked_at=now)
            self._audit(
                conn,
                now,
                actor,
                "key.revoke",
                key_target(key_id),
                before.to_wire(),
                after.to_wire(),
            )
            return True

    # resource quotas --------------------------------------------------------
    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        with self._tx() as conn:
            return self._resource_quota(conn, resource)

    def _resource_quota(self, conn: Connection, resource: SubjectRef) -> dict[str, Any] | None:
        row = conn.execute(
            sa.select(t.resource_quotas.c.quota).where(
                t.resource_quotas.c.resource == str(resource)
            )
        ).first()
        return dict(row.quota) if row else None

    def put_resource_quota(
        self,
        resource: SubjectRef,
        quota: dict[str, Any],
        keys: Sequence[LimitKey],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        with self._tx(write=True) as conn:
            before = self._resource_quota(conn, resource)
            self._ensure_subject(conn, resource, now)
            stamp = to_micros(now)
            if before is None:
                conn.execute(
                    t.resource_quotas.insert().values(
                        resource=str(resource), quota=quota, created_at=stamp, updated_at=stamp
                    )
                )
            else:
                conn.execute(
                    t.resource_quotas.update()
                    .where(t.resource_quotas.c.resource == str(resource))
                    .values(quota=quota, updated_at=stamp)
                )
            self._track(conn, keys, now)
            if before != quota:
                target = resource_target(str(resource))
                self._audit(conn, now, actor, "quota.set", target, before, quota)

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._tx(write=True) as conn:
            before = self._resource_quota(conn, resource)
            if before is None:
                return False
            conn.execute(
                t.resource_quotas.delete().where(t.resource_quotas.c.resource == str(resource))
            )
            target = resource_target(str(resource))
            self._audit(conn, now, actor, "quota.delete", target, before, None)
            return True

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        with self._tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(t.resource_quotas)
            ).scalar_one()
            rows = conn.execute(
                sa.select(t.resource_quotas)
                .order_by(t.resource_quotas.c.resource)
                .offset(offset)
                .limit(limit)
            ).all()
        return Page(
            [(SubjectRef.parse(r.resource), dict(r.quota)) for r in rows], total, offset, limit
        )


def _series_keys(names: Iterable[str]) -> list[tuple[int, int]]:
    """Two-int4 advisory keys for counter series, deduplicated and in one global order.

    A 64-bit BLAKE2b hash, not Python's ``hash`` (salted per process) nor a
    server function: every process and replica must map a series to the same
    key and sort the keys the same way, or two of them could lock in opposite
    orders. Two series that share a key only wait for each other needlessly.
    """
    keys: set[tuple[int, int]] = set()
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        keys.add(
            (
                int.from_bytes(digest[:4], "big", signed=True),
                int.from_bytes(digest[4:], "big", signed=True),
            )
        )
    return sorted(keys)


def _plan_series(plan: DebitPlan) -> set[str]:
    """Every series a plan's decision reads and its write touches, to lock them all.

    ``plan.series`` holds the charged subjects (counters bumped, grants
    burned, the subject's idempotency key) and the resource-consumer share;
    the reads add what is only read: limits' subjects and the capacity
    series of SPEC section 6, other consumers' shares among them.
    """
    return {*plan.series, *(str(check.limit.subject) for check in plan.reads)}


def _scope_filter(stmt: Any, scope: Scope) -> Any:
    return stmt.where(t.rules.c.layer == scope.layer.value, t.rules.c.scope == scope.name)


def _rule_row(scope: Scope, rule: Rule) -> dict[str, Any]:
    return {
        "layer": scope.layer.value,
        "scope": scope.name,
        "metric": rule.key.metric.value,
        "window": rule.key.window_key,
        "value": rule.value,
        "shadow": rule.shadow,
    }


def _event(row: Any) -> Event:
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


def _create_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    options: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS}
    }
    if in_memory:
        options["poolclass"] = StaticPool  # one shared connection, or each would be a new database
    engine = sa.create_engine(url, **options)

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit transactions
        # would start them late, after the first read.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("tokenquota_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        role=Role(row.role),
        subject=SubjectRef.parse(row.subject) if row.subject else None,
        name=row.name,
        created_at=from_micros(row.created_at),
        revoked_at=from_micros(row.revoked_at) if row.revoked_at is not None else None,
    )


def _grant(row: Any) -> Grant:
    return Grant(
        id=row.id,
        subject=SubjectRef.parse(row.subject),
        amount=row.amount,
        granted_at=from_micros(row.granted_at),
        expires_at=from_micros(row.expires_at) if row.expires_at is not None else None,
        remaining=row.remaining,
    )
