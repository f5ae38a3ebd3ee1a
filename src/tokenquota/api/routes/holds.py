"""Reservations and leases: budget held while an LLM call runs (contract §5).

A reservation holds an estimate, then ``commit`` replaces it by what the call
really used, or ``release`` frees it; a lease holds one concurrent_requests
slot. Both lapse by themselves at ``expires_at``. A refused reserve or acquire
is a 429 exactly like a refused consume (``metering.decision_response``).

Roles are those of consume: admin and service for any subject, a member key
only for its own subject, staff never. For the operations on an id, the rule
is applied to the subject of the stored reservation or lease, and a staff key
is refused before anything is looked up.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenquota.api.admin_schemas import error_responses
from tokenquota.api.holds_schemas import (
    AcquiredOut,
    AcquireIn,
    CommitIn,
    HeartbeatIn,
    LeaseOut,
    LeasePath,
    ReleasedOut,
    ReservationOut,
    ReservationPath,
    ReservedOut,
    ReserveIn,
)
from tokenquota.api.routes.metering import decision_answer, decision_response, engine
from tokenquota.api.schemas import DecisionOut
from tokenquota.domain.decisions import Decision
from tokenquota.domain.errors import Forbidden
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine import Quota
from tokenquota.http.auth import Caller, require_consume, require_role
from tokenquota.http.capacity import runs_on
from tokenquota.http.responses import FastJSONResponse
from tokenquota.wire.holds import encode_lease, encode_reservation

router = APIRouter(prefix="/v1")

HOLDERS = (Role.ADMIN, Role.SERVICE, Role.MEMBER)
CREATE_ERRORS = error_responses(
    {
        404: "Unknown subject (only with strict_subjects)",
        429: "Refused: details name the blocking limits; Retry-After says when to try again",
    }
)


def _created(
    request: Request,
    caller: ApiKey,
    decision: Decision,
    operation: str,
    name: str,
    hold: dict[str, Any] | None,
) -> JSONResponse:
    """201 with the hold and the decision; a refusal (no hold) is decision_response's 429.

    The 201 reuses decision_response's body, so a member sees the same part of the
    decision either way.
    """
    status, body, headers = decision_answer(request, decision, operation, caller)  # counted
    if hold is None:
        return FastJSONResponse(body, status_code=status, headers=headers)
    headers = {k: v for k, v in headers.items() if k.startswith("RateLimit-")}
    return FastJSONResponse({name: hold, "decision": body}, status_code=201, headers=headers)


def _reservation(quota: Quota, caller: ApiKey, reservation_id: str) -> Reservation:
    require_role(caller, *HOLDERS)
    reservation = quota.get_reservation(reservation_id)
    _require_holder(caller, reservation.subject, "reservation")
    return reservation


def _lease(quota: Quota, caller: ApiKey, lease_id: str) -> Lease:
    require_role(caller, *HOLDERS)
    lease = quota.get_lease(lease_id)
    _require_holder(caller, lease.subject, "lease")
    return lease


def _require_holder(caller: ApiKey, subject: SubjectRef, what: str) -> None:
    """require_consume, without naming the hold's subject: the caller sent only an id,
    and a member must not learn whose hold it is (contract §10)."""
    try:
        require_consume(caller, subject)
    except Forbidden:
        raise Forbidden(f"this key may not use this {what}") from None


# reservations -----------------------------------------------------------------------
@router.post(
    "/reservations",
    tags=["reservations"],
    status_code=201,
    response_model=ReservedOut,
    summary="Hold an estimate before an LLM call",
    description=(
        "All or nothing across the subject, its ancestors and every limit, like a consume "
        "in enforce mode; the held amounts count as used for every other caller until "
        "commit, release or `ttl` seconds pass. Refused: 429 with Retry-After (also when "
        "other holds lapse) and the blocking limits, and nothing is held. Admin and service "
        "for any subject; a member key for its own subject."
    ),
    responses=CREATE_ERRORS,
)
@runs_on("decisions")
def reserve(body: ReserveIn, request: Request, caller: Caller) -> JSONResponse:
    quota = engine(request)
    ref = SubjectRef.parse(body.subject)
    require_consume(caller, ref)
    reserved = quota.reserve(ref, body.amounts, ttl=body.ttl, resource=body.resource)
    hold = reserved.reservation
    wire = encode_reservation(hold, quota.clock.now()) if hold is not None else None
    return _created(request, caller, reserved.decision, "reserve", "reservation", wire)


@router.get(
    "/reservations/{reservation_id}",
    tags=["reservations"],
    response_model=ReservationOut,
    summary="One reservation and its state",
    description="state: held, committed, released or expired (lapsed by itself).",
    responses=error_responses({404: "Unknown reservation"}),
)
@runs_on("decisions")
def get_reservation(
    reservation_id: ReservationPath, request: Request, caller: Caller
) -> JSONResponse:
    quota = engine(request)
    reservation = _reservation(quota, caller, reservation_id)
    return FastJSONResponse(encode_reservation(reservation, quota.clock.now()))


@router.post(
    "/reservations/{reservation_id}/commit",
    tags=["reservations"],
    response_model=DecisionOut,
    summary="Replace the hold by what the call really used",
    description=(
        "Records the actual amounts (more or less than held; never refused) as a consume "
        "in record mode and frees the hold. Without amounts, the held estimate is "
        "recorded. A repeat answers the first commit's decision with `replayed: true` and "
        "charges nothing more. After release or expiry: 409 `hold_closed` (record the "
        "usage with a consume in record mode instead)."
    ),
    responses=error_responses(
        {404: "Unknown reservation", 409: "hold_closed: released, or expired"}
    ),
)
@runs_on("decisions")
def commit(
    reservation_id: ReservationPath,
    request: Request,
    caller: Caller,
    body: CommitIn | None = None,
) -> JSONResponse:
    quota = engine(request)
    _reservation(quota, caller, reservation_id)
    decision = quota.commit(reservation_id, body.amounts if body is not None else None)
    return decision_response(request, decision, "commit", caller)


@router.delete(
    "/reservations/{reservation_id}",
    tags=["reservations"],
    response_model=ReleasedOut,
    summary="Free a hold now",
    description=(
        "`released: false` when there was nothing left to free (already committed or "
        "released): a no-op, so a retry is safe."
    ),
    responses=error_responses({404: "Unknown reservation"}),
)
@runs_on("decisions")
def release(reservation_id: ReservationPath, request: Request, caller: Caller) -> JSONResponse:
    quota = engine(request)
    _reservation(quota, caller, reservation_id)
    return JSONResponse({"released": quota.release(reservation_id)})


# leases -----------------------------------------------------------------------------
@router.post(
    "/leases",
    tags=["leases"],
    status_code=201,
    response_model=AcquiredOut,
    summary="Take a concurrency slot",
    description=(
        "One concurrent_requests slot on the subject and every ancestor, until released or "
        "`ttl` seconds pass (extend it with a heartbeat), so a crashed client cannot hold a "
        "slot forever. Full: 429 with Retry-After (when the next lease lapses) and the "
        "blocking limits. Admin and service for any subject; a member key for its own."
    ),
    responses=CREATE_ERRORS,
)
@runs_on("decisions")
def acquire(body: AcquireIn, request: Request, caller: Caller) -> JSONResponse:
    quota = engine(request)
    ref = SubjectRef.parse(body.subject)
    require_consume(caller, ref)
    acquired = quota.acquire(ref, ttl=body.ttl, resource=body.resource)
    wire = encode_lease(acquired.lease, quota.clock.now()) if acquired.lease is not None else None
    return _created(request, caller, acquired.decision, "acquire", "lease", wire)


@router.get(
    "/leases/{lease_id}",
    tags=["leases"],
    response_model=LeaseOut,
    summary="One lease and its state",
    description="state: held, released or expired (lapsed by itself).",
    responses=error_responses({404: "Unknown lease"}),
)
@runs_on("decisions")
def get_lease(lease_id: LeasePath, request: Request, caller: Caller) -> JSONResponse:
    quota = engine(request)
    return FastJSONResponse(encode_lease(_lease(quota, caller, lease_id), quota.clock.now()))


@router.post(
    "/leases/{lease_id}/heartbeat",
    tags=["leases"],
    response_model=LeaseOut,
    summary="Keep a lease alive",
    description=(
        "Moves `expires_at` to `ttl` seconds from now. A lease that has lapsed or was "
        "released is gone: 409 `hold_closed`; acquire a new one."
    ),
    responses=error_responses({404: "Unknown lease", 409: "hold_closed: released, or expired"}),
)
@runs_on("decisions")
def heartbeat(
    lease_id: LeasePath, request: Request, caller: Caller, body: HeartbeatIn | None = None
) -> JSONResponse:
    quota = engine(request)
    _lease(quota, caller, lease_id)
    lease = quota.heartbeat(lease_id, ttl=(body or HeartbeatIn()).ttl)
    return FastJSONResponse(encode_lease(lease, quota.clock.now()))


@router.delete(
    "/leases/{lease_id}",
    tags=["leases"],
    response_model=ReleasedOut,
    summary="Give a concurrency slot back",
    description="`released: false` when it was released already: a no-op.",
    responses=error_responses({404: "Unknown lease"}),
)
@runs_on("decisions")
def release_lease(lease_id: LeasePath, request: Request, caller: Caller) -> JSONResponse:
    quota = engine(request)
    _lease(quota, caller, lease_id)
    return JSONResponse({"released": quota.release_lease(lease_id)})
