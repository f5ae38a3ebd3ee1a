"""Counters in Redis written from the SQL ledger: a backfill, a rebuild, a clean-up.

The catalog calls ``backfill`` when it starts counting a new (metric,
window) pair, and the meter's rebuild clears and refills every counter; both
replay the ledger, so the mover is drained into it first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tokenquota.domain.ledger import CounterKey
from tokenquota.domain.limits import LimitKey
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import COUNTER_LAYOUT, Layout
from tokenquota.storage.redis.mover import Mover
from tokenquota.storage.sql.ledger import SqlLedger

# One layout-1 counter into its series' hash, atomically (both keys share the
# series' hash tag): a key another opener moved first is gone, so nothing is
# counted twice.
MOVE_LUA = """
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[1] .. all[i], all[i + 1])
end
redis.call('DEL', KEYS[1])
return #all / 2
"""


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
            pipe.hincrby(
                self.layout.counter(series), self.layout.bucket(metric, window, bucket), value
            )
        call(pipe.execute)

    def upgrade(self) -> int:
        """Move counters kept in layout 1 (a hash per series, metric and window) into
        layout 2 (one hash per series); returns how many keys moved.

        Run at every start until the keyspace says layout 2; the counts are
        read as they are, so nothing is lost and nothing needs a rebuild. A
        replica still running layout-1 code would write where this code no
        longer reads: upgrade every replica of a deployment together.
        """
        marker = self.layout.counter_layout()
        if call(lambda: self.redis.get(marker)) == COUNTER_LAYOUT.encode():
            return 0
        move = self.redis.register_script(MOVE_LUA)
        moved = 0
        for raw in self.redis.scan_iter(match=self.layout.pattern("c"), count=1000):
            name = raw.decode()
            target = self.layout.old_counter(name)
            if target is not None:
                call(lambda n=name, t=target: move(keys=[n, t[0]], args=[t[1]]))
                moved += 1
        self.mark()
        return moved

    def mark(self) -> None:
        """The keyspace holds layout-2 counters only (after an upgrade or a rebuild)."""
        call(lambda: self.redis.set(self.layout.counter_layout(), COUNTER_LAYOUT))

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
