"""Waldur's chat quota API (seed 000), answered from the engine (contract §8).

- the user ``<uuid>`` is the subject ``user:<uuid>`` (lower case, with dashes);
- daily / weekly / monthly are metric ``tokens`` over windows ``day`` / ``week`` / ``month``;
- ``*_limit`` is the user's own override (null: none, -1: unlimited), ``*_usage``,
  ``*_remaining`` and ``*_reset_at`` come from ``Quota.usage`` (the effective limit:
  override, plan or default), ``*_system_default`` is the default for kind ``user``
  (-1 when none is set);
- Waldur's staff and support are admin and staff keys; any other user is a member
  key bound to ``user:<uuid>``.

Only translation lives here: reading is ``Quota.usage`` (plus the ledger, through
``Quota.history``, for a period nothing limits, since counters are only kept for
limited windows); writing is one ``Quota.set_limits``. Errors leave in Django REST
framework's shape: ``{"detail": "…"}``, or ``{"field": ["…"]}`` with 400 for bad
input. Handlers are plain ``def``: they run on the thread pool.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel
from pydantic_core import PydanticCustomError

from tokenquota.domain.errors import Forbidden, ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.limits import Source
from tokenquota.domain.metrics import MAX_UNITS
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Calendar, calendar_period
from tokenquota.engine import Quota
from tokenquota.http.auth import QuotaDep, actor_of, authenticate
from tokenquota.http.capacity import runs_on

PREFIXES: tuple[str, ...] = ("/api/chat-quota/",)
router = APIRouter(prefix="/api/chat-quota", tags=["waldur"])

METRIC: Final = "tokens"
# Waldur's period names, in Waldur's order, and the calendar window each one is.
PERIODS: Final = (("daily", Calendar.DAY), ("weekly", Calendar.WEEK), ("monthly", Calendar.MONTH))
STAFF: Final = (Role.ADMIN, Role.STAFF)  # Waldur's "staff or support"
NO_DEFAULT: Final = -1  # what *_system_default says when kind user has no default

# DRF's own wording, so messages read as a Waldur client expects them.
REQUIRED: Final = "This field is required."
NOT_NULL: Final = "This field may not be null."
BAD_INTEGER: Final = "A valid integer is required."
BAD_UUID: Final = "Must be a valid UUID."
NOT_YOURS: Final = "You can only view your own usage."
NOT_ALLOWED: Final = "You do not have permission to perform this action."
NON_FIELD: Final = "non_field_errors"  # DRF's key for an error of the whole body


# input: coerced the way DRF's IntegerField and UUIDField do ------------------------
_DECIMAL_TAIL: Final = re.compile(r"\.0*\s*$")  # DRF: "12.0" and 12.0 are the integer 12


def _drf_integer(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("invalid", BAD_INTEGER)
    if isinstance(value, str) and len(value) > 1000:
        raise PydanticCustomError("max_string_length", "String value too large.")
    try:
        number = int(_DECIMAL_TAIL.sub("", str(value)))
    except ValueError:
        raise PydanticCustomError("invalid", BAD_INTEGER) from None
    if number < -1:
        raise PydanticCustomError("min_value", "Ensure this value is greater than or equal to -1.")
    if number > MAX_UNITS:
        raise PydanticCustomError(
            "max_value", f"Ensure this value is less than or equal to {MAX_UNITS}."
        )
    return number


def _drf_uuid(value: object) -> object:
    if value is None:
        raise PydanticCustomError("null", NOT_NULL)
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("invalid", BAD_UUID)
    try:
        return UUID(hex=value)  # as DRF: dashes, braces, urn:uuid: and any case
    except ValueError:
        raise PydanticCustomError("invalid", BAD_UUID) from None


def _optional_uuid(value: object) -> object:
    return None if value is None else _drf_uuid(value)


# The bounds sit on the integer itself so the OpenAPI document shows them as such.
LimitIn = Annotated[
    Annotated[int, Field(ge=-1, le=MAX_UNITS)] | None, BeforeValidator(_drf_integer)
]


class SetTokenQuotaRequest(BaseModel):
    """Waldur's ``SetTokenQuotaRequest``. Unknown fields are ignored, as DRF does."""

    model_config = ConfigDict(extra="ignore")

    user_uuid: Annotated[UUID, BeforeValidator(_drf_uuid)] = Field(
        description="UUID of the user to set quota for."
    )
    daily_limit: LimitIn = Field(
        None, description="Daily token limit. Omit or null = system default, -1 = unlimited."
    )
    weekly_limit: LimitIn = Field(
        None, description="Weekly token limit. Omit or null = system default, -1 = unlimited."
    )
    monthly_limit: LimitIn = Field(
        None, description="Monthly token limit. Omit or null = system default, -1 = unlimited."
    )


# output --------------------------------------------------------------------------
def _limit_field(period: str) -> Any:
    return Field(
        description=f"{period.capitalize()} token limit (non-negative integer). "
        "Null uses system default. -1 means unlimited."
    )


class TokenQuotaUsageResponse(BaseModel):
    """Waldur's ``TokenQuotaUsageResponse``: the same fields, names, types and order."""

    daily_limit: int | None = _limit_field("daily")
    daily_usage: int
    daily_remaining: int | None = Field(description="Get remaining daily tokens.")
    daily_reset_at: datetime = Field(description="Calculate next midnight (00:00:00).")
    daily_system_default: int = Field(
        description="Get system default daily token limit from constance config."
    )
    weekly_limit: int | None = _limit_field("weekly")
    weekly_usage: int
    weekly_remaining: int | None = Field(description="Get remaining weekly tokens.")
    weekly_reset_at: datetime = Field(description="Calculate next Monday at midnight.")
    weekly_system_default: int = Field(
        description="Get system default weekly token limit from constance config."
    )
    monthly_limit: int | None = _limit_field("monthly")
    monthly_usage: int
    monthly_remaining: int | None = Field(description="Get remaining monthly tokens.")
    monthly_reset_at: datetime = Field(description="Calculate first day of next month at midnight.")
    monthly_system_default: int = Field(
        description="Get system default monthly token limit from constance config."
    )


class DetailOut(BaseModel):
    """DRF's error shape for 401, 403 and 404 (and an unparsable body)."""

    detail: str


class FieldErrorsOut(RootModel[dict[str, list[str] | str]]):
    """DRF's 400: each field at fault with its messages (``non_field_errors`` for the body)."""


def _errors(extra: dict[int, tuple[type[BaseModel], str]]) -> dict[int | str, dict[str, Any]]:
    """400, 401, 403, 404 and any other error, as DRF shapes them.

    Bad input is a 400 here, never a 422: ``default`` (declared) also keeps FastAPI
    from listing its own 422 body, which this surface never sends.
    """
    texts: dict[int, tuple[type[BaseModel], str]] = {
        401: (DetailOut, "No valid API key"),
        403: (DetailOut, "The key's role or user does not allow this"),
        404: (DetailOut, "Unknown user (only with strict_subjects)"),
        **extra,
    }
    out: dict[int | str, dict[str, Any]] = {
        s: {"model": m, "description": d} for s, (m, d) in sorted(texts.items())
    }
    out["default"] = {
        "model": DetailOut,
        "description": "Any other error, e.g. 503 when the store cannot be reached",
    }
    return out


# errors --------------------------------------------------------------------------
def render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    headers: dict[str, str] | None,
) -> JSONResponse:
    """Every error under ``PREFIXES``, in DRF's shape (registered by the app factory)."""
    if status == 422:  # bad input, from request validation or from the engine
        body: dict[str, Any] = _field_errors(message, details)
        return JSONResponse(body, status_code=400)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Token"}  # DRF's TokenAuthentication
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


# Pydantic's words for what DRF words otherwise.
_DRF_WORDING: Final = {
    "Field required": REQUIRED,
    "Input should be a valid dictionary or object to extract fields from": (
        "Invalid data. Expected a dictionary."
    ),
}


def _field_errors(message: str, details: dict[str, Any]) -> dict[str, Any]:
    problems = details.get("errors")
    if not isinstance(problems, list):  # one engine error: "field: message"
        field = str(details.get("field", "body"))
        problems = [{"field": field, "message": message.removeprefix(f"{field}: ")}]
    out: dict[str, list[str]] = {}
    for problem in problems:
        field, text = str(problem.get("field", "body")), str(problem.get("message", ""))
        if field == "body" and text == "JSON decode error":
            return {"detail": "JSON parse error - the body is not valid JSON"}
        key = NON_FIELD if field == "body" else field
        out.setdefault(key, []).append(_DRF_WORDING.get(text, text))
    return out


# who ---------------------------------------------------------------------------
def staff_caller(caller: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
    """Refused before the body is read, as DRF checks permissions before validating."""
    if caller.role not in STAFF:
        raise Forbidden(NOT_ALLOWED)
    return caller


def user_ref(user_uuid: UUID) -> SubjectRef:
    return SubjectRef("user", str(user_uuid))


def _is_user(subject: SubjectRef, user_uuid: UUID) -> bool:
    if subject.kind != "user":
        return False
    try:
        return UUID(subject.id) == user_uuid
    except ValueError:
        return False


def target(caller: ApiKey, user_uuid: UUID | None) -> SubjectRef:
    """Whose quota: the key's own user, or (staff and admin only) the one named."""
    if user_uuid is None:
        if caller.subject is not None:
            return caller.subject
        if caller.role in STAFF:
            # An admin or staff key is nobody's: it must say whose quota it wants.
            raise ValidationError("user_uuid", REQUIRED)
        raise Forbidden(f"a {caller.role.value} key is not bound to a user")
    own = caller.subject
    if own is not None and _is_user(own, user_uuid):
        return own  # its own, however the key's subject spells the UUID
    if caller.role in STAFF:
        return user_ref(user_uuid)
    raise Forbidden(NOT_YOURS)


# routes ------------------------------------------------------------------------
@router.get(
    "/usage/",
    operation_id="chat_quota_usage_retrieve",
    response_model=TokenQuotaUsageResponse,
    summary="List Chat Quota Usage",
    description=(
        "Current token quota and usage of the requesting user (the user a member key is "
        "bound to), for each period: `limit` is the user's own limit (null = the system "
        "default applies, -1 = unlimited), `usage` the tokens used this period, `remaining` "
        "what is left (null if unlimited), `reset_at` when the period resets, "
        "`system_default` the default for kind `user` (-1 when none is set). Admin and "
        "staff keys name the user in `user_uuid`; another key naming anyone but its own "
        "user is refused with 403."
    ),
    responses=_errors({400: (FieldErrorsOut, "A bad user_uuid, or none from an admin/staff key")}),
)
@runs_on("reads")
def usage(
    caller: Annotated[ApiKey, Depends(authenticate)],
    quota: QuotaDep,
    user_uuid: Annotated[
        UUID | None,
        BeforeValidator(_optional_uuid),
        Query(
            description="UUID of user to view quota for (staff/support only). "
            "Omit to view your own quota."
        ),
    ] = None,
) -> JSONResponse:
    answer = usage_of(quota, target(caller, user_uuid))
    return JSONResponse(answer.model_dump(mode="json"))


@router.post(
    "/set_quota/",
    operation_id="chat_quota_set_quota",
    status_code=200,
    response_class=Response,
    summary="Set token quota for user",
    description=(
        "Sets the user's own token limits (admin and staff). For each of `daily_limit`, "
        "`weekly_limit`, `monthly_limit`: null removes the user's limit so the system "
        "default applies, -1 is unlimited, 0 or more is the cap; a field left out is the "
        'same as null (Waldur: "Omit field or send null: use system default"), so every '
        "call sets all three periods. Usage already counted is kept; the change is "
        "audited. Answers 200 with no body."
    ),
    responses={
        200: {"description": "No response body"},
        **_errors({400: (FieldErrorsOut, "Bad input; each field at fault with its messages")}),
    },
)
def set_quota(
    body: SetTokenQuotaRequest,
    caller: Annotated[ApiKey, Depends(staff_caller)],
    quota: QuotaDep,
) -> Response:
    ref = user_ref(body.user_uuid)
    # Seed 000: "Omit field or send null: use system default". An omitted period is
    # written as null (the override removed) like an explicit null, never kept.
    given = [(f"{period}_limit", window) for period, window in PERIODS]
    items = [
        {"metric": METRIC, "window": window.value, "limit": getattr(body, name)}
        for name, window in given
    ]
    try:
        quota.set_limits(ref, items, actor=actor_of(caller))
    except ValidationError as exc:
        # The engine names fields as limits[i].limit; Waldur names them daily_limit.
        field = _waldur_field(exc.field, [name for name, _ in given])
        raise ValidationError(field, exc.message.removeprefix(f"{exc.field}: ")) from exc
    return Response(status_code=200)


def _waldur_field(field: str, names: list[str]) -> str:
    match = re.fullmatch(r"limits\[(\d+)\](?:\..*)?", field)
    if match and int(match[1]) < len(names):
        return names[int(match[1])]
    return field


# reading -------------------------------------------------------------------------
def usage_of(quota: Quota, ref: SubjectRef) -> TokenQuotaUsageResponse:
    """Waldur's usage answer for one subject: its effective limits, defaults and usage."""
    now_usage = quota.usage(ref)
    statuses = {
        s.window: s
        for s in now_usage.limits
        # Waldur knows one limit per period: the enforced one, never a shadow trial.
        if s.subject == str(ref) and s.metric == METRIC and s.window is not None and not s.shadow
    }
    defaults = _system_defaults(quota, ref.kind)
    unlimited_used = _ledger_usage(
        quota, ref, now_usage.at, [w for _, w in PERIODS if w.value not in statuses]
    )
    fields: dict[str, object] = {}
    for period, window in PERIODS:
        status = statuses.get(window.value)
        if status is not None:
            own = status.limit if status.source == Source.OVERRIDE else None
            used = int(status.used or 0)
            remaining = None if status.remaining is None else int(status.remaining)
            reset_at = status.reset_at or calendar_period(window, now_usage.at, quota.tz)[1]
        else:  # nothing limits this period: no override, plan or default
            own, used, remaining = None, unlimited_used[window], None
            reset_at = calendar_period(window, now_usage.at, quota.tz)[1]
        fields[f"{period}_limit"] = None if own is None else int(own)
        fields[f"{period}_usage"] = used
        fields[f"{period}_remaining"] = remaining
        fields[f"{period}_reset_at"] = reset_at.astimezone(UTC)
        fields[f"{period}_system_default"] = defaults.get(window.value, NO_DEFAULT)
    return TokenQuotaUsageResponse.model_validate(fields)


def _system_defaults(quota: Quota, kind: str) -> dict[str, int]:
    """The default token limit per window for this kind (runtime ones hide the config's)."""
    out: dict[str, int] = {}
    for default in quota.defaults():
        rule = default.rule
        window = rule.key.window
        if (
            default.kind == kind
            and rule.key.metric.value == METRIC
            and window is not None
            and not rule.shadow  # a default on trial is not the default in force
        ):
            out.setdefault(window.key, rule.value)  # tokens: one unit is one token
    return out


def _ledger_usage(
    quota: Quota, ref: SubjectRef, at: datetime, windows: list[Calendar]
) -> dict[Calendar, int]:
    """Tokens used this period in windows that have no counter, summed from the ledger."""
    if not windows:
        return {}
    periods = {w: calendar_period(w, at, quota.tz) for w in windows}
    first = min(start for start, _ in periods.values())
    last = max(end for _, end in periods.values())
    points = [
        p
        for p in quota.history(ref, start=first, end=last, granularity="day")
        if p.metric == METRIC
    ]
    return {
        window: sum(int(p.value) for p in points if start <= p.start < end)
        for window, (start, end) in periods.items()
    }
