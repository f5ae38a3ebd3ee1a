"""The storage protocol: the handful of primitives every backend provides.

The engine resolves limits and builds a ``DebitPlan``; a store only has to
(1) read the buckets a plan names, and (2) atomically check that the plan's
configuration version is still the store's (else ``StaleConfig``: see
snapshot.py), read them again, call the pure ``decide`` and, when the
request is admitted, append the event, bump the counters and remember the
idempotency key, all or nothing.

Everything here is synchronous on purpose: see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Prepaid, Reading
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry, Event, defaults_target, plan_target
from tokenquota.domain.limits import LimitKey, Plan, Rule, RuleChange
from tokenquota.domain.metrics import Metric
from tokenquota.domain.retention import Cutoffs
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.tracking import WILDCARD, Tracking, series_kind
from tokenquota.domain.views import Page as Page  # re-exported: stores name it from here

# (events replayed so far, events in the ledger): how far a rebuild is.
RebuildProgress = Callable[[int, int], None]
# How often a rebuild reports: rare enough to cost nothing beside the replay itself.
PROGRESS_EVERY = 1000

MAX_PAGE = 1000
T = TypeVar("T")


class Layer(StrEnum):
    OVERRIDE = "override"
    PLAN = "plan"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a set of rules lives: a subject's overrides, a plan, or a kind's defaults."""

    layer: Layer
    name: str  # subject ref, plan id, or kind

    @property
    def audit_target(self) -> str:
        if self.layer is Layer.OVERRIDE:
            return self.name
        if self.layer is Layer.PLAN:
            return plan_target(self.name)
        return defaults_target(self.name)

    @property
    def kind(self) -> str:
        """The kind of series its rules bind (domain/tracking.py): a subject's, a
        default's; a plan's may be assigned to any kind, so every kind (the wildcard)."""
        if self.layer is Layer.OVERRIDE:
            return series_kind(self.name)
        if self.layer is Layer.PLAN:
            return WILDCARD
        return self.name


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The three layers that resolve one subject's limits, read together."""

    overrides: tuple[Rule, ...]
    plan: Plan | None
    defaults: tuple[Rule, ...]


class StaleConfig(Exception):
    """A step found the configuration moved since its plan was made: the caller plans again."""


class ConfigView(Protocol):
    """One plan's reads of configuration, all at one version of it (storage/snapshot.py).

    ``version`` is the token the plan carries (``DebitPlan.config_version``);
    every atomic step that decides on a plan compares it with the store's
    current token and raises ``StaleConfig`` when they differ.
    """

    @property
    def version(self) -> str: ...

    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool, keep: bool = True
    ) -> list[tuple[SubjectRef, RuleSet]]: ...

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]: ...

    def resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None: ...

    def tracked(self) -> Tracking: ...

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """A value derived from this view's reads, kept as long as they are."""
        ...


class Catalog(Protocol):
    """Configuration: who is metered and against what. Read often, written rarely.

    Subjects and their hierarchy, rules, plans and defaults, the (metric,
    window) pairs counted, resource quotas, API keys and the audit log of
    every change to them.
    """

    # the configuration snapshot (storage/snapshot.py)
    def config(self) -> ConfigView:
        """What a plan reads: this replica's snapshot, at the token the store last said."""
        ...

    def config_stale(self) -> None:
        """A step refused a plan as stale: ask the store for its token on the next view."""
        ...

    # subjects and the hierarchy
    def get_subject(self, ref: SubjectRef) -> Subject | None: ...

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
        """Upsert; ``None`` keeps the stored value. Refuses a parent cycle atomically.

        A change is audited as ``subject.put`` with the subject before and after.
        """
        ...

    def delete_subject(self, ref: SubjectRef, *, actor: str, now: datetime) -> bool: ...

    def list_subjects(
        self, *, kind: str | None, parent: SubjectRef | None, offset: int, limit: int
    ) -> Page[Subject]: ...

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]: ...

    # rules, plans, defaults
    def rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> list[tuple[SubjectRef, RuleSet]]:
        """The subject's rule layers, then each ancestor's (nearest first), in one snapshot."""
        ...

    def get_rules(self, scope: Scope) -> list[Rule]: ...

    def change_rules(
        self, scope: Scope, changes: Sequence[RuleChange], *, actor: str, now: datetime
    ) -> list[Rule]:
        """Apply changes, audit each, and start tracking new (metric, window) pairs."""
        ...

    def list_default_kinds(self) -> list[str]: ...

    def track(self, keys: Mapping[str, Sequence[LimitKey]], now: datetime) -> None:
        """Count these (metric, window) pairs, per kind of series (``tracking.WILDCARD``:
        every kind), from now on, backfilled from the ledger.

        The backfill replays only the events a decision at ``now`` or later can
        read (``bounds.backfill_start``), and only into the series of the kinds
        that did not count the pair yet, never the whole ledger.
        """
        ...

    def create_plan(
        self, name: str, rules: Sequence[Rule], *, actor: str, now: datetime
    ) -> Plan: ...

    def update_plan(self, plan_id: str, *, name: str | None, actor: str, now: datetime) -> Plan: ...

    def delete_plan(self, plan_id: str, *, actor: str, now: datetime) -> None: ...

    def get_plan(self, plan_id: str) -> Plan | None: ...

    def find_plan(self, name: str) -> Plan | None: ...

    def list_plans(self) -> list[Plan]: ...

    def assign_plan(
        self, ref: SubjectRef, plan_id: str | None, *, actor: str, now: datetime
    ) -> None: ...

    # resource quotas (contract §6), kept as their validated wire form
    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None: ...

    def put_resource_quota(
        self,
        resource: SubjectRef,
        quota: dict[str, Any],
        keys: Sequence[LimitKey],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        """Upsert, audit, and track ``keys`` (the counters the quota is measured on)."""
        ...

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool: ...

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]: ...

    # the audit log
    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]: ...

    # API keys
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None: ...

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key and its stored hash."""
        ...

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]: ...

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool: ...


class Meter(Protocol):
    """Metering: the hot path. Counters, holds, prepaid credits and the ledger."""

    @property
    def tz(self) -> ZoneInfo:
        """The zone calendar windows are counted in: fixed per store (see Database.pin_timezone)."""
        ...

    # counting
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        """Counters, live holds and live leases for each check, as of ``now``."""
        ...

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        """Decide and, if admitted, record, atomically; replays idempotent retries."""
        ...

    # reservations and leases: holds that lapse by themselves at expires_at
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        """Decide as a consume would (holds count as used) and, if admitted, hold."""
        ...

    def get_reservation(self, reservation_id: str) -> Reservation | None: ...

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        """Drop the hold and record ``plan`` (record mode), at once; a repeat replays."""
        ...

    def release(self, reservation_id: str, now: datetime) -> bool:
        """Free a live hold; False (a no-op) when it was committed or released already."""
        ...

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision: ...

    def get_lease(self, lease_id: str) -> Lease | None: ...

    def release_lease(self, lease_id: str, now: datetime) -> bool: ...

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease: ...

    # prepaid credits
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        """Store the grant and its ledger event at once; returns the event id."""
        ...

    def grants(self, subject: SubjectRef) -> list[Grant]: ...

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        """The grants of those subjects that have any, with live held credits."""
        ...

    # the ledger
    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]: ...

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]: ...

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]: ...

    def rebuild(self, on_progress: RebuildProgress | None = None) -> int:
        """Recompute every counter from the ledger; returns the number of events replayed.

        ``on_progress(replayed, total)`` is told how far the replay is, now and
        then (every ``PROGRESS_EVERY`` events), for a progress bar.
        """
        ...


class Pruner(Protocol):
    """Removes what no answer needs any more (domain/retention.py), in bounded batches.

    Each batch is its own short transaction (or Redis call, or lock hold) that
    removes at most ``batch`` records, so pruning never holds a lock for long
    and never delays a decision by more than one batch. Pruning removes only
    what is older than ``cutoffs``; the ledger only by ``archive``, when asked.
    """

    def prune(self, cutoffs: Cutoffs, batch: int) -> Iterator[tuple[str, int]]:
        """Prune batch by batch; after each, yield (kind, records removed by it)."""
        ...

    def archive(
        self, cutoff: datetime, batch: int, sink: Callable[[Sequence[Event]], None]
    ) -> Iterator[int]:
        """Move archivable events older than ``cutoff`` out of the ledger, batch by batch.

        Each batch hands its events to ``sink`` (which must make them durable)
        before the transaction that folds them into their carry events and
        deletes them commits (domain/retention.py); yields how many left.
        """
        ...


class AlertLog(Protocol):
    """The alert outbox (contract §9), read by the delivery worker.

    Each backend writes alert events inside the atomic step of the decision
    that caused them (a threshold crossed, a denial, a shadow block), keyed by
    ``AlertEvent.dedupe`` so one is recorded once however many replicas race;
    on Redis the step puts them on the ledger stream and the mover writes them
    here. This side only reads them and marks them handed to the webhooks.
    """

    def alert_events(self, *, after: int, limit: int) -> list[AlertEvent]:
        """Recorded events with an id above ``after``, oldest first, at most ``limit``."""
        ...

    def unfanned_alert_events(self, limit: int) -> list[AlertEvent]:
        """Events not yet handed to the webhook deliveries, oldest first."""
        ...

    def mark_alerts_fanned(self, ids: Sequence[int]) -> None:
        """These events have their delivery rows: never hand them out again."""
        ...


@dataclass(frozen=True, slots=True)
class Spent:
    """One subject's total of a metric over a range, in units (domain.metrics)."""

    subject: SubjectRef
    units: int
    events: int


class Insights(Protocol):
    """Aggregates over the ledger for the dashboard and /v1/insights (storage/insights.py).

    Apart from ``Store`` so each backend answers it from its own files, with
    the ledger as the source: counters are kept only for tracked windows.
    """

    def top_consumers(
        self,
        metric: Metric,
        *,
        start: datetime | None,
        end: datetime | None,
        parent: SubjectRef | None,
        within: SubjectRef | None,
        hidden: frozenset[SubjectRef],
        kind: str | None,
        limit: int,
    ) -> list[Spent]:
        """The subjects charged most of ``metric`` by usage events with a time in [start, end).

        ``parent``: only its current direct children, counting the events
        charged to both (what they spent in it). ``within``: only events charged
        to that subject too (a member's subtree; its ancestors, charged by the
        same events, go in ``hidden``). ``hidden``: never ranked. ``kind``: only
        subjects of it. Highest first, ties by subject; at most ``limit``.
        """
        ...


class Store(Catalog, Meter, Protocol):
    """What the engine holds: a catalog and a meter (see composed.ComposedStore)."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot be reached."""
        ...
