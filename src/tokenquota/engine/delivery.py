"""The webhook delivery worker: fan alert events out, claim due deliveries, POST them.

Every ``serve`` worker process runs one (``start_delivery``), beside the
background pruning; never on a request's path. One pass (``run_once``):

1. fan-out: each alert event not yet handed out gets a pending delivery row
   per matching enabled endpoint (its kinds; for a member's endpoint, an event
   of its subject or a subject below), then is marked fanned. Replicas racing
   insert the same (event, endpoint) rows, which the unique pair makes no-ops.
2. claim: due pending rows, leased for ``timeout + LEASE_MARGIN`` seconds to
   this worker alone (storage/webhooks.py). A worker killed mid-send leaves its
   rows leased; when the lease ends another worker (or this one restarted)
   sends them again: delivery is at least once.
3. send: the event's JSON (``domain.webhooks.event_body``), signed, with a
   bounded timeout, a few at a time. A 2xx is delivered; anything else is
   retried after an exponential backoff with full jitter, and after
   ``max_attempts`` attempts the row is ``failed`` (the dead letter) until
   someone redelivers it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import httpx
import orjson

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.errors import TokenQuotaError
from tokenquota.domain.webhooks import (
    DELIVERY_ID_HEADER,
    EVENT_ID_HEADER,
    MAX_ERROR_LENGTH,
    SIGNATURE_HEADER,
    Delivery,
    DeliveryStatus,
    Endpoint,
    backoff,
    event_body,
    sign,
)
from tokenquota.engine.webhooks import SecretUnavailable, ServerKey
from tokenquota.storage.webhooks import WebhookTables, webhook_tables

if TYPE_CHECKING:
    from tokenquota.engine.quota import Quota

log = logging.getLogger("tokenquota.webhooks")

LEASE_MARGIN: Final = 5.0  # seconds past the send timeout before a claim lapses
FAN_OUT_BATCH: Final = 200
USER_AGENT: Final = "tokenquota-webhooks/1"

# What one attempt ended as: "delivered", "retry" (failed, tried again later), "failed".
Outcome = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    poll: float = 1.0  # seconds between passes
    timeout: float = 10.0  # seconds one POST may take
    max_attempts: int = 8
    backoff: float = 10.0  # the first retry's ceiling; doubled each attempt
    backoff_max: float = 3_600.0
    batch: int = 8  # deliveries sent at once by one worker


class Deliverer:
    """One process's delivery worker (see the module's docstring)."""

    def __init__(
        self,
        quota: Quota,
        key: ServerKey,
        options: DeliveryOptions | None = None,
        *,
        on_outcome: Outcome | None = None,
    ) -> None:
        self.quota = quota
        self.key = key
        self.options = options or DeliveryOptions()
        self.tables: WebhookTables = webhook_tables(quota.store)
        self.on_outcome = on_outcome
        self.stop = threading.Event()
        self._http = httpx.Client(
            timeout=self.options.timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=self.options.batch),
        )
        self._pool = ThreadPoolExecutor(self.options.batch, thread_name_prefix="tokenquota-send")
        self.thread = threading.Thread(target=self._loop, name="tokenquota-webhooks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=self.options.timeout + LEASE_MARGIN)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                busy = self.run_once()
            except TokenQuotaError as exc:  # the store away: try again next time
                log.warning("webhook delivery pass failed: %s", exc)
                busy = False
            except Exception:  # never let one bad pass end delivery for good
                log.exception("webhook delivery pass failed")
                busy = False
            if not busy:
                self.stop.wait(self.options.poll)

    # one pass ----------------------------------------------------------------------
    def run_once(self) -> bool:
        """Fan out, then send one batch of due deliveries; True when there was work."""
        fanned = self.fan_out()
        now = self.quota.clock.now()
        lease = timedelta(seconds=self.options.timeout + LEASE_MARGIN)
        claimed = self.tables.claim(now, now + lease, self.options.batch)
        if claimed:
            list(self._pool.map(self._send, claimed))
        return bool(fanned or claimed)

    def fan_out(self) -> int:
        """Hand every recorded, unhanded event to its endpoints; the events handed out."""
        handed = 0
        while not self.stop.is_set():
            events = self.tables.unfanned_alert_events(FAN_OUT_BATCH)
            if not events:
                break
            endpoints = [e for e in self.tables.endpoints() if e.enabled]
            pairs = [(ev.id, ep.id) for ev in events for ep in endpoints if self._wants(ep, ev)]
            self.tables.fan_out(pairs, [ev.id for ev in events], self.quota.clock.now())
            handed += len(events)
            if len(events) < FAN_OUT_BATCH:
                break
        return handed

    def _wants(self, endpoint: Endpoint, event: AlertEvent) -> bool:
        if event.kind not in endpoint.events:
            return False
        if endpoint.owner is None or endpoint.owner == event.subject:
            return True
        # A member's endpoint: only its subject's subtree (contract §10).
        try:
            return endpoint.owner in {str(a) for a in self.quota.ancestors(event.subject)}
        except TokenQuotaError:
            return False

    def _send(self, delivery: Delivery) -> None:
        try:
            status, error = self._post(delivery)
        except TokenQuotaError as exc:  # the store failed while reading: the lease retries it
            log.warning("webhook delivery %d not sent: %s", delivery.id, exc)
            return
        now = self.quota.clock.now()
        attempts = delivery.attempts + 1
        if error is None:
            outcome, next_at, final = "delivered", now, DeliveryStatus.DELIVERED
        elif attempts >= self.options.max_attempts:
            outcome, next_at, final = "failed", now, DeliveryStatus.FAILED
        else:
            wait = backoff(
                attempts, self.options.backoff, self.options.backoff_max, random.random()
            )
            outcome, next_at, final = "retry", now + timedelta(seconds=wait), DeliveryStatus.PENDING
        self.tables.finish(
            delivery.id,
            status=final,
            attempts=attempts,
            next_attempt_at=next_at,
            last_status=status,
            last_error=None if error is None else error[:MAX_ERROR_LENGTH],
            at=now,
        )
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if outcome != "delivered":
            log.info(
                "webhook delivery %d to %s: attempt %d failed (%s)%s",
                delivery.id,
                delivery.endpoint_id,
                attempts,
                error,
                "; dead-lettered" if outcome == "failed" else "",
            )

    def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """(HTTP status or None, None when delivered else why not)."""
        endpoint = self.tables.endpoint(delivery.endpoint_id)
        event = self.tables.alert_event(delivery.event_id)
        if endpoint is None or event is None:
            return None, "the endpoint or the event no longer exists"
        try:
            secret = self.key.secret_of(endpoint)
        except SecretUnavailable as exc:
            return None, str(exc)
        body = orjson.dumps(event_body(event))
        timestamp = int(self.quota.clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            EVENT_ID_HEADER: str(event.id),
            DELIVERY_ID_HEADER: str(delivery.id),
        }
        try:
            response = self._http.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"the endpoint answered {response.status_code}"


def start_delivery(
    quota: Quota,
    key: ServerKey | None,
    options: DeliveryOptions,
    *,
    on_outcome: Outcome | None = None,
) -> Deliverer | None:
    """The service's delivery worker, started; None without a server key or tables, or
    when ``options.poll`` is 0 (this process delivers nothing; another one does)."""
    if key is None:
        log.info("webhook delivery is off: no webhook_key is set")
        return None
    if not options.poll:
        log.info("webhook delivery is off in this process: webhook_poll_seconds is 0")
        return None
    try:
        deliverer = Deliverer(quota, key, options, on_outcome=on_outcome)
    except TypeError:  # a store of the caller's own making: no webhook tables
        log.warning("no webhook tables for %s: delivery is off", type(quota.store).__name__)
        return None
    deliverer.start()
    return deliverer
