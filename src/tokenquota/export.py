"""Ledger exports, CSV and JSON lines: one format for the CLI and the HTTP API.

Both stream: they read events from an iterator and yield text in chunks, so
an export may be far larger than memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Final

from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import COUNTERS
from tokenquota.wire.ledger import encode_event

# One column per counter metric keeps the CSV flat for spreadsheets. The order
# is part of the wire contract.
AMOUNT_COLUMNS: Final = tuple(m.value for m in COUNTERS)
CSV_COLUMNS: Final = (
    "id",
    "kind",
    "subject",
    "charged",
    "timestamp",
    "recorded_at",
    "mode",
    *AMOUNT_COLUMNS,
    "model",
    "tags",
    "idempotency_key",
    "resource",
)
CHUNK_CHARS: Final = 64 * 1024


def csv_row(event: Event) -> list[object]:
    """Charged subjects space-separated, absent amounts empty, tags always JSON."""
    wire = encode_event(event)
    amounts = wire["amounts"]
    return [
        wire["id"],
        wire["kind"],
        wire["subject"],
        " ".join(wire["charged"]),
        wire["timestamp"],
        wire["recorded_at"],
        wire["mode"],
        *(amounts.get(name, "") for name in AMOUNT_COLUMNS),
        wire["model"] or "",
        json.dumps(wire["tags"], sort_keys=True, separators=(",", ":")),
        wire["idempotency_key"] or "",
        wire["resource"] or "",
    ]


def csv_chunks(events: Iterable[Event], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(csv_row(event))
        if buffer.tell() >= chunk_chars:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_chunks(events: Iterable[Event], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    lines: list[str] = []
    held = 0
    for event in events:
        line = json.dumps(encode_event(event), separators=(",", ":")) + "\n"
        lines.append(line)
        held += len(line)
        if held >= chunk_chars:
            yield "".join(lines)
            lines.clear()
            held = 0
    if lines:
        yield "".join(lines)
