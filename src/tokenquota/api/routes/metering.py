"""check and consume: the calls an application makes around each LLM request."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenquota.api.schemas import CheckIn, ConsumeIn, DecisionOut, ErrorOut
from tokenquota.domain.decisions import Decision
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine import Quota
from tokenquota.http import logs
from tokenquota.http.auth import Caller, decision_scope, require_consume
from tokenquota.http.capacity import runs_on
from tokenquota.http.errors import error_body
from tokenquota.http.responses import FastJSONResponse, JSONBytesResponse
from tokenquota.wire.decisions import (
    decision_json,
    encode_decision,
    encode_limit_status,
    encode_withheld,
)

router = APIRouter(prefix="/v1", tags=["metering"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No valid API key"},
    403: {"model": ErrorOut, "description": "The key's role may not do this"},
    404: {"model": ErrorOut, "description": "Unknown subject (strict_subjects)"},
    409: {"model": ErrorOut, "description": "Idempotency key reused for another request"},
    422: {"model": ErrorOut, "description": "Bad input; details.field names it"},
}


def engine(request: Request) -> Quota:
    """The app's engine, for the hot routes: read here rather than solved as a
    ``QuotaDep``, one dependency less per request (FastAPI's cost per dependency
    is ~20 us)."""
    quota: Quota = request.app.state.quota
    return quota


def rate_limit_headers(decision: Decision, now: datetime) -> dict[str, str]:
    """IETF RateLimit-* fields for the limit closest to blocking (``Decision.tightest``).

    RateLimit-Reset is never negative: a status whose period has ended is not chosen.
    """
    status = decision.tightest(now)
    if status is None or status.remaining is None:
        return {}
    headers = {"RateLimit-Limit": str(status.limit), "RateLimit-Remaining": str(status.remaining)}
    if status.reset_at is not None:
        seconds = max(0, math.ceil((status.reset_at - now).total_seconds()))
        headers["RateLimit-Reset"] = str(seconds)
    return headers


def _rate_limit_fields(decision: Decision, now: datetime) -> list[tuple[bytes, bytes]]:
    """``rate_limit_headers`` as the raw pairs a response sends for them (``init_headers``
    lower-cases the names and encodes both in latin-1)."""
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in rate_limit_headers(decision, now).items()
    ]


def _seen(request: Request, decision: Decision, operation: str, caller: ApiKey) -> Decision:
    """Count and log the decision; then as much of it as the caller may see (contract §10)."""
    state = request.app.state
    metrics = state.metrics
    metrics.decided(operation, decision.mode.value, decision.allowed)
    logs.decision(request.scope, operation, decision)
    if decision.shadow_blocked:
        metrics.shadow_blocks.inc(len(decision.shadow_blocked))
    if decision.failed_open:
        metrics.failed_open.labels(operation).inc()
    if caller.role is Role.MEMBER:  # staff see everything: no scope to work out
        scope = decision_scope(state.quota, caller, decision)
        if scope is not None:
            return decision.visible_to(scope)
    return decision


def _answer(
    decision: Decision, operation: str, now: datetime
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``decision_answer`` of a decision already counted and cut to what the caller sees."""
    headers = rate_limit_headers(decision, now)
    if decision.allowed or operation == "check":
        return 200, encode_decision(decision), headers
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    body = error_body(
        "quota_exceeded",
        decision.denial(),
        {
            "reason": decision.reason,
            "blocked_by": [encode_limit_status(s) for s in decision.blocked_by],
            "blocked_outside": [encode_withheld(w) for w in decision.blocked_outside],
            "retry_after": decision.retry_after,
            "decision": encode_decision(decision),
        },
    )
    return 429, body, headers


def decision_answer(
    request: Request, decision: Decision, operation: str, caller: ApiKey
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of the answer to a decision, as much of it as the caller
    may see (contract §10); counted in /metrics. As dicts: a hold's 201 nests the body."""
    decision = _seen(request, decision, operation, caller)
    quota: Quota = request.app.state.quota
    return _answer(decision, operation, quota.clock.now())


def decision_response(
    request: Request, decision: Decision, operation: str, caller: ApiKey
) -> JSONResponse:
    """The answer to a decision: 200 with it, or 429 naming what blocked it.

    ``decision_answer``'s status, headers and bytes. A 200 (nearly every answer)
    is encoded straight from the decision (``wire.decisions.decision_json``),
    not through a dict per status: building the answer was most of what the app
    added to a bare endpoint's CPU (docs/performance.md).
    ``tests/api/test_answer_bytes.py`` compares the two ways.
    """
    decision = _seen(request, decision, operation, caller)
    quota: Quota = request.app.state.quota
    now = quota.clock.now()
    if decision.allowed or operation == "check":
        return JSONBytesResponse(decision_json(decision), 200, _rate_limit_fields(decision, now))
    status, body, headers = _answer(decision, operation, now)
    return FastJSONResponse(body, status_code=status, headers=headers)


Responder = Callable[[Request, Decision, str, ApiKey], JSONResponse]


@router.post(
    "/check",
    response_model=DecisionOut,
    summary="The decision a consume would get now, spending nothing",
    responses=ERRORS,
)
@runs_on("decisions")
def check(body: CheckIn, request: Request, caller: Caller) -> JSONResponse:
    return decide_check(body, request, caller)


def decide_check(
    body: CheckIn, request: Request, caller: ApiKey, respond: Responder = decision_response
) -> JSONResponse:
    """The route's work, on a decision thread; ``http.fastpath`` calls it too.
    ``respond`` makes the answer (tests compare ``decision_response`` with another)."""
    ref = SubjectRef.parse(body.subject)
    require_consume(caller, ref)
    decision = engine(request).check(
        ref, body.amounts, timestamp=body.timestamp, resource=body.resource
    )
    return respond(request, decision, "check", caller)


@router.post(
    "/consume",
    response_model=DecisionOut,
    summary="Spend for a subject and every ancestor, all or nothing",
    description=(
        "enforce (default): admitted only if every limit of the subject and its ancestors "
        "admits it; otherwise 429 with Retry-After and the blocking limits, and nothing is "
        "charged; `reason: exceeds_limit` (and no Retry-After) when the amount alone is "
        "more than a limit's whole size. A member key sees only its own subtree's limits: "
        "an ancestor's refusal is an entry of `blocked_outside` without its figures. "
        "record: usage that already happened, always stored. A retry with the same "
        "idempotency_key returns the first answer and charges nothing."
    ),
    responses={
        **ERRORS,
        429: {"model": ErrorOut, "description": "Denied: details name the blocking limits"},
    },
)
@runs_on("decisions")
def consume(body: ConsumeIn, request: Request, caller: Caller) -> JSONResponse:
    return decide_consume(body, request, caller)


def decide_consume(
    body: ConsumeIn, request: Request, caller: ApiKey, respond: Responder = decision_response
) -> JSONResponse:
    """The route's work, on a decision thread; ``http.fastpath`` calls it too.
    ``respond`` makes the answer (tests compare ``decision_response`` with another)."""
    ref = SubjectRef.parse(body.subject)
    require_consume(caller, ref)
    decision = engine(request).consume(
        ref,
        body.amounts,
        mode=body.mode,
        idempotency_key=body.idempotency_key,
        timestamp=body.timestamp,
        model=body.model,
        tags=body.tags,
        resource=body.resource,
    )
    return respond(request, decision, "consume", caller)
