"""The hot path builds a few frozen values positionally; their fields keep that order.

``Planner.plan`` builds its ``DebitPlan``, ``ledger.usage_event`` its ``Event``
and ``decisions.admitted`` its deferred ``Decision`` by position, which a
call by keyword costs more than (each of up to sixteen names matched). A
field added or moved in one of them must move those calls too: this fails
first, naming the class.
"""

from __future__ import annotations

from dataclasses import fields

from tokenquota.domain.decisions import DebitPlan, Decision
from tokenquota.domain.ledger import Event


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def test_the_positional_builds_match_the_fields() -> None:
    assert names(DebitPlan) == [
        "subject",
        "charged",
        "amounts",
        "mode",
        "timestamp",
        "now",
        "tz",
        "checks",
        "idempotency_key",
        "fingerprint",
        "model",
        "tags",
        "hold",
        "resource",
        "capacity",
        "config_version",
        "placement",  # ``placed_plan`` takes it last, in place of ``checks``
    ]
    assert names(Event) == [
        "id",
        "subject",
        "charged",
        "timestamp",
        "recorded_at",
        "mode",
        "amounts",
        "model",
        "tags",
        "idempotency_key",
        "kind",
        "resource",
    ]
    assert names(Decision) == [
        "allowed",
        "subject",
        "mode",
        "amounts",
        "timestamp",
        "limits",  # deferred: not an argument of ``deferred_decision``
        "blocked_by",
        "shadow_blocked",
        "retry_after",
        "event_id",
        "replayed",
        "failed_open",
        "reason",
        "blocked_outside",
        "_pending",
    ]
