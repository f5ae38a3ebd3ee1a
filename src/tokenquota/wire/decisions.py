"""Decisions as the API answers them (consume, check, commit, and inside a 429)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reason, WithheldBlock
from tokenquota.domain.metrics import Metric, wire_number
from tokenquota.wire.fields import iso, limit_number


def encode_withheld(block: WithheldBlock) -> dict[str, Any]:
    return {"reason": block.reason.value, "metric": block.metric}


def decode_withheld(data: Mapping[str, Any]) -> WithheldBlock:
    return WithheldBlock(Reason(data["reason"]), data["metric"])


def encode_limit_status(status: LimitStatus) -> dict[str, Any]:
    return {
        "subject": status.subject,
        "metric": status.metric,
        "window": status.window,
        "limit": wire_number(status.limit),
        "source": status.source,
        "shadow": status.shadow,
        "used": wire_number(status.used),
        "reserved": wire_number(status.reserved),
        "remaining": wire_number(status.remaining),
        "reset_at": iso(status.reset_at),
        "within_limit": status.within_limit,
        "reason": status.reason,
    }


def decode_limit_status(data: Mapping[str, Any]) -> LimitStatus:
    metric = Metric(data["metric"])
    return LimitStatus(
        subject=data["subject"],
        metric=metric.value,
        window=data["window"],
        limit=limit_number(metric, data["limit"]),
        source=data["source"],
        shadow=data["shadow"],
        used=None if data["used"] is None else limit_number(metric, data["used"]),
        reserved=limit_number(metric, data["reserved"]),
        remaining=None if data["remaining"] is None else limit_number(metric, data["remaining"]),
        reset_at=datetime.fromisoformat(data["reset_at"]) if data["reset_at"] else None,
        within_limit=data["within_limit"],
        reason=data.get("reason"),  # a server older than refusal reasons leaves it out
    )


def encode_decision(decision: Decision) -> dict[str, Any]:
    return {
        "allowed": decision.allowed,
        "subject": decision.subject,
        "mode": decision.mode.value,
        "amounts": {k: wire_number(v) for k, v in decision.amounts.items()},
        "timestamp": decision.timestamp.isoformat(),
        "limits": [encode_limit_status(s) for s in decision.limits],
        "blocked_by": [encode_limit_status(s) for s in decision.blocked_by],
        "shadow_blocked": [encode_limit_status(s) for s in decision.shadow_blocked],
        "retry_after": decision.retry_after,
        "event_id": decision.event_id,
        "replayed": decision.replayed,
        "failed_open": decision.failed_open,
        "reason": decision.reason,
        "blocked_outside": [encode_withheld(w) for w in decision.blocked_outside],
    }


def decode_decision(data: Mapping[str, Any]) -> Decision:
    return Decision(
        allowed=data["allowed"],
        subject=data["subject"],
        mode=Mode(data["mode"]),
        amounts={k: limit_number(Metric(k), v) for k, v in data["amounts"].items()},
        timestamp=datetime.fromisoformat(data["timestamp"]),
        limits=tuple(decode_limit_status(s) for s in data["limits"]),
        blocked_by=tuple(decode_limit_status(s) for s in data["blocked_by"]),
        shadow_blocked=tuple(decode_limit_status(s) for s in data["shadow_blocked"]),
        retry_after=data["retry_after"],
        event_id=data["event_id"],
        replayed=data["replayed"],
        # A server older than these fields leaves them out.
        failed_open=data.get("failed_open", False),
        reason=data.get("reason"),
        blocked_outside=tuple(decode_withheld(w) for w in data.get("blocked_outside", ())),
    )


def _wire_default(value: Any) -> Any:
    """What orjson is not to write itself, as ``encode_limit_status`` writes it: instants
    (passed through: orjson rounds an offset with seconds) as ``iso`` does, credits
    (``Decimal``) as ``wire_number`` does."""
    if isinstance(value, datetime):
        # A span's statuses share their reset_at (``decisions._span_rows``): its text
        # is kept by identity, with the instant itself, so the id is never another's.
        kept = _ISO.get(id(value))
        if kept is not None and kept[0] is value:
            return kept[1]
        text = value.isoformat()
        if len(_ISO) >= _MAX_ISO:
            _ISO.clear()
        _ISO[id(value)] = (value, text)
        return text
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not a wire value")


_ISO: dict[int, tuple[datetime, str]] = {}
_MAX_ISO: Final = 1_024
# Datetimes through ``_wire_default``: ``isoformat``'s text, never orjson's own.
_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME


def decision_json(decision: Decision) -> bytes:
    """``encode_decision(decision)`` as the JSON bytes Starlette's ``JSONResponse`` would
    send for it, built without the dict of every status.

    orjson writes a ``LimitStatus`` itself, as a map of its fields in their
    order, which is ``encode_limit_status``'s order and naming;
    ``_wire_default`` writes what it would write differently (credits, instants).
    What orjson refuses (an int past 64 bits, a lone surrogate) goes the general
    way, so the bytes never differ; ``tests/api/test_answer_bytes.py`` holds that.
    """
    try:
        return orjson.dumps(
            {
                "allowed": decision.allowed,
                "subject": decision.subject,
                "mode": decision.mode.value,
                "amounts": dict(decision.amounts),
                "timestamp": decision.timestamp.isoformat(),  # one of its own per decision
                "limits": decision.limits,
                "blocked_by": decision.blocked_by,
                "shadow_blocked": decision.shadow_blocked,
                "retry_after": decision.retry_after,
                "event_id": decision.event_id,
                "replayed": decision.replayed,
                "failed_open": decision.failed_open,
                "reason": decision.reason,
                "blocked_outside": decision.blocked_outside,
            },
            default=_wire_default,
            option=_OPTIONS,
        )
    except TypeError:  # orjson.JSONEncodeError is one
        return starlette_json(encode_decision(decision))


def starlette_json(content: Any) -> bytes:
    """The bytes Starlette's ``JSONResponse.render`` makes of ``content``."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
