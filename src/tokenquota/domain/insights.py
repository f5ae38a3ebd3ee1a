"""Who spends most: the answer to "top consumers", shared by the engine and the client.

A consumer's value is what the ledger charged to it in the range: its own
usage and that of every subject below it at the time (an event's ``charged``
is fixed when it is recorded, so a later move in the hierarchy does not
rewrite who spent what).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from tokenquota.domain.metrics import Number

DEFAULT_TOP: Final = 10
MAX_TOP: Final = 100  # consumers per answer: a ranking, not an export (use /v1/events)


@dataclass(frozen=True, slots=True)
class Consumer:
    subject: str
    value: Number  # in the metric's unit (credits as Decimal)
    events: int  # usage events that used some of the metric


@dataclass(frozen=True, slots=True)
class TopConsumers:
    metric: str
    window: str | None  # the window whose current period was ranked; None for a range
    start: datetime | None  # inclusive; None: since the first event
    end: datetime | None  # exclusive; None: through the last event
    parent: str | None  # only the direct children of this subject were ranked
    kind: str | None  # only subjects of this kind were ranked
    consumers: tuple[Consumer, ...]  # highest value first, then by subject
