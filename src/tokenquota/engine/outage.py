"""``on_store_error="open"``: admitting while the store is unreachable (docs/outages.md).

contract §5 lets a product prefer availability. This is the one object
that knows about it: the spool (``engine/spool.py``) where admitted usage
and holds wait, and the thread that drains the spool into the store once it
answers again. (The API keys this process has seen live, which still
authenticate meanwhile, are kept by ``engine/keycache.py``.) ``Quota`` calls it when the store
raised ``StoreUnreachable``; with ``on_store_error="closed"`` (the default)
there is no spool and ``admits`` is False.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from tokenquota.domain.clock import Clock
from tokenquota.domain.decisions import Decision, Mode
from tokenquota.domain.errors import StoreUnavailable, TokenQuotaError
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Acquired, Reserved
from tokenquota.engine import inputs
from tokenquota.engine.planner import Planner, planned, request, request_fingerprint
from tokenquota.engine.spool import OPEN_PREFIX, Queued, Spool
from tokenquota.storage import Store
from tokenquota.wire.metrics import encode_amounts

log = logging.getLogger("tokenquota")

DEFAULT_SPOOL: Final = "tokenquota-spool.db"
DRAIN_SECONDS: Final = 1.0  # how often a replica tries to store what it queued
DRAIN_BATCH: Final = 100


class Outage:
    """The spool and its drainer of one engine (the keys seen live are in ``KeyCache``)."""

    def __init__(
        self,
        store: Store,
        planner: Planner,
        clock: Clock,
        *,
        spool: str | Path | None,
        fail_open: bool,
        create_subject: bool,
    ) -> None:
        self.store = store
        self.planner = planner
        self.clock = clock
        self.create_subject = create_subject
        self.spool = Spool(spool or DEFAULT_SPOOL) if fail_open else None
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        if self.spool is not None:
            self._drainer = threading.Thread(
                target=self._drain_forever, name="tokenquota-spool", daemon=True
            )
            self._drainer.start()

    @property
    def admits(self) -> bool:
        """Whether a request the store could not take is admitted (else it is refused)."""
        return self.spool is not None

    def close(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(timeout=30)

    # admitting without the store -----------------------------------------------
    def check(
        self, ref: SubjectRef, raw: Mapping[str, object], timestamp: datetime | None
    ) -> Decision:
        parsed = Amounts.parse(raw)
        return failed_open(
            ref, parsed, Mode.ENFORCE, self.planner.timestamp(timestamp, self.clock.now())
        )

    def queue(
        self,
        ref: SubjectRef,
        amounts: Amounts,
        mode: Mode,
        *,
        key: str | None,
        timestamp: datetime | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        resource: str | SubjectRef | None = None,
    ) -> Decision:
        """Admit a consume the store could not take, and keep it in the spool.

        Without a caller's idempotency key the spool makes one up: storing the
        entry later is then idempotent too, should a drain be cut short.
        """
        spool = self._spool()
        at = self.planner.timestamp(timestamp, self.clock.now())
        asked = request(amounts, mode, timestamp, model, tags or {}, inputs.resource(resource))
        asked["at"] = at.isoformat()  # when it happened: the windows it counts in
        answer = failed_open(ref, amounts, mode, at)
        entry_key = key if key is not None else f"spool:{secrets.token_hex(16)}"
        decision = spool.queue(str(ref), entry_key, asked, answer, request_fingerprint(asked))
        if not decision.replayed:
            log.warning(
                "store unreachable: admitted %s for %s, queued", encode_amounts(amounts), ref
            )
        return decision

    def reserve(
        self,
        ref: SubjectRef,
        raw: Mapping[str, object],
        lifetime: timedelta,
        resource: str | SubjectRef | None,
    ) -> Reserved:
        parsed = Amounts.parse(raw)
        now = self.clock.now()
        held = Reservation(
            id=OPEN_PREFIX + secrets.token_hex(16),
            subject=ref,
            charged=(ref,),
            amounts=parsed,
            created_at=now,
            expires_at=now + lifetime,
            resource=inputs.resource(resource),
        )
        self._spool().add_reservation(held, now)
        return Reserved(failed_open(ref, parsed, Mode.ENFORCE, now), held)

    def acquire(
        self, ref: SubjectRef, lifetime: timedelta, resource: str | SubjectRef | None
    ) -> Acquired:
        now = self.clock.now()
        held = Lease(
            id=OPEN_PREFIX + secrets.token_hex(16),
            subject=ref,
            charged=(ref,),
            created_at=now,
            expires_at=now + lifetime,
            resource=inputs.resource(resource),
        )
        self._spool().add_lease(held, now)
        return Acquired(failed_open(ref, Amounts({}), Mode.ENFORCE, now), held)

    def holds(self, hold_id: str) -> Spool | None:
        """The spool when it holds this reservation or lease: an ``open-`` one, taken
        while the store was unreachable; None for every other one (the store's)."""
        if hold_id.startswith(OPEN_PREFIX) and self.spool is not None:
            return self.spool
        return None

    def commit(self, reservation: Reservation, actual: Mapping[str, object]) -> Decision:
        """A hold taken while the store was away: its usage joins the queue. The key
        is the reservation's, so a repeated commit is queued (and stored) once."""
        decision = self.queue(
            reservation.subject,
            Amounts.parse(actual),
            Mode.RECORD,
            key=f"commit:{reservation.id}",
            resource=reservation.resource,
        )
        self._spool().committed(reservation.id, decision)
        return decision

    # storing later ---------------------------------------------------------------
    def drain(self) -> int:
        """Store what was admitted while the store was unreachable; returns how many.

        Runs every DRAIN_SECONDS on its own; stops at the first entry the store
        cannot take yet, so the spool keeps its order. Entries are stored as
        ``mode=record`` (they were admitted already) in the windows of the time
        they happened. One the store refuses for good (a subject deleted since,
        say) is set aside in the spool's ``failed`` table and logged.
        """
        if self.spool is None:
            return 0
        stored = 0
        with self._drain_lock:
            while batch := self.spool.pending(DRAIN_BATCH):
                for entry in batch:
                    try:
                        self._store_queued(entry)
                    except StoreUnavailable:
                        return stored
                    except TokenQuotaError as exc:
                        log.error("the store refused queued usage %s: %s", entry.key, exc.message)
                        self.spool.fail(entry, f"{exc.code}: {exc.message}", self.clock.now())
                        continue
                    self.spool.done(entry)
                    stored += 1
        return stored

    def _store_queued(self, entry: Queued) -> None:
        r = entry.request
        asked_at = datetime.fromisoformat(r["timestamp"]) if r["timestamp"] else None

        def attempt() -> Decision:
            plan = self.planner.plan(
                SubjectRef.parse(entry.subject),
                Amounts.from_units_json(r["amounts"]),
                Mode.RECORD,
                datetime.fromisoformat(r["at"]),
                idempotency_key=entry.key,
                model=r["model"],
                tags=r["tags"],
                resource=r["resource"],
                asked=(Mode(r["mode"]), asked_at),
            )
            return self.store.debit(plan, create_subject=self.create_subject)

        planned(attempt)

    def _drain_forever(self) -> None:
        while not self._stop.wait(DRAIN_SECONDS):
            try:
                self.drain()
            except Exception:  # a bug must not stop the drainer for good
                log.exception("storing queued usage failed; trying again")

    def _spool(self) -> Spool:
        assert self.spool is not None, "only called while admitting without the store"
        return self.spool


def failed_open(ref: SubjectRef, amounts: Amounts, mode: Mode, at: datetime) -> Decision:
    """The answer given without the store: admitted, nothing measured."""
    return Decision(
        allowed=True,
        subject=str(ref),
        mode=mode,
        amounts=amounts.to_numbers(),
        timestamp=at,
        limits=(),
        failed_open=True,
    )
