"""Reservations and leases in Redis: holds that lapse by themselves at expires_at.

A hold is a record hash (what was reserved or leased, its state) and an
entry in a sorted set per series that reads count as held. Taking a hold is
decided like a consume, so the meter admits it and this module only says
what an admitted hold writes (``hold``, ``lease``); reading, releasing and
extending a hold need no decision and are done here. Committing a
reservation records usage, so it is the meter's (it uses ``unhold``).

Each ledger shard also keeps an index of its live holds, for the metrics'
holds in flight: a sorted set per kind (``{L<n>}:live-r``, ``{L<n>}:live-l``)
of record ids scored by expiry, in the record's own hash slot, so the step
that writes a record lists or drops its id in the same atomic step
(``spec.live`` in step.lua). ``ZCOUNT`` from now counts the live ones without
a scan; entries that lapsed are not counted, and pruning trims them
(prune.py). Holds taken before the index existed are not in it: they are
missed by the count until they lapse (a day at most).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_extendable,
    check_lease_releasable,
    check_releasable,
)
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.inflight import CAP, InFlight
from tokenquota.storage.redis.answers import committed_answer, lease_fields, reservation_fields
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout, Step
from tokenquota.storage.redis.ops import Runner
from tokenquota.storage.redis.shapes import Op

# What an admitted request adds to its operation: ``effects(op, ledger_step)``.
Effects = Callable[[Op, Step], None]
# Where an operation's ledger step goes: (shard, the key it is routed by).
LedgerKey = tuple[int, str]


def live_key(layout: Layout, shard: int, kind: str) -> str:
    """The shard's index of live reservations (``kind`` ``r``) or leases (``l``)."""
    return layout.ledger(shard, f"live-{kind}")


def _list(layout: Layout, step: Step, kind: str, record_id: str, expires: str | None) -> None:
    """In the record's step: list the hold in its shard's index until ``expires`` (None:
    drop it). One entry per step: a step writes one record."""
    shard = layout.shard_of(record_id)
    entry = [step.key(live_key(layout, shard, kind)), record_id]
    step.spec["live"] = entry if expires is None else [*entry, expires]


class RedisInFlight:
    """Holds in flight (storage/inflight.py): a ``ZCOUNT`` per shard and kind, one round trip."""

    def __init__(self, client: Any, layout: Layout) -> None:
        self.redis = client
        self.layout = layout

    def in_flight(self, now: datetime) -> InFlight:
        since = f"({to_micros(now)}"  # expiring after now: live
        pipe = self.redis.pipeline(transaction=False)  # one key per command: any slot
        for kind in ("r", "l"):
            for shard in range(self.layout.shards):
                pipe.zcount(live_key(self.layout, shard, kind), since, "+inf")
        counts = [int(n) for n in call(pipe.execute)]
        shards = self.layout.shards
        return InFlight(min(sum(counts[:shards]), CAP), min(sum(counts[shards:]), CAP))


class RedisHolds:
    def __init__(self, ops: Runner) -> None:
        self.ops = ops
        self.redis = ops.redis
        self.layout = ops.layout

    def record(self, kind: str, record_id: str) -> dict[str, str] | None:
        """A reservation's (``r``) or lease's (``l``) record hash, decoded; None when absent."""
        _, key = self.layout.record(kind, record_id)
        raw = call(lambda: self.redis.hgetall(key))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    # reservations ---------------------------------------------------------------
    def hold(self, reservation: Reservation) -> tuple[LedgerKey, Effects]:
        """What an admitted reservation writes: its holds and its record."""
        shard, key = self.layout.record("r", reservation.id)
        expires = str(to_micros(reservation.expires_at))

        def effects(op: Op, step: Step) -> None:
            for series in reservation.series:
                for metric, units in reservation.amounts.items():
                    hz, ha = self.layout.holds(series, metric.value)
                    at = op.steps.at(hz)
                    at.add("hold", [at.key(hz), at.key(ha), reservation.id, expires, str(units)])
            step.spec["record"] = {"k": step.key(key), "fields": reservation_fields(reservation)}
            _list(self.layout, step, "r", reservation.id, expires)

        return (shard, key), effects

    def unhold(self, op: Op, reservation: Reservation) -> None:
        """Drop the reservation's holds (a release, or a commit that records it), and its
        entry in the index of live holds, in the step of its record (the ledger step)."""
        for series in reservation.series:
            for metric in reservation.amounts:
                hz, ha = self.layout.holds(series, metric.value)
                at = op.steps.at(hz)
                at.add("unhold", [at.key(hz), at.key(ha), reservation.id])
        _, key = self.layout.record("r", reservation.id)
        _list(self.layout, op.steps.at(key), "r", reservation.id, None)

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        row = self.record("r", reservation_id)
        if row is None:
            return None
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

    def release(self, reservation_id: str, now: datetime) -> bool:
        reservation = self.get_reservation(reservation_id)
        if not check_releasable(reservation, reservation_id):
            return False
        shard, key = self.layout.record("r", reservation_id)
        op = self.ops.op()
        step = self.ops.ledger_step(op, shard, key)
        step.spec["state"] = {"k": step.key(key), "want": HoldState.HELD.value}
        step.spec["record"] = {"k": step.key(key), "fields": ["state", HoldState.RELEASED.value]}
        self.unhold(op, reservation)
        replies = self.ops.execute_ledger_first(op, now)
        return replies[-1].status == "ok"

    # leases ---------------------------------------------------------------------
    def lease(self, lease: Lease) -> tuple[LedgerKey, Effects]:
        """What an admitted lease writes: its place in each series' leases and its record."""
        shard, key = self.layout.record("l", lease.id)
        expires = str(to_micros(lease.expires_at))

        def effects(op: Op, step: Step) -> None:
            for series in lease.series:
                z = self.layout.leases(series)
                at = op.steps.at(z)
                at.add("lease", [at.key(z), lease.id, expires])
            step.spec["record"] = {"k": step.key(key), "fields": lease_fields(lease)}
            _list(self.layout, step, "l", lease.id, expires)

        return (shard, key), effects

    def get_lease(self, lease_id: str) -> Lease | None:
        row = self.record("l", lease_id)
        if row is None:
            return None
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
        if not check_lease_releasable(lease, lease_id):
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
        _list(
            self.layout,
            step,
            "l",
            lease.id,
            None if released or expires_at is None else str(to_micros(expires_at)),
        )
        replies = self.ops.execute_ledger_first(op, now)
        return replies[-1].status == "ok"
