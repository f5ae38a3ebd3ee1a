"""Reading what the gateway charged, from the engine the server runs on."""

from __future__ import annotations

from typing import Any

from tokenquota import Quota
from tokenquota.domain.ledger import Event
from tokenquota.domain.metrics import from_units


def events(quota: Quota, subject: str) -> list[Event]:
    return [e for e in quota.iter_events(subject=subject) if e.is_usage]


def amounts(event: Event) -> dict[str, Any]:
    return {metric.value: from_units(metric, units) for metric, units in event.amounts.items()}


def used(quota: Quota, subject: str, metric: str, window: str = "day") -> Any:
    for status in quota.usage(subject).limits:
        if status.metric == metric and status.window == window:
            return status.used
    raise AssertionError(f"no {metric}/{window} limit on {subject}")
