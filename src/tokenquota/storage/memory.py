"""``memory://``: the reference implementation the other backends are tested against.

Everything sits in dictionaries behind one lock, so every operation is
trivially atomic; nothing survives the process.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

from tokenquota.domain.bounds import (
    LIFETIME,
    LIFETIME_BUCKET,
    backfill_start,
    check_granted,
    check_lifetime,
)
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Prepaid, Reading, decide
from tokenquota.domain.errors import Conflict, IdempotencyConflict, NotFound
from tokenquota.domain.grants import Grant, allocate
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
    check_extendable,
)
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import (
    AuditEntry,
    CounterKey,
    Event,
    grant_event,
    increments,
    key_target,
    plan_target,
    resource_target,
    usage_event,
)
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import Subject, SubjectRef, ancestors_of, check_acyclic
from tokenquota.storage.base import Layer, Page, RuleSet, Scope
from tokenquota.wire.catalog import encode_key, encode_plan, encode_rule, encode_subject
from tokenquota.wire.ledger import encode_grant

log = logging.getLogger("tokenquota.memory")


@dataclass
class _Subject:
    name: str | None
    metadata: dict[str, Any]
    parents: tuple[SubjectRef, ...]
    plan_id: str | None = None


@dataclass
class _State:
    subjects: dict[SubjectRef, _Subject] = field(default_factory=dict)
    rules: dict[Scope, dict[LimitKey, Rule]] = field(default_factory=lambda: defaultdict(dict))
    plans: dict[str, str] = field(default_factory=dict)  # id -> name
    tracked: set[LimitKey] = field(default_factory=lambda: set(LIFETIME))
    counters: dict[CounterKey, int] = field(default_factory=lambda: defaultdict(int))
    events: list[Event] = field(default_factory=list)
    idempotency: dict[tuple[str, str], tuple[str, Decision]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    shadow: dict[tuple[str, LimitKey], int] = field(default_factory=lambda: defaultdict(int))
    keys: dict[str, tuple[ApiKey, str]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    resource_quotas: dict[SubjectRef, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)


class MemoryStore:
    def __init__(self, tz: ZoneInfo | None) -> None:
        self.tz = tz or ZoneInfo("UTC")
        self._lock = threading.RLock()
        self._s = _State()
        self._ids = itertools.count(1)
        self._audit_ids = itertools.count(1)

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass

    # subjects ---------------------------------------------------------------
    def get_subject(self, ref: SubjectRef) -> Subject | None:
        with self._lock:
            row = self._s.subjects.get(ref)
            return None if row is None else self._subject(ref, row)

    def _subject(self, ref: SubjectRef, row: _Subject) -> Subject:
        return Subject(ref, row.name, dict(row.metadata), row.parents, row.plan_id)

    def _parents_of(self, ref: SubjectRef) -> tuple[SubjectRef, ...]:
        row = self._s.subjects.get(ref)
        return row.parents if row else ()

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
        with self._lock:
            existing = self._s.subjects.get(ref)
            before = encode_subject(self._subject(ref, existing)) if existing else None
            if parents is not None:
                check_acyclic(ref, parents, self._parents_of)
                ancestors_of(ref, lambda r: parents if r == ref else self._parents_of(r))
                for parent in parents:
                    self._s.subjects.setdefault(parent, _Subject(None, {}, ()))
            row = self._s.subjects.setdefault(ref, _Subject(None, {}, ()))
            if name is not None:
                row.name = name
            if metadata is not None:
                row.metadata = dict(metadata)
            if parents is not None:
                row.parents = parents
            subject = self._subject(ref, row)
            if encode_subject(subject) != before:
                self._audit(now, actor, "subject.put", str(ref), before, encode_subject(subject))
            return subject

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._lock:
            if ref not in self._s.subjects:
                return False
            if any(ref in row.parents for row in self._s.subjects.values()):
                raise Conflict(f"{ref} still has children; detach them first")
            before = self._s.rules.pop(Scope(Layer.OVERRIDE, str(ref)), {})
            del self._s.subjects[ref]
            self._audit(
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
            return ancestors_of(ref, self._parents_of)

    # rules ------------------------------------------------------------------
    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        with self._lock:
            chain = [ref, *ancestors_of(ref, self._parents_of)] if with_ancestors else [ref]
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
        with self._lock:
            if scope.layer is Layer.PLAN and scope.name not in self._s.plans:
                raise NotFound(f"no plan {scope.name!r}")
            if scope.layer is Layer.OVERRIDE:
                self._s.subjects.setdefault(SubjectRef.parse(scope.name), _Subject(None, {}, ()))
            rules = self._s.rules[scope]
            for change in changes:
                before = rules.get(change.key)
                if change.value is None:
                    rules.pop(change.key, None)
                    after = None
                else:
                    after = rules[change.key] = Rule(change.key, change.value, change.shadow)
                if before != after:
                    self._audit(
                        now,
                        actor,
                        f"{scope.layer.value}.set",
                        scope.audit_target,
                        encode_rule(before) if before else None,
                        encode_rule(after) if after else None,
                    )
            self._track([c.key for c in changes if c.value is not None], now)
            return self.get_rules(scope)

    def list_default_kinds(self) -> list[str]:
        with self._lock:
            return sorted(
                s.name for s, r in self._s.rules.items() if s.layer is Layer.DEFAULT and r
            )

    def track(self, keys: Sequence[LimitKey], now: datetime) -> None:
        with self._lock:
            self._track(keys, now)

    def _track(self, keys: Sequence[LimitKey], now: datetime) -> None:
        new = {k for k in keys if k.window is not None} - self._s.tracked
        if not new:
            return
        self._s.tracked |= new
        for key in new:
            start = backfill_start(key, now, self.tz)
            if start is None:
                continue
            # Events are appended in recording order, not by timestamp (they may
            # be back-dated), so this filters the list; the SQL stores use an index.
            since = [e for e in self._s.events if e.timestamp >= start]
            log.info("backfilled %s from %d ledger events since %s", key, len(since), start)
            for event in since:
                self._count(event, {key})

    def _count(self, event: Event, keys: set[LimitKey]) -> None:
        if not event.is_usage:
            return  # a grant adds credits to spend; it is not usage
        for key, units in increments(
            event.series, event.amounts, event.timestamp, self.tz, keys
        ).items():
            self._s.counters[key] += units

    # plans ------------------------------------------------------------------
    def _plan(self, plan_id: str) -> Plan | None:
        if plan_id not in self._s.plans:
            return None
        rules = sorted(
            self._s.rules[Scope(Layer.PLAN, plan_id)].values(), key=lambda r: r.key.sort_key
        )
        return Plan(plan_id, self._s.plans[plan_id], tuple(rules))

    def create_plan(self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime) -> Plan:
        with self._lock:
            if name in self._s.plans.values():
                raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
            plan_id = uuid4().hex
            self._s.plans[plan_id] = name
            self._s.rules[Scope(Layer.PLAN, plan_id)] = {r.key: r for r in rules}
            self._track([r.key for r in rules], now)
            plan = self._plan(plan_id)
            assert plan is not None
            self._audit(now, actor, "plan.create", plan_target(plan_id), None, encode_plan(plan))
            return plan

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan:
        with self._lock:
            before = self._plan(plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            if name is not None and name != before.name:
                if name in self._s.plans.values():
                    raise Conflict(f"a plan named {name!r} exists", details={"field": "name"})
                self._s.plans[plan_id] = name
                self._audit(now, actor, "plan.rename", plan_target(plan_id), before.name, name)
            plan = self._plan(plan_id)
            assert plan is not None
            return plan

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None:
        with self._lock:
            before = self._plan(plan_id)
            if before is None:
                raise NotFound(f"no plan {plan_id!r}")
            users = [str(r) for r, row in self._s.subjects.items() if row.plan_id == plan_id]
            if users:
                raise Conflict(f"plan {before.name!r} is assigned to {len(users)} subject(s)")
            del self._s.plans[plan_id]
            self._s.rules.pop(Scope(Layer.PLAN, plan_id), None)
            self._audit(now, actor, "plan.delete", plan_target(plan_id), encode_plan(before), None)

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
        with self._lock:
            if plan_id is not None and plan_id not in self._s.plans:
                raise NotFound(f"no plan {plan_id!r}")
            row = self._s.subjects.setdefault(ref, _Subject(None, {}, ()))
            if row.plan_id != plan_id:
                self._audit(now, actor, "plan.assign", str(ref), row.plan_id, plan_id)
                row.plan_id = plan_id

    # counting ---------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        with self._lock:
            return [self._read(c, now) for c in checks]

    def _read(self, check: Check, now: datetime) -> Reading:
        key = check.limit.key
        subject, metric = str(check.limit.subject), key.metric
        if metric is Metric.CONCURRENT_REQUESTS:
            ends = [
                lease.expires_at
                for lease in self._s.leases.values()
                if lease.live(now) and subject in lease.series
            ]
            return Reading({0: len(ends)}, held_until=min(ends)) if ends else Reading()
        if key.window is None:
            return Reading()
        window = key.window.key
        buckets = {
            b: v
            for (s, m, w, b), v in self._s.counters.items()
            if s == subject
            and m == metric.value
            and w == window
            and check.lo <= b <= check.hi
            and v
        }
        holds = [
            (r.amounts[metric], r.expires_at)
            for r in self._s.reservations.values()
            if r.live(now) and subject in r.series and r.amounts[metric]
        ]
        if not holds:
            return Reading(buckets)
        return Reading(buckets, sum(a for a, _ in holds), max(e for _, e in holds))

    def _require_subject(self, plan: DebitPlan, create: bool) -> None:
        if plan.subject not in self._s.subjects and not create:
            raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
        self._s.subjects.setdefault(plan.subject, _Subject(None, {}, ()))

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        with self._lock:
            return self._prepaid(subjects, now)

    def _prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        out = []
        for subject in subjects:
            grants = tuple(g for g in self._s.grants.values() if g.subject == subject)
            if not grants:
                continue
            held = sum(
                r.amounts[Metric.CREDITS]
                for r in self._s.reservations.values()
                if r.live(now) and str(subject) in r.series
            )
            out.append(Prepaid(subject, grants, held))
        return out

    def _decide(self, plan: DebitPlan) -> Decision:
        decision = decide(
            plan,
            [self._read(c, plan.now) for c in plan.reads],
            prepaid=self._prepaid(plan.charged, plan.now),
        )
        for status in decision.shadow_blocked:
            self._s.shadow[(status.subject, LimitKey.parse(status.metric, status.window))] += 1
        return decision

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        with self._lock:
            key = (str(plan.subject), plan.idempotency_key) if plan.idempotency_key else None
            if key and key in self._s.idempotency:
                fingerprint, first = self._s.idempotency[key]
                if fingerprint != plan.fingerprint:
                    raise IdempotencyConflict(
                        "this idempotency key was used for a different request",
                        details={"field": "idempotency_key"},
                    )
                return first.as_replay()
            self._require_subject(plan, create_subject)
            decision = self._apply(plan)
            if decision.allowed and key:
                self._s.idempotency[key] = (plan.fingerprint, decision)
            return decision

    def _check_bounds(self, plan: DebitPlan) -> None:
        counters = self._s.counters
        lifetime = {
            (series, key.metric): counters.get(
                (series, key.metric.value, key.window_key, LIFETIME_BUCKET), 0
            )
            for series in plan.series
            for key in LIFETIME
        }
        check_lifetime(plan.series, plan.amounts, lifetime)

    def _apply(self, plan: DebitPlan, reservation_id: str | None = None) -> Decision:
        # Before deciding, which counts shadow hits: a refused amount changes nothing.
        self._check_bounds(plan)
        decision = self._decide(plan)
        if not decision.allowed:
            return decision
        event = usage_event(plan, reservation_id, next(self._ids))
        self._s.events.append(event)
        self._count(event, self._s.tracked)
        self._burn(event)
        return replace(decision, event_id=event.id)

    def _burn(self, event: Event) -> None:
        credits = event.amounts[Metric.CREDITS]
        if not credits:
            return
        for subject in event.charged:
            mine = [g for g in self._s.grants.values() if g.subject == subject]
            burned, _ = allocate(mine, credits, event.recorded_at)
            for grant_id, units in burned.items():
                grant = self._s.grants[grant_id]
                self._s.grants[grant_id] = replace(grant, remaining=grant.remaining - units)

    # prepaid credits --------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        with self._lock:
            granted = sum(g.amount for g in self._s.grants.values() if g.subject == grant.subject)
            check_granted(str(grant.subject), granted, grant.amount)
            self._s.subjects.setdefault(grant.subject, _Subject(None, {}, ()))
            self._s.grants[grant.id] = grant
            event = grant_event(grant, next(self._ids))
            self._s.events.append(event)
            self._audit(
                grant.granted_at,
                actor,
                "grant.add",
                str(grant.subject),
                None,
                encode_grant(grant, grant.granted_at),
            )
            return event.id

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self._lock:
            mine = [g for g in self._s.grants.values() if g.subject == subject]
        return sorted(mine, key=lambda g: (g.granted_at, g.id))

    # reservations and leases ------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        with self._lock:
            self._require_subject(plan, create_subject)
            decision = self._decide(plan)
            if decision.allowed:
                self._s.reservations[reservation.id] = reservation
            return decision

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        with self._lock:
            return self._s.reservations.get(reservation_id)

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        with self._lock:
            reservation = self._s.reservations.get(reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.committed is not None:
                return reservation.committed.as_replay()
            self._check_bounds(plan)  # while the hold is still in place
            # The hold goes first, so the actual usage is measured without it.
            self._s.reservations[reservation_id] = replace(reservation, state=HoldState.RELEASED)
            decision = self._apply(plan, reservation_id)
            self._s.reservations[reservation_id] = replace(
                reservation, state=HoldState.COMMITTED, committed=decision
            )
            return decision

    def release(self, reservation_id: str, now: datetime) -> bool:
        with self._lock:
            reservation = self._s.reservations.get(reservation_id)
            if reservation is None:
                raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
            if reservation.state is not HoldState.HELD:
                return False
            self._s.reservations[reservation_id] = replace(reservation, state=HoldState.RELEASED)
            return True

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        with self._lock:
            self._require_subject(plan, create_subject)
            decision = self._decide(plan)
            if decision.allowed:
                self._s.leases[lease.id] = lease
            return decision

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._lock:
            return self._s.leases.get(lease_id)

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        with self._lock:
            lease = self._s.leases.get(lease_id)
            if lease is None:
                raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
            if lease.released_at is not None:
                return False
            self._s.leases[lease_id] = replace(lease, released_at=now)
            return True

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        with self._lock:
            lease = self._s.leases.get(lease_id)
            check_extendable(lease, lease_id, now)
            assert lease is not None
            extended = self._s.leases[lease_id] = replace(lease, expires_at=expires_at)
            return extended

    # ledger -----------------------------------------------------------------
    def _select(
        self, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> list[Event]:
        lo = to_micros(start) if start else None
        hi = to_micros(end) if end else None
        return [
            e
            for e in self._s.events
            if (subject is None or subject in e.charged)
            and (lo is None or to_micros(e.timestamp) >= lo)
            and (hi is None or to_micros(e.timestamp) < hi)
        ]

    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        with self._lock:
            rows = self._select(subject, start, end)
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        with self._lock:
            rows = self._select(subject, start, end)
        return iter(rows)

    def _audit(
        self, at: datetime, actor: str, action: str, target: str, before: Any, after: Any
    ) -> None:
        self._s.audit.append(
            AuditEntry(next(self._audit_ids), at, actor, action, target, before, after)
        )

    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]:
        with self._lock:
            rows = [a for a in self._s.audit if target is None or a.target == target]
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        with self._lock:
            return {k: v for (s, k), v in self._s.shadow.items() if s == str(ref)}

    def rebuild(self) -> int:
        with self._lock:
            self._s.counters.clear()
            for grant_id, grant in self._s.grants.items():
                self._s.grants[grant_id] = replace(grant, remaining=grant.amount)
            for event in self._s.events:
                self._count(event, self._s.tracked)
                if event.is_usage:
                    self._burn(event)
            return len(self._s.events)

    # API keys ---------------------------------------------------------------
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        with self._lock:
            self._s.keys[key.id] = (key, secret_hash)
            self._audit(
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
            self._audit(
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
        with self._lock:
            before = self._s.resource_quotas.get(resource)
            self._s.subjects.setdefault(resource, _Subject(None, {}, ()))
            self._s.resource_quotas[resource] = quota
            self._track(keys, now)
            if before != quota:
                self._audit(now, actor, "quota.set", resource_target(str(resource)), before, quota)

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._lock:
            before = self._s.resource_quotas.pop(resource, None)
            if before is None:
                return False
            self._audit(now, actor, "quota.delete", resource_target(str(resource)), before, None)
            return True

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        with self._lock:
            rows = sorted(self._s.resource_quotas.items())
        return Page(rows[offset : offset + limit], len(rows), offset, limit)
