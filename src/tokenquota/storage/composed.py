"""A store made of a catalog and a meter: what the engine holds.

Each backend composes its halves: the SQL catalog with the SQL or the Redis
meter, and the memory catalog with the memory meter over their one shared
state (the memory backend stays the independent reference).
The engine calls one object, and this class only forwards: every decision
about how a call is stored belongs to the half it is forwarded to. The one
thing it adds is common to every backend: when a meter's step refuses a plan
as stale (its configuration version moved), the catalog's snapshot is told
to ask for the new version before the engine plans again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Prepaid, Reading
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.storage.base import (
    Catalog,
    ConfigView,
    Meter,
    Page,
    RebuildProgress,
    RuleSet,
    Scope,
    StaleConfig,
)
from tokenquota.storage.webhooks import WebhookTables

T = TypeVar("T")


class ComposedStore:
    """Forwards the configuration calls to ``catalog`` and the metering ones to ``meter``.

    Subclasses open and close what both halves share (a database, a Redis), and set
    ``alerts``: the alert outbox and webhook tables (storage/webhooks.py), which the
    ``AlertLog`` calls below are forwarded to.
    """

    alerts: WebhookTables
    # ``catalog.config`` itself, not a method forwarding to it: every plan takes a
    # view, and the forwarding frame was one more layer on each consume's way.
    config: Callable[[], ConfigView]

    def __init__(self, catalog: Catalog, meter: Meter) -> None:
        self.catalog = catalog
        self.meter = meter
        self.config = catalog.config

    @property
    def tz(self) -> ZoneInfo:
        return self.meter.tz

    def close(self) -> None:
        raise NotImplementedError

    # the alert outbox (AlertLog) -------------------------------------------------
    def alert_events(self, *, after: int, limit: int) -> list[AlertEvent]:
        return self.alerts.alert_events(after=after, limit=limit)

    def unfanned_alert_events(self, limit: int) -> list[AlertEvent]:
        return self.alerts.unfanned_alert_events(limit)

    def mark_alerts_fanned(self, ids: Sequence[int]) -> None:
        self.alerts.mark_alerts_fanned(ids)

    def ping(self) -> None:
        raise NotImplementedError

    # catalog ---------------------------------------------------------------
    def config_stale(self) -> None:
        self.catalog.config_stale()

    def get_subject(self, ref: SubjectRef) -> Subject | None:
        return self.catalog.get_subject(ref)

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
        return self.catalog.put_subject(
            ref, name=name, metadata=metadata, parents=parents, now=now, actor=actor
        )

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool:
        return self.catalog.delete_subject(ref, actor=actor, now=now)

    def list_subjects(
        self, *, kind: str | None, parent: SubjectRef | None, offset: int, limit: int
    ) -> Page[Subject]:
        return self.catalog.list_subjects(kind=kind, parent=parent, offset=offset, limit=limit)

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        return self.catalog.ancestors(ref)

    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        return self.catalog.rule_sets(ref, with_ancestors=with_ancestors)

    def get_rules(self, scope: Scope) -> list[Rule]:
        return self.catalog.get_rules(scope)

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        return self.catalog.change_rules(scope, changes, actor=actor, now=now)

    def list_default_kinds(self) -> list[str]:
        return self.catalog.list_default_kinds()

    def track(self, keys: Mapping[str, Sequence[LimitKey]], now: datetime) -> None:
        return self.catalog.track(keys, now)

    def create_plan(self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime) -> Plan:
        return self.catalog.create_plan(name, rules, actor=actor, now=now)

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan:
        return self.catalog.update_plan(plan_id, name=name, actor=actor, now=now)

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None:
        return self.catalog.delete_plan(plan_id, actor=actor, now=now)

    def get_plan(self, plan_id: str) -> Plan | None:
        return self.catalog.get_plan(plan_id)

    def find_plan(self, name: str) -> Plan | None:
        return self.catalog.find_plan(name)

    def list_plans(self) -> list[Plan]:
        return self.catalog.list_plans()

    def assign_plan(
        self, ref: SubjectRef, plan_id: str | None, *, actor: str, now: datetime
    ) -> None:
        return self.catalog.assign_plan(ref, plan_id, actor=actor, now=now)

    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        return self.catalog.get_resource_quota(resource)

    def put_resource_quota(
        self,
        resource: SubjectRef,
        quota: dict[str, Any],
        keys: Sequence[LimitKey],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        return self.catalog.put_resource_quota(resource, quota, keys, actor=actor, now=now)

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        return self.catalog.delete_resource_quota(resource, actor=actor, now=now)

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        return self.catalog.list_resource_quotas(offset=offset, limit=limit)

    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]:
        return self.catalog.audit(target=target, offset=offset, limit=limit)

    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        return self.catalog.create_key(key, secret_hash, actor=actor)

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        return self.catalog.get_key(key_id)

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]:
        return self.catalog.list_keys(offset=offset, limit=limit)

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool:
        return self.catalog.revoke_key(key_id, actor=actor, now=now)

    # meter -----------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        return self.meter.read(checks, now)

    def _step(self, step: Callable[[], T]) -> T:
        """A meter step that decides on a plan; a stale plan makes the snapshot ask again."""
        try:
            return step()
        except StaleConfig:
            self.catalog.config_stale()
            raise

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        # ``_step`` written out: a consume's step, without a closure and two frames.
        try:
            return self.meter.debit(plan, create_subject=create_subject)
        except StaleConfig:
            self.catalog.config_stale()
            raise

    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        return self._step(
            lambda: self.meter.reserve(plan, reservation, create_subject=create_subject)
        )

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        return self.meter.get_reservation(reservation_id)

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        return self._step(lambda: self.meter.commit(reservation_id, plan))

    def release(self, reservation_id: str, now: datetime) -> bool:
        return self.meter.release(reservation_id, now)

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        return self._step(lambda: self.meter.acquire(plan, lease, create_subject=create_subject))

    def get_lease(self, lease_id: str) -> Lease | None:
        return self.meter.get_lease(lease_id)

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        return self.meter.release_lease(lease_id, now)

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        return self.meter.extend_lease(lease_id, expires_at, now)

    def add_grant(self, grant: Grant, *, actor: str) -> int:
        return self.meter.add_grant(grant, actor=actor)

    def grants(self, subject: SubjectRef) -> list[Grant]:
        return self.meter.grants(subject)

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        return self.meter.prepaid(subjects, now)

    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        return self.meter.events(subject=subject, start=start, end=end, offset=offset, limit=limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        return self.meter.iter_events(subject=subject, start=start, end=end)

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        return self.meter.shadow_hits(ref)

    def rebuild(self, on_progress: RebuildProgress | None = None) -> int:
        return self.meter.rebuild(on_progress)
