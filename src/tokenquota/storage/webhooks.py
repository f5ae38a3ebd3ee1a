"""The webhook tables: endpoints, and one delivery row per (alert event, endpoint).

Beside the alert outbox (``AlertLog``) they make what the delivery worker
(engine/delivery.py) reads and writes. Every backend keeps them where it keeps
its durable state: the SQL tables on SQLite and PostgreSQL (and beside Redis,
whose mover copies the alert events into SQL), the memory state's lock on
``memory://``. Apart from ``Store`` so the hot path's protocols stay as they were.

The worker's safety with many replicas rests on three primitives here:
``fan_out`` inserts delivery rows that already exist as no-ops (the unique
(event, endpoint) pair), ``claim`` hands a due row to one claimer only (row
locks skipped by the others on PostgreSQL, one write transaction at a time on
SQLite, the lock in memory) and leases it until ``claimed_until``, so a worker
that dies mid-send leaves a row that is due again when the lease ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.webhooks import Delivery, DeliveryStatus, Endpoint, audit_target
from tokenquota.storage.base import AlertLog, Store
from tokenquota.wire.webhooks import encode_endpoint


class WebhookTables(AlertLog, Protocol):
    """Each change to an endpoint writes its audit entry (``audit_entry``) in the same
    transaction, or under the same lock, as the change itself: never one without the other."""

    def add_endpoint(self, endpoint: Endpoint, *, actor: str) -> None: ...

    def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    def endpoints(self, *, owner: str | None = None) -> list[Endpoint]:
        """Every endpoint in creation order; only those of ``owner`` when it is given."""
        ...

    def set_disabled(
        self, endpoint_id: str, at: datetime | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        """Disable (``at``) or enable (None) an endpoint; None when it does not exist.
        Audited only when it changes (enabling an enabled endpoint writes nothing)."""
        ...

    def set_sealed(
        self, endpoint_id: str, sealed: str | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        """Replace the endpoint's sealed secret (None: derived again); None when it does not
        exist. Audited, without the secret or its sealed form."""
        ...

    def remove_endpoint(self, endpoint_id: str, *, actor: str, now: datetime) -> bool:
        """Remove an endpoint and its deliveries; False when it did not exist."""
        ...

    def fan_out(
        self, pairs: Sequence[tuple[int, str]], events: Sequence[int], now: datetime
    ) -> int:
        """Insert a pending delivery per (event id, endpoint id) that has none yet, and
        mark ``events`` fanned out, in one transaction; returns the rows inserted."""
        ...

    def claim(self, now: datetime, until: datetime, limit: int) -> list[Delivery]:
        """Due pending deliveries of enabled endpoints, leased to the caller until ``until``."""
        ...

    def finish(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_status: int | None,
        last_error: str | None,
        at: datetime,
    ) -> None:
        """Record one attempt's outcome and release the lease (a pending row only)."""
        ...

    def delivery(self, delivery_id: int) -> Delivery | None: ...

    def deliveries(
        self, endpoint_id: str, *, offset: int, limit: int
    ) -> tuple[list[Delivery], int]:
        """One endpoint's deliveries, newest first, and how many it has in all."""
        ...

    def redeliver(self, delivery_id: int, now: datetime) -> Delivery | None:
        """Make a delivery pending again, due now, with a fresh round of attempts."""
        ...

    def alert_event(self, event_id: int) -> AlertEvent | None: ...

    def subject_alerts(
        self, subject: str, *, offset: int, limit: int
    ) -> tuple[list[AlertEvent], int]:
        """The alert events of one subject, newest first, and how many there are."""
        ...

    def event_deliveries(self, event_ids: Sequence[int]) -> list[Delivery]:
        """Every delivery of these events (what the dashboard shows beside each)."""
        ...

    def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are in each status (the metrics' gauges)."""
        ...


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit log entry of an endpoint change, as every backend writes it."""

    at: datetime
    actor: str
    action: str
    target: str
    before: Any
    after: Any


def audit_view(endpoint: Endpoint | None) -> dict[str, Any] | None:
    """The endpoint as the audit log keeps it: what the API shows, never a secret (the
    view says only whether the secret is derived or supplied, never its sealed text)."""
    return None if endpoint is None else encode_endpoint(endpoint)


def audit_entry(
    action: str,
    before: Endpoint | None,
    after: Endpoint | None,
    *,
    actor: str,
    at: datetime,
) -> AuditRow:
    """The audit entry of one change from ``before`` to ``after`` (None: absent)."""
    subject = after if after is not None else before
    assert subject is not None
    return AuditRow(at, actor, action, audit_target(subject), audit_view(before), audit_view(after))


def webhook_tables(store: Store) -> WebhookTables:
    """The webhook tables of ``store`` (``ComposedStore.alerts``); TypeError for a store
    of the caller's own making, which keeps none."""
    tables = getattr(store, "alerts", None)
    if tables is None:
        raise TypeError(f"no webhook tables for {type(store).__name__}")
    return cast(WebhookTables, tables)
