# Generated from _async.py by scripts/gen_sync_client.py: do not edit by hand.
# Change _async.py, then run `make client` (`make lint` fails while this file is stale).
"""``Client``: the blocking twin of ``AsyncClient``, method for method."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import httpx

from tokenquota.client import _answers as a
from tokenquota.client import _protocol as p
from tokenquota.client import _webhooks as w
from tokenquota.client._twins import Hold, unshielded
from tokenquota.domain.decisions import Decision, Mode
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.holds import DEFAULT_TTL, Lease, Reservation
from tokenquota.domain.insights import DEFAULT_TOP, TopConsumers
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import Plan
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import (
    Acquired,
    DefaultRule,
    HistoryPoint,
    LimitsView,
    Page,
    Reserved,
    Usage,
)
from tokenquota.domain.webhooks import Delivery, Endpoint, SubjectAlert

T = TypeVar("T")


class Client:
    """A tokenquota service over HTTP, with the methods of ``tokenquota.Quota``.

    Answers come back as the library's own types (``Decision``, ``Usage``,
    ``Subject``, ``Plan``...), credits as ``Decimal``. Error answers raise the
    library's exceptions by their code; a denied consume raises
    ``QuotaExceeded``. No answer at all (refused, timed out, cut) raises
    ``ServiceUnreachable`` with the URL; the client never retries by itself.

    >>> with Client("http://127.0.0.1:8000", "tq_...") as quota:  # doctest: +SKIP
    ...     quota.consume("user:alice", tokens=1200, model="gpt-4o")
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers=p.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: p.Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        except httpx.TransportError as error:
            raise a.unreachable(self._http.base_url, call, error) from error
        return a.finish(call, response)

    # operations -------------------------------------------------------------
    def check(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        timestamp: datetime | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """The decision a consume in enforce mode would get now, spending nothing."""
        return self._run(p.check(subject, amounts, timestamp, metric_amounts, resource))

    def consume(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        mode: str | Mode = Mode.ENFORCE,
        idempotency_key: str | None = None,
        timestamp: datetime | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Spend for the subject and its ancestors, all or nothing.

        Raises ``QuotaExceeded`` when denied. A retry with the same
        ``idempotency_key`` returns the first answer (``replayed`` set) and
        charges nothing more.
        """
        return self._run(
            p.consume(
                subject,
                amounts,
                mode=mode,
                idempotency_key=idempotency_key,
                timestamp=timestamp,
                model=model,
                tags=tags,
                metric_amounts=metric_amounts,
                resource=resource,
            )
        )

    # reservations and leases ------------------------------------------------
    def reserve(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Reserved:
        """Hold an estimate before an LLM call, all or nothing across the hierarchy.

        A refusal is an answer, not an exception: ``reservation`` is None and
        ``decision`` says what blocked and ``retry_after``.
        """
        return self._run(
            p.reserve(subject, amounts, ttl=ttl, metric_amounts=metric_amounts, resource=resource)
        )

    def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Replace the hold by what the call really used; without amounts, the estimate.

        A second commit returns the first answer (``replayed`` set); after release
        or expiry it raises ``ReservationClosed`` (409 ``hold_closed``).
        """
        return self._run(p.commit(reservation_id, amounts, metric_amounts))

    def release(self, reservation_id: str) -> bool:
        """Free a hold now; False when there was nothing left to free (a no-op)."""
        return self._run(p.release(reservation_id))

    def get_reservation(self, reservation_id: str) -> Reservation:
        return self._run(p.get_reservation(reservation_id))

    @contextmanager
    def reservation(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Iterator[Hold]:
        """``with client.reservation("user:a", tokens=2000) as hold: ...``

        Then ``hold.commit(tokens=n)``. Raises QuotaExceeded when the hold is
        refused. An exception in the block (a cancellation or an interrupt too)
        releases the hold; leaving the block without a commit records the estimate.
        """
        call = p.reserve(
            subject,
            amounts,
            ttl=ttl,
            metric_amounts=metric_amounts,
            raise_refused=True,
            resource=resource,
        )
        reserved = self._run(call)
        reservation = reserved.reservation
        assert reservation is not None  # a refusal raised
        hold = Hold(self, reservation)
        try:
            yield hold
        except BaseException:
            if hold.result is None:
                with unshielded():
                    self.release(hold.id)
            raise
        if hold.result is None:
            hold.commit()

    def acquire(
        self,
        subject: str | SubjectRef,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
    ) -> Acquired:
        """A concurrency slot on the subject and every ancestor; a refusal has ``lease`` None."""
        return self._run(p.acquire(subject, ttl=ttl, resource=resource))

    def release_lease(self, lease_id: str) -> bool:
        """Give the slot back; False when it was released already (a no-op)."""
        return self._run(p.release_lease(lease_id))

    def heartbeat(self, lease_id: str, *, ttl: float | timedelta = DEFAULT_TTL) -> Lease:
        """Extend a live lease to ``ttl`` s from now; a lapsed one raises ReservationClosed."""
        return self._run(p.heartbeat(lease_id, ttl=ttl))

    def get_lease(self, lease_id: str) -> Lease:
        return self._run(p.get_lease(lease_id))

    @contextmanager
    def lease(
        self,
        subject: str | SubjectRef,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
    ) -> Iterator[Lease]:
        """``with client.lease("user:a"): ...``; raises QuotaExceeded when full."""
        acquired = self._run(p.acquire(subject, ttl=ttl, raise_refused=True, resource=resource))
        lease = acquired.lease
        assert lease is not None  # a refusal raised
        try:
            yield lease
        finally:
            with unshielded():
                self.release_lease(lease.id)

    # reads ------------------------------------------------------------------
    def usage(self, subject: str | SubjectRef, *, include_ancestors: bool = False) -> Usage:
        """Every effective limit with what is used, left and when it resets."""
        return self._run(p.usage(subject, include_ancestors))

    def shadow_hits(self, subject: str | SubjectRef) -> dict[str, int]:
        """How many decisions each shadow limit of the subject would have blocked."""
        return self._run(p.shadow_hits(subject))

    def history(
        self,
        subject: str | SubjectRef,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str = "day",
        group_by: str = "metric",
    ) -> list[HistoryPoint]:
        """A time series from the ledger."""
        return self._run(
            p.history(subject, start=start, end=end, granularity=granularity, group_by=group_by)
        )

    def top_consumers(
        self,
        metric: str,
        *,
        window: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        parent: str | SubjectRef | None = None,
        kind: str | None = None,
        limit: int = DEFAULT_TOP,
    ) -> TopConsumers:
        """Who used most of ``metric`` in a window's current period (default month) or a
        range; under ``parent``, its direct children by what they spent in it."""
        return self._run(
            p.top_consumers(
                metric,
                window=window,
                start=start,
                end=end,
                parent=parent,
                kind=kind,
                limit=limit,
            )
        )

    def events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Event]:
        """One page of the ledger."""
        return self._run(
            p.events(subject=subject, start=start, end=end, offset=offset, limit=limit)
        )

    def iter_events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Event]:
        """Every matching event, fetched a page at a time as the iteration goes."""
        offset = 0
        while True:
            page = self.events(
                subject=subject, start=start, end=end, offset=offset, limit=p.PAGE_SIZE
            )
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def export_events(
        self,
        format: p.ExportFormat = "csv",
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[str]:
        """The ledger as CSV (with a header) or JSON lines, streamed, one line at a time.

        Lines keep their ending, as when iterating a file: ``csv.reader`` reads
        them as they come (also quoted fields that hold a newline), and
        ``writelines`` saves the export byte for byte.

        Iterate with ``for``; the method itself is not awaited. The request
        is sent when iteration starts; close the iterator (``close()``) or read it
        to the end to free the connection.
        """
        call = p.export_events(format, subject=subject, start=start, end=end)
        return self._stream_lines(call)

    def _stream_lines(self, call: p.Call[None]) -> Iterator[str]:
        try:
            with self._http.stream(call.method, call.path, params=call.params) as response:
                if response.is_error:
                    response.read()
                    raise a.error_from(response)
                lines = a.LineSplitter()
                for text in response.iter_text():
                    yield from lines.feed(text)
                yield from lines.end()
        except httpx.TransportError as error:
            raise a.unreachable(self._http.base_url, call, error) from error

    # subjects ---------------------------------------------------------------
    def put_subject(
        self,
        subject: str | SubjectRef,
        *,
        name: str | None = None,
        parents: Sequence[str | SubjectRef] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Subject:
        """Create or update a subject; arguments left as None keep what is stored."""
        return self._run(p.put_subject(subject, name=name, parents=parents, metadata=metadata))

    def set_parents(
        self, subject: str | SubjectRef, parents: Sequence[str | SubjectRef]
    ) -> Subject:
        return self.put_subject(subject, parents=parents)

    def get_subject(self, subject: str | SubjectRef) -> Subject:
        return self._run(p.get_subject(subject))

    def list_subjects(
        self,
        *,
        kind: str | None = None,
        parent: str | SubjectRef | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Subject]:
        return self._run(p.list_subjects(kind=kind, parent=parent, offset=offset, limit=limit))

    def delete_subject(self, subject: str | SubjectRef) -> None:
        self._run(p.delete_subject(subject))

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
    ) -> LimitsView:
        """Set one override; ``value`` None removes it, -1 makes the subject unlimited.

        ``thresholds``: alert thresholds in whole percent of the limit (docs/alerts.md)."""
        rule = {"metric": metric, "window": window, "limit": value, "shadow": shadow}
        if thresholds is not None:
            rule["thresholds"] = list(thresholds)
        return self.set_limits(subject, [rule])

    def set_limits(
        self, subject: str | SubjectRef, limits: Sequence[Mapping[str, object]]
    ) -> LimitsView:
        return self._run(p.set_limits(subject, limits))

    def limits(self, subject: str | SubjectRef) -> LimitsView:
        """The subject's overrides, its plan and its effective limits with their sources."""
        return self._run(p.limits(subject))

    def set_default(
        self,
        kind: str,
        metric: str,
        window: str | None,
        value: object,
        *,
        shadow: bool = False,
        thresholds: Sequence[int] | None = None,
    ) -> list[DefaultRule]:
        rule = {"kind": kind, "metric": metric, "window": window, "limit": value, "shadow": shadow}
        if thresholds is not None:
            rule["thresholds"] = list(thresholds)
        return self.set_defaults([rule])

    def set_defaults(self, items: Sequence[Mapping[str, object]]) -> list[DefaultRule]:
        """Runtime defaults win over the server's config; ``limit`` None removes one."""
        return self._run(p.set_defaults(items))

    def defaults(self) -> list[DefaultRule]:
        return self._run(p.defaults())

    # plans ------------------------------------------------------------------
    def create_plan(self, name: str, rules: Sequence[Mapping[str, object]]) -> Plan:
        return self._run(p.create_plan(name, rules))

    def update_plan(
        self,
        plan: str,
        *,
        name: str | None = None,
        rules: Sequence[Mapping[str, object]] | None = None,
    ) -> Plan:
        """Rename and/or replace the rules; every subject on the plan sees the change at once."""
        return self._run(p.update_plan(plan, name=name, rules=rules))

    def get_plan(self, plan: str) -> Plan:
        return self._run(p.get_plan(plan))

    def plans(self) -> list[Plan]:
        return self._run(p.plans())

    def delete_plan(self, plan: str) -> None:
        self._run(p.delete_plan(plan))

    def assign_plan(self, subject: str | SubjectRef, plan: str | None) -> LimitsView:
        """Put a subject on a plan; None takes it off. Answers the subject's limits."""
        return self._run(p.assign_plan(subject, plan))

    # prepaid credits --------------------------------------------------------
    def grant(
        self,
        subject: str | SubjectRef,
        credits: object,
        *,
        expires_at: datetime | None = None,
    ) -> Grant:
        """Add prepaid credits. From then on the subject's credit spending must fit its balance."""
        return self._run(p.grant(subject, credits, expires_at=expires_at))

    def grants(self, subject: str | SubjectRef) -> list[Grant]:
        return self._run(p.grants(subject))

    def balance(self, subject: str | SubjectRef) -> Balance | None:
        """What a prepaid subject has left now; None when it was never granted credits."""
        return self._run(p.balance(subject))

    # resource quotas --------------------------------------------------------
    def set_resource_quota(
        self, resource: str | SubjectRef, quota: Mapping[str, object]
    ) -> ResourceQuota:
        """Put a shared-capacity quota on a resource (contract §6); replaces any earlier one."""
        return self._run(p.set_resource_quota(resource, quota))

    def get_resource_quota(self, resource: str | SubjectRef) -> ResourceQuota:
        return self._run(p.get_resource_quota(resource))

    def delete_resource_quota(self, resource: str | SubjectRef) -> None:
        self._run(p.delete_resource_quota(resource))

    # API keys and audit -----------------------------------------------------
    def create_key(
        self,
        role: str | Role,
        *,
        subject: str | SubjectRef | None = None,
        name: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which the server shows this once."""
        return self._run(p.create_key(role, subject=subject, name=name))

    def list_keys(self, *, offset: int = 0, limit: int = 100) -> Page[ApiKey]:
        return self._run(p.list_keys(offset=offset, limit=limit))

    def revoke_key(self, key_id: str) -> None:
        self._run(p.revoke_key(key_id))

    def audit(
        self, *, subject: str | None = None, offset: int = 0, limit: int = 100
    ) -> Page[AuditEntry]:
        """Changes to a subject, or to ``defaults/<kind>``, ``plans/<id>`` or ``keys/<id>``."""
        return self._run(p.audit(subject=subject, offset=offset, limit=limit))

    # webhooks (docs/webhooks.md) ----------------------------------------------
    def create_webhook(
        self,
        url: str,
        *,
        events: Sequence[str] | None = None,
        description: str | None = None,
        secret: str | None = None,
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its signing secret (derived by the server unless given)."""
        return self._run(
            w.create_webhook(url, events=events, description=description, secret=secret)
        )

    def webhooks(self) -> list[Endpoint]:
        return self._run(w.webhooks())

    def get_webhook(self, endpoint_id: str) -> Endpoint:
        return self._run(w.get_webhook(endpoint_id))

    def webhook_secret(self, endpoint_id: str) -> str:
        return self._run(w.webhook_secret(endpoint_id))

    def set_webhook_secret(
        self, endpoint_id: str, secret: str | None = None
    ) -> tuple[Endpoint, str]:
        """A new signing secret for one endpoint: ``secret``, or a fresh random one."""
        return self._run(w.set_webhook_secret(endpoint_id, secret))

    def set_webhook_enabled(self, endpoint_id: str, enabled: bool) -> Endpoint:
        return self._run(w.set_webhook_enabled(endpoint_id, enabled))

    def delete_webhook(self, endpoint_id: str) -> None:
        self._run(w.delete_webhook(endpoint_id))

    def deliveries(self, endpoint_id: str, *, offset: int = 0, limit: int = 100) -> Page[Delivery]:
        """An endpoint's deliveries, newest first."""
        return self._run(w.deliveries(endpoint_id, offset=offset, limit=limit))

    def get_delivery(self, delivery_id: int) -> Delivery:
        return self._run(w.get_delivery(delivery_id))

    def redeliver(self, delivery_id: int) -> Delivery:
        """Send a delivery again (pending, due now, a fresh round of attempts)."""
        return self._run(w.redeliver(delivery_id))

    def alerts(
        self, subject: str | SubjectRef, *, offset: int = 0, limit: int = 100
    ) -> Page[SubjectAlert]:
        """A subject's alert events, newest first, each with the deliveries this key sees."""
        return self._run(w.subject_alerts(subject, offset=offset, limit=limit))
