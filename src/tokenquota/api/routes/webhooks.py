"""Webhook endpoints and their deliveries: /v1/webhooks and /v1/deliveries (docs/webhooks.md).

Admin and staff keys manage every endpoint; a member key manages its own, which
belong to its subject and get only events of its subtree (contract §10); a
service key, which spends for others, has no use for them (403). Another
member's endpoint, or one of staff, is a 404 to a member, as if it did not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool

from tokenquota.api.admin_schemas import LimitQuery, OffsetQuery, RefPath, error_responses
from tokenquota.api.schemas import Model
from tokenquota.domain.errors import Conflict
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Page
from tokenquota.domain.webhooks import Delivery
from tokenquota.engine.webhooks import Webhooks, deliveries_seen_by
from tokenquota.http.auth import Caller, QuotaDep, actor_of, require_read, require_role
from tokenquota.wire.views import encode_page
from tokenquota.wire.webhooks import encode_alert, encode_delivery, encode_endpoint

router = APIRouter(prefix="/v1", tags=["webhooks"])

EndpointPath = Annotated[str, Path(description="The endpoint's id, wh_...", max_length=64)]
DeliveryPath = Annotated[str, Path(description="The delivery's id, a whole number", max_length=32)]
EVENT_TYPES = "threshold.crossed, limit.denied, shadow.blocked"


class EndpointIn(Model):
    url: str = Field(description="Where events are POSTed: http:// or https://, at most 2048")
    events: list[str] | None = Field(
        None, description=f"The event types to send (default all): {EVENT_TYPES}"
    )
    description: str | None = Field(None, description="Free text, at most 256 characters")
    secret: str | None = Field(
        None,
        description="Your own signing secret (16 to 256 printable ASCII characters), kept "
        "sealed; left out, one is derived from the server's key",
    )


class EndpointPatch(Model):
    enabled: StrictBool = Field(description="false stops deliveries to it; true resumes them")


class SecretIn(Model):
    secret: str | None = Field(
        None,
        description="Your own signing secret (16 to 256 printable ASCII characters); left "
        "out, the server makes a fresh random one. Kept sealed either way",
    )


class EndpointOut(Model):
    id: str
    url: str
    events: list[str]
    owner: str | None = Field(description="The member subject that made it; null: staff's")
    description: str | None
    enabled: bool
    secret_source: str = Field(description="derived (from the server's key) or supplied")
    created_at: datetime
    disabled_at: datetime | None
    secret: str | None = Field(None, description="Only when created, and from /secret")


class EndpointsOut(Model):
    items: list[EndpointOut]


class SecretOut(Model):
    id: str
    secret: str


class DeliveryOut(Model):
    id: int
    event_id: int
    endpoint_id: str
    status: str = Field(description="pending, delivered or failed (the dead letter)")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried next, if pending")
    last_status: int | None = Field(description="The HTTP status the last attempt got")
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveriesOut(Model):
    items: list[DeliveryOut]
    total: int
    offset: int
    limit: int


class AlertOut(Model):
    id: int
    type: str = Field(description=EVENT_TYPES)
    created_at: datetime = Field(description="When the decision that caused it was made")
    data: dict[str, Any] = Field(
        description="subject, metric, window, period_start, threshold, used, limit, reset_at: "
        "the body a webhook delivery carries (docs/webhooks.md)"
    )
    deliveries: list[DeliveryOut] = Field(
        description="Its deliveries: all of them for admin and staff, to its own endpoints "
        "for a member"
    )


class AlertsOut(Model):
    items: list[AlertOut]
    total: int
    offset: int
    limit: int


def _webhooks(request: Request, caller: ApiKey) -> tuple[Webhooks, str | None]:
    """The app's webhooks and whose endpoints the caller sees (None: every one)."""
    require_role(caller, Role.ADMIN, Role.STAFF, Role.MEMBER)
    webhooks: Webhooks | None = request.app.state.webhooks
    if webhooks is None:
        raise Conflict("this store keeps no webhooks")
    return webhooks, (str(caller.subject) if caller.role is Role.MEMBER else None)


@router.post(
    "/webhooks",
    status_code=201,
    response_model=EndpointOut,
    summary="Register a webhook endpoint",
    description=(
        "Alert events are POSTed to `url`, signed (docs/webhooks.md). The answer shows the "
        "signing secret. 409 webhook_key_unset when the server has no webhook_key. "
        "Admin, staff and member keys; a member's endpoint gets only its subtree's events."
    ),
    responses=error_responses({409: "webhook_key_unset: the server has no webhook key"}),
)
def create_endpoint(body: EndpointIn, request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    endpoint, secret = webhooks.create(
        body.url,
        events=body.events,
        description=body.description,
        secret=body.secret,
        owner=owner,
        actor=actor_of(caller),
    )
    return JSONResponse(encode_endpoint(endpoint, secret), status_code=201)


@router.get(
    "/webhooks",
    response_model=EndpointsOut,
    summary="List webhook endpoints",
    description="A member key sees only its own endpoints.",
    responses=error_responses(),
)
def list_endpoints(request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    return JSONResponse({"items": [encode_endpoint(e) for e in webhooks.endpoints(owner=owner)]})


@router.get(
    "/webhooks/{endpoint_id}",
    response_model=EndpointOut,
    summary="A webhook endpoint",
    responses=error_responses({404: "not_found"}),
)
def get_endpoint(endpoint_id: EndpointPath, request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    return JSONResponse(encode_endpoint(webhooks.get(endpoint_id, owner=owner)))


@router.get(
    "/webhooks/{endpoint_id}/secret",
    response_model=SecretOut,
    summary="A webhook endpoint's signing secret",
    responses=error_responses({404: "not_found", 409: "webhook_key_unset"}),
)
def get_secret(endpoint_id: EndpointPath, request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    secret = webhooks.secret(endpoint_id, owner=owner)
    return JSONResponse({"id": endpoint_id, "secret": secret})


@router.put(
    "/webhooks/{endpoint_id}/secret",
    response_model=EndpointOut,
    summary="Set or rotate a webhook endpoint's signing secret",
    description=(
        "Your own secret, or without one a fresh random one: the endpoint's deliveries are "
        "signed with it from now on. The answer shows it (as does GET .../secret later). "
        "Audited as webhook.secret, without the secret. 409 webhook_key_unset when the server "
        "has no webhook_key."
    ),
    responses=error_responses({404: "not_found", 409: "webhook_key_unset"}),
)
def put_secret(
    endpoint_id: EndpointPath, request: Request, caller: Caller, body: SecretIn | None = None
) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    endpoint, secret = webhooks.set_secret(
        endpoint_id,
        None if body is None else body.secret,
        owner=owner,
        actor=actor_of(caller),
    )
    return JSONResponse(encode_endpoint(endpoint, secret))


@router.patch(
    "/webhooks/{endpoint_id}",
    response_model=EndpointOut,
    summary="Enable or disable a webhook endpoint",
    description="A disabled endpoint gets no deliveries; events meanwhile are not kept for it.",
    responses=error_responses({404: "not_found"}),
)
def patch_endpoint(
    endpoint_id: EndpointPath, body: EndpointPatch, request: Request, caller: Caller
) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    return JSONResponse(
        encode_endpoint(
            webhooks.set_enabled(endpoint_id, body.enabled, owner=owner, actor=actor_of(caller))
        )
    )


@router.delete(
    "/webhooks/{endpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a webhook endpoint and its deliveries",
    responses=error_responses({404: "not_found"}),
)
def delete_endpoint(endpoint_id: EndpointPath, request: Request, caller: Caller) -> Response:
    webhooks, owner = _webhooks(request, caller)
    webhooks.remove(endpoint_id, owner=owner, actor=actor_of(caller))
    return Response(status_code=204)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    response_model=DeliveriesOut,
    summary="An endpoint's deliveries, newest first",
    responses=error_responses({404: "not_found"}),
)
def list_deliveries(
    endpoint_id: EndpointPath,
    request: Request,
    caller: Caller,
    offset: OffsetQuery = 0,
    limit: LimitQuery = 100,
) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    items, total = webhooks.deliveries(endpoint_id, offset=offset, limit=limit, owner=owner)
    page: Page[Delivery] = Page(items=items, total=total, offset=offset, limit=limit)
    return JSONResponse(encode_page([encode_delivery(d) for d in items], page))


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="One webhook delivery",
    responses=error_responses({404: "not_found"}),
)
def get_delivery(delivery_id: DeliveryPath, request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    return JSONResponse(encode_delivery(webhooks.delivery(delivery_id, owner=owner)))


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a delivery again",
    description=(
        "Pending again, due now, with a fresh round of attempts: a dead letter once its "
        "receiver is fixed, or a delivered one a receiver lost. The worker sends it."
    ),
    responses=error_responses({404: "not_found"}),
)
def redeliver(delivery_id: DeliveryPath, request: Request, caller: Caller) -> JSONResponse:
    webhooks, owner = _webhooks(request, caller)
    return JSONResponse(
        encode_delivery(webhooks.redeliver(delivery_id, owner=owner)), status_code=202
    )


@router.get(
    "/subjects/{ref}/alerts",
    response_model=AlertsOut,
    tags=["webhooks"],
    summary="A subject's alert events, newest first, with their deliveries",
    description=(
        "Threshold crossings, first denials and first shadow blocks of each window period, "
        "as recorded by the decisions that caused them (docs/alerts.md), whether or not any "
        "endpoint receives them. A member key may read its own subject and below, and sees "
        "only the deliveries to its own endpoints; a service key sees none."
    ),
    responses=error_responses({403: "forbidden"}),
)
def subject_alerts(
    ref: RefPath,
    request: Request,
    caller: Caller,
    quota: QuotaDep,
    offset: OffsetQuery = 0,
    limit: LimitQuery = 100,
) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    webhooks: Webhooks | None = request.app.state.webhooks
    if webhooks is None:
        raise Conflict("this store keeps no alerts")
    found, total = webhooks.subject_alerts(
        str(subject), offset=offset, limit=limit, owner=deliveries_seen_by(caller)
    )
    page: Page[Any] = Page(items=found, total=total, offset=offset, limit=limit)
    return JSONResponse(encode_page([encode_alert(e, d) for e, d in found], page))
