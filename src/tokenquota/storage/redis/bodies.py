"""A consume's ledger event as the Redis step sends it: its row, as JSON, framed once.

The step appends the event to its shard's stream as it came (``step.lua``,
ARGV[2]); the mover later inserts that row into SQL unchanged. The row is
``event_row(usage_event(plan))`` (storage/ledger_rows.py), and for the consumes
of one subject in one mode with no model, tags, idempotency key or resource
(the common call) it differs only in its two times and its amounts. So the
rest of its JSON is encoded once per (charged chain, mode) and the three are
put in between: building the ``Event``, its row dict and encoding that whole
was about a twentieth of a warm consume's Python (session 12). Any other
consume is encoded the long way; ``tests/test_redis_bodies.py`` holds the two
byte for byte alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import DebitPlan
from tokenquota.domain.ledger import usage_event
from tokenquota.storage.ledger_rows import event_row

# Frames kept before they are made again: one per subject charged and mode.
FRAMES_KEPT = 10_000


def row_of(plan: DebitPlan) -> dict[str, Any]:
    """The long way: the row every backend stores for a consume of ``plan``."""
    return event_row(usage_event(plan))


class UsageBodies:
    """The JSON of consumes' event rows, each from a frame kept per shape."""

    def __init__(self) -> None:
        # (id of the charged tuple, mode) -> (that tuple, the subject, the frame)
        self._frames: dict[tuple[int, Any], tuple[tuple[Any, ...], Any, bytes]] = {}

    def of(self, plan: DebitPlan) -> bytes | None:
        """``orjson.dumps(row_of(plan))``, or None for a consume this does not frame
        (a model, tags, an idempotency key, a resource; amounts past 64 bits)."""
        if (
            plan.model is not None
            or plan.tags
            or plan.idempotency_key is not None
            or plan.resource is not None
        ):
            return None
        charged, subject = plan.charged, plan.subject
        key = (id(charged), plan.mode)
        found = self._frames.get(key)
        # The entry keeps the tuple, so its id cannot be another tuple's while here.
        if (
            found is None
            or found[0] is not charged
            or not (found[1] is subject or found[1] == subject)
        ):
            found = self._frame(plan)
            if len(self._frames) >= FRAMES_KEPT:
                self._frames.clear()
            self._frames[key] = found
        try:
            amounts = orjson.dumps(plan.amounts.to_units_json())
        except TypeError:  # an integer past 64 bits: the slower encoder, the long way
            return None
        return found[2] % (to_micros(plan.timestamp), to_micros(plan.now), amounts)

    @staticmethod
    def _frame(plan: DebitPlan) -> tuple[tuple[Any, ...], Any, bytes]:
        """The row's JSON with its times and amounts left as %d, %d and %b."""
        row = row_of(plan)
        marks = {"ts": -1, "recorded_at": -2, "amounts": -3}
        row.update(marks)
        text = orjson.dumps(row).replace(b"%", b"%%")
        for name, mark in marks.items():
            spot = b'"%b":%d' % (name.encode(), mark)
            assert text.count(spot) == 1  # the row's own keys: nothing else reads so
            text = text.replace(spot, b'"%b":%b' % (name.encode(), b"%b" if mark == -3 else b"%d"))
        return plan.charged, plan.subject, text
