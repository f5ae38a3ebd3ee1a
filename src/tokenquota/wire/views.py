"""The read answers: usage, history points and pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tokenquota.domain.limits import LimitKey
from tokenquota.domain.views import HistoryPoint, Page, Usage
from tokenquota.wire.decisions import decode_limit_status
from tokenquota.wire.fields import number, time

T = TypeVar("T")


def encode_page(items: list[Any], page: Page[Any]) -> dict[str, Any]:
    """A page's items, already encoded, with where the page lies in the whole."""
    return {"items": items, "total": page.total, "offset": page.offset, "limit": page.limit}


def decode_page(data: Any, item: Callable[[Any], T]) -> Page[T]:
    return Page(
        items=[item(x) for x in data["items"]],
        total=int(data["total"]),
        offset=int(data["offset"]),
        limit=int(data["limit"]),
    )


def decode_usage(data: Any) -> Usage:
    return Usage(
        subject=str(data["subject"]),
        at=time(data["at"]),
        limits=tuple(decode_limit_status(s) for s in data["limits"]),
    )


def decode_shadow_hits(data: Any) -> dict[str, int]:
    """Counts by ``metric/window`` from a usage answer; a shadow limit that blocked
    nothing is left out, as the engine's ``shadow_hits`` counts only what would
    have been blocked."""
    hits: dict[str, int] = {}
    for limit in data["limits"]:
        if limit.get("shadow") and limit.get("shadow_hits"):
            key = LimitKey.parse(limit["metric"], limit.get("window"))
            hits[str(key)] = int(limit["shadow_hits"])
    return hits


def decode_history_point(data: Any) -> HistoryPoint:
    return HistoryPoint(
        start=time(data["start"]),
        end=time(data["end"]),
        metric=str(data["metric"]),
        model=data.get("model"),
        value=number(data["metric"], data["value"]),
    )
