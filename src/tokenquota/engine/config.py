"""The configuration half of the facade: subjects, limits, defaults, plans, quotas, keys.

``Quota`` is one class to its users, in two files along the line the
storage draws between its catalog and its meter: this one holds what is
read often and written rarely (an operator's or an admin route's calls),
``quota.py`` the hot path and the reads of usage. Each method validates its
arguments and delegates to the store; none decides anything.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tokenquota.domain.clock import Clock
from tokenquota.domain.errors import NotFound, StoreUnreachable, ValidationError
from tokenquota.domain.keys import (
    MAX_KEY_NAME,
    ApiKey,
    format_key,
    hash_secret,
    parse_role,
    split_key,
    validate_key_binding,
)
from tokenquota.domain.ledger import AuditEntry
from tokenquota.domain.limits import (
    MAX_PLAN_NAME,
    LimitKey,
    Plan,
    Rule,
    RuleChange,
    parse_rule_changes,
    validate_plan_name,
)
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import (
    Subject,
    SubjectRef,
    parse_kind,
    validate_metadata,
    validate_name,
    validate_parents,
)
from tokenquota.domain.text import check_text
from tokenquota.domain.views import DefaultRule, LimitsView, Page
from tokenquota.domain.windows import Window
from tokenquota.engine import inputs
from tokenquota.engine.keycache import MISS, KeyCache, live
from tokenquota.engine.outage import Outage
from tokenquota.engine.planner import Planner
from tokenquota.storage import Layer, Scope, Store
from tokenquota.wire import stored


class Configuration:
    """What ``Quota`` offers to configure; ``Quota.__init__`` sets the state below."""

    store: Store
    clock: Clock
    strict_subjects: bool
    planner: Planner
    outage: Outage
    keys: KeyCache

    # subjects ---------------------------------------------------------------
    def put_subject(
        self,
        subject: str | SubjectRef,
        *,
        name: str | None = None,
        parents: Sequence[str | SubjectRef] | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str = "library",
    ) -> Subject:
        """Create or update a subject; arguments left as None keep what is stored.

        Changes are audited: new parents change who is charged from then on.
        With ``strict_subjects`` every parent must exist already.
        """
        ref = SubjectRef.parse(subject)
        parent_refs = validate_parents(ref, parents) if parents is not None else None
        if self.strict_subjects:
            for parent in parent_refs or ():
                if self.store.get_subject(parent) is None:
                    raise NotFound(f"unknown subject {parent}", details={"field": "parents"})
        return self.store.put_subject(
            ref,
            name=validate_name(name),
            metadata=validate_metadata(metadata) if metadata is not None else None,
            parents=parent_refs,
            now=self.clock.now(),
            actor=actor,
        )

    def set_parents(
        self,
        subject: str | SubjectRef,
        parents: Sequence[str | SubjectRef],
        *,
        actor: str = "library",
    ) -> Subject:
        return self.put_subject(subject, parents=parents, actor=actor)

    def get_subject(self, subject: str | SubjectRef) -> Subject:
        ref = SubjectRef.parse(subject)
        found = self.store.get_subject(ref)
        if found is None:
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})
        return found

    def list_subjects(
        self,
        *,
        kind: str | None = None,
        parent: str | SubjectRef | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Subject]:
        return self.store.list_subjects(
            kind=parse_kind(kind) if kind is not None else None,
            parent=SubjectRef.parse(parent, "parent") if parent is not None else None,
            offset=inputs.offset(offset),
            limit=inputs.limit(limit),
        )

    def delete_subject(self, subject: str | SubjectRef, *, actor: str = "library") -> None:
        ref = SubjectRef.parse(subject)
        if not self.store.delete_subject(ref, actor=actor, now=self.clock.now()):
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})

    def ancestors(self, subject: str | SubjectRef) -> list[SubjectRef]:
        return self.store.ancestors(SubjectRef.parse(subject))

    # limits -----------------------------------------------------------------
    def set_limit(
        self,
        subject: str | SubjectRef,
        metric: str,
        window: str | None,
        value: object,
        *,
        shadow: bool = False,
        thresholds: Sequence[int] | None = None,
        actor: str = "library",
    ) -> LimitsView:
        """Set one override; ``value`` None removes it, -1 makes the subject unlimited.

        ``thresholds`` are alert thresholds in whole percent (docs/alerts.md)."""
        item = {"metric": metric, "window": window, "limit": value, "shadow": shadow}
        return self.set_limits(subject, [{**item, "thresholds": thresholds}], actor=actor)

    def set_limits(
        self,
        subject: str | SubjectRef,
        limits: Sequence[Mapping[str, object]],
        *,
        actor: str = "library",
    ) -> LimitsView:
        ref = SubjectRef.parse(subject)
        changes = parse_rule_changes(limits, "limits")
        self._require_known(ref)
        self.store.change_rules(
            Scope(Layer.OVERRIDE, str(ref)), changes, actor=actor, now=self.clock.now()
        )
        return self.limits(ref)

    def limits(self, subject: str | SubjectRef) -> LimitsView:
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        # From the snapshot (at most 1 s behind another replica's change, never our own).
        ((_, rules),) = self.store.config().rule_sets(ref, with_ancestors=False)
        return LimitsView(
            str(ref), rules.overrides, rules.plan, tuple(self.planner.resolve(ref, rules))
        )

    def set_default(
        self,
        kind: str,
        metric: str,
        window: str | None,
        value: object,
        *,
        shadow: bool = False,
        thresholds: Sequence[int] | None = None,
        actor: str = "library",
    ) -> list[DefaultRule]:
        item = {"kind": kind, "metric": metric, "window": window, "limit": value}
        return self.set_defaults(
            [{**item, "shadow": shadow, "thresholds": thresholds}], actor=actor
        )

    def set_defaults(
        self, items: Sequence[Mapping[str, object]], *, actor: str = "library"
    ) -> list[DefaultRule]:
        """Runtime defaults win over the config file's; ``limit`` None removes a runtime default."""
        by_kind: dict[str, list[Mapping[str, object]]] = defaultdict(list)
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ValidationError(f"defaults[{i}]", "must be an object")
            kind = parse_kind(item.get("kind"), f"defaults[{i}].kind")
            by_kind[kind].append({k: v for k, v in item.items() if k != "kind"})
        parsed = {kind: parse_rule_changes(rules, "defaults") for kind, rules in by_kind.items()}
        now = self.clock.now()
        for kind, changes in parsed.items():
            self.store.change_rules(Scope(Layer.DEFAULT, kind), changes, actor=actor, now=now)
        return self.defaults()

    def defaults(self) -> list[DefaultRule]:
        out: list[DefaultRule] = []
        kinds = set(self.store.list_default_kinds()) | set(self.planner.config_defaults)
        for kind in sorted(kinds):
            runtime = self.store.get_rules(Scope(Layer.DEFAULT, kind))
            out += [DefaultRule(kind, r, "runtime") for r in runtime]
            shadowed = {r.key for r in runtime}
            out += [
                DefaultRule(kind, r, "config")
                for r in self.planner.config_defaults.get(kind, [])
                if r.key not in shadowed
            ]
        return out

    # plans ------------------------------------------------------------------
    def create_plan(
        self, name: str, rules: Sequence[Mapping[str, object]], *, actor: str = "library"
    ) -> Plan:
        plan_name = validate_plan_name(name)
        changes = parse_rule_changes(rules, "rules")
        parsed = [
            Rule(c.key, c.value, c.shadow, c.thresholds) for c in changes if c.value is not None
        ]
        return self.store.create_plan(plan_name, parsed, actor=actor, now=self.clock.now())

    def update_plan(
        self,
        plan: str,
        *,
        name: str | None = None,
        rules: Sequence[Mapping[str, object]] | None = None,
        actor: str = "library",
    ) -> Plan:
        """Rename and/or replace the rules; every subject on the plan sees the change at once."""
        current = self.get_plan(plan)
        new_name = validate_plan_name(name) if name is not None else None
        changes: list[RuleChange] = []
        if rules is not None:
            changes = [c for c in parse_rule_changes(rules, "rules") if c.value is not None]
            given = {c.key for c in changes}
            changes += [RuleChange(r.key, None) for r in current.rules if r.key not in given]
        now = self.clock.now()
        self.store.update_plan(current.id, name=new_name, actor=actor, now=now)
        if changes:
            self.store.change_rules(Scope(Layer.PLAN, current.id), changes, actor=actor, now=now)
        return self.get_plan(current.id)

    def get_plan(self, plan: str) -> Plan:
        """Find a plan by id, or else by name."""
        check_text(plan, "plan_id", max_length=MAX_PLAN_NAME)
        found = self.store.get_plan(plan) or self.store.find_plan(plan)
        if found is None:
            raise NotFound(f"no plan {plan!r}", details={"field": "plan_id"})
        return found

    def plans(self) -> list[Plan]:
        return self.store.list_plans()

    def delete_plan(self, plan: str, *, actor: str = "library") -> None:
        self.store.delete_plan(self.get_plan(plan).id, actor=actor, now=self.clock.now())

    def assign_plan(
        self, subject: str | SubjectRef, plan: str | None, *, actor: str = "library"
    ) -> None:
        """Put a subject on a plan (by id or name); None takes it off."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        plan_id = self.get_plan(plan).id if plan is not None else None
        self.store.assign_plan(ref, plan_id, actor=actor, now=self.clock.now())

    # resource quotas ----------------------------------------------------------
    def set_resource_quota(
        self, resource: str | SubjectRef, quota: Mapping[str, object], *, actor: str = "library"
    ) -> ResourceQuota:
        """Put a shared-capacity quota on a resource (contract §6); replaces any earlier one."""
        ref = SubjectRef.parse(resource, "resource")
        if not isinstance(quota, Mapping):
            raise ValidationError("body", "a quota is an object")
        parsed = ResourceQuota.parse(quota, field="")
        keys = [r.key for r in parsed.default_rules]
        keys += [r.key for p in parsed.policies for r in p.rules]
        if parsed.capacity is not None:
            keys.append(LimitKey(parsed.capacity.units, Window.parse("minute")))
        self.store.put_resource_quota(
            ref, stored.encode_resource_quota(parsed), keys, actor=actor, now=self.clock.now()
        )
        return parsed

    def get_resource_quota(self, resource: str | SubjectRef) -> ResourceQuota:
        ref = SubjectRef.parse(resource, "resource")
        found = self.planner.quota(ref)
        if found is None:
            raise NotFound(f"no quota on {ref}", details={"field": "resource"})
        return found

    def delete_resource_quota(self, resource: str | SubjectRef, *, actor: str = "library") -> None:
        ref = SubjectRef.parse(resource, "resource")
        if not self.store.delete_resource_quota(ref, actor=actor, now=self.clock.now()):
            raise NotFound(f"no quota on {ref}", details={"field": "resource"})

    def resource_quotas(
        self, *, offset: int = 0, limit: int = 100
    ) -> Page[tuple[SubjectRef, ResourceQuota]]:
        page = self.store.list_resource_quotas(
            offset=inputs.offset(offset), limit=inputs.limit(limit)
        )
        items = [(ref, ResourceQuota.parse(q, field="")) for ref, q in page.items]
        return Page(items, page.total, page.offset, page.limit)

    def audit(
        self, *, subject: str | None = None, offset: int = 0, limit: int = 100
    ) -> Page[AuditEntry]:
        """Changes to a subject, or to ``defaults/<kind>``, ``plans/<id>`` or ``keys/<id>``."""
        target = None
        if subject is not None:
            target = subject if "/" in subject else str(SubjectRef.parse(subject))
            check_text(target, "subject", max_length=200)
        return self.store.audit(
            target=target, offset=inputs.offset(offset), limit=inputs.limit(limit)
        )

    # API keys ---------------------------------------------------------------
    def create_key(
        self,
        role: str,
        *,
        subject: str | SubjectRef | None = None,
        name: str | None = None,
        actor: str = "library",
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown this once and never stored."""
        parsed_role = parse_role(role)
        ref = SubjectRef.parse(subject) if subject is not None else None
        validate_key_binding(parsed_role, ref)
        key = ApiKey(
            id=secrets.token_hex(8),
            role=parsed_role,
            subject=ref,
            name=inputs.bounded_text(name, "name", MAX_KEY_NAME),
            created_at=self.clock.now(),
        )
        secret = secrets.token_urlsafe(32)
        self.store.create_key(key, hash_secret(secret), actor=actor)
        return key, format_key(key.id, secret)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key a caller presented, or None; never says which part was wrong."""
        # Within the cache's bound (docs/api.md) the store is not asked; the
        # secret is still compared on every call.
        cached = self.keys.answer(presented)
        if cached is not MISS:
            return cached
        parts = split_key(presented)
        assert parts is not None  # a malformed key is refused, never a miss
        found: tuple[ApiKey, str] | None
        try:
            found = self.store.get_key(parts[0])
        except StoreUnreachable:
            found = self.keys.last_known(parts[0])
            if found is None:
                raise
        else:
            if found is None:
                self.keys.drop(parts[0])
            else:
                self.keys.put(parts[0], found)
        if found is None:
            hash_secret(parts[1])  # the same work either way: no timing hint
            return None
        return live(found, parts[1])

    def list_keys(self, *, offset: int = 0, limit: int = 100) -> Page[ApiKey]:
        return self.store.list_keys(offset=inputs.offset(offset), limit=inputs.limit(limit))

    def revoke_key(self, key_id: str, *, actor: str = "library") -> None:
        inputs.issued_id(key_id)
        try:
            revoked = self.store.revoke_key(key_id, actor=actor, now=self.clock.now())
        finally:
            self.keys.drop(key_id)  # this engine refuses it at once, not after the cache's bound
        if not revoked:
            raise NotFound(f"no live key {key_id!r}", details={"field": "id"})

    def _require_known(self, ref: SubjectRef) -> None:
        if self.strict_subjects and self.store.get_subject(ref) is None:
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})
