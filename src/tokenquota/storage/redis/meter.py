"""The Redis meter: counters, holds, grant balances and idempotency in Redis.

Counters, holds, leases, grant balances, idempotency records and the newest
ledger events live in Redis and change only inside ``step.lua``, one atomic
script per operation (per hash slot on a cluster; ops.py builds the steps).
The meter reads its configuration (tracked windows, grants) from the SQL
catalog through the snapshot its plan was made from, and its events reach
the SQL ledger through the mover; ``rebuild`` restores Redis from that ledger after
Redis loses its data. docs/redis.md states what each failure loses.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.alerts import AlertEvent, alert_events, has_thresholds, refusal_events
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
    admitted,
    blocks,
    capacity_refuses,
    decide,
)
from tokenquota.domain.errors import (
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    StoreUnreachable,
)
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
)
from tokenquota.domain.ledger import Event, usage_event
from tokenquota.domain.limits import EffectiveLimit, LimitKey
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.base import Page, RebuildProgress, StaleConfig
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.redis.answers import (
    committed_answer,
    first_answer,
    plan_json,
)
from tokenquota.storage.redis.counters import RedisCounters
from tokenquota.storage.redis.grants import RedisGrants, in_burn_order
from tokenquota.storage.redis.holds import RedisHolds
from tokenquota.storage.redis.keyspace import Keyspace, call
from tokenquota.storage.redis.layout import Reply, Step
from tokenquota.storage.redis.ops import Runner, back_off, refuse_too_large
from tokenquota.storage.redis.shapes import Op
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlLedger
from tokenquota.storage.sql.outbox import Recorded, alert_row
from tokenquota.storage.sql.shadow import ShadowHits
from tokenquota.storage.sql.tx import Database
from tokenquota.wire import stored

T = TypeVar("T")
# A capacity test (contract §6) is checked by comparing what it read with
# what the script finds; a busy resource may need a few rounds.
MAX_ROUNDS = 50
# _context's answers kept before they are looked up again: one per charged chain
# a replica serves, at the current configuration version.
CONTEXTS_KEPT = 10_000


def _thresholds(limits: Sequence[EffectiveLimit]) -> bool:
    """``has_thresholds`` of a placed plan, from its placement's limits."""
    for limit in limits:  # noqa: SIM110 - any() over a generator allocates one per call
        if limit.thresholds:
            return True
    return False


class RedisMeter:
    """The debit path, with holds (holds.py) and prepaid credits (grants.py) beside it.

    Reserve and acquire are admitted here like a consume, then write what
    ``RedisHolds`` says a hold writes; the rest of the hold and grant calls
    are forwarded.
    """

    def __init__(
        self,
        db: Database,
        catalog: SqlCatalog,
        ledger: SqlLedger,
        counters: RedisCounters,
        keyspace: Keyspace,
        ops: Runner,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.ledger = ledger
        self.counters = counters
        self.mover = counters.mover
        self.keyspace = keyspace
        self.snapshot = catalog.snapshot
        self.ops = ops
        self.redis = ops.redis
        self.layout = ops.layout
        self.shadow = ShadowHits(db)
        self.holds = RedisHolds(ops)
        self.credits = RedisGrants(db, catalog, ledger, ops)
        self.alerted = Recorded()
        # _context's answers by (configuration version, id of the charged tuple)
        self._contexts: dict[
            tuple[str | None, int],
            tuple[tuple[SubjectRef, ...], SubjectRef, Tracking, dict[SubjectRef, Any]],
        ] = {}

    @property
    def tz(self) -> ZoneInfo:
        return self.db.tz

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        return self.shadow.of(ref)

    # what SQL says about a request ---------------------------------------------
    def _context(
        self, plan: DebitPlan, create_subject: bool
    ) -> tuple[Tracking, dict[SubjectRef, list[Grant]]]:
        """The tracked counters and the charged subjects' grants; creates the subject.

        All of it comes from the snapshot at the plan's version: the ledger
        step checks that version, so none of it can be stale where it counts.
        """
        version = plan.config_version
        view = self.snapshot.at(version)
        if view is None and version is not None:
            raise StaleConfig  # the snapshot moved on since the plan: so did Redis's token
        ref, charged = plan.subject, plan.charged
        # What the view gave for these subjects at this version, kept by the identity
        # of the charged tuple (the planner's, shared by the plans of a subject): the
        # same three lookups otherwise cost a str() of every subject each request.
        # A version is never current again once it moved, so an entry of an old one
        # is never used; a known subject is never unknown at its version.
        mkey = (version, id(charged))
        found = self._contexts.get(mkey) if view is not None else None
        if found is not None and found[0] is charged and (found[1] is ref or found[1] == ref):
            kept = found[3]  # (a SubjectRef's == is a dataclass's, in Python: "is" first)
            return found[2], {s: list(g) for s, g in kept.items()} if kept else {}

        def cached(
            key: tuple[str, ...], read: Callable[[Connection], T], keep: Callable[[T], bool] | None
        ) -> T:
            def load() -> tuple[str, T]:
                return self.catalog.version.versioned(read)

            return load()[1] if view is None else view.cached(key, load, keep=keep)

        # A subject created by a first consume moves no version: only "known" is kept.
        if not cached(("known", str(ref)), lambda c: self.catalog.subject_in(c, ref), bool):
            if not create_subject:
                raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
            with self.db.tx(hot=True) as conn:  # an insert of a bare subject decides nothing
                self.catalog.ensure_subject(conn, plan.subject, plan.now)
        tracked = cached(("tracked",), self.catalog.tracked, None)
        grants = cached(
            ("grants", *map(str, charged)),
            lambda c: in_burn_order(self.ledger.grants_of(c, charged)),
            None,
        )
        if view is not None and view.version == version:  # every read was at the version
            if len(self._contexts) >= CONTEXTS_KEPT:
                self._contexts.clear()
            self._contexts[mkey] = (charged, ref, tracked, grants)
        # The snapshot's own set: the counting shapes of ops.py are keyed by it.
        return tracked, {s: list(g) for s, g in grants.items()}

    def _guards(self, plan: DebitPlan) -> list[Reading] | None:
        """The capacity reads as they are now: the decision is made on these."""
        if plan.capacity is None:
            return None
        return self.read(plan.capacity.reads, plan.now)

    # counting ------------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        op = self.ops.op()
        self.ops.add_checks(op, checks, enforce=False)
        if not op.steps.ordered():
            return [Reading() for _ in checks]
        return self.ops.answers(op, self.ops.execute(op, now, dry=True))[0]

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        return self.credits.prepaid(subjects, now)

    def grants(self, subject: SubjectRef) -> list[Grant]:
        return self.credits.grants(subject)

    def _decide_and_apply(
        self,
        plan: DebitPlan,
        create_subject: bool,
        ledger: tuple[int, str],
        effects: Any,
        *,
        idem: dict[str, str] | None = None,
    ) -> tuple[Decision, Reply | None]:
        """The shared path of debit, reserve and acquire.

        ``effects(op, step)`` adds what an admitted request writes; ``step``
        is the ledger step. Returns the decision and the ledger step's reply
        (None when refused).
        """
        tracked, grants = self._context(plan, create_subject)
        enforce = plan.mode is Mode.ENFORCE
        # A per-request cap (input_sequence_length) refuses whatever the counters say.
        # A placed plan's caps are its placement's limits without a bucket: most have none.
        placement = plan.placement
        capped = (
            enforce
            and (placement is None or None in placement.buckets)
            and any(
                c.is_cap
                and c.limit.key.metric is not Metric.CONCURRENT_REQUESTS
                and not c.limit.shadow
                and blocks(c, Reading())
                for c in plan.checks
            )
        )
        # A plain loop: nothing when none has any. A placed plan's limits are its
        # placement's: its checks are not built for this (nor, warm, for anything).
        alerting = (
            has_thresholds(plan.checks) if placement is None else _thresholds(placement.limits)
        )
        for attempt in range(MAX_ROUNDS):
            if attempt:
                back_off(attempt)
            guards = self._guards(plan)
            refuse = capped or (guards is not None and capacity_refuses(plan, guards))
            wallets = {s: g for s, g in grants.items() if s in plan.charged}
            op, step = self.ops.begin(plan, tracked, ledger, wallets, guards=guards)
            effects(op, step)
            if alerting:
                self.ops.add_alerts(op, step, ledger[0], plan)
            if idem is not None:
                step.spec["idem"] = {
                    "k": step.key(idem["key"]),
                    "fp": idem["fp"],
                    "p": plan_json(plan, *self.ops.places(op)),
                }
            since = self.snapshot.monotonic()
            replies = self.ops.execute(op, plan.now, dry=refuse)
            last = replies[-1]
            statuses = {r.status for r in replies}
            if "lost" in statuses:
                raise StoreUnreachable(
                    "Redis has lost tokenquota's data; run `tokenquota rebuild` to restore it "
                    "from the ledger"
                )
            if "stale" in statuses:
                raise StaleConfig
            self.snapshot.confirm(plan.config_version, since)  # the ledger step checked it
            if "replay" in statuses:
                return self._replayed(plan, next(r for r in replies if r.status == "replay")), None
            refuse_too_large(replies)
            if "conflict" in statuses:
                continue
            ok = statuses == {"ok"} and not refuse
            if ok and placement is not None and not op.wallets:
                # The warm path (a placed plan: calendar and total windows, caps; no
                # capacity), as the memory and SQL meters take it: one number per check
                # from the reply, no Reading; ``used`` is None when a hold is live.
                used = self.ops.used(op, replies)
                if used is not None:
                    decision = admitted(plan, used, last.event_id)
                    if decision is not None:  # no shadow block either: no alert to add
                        return decision, last
            readings, prepaid = self.ops.answers(op, replies)
            decision = decide(plan, readings, last.event_id if ok else None, prepaid=prepaid)
            if decision.allowed != ok:  # the script and decide() share one rule
                raise AssertionError(f"Redis said {statuses}, decide() said {decision.allowed}")
            # Threshold crossings went with the step; a refusal or a shadow block
            # changed nothing, so its alert needs no step of its own.
            refusals = refusal_events(plan, readings, decision)
            if refusals:
                self._alerts_after(ledger[0], self.alerted.fresh(refusals))
            if decision.shadow_blocked:
                with self.db.tx(hot=True) as conn:  # a statistic: decides nothing
                    self.shadow.count(conn, decision)
            return decision, last if ok else None
        raise StoreUnavailable("the resource is too busy to measure its capacity; retry")

    def _alerts_after(self, shard: int, events: Sequence[AlertEvent]) -> None:
        """Alert events decided outside a step, onto the shard's alert stream, which the
        mover takes to SQL with the rest: the hot path never waits for SQL."""
        if not events:
            return
        stream = self.layout.alerts(shard)
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            body = json.dumps(alert_row(event), separators=(",", ":"))
            pipe.xadd(stream, {"a": body, "u": "", "r": ""})
        call(pipe.execute)

    def _replayed(self, plan: DebitPlan, reply: Reply) -> Decision:
        """A retry of an idempotent request gets the first answer."""
        if reply.extra not in (plan.fingerprint, ""):  # "" after a rebuild: not known
            raise IdempotencyConflict(
                "this idempotency key was used for a different request",
                details={"field": "idempotency_key"},
            )
        if reply.decision:  # stored by a version that wrote the answer after the script
            return stored.decode_decision(json.loads(reply.decision)).as_replay()
        if reply.plan:
            steps = [tuple(s) for s in json.loads(reply.pre or "[]")]
            steps.append((reply.readings, reply.wallets))
            return first_answer(reply.plan, steps, reply.event_id).as_replay()
        return self._from_ledger(reply.event_id)

    def _from_ledger(self, event_id: int) -> Decision:
        """The admission an event in the ledger records, when nothing else is left of
        its answer (Redis rebuilt from the ledger): admitted, the same event, subject,
        mode, amounts and timestamp, and no limits, since the ledger keeps none of the
        figures the first answer showed. Deciding again against today's counters
        could refuse a request that was charged."""
        self.mover.flush()
        with self.db.tx() as conn:
            event = self.ledger.get(conn, event_id)
        if event is None:
            raise StoreUnavailable(
                f"the ledger has no event {event_id} for this idempotency key; retry shortly"
            )
        return Decision(
            allowed=True,
            subject=str(event.subject),
            mode=event.mode,
            amounts=event.amounts.to_numbers(),
            timestamp=event.timestamp,
            limits=(),
            event_id=event_id,
            replayed=True,
        )

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        subject = str(plan.subject)
        idem = None
        if plan.idempotency_key:
            shard, key = self.layout.idem(subject, plan.idempotency_key)
            idem = {"key": key, "fp": plan.fingerprint}
        else:
            shard = random.randrange(self.layout.shards)
            key = self.layout.stream(shard)

        def effects(op: Op, step: Step) -> None:
            self.ops.add_usage(step, shard, plan)

        return self._decide_and_apply(plan, create_subject, (shard, key), effects, idem=idem)[0]

    # reservations and leases (holds.py); a commit records usage, so it is here -----
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        ledger, effects = self.holds.hold(reservation)
        return self._decide_and_apply(plan, create_subject, ledger, effects)[0]

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        return self.holds.get_reservation(reservation_id)

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        shard, key = self.layout.record("r", reservation_id)
        for _ in range(MAX_ROUNDS):
            reservation = self.holds.get_reservation(reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.state is HoldState.COMMITTED:
                return self._committed(reservation_id, plan)
            tracked, grants = self._context(plan, True)
            op = self.ops.op()
            # The record step goes first on a cluster: only one commit may pass it.
            step = self.ops.ledger_step(op, shard, key, version=plan.config_version)
            step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
            step.spec["record"] = {
                "k": step.key(key),
                "fields": ["state", HoldState.COMMITTED.value],
            }
            self.ops.add_event(step, shard, event_row(usage_event(plan, reservation_id)))
            self.holds.unhold(op, reservation)
            self.ops.add_checks(op, plan.reads, enforce=False)
            credits = plan.amounts[Metric.CREDITS]
            self.ops.add_wallets(
                op,
                {s: g for s, g in grants.items() if s in plan.charged},
                amount=credits,
                enforce=False,
                burn=credits,
            )
            self.ops.add_increments(op, plan, tracked)
            one_step = len(op.steps.ordered()) == 1
            if one_step:  # one atomic step: its answer's inputs go in it
                step.spec["record"]["p"] = plan_json(plan, *self.ops.places(op))
            alerting = has_thresholds(plan.checks)
            if alerting and one_step:
                self.ops.add_alerts(op, step, shard, plan)
            since = self.snapshot.monotonic()
            replies = self.ops.execute_ledger_first(op, plan.now)
            if replies[-1].status == "lost":
                raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
            if replies[-1].status == "stale":
                raise StaleConfig
            self.snapshot.confirm(plan.config_version, since)
            if replies[-1].status == "state":
                continue  # released, expired or committed meanwhile: look again
            refuse_too_large(replies)
            readings, prepaid = self.ops.answers(op, replies)
            decision = decide(plan, readings, replies[-1].event_id, prepaid=prepaid)
            if alerting and not one_step:
                # A cluster commits the record step first and reads the counters after:
                # their crossings are known only now (docs/alerts.md says what that risks).
                self._alerts_after(shard, alert_events(plan, readings, decision))
            wire = json.dumps(stored.encode_decision(decision))
            call(lambda w=wire: self.redis.hset(key, "d", w))
            return decision
        raise StoreUnavailable("the reservation kept changing; retry")

    def _committed(self, reservation_id: str, plan: DebitPlan) -> Decision:
        row = self.holds.record("r", reservation_id) or {}
        answer = committed_answer(row)
        if answer is not None:
            return answer.as_replay()
        return self._from_ledger(int(row.get("eid") or 0))

    def release(self, reservation_id: str, now: datetime) -> bool:
        return self.holds.release(reservation_id, now)

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        ledger, effects = self.holds.lease(lease)
        return self._decide_and_apply(plan, create_subject, ledger, effects)[0]

    def get_lease(self, lease_id: str) -> Lease | None:
        return self.holds.get_lease(lease_id)

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        return self.holds.release_lease(lease_id, now)

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        return self.holds.extend_lease(lease_id, expires_at, now)

    # prepaid credits (grants.py) ---------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        return self.credits.add_grant(grant, actor=actor)

    # the ledger ----------------------------------------------------------------
    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        self.mover.flush()  # read your own writes
        return self.ledger.events(subject=subject, start=start, end=end, offset=offset, limit=limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        self.mover.flush()
        return self.ledger.iter_events(subject=subject, start=start, end=end)

    def rebuild(self, on_progress: RebuildProgress | None = None) -> int:
        with self.db.tx(write=True) as conn:
            return self.rebuild_in(conn, on_progress)

    def rebuild_in(self, conn: Connection, on_progress: RebuildProgress | None = None) -> int:
        """Restore Redis from the ledger: counters, balances, idempotency, sequences.

        Live holds and leases are kept (a lost Redis has none left). Run it
        with the service stopped or idle: a consume during it may be counted
        twice or not at all until the next rebuild.
        """
        self.mover.drain(conn)
        self.counters.clear("c")
        self.counters.clear("g")
        conn.execute(t.counters.delete())  # the SQL meter's, unused beside Redis
        tracked = self.catalog.tracked(conn)
        self.counters.add(self.ledger.replay(conn, tracked, on_progress=on_progress))
        pipe = self.redis.pipeline(transaction=False)
        self.credits.restore(conn, pipe)
        count = self.ledger.count(conn)
        ev = t.events.c
        for row in conn.execute(
            sa.select(ev.id, ev.subject, ev.idempotency_key).where(ev.idempotency_key.is_not(None))
        ):
            _, key = self.layout.idem(row.subject, row.idempotency_key)
            pipe.hsetnx(key, "fp", "")  # the fingerprint is not in the ledger: any retry replays
            pipe.hsetnx(key, "eid", row.id)
        top = conn.execute(sa.select(sa.func.max(ev.id))).scalar() or 0
        for shard in range(self.layout.shards):
            pipe.set(self.layout.seq(shard), top // self.layout.shards + 1, nx=True)
        call(pipe.execute)
        for shard in range(self.layout.shards):  # never reuse an id: only ever raise a sequence
            seq = self.layout.seq(shard)
            floor = top // self.layout.shards + 1
            current = int(call(lambda s=seq: self.redis.get(s)) or 0)
            if current < floor:
                call(lambda s=seq, f=floor: self.redis.set(s, f))
        self.keyspace.set_epoch(conn)
        return count
