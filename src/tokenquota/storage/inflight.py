"""Holds in flight: how many reservations and leases are live now (``/metrics``).

Live means what every read counts as held (domain/holds.py): a reservation
still ``held`` and a lease not released, each before its ``expires_at``. A
hold that lapsed is not counted, whether or not anything has settled or pruned
it yet. Apart from ``Store`` because only the metrics read it, and each backend
answers it from where its holds are: the SQL tables, the memory state, and on
Redis an index of live holds per ledger shard that the steps keep
(storage/redis/holds.py).

Every backend counts at most ``CAP`` of each kind: the count is a bounded
query, and a gauge at the cap means "at least".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

CAP: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class InFlight:
    reservations: int
    leases: int


class HoldCounter(Protocol):
    def in_flight(self, now: datetime) -> InFlight:
        """The live reservations and leases at ``now``, each at most ``CAP``."""
        ...
