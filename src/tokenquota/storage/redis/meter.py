"""The Redis meter: counters, holds, grant balances and idempotency in Redis.

Counters, holds, leases, grant balances, idempotency records and the newest
ledger events live in Redis and change only inside ``step.lua``, one atomic
script per operation (per hash slot on a cluster; ops.py builds the steps).
The meter reads its configuration (tracked windows, grants) from the SQL
catalog through the configuration cache, and its events reach the SQL
ledger through the mover; ``rebuild`` restores Redis from that ledger after
Redis loses its data. docs/redis.md states what each failure loses.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.bounds import grant_too_large
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
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
    check_extendable,
)
from tokenquota.domain.ledger import CounterKey, Event, grant_event, usage_event
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page, StaleConfig
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.redis.answers import (
    committed_answer,
    first_answer,
    lease_fields,
    plan_json,
    reservation_fields,
)
from tokenquota.storage.redis.config import ConfigCache, one_operation
from tokenquota.storage.redis.keyspace import Keyspace, call
from tokenquota.storage.redis.layout import Layout, Reply, Step
from tokenquota.storage.redis.mover import Mover
from tokenquota.storage.redis.ops import Op, Runner, back_off, refuse_too_large
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlLedger
from tokenquota.storage.sql.shadow import ShadowHits
from tokenquota.storage.sql.tx import Database
from tokenquota.wire import stored
from tokenquota.wire.ledger import encode_grant

# A capacity test (SPEC section 6) is checked by comparing what it read with
# what the script finds; a busy resource may need a few rounds.
MAX_ROUNDS = 50
# In a subject's grants hash (grant id -> what is left), the sum of every grant
# it was ever given: what the 63-bit bound is checked on. Grant ids are hex, so
# no grant can take this name.
GRANTED = "+granted"


class RedisCounters:
    """Counters replayed from the SQL ledger (backfill, rebuild), written into Redis."""

    def __init__(
        self, client: Any, cluster: bool, layout: Layout, ledger: SqlLedger, mover: Mover
    ) -> None:
        self.redis = client
        self.cluster = cluster
        self.layout = layout
        self.ledger = ledger
        self.mover = mover

    def add(self, deltas: dict[CounterKey, int]) -> None:
        if not deltas:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (series, metric, window, bucket), value in deltas.items():
            pipe.hincrby(self.layout.counter(series, metric, window), str(bucket), value)
        call(pipe.execute)

    def backfill(self, conn: Connection, keys: set[LimitKey], start: datetime) -> None:
        self.mover.drain(conn)  # the ledger first holds every event Redis counted
        self.add(self.ledger.replay(conn, keys, start))

    def clear(self, what: str) -> None:
        pattern = self.layout.pattern(what)
        batch: list[bytes] = []
        for name in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                self._unlink(batch)
                batch = []
        if batch:
            self._unlink(batch)

    def _unlink(self, names: list[bytes]) -> None:
        if self.cluster:  # one key per call: they may live in different slots
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.unlink(name)
            call(pipe.execute)
        else:
            call(lambda: self.redis.unlink(*names))


class RedisMeter:
    def __init__(
        self,
        db: Database,
        catalog: SqlCatalog,
        ledger: SqlLedger,
        counters: RedisCounters,
        keyspace: Keyspace,
        config: ConfigCache,
        ops: Runner,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.ledger = ledger
        self.counters = counters
        self.mover = counters.mover
        self.keyspace = keyspace
        self.config = config
        self.ops = ops
        self.redis = ops.redis
        self.layout = ops.layout
        self.shadow = ShadowHits(db)

    @property
    def tz(self) -> ZoneInfo:
        return self.db.tz

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        return self.shadow.of(ref)

    # what SQL says about a request ---------------------------------------------
    def _context(
        self, plan: DebitPlan, create_subject: bool
    ) -> tuple[set[LimitKey], dict[SubjectRef, list[Grant]]]:
        """The tracked counters and the charged subjects' grants; creates the subject.

        All of it comes from the configuration cache: the script's version
        check (see ``_cached``) makes sure none of it was stale.
        """
        if not self.config.cached(("known", str(plan.subject)), lambda: self._known(plan.subject)):
            if not create_subject:
                raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
            with self.db.tx(hot=True) as conn:  # an insert of a bare subject decides nothing
                self.catalog.ensure_subject(conn, plan.subject, plan.now)
        tracked = self.config.cached(("tracked",), self._load_tracked)
        grants = self.config.cached(
            ("grants", *map(str, plan.charged)), lambda: self._load_grants(plan)
        )
        return set(tracked), {s: list(g) for s, g in grants.items()}

    def _known(self, ref: SubjectRef) -> bool | None:
        """True, or None (not cached: the subject may be created any moment)."""
        with self.db.tx() as conn:
            return True if self.catalog.subject_in(conn, ref) is not None else None

    def _load_tracked(self) -> frozenset[LimitKey]:
        with self.db.tx() as conn:
            return frozenset(self.catalog.tracked(conn))

    def _load_grants(self, plan: DebitPlan) -> dict[SubjectRef, tuple[Grant, ...]]:
        with self.db.tx() as conn:
            found = self.ledger.grants_of(conn, plan.charged)
        grants: dict[SubjectRef, list[Grant]] = {}
        for grant in found:
            grants.setdefault(grant.subject, []).append(grant)
        return {s: tuple(sorted(g, key=_burn_key)) for s, g in grants.items()}

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
        with self.db.tx() as conn:
            found = self.ledger.grants_of(conn, subjects)
        grants: dict[SubjectRef, list[Grant]] = {}
        for grant in found:
            grants.setdefault(grant.subject, []).append(grant)
        ordered = {s: sorted(grants[s], key=_burn_key) for s in subjects if s in grants}
        if not ordered:
            return []
        op = self.ops.op()
        self.ops.add_wallets(op, ordered, amount=0, enforce=False, burn=0)
        return self.ops.answers(op, self.ops.execute(op, now, dry=True))[1]

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self.db.tx() as conn:
            found = self.ledger.grants_of(conn, [subject])
        stored = sorted(found, key=lambda g: (g.granted_at, g.id))
        if not stored:
            return stored
        key = self.layout.grants(str(subject))
        values = call(lambda: self.redis.hmget(key, [g.id for g in stored]))
        return [
            Grant(g.id, g.subject, g.amount, g.granted_at, g.expires_at, int(v or 0))
            for g, v in zip(stored, values, strict=True)
        ]

    @one_operation
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
        capped = enforce and any(
            c.is_cap
            and c.limit.key.metric is not Metric.CONCURRENT_REQUESTS
            and not c.limit.shadow
            and blocks(c, Reading())
            for c in plan.checks
        )
        credits = plan.amounts[Metric.CREDITS]
        for attempt in range(MAX_ROUNDS):
            if attempt:
                back_off(attempt)
            guards = self._guards(plan)
            refuse = capped or (guards is not None and capacity_refuses(plan, guards))
            op = self.ops.op()
            shard, lkey = ledger
            step = self.ops.ledger_step(op, shard, lkey, config=True)
            self.ops.add_checks(
                op, plan.reads, enforce=enforce, guards=guards, first_guard=len(plan.checks)
            )
            self.ops.add_wallets(
                op,
                {s: g for s, g in grants.items() if s in plan.charged},
                amount=credits,
                enforce=enforce,
                burn=0 if plan.hold else credits,
            )
            if not plan.hold:
                self.ops.add_increments(op, plan, tracked)
            effects(op, step)
            if idem is not None:
                step.spec["idem"] = {
                    "k": step.key(idem["key"]),
                    "fp": idem["fp"],
                    "p": plan_json(plan, *self.ops.places(op)),
                }
            replies = self.ops.execute(op, plan.now, dry=refuse)
            last = replies[-1]
            statuses = {r.status for r in replies}
            if "lost" in statuses:
                raise StoreUnreachable(
                    "Redis has lost tokenquota's data; run `tokenquota rebuild` to restore it "
                    "from the ledger"
                )
            if "stale" in statuses:
                self.config.invalidate()
                raise StaleConfig
            if "replay" in statuses:
                return self._replayed(plan, next(r for r in replies if r.status == "replay")), None
            refuse_too_large(replies)
            if "conflict" in statuses:
                continue
            readings, prepaid = self.ops.answers(op, replies)
            admitted = statuses == {"ok"} and not refuse
            decision = decide(plan, readings, last.event_id if admitted else None, prepaid=prepaid)
            if decision.allowed != admitted:  # the script and decide() share one rule
                raise AssertionError(f"Redis said {statuses}, decide() said {decision.allowed}")
            if decision.shadow_blocked:
                with self.db.tx(hot=True) as conn:  # a statistic: decides nothing
                    self.shadow.count(conn, decision)
            return decision, last if admitted else None
        raise StoreUnavailable("the resource is too busy to measure its capacity; retry")

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
            self.ops.add_event(step, shard, event_row(usage_event(plan)))

        return self._decide_and_apply(plan, create_subject, (shard, key), effects, idem=idem)[0]

    # reservations and leases ----------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        shard, key = self.layout.record("r", reservation.id)
        expires = str(to_micros(reservation.expires_at))

        def effects(op: Op, step: Step) -> None:
            for series in reservation.series:
                for metric, units in reservation.amounts.items():
                    hz, ha = self.layout.holds(series, metric.value)
                    at = op.steps.at(hz)
                    at.add("hold", [at.key(hz), at.key(ha), reservation.id, expires, str(units)])
            step.spec["record"] = {"k": step.key(key), "fields": reservation_fields(reservation)}

        return self._decide_and_apply(plan, create_subject, (shard, key), effects)[0]

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        _, key = self.layout.record("r", reservation_id)
        raw = call(lambda: self.redis.hgetall(key))
        if not raw:
            return None
        row = {k.decode(): v.decode() for k, v in raw.items()}
        return Reservation(
            id=reservation_id,
            subject=SubjectRef.parse(row["subject"]),
            charged=tuple(SubjectRef.parse(s) for s in json.loads(row["charged"])),
            amounts=Amounts.from_units_json(json.loads(row["amounts"])),
            created_at=from_micros(int(row["created_at"])),
            expires_at=from_micros(int(row["expires_at"])),
            state=HoldState(row["state"]),
            committed=committed_answer(row),
            resource=SubjectRef.parse(row["resource"]) if row.get("resource") else None,
        )

    @one_operation
    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        shard, key = self.layout.record("r", reservation_id)
        for _ in range(MAX_ROUNDS):
            reservation = self.get_reservation(reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.state is HoldState.COMMITTED:
                return self._committed(reservation_id, plan)
            tracked, grants = self._context(plan, True)
            op = self.ops.op()
            # The record step goes first on a cluster: only one commit may pass it.
            step = self.ops.ledger_step(op, shard, key, config=True)
            step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
            step.spec["record"] = {
                "k": step.key(key),
                "fields": ["state", HoldState.COMMITTED.value],
            }
            self.ops.add_event(step, shard, event_row(usage_event(plan, reservation_id)))
            for series in reservation.series:
                for metric in reservation.amounts:
                    hz, ha = self.layout.holds(series, metric.value)
                    at = op.steps.at(hz)
                    at.add("unhold", [at.key(hz), at.key(ha), reservation_id])
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
            if len(op.steps.ordered()) == 1:  # one atomic step: its answer's inputs go in it
                step.spec["record"]["p"] = plan_json(plan, *self.ops.places(op))
            replies = self.ops.execute_ledger_first(op, plan.now)
            if replies[-1].status == "lost":
                raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
            if replies[-1].status == "stale":
                self.config.invalidate()
                raise StaleConfig
            if replies[-1].status == "state":
                continue  # released, expired or committed meanwhile: look again
            refuse_too_large(replies)
            readings, prepaid = self.ops.answers(op, replies)
            decision = decide(plan, readings, replies[-1].event_id, prepaid=prepaid)
            wire = json.dumps(stored.encode_decision(decision))
            call(lambda w=wire: self.redis.hset(key, "d", w))
            return decision
        raise StoreUnavailable("the reservation kept changing; retry")

    def _committed(self, reservation_id: str, plan: DebitPlan) -> Decision:
        _, key = self.layout.record("r", reservation_id)
        raw = call(lambda: self.redis.hgetall(key))
        row = {k.decode(): v.decode() for k, v in raw.items()}
        answer = committed_answer(row)
        if answer is not None:
            return answer.as_replay()
        return self._from_ledger(int(row.get("eid") or 0))

    def release(self, reservation_id: str, now: datetime) -> bool:
        reservation = self.get_reservation(reservation_id)
        if reservation is None:
            raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
        if reservation.state is not HoldState.HELD:
            return False
        shard, key = self.layout.record("r", reservation_id)
        op = self.ops.op()
        step = self.ops.ledger_step(op, shard, key)
        step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
        step.spec["record"] = {"k": step.key(key), "fields": ["state", HoldState.RELEASED.value]}
        for series in reservation.series:
            for metric in reservation.amounts:
                hz, ha = self.layout.holds(series, metric.value)
                at = op.steps.at(hz)
                at.add("unhold", [at.key(hz), at.key(ha), reservation_id])
        replies = self.ops.execute_ledger_first(op, now)
        return replies[-1].status == "ok"

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        shard, key = self.layout.record("l", lease.id)
        expires = str(to_micros(lease.expires_at))

        def effects(op: Op, step: Step) -> None:
            for series in lease.series:
                z = self.layout.leases(series)
                at = op.steps.at(z)
                at.add("lease", [at.key(z), lease.id, expires])
            step.spec["record"] = {"k": step.key(key), "fields": lease_fields(lease)}

        return self._decide_and_apply(plan, create_subject, (shard, key), effects)[0]

    def get_lease(self, lease_id: str) -> Lease | None:
        _, key = self.layout.record("l", lease_id)
        raw = call(lambda: self.redis.hgetall(key))
        if not raw:
            return None
        row = {k.decode(): v.decode() for k, v in raw.items()}
        return Lease(
            id=lease_id,
            subject=SubjectRef.parse(row["subject"]),
            charged=tuple(SubjectRef.parse(s) for s in json.loads(row["charged"])),
            created_at=from_micros(int(row["created_at"])),
            expires_at=from_micros(int(row["expires_at"])),
            released_at=from_micros(int(row["released_at"])) if row.get("released_at") else None,
            resource=SubjectRef.parse(row["resource"]) if row.get("resource") else None,
        )

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        lease = self.get_lease(lease_id)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
        if lease.released_at is not None:
            return False
        return self._lease_step(lease, now, released=True)

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        lease = self.get_lease(lease_id)
        check_extendable(lease, lease_id, now)
        assert lease is not None
        self._lease_step(lease, now, expires_at=expires_at)
        extended = self.get_lease(lease_id)
        assert extended is not None
        return extended

    def _lease_step(
        self,
        lease: Lease,
        now: datetime,
        *,
        released: bool = False,
        expires_at: datetime | None = None,
    ) -> bool:
        shard, key = self.layout.record("l", lease.id)
        op = self.ops.op()
        step = self.ops.ledger_step(op, shard, key)
        step.spec["state"] = {"k": step.key(key), "want": "live"}
        for series in lease.series:
            z = self.layout.leases(series)
            at = op.steps.at(z)
            if released:
                at.add("unlease", [at.key(z), lease.id])
            else:
                assert expires_at is not None
                at.add("extend", [at.key(z), lease.id, str(to_micros(expires_at))])
        fields = (
            ["state", "released", "released_at", str(to_micros(now))]
            if released
            else ["expires_at", str(to_micros(expires_at))]
            if expires_at
            else []
        )
        step.spec["record"] = {"k": step.key(key), "fields": fields}
        replies = self.ops.execute_ledger_first(op, now)
        return replies[-1].status == "ok"

    # prepaid credits ------------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        """The balance and the grant's event first (in Redis, at once), then the SQL row."""
        shard = random.randrange(self.layout.shards)
        op = self.ops.op()
        step = self.ops.ledger_step(op, shard, self.layout.stream(shard))
        gkey = self.layout.grants(str(grant.subject))
        at = op.steps.at(gkey)
        at.add("cap", [at.key(gkey), GRANTED, str(grant.amount), "credits"])
        at.add("incr", [at.key(gkey), grant.id, str(grant.amount)])
        at.add("incr", [at.key(gkey), GRANTED, str(grant.amount)])
        body = event_row(grant_event(grant))
        self.ops.add_event(step, shard, body)
        replies = self.ops.execute(op, grant.granted_at)
        if replies[-1].status == "lost":
            raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
        if any(r.status == "too_large" for r in replies):
            raise grant_too_large(str(grant.subject))
        with self.db.tx(write=True) as conn:
            self.catalog.ensure_subject(conn, grant.subject, grant.granted_at)
            self.ledger.insert_grant(conn, grant)
            self.catalog.write_audit(
                conn,
                grant.granted_at,
                actor,
                "grant.add",
                str(grant.subject),
                None,
                encode_grant(grant, grant.granted_at),
            )
        return replies[-1].event_id

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

    def rebuild(self) -> int:
        with self.db.tx(write=True) as conn:
            return self.rebuild_in(conn)

    def rebuild_in(self, conn: Connection) -> int:
        """Restore Redis from the ledger: counters, balances, idempotency, sequences.

        Live holds and leases are kept (a lost Redis has none left). Run it
        with the service stopped or idle: a consume during it may be counted
        twice or not at all until the next rebuild.
        """
        self.mover.drain(conn)
        self.counters.clear("c")
        self.counters.clear("g")
        conn.execute(t.counters.delete())  # the SQL meter's, unused beside Redis
        self.counters.add(self.ledger.replay(conn, self.catalog.tracked(conn)))
        self.ledger.restore_grants(conn)
        count = self.ledger.count(conn)
        pipe = self.redis.pipeline(transaction=False)
        for row in conn.execute(sa.select(t.grants.c.id, t.grants.c.subject, t.grants.c.remaining)):
            pipe.hset(self.layout.grants(row.subject), row.id, row.remaining)
        total = sa.func.sum(t.grants.c.amount)
        for subject, granted in conn.execute(
            sa.select(t.grants.c.subject, total).group_by(t.grants.c.subject)
        ):
            pipe.hset(self.layout.grants(subject), GRANTED, int(granted))
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


def _burn_key(g: Grant) -> tuple[bool, datetime, datetime, str]:
    """Spending order: earliest expiry first (see domain.grants.burn_order)."""
    return (g.expires_at is None, g.expires_at or g.granted_at, g.granted_at, g.id)
