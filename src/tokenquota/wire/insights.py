"""Top consumers on the wire: what /v1/insights/top-consumers answers and the client reads."""

from __future__ import annotations

from typing import Any

from tokenquota.domain.insights import Consumer, TopConsumers
from tokenquota.domain.metrics import wire_number
from tokenquota.wire.fields import number, time


def encode_top_consumers(top: TopConsumers) -> dict[str, Any]:
    return {
        "metric": top.metric,
        "window": top.window,
        "start": top.start.isoformat() if top.start else None,
        "end": top.end.isoformat() if top.end else None,
        "parent": top.parent,
        "kind": top.kind,
        "consumers": [
            {"subject": c.subject, "value": wire_number(c.value), "events": c.events}
            for c in top.consumers
        ],
    }


def decode_top_consumers(data: Any) -> TopConsumers:
    metric = str(data["metric"])
    return TopConsumers(
        metric=metric,
        window=data.get("window"),
        start=time(data["start"]) if data.get("start") else None,
        end=time(data["end"]) if data.get("end") else None,
        parent=data.get("parent"),
        kind=data.get("kind"),
        consumers=tuple(
            Consumer(str(c["subject"]), number(metric, c["value"]), int(c["events"]))
            for c in data["consumers"]
        ),
    )
