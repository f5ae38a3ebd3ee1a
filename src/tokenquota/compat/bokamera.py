"""BokaMera's "AI chat usage" API (contract §8; seeds 001 and 003), answered by the engine.

- ``GET /assistant/ai-chat/usage?CompanyId=`` reads ``usage(company:<uuid>)``: the
  company's ``tokens`` limit on ``rolling:<WindowDays>d`` (30 days unless told, or
  unless the company's only rolling token limits are of another length).
- ``POST /assistant/ai-chat/usage`` ``{"TokensUsed"}`` is a ``consume`` in ``record``
  mode by the caller (a member key's own subject, so its company is charged through
  the hierarchy; an admin or service key's named company), then the same read.
- ``CompanyId`` omitted: the key's own company, i.e. its subject when that is a
  company, else its nearest ancestor of kind ``company``.
- Every error under ``PREFIXES`` leaves as ServiceStack's ``{"ResponseStatus": ...}``
  (``render_error``), bad input with 400.

Nothing is stored here: a limit set natively on ``company:<uuid>`` is the one
shown, and tokens recorded here are ordinary ledger events. The mapping, and
where it differs from BokaMera, is in docs/compat/bokamera.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic.alias_generators import to_pascal

from tokenquota.domain.decisions import LimitStatus, Mode
from tokenquota.domain.errors import Forbidden, ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import MAX_ROLLING_SECONDS, Window
from tokenquota.engine import Quota
from tokenquota.http.auth import Caller, QuotaDep, require_consume
from tokenquota.http.capacity import runs_on
from tokenquota.http.errors import Renderer

PREFIXES: tuple[str, ...] = ("/assistant/ai-chat/",)
PATH: Final = "/assistant/ai-chat/usage"
TAG: Final = "compat: BokaMera"

COMPANY: Final = "company"
DAY_SECONDS: Final = 86_400
DEFAULT_WINDOW_DAYS: Final = 30
MAX_WINDOW_DAYS: Final = MAX_ROLLING_SECONDS // DAY_SECONDS
INT32_MAX: Final = 2**31 - 1  # TokenLimit is an Int32 in BokaMera's DTOs
# TokensRemaining without a limit: the largest integer every JSON parser reads exactly
# (as the Captain Data surface does), so a client that stops at 0 never stops.
UNCAPPED_REMAINING: Final = 2**53 - 1

router = APIRouter(tags=[TAG])


# wire models ---------------------------------------------------------------------------
class _Pascal(BaseModel):
    """snake_case in Python, PascalCase on the wire, as ServiceStack's DTOs are."""

    model_config = ConfigDict(alias_generator=to_pascal, validate_by_name=True)


class BokaMeraResponseError(_Pascal):
    error_code: str = Field(description="What is wrong, e.g. NotEmpty or GreaterThanOrEqual")
    field_name: str = Field(description="The request field at fault, as BokaMera names it")
    message: str


class BokaMeraResponseStatus(_Pascal):
    error_code: str = Field(description="Unauthorized, Forbidden, NotFound, or a field error code")
    message: str
    errors: list[BokaMeraResponseError] = Field(
        default_factory=list, description="One entry per bad field (400 only)"
    )


class BokaMeraErrorResponse(_Pascal):
    response_status: BokaMeraResponseStatus


class AiChatUsageResponse(_Pascal):
    """The seed's ``AiChatUsageResponse``; ``ResponseStatus`` is sent only with errors."""

    company_id: str = Field(
        description="The company the usage applies to (the id of subject company:<id>)",
        json_schema_extra={"format": "uuid"},
    )
    tokens_used: int = Field(description="Tokens consumed within the current rolling window")
    token_limit: int = Field(
        description=(
            "The company's token limit for the window. An Int32: a larger limit, or none at "
            f"all (no limit, or -1 = unlimited), is reported as {INT32_MAX}"
        )
    )
    tokens_remaining: int = Field(
        description=(
            "Tokens remaining before the limit is reached (never negative); "
            f"{UNCAPPED_REMAINING} when the company has no limit on this window"
        )
    )
    is_within_budget: bool = Field(
        description="True while the company is still below its token limit (always with none)"
    )
    window_days: int = Field(description="Length of the rolling usage window, in days")
    response_status: BokaMeraResponseStatus | None = Field(None, description="Only on errors")


class RecordAiChatUsage(_Pascal):
    """The seed's ``RecordAiChatUsage``; field names are matched case-insensitively."""

    company_id: UUID | None = Field(
        None,
        description=(
            "The company id. Defaults to the logged-in user's company when omitted. "
            "May also be sent in the query string"
        ),
    )
    # At most 2**63 - 1, as every amount; the engine checks that (as amounts.tokens).
    tokens_used: int = Field(
        ge=0, description="Number of tokens consumed by the chat turn (input + output)"
    )
    window_days: int | None = Field(
        None,
        ge=1,
        le=MAX_WINDOW_DAYS,
        description="tokenquota extension: the rolling window to answer for (see GET)",
    )

    @field_validator("tokens_used", "window_days", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # JSON true is no count of anything, though Python would take it for 1.
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true or false")
        return value

    @model_validator(mode="before")
    @classmethod
    def _any_case(cls, data: Any) -> Any:
        # ServiceStack binds request fields case-insensitively (its JS and Python
        # clients send camelCase), so "tokensUsed" and "TOKENSUSED" are TokensUsed.
        if not isinstance(data, dict):
            return data
        known = {(f.alias or name).lower(): f.alias or name for name, f in cls.model_fields.items()}
        return {known.get(str(key).lower(), key): value for key, value in data.items()}


CompanyIdValue = UUID
WindowDaysValue = Annotated[int, Field(ge=1, le=MAX_WINDOW_DAYS)]
CompanyIdQuery = Annotated[
    CompanyIdValue | None,
    Query(
        alias="CompanyId",
        description="The company id. Defaults to the logged-in user's company when omitted.",
    ),
]
WindowDaysQuery = Annotated[
    WindowDaysValue | None,
    Query(
        alias="WindowDays",
        description=(
            "tokenquota extension: the rolling window in days. Without it: 30, unless the "
            "company's only rolling token limits are of another length (then the tightest)"
        ),
    ),
]

_ERROR_TEXT: Final[dict[int | str, str]] = {
    400: "Bad input: ResponseStatus.Errors[].FieldName names the field; nothing is changed",
    401: "You were unauthorized to call this service (no valid API key)",
    403: "The key may not read or charge that company",
    404: "Unknown company (only with strict_subjects)",
    503: "The store cannot be reached",
    # Declared so that the document promises no 422: this surface answers bad input with 400.
    "4XX": "Any other client error, in the same shape",
}
ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": BokaMeraErrorResponse, "description": text}
    for status, text in _ERROR_TEXT.items()
}


# routes -------------------------------------------------------------------------------
@router.get(
    PATH,
    response_model=AiChatUsageResponse,
    summary="Get the AI assistant token usage and limit for a company",
    description=(
        "How many tokens the company has consumed in the current rolling window, its limit "
        "and whether it is still within budget. Defaults to the caller's company when no "
        "CompanyId is supplied; a member key may name only its own company."
    ),
    operation_id="GetAiChatUsage",
    responses=ERRORS,
)
@runs_on("reads")
def get_ai_chat_usage(
    request: Request,
    caller: Caller,
    quota: QuotaDep,
    company_id: CompanyIdQuery = None,
    window_days: WindowDaysQuery = None,
) -> JSONResponse:
    named = _query(request, "CompanyId", company_id, _COMPANY_ID)
    days = _query(request, "WindowDays", window_days, _WINDOW_DAYS)
    company = _company(quota, caller, named)
    return JSONResponse(_usage(quota, company, days))


@router.post(
    PATH,
    response_model=AiChatUsageResponse,
    summary="Record AI assistant token usage for a company",
    description=(
        "Records the tokens of one chat turn (input + output) and returns the updated "
        "usage. The usage is recorded, never refused: past the limit the answer says "
        "IsWithinBudget false and TokensRemaining 0. A member key's tokens are charged to "
        "its own subject (and so to its company through the hierarchy); an admin or "
        "service key's to the named company."
    ),
    operation_id="RecordAiChatUsage",
    responses=ERRORS,
)
@runs_on("decisions")
def record_ai_chat_usage(
    body: RecordAiChatUsage,
    request: Request,
    caller: Caller,
    quota: QuotaDep,
    company_id: CompanyIdQuery = None,
    window_days: WindowDaysQuery = None,
) -> JSONResponse:
    named = _either(
        "CompanyId", body.company_id, _query(request, "CompanyId", company_id, _COMPANY_ID)
    )
    days = _either(
        "WindowDays", body.window_days, _query(request, "WindowDays", window_days, _WINDOW_DAYS)
    )
    company = _company(quota, caller, named)
    quota.consume(_charged(caller, company), {"tokens": body.tokens_used}, mode=Mode.RECORD)
    return JSONResponse(_usage(quota, company, days))


# translation --------------------------------------------------------------------------
T = TypeVar("T")
_COMPANY_ID: Final = TypeAdapter(CompanyIdValue)
_WINDOW_DAYS: Final = TypeAdapter(WindowDaysValue)


def _query(request: Request, name: str, declared: T | None, adapter: TypeAdapter[T]) -> T | None:
    """The parameter as FastAPI parsed it, or else under another casing (ServiceStack's way)."""
    if declared is not None:
        return declared
    for key, raw in request.query_params.multi_items():
        if key != name and key.lower() == name.lower():
            try:
                return adapter.validate_python(raw)
            except PydanticValidationError as exc:
                raise ValidationError(name, str(exc.errors()[0]["msg"])) from None
    return None


def _either(name: str, in_body: T | None, in_query: T | None) -> T | None:
    if in_body is not None and in_query is not None and in_body != in_query:
        raise ValidationError(name, "is given in the query string and the body with other values")
    return in_body if in_body is not None else in_query


def _own_company(quota: Quota, caller: ApiKey) -> SubjectRef | None:
    """A member key's company: its subject if that is one, else its nearest company ancestor."""
    subject = caller.subject
    if subject is None:
        return None
    if subject.kind == COMPANY:
        return subject
    return next((a for a in quota.ancestors(subject) if a.kind == COMPANY), None)


def _company(quota: Quota, caller: ApiKey, named: UUID | None) -> SubjectRef:
    own = _own_company(quota, caller)
    if named is None or named.int == 0:
        # ServiceStack clients send Guid.Empty for a Guid left unset: the default company.
        if own is None:
            raise ValidationError(
                "CompanyId",
                "is required: this key is not bound to a company or to a member of one",
            )
        return own
    if own is not None and _uuid(own.id) == named:
        return own  # the stored id, whatever its spelling of the UUID
    if caller.role is Role.MEMBER:
        raise Forbidden(f"this key may only use its own company, not {named}")
    return SubjectRef(COMPANY, str(named))


def _charged(caller: ApiKey, company: SubjectRef) -> SubjectRef:
    """Who a recorded turn is charged to: a member's own subject, else the company."""
    if caller.role is Role.MEMBER and caller.subject is not None:
        return caller.subject  # _company has checked that this is the member's company
    require_consume(caller, company)
    return company


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def _rolling_days(status: LimitStatus, company: SubjectRef) -> int | None:
    """The length in days of an enforcing ``tokens`` limit of the company on a rolling window."""
    if (
        status.subject != str(company)
        or status.metric != Metric.TOKENS.value
        or status.window is None
        or status.shadow  # a trial limit: a client would enforce it, and it must not bite
    ):
        return None
    window = Window.parse(status.window)
    if not window.is_rolling or window.rolling_seconds % DAY_SECONDS:
        return None
    return window.rolling_seconds // DAY_SECONDS


def _tightness(status: LimitStatus) -> tuple[bool, bool, int]:
    """Sorts the limit that binds first first: already over, then the least remaining."""
    remaining = status.remaining
    return status.within_limit, remaining is None, int(remaining or 0)


def _budgets(statuses: Iterable[LimitStatus], company: SubjectRef) -> dict[int, LimitStatus]:
    budgets: dict[int, LimitStatus] = {}
    for status in statuses:
        days = _rolling_days(status, company)
        if days is not None and (
            days not in budgets or _tightness(status) < _tightness(budgets[days])
        ):
            budgets[days] = status
    return budgets


def _usage(quota: Quota, company: SubjectRef, window_days: int | None) -> dict[str, Any]:
    usage = quota.usage(company)
    budgets = _budgets(usage.limits, company)
    if window_days is not None:
        days = window_days
    elif DEFAULT_WINDOW_DAYS in budgets or not budgets:
        days = DEFAULT_WINDOW_DAYS
    else:
        days = min(budgets, key=lambda d: (_tightness(budgets[d]), d))
    status = budgets.get(days)
    if status is None or status.limit == UNLIMITED:
        used = int(status.used or 0) if status else _ledger_tokens(quota, company, days, usage.at)
        limit, remaining, within = INT32_MAX, UNCAPPED_REMAINING, True
    else:
        used = int(status.used or 0)
        limit = min(int(status.limit), INT32_MAX)
        remaining = int(status.remaining or 0)
        within = status.within_limit
    answer = AiChatUsageResponse(
        company_id=str(_uuid(company.id) or company.id),
        tokens_used=used,
        token_limit=limit,
        tokens_remaining=remaining,
        is_within_budget=within,
        window_days=days,
    )
    return answer.model_dump(mode="json", by_alias=True, exclude={"response_status"})


def _ledger_tokens(quota: Quota, company: SubjectRef, days: int, now: datetime) -> int:
    """Tokens in a rolling window no limit names, so no counter keeps: summed from the ledger.

    The same buckets a limit on that window would sum, so the answer does not change
    when a limit is set on it later.
    """
    window = Window.parse(f"rolling:{days}d")
    first, last = window.read_range(now, quota.tz)
    start = datetime.fromtimestamp(first, UTC)
    end = datetime.fromtimestamp(last + window.bucket_seconds, UTC)
    return sum(
        event.amounts[Metric.TOKENS]
        for event in quota.iter_events(subject=company, start=start, end=end)
        if event.is_usage
    )


# errors -------------------------------------------------------------------------------
_STATUS_CODES: Final = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}
# Engine field names, as this surface's request names them.
_FIELDS: Final = {
    "subject": "CompanyId",
    "amounts": "TokensUsed",
    "amounts.tokens": "TokensUsed",
    "tokens": "TokensUsed",
    "window": "WindowDays",
}


def _field_name(field: str) -> str:
    if field in _FIELDS:
        return _FIELDS[field]
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[._\[\]]+", field) if part)


def _field_code(message: str) -> str:
    """ServiceStack's validator names for the common cases; anything else is InvalidValue."""
    text = message.lower()
    if "required" in text:
        return "NotEmpty"
    if "greater than or equal" in text:
        return "GreaterThanOrEqual"
    if "less than or equal" in text:
        return "LessThanOrEqual"
    return "InvalidValue"


def _field_errors(message: str, details: dict[str, Any]) -> list[BokaMeraResponseError]:
    problems = details.get("errors")
    if not isinstance(problems, list) or not problems:
        field = str(details.get("field") or "body")
        text = message.removeprefix(f"{field}: ")
        problems = [{"field": field, "message": text}]
    errors = []
    for problem in problems:
        name = _field_name(str(problem.get("field") or "body"))
        text = str(problem.get("message") or "is not valid")
        errors.append(
            BokaMeraResponseError(
                error_code=_field_code(text), field_name=name, message=f"{name}: {text}"
            )
        )
    return errors


def _render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    headers: dict[str, str] | None,
) -> JSONResponse:
    """ServiceStack's error shape; bad input (a 422 anywhere else) is its 400."""
    if status == 422:
        status = 400
    if status == 400:
        errors = _field_errors(message, details)
        top = BokaMeraResponseStatus(
            error_code=errors[0].error_code, message=errors[0].message, errors=errors
        )
    else:
        top = BokaMeraResponseStatus(error_code=_STATUS_CODES.get(status, code), message=message)
    body = BokaMeraErrorResponse(response_status=top).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=status, headers=headers)


render_error: Renderer = _render_error
