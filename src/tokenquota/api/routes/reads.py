"""What was used: usage against limits, history, and the ledger (JSON pages or streamed exports).

Every role may read usage and history; a member key only of its own subject
and the subjects below it, and the ledger only with ``subject=`` inside that
scope. Handlers are plain ``def`` run on the read threads (``http.capacity``);
exports stream from a sync generator, each batch read on those threads too.
History and the ledger are heavy reads: a key may have only
``heavy_reads_per_key`` of them in flight (429 ``too_many_requests`` beyond).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tokenquota.api.admin_schemas import (
    EventPage,
    HistoryOut,
    Instant,
    LimitQuery,
    OffsetQuery,
    RefPath,
    error_responses,
)
from tokenquota.api.schemas import UsageOut
from tokenquota.domain.errors import Forbidden
from tokenquota.domain.keys import Role
from tokenquota.domain.ledger import Event
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import wire_number
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Granularity, GroupBy
from tokenquota.export import CSV_COLUMNS, csv_chunks, jsonl_chunks
from tokenquota.http.auth import Caller, QuotaDep, in_scope, require_read
from tokenquota.http.capacity import HeavyRead, iterate_on, runs_on
from tokenquota.wire.decisions import encode_limit_status
from tokenquota.wire.ledger import encode_event
from tokenquota.wire.views import encode_page

router = APIRouter(prefix="/v1", tags=["usage"])

HEAVY_429 = (
    "too_many_requests: this key already has heavy_reads_per_key history or ledger reads "
    "in flight (an export counts until it is fully sent); Retry-After says when to retry"
)


Start = Annotated[
    Instant | None,
    Query(description="Inclusive; ISO 8601 with an offset, e.g. 2026-03-01T00:00:00Z"),
]
End = Annotated[Instant | None, Query(description="Exclusive; ISO 8601 with an offset")]


@router.get(
    "/subjects/{ref}/usage",
    response_model=UsageOut,
    summary="Usage against every effective limit",
    description=(
        "For each limit: used, reserved, remaining (null when unlimited, never negative), "
        "reset_at and within_limit; a shadow limit follows the enforced one it sits beside "
        "and carries `shadow_hits`, the decisions it would have blocked. With "
        "`include_ancestors=true` the ancestors' limits follow the subject's; for a member "
        "key, ancestors above its own subject are left out. "
        "A member key may read its own subject and below."
    ),
    responses=error_responses({404: "Unknown subject (only with strict_subjects)"}),
)
@runs_on("reads")
def usage(
    ref: RefPath,
    caller: Caller,
    quota: QuotaDep,
    include_ancestors: Annotated[
        bool, Query(description="Also the limits of every ancestor")
    ] = False,
) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    result = quota.usage(subject, include_ancestors=include_ancestors)
    limits = result.limits
    if include_ancestors and caller.role is Role.MEMBER:
        # An ancestor above the member's own subject is outside what it may see (contract §10).
        visible = {
            s: in_scope(quota, caller, SubjectRef.parse(s)) for s in {x.subject for x in limits}
        }
        limits = tuple(x for x in limits if visible[x.subject])
    # Hits are kept per (subject, metric, window): one shadow limit each (limits.resolve).
    hits = {s: quota.shadow_hits(s) for s in {x.subject for x in limits if x.shadow}}
    return JSONResponse(
        {
            "subject": result.subject,
            "at": result.at.isoformat(),
            "limits": [
                {
                    **encode_limit_status(x),
                    "shadow_hits": hits[x.subject].get(str(LimitKey.parse(x.metric, x.window)), 0)
                    if x.shadow
                    else None,
                }
                for x in limits
            ],
        }
    )


@router.get(
    "/subjects/{ref}/history",
    response_model=HistoryOut,
    summary="Usage over time, from the ledger",
    description=(
        "Sums of every event charged to the subject (its own and its descendants'), per "
        "calendar period of the configured time zone and per metric (`group_by=metric`) "
        'or per metric and model (`group_by=model`; `model` is "" for events that named '
        "none). Periods without usage are left out. By default the 30 days up to the end "
        "of the current period. A member key may read its own subject and below."
    ),
    responses=error_responses({429: HEAVY_429}),
)
@runs_on("reads")
def history(
    ref: RefPath,
    caller: Caller,
    quota: QuotaDep,
    _heavy: HeavyRead,
    start: Start = None,
    end: End = None,
    granularity: Annotated[Granularity, Query(description="Period length")] = Granularity.DAY,
    group_by: Annotated[GroupBy, Query(description="metric, or metric and model")] = (
        GroupBy.METRIC
    ),
) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    points = quota.history(
        subject, start=start, end=end, granularity=granularity.value, group_by=group_by.value
    )
    return JSONResponse(
        {
            "subject": str(subject),
            "granularity": granularity.value,
            "group_by": group_by.value,
            "points": [
                {
                    "start": p.start.isoformat(),
                    "end": p.end.isoformat(),
                    "metric": p.metric,
                    "model": p.model,
                    "value": wire_number(p.value),
                }
                for p in points
            ],
        }
    )


@router.get(
    "/events",
    response_model=EventPage,
    summary="The usage ledger: a page as JSON, or every event as CSV or JSON lines",
    description=(
        "`format=json` (default) answers one page. `format=csv` and `format=jsonl` stream "
        "every matching event (offset and limit do not apply), oldest first. CSV columns: "
        + ", ".join(CSV_COLUMNS)
        + " (charged space-separated, tags as JSON, credits as decimal strings, an absent "
        "amount empty). `subject` keeps the events charged to it, i.e. its own and its "
        "descendants'. A member key must name a `subject` within its scope."
    ),
    responses={
        200: {
            "description": "A page (json), or the whole export (csv, jsonl)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **error_responses({429: HEAVY_429}),
    },
)
@runs_on("reads")
def events(
    caller: Caller,
    quota: QuotaDep,
    _heavy: HeavyRead,
    subject: Annotated[
        str | None, Query(description="Only events charged to this subject (kind:id)")
    ] = None,
    start: Start = None,
    end: End = None,
    offset: OffsetQuery = 0,
    limit: LimitQuery = 100,
    fmt: Annotated[
        Literal["json", "csv", "jsonl"], Query(alias="format", description="json, csv or jsonl")
    ] = "json",
) -> Response:
    ref = SubjectRef.parse(subject, "subject") if subject is not None else None
    root: SubjectRef | None = None
    if caller.role is Role.MEMBER:
        if ref is None:
            raise Forbidden("a member key must name a subject= within its scope")
        require_read(quota, caller, ref)
        root = caller.subject
    if fmt == "json":
        page = quota.events(subject=ref, start=start, end=end, offset=offset, limit=limit)
        items = [encode_event(_within(e, root, ref)) for e in page.items]
        return JSONResponse(encode_page(items, page))
    # Validated now, read lazily: the export streams in batches as the client reads.
    stream: Iterable[Event] = quota.iter_events(subject=ref, start=start, end=end)
    if root is not None:
        stream = (_within(e, root, ref) for e in stream)
    if fmt == "csv":
        return StreamingResponse(
            iterate_on("reads", csv_chunks(stream)),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="events.csv"'},
        )
    return StreamingResponse(
        iterate_on("reads", jsonl_chunks(stream)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="events.jsonl"'},
    )


def _within(event: Event, root: SubjectRef | None, ref: SubjectRef | None) -> Event:
    """The event as a member bound to ``root`` may see it: ``charged`` cut above its subtree.

    ``charged`` runs from the event's subject up through every ancestor; the
    member's own subject is the last one inside its subtree (contract §10).
    If the hierarchy has changed since and ``root`` is not in it, the cut is at
    ``ref``, the subject the member asked for, which is inside.
    """
    if root is None:
        return event
    for last in (root, ref):
        if last in event.charged:
            return replace(event, charged=event.charged[: event.charged.index(last) + 1])
    return replace(event, charged=(event.subject,))
