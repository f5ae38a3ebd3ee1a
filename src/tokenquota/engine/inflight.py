"""Holds and leases in flight, read from the store for ``/metrics`` and kept a few seconds.

The number is the store's, not a process's: with ``serve --workers N`` or
several replicas each scrape reads the same live reservations and leases, so
it is read at scrape time rather than counted. A scrape storm (many
Prometheus servers, a dashboard refreshing, every worker scraped in turn)
must not become a storm of count queries: each process reads the store at
most once per ``CACHE_SECONDS``, and scrapes that arrive while one read is
running wait for it instead of starting their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from tokenquota.storage.base import Store
from tokenquota.storage.inflight import HoldCounter, InFlight

if TYPE_CHECKING:
    from tokenquota.engine.quota import Quota

CACHE_SECONDS: Final = 5.0
T = TypeVar("T")


def counter_for(store: Store) -> HoldCounter:
    """The hold counter of the backend ``store`` is, over the connections it uses."""
    # Imported here, as engine/retention.py's pruner_for does: the backends stay apart.
    from tokenquota.storage.memory.inflight import MemoryInFlight
    from tokenquota.storage.memory.store import MemoryStore
    from tokenquota.storage.redis.holds import RedisInFlight
    from tokenquota.storage.redis.store import RedisStore
    from tokenquota.storage.sql.inflight import SqlInFlight
    from tokenquota.storage.sql.store import SqlStore

    if isinstance(store, RedisStore):
        return RedisInFlight(store.redis, store.layout)
    if isinstance(store, SqlStore):
        return SqlInFlight(store.db)
    if isinstance(store, MemoryStore):
        return MemoryInFlight(store.meter._s)
    raise TypeError(f"no hold counter for {type(store).__name__}")


class Cached(Generic[T]):
    """``read()``: what ``source`` answers, asked at most once per ``seconds``; scrapes that
    come while it is being asked wait for that answer. A failed ask is not kept: the next
    scrape asks again."""

    def __init__(
        self,
        source: Callable[[], T],
        *,
        seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.seconds = seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at = 0.0
        self.reads = 0  # how many times the source was asked (tests read it)

    def read(self) -> T:
        with self._lock:
            now = self._monotonic()
            if self._value is None or now - self._read_at >= self.seconds:
                self._value = self.source()
                self._read_at = now
                self.reads += 1
            return self._value


class HoldsInFlight(Cached[InFlight]):
    """The live reservations and leases of ``quota``'s store, at most ``seconds`` old."""

    def __init__(
        self,
        quota: Quota,
        *,
        seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        counter = counter_for(quota.store)
        super().__init__(
            lambda: counter.in_flight(quota.clock.now()), seconds=seconds, monotonic=monotonic
        )
        self.quota = quota


def holds_in_flight(quota: Quota) -> HoldsInFlight | None:
    """The cached counter of ``quota``'s store; None for a store of the caller's own making."""
    try:
        return HoldsInFlight(quota)
    except TypeError:
        return None


__all__ = ["CACHE_SECONDS", "Cached", "HoldsInFlight", "counter_for", "holds_in_flight"]
