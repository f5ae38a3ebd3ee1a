"""Rules, plans and the tracked pairs in SQL: the limits a subject's decision reads.

A rule lives in one of three layers (an override on a subject, a plan, a
default for a kind of subject); the planner asks for every layer of a whole
ancestor chain at once (``_rule_sets``, three queries however long the chain).
Setting a rule on a (metric, window) pair its kind of series did not count
before starts tracking it for that kind (domain/tracking.py; a plan's for
every kind) and backfills those series' counters from the ledger, in the same
transaction, so a new limit binds the next decision with the usage already
spent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from tokenquota.domain.bounds import backfill_start
from tokenquota.domain.clock import to_micros
from tokenquota.domain.errors import Conflict, NotFound
from tokenquota.domain.ledger import plan_target
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.subjects import SubjectRef, ancestors_of
from tokenquota.domain.thresholds import thresholds_from_text
from tokenquota.domain.tracking import WILDCARD, Added, Tracking
from tokenquota.storage.base import Layer, RuleSet, Scope
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.parts import rule_row, rules_in, scope_filter
from tokenquota.storage.sql.subjects import SqlSubjects
from tokenquota.wire.catalog import encode_plan, encode_rule


class SqlRules(SqlSubjects):
    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        with self.db.tx() as conn:
            return self._chain(conn, ref, with_ancestors)

    def _chain(
        self, conn: Connection, ref: SubjectRef, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
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
            rule = Rule(
                LimitKey.from_storage(row.metric, row.window),
                row.value,
                row.shadow,
                thresholds_from_text(row.thresholds),
            )
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
        with self.db.tx() as conn:
            return rules_in(conn, scope)

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        with self._write() as conn:
            if scope.layer is Layer.PLAN and self._plan(conn, scope.name) is None:
                raise NotFound(f"no plan {scope.name!r}")
            if scope.layer is Layer.OVERRIDE:
                self.ensure_subject(conn, SubjectRef.parse(scope.name), now)
            current = {r.key: r for r in rules_in(conn, scope)}
            for change in changes:
                before = current.get(change.key)
                after = (
                    None
                    if change.value is None
                    else Rule(change.key, change.value, change.shadow, change.thresholds)
                )
                if before == after:
                    continue
                where = scope_filter(t.rules.delete(), scope).where(
                    t.rules.c.metric == change.key.metric.value,
                    t.rules.c.window == change.key.window_key,
                )
                conn.execute(where)
                if after is not None:
                    conn.execute(t.rules.insert().values(**rule_row(scope, after)))
                self.write_audit(
                    conn,
                    now,
                    actor,
                    f"{scope.layer.value}.set",
                    scope.audit_target,
                    encode_rule(before) if before else None,
                    encode_rule(after) if after else None,
                )
            self._track(conn, scope.kind, [c.key for c in changes if c.value is not None], now)
            return rules_in(conn, scope)

    def list_default_kinds(self) -> list[str]:
        with self.db.tx() as conn:
            rows = conn.execute(
                sa.select(t.rules.c.scope).where(t.rules.c.layer == Layer.DEFAULT.value).distinct()
            )
            return sorted(r.scope for r in rows)

    def track(self, keys: Mapping[str, Sequence[LimitKey]], now: datetime) -> None:
        # An engine starting tracks what is tracked already, mostly: then no new
        # version and no announcement (replicas starting together would keep
        # each other's plans stale).
        with self.db.tx(write=True, announce=False) as conn:
            tracking = False
            for kind, of_kind in keys.items():  # every kind: no short cut
                tracking = self._track(conn, kind, of_kind, now) or tracking
            if tracking:
                self.version.bump(conn)
        if tracking:
            self.db.announce()
            self.snapshot.invalidate()

    def tracked(self, conn: Connection) -> Tracking:
        # Migration 0006 adds the LIFETIME pairs to the table; ``Tracking`` keeps a
        # store counting them for every kind even if a row was removed by hand.
        c = t.tracked.c
        return Tracking.from_rows(conn.execute(sa.select(c.kind, c.metric, c.window)))

    def _track(self, conn: Connection, kind: str, keys: Sequence[LimitKey], now: datetime) -> bool:
        """Track the pairs among ``keys`` new to ``kind``; whether there were any. Each
        is backfilled into the series that did not count it (``tracking.Added``)."""
        before = self.tracked(conn)
        after, new = before.adding(kind, keys)
        if not new:
            return False
        conn.execute(
            t.tracked.insert(),
            [{"kind": kind, "metric": k.metric.value, "window": k.window_key} for k in new],
        )
        starts: dict[datetime | None, set[LimitKey]] = defaultdict(set)
        for key in new:
            starts[backfill_start(key, now, self.db.tz)].add(key)
        for start, group in starts.items():
            if start is not None:  # None: a lifetime pair, kept from the first event
                self.counters.backfill(conn, Added(before, after, group), start)
        return True

    # plans ------------------------------------------------------------------
    def _plan(self, conn: Connection, plan_id: str) -> Plan | None:
        row = conn.execute(sa.select(t.plans).where(t.plans.c.id == plan_id)).first()
        if row is None:
            return None
        return Plan(row.id, row.name, tuple(rules_in(conn, Scope(Layer.PLAN, row.id))))

    def create_plan(self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime) -> Plan:
        plan_id = uuid4().hex
        scope = Scope(Layer.PLAN, plan_id)
        with self._write() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.plans.insert().values(id=plan_id, name=name, created_at=to_micros(now))
                    )
            except IntegrityError:
                raise Conflict(f"a plan named {name!r} exists", details={"field": "name"}) from None
            if rules:
                conn.execute(t.rules.insert(), [rule_row(scope, r) for r in rules])
            self._track(conn, WILDCARD, [r.key for r in rules], now)
            plan = self._plan(conn, plan_id)
            assert plan is not None
            self.write_audit(
                conn, now, actor, "plan.create", plan_target(plan_id), None, encode_plan(plan)
            )
            return plan

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan:
        with self._write() as conn:
            before = self._plan(conn, plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            if name is not None and name != before.name:
                taken = conn.execute(sa.select(t.plans.c.id).where(t.plans.c.name == name)).first()
                if taken is not None:
                    raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
                conn.execute(t.plans.update().where(t.plans.c.id == plan_id).values(name=name))
                self.write_audit(
                    conn, now, actor, "plan.rename", plan_target(plan_id), before.name, name
                )
            plan = self._plan(conn, plan_id)
            assert plan is not None
            return plan

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None:
        with self._write() as conn:
            before = self._plan(conn, plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            users = conn.execute(
                sa.select(sa.func.count()).where(t.subjects.c.plan_id == plan_id)
            ).scalar_one()
            if users:
                raise Conflict(f"plan {before.name!r} is assigned to {users} subject(s)")
            conn.execute(scope_filter(t.rules.delete(), Scope(Layer.PLAN, plan_id)))
            conn.execute(t.plans.delete().where(t.plans.c.id == plan_id))
            self.write_audit(
                conn, now, actor, "plan.delete", plan_target(plan_id), encode_plan(before), None
            )

    def get_plan(self, plan_id: str) -> Plan | None:
        with self.db.tx() as conn:
            return self._plan(conn, plan_id)

    def find_plan(self, name: str) -> Plan | None:
        with self.db.tx() as conn:
            plan_id = conn.execute(sa.select(t.plans.c.id).where(t.plans.c.name == name)).scalar()
            return self._plan(conn, plan_id) if plan_id else None

    def list_plans(self) -> list[Plan]:
        with self.db.tx() as conn:
            ids = conn.execute(sa.select(t.plans.c.id).order_by(t.plans.c.name)).scalars().all()
            return [p for p in (self._plan(conn, i) for i in ids) if p]

    def assign_plan(
        self, ref: SubjectRef, plan_id: str | None, *, actor: str, now: datetime
    ) -> None:
        with self._write() as conn:
            if plan_id is not None and self._plan(conn, plan_id) is None:
                raise NotFound(f"no plan {plan_id!r}")
            self.ensure_subject(conn, ref, now)
            before = conn.execute(
                sa.select(t.subjects.c.plan_id).where(t.subjects.c.ref == str(ref))
            ).scalar()
            if before != plan_id:
                conn.execute(
                    t.subjects.update().where(t.subjects.c.ref == str(ref)).values(plan_id=plan_id)
                )
                self.write_audit(conn, now, actor, "plan.assign", str(ref), before, plan_id)
