"""The stored shape of a ledger event: one row, whichever backend writes it.

The SQL stores insert it into ``events``; the Redis meter puts it, as JSON,
in a stream entry that the mover later inserts unchanged. Building it in one
place keeps the two byte-for-byte alike, which the mover depends on. The
audit entry of a grant is built here too, so every backend (the memory one
included) audits a grant alike.
"""

from __future__ import annotations

from typing import Any

from tokenquota.domain.clock import to_micros
from tokenquota.domain.grants import Grant
from tokenquota.domain.ledger import Event
from tokenquota.wire.ledger import encode_grant


def event_row(event: Event) -> dict[str, Any]:
    """The columns of ``events`` but the id, which the store assigns."""
    return {
        "kind": event.kind,
        "subject": str(event.subject),
        "charged": [str(s) for s in event.charged],
        "ts": to_micros(event.timestamp),
        "recorded_at": to_micros(event.recorded_at),
        "mode": event.mode.value,
        "amounts": event.amounts.to_units_json(),
        "model": event.model,
        "tags": dict(event.tags),
        "idempotency_key": event.idempotency_key,
        "resource": str(event.resource) if event.resource else None,
    }


def event_links(event_id: int, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``event_subjects`` rows of one event row: one per charged subject."""
    return [{"subject": s, "ts": row["ts"], "event_id": event_id} for s in row["charged"]]


def grant_audit(grant: Grant) -> tuple[str, str, None, dict[str, Any]]:
    """A grant's audit entry but its time and actor: action, target, before, after."""
    return "grant.add", str(grant.subject), None, encode_grant(grant, grant.granted_at)
