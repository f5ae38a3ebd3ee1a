"""``memory://``: the reference implementation the other backends are tested against.

Everything sits in dictionaries behind one lock, so every operation is
trivially atomic; nothing survives the process. The catalog and the meter
share that one state and that one lock (state.py). It calls no SQL or Redis
code: it is what their behaviour is compared with.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tokenquota.storage.composed import ComposedStore
from tokenquota.storage.memory.catalog import MemoryCatalog
from tokenquota.storage.memory.meter import MemoryMeter
from tokenquota.storage.memory.state import State
from tokenquota.storage.memory.webhooks import MemoryWebhooks


class MemoryStore(ComposedStore):
    catalog: MemoryCatalog
    meter: MemoryMeter

    def __init__(self, tz: ZoneInfo | None) -> None:
        state = State(tz or ZoneInfo("UTC"))
        super().__init__(MemoryCatalog(state), MemoryMeter(state))
        self.alerts = MemoryWebhooks(state)

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass
