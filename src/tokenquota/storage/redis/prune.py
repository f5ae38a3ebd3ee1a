"""Pruning a Redis (or Redis Cluster) meter: old buckets, answers, holds and records.

Keys are found with SCAN over the store's prefix (every node of a cluster),
never KEYS, and each batch is one short command or script, so Redis is never
blocked for longer than one batch:

- counter hashes (``c:``): the bucket fields older than the window's first
  kept bucket, HDEL'd at most ``batch`` fields at a time;
- idempotency answers (``i:``): an answer carries the id of the event it
  charged (``eid``); its age is when the SQL ledger recorded that event (the
  mover copies it there). An answer whose event is not in the ledger yet is
  recent, and kept;
- reservation and lease records (``r:``, ``l:``): gone once they expired
  before the holds cutoff (a settled hold settled before its expiry);
- hold and lease sets (``hz:``/``ha:``, ``lz:``): entries that expired before
  the cutoff, removed by a script per subject, so the pair of a hold's set and
  its amounts hash change together (one hash tag: one slot on a cluster);
- each ledger shard's index of live holds (``live-r``, ``live-l``, holds.py):
  entries that expired before the cutoff (settled holds leave it as they settle).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from tokenquota.domain.clock import to_micros
from tokenquota.domain.ledger import Event
from tokenquota.domain.retention import Cutoffs
from tokenquota.storage.redis.holds import live_key
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.prune import SqlPruner
from tokenquota.storage.sql.tx import Database

_ROLLING = re.compile(r":(rolling:\d+[mhd])$")

# Expired entries of a hold set and their amounts, at most ARGV[2] of them.
_HOLDS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  if KEYS[2] then redis.call('HDEL', KEYS[2], unpack(ids)) end
end
return #ids
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def counter_window(name: str) -> str:
    """The window key at the end of a counter key (``...:c:<series>:<metric>:<window>``)."""
    rolling = _ROLLING.search(name)
    return rolling[1] if rolling else name.rsplit(":", 1)[1]


class RedisPruner:
    def __init__(self, db: Database, client: Any, layout: Layout) -> None:
        self.db = db
        self.redis = client
        self.layout = layout
        self._holds = client.register_script(_HOLDS)

    def archive(
        self, cutoff: datetime, batch: int, sink: Callable[[Sequence[Event]], None]
    ) -> Iterator[int]:
        """The ledger is SQL's (the mover copies Redis's stream there long before the cutoff)."""
        return SqlPruner(self.db).archive(cutoff, batch, sink)

    def prune(self, cutoffs: Cutoffs, batch: int) -> Iterator[tuple[str, int]]:
        for kind in cutoffs.kinds:
            for removed in getattr(self, f"_{kind}")(cutoffs, batch):
                yield kind, removed

    def _scan(self, what: str, batch: int) -> Iterator[list[str]]:
        """The store's keys of one kind, ``batch`` names at a time."""
        names: list[str] = []
        for name in self.redis.scan_iter(match=self.layout.pattern(what), count=batch):
            names.append(_text(name))
            if len(names) >= batch:
                yield names
                names = []
        if names:
            yield names

    def _counters(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        for names in self._scan("c", batch):
            for name in names:
                first = cutoffs.counters.get(counter_window(name))
                if first is None:
                    continue
                old: list[str] = []
                # Values come along: HSCAN's NOVALUES needs Redis 7.4.
                for field, _ in self.redis.hscan_iter(name, count=batch):
                    if int(_text(field)) < first:
                        old.append(_text(field))
                        if len(old) >= batch:
                            yield call(partial(self.redis.hdel, name, *old))
                            old = []
                if old:
                    yield call(partial(self.redis.hdel, name, *old))

    def _idempotency(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        cut = to_micros(cutoffs.idempotency)
        for names in self._scan("i", batch):
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hget(name, "eid")
            eids = {n: int(_text(e)) for n, e in zip(names, call(pipe.execute), strict=True) if e}
            if not eids:
                continue
            with self.db.tx() as conn:
                recorded = dict(
                    conn.execute(
                        sa.select(t.events.c.id, t.events.c.recorded_at).where(
                            t.events.c.id.in_(set(eids.values()))
                        )
                    ).all()
                )
            old = [n for n, e in eids.items() if recorded.get(e, cut) < cut]
            yield self._unlink(old)

    def _records(self, what: str, cut: int, batch: int) -> Iterator[int]:
        for names in self._scan(what, batch):
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.hget(name, "expires_at")
            ends = call(pipe.execute)
            yield self._unlink(
                [n for n, end in zip(names, ends, strict=True) if end and int(_text(end)) < cut]
            )

    def _sets(self, what: str, cut: int, batch: int) -> Iterator[int]:
        for names in self._scan(what, batch):
            for name in names:
                keys = [name]
                if what == "hz":  # its amounts hash: the same key with ha for hz
                    keys.append(name.replace("}:hz:", "}:ha:", 1))
                yield from self._trim(keys, cut, batch)

    def _trim(self, keys: list[str], cut: int, batch: int) -> Iterator[int]:
        """Entries of one set (and its amounts hash) expired before ``cut``, a batch a call."""
        while True:
            removed = int(call(lambda: self._holds(keys=keys, args=[cut, batch])))
            if removed:
                # A batch done, but no record: entries belong to the records counted
                # below, as SQL's hold rows belong to their reservations.
                yield 0
            if removed < batch:
                break

    def _live(self, kind: str, cut: int, batch: int) -> Iterator[int]:
        """The shards' indexes of live holds: what lapsed before ``cut`` (never counted)."""
        for shard in range(self.layout.shards):
            yield from self._trim([live_key(self.layout, shard, kind)], cut, batch)

    def _reservations(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        cut = to_micros(cutoffs.holds)
        yield from self._sets("hz", cut, batch)
        yield from self._live("r", cut, batch)
        yield from self._records("r", cut, batch)

    def _leases(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        cut = to_micros(cutoffs.holds)
        yield from self._sets("lz", cut, batch)
        yield from self._live("l", cut, batch)
        yield from self._records("l", cut, batch)

    def _unlink(self, names: list[str]) -> int:
        if not names:
            return 0
        pipe = self.redis.pipeline(transaction=False)  # one key per command: any slot
        for name in names:
            pipe.unlink(name)
        return sum(int(n) for n in call(pipe.execute))
