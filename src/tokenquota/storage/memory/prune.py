"""Pruning the memory backend: the reference every other pruner is compared with.

Each batch takes the state's one lock for at most ``batch`` records examined
(series of counters, answers, reservations, leases), so a decision waits at
most one batch (the archive walks the event list, so it holds the lock
longer: memory is the reference, not a production store). Keys are listed
under the lock and re-read under it when their batch runs: what a decision
added in between is judged afresh.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import Metric
from tokenquota.domain.retention import Cutoffs, archivable, carry_key, fold, is_carry
from tokenquota.storage.memory.state import State

K = TypeVar("K")


class MemoryPruner:
    def __init__(self, state: State) -> None:
        self._s = state

    def prune(self, cutoffs: Cutoffs, batch: int) -> Iterator[tuple[str, int]]:
        steps: dict[str, Callable[[Cutoffs, int], Iterator[int]]] = {
            "counters": self._counters,
            "idempotency": self._idempotency,
            "reservations": self._reservations,
            "leases": self._leases,
        }
        for kind in cutoffs.kinds:
            for removed in steps[kind](cutoffs, batch):
                yield kind, removed

    def archive(
        self, cutoff: datetime, batch: int, sink: Callable[[Sequence[Event]], None]
    ) -> Iterator[int]:
        seen = 0  # events are kept in id order; carries keep their place
        while True:
            with self._s.lock:
                events = self._s.events
                chosen: list[Event] = []
                while seen < len(events) and len(chosen) < batch:
                    event = events[seen]
                    seen += 1
                    if event.timestamp < cutoff and archivable(
                        kind_is_usage=event.is_usage,
                        tags=event.tags,
                        credits=event.amounts[Metric.CREDITS],
                        recorded_at=event.recorded_at,
                        cutoff=cutoff,
                    ):
                        chosen.append(event)
                if not chosen:
                    return
                keys = {carry_key(e) for e in chosen}
                carries = {
                    carry_key(e): e for e in events if is_carry(e.tags) and carry_key(e) in keys
                }
                sink(chosen)
                written, deleted = fold(chosen, carries)
                replaced = {e.id: e for e in written}
                gone = set(deleted)
                kept = [replaced.get(e.id, e) for e in events if e.id not in gone]
                seen -= sum(1 for e in events[:seen] if e.id in gone)
                self._s.events[:] = kept
            yield len(chosen)

    def _batches(self, keys: Callable[[], Sequence[K]], batch: int) -> Iterator[Sequence[K]]:
        with self._s.lock:
            listed = list(keys())
        for start in range(0, len(listed), batch):
            yield listed[start : start + batch]

    def _counters(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        # At most ``batch`` buckets removed and ``batch`` series looked at per lock hold.
        cut = cutoffs.counters
        with self._s.lock:
            listed = [k for k in self._s.counters if k[2] in cut]
        at = 0
        while at < len(listed):
            removed = looked = 0
            with self._s.lock:
                while at < len(listed) and removed < batch and looked < batch:
                    key = listed[at]
                    looked += 1
                    buckets = self._s.counters.get(key, {})
                    old = [b for b in buckets if b < cut[key[2]]]
                    room = batch - removed
                    for bucket in old[:room]:
                        del buckets[bucket]
                    removed += min(len(old), room)
                    if len(old) <= room:  # this series is done
                        at += 1
                        if not buckets:
                            self._s.counters.pop(key, None)
                            # ``State.shape`` may hold this very dict: a consume must not
                            # count into a series no read can find any more.
                            self._s.forget_counting()
            yield removed

    def _recorded_at(self, event_id: int | None) -> datetime | None:
        """When the event an answer charged was recorded (events are numbered from 1)."""
        if event_id is None:
            return None
        events = self._s.events  # in id order; archived ones may have left it
        at = bisect_left(events, event_id, key=lambda e: e.id)
        return events[at].recorded_at if at < len(events) and events[at].id == event_id else None

    def _idempotency(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        for keys in self._batches(lambda: list(self._s.idempotency), batch):
            removed = 0
            with self._s.lock:
                for key in keys:
                    found = self._s.idempotency.get(key)
                    if found is None:
                        continue
                    at = self._recorded_at(found[1].event_id)
                    if at is not None and at < cutoffs.idempotency:
                        del self._s.idempotency[key]
                        removed += 1
            yield removed

    def _reservations(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        for ids in self._batches(lambda: list(self._s.reservations), batch):
            removed = 0
            with self._s.lock:
                for rid in ids:
                    r = self._s.reservations.get(rid)
                    # A settled one is judged by its expiry too: when it settled is not kept,
                    # and it settled before it expired.
                    if r is not None and r.expires_at < cutoffs.holds:
                        del self._s.reservations[rid]
                        self._s.held.pop(rid, None)
                        removed += 1
            yield removed

    def _leases(self, cutoffs: Cutoffs, batch: int) -> Iterator[int]:
        for ids in self._batches(lambda: list(self._s.leases), batch):
            removed = 0
            with self._s.lock:
                for lid in ids:
                    lease = self._s.leases.get(lid)
                    if lease is None:
                        continue
                    ended = lease.released_at or lease.expires_at
                    if min(ended, lease.expires_at) < cutoffs.holds:
                        del self._s.leases[lid]
                        removed += 1
            yield removed


__all__ = ["MemoryPruner"]
