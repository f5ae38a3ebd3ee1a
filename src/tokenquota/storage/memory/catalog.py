"""The memory catalog: subjects, rules, plans, keys, resource quotas and the audit log.

It keeps its tables in the one ``State`` it shares with the memory meter and
takes that state's lock around every operation (see state.py). Every write
of configuration moves the state's version token under that lock, which is
what the meter's steps compare each plan's version with; the planner reads
through this catalog's ``Snapshot`` (storage/snapshot.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import uuid4

from tokenquota.domain.bounds import backfill_start
from tokenquota.domain.errors import Conflict, NotFound
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry, key_target, plan_target, resource_target
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.subjects import Subject, SubjectRef, ancestors_of, check_acyclic
from tokenquota.domain.tracking import WILDCARD, Added, Tracking
from tokenquota.storage.base import Layer, Page, RuleSet, Scope
from tokenquota.storage.memory.state import State, SubjectRow
from tokenquota.storage.snapshot import Snapshot, View
from tokenquota.wire.catalog import encode_key, encode_plan, encode_rule, encode_subject

log = logging.getLogger("tokenquota.memory")


class MemoryCatalog:
    def __init__(self, state: State) -> None:
        self._s = state
        self._lock = state.lock
        self.snapshot = Snapshot(self)
        # What a plan reads: the snapshot's view, asked for directly (no frame of ours).
        self.config: Callable[[], View] = self.snapshot.view

    @property
    def state(self) -> State:
        """The state this catalog reads: another catalog over it is another replica."""
        return self._s

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A configuration write: under the lock, and moving the version once it is done."""
        with self._lock:
            yield
            self._s.bump_config()
            self.snapshot.invalidate()

    # the configuration snapshot -----------------------------------------------
    def config_stale(self) -> None:
        self.snapshot.invalidate()

    def config_version(self) -> str:
        return self._s.config_version

    def load_rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> tuple[str, list[tuple[SubjectRef, RuleSet]]]:
        with self._lock:
            return self._s.config_version, self.rule_sets(ref, with_ancestors=with_ancestors)

    def load_ancestors(self, ref: SubjectRef) -> tuple[str, list[SubjectRef]]:
        with self._lock:
            return self._s.config_version, self.ancestors(ref)

    def load_resource_quota(self, resource: SubjectRef) -> tuple[str, dict[str, Any] | None]:
        with self._lock:
            return self._s.config_version, self.get_resource_quota(resource)

    def load_tracked(self) -> tuple[str, Tracking]:
        with self._lock:
            return self._s.config_version, self._s.tracked

    # subjects ---------------------------------------------------------------
    def get_subject(self, ref: SubjectRef) -> Subject | None:
        with self._lock:
            row = self._s.subjects.get(ref)
            return None if row is None else self._subject(ref, row)

    def _subject(self, ref: SubjectRef, row: SubjectRow) -> Subject:
        return Subject(ref, row.name, dict(row.metadata), row.parents, row.plan_id)

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
        with self._write():
            existing = self._s.subjects.get(ref)
            before = encode_subject(self._subject(ref, existing)) if existing else None
            if parents is not None:
                check_acyclic(ref, parents, self._s.parents_of)
                ancestors_of(ref, lambda r: parents if r == ref else self._s.parents_of(r))
                for parent in parents:
                    self._s.subject_row(parent)
            row = self._s.subject_row(ref)
            if name is not None:
                row.name = name
            if metadata is not None:
                row.metadata = dict(metadata)
            if parents is not None:
                row.parents = parents
            subject = self._subject(ref, row)
            if encode_subject(subject) != before:
                self._s.write_audit(
                    now, actor, "subject.put", str(ref), before, encode_subject(subject)
                )
            return subject

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write():
            if ref not in self._s.subjects:
                return False
            if any(ref in row.parents for row in self._s.subjects.values()):
                raise Conflict(f"{ref} still has children; detach them first")
            before = self._s.rules.pop(Scope(Layer.OVERRIDE, str(ref)), {})
            del self._s.subjects[ref]
            self._s.write_audit(
                now,
                actor,
                "subject.delete",
                str(ref),
                [encode_rule(r) for r in before.values()],
                None,
            )
            return True

    def list_subjects(
        self, *, kind: str | None, parent: SubjectRef | None, offset: int, limit: int
    ) -> Page[Subject]:
        with self._lock:
            rows = [
                self._subject(ref, row)
                for ref, row in sorted(self._s.subjects.items())
                if (kind is None or ref.kind == kind) and (parent is None or parent in row.parents)
            ]
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        with self._lock:
            return ancestors_of(ref, self._s.parents_of)

    # rules ------------------------------------------------------------------
    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        with self._lock:
            chain = [ref, *ancestors_of(ref, self._s.parents_of)] if with_ancestors else [ref]
            return [(s, self._rule_set(s)) for s in chain]

    def _rule_set(self, ref: SubjectRef) -> RuleSet:
        row = self._s.subjects.get(ref)
        plan = self._plan(row.plan_id) if row and row.plan_id else None
        return RuleSet(
            tuple(self._s.rules.get(Scope(Layer.OVERRIDE, str(ref)), {}).values()),
            plan,
            tuple(self._s.rules.get(Scope(Layer.DEFAULT, ref.kind), {}).values()),
        )

    def get_rules(self, scope: Scope) -> list[Rule]:
        with self._lock:
            return sorted(self._s.rules[scope].values(), key=lambda r: r.key.sort_key)

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        with self._write():
            if scope.layer is Layer.PLAN and scope.name not in self._s.plans:
                raise NotFound(f"no plan {scope.name!r}")
            if scope.layer is Layer.OVERRIDE:
                self._s.subject_row(SubjectRef.parse(scope.name))
            rules = self._s.rules[scope]
            for change in changes:
                before = rules.get(change.key)
                if change.value is None:
                    rules.pop(change.key, None)
                    after = None
                else:
                    after = rules[change.key] = Rule(
                        change.key, change.value, change.shadow, change.thresholds
                    )
                if before != after:
                    self._s.write_audit(
                        now,
                        actor,
                        f"{scope.layer.value}.set",
                        scope.audit_target,
                        encode_rule(before) if before else None,
                        encode_rule(after) if after else None,
                    )
            self._track(scope.kind, [c.key for c in changes if c.value is not None], now)
            return self.get_rules(scope)

    def list_default_kinds(self) -> list[str]:
        with self._lock:
            return sorted(
                s.name for s, r in self._s.rules.items() if s.layer is Layer.DEFAULT and r
            )

    def track(self, keys: Mapping[str, Sequence[LimitKey]], now: datetime) -> None:
        with self._lock:
            tracking = [self._track(kind, of_kind, now) for kind, of_kind in keys.items()]
            if any(tracking):  # an engine starting tracks what is, mostly
                self._s.bump_config()
                self.snapshot.invalidate()

    def _track(self, kind: str, keys: Sequence[LimitKey], now: datetime) -> bool:
        """Track the pairs among ``keys`` new to ``kind`` (domain/tracking.py); whether
        there were any. Each is backfilled into the series that did not count it."""
        before = self._s.tracked
        after, new = before.adding(kind, keys)
        if not new:
            return False
        self._s.tracked = after
        self._s.forget_counting()  # the next event also counts in the new windows
        for key in new:
            start = backfill_start(key, now, self._s.tz)
            if start is None:
                continue
            # Events are appended in recording order, not by timestamp (they may
            # be back-dated), so this filters the list; the SQL stores use an index.
            since = [e for e in self._s.events if e.timestamp >= start]
            log.info("backfilled %s from %d ledger events since %s", key, len(since), start)
            added = Added(before, after, (key,))
            for event in since:
                self._s.count(event, added)
        return True

    # plans ------------------------------------------------------------------
    def _plan(self, plan_id: str) -> Plan | None:
        if plan_id not in self._s.plans:
            return None
        rules = sorted(
            self._s.rules[Scope(Layer.PLAN, plan_id)].values(), key=lambda r: r.key.sort_key
        )
        return Plan(plan_id, self._s.plans[plan_id], tuple(rules))

    def create_plan(self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime) -> Plan:
        with self._write():
            if name in self._s.plans.values():
                raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
            plan_id = uuid4().hex
            self._s.plans[plan_id] = name
            self._s.rules[Scope(Layer.PLAN, plan_id)] = {r.key: r for r in rules}
            self._track(WILDCARD, [r.key for r in rules], now)
            plan = self._plan(plan_id)
            assert plan is not None
            self._s.write_audit(
                now, actor, "plan.create", plan_target(plan_id), None, encode_plan(plan)
            )
            return plan

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan:
        with self._write():
            before = self._plan(plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            if name is not None and name != before.name:
                if name in self._s.plans.values():
                    raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
                self._s.plans[plan_id] = name
                self._s.write_audit(
                    now, actor, "plan.rename", plan_target(plan_id), before.name, name
                )
            plan = self._plan(plan_id)
            assert plan is not None
            return plan

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None:
        with self._write():
            before = self._plan(plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            users = [str(r) for r, row in self._s.subjects.items() if row.plan_id == plan_id]
            if users:
                raise Conflict(f"plan {before.name!r} is assigned to {len(users)} subject(s)")
            del self._s.plans[plan_id]
            self._s.rules.pop(Scope(Layer.PLAN, plan_id), None)
            self._s.write_audit(
                now, actor, "plan.delete", plan_target(plan_id), encode_plan(before), None
            )

    def get_plan(self, plan_id: str) -> Plan | None:
        with self._lock:
            return self._plan(plan_id)

    def find_plan(self, name: str) -> Plan | None:
        with self._lock:
            for plan_id, plan_name in self._s.plans.items():
                if plan_name == name:
                    return self._plan(plan_id)
            return None

    def list_plans(self) -> list[Plan]:
        with self._lock:
            plans = [self._plan(p) for p in self._s.plans]
            return sorted((p for p in plans if p), key=lambda p: p.name)

    def assign_plan(
        self, ref: SubjectRef, plan_id: str | None, *, actor: str, now: datetime
    ) -> None:
        with self._write():
            if plan_id is not None and plan_id not in self._s.plans:
                raise NotFound(f"no plan {plan_id!r}")
            row = self._s.subject_row(ref)
            if row.plan_id != plan_id:
                self._s.write_audit(now, actor, "plan.assign", str(ref), row.plan_id, plan_id)
                row.plan_id = plan_id

    # the audit log ----------------------------------------------------------
    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]:
        with self._lock:
            rows = [a for a in self._s.audit if target is None or a.target == target]
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    # API keys ---------------------------------------------------------------
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        with self._lock:
            self._s.keys[key.id] = (key, secret_hash)
            self._s.write_audit(
                key.created_at, actor, "key.create", key_target(key.id), None, encode_key(key)
            )

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._lock:
            return self._s.keys.get(key_id)

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]:
        with self._lock:
            rows = sorted((k for k, _ in self._s.keys.values()), key=lambda k: (k.created_at, k.id))
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool:
        with self._lock:
            found = self._s.keys.get(key_id)
            if found is None or found[0].revoked_at is not None:
                return False
            revoked = replace(found[0], revoked_at=now)
            self._s.keys[key_id] = (revoked, found[1])
            self._s.write_audit(
                now,
                actor,
                "key.revoke",
                key_target(key_id),
                encode_key(found[0]),
                encode_key(revoked),
            )
            return True

    # resource quotas --------------------------------------------------------
    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        with self._lock:
            return self._s.resource_quotas.get(resource)

    def put_resource_quota(
        self,
        resource: SubjectRef,
        quota: dict[str, Any],
        keys: Sequence[LimitKey],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        with self._write():
            before = self._s.resource_quotas.get(resource)
            self._s.subject_row(resource)
            self._s.resource_quotas[resource] = quota
            self._track(resource.kind, keys, now)
            if before != quota:
                self._s.write_audit(
                    now, actor, "quota.set", resource_target(str(resource)), before, quota
                )

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write():
            before = self._s.resource_quotas.pop(resource, None)
            if before is None:
                return False
            self._s.write_audit(
                now, actor, "quota.delete", resource_target(str(resource)), before, None
            )
            return True

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        with self._lock:
            rows = sorted(self._s.resource_quotas.items())
        return Page(rows[offset : offset + limit], len(rows), offset, limit)
