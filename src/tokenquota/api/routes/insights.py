"""Aggregates over usage for people watching it: top consumers (engine/insights.py).

A member key sees only its own subtree here as everywhere (contract §10):
its ``parent`` must be inside it, only usage charged to its own subject is
summed, and any subject outside it now (moved since) is left out of the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from tokenquota.api.admin_schemas import Instant, error_responses
from tokenquota.api.schemas import Model, Num
from tokenquota.domain.insights import DEFAULT_TOP, MAX_TOP, TopConsumers
from tokenquota.domain.keys import Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine.insights import DEFAULT_WINDOW, Insights
from tokenquota.http.auth import Caller, QuotaDep, in_scope, require_read
from tokenquota.http.capacity import HeavyRead, runs_on
from tokenquota.wire.insights import encode_top_consumers

router = APIRouter(prefix="/v1", tags=["usage"])


class ConsumerOut(Model):
    subject: str
    value: Num = Field(description="Integer; a decimal string for credits")
    events: int = Field(description="Usage events in the range that used some of the metric")


class TopConsumersOut(Model):
    metric: str
    window: str | None = Field(description="The window whose current period was ranked")
    start: datetime | None = Field(description="Inclusive; null: since the first event")
    end: datetime | None = Field(description="Exclusive; null: through the last event")
    parent: str | None
    kind: str | None
    consumers: list[ConsumerOut] = Field(description="Highest value first, ties by subject")


@router.get(
    "/insights/top-consumers",
    response_model=TopConsumersOut,
    summary="Who used most of a metric, in a window's current period or a time range",
    description=(
        "Subjects ranked by the usage of `metric` the ledger charged to them (their own and "
        "their descendants'), highest first. The range is the current period of `window` "
        f"(default {DEFAULT_WINDOW}; a rolling window's last W, `total` the whole ledger) or "
        "`start`/`end` (not both forms). `parent` ranks its direct children by what they "
        'spent in it ("who in org:acme spends most"); `kind` keeps subjects of one kind. '
        f"`limit` is 1 to {MAX_TOP}. Every role may ask; a member key ranks only its own "
        "subtree, and its `parent` must be inside it. A heavy read (it sums the ledger)."
    ),
    responses=error_responses(),
)
@runs_on("reads")
def top_consumers(
    caller: Caller,
    quota: QuotaDep,
    _heavy: HeavyRead,
    metric: Annotated[str, Query(description="A metric summed over time, e.g. tokens")],
    window: Annotated[
        str | None, Query(description="day, month, rolling:7d, total, ...; not with start/end")
    ] = None,
    start: Annotated[Instant | None, Query(description="Inclusive; ISO 8601 with an offset")] = (
        None
    ),
    end: Annotated[Instant | None, Query(description="Exclusive; ISO 8601 with an offset")] = None,
    parent: Annotated[
        str | None, Query(description="Rank this subject's direct children (kind:id)")
    ] = None,
    kind: Annotated[str | None, Query(description="Only subjects of this kind")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TOP, description=f"1-{MAX_TOP}")] = DEFAULT_TOP,
) -> JSONResponse:
    return JSONResponse(
        encode_top_consumers(
            ranked(
                quota,
                caller,
                metric,
                window=window,
                start=start,
                end=end,
                parent=parent,
                kind=kind,
                limit=limit,
            )
        )
    )


def ranked(
    quota: QuotaDep,
    caller: Caller,
    metric: str,
    *,
    window: str | None = None,
    start: Instant | None = None,
    end: Instant | None = None,
    parent: str | None = None,
    kind: str | None = None,
    limit: int = DEFAULT_TOP,
) -> TopConsumers:
    """The ranking as ``caller`` may see it; the dashboard's tables come from here too."""
    within = None
    if caller.role is Role.MEMBER:
        within = caller.subject
        if parent is not None:
            require_read(quota, caller, SubjectRef.parse(parent, "parent"))
    top = Insights(quota.store, quota.clock).top_consumers(
        metric,
        window=window,
        start=start,
        end=end,
        parent=parent,
        kind=kind,
        limit=limit,
        within=within,
    )
    if within is None:
        return top
    # Charged while inside the subtree, but perhaps moved out since: not the member's to see.
    visible = tuple(
        c for c in top.consumers if in_scope(quota, caller, SubjectRef.parse(c.subject))
    )
    return TopConsumers(top.metric, top.window, top.start, top.end, top.parent, top.kind, visible)
