"""The alert outbox and the webhook tables of ``memory://`` (storage/webhooks.py).

Over the one state and its one lock (state.py): the decision step appends
alert events there (``State.record_alert``), and this reads them; endpoints and
deliveries live here, in this object the memory store holds. A claim under the
lock is a claim no other thread can make; nothing survives the process, as
with everything on this backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.webhooks import (
    AUDIT_CREATE,
    AUDIT_DELETE,
    AUDIT_SECRET,
    AUDIT_UPDATE,
    Delivery,
    DeliveryStatus,
    Endpoint,
)
from tokenquota.storage.memory.state import State
from tokenquota.storage.webhooks import AuditRow, audit_entry


class MemoryWebhooks:
    def __init__(self, state: State) -> None:
        self._s = state
        self._endpoints: dict[str, Endpoint] = {}
        self._deliveries: dict[int, Delivery] = {}
        self._pairs: set[tuple[int, str]] = set()
        self._claimed: dict[int, datetime] = {}  # delivery id -> lease end
        self._ids = itertools.count(1)
        self._low = 0  # every event before this index is fanned out

    # the alert outbox (AlertLog) ---------------------------------------------------
    def alert_events(self, *, after: int, limit: int) -> list[AlertEvent]:
        with self._s.lock:
            # Ids are positions + 1 (State.record_alert), so ``after`` is an index.
            return list(self._s.alert_events[max(after, 0) : max(after, 0) + limit])

    def unfanned_alert_events(self, limit: int) -> list[AlertEvent]:
        with self._s.lock:
            events = self._s.alert_events
            fanned = self._s.alerts_fanned
            while self._low < len(events) and events[self._low].id in fanned:
                self._low += 1
            found: list[AlertEvent] = []
            for event in itertools.islice(events, self._low, None):
                if event.id not in fanned:
                    found.append(event)
                    if len(found) >= limit:
                        break
            return found

    def mark_alerts_fanned(self, ids: Sequence[int]) -> None:
        with self._s.lock:
            self._s.alerts_fanned.update(ids)

    def alert_event(self, event_id: int) -> AlertEvent | None:
        with self._s.lock:
            events = self._s.alert_events
            return events[event_id - 1] if 1 <= event_id <= len(events) else None

    # endpoints ------------------------------------------------------------------------
    def _audit(self, row: AuditRow) -> None:
        """Under the state's lock, with the change: the one log the catalog keeps."""
        self._s.write_audit(row.at, row.actor, row.action, row.target, row.before, row.after)

    def add_endpoint(self, endpoint: Endpoint, *, actor: str) -> None:
        with self._s.lock:
            self._endpoints[endpoint.id] = endpoint
            self._audit(
                audit_entry(AUDIT_CREATE, None, endpoint, actor=actor, at=endpoint.created_at)
            )

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self._s.lock:
            return self._endpoints.get(endpoint_id)

    def endpoints(self, *, owner: str | None = None) -> list[Endpoint]:
        with self._s.lock:
            found = [e for e in self._endpoints.values() if owner is None or e.owner == owner]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    def set_disabled(
        self, endpoint_id: str, at: datetime | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        with self._s.lock:
            before = self._endpoints.get(endpoint_id)
            if before is None or before.enabled == (at is None):
                return before  # absent, or no change (and no entry)
            after = self._endpoints[endpoint_id] = replace(before, disabled_at=at)
            self._audit(audit_entry(AUDIT_UPDATE, before, after, actor=actor, at=now))
            return after

    def set_sealed(
        self, endpoint_id: str, sealed: str | None, *, actor: str, now: datetime
    ) -> Endpoint | None:
        with self._s.lock:
            before = self._endpoints.get(endpoint_id)
            if before is None:
                return None
            after = self._endpoints[endpoint_id] = replace(before, sealed=sealed)
            self._audit(audit_entry(AUDIT_SECRET, before, after, actor=actor, at=now))
            return after

    def remove_endpoint(self, endpoint_id: str, *, actor: str, now: datetime) -> bool:
        with self._s.lock:
            before = self._endpoints.pop(endpoint_id, None)
            if before is None:
                return False
            for delivery in [d for d in self._deliveries.values() if d.endpoint_id == endpoint_id]:
                del self._deliveries[delivery.id]
                self._pairs.discard((delivery.event_id, endpoint_id))
                self._claimed.pop(delivery.id, None)
            self._audit(audit_entry(AUDIT_DELETE, before, None, actor=actor, at=now))
            return True

    # deliveries -----------------------------------------------------------------------
    def fan_out(
        self, pairs: Sequence[tuple[int, str]], events: Sequence[int], now: datetime
    ) -> int:
        inserted = 0
        with self._s.lock:
            for pair in pairs:
                if pair in self._pairs:
                    continue
                self._pairs.add(pair)
                number = next(self._ids)
                self._deliveries[number] = Delivery(
                    id=number,
                    event_id=pair[0],
                    endpoint_id=pair[1],
                    status=DeliveryStatus.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    last_status=None,
                    last_error=None,
                    last_attempt_at=None,
                    delivered_at=None,
                    created_at=now,
                )
                inserted += 1
            self._s.alerts_fanned.update(events)
        return inserted

    def claim(self, now: datetime, until: datetime, limit: int) -> list[Delivery]:
        with self._s.lock:
            due = [
                d
                for d in self._deliveries.values()
                if d.status is DeliveryStatus.PENDING
                and d.next_attempt_at <= now
                and self._claimed.get(d.id, now) <= now
                and (e := self._endpoints.get(d.endpoint_id)) is not None
                and e.enabled
            ]
            due.sort(key=lambda d: (d.next_attempt_at, d.id))
            for delivery in due[:limit]:
                self._claimed[delivery.id] = until
            return due[:limit]

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
        with self._s.lock:
            delivery = self._deliveries.get(delivery_id)
            if delivery is None or delivery.status is not DeliveryStatus.PENDING:
                return
            self._claimed.pop(delivery_id, None)
            self._deliveries[delivery_id] = replace(
                delivery,
                status=status,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                last_status=last_status,
                last_error=last_error,
                last_attempt_at=at,
                delivered_at=at if status is DeliveryStatus.DELIVERED else delivery.delivered_at,
            )

    def delivery(self, delivery_id: int) -> Delivery | None:
        with self._s.lock:
            return self._deliveries.get(delivery_id)

    def subject_alerts(
        self, subject: str, *, offset: int, limit: int
    ) -> tuple[list[AlertEvent], int]:
        with self._s.lock:
            found = [e for e in self._s.alert_events if e.subject == subject]
        found.reverse()
        return found[offset : offset + limit], len(found)

    def event_deliveries(self, event_ids: Sequence[int]) -> list[Delivery]:
        wanted = set(event_ids)
        with self._s.lock:
            found = [d for d in self._deliveries.values() if d.event_id in wanted]
        return sorted(found, key=lambda d: d.id)

    def deliveries(
        self, endpoint_id: str, *, offset: int, limit: int
    ) -> tuple[list[Delivery], int]:
        with self._s.lock:
            found = [d for d in self._deliveries.values() if d.endpoint_id == endpoint_id]
        found.sort(key=lambda d: d.id, reverse=True)
        return found[offset : offset + limit], len(found)

    def redeliver(self, delivery_id: int, now: datetime) -> Delivery | None:
        with self._s.lock:
            delivery = self._deliveries.get(delivery_id)
            if delivery is None:
                return None
            self._claimed.pop(delivery_id, None)
            delivery = self._deliveries[delivery_id] = replace(
                delivery, status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now
            )
            return delivery

    def delivery_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in DeliveryStatus), 0)
        with self._s.lock:
            for delivery in self._deliveries.values():
                counts[delivery.status.value] += 1
        return counts
