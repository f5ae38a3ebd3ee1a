"""Prepaid credits: POST /v1/subjects/{ref}/grants and the list with the balance."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from tokenquota.api.admin_schemas import RefPath, error_responses
from tokenquota.api.schemas import Amount, Model, Num
from tokenquota.domain.keys import Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.http.auth import Caller, QuotaDep, actor_of, require_read, require_role
from tokenquota.http.capacity import runs_on
from tokenquota.wire.ledger import encode_balance, encode_grant

router = APIRouter(prefix="/v1", tags=["grants"])


class GrantIn(Model):
    # Any JSON value: the engine validates it, so `true` or `null` is a 422 naming
    # `credits` rather than a coerced 1 (pydantic's lax mode reads true as 1).
    credits: Amount = Field(
        description="A number or decimal string (not a boolean or null); more than 0, at most "
        "9 decimal places; 422 amount_too_large when the subject's grants would sum past "
        "2^63 - 1 units"
    )
    expires_at: datetime | None = Field(
        None, description="When what is left lapses (ISO 8601 with an offset); null: never"
    )


class GrantOut(Model):
    id: str
    subject: str
    amount: Num
    remaining: Num
    granted_at: datetime
    expires_at: datetime | None
    state: str = Field(description="active, spent or expired")


class BalanceOut(Model):
    subject: str
    remaining: Num
    granted: Num
    next_expiry: datetime | None


class GrantsOut(Model):
    items: list[GrantOut]
    balance: BalanceOut | None = Field(description="null when the subject was never granted")


@router.post(
    "/subjects/{ref}/grants",
    status_code=201,
    response_model=GrantOut,
    summary="Grant prepaid credits",
    description=(
        "From its first grant on, a subject's credit spending in enforce mode must fit its "
        "balance: what is left of its live grants, spent earliest expiry first. What is left "
        "of a grant lapses at `expires_at`. Audited. Admin and staff."
    ),
    responses=error_responses(),
)
def add_grant(ref: RefPath, body: GrantIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, Role.ADMIN, Role.STAFF)
    grant = quota.grant(
        SubjectRef.parse(ref, "ref"),
        body.credits,
        expires_at=body.expires_at,
        actor=actor_of(caller),
    )
    return JSONResponse(encode_grant(grant, quota.clock.now()), status_code=201)


@router.get(
    "/subjects/{ref}/grants",
    response_model=GrantsOut,
    summary="A subject's grants and prepaid balance",
    description="A member key may read its own subject and the subjects below it.",
    responses=error_responses(),
)
@runs_on("reads")
def list_grants(ref: RefPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    now = quota.clock.now()
    wallet = quota.balance(subject)
    return JSONResponse(
        {
            "items": [encode_grant(g, now) for g in quota.grants(subject)],
            "balance": encode_balance(wallet) if wallet else None,
        }
    )
