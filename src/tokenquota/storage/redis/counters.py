"""Counters in Redis written from the SQL ledger: a backfill, a rebuild, a clean-up.

The catalog calls ``backfill`` when it starts counting a (metric, window)
pair for a kind of series (domain/tracking.py: only the series that did not
count it are replayed), and the meter's rebuild clears and refills every counter; both
replay the ledger, so the mover is drained into it first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tokenquota.domain.ledger import CounterKey
from tokenquota.domain.tracking import Added
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout
from tokenquota.storage.redis.mover import Mover
from tokenquota.storage.sql.ledger import SqlLedger


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

    def backfill(self, conn: Connection, keys: Added, start: datetime) -> None:
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
