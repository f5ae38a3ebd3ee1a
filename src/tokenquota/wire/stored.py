"""The forms the service keeps on disk, apart from the API's: each versioned.

An idempotency answer, a committed reservation's decision and the spool's
queued answers outlive the code that wrote them: a replay may read a row
written by the release before. So they do not reuse ``wire.decisions`` (the
API's codec, free to change with the API); each record written here carries
``"v"`` and its fields are fixed per version. A reader knows every version
ever written, and the unversioned form stored before versions existed (then
the API's decision JSON, some fields of which came later still).

To change a stored form: add version 2 beside version 1, write 2, keep
reading 1 and the unversioned form, and add a golden sample of 2 to the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from tokenquota.domain.decisions import Decision, LimitStatus, Mode, Reason, WithheldBlock
from tokenquota.domain.errors import TokenQuotaError
from tokenquota.domain.metrics import Metric, wire_number
from tokenquota.domain.resources import ResourceQuota, ResourceRule
from tokenquota.wire.fields import limit_number

DECISION_VERSION: Final = 1


def _status_v1(status: LimitStatus) -> dict[str, Any]:
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
        "reset_at": status.reset_at.isoformat() if status.reset_at else None,
        "within_limit": status.within_limit,
        "reason": status.reason,
    }


def encode_decision_v1(decision: Decision) -> dict[str, Any]:
    """A decision as version 1 stores it (the API's fields of the day it was made)."""
    return {
        "v": 1,
        "allowed": decision.allowed,
        "subject": decision.subject,
        "mode": decision.mode.value,
        "amounts": {k: wire_number(v) for k, v in decision.amounts.items()},
        "timestamp": decision.timestamp.isoformat(),
        "limits": [_status_v1(s) for s in decision.limits],
        "blocked_by": [_status_v1(s) for s in decision.blocked_by],
        "shadow_blocked": [_status_v1(s) for s in decision.shadow_blocked],
        "retry_after": decision.retry_after,
        "event_id": decision.event_id,
        "replayed": decision.replayed,
        "failed_open": decision.failed_open,
        "reason": decision.reason,
        "blocked_outside": [
            {"reason": w.reason.value, "metric": w.metric} for w in decision.blocked_outside
        ],
    }


encode_decision = encode_decision_v1  # what is written today


def _unstatus(data: Mapping[str, Any]) -> LimitStatus:
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
        reason=data.get("reason"),  # absent from unversioned answers stored before it existed
    )


def _decode_v1(data: Mapping[str, Any]) -> Decision:
    """Version 1, and the unversioned form: the same fields, some absent from the oldest."""
    return Decision(
        allowed=data["allowed"],
        subject=data["subject"],
        mode=Mode(data["mode"]),
        amounts={k: limit_number(Metric(k), v) for k, v in data["amounts"].items()},
        timestamp=datetime.fromisoformat(data["timestamp"]),
        limits=tuple(_unstatus(s) for s in data["limits"]),
        blocked_by=tuple(_unstatus(s) for s in data["blocked_by"]),
        shadow_blocked=tuple(_unstatus(s) for s in data["shadow_blocked"]),
        retry_after=data["retry_after"],
        event_id=data["event_id"],
        replayed=data["replayed"],
        # These three are absent from unversioned answers stored before they existed.
        failed_open=data.get("failed_open", False),
        reason=data.get("reason"),
        blocked_outside=tuple(
            WithheldBlock(Reason(w["reason"]), w["metric"]) for w in data.get("blocked_outside", ())
        ),
    )


def decode_decision(data: Mapping[str, Any]) -> Decision:
    """Any stored decision: version 1 or the unversioned form written before versions."""
    version = data.get("v")
    if version is None or version == 1:
        return _decode_v1(data)
    # Written by a newer release than this one: refuse rather than misread.
    raise TokenQuotaError(f"a stored decision has version {version!r}, newer than this release")


def _resource_rule(rule: ResourceRule) -> dict[str, object]:
    window = rule.window.key if rule.window is not None else None
    return {"metric": rule.metric.value, "window": window, "limit": rule.limit}


def encode_resource_quota(quota: ResourceQuota) -> dict[str, object]:
    """A resource quota as the catalog and Redis's stored plans keep it.

    Unversioned, as it was before: its reader is ``ResourceQuota.parse``, which
    accepts exactly these fields, so this form is the quota's input form and
    cannot drift from what the parser reads back.
    """
    return {
        "default_rules": [_resource_rule(r) for r in quota.default_rules],
        "policies": [
            {
                "consumer": str(p.consumer),
                "rules": [_resource_rule(r) for r in p.rules],
                "reserved": wire_number(p.reserved),
            }
            for p in quota.policies
        ],
        "capacity": None
        if quota.capacity is None
        else {"value": quota.capacity.value, "units": quota.capacity.units.value},
        "saturation_threshold": wire_number(quota.saturation_threshold),
    }
