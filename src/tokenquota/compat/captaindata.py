"""Captain Data's quotas API (seed 004), answered from the engine (contract §8).

``GET /v1/quotas`` tells the caller's workspace how many credits it has used
and has left in the current calendar month. It only translates:

| Captain Data          | tokenquota                                                      |
| --------------------- | --------------------------------------------------------------- |
| the key's workspace   | the member key's subject if of kind ``workspace``, else its     |
|                       | nearest ancestor of that kind; none: 403                        |
| ``uid``               | the workspace's id (``workspace:<uid>``)                        |
| ``name``              | its display name, else its id; cut to 55 characters             |
| ``credits_max``       | its effective ``credits``/``month`` limit, rounded down         |
| ``credits_used``      | credits used this month (the limit's counter, else the ledger)  |
| ``credits_left``      | ``max(0, limit - used)``                                        |
| ``plan_name``         | the name of its plan, or null                                   |
| ``current_month_*``   | the month in the store's time zone; ``end`` is its last second  |

A workspace that credits do not cap (no ``credits``/``month`` limit, ``-1``, or a
shadow limit, which never blocks) reports ``credits_max`` and ``credits_left`` as
2**53 - 1, the largest integer every JSON parser reads exactly. Credits are exact
decimals; they leave as JSON numbers written from the decimal's own digits, never
through a float.
Errors under ``/v1/quotas`` leave as ``{"message": "..."}``. docs/compat/captaindata.md
has the whole story.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tokenquota.domain.errors import Forbidden, NotFound
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Calendar, calendar_period
from tokenquota.engine import Quota
from tokenquota.http.auth import Caller, QuotaDep
from tokenquota.http.capacity import runs_on

PREFIXES: tuple[str, ...] = ("/v1/quotas",)
router = APIRouter(include_in_schema=True, tags=["Captain Data compatibility"])

WORKSPACE_KIND: Final = "workspace"
MAX_NAME_LENGTH: Final = 55
UNCAPPED_CREDITS: Final = 2**53 - 1
"""``credits_max`` of a workspace that credits do not cap."""
_MONTH: Final = Calendar.MONTH.value
_ZERO: Final = Decimal(0)


class QuotasOut(BaseModel):
    """Workspace quota and consumption information, in Captain Data's field names."""

    model_config = ConfigDict(extra="forbid")

    uid: str = Field(
        description=(
            "The workspace's id (the subject workspace:<uid>); a UUID when the workspace "
            "is named by one, as Captain Data's are"
        ),
        examples=["123e4567-e89b-12d3-a456-426614174000"],
    )
    name: str = Field(
        max_length=MAX_NAME_LENGTH,
        description="The workspace's display name (else its id), at most 55 characters",
        examples=["Acme Corporation"],
    )
    credits_left: float = Field(
        ge=0,
        description=(
            "Credits still available this month: max(0, credits limit - used); "
            f"{UNCAPPED_CREDITS} when credits are not capped"
        ),
        examples=[1250.5],
    )
    credits_max: int = Field(
        ge=0,
        description=(
            "The workspace's credits-per-month limit, rounded down to a whole number; "
            f"{UNCAPPED_CREDITS} when credits are not capped"
        ),
        examples=[2000],
    )
    credits_used: float = Field(
        ge=0, description="Credits used this calendar month", examples=[749.5]
    )
    plan_name: str | None = Field(
        description="The workspace's plan, or null when it has none", examples=["Gold"]
    )
    current_month_start: datetime = Field(
        description="The first instant of the current month (store time zone), in UTC",
        examples=["2024-01-01T00:00:00Z"],
    )
    current_month_end: datetime = Field(
        description="The last second of the current month (store time zone), in UTC",
        examples=["2024-01-31T23:59:59Z"],
    )


class MessageOut(BaseModel):
    """Captain Data's error shape."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(examples=["the API key is not valid"])


def render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    headers: dict[str, str] | None,
) -> JSONResponse:
    """Every error under ``PREFIXES``, in Captain Data's shape: only the message."""
    return JSONResponse({"message": message}, status_code=status, headers=headers)


@dataclass(frozen=True, slots=True)
class MonthCredits:
    start: datetime  # the month [start, after), in UTC
    after: datetime
    limit: Decimal | None  # None: credits are not capped this month
    used: Decimal


def caller_workspace(quota: Quota, caller: ApiKey) -> SubjectRef:
    """The workspace a key speaks for: its own subject, or the nearest workspace above it."""
    subject = caller.subject
    if subject is None:
        raise Forbidden(
            f"this {caller.role.value} key is not tied to a workspace; use a member key "
            "bound to workspace:<uid> or to a subject below one"
        )
    if subject.kind == WORKSPACE_KIND:
        return subject
    for ancestor in quota.ancestors(subject):  # nearest first
        if ancestor.kind == WORKSPACE_KIND:
            return ancestor
    raise Forbidden(f"this key's subject {subject} is in no workspace")


def month_credits(quota: Quota, workspace: SubjectRef) -> MonthCredits:
    """The workspace's own credits/month limit and what it has used this month."""
    usage = quota.usage(workspace)
    # The month of the instant usage was read at, so the period and the counter agree.
    start, after = calendar_period(Calendar.MONTH, usage.at, quota.tz)
    for status in usage.limits:
        if (
            status.subject == str(workspace)
            and status.metric == Metric.CREDITS.value
            and status.window == _MONTH
        ):
            capped = status.remaining is not None and not status.shadow
            limit = Decimal(status.limit) if capped else None
            return MonthCredits(start, after, limit, Decimal(status.used or 0))
    # No such limit, so no counter to read: the ledger holds the same sum.
    points = quota.history(workspace, start=start, end=after, granularity="month")
    used = sum((Decimal(p.value) for p in points if p.metric == Metric.CREDITS.value), _ZERO)
    return MonthCredits(start, after, None, used)


def _display_name(quota: Quota, workspace: SubjectRef) -> str:
    try:
        name = quota.get_subject(workspace).name
    except NotFound:  # a key may be bound to a workspace never stored (strict_subjects off)
        name = None
    return (name or workspace.id)[:MAX_NAME_LENGTH]


def _utc(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(fields: dict[str, object]) -> bytes:
    """A flat JSON object whose decimals are written exactly, as JSON numbers."""
    parts = (
        f"{json.dumps(k)}:{format(v, 'f') if isinstance(v, Decimal) else json.dumps(v)}"
        for k, v in fields.items()
    )
    return ("{" + ",".join(parts) + "}").encode()


@router.get(
    "/v1/quotas",
    response_model=QuotasOut,
    summary="Get workspace quotas and usage information (Captain Data)",
    description=(
        "Captain Data's quotas endpoint: the credits the caller's workspace has used and "
        "has left this calendar month (in the store's time zone). Send a member key bound "
        "to `workspace:<uid>` or to a subject below one, e.g. in `X-API-Key`. Errors are "
        '`{"message": "..."}`.'
    ),
    responses={
        401: {"model": MessageOut, "description": "No API key, or not a valid one"},
        403: {"model": MessageOut, "description": "The key is not tied to a workspace"},
        404: {
            "model": MessageOut,
            "description": "The key's workspace is not stored (only with strict_subjects)",
        },
    },
)
@runs_on("reads")
def captaindata_quotas(caller: Caller, quota: QuotaDep) -> Response:
    workspace = caller_workspace(quota, caller)
    credits = month_credits(quota, workspace)
    plan = quota.limits(workspace).plan
    if credits.limit is None:
        # Nothing to run out of; subtracting would also leave digits a double cannot hold.
        left, most = Decimal(UNCAPPED_CREDITS), UNCAPPED_CREDITS
    else:
        left, most = max(_ZERO, credits.limit - credits.used), math.floor(credits.limit)
    body = {
        "name": _display_name(quota, workspace),
        "uid": workspace.id,
        "credits_left": left,
        "credits_max": most,
        "credits_used": credits.used,
        "plan_name": plan.name if plan is not None else None,
        "current_month_start": _utc(credits.start),
        "current_month_end": _utc(credits.after - timedelta(seconds=1)),
    }
    return Response(_json_object(body), media_type="application/json")
