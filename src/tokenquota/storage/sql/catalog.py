"""The SQL catalog: subjects, rules, plans, defaults, keys (keys.py), resource quotas, audit.

Read often and written rarely: every write of configuration here takes the
exclusive lock (see ``Database.tx``) and moves the version token in the same
transaction (the ``config_version`` row of ``meta``), which every hot step
reads under its shared lock to refuse a plan made from an older version;
the planner reads through this catalog's ``Snapshot`` (storage/snapshot.py).
Beside Redis the token lives in Redis instead (``token``), moved when the
write announces itself. Counters backfilled for a newly tracked window go to
whatever ``Counters`` the store was composed with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from tokenquota.domain.bounds import LIFETIME, backfill_start
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.errors import Conflict, NotFound
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry, plan_target, resource_target
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.subjects import Subject, SubjectRef, ancestors_of, check_acyclic
from tokenquota.storage.base import Layer, Page, RuleSet, Scope
from tokenquota.storage.snapshot import Snapshot, View
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.keys import SqlKeys
from tokenquota.storage.sql.ledger import Counters
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.sql.version import SqlVersion
from tokenquota.wire.catalog import encode_plan, encode_rule, encode_subject


class SqlCatalog:
    def __init__(
        self, db: Database, counters: Counters, *, token: Callable[[], str] | None = None
    ) -> None:
        self.db = db
        self.counters = counters
        self.version = SqlVersion(db, token)  # token: where it lives beside Redis
        self.snapshot = Snapshot(self)
        self.keys = SqlKeys(db, self.write_audit)

    # the configuration snapshot (storage/snapshot.py) and its version (version.py) ----
    def config(self) -> View:
        return self.snapshot.view()

    def config_stale(self) -> None:
        self.snapshot.invalidate()

    def config_version(self) -> str:
        return self.version.current()

    def load_rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> tuple[str, list[tuple[SubjectRef, RuleSet]]]:
        return self.version.versioned(lambda conn: self._chain(conn, ref, with_ancestors))

    def load_ancestors(self, ref: SubjectRef) -> tuple[str, list[SubjectRef]]:
        return self.version.versioned(
            lambda conn: ancestors_of(ref, lambda r: self._parents(conn, r))
        )

    def load_resource_quota(self, resource: SubjectRef) -> tuple[str, dict[str, Any] | None]:
        return self.version.versioned(lambda conn: self._resource_quota(conn, resource))

    def load_tracked(self) -> tuple[str, frozenset[LimitKey]]:
        return self.version.versioned(lambda conn: frozenset(self.tracked(conn)))

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A configuration write: exclusive, moving the version in the same transaction."""
        with self.db.tx(write=True) as conn:
            self.version.bump(conn)
            yield conn
        self.snapshot.invalidate()  # this replica reads its own write at once

    # subjects ---------------------------------------------------------------
    def get_subject(self, ref: SubjectRef) -> Subject | None:
        with self.db.tx() as conn:
            return self.subject_in(conn, ref)

    def subject_in(self, conn: Connection, ref: SubjectRef) -> Subject | None:
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

    def ensure_subject(self, conn: Connection, ref: SubjectRef, now: datetime) -> None:
        conn.execute(
            self.db.insert(t.subjects)
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
        with self._write() as conn:
            existing = self.subject_in(conn, ref)
            before = encode_subject(existing) if existing else None
            self.ensure_subject(conn, ref, now)
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
                    self.ensure_subject(conn, parent, now)
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
            subject = self.subject_in(conn, ref)
            assert subject is not None
            if encode_subject(subject) != before:
                self.write_audit(
                    conn, now, actor, "subject.put", str(ref), before, encode_subject(subject)
                )
            return subject

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write() as conn:
            if self.subject_in(conn, ref) is None:
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
            self.write_audit(
                conn, now, actor, "subject.delete", str(ref), [encode_rule(r) for r in before], None
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
        with self.db.tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            refs = conn.execute(
                query.order_by(t.subjects.c.ref).offset(offset).limit(limit)
            ).scalars()
            items = [self.subject_in(conn, SubjectRef.parse(r)) for r in refs]
        return Page([s for s in items if s], total, offset, limit)

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        with self.db.tx() as conn:
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
        with self.db.tx() as conn:
            return self._rules(conn, scope)

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        with self._write() as conn:
            if scope.layer is Layer.PLAN and self._plan(conn, scope.name) is None:
                raise NotFound(f"no plan {scope.name!r}")
            if scope.layer is Layer.OVERRIDE:
                self.ensure_subject(conn, SubjectRef.parse(scope.name), now)
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
                self.write_audit(
                    conn,
                    now,
                    actor,
                    f"{scope.layer.value}.set",
                    scope.audit_target,
                    encode_rule(before) if before else None,
                    encode_rule(after) if after else None,
                )
            self._track(conn, [c.key for c in changes if c.value is not None], now)
            return self._rules(conn, scope)

    def list_default_kinds(self) -> list[str]:
        with self.db.tx() as conn:
            rows = conn.execute(
                sa.select(t.rules.c.scope).where(t.rules.c.layer == Layer.DEFAULT.value).distinct()
            )
            return sorted(r.scope for r in rows)

    def track(self, keys: Sequence[LimitKey], now: datetime) -> None:
        # An engine starting tracks what is tracked already, mostly: then no new
        # version and no announcement (replicas starting together would keep
        # each other's plans stale).
        with self.db.tx(write=True, announce=False) as conn:
            tracking = self._track(conn, keys, now)
            if tracking:
                self.version.bump(conn)
        if tracking:
            self.db.announce()
            self.snapshot.invalidate()

    def tracked(self, conn: Connection) -> set[LimitKey]:
        # Migration 0006 adds the LIFETIME pairs to the table; the union keeps a
        # store counting them even if a row was removed by hand.
        return set(LIFETIME) | {
            LimitKey.from_storage(r.metric, r.window) for r in conn.execute(sa.select(t.tracked))
        }

    def _track(self, conn: Connection, keys: Sequence[LimitKey], now: datetime) -> bool:
        """Track the new pairs among ``keys``; whether there were any."""
        new = {k for k in keys if k.window is not None} - self.tracked(conn)
        if not new:
            return False
        conn.execute(
            t.tracked.insert(), [{"metric": k.metric.value, "window": k.window_key} for k in new]
        )
        starts: dict[datetime | None, set[LimitKey]] = defaultdict(set)
        for key in new:
            starts[backfill_start(key, now, self.db.tz)].add(key)
        for start, group in starts.items():
            if start is not None:  # None: a lifetime pair, kept from the first event
                self.counters.backfill(conn, group, start)
        return True

    # plans ------------------------------------------------------------------
    def _plan(self, conn: Connection, plan_id: str) -> Plan | None:
        row = conn.execute(sa.select(t.plans).where(t.plans.c.id == plan_id)).first()
        if row is None:
            return None
        return Plan(row.id, row.name, tuple(self._rules(conn, Scope(Layer.PLAN, row.id))))

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
                conn.execute(t.rules.insert(), [_rule_row(scope, r) for r in rules])
            self._track(conn, [r.key for r in rules], now)
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
            conn.execute(_scope_filter(t.rules.delete(), Scope(Layer.PLAN, plan_id)))
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

    def write_audit(
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
        with self.db.tx() as conn:
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

    # API keys (keys.py) ---------------------------------------------------------
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        self.keys.create(key, secret_hash, actor=actor)

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        return self.keys.get(key_id)

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]:
        return self.keys.list(offset=offset, limit=limit)

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool:
        return self.keys.revoke(key_id, actor=actor, now=now)

    # resource quotas --------------------------------------------------------
    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        with self.db.tx() as conn:
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
        with self._write() as conn:
            before = self._resource_quota(conn, resource)
            self.ensure_subject(conn, resource, now)
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
                self.write_audit(conn, now, actor, "quota.set", target, before, quota)

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write() as conn:
            before = self._resource_quota(conn, resource)
            if before is None:
                return False
            conn.execute(
                t.resource_quotas.delete().where(t.resource_quotas.c.resource == str(resource))
            )
            target = resource_target(str(resource))
            self.write_audit(conn, now, actor, "quota.delete", target, before, None)
            return True

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        with self.db.tx() as conn:
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
