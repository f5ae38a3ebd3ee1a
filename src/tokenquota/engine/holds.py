"""The holding half of the facade: reservations, leases and prepaid credits.

``Quota`` is one class to its users; ``quota.py`` holds the consume path and
the reads of usage, ``config.py`` the configuration, and this file what a
caller takes before an LLM call and gives back after it (a reservation, a
concurrency lease) and the credits it may spend. Every method here validates,
plans and lets the store decide atomically, as ``consume`` does; while the
store is unreachable and the engine fails open, the ``Outage`` holds instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Final, TypeVar

from tokenquota.domain.clock import ensure_utc
from tokenquota.domain.decisions import Decision, Mode, QuotaExceeded
from tokenquota.domain.errors import NotFound, StoreUnreachable, ValidationError
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.grants import balance as grant_balance
from tokenquota.domain.holds import (
    DEFAULT_TTL,
    Lease,
    Reservation,
    check_committable,
    parse_ttl,
)
from tokenquota.domain.metrics import Amounts, Metric, merge_amounts, to_units
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Acquired, Hold, Reserved
from tokenquota.engine import inputs
from tokenquota.engine.config import Configuration
from tokenquota.engine.outage import Outage
from tokenquota.engine.planner import planned
from tokenquota.engine.spool import Spool
from tokenquota.storage import Store
from tokenquota.wire.metrics import encode_amounts

MAX_GRANTS: Final = 10_000
T = TypeVar("T")


class Holds(Configuration):
    """What ``Quota`` offers to hold and prepay, on top of what it configures."""

    def _or_outage(self, attempt: Callable[[], T], fallback: Callable[[Outage], T]) -> T:
        """``attempt`` through the store; when it is unreachable, ``fallback`` through
        the outage path if the engine fails open (else the store's error stands)."""
        try:
            return attempt()
        except StoreUnreachable:
            if not self.outage.admits:
                raise
        return fallback(self.outage)

    def _holds(self, hold_id: str) -> Store | Spool:
        """Where a reservation or lease lives: the spool for one taken while the store
        was unreachable, the store for every other one."""
        held = self.outage.holds(inputs.issued_id(hold_id))
        return held if held is not None else self.store

    # reservations -------------------------------------------------------------
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

        Held amounts count as used for every other caller until ``commit``,
        ``release`` or ``ttl`` seconds pass, whichever comes first.
        """
        ref = SubjectRef.parse(subject)
        lifetime = parse_ttl(ttl)
        raw = merge_amounts(amounts, metric_amounts)

        def attempt() -> Reserved:
            plan = self.planner.plan(
                ref, raw, Mode.ENFORCE, None, intent="reserve", resource=resource
            )
            reservation = Reservation(
                id=secrets.token_hex(16),
                subject=ref,
                charged=plan.charged,
                amounts=plan.amounts,
                created_at=plan.now,
                expires_at=plan.now + lifetime,
                resource=plan.resource,
            )
            decision = self.store.reserve(
                plan, reservation, create_subject=not self.strict_subjects
            )
            return Reserved(decision, reservation if decision.allowed else None)

        return self._or_outage(
            lambda: planned(attempt),
            lambda outage: outage.reserve(ref, raw, lifetime, resource),
        )

    def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Replace the hold by what the call really used (more or less; never refused).

        Without amounts, the held estimate is recorded. A second commit returns
        the first one's answer; a commit after release or expiry is a 409.
        """
        return self.commit_usage(reservation_id, merge_amounts(amounts, metric_amounts))

    def commit_usage(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        *,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Decision:
        """``commit``, with the ``model`` and ``tags`` a consume would put on the ledger
        event (the gateway records the model and the price it charged there)."""
        model = inputs.bounded_text(model, "model", inputs.MAX_MODEL_LENGTH)
        parsed_tags = inputs.tags(tags)
        given = dict(amounts or {})
        if given:
            # Validated before the replay below, which never reads them: a bad
            # body is refused on a repeat too, as on the first commit.
            Amounts.parse(given)
        reservation = self.get_reservation(reservation_id)
        if reservation.committed is not None:
            return reservation.committed.as_replay()  # a repeat, whatever it says now
        check_committable(reservation, reservation.id, self.clock.now())
        actual = given if given else encode_amounts(reservation.amounts)
        if self.outage.holds(reservation.id) is not None:
            return self.outage.commit(reservation, actual)  # held while the store was away

        def attempt() -> Decision:
            plan = self.planner.plan(
                reservation.subject,
                actual,
                Mode.RECORD,
                None,
                model=model,
                tags=parsed_tags,
                resource=reservation.resource,
            )
            return self.store.commit(reservation.id, plan)

        return planned(attempt)

    def release(self, reservation_id: str) -> bool:
        """Free a hold now; False when there was nothing left to free (a no-op)."""
        return self._holds(reservation_id).release(reservation_id, self.clock.now())

    def get_reservation(self, reservation_id: str) -> Reservation:
        found = self._holds(reservation_id).get_reservation(reservation_id)
        if found is None:
            raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
        return found

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
        """``with q.reservation("user:a", tokens=2000) as hold: ...; hold.commit(tokens=n)``

        Raises QuotaExceeded when the hold is refused. An exception in the block
        releases the hold; leaving the block without a commit records the estimate.
        """
        reserved = self.reserve(
            subject, merge_amounts(amounts, metric_amounts), ttl=ttl, resource=resource
        )
        if reserved.reservation is None:
            raise QuotaExceeded(reserved.decision.denial(), reserved.decision)
        hold = Hold(self, reserved.reservation)
        try:
            yield hold
        except BaseException:
            if hold.result is None:
                self.release(hold.id)
            raise
        if hold.result is None:
            hold.commit()

    # leases -------------------------------------------------------------------
    def acquire(
        self,
        subject: str | SubjectRef,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
    ) -> Acquired:
        """A concurrency slot on the subject and every ancestor, until released or expired."""
        ref = SubjectRef.parse(subject)
        lifetime = parse_ttl(ttl)

        def attempt() -> Acquired:
            plan = self.planner.plan(
                ref, {}, Mode.ENFORCE, None, intent="acquire", resource=resource
            )
            lease = Lease(
                id=secrets.token_hex(16),
                subject=ref,
                charged=plan.charged,
                created_at=plan.now,
                expires_at=plan.now + lifetime,
                resource=plan.resource,
            )
            decision = self.store.acquire(plan, lease, create_subject=not self.strict_subjects)
            return Acquired(decision, lease if decision.allowed else None)

        return self._or_outage(
            lambda: planned(attempt), lambda outage: outage.acquire(ref, lifetime, resource)
        )

    def release_lease(self, lease_id: str) -> bool:
        return self._holds(lease_id).release_lease(lease_id, self.clock.now())

    def heartbeat(self, lease_id: str, *, ttl: float | timedelta = DEFAULT_TTL) -> Lease:
        """Extend a live lease to ``ttl`` seconds from now; an expired one is a 409."""
        now = self.clock.now()
        return self._holds(lease_id).extend_lease(lease_id, now + parse_ttl(ttl), now)

    def get_lease(self, lease_id: str) -> Lease:
        found = self._holds(lease_id).get_lease(lease_id)
        if found is None:
            raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
        return found

    @contextmanager
    def lease(
        self,
        subject: str | SubjectRef,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
    ) -> Iterator[Lease]:
        """``with q.lease("user:a"): call_the_model()``; raises QuotaExceeded when full.

        With ``resource`` the slot is taken on the resource too, as ``acquire`` takes it.
        """
        acquired = self.acquire(subject, ttl=ttl, resource=resource)
        if acquired.lease is None:
            raise QuotaExceeded(acquired.decision.denial(), acquired.decision)
        try:
            yield acquired.lease
        finally:
            self.release_lease(acquired.lease.id)

    # prepaid credits ----------------------------------------------------------
    def grant(
        self,
        subject: str | SubjectRef,
        credits: object,
        *,
        expires_at: datetime | None = None,
        actor: str = "library",
    ) -> Grant:
        """Add prepaid credits. From then on the subject's credit spending must fit its balance."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        units = to_units(Metric.CREDITS, credits, "credits")
        if units <= 0:
            raise ValidationError("credits", "must be more than 0")
        now = self.clock.now()
        expiry = ensure_utc(expires_at, "expires_at") if expires_at is not None else None
        if expiry is not None and expiry <= now:
            raise ValidationError("expires_at", "must be in the future")
        if len(self.store.grants(ref)) >= MAX_GRANTS:
            raise ValidationError("subject", f"a subject holds at most {MAX_GRANTS} grants")
        grant = Grant(secrets.token_hex(16), ref, units, now, expiry, units)
        self.store.add_grant(grant, actor=actor)
        return grant

    def grants(self, subject: str | SubjectRef) -> list[Grant]:
        return self.store.grants(SubjectRef.parse(subject))

    def balance(self, subject: str | SubjectRef) -> Balance | None:
        """What a prepaid subject has left now; None when it was never granted credits."""
        ref = SubjectRef.parse(subject)
        return grant_balance(ref, self.store.grants(ref), self.clock.now())
