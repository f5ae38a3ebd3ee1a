"""Shared-capacity quotas on protected resources (contract §6).

The quota is validated by the engine (``domain.resources``), which names the
field at fault, e.g. ``policies[1].reserved``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, Field

from tokenquota.api.admin_schemas import RefPath, error_responses
from tokenquota.api.schemas import Model, Num
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import SubjectRef
from tokenquota.http.auth import READERS, WRITERS, Caller, QuotaDep, actor_of, require_role
from tokenquota.wire.catalog import encode_resource_quota

router = APIRouter(prefix="/v1", tags=["resources"])


def _no_bool(value: Any) -> Any:
    # A lax union would read JSON true as 1 (all the capacity) before the engine sees it.
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string, not true or false")
    return value


# A share in [0, 1] as a number or a decimal string; the engine checks the value.
Share = Annotated[int | float | str | None, BeforeValidator(_no_bool)]


class ResourceRuleIn(Model):
    metric: Literal["requests", "tokens", "concurrent_requests", "input_sequence_length"]
    window: Literal["minute", "hour", "day"] | None = Field(
        None, description="Required for requests and tokens; none for the other two"
    )
    # Strict, as every number here: JSON true and false are no numbers, though a lax
    # int would read them as 1 and 0 and store a limit nobody asked for.
    limit: int = Field(ge=0, le=2**63 - 1, strict=True)


class PolicyIn(Model):
    consumer: str = Field(description="The consuming subject, kind:id", max_length=200)
    rules: list[ResourceRuleIn] = Field(max_length=100)
    reserved: Share = Field(None, description="Share of capacity kept for this consumer, in [0, 1]")


class CapacityIn(Model):
    value: int = Field(ge=0, le=2**63 - 1, strict=True, description="Total per calendar minute")
    units: Literal["requests", "tokens"]


class QuotaIn(Model):
    default_rules: list[ResourceRuleIn] = Field(default_factory=list, max_length=100)
    policies: list[PolicyIn] = Field(default_factory=list, max_length=10_000)
    capacity: CapacityIn | None = None
    saturation_threshold: Share = Field(None, description="In [0, 1]; null means never saturated")


class ResourceRuleOut(Model):
    metric: str
    window: str | None
    limit: int


class PolicyOut(Model):
    consumer: str
    rules: list[ResourceRuleOut]
    reserved: Num | None


class CapacityOut(Model):
    value: int
    units: str


class QuotaOut(Model):
    resource: str
    default_rules: list[ResourceRuleOut]
    policies: list[PolicyOut]
    capacity: CapacityOut | None
    saturation_threshold: Num | None


def quota_wire(resource: SubjectRef, quota: ResourceQuota) -> dict[str, Any]:
    return {"resource": str(resource), **encode_resource_quota(quota)}


@router.get(
    "/resources/{ref}/quota",
    response_model=QuotaOut,
    summary="A resource's shared-capacity quota",
    responses=error_responses({404: "No quota on this resource"}),
)
def get_quota(ref: RefPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    resource = SubjectRef.parse(ref, "ref")
    return JSONResponse(quota_wire(resource, quota.get_resource_quota(resource)))


@router.put(
    "/resources/{ref}/quota",
    response_model=QuotaOut,
    summary="Set a resource's shared-capacity quota",
    description=(
        "Replaces the whole quota: per-consumer `default_rules`, `policies` (per-consumer "
        "rules and a `reserved` share in [0, 1], shares summing to at most 1), `capacity` "
        "per calendar minute and `saturation_threshold`. A consume, check, reservation or "
        "lease that names the resource is held to it. Usage already counted is kept. "
        "Audited. Admin and staff."
    ),
    responses=error_responses(),
)
def put_quota(ref: RefPath, body: QuotaIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    resource = SubjectRef.parse(ref, "ref")
    parsed = quota.set_resource_quota(resource, body.model_dump(), actor=actor_of(caller))
    return JSONResponse(quota_wire(resource, parsed))


@router.delete(
    "/resources/{ref}/quota",
    status_code=204,
    response_class=Response,
    summary="Remove a resource's quota",
    description="Usage already counted is kept. Audited. Admin and staff.",
    responses=error_responses({404: "No quota on this resource"}),
)
def delete_quota(ref: RefPath, caller: Caller, quota: QuotaDep) -> Response:
    require_role(caller, *WRITERS)
    quota.delete_resource_quota(SubjectRef.parse(ref, "ref"), actor=actor_of(caller))
    return Response(status_code=204)
