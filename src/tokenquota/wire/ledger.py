"""The ledger as the API shows it: usage events, audit entries, grants and balances."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokenquota.domain.decisions import Mode
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.metrics import Metric, from_units, to_units, wire_number
from tokenquota.domain.subjects import SubjectRef
from tokenquota.wire.fields import iso, optional_ref, optional_time, ref_text, time
from tokenquota.wire.metrics import decode_amounts, encode_amounts


def encode_event(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "subject": str(event.subject),
        "charged": [str(s) for s in event.charged],
        "timestamp": event.timestamp.isoformat(),
        "recorded_at": event.recorded_at.isoformat(),
        "mode": event.mode.value,
        "amounts": encode_amounts(event.amounts),
        "model": event.model,
        "tags": dict(event.tags),
        "idempotency_key": event.idempotency_key,
        "resource": ref_text(event.resource),
    }


def decode_event(data: Any) -> Event:
    return Event(
        id=int(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=tuple(SubjectRef.parse(s) for s in data.get("charged", ())),
        timestamp=time(data["timestamp"]),
        recorded_at=time(data["recorded_at"]),
        mode=Mode(data["mode"]),
        amounts=decode_amounts(data["amounts"]),
        model=data.get("model"),
        tags=dict(data.get("tags") or {}),
        idempotency_key=data.get("idempotency_key"),
        kind=str(data.get("kind", "consume")),
        resource=optional_ref(data.get("resource")),
    )


def encode_audit_entry(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }


def decode_audit_entry(data: Any) -> AuditEntry:
    return AuditEntry(
        id=int(data["id"]),
        at=time(data["at"]),
        actor=str(data["actor"]),
        action=str(data["action"]),
        target=str(data["target"]),
        before=data.get("before"),
        after=data.get("after"),
    )


def _credits(units: int) -> int | str | None:
    return wire_number(from_units(Metric.CREDITS, units))


def _credit_units(value: Any, field: str) -> int:
    return to_units(Metric.CREDITS, value, field)


def encode_grant(grant: Grant, now: datetime) -> dict[str, Any]:
    """``now`` decides the derived ``state``: active, spent or expired."""
    if grant.expires_at is not None and now >= grant.expires_at:
        state = "expired"
    else:
        state = "active" if grant.remaining else "spent"
    return {
        "id": grant.id,
        "subject": str(grant.subject),
        "amount": _credits(grant.amount),
        "remaining": _credits(grant.remaining),
        "granted_at": grant.granted_at.isoformat(),
        "expires_at": iso(grant.expires_at),
        "state": state,
    }


def decode_grant(data: Any) -> Grant:
    """``state`` is left out, as it is derived from the others."""
    return Grant(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        amount=_credit_units(data["amount"], "amount"),
        granted_at=time(data["granted_at"]),
        expires_at=optional_time(data.get("expires_at")),
        remaining=_credit_units(data["remaining"], "remaining"),
    )


def encode_balance(wallet: Balance) -> dict[str, Any]:
    return {
        "subject": str(wallet.subject),
        "remaining": _credits(wallet.remaining),
        "granted": _credits(wallet.granted),
        "next_expiry": iso(wallet.next_expiry),
    }


def decode_balance(data: Any) -> Balance:
    return Balance(
        subject=SubjectRef.parse(data["subject"]),
        remaining=_credit_units(data["remaining"], "remaining"),
        granted=_credit_units(data["granted"], "granted"),
        next_expiry=optional_time(data.get("next_expiry")),
    )
