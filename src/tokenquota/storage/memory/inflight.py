"""Holds in flight on ``memory://`` (storage/inflight.py): counted under the state's lock."""

from __future__ import annotations

from datetime import datetime

from tokenquota.storage.inflight import CAP, InFlight
from tokenquota.storage.memory.state import State


class MemoryInFlight:
    def __init__(self, state: State) -> None:
        self._s = state

    def in_flight(self, now: datetime) -> InFlight:
        with self._s.lock:
            # ``held`` is the reservations still HELD; lapsed ones stay until settled.
            reservations = sum(1 for r in self._s.held.values() if r.live(now))
            leases = sum(1 for lease in self._s.leases.values() if lease.live(now))
        return InFlight(min(reservations, CAP), min(leases, CAP))
