"""DataRobot's quotas API (seed 002, contract §8), answered from the engine.

- quota template = plan (``create_plan``, ``get_plan``, ``plans``);
- quota on deployment X = the resource quota of ``deployment:X`` (contract §6),
  and the quota's id is that ref, ``deployment:X``;
- ``consumerType`` T + ``consumerId`` I = the consumer subject ``T:I`` (T is
  user, usergroup or deployment); ``consumerName`` = that subject's ``name``;
- rules ``requests``, ``token``, ``concurrentRequests``, ``inputSequenceLength``
  = metrics ``requests``, ``tokens``, ``concurrent_requests``,
  ``input_sequence_length``; windows ``min``, ``hour``, ``day`` = ``minute``,
  ``hour``, ``day``; ``capacity`` {capacity, units} = ``capacity`` {value, units};
- ``userId`` = the actor (``key:<id>``) of the quota's last change, from the audit log.

Only translation lives here: every value is validated and stored by the engine,
whose field names (``default_rules[0].metric``) are renamed to DataRobot's
(``defaultRules[0].rule``) on the way out. Errors under ``PREFIXES`` leave as
``{"message": ..., "errors": {field: why}}`` (``errors`` only on a 422).
See docs/compat/datarobot.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from tokenquota.compat.datarobot_schemas import (
    MAX_QUOTAS_PAGE,
    MAX_TEMPLATES_PAGE,
    DataRobotError,
    QuotaCreate,
    QuotaListResponse,
    QuotaPolicy,
    QuotaResponse,
    QuotaRule,
    QuotaTemplateCreate,
    QuotaTemplateListResponse,
    QuotaTemplateResponse,
    QuotaUpdate,
)
from tokenquota.domain.errors import Conflict, NotFound, ValidationError
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.limits import UNLIMITED, Plan
from tokenquota.domain.metrics import Metric
from tokenquota.domain.resources import ResourceQuota, ResourceRule
from tokenquota.domain.subjects import SubjectRef, validate_name
from tokenquota.engine import Quota
from tokenquota.http.auth import READERS, WRITERS, Caller, QuotaDep, actor_of, require_role
from tokenquota.http.capacity import runs_on
from tokenquota.wire.catalog import encode_resource_quota

PREFIXES: tuple[str, ...] = ("/api/v2/quotaTemplates", "/api/v2/quotas")
router = APIRouter(prefix="/api/v2", tags=["DataRobot quotas"])

RESOURCE_KIND: Final = "deployment"

RULE_TO_METRIC: Final = {
    "requests": Metric.REQUESTS,
    "token": Metric.TOKENS,
    "concurrentRequests": Metric.CONCURRENT_REQUESTS,
    "inputSequenceLength": Metric.INPUT_SEQUENCE_LENGTH,
}
METRIC_TO_RULE: Final = {metric: rule for rule, metric in RULE_TO_METRIC.items()}
WINDOW_TO_NATIVE: Final = {"min": "minute", "hour": "hour", "day": "day"}
NATIVE_TO_WINDOW: Final = {native: window for window, native in WINDOW_TO_NATIVE.items()}
# The window a windowless rule (concurrentRequests, inputSequenceLength) reads back with:
# the seed's default, since the engine keeps no window for them.
DEFAULT_WINDOW: Final = "min"
CONSUMER_KINDS: Final = ("deployment", "user", "usergroup")

# Engine field names -> DataRobot's, segment by segment ("default_rules[0].metric").
_FIELD_NAMES: Final = {
    "default_rules": "defaultRules",
    "saturation_threshold": "saturationThreshold",
    "metric": "rule",
    "consumer": "consumerId",
    "value": "capacity",
}
_SEGMENT = re.compile(r"[A-Za-z_]+")


# errors --------------------------------------------------------------------------
def render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    headers: dict[str, str] | None,
) -> JSONResponse:
    """DataRobot's shape: ``{"message"}``, plus ``"errors": {field: why}`` on a 422."""
    body: dict[str, Any] = {"message": message}
    if status == 422:
        problems = details.get("errors")
        if isinstance(problems, list) and problems:
            body["errors"] = {str(p.get("field")): str(p.get("message")) for p in problems}
        else:
            field = str(details.get("field", "body"))
            prefix = f"{field}: "
            body["errors"] = {field: message.removeprefix(prefix)}
    return JSONResponse(body, status_code=status, headers=headers)


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "No valid API key",
        403: "The key's role does not allow this (service keys read; admin and staff write)",
        404: "No such quota or quota template",
        409: "Already exists",
        422: "Invalid field data; `errors` names each field at fault",
    }
    return {
        s: {"model": DataRobotError, "description": text[s]} for s in (401, 403, 422, *statuses)
    }


def _renamed(field: str) -> str:
    return _SEGMENT.sub(lambda m: _FIELD_NAMES.get(m.group(0), m.group(0)), field)


@contextmanager
def _datarobot_fields(rename: Callable[[str], str] = _renamed) -> Iterator[None]:
    """Re-raise the engine's validation errors under DataRobot's field names."""
    try:
        yield
    except ValidationError as exc:
        message = exc.message.removeprefix(f"{exc.field}: ")
        raise ValidationError(rename(exc.field), message) from None


# rules ---------------------------------------------------------------------------
def _native_rule(rule: QuotaRule) -> dict[str, object]:
    metric = RULE_TO_METRIC[rule.rule]
    window = WINDOW_TO_NATIVE[rule.window] if metric.is_counter else None
    return {"metric": metric.value, "window": window, "limit": rule.limit}


def _wire_rule(metric: Metric, window: str | None, limit: int) -> dict[str, object] | None:
    """A DataRobot rule, or None when the native rule has no DataRobot form."""
    rule = METRIC_TO_RULE.get(metric)
    if rule is None or limit < 0:
        return None
    if window is None:
        return {"limit": limit, "rule": rule, "window": DEFAULT_WINDOW}
    short = NATIVE_TO_WINDOW.get(window)
    return None if short is None else {"limit": limit, "rule": rule, "window": short}


def _wire_resource_rules(rules: Sequence[ResourceRule]) -> list[dict[str, object]]:
    out = []
    for r in rules:
        wire = _wire_rule(r.metric, r.window.key if r.window is not None else None, r.limit)
        if wire is not None:  # every resource rule has one; kept total for safety
            out.append(wire)
    return out


# templates = plans -----------------------------------------------------------------
def _template_wire(plan: Plan) -> dict[str, Any]:
    """Shadow and unlimited (-1) rules, and metrics or windows DataRobot lacks, are left out."""
    rules = []
    for r in plan.rules:
        if r.shadow or r.value == UNLIMITED:
            continue
        window = r.key.window.key if r.key.window is not None else None
        wire = _wire_rule(r.key.metric, window, r.value)
        if wire is not None:
            rules.append(wire)
    return {"id": plan.id, "name": plan.name, "rules": rules}


# quotas = resource quotas ------------------------------------------------------------
def _resource(quota_id: str) -> SubjectRef:
    """The resource a quota id names; an id that is no deployment is simply not found."""
    try:
        ref = SubjectRef.parse(quota_id, "quotaId")
    except ValidationError:
        raise NotFound(f"no quota {quota_id!r}") from None
    if ref.kind != RESOURCE_KIND:
        raise NotFound(f"no quota {quota_id!r}")
    return ref


def _consumer(policy: QuotaPolicy, field: str) -> SubjectRef:
    with _datarobot_fields(lambda _: f"{field}.consumerId"):
        return SubjectRef.parse(f"{policy.consumer_type}:{policy.consumer_id}", field)


def _representable(consumer: SubjectRef) -> bool:
    return consumer.kind in CONSUMER_KINDS


def _number(value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


class _Names:
    """Consumer names, read once per subject per request."""

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.seen: dict[SubjectRef, str | None] = {}

    def __call__(self, ref: SubjectRef) -> str | None:
        if ref not in self.seen:
            try:
                self.seen[ref] = self.quota.get_subject(ref).name
            except NotFound:
                self.seen[ref] = None
        return self.seen[ref]


def _last_writer(quota: Quota, resource: SubjectRef) -> str:
    target = f"resources/{resource}"
    total = quota.audit(subject=target, limit=1).total
    if total == 0:
        return ""
    entries = quota.audit(subject=target, offset=total - 1, limit=1).items
    return entries[0].actor if entries else ""


def _quota_wire(
    quota: Quota, resource: SubjectRef, found: ResourceQuota, names: _Names | None = None
) -> dict[str, Any]:
    names = names or _Names(quota)
    policies = [
        {
            "consumerId": p.consumer.id,
            "consumerName": names(p.consumer),
            "consumerType": p.consumer.kind,
            "reserved": _number(p.reserved),
            "rules": _wire_resource_rules(p.rules),
        }
        for p in found.policies
        if _representable(p.consumer)
    ]
    body: dict[str, Any] = {
        "defaultRules": _wire_resource_rules(found.default_rules),
        "id": str(resource),
        "policies": policies,
        "resourceId": resource.id,
        "resourceType": resource.kind,
        "saturationThreshold": _number(found.saturation_threshold),
        "userId": _last_writer(quota, resource),
    }
    if found.capacity is not None:
        units = METRIC_TO_RULE[found.capacity.units]
        body["capacity"] = {"capacity": found.capacity.value, "units": units}
    return body


def _apply(
    quota: Quota,
    resource: SubjectRef,
    body: QuotaUpdate,
    current: Mapping[str, Any],
    caller: ApiKey,
) -> ResourceQuota:
    """Merge the fields ``body`` gives into ``current`` (native wire), validate, store.

    Everything is checked before anything is written: a consumer name too long
    is refused before the quota is stored, and names are written after it.
    """
    given = body.model_fields_set
    native: dict[str, Any] = {
        "default_rules": list(current.get("default_rules", [])),
        "policies": list(current.get("policies", [])),
        "capacity": current.get("capacity"),
        "saturation_threshold": current.get("saturation_threshold"),
    }
    names: dict[SubjectRef, str] = {}
    if "default_rules" in given:
        native["default_rules"] = [_native_rule(r) for r in body.default_rules]
    if "policies" in given:
        # Consumers DataRobot cannot name (a kind other than user, usergroup or
        # deployment, set through /v1) are not in its view, so it cannot mean to drop them.
        kept = [
            p for p in native["policies"] if not _representable(SubjectRef.parse(p["consumer"]))
        ]
        policies = []
        for i, p in enumerate(body.policies):
            field = f"policies[{i}]"
            consumer = _consumer(p, field)
            if p.consumer_name is not None:
                validate_name(p.consumer_name, f"{field}.consumerName")
                names[consumer] = p.consumer_name
            policies.append(
                {
                    "consumer": str(consumer),
                    "rules": [_native_rule(r) for r in p.rules],
                    "reserved": p.reserved,
                }
            )
        native["policies"] = policies + kept
    if "capacity" in given:
        units = RULE_TO_METRIC[body.capacity.units].value
        native["capacity"] = {"value": body.capacity.capacity, "units": units}
    if "saturation_threshold" in given:
        native["saturation_threshold"] = body.saturation_threshold
    with _datarobot_fields():
        stored = quota.set_resource_quota(resource, native, actor=actor_of(caller))
    for consumer, name in names.items():
        try:
            known = quota.get_subject(consumer).name
        except NotFound:
            known = None
        if known != name:
            quota.put_subject(consumer, name=name, actor=actor_of(caller))
    return stored


def _deployment_quotas(quota: Quota) -> Iterator[tuple[SubjectRef, ResourceQuota]]:
    offset = 0
    while True:
        page = quota.resource_quotas(offset=offset, limit=1000)
        for ref, found in page.items:
            if ref.kind == RESOURCE_KIND:
                yield ref, found
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return


T = TypeVar("T")


def _page(
    request: Request, items: Sequence[T], offset: int, limit: int
) -> tuple[list[T], dict[str, Any]]:
    """One page and DataRobot's ``count``/``next``/``previous``/``totalCount``."""
    chosen = list(items[offset : offset + limit])
    total = len(items)
    after = offset + len(chosen)
    next_url = _at_offset(request, after) if after < total else None
    previous = _at_offset(request, max(0, offset - limit)) if offset > 0 else None
    meta = {"count": len(chosen), "next": next_url, "previous": previous, "totalCount": total}
    return chosen, meta


def _at_offset(request: Request, offset: int) -> str:
    """The request's own absolute URL with ``offset`` changed in place, other parameters kept."""
    params = [
        (name, str(offset) if name == "offset" else value)
        for name, value in request.query_params.multi_items()
    ]
    return str(request.url.replace(query=urlencode(params)))


Offset = Annotated[int, Query(ge=0, le=2**31, description="This many results will be skipped")]
TemplateId = Annotated[str, Path(alias="quotaTemplateId", description="Specific quota template ID")]
QuotaId = Annotated[
    str, Path(alias="quotaId", description="Specific quota ID: the resource, deployment:<id>")
]


# routes: templates ---------------------------------------------------------------------
@router.get(
    "/quotaTemplates/",
    response_model=QuotaTemplateListResponse,
    summary="Retrieve Quota Templates",
    description="Templates are plans, ordered by name. Admin, staff and service.",
    responses=_responses(),
)
@runs_on("reads")
def list_templates(
    request: Request,
    caller: Caller,
    quota: QuotaDep,
    offset: Offset,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_TEMPLATES_PAGE,
            description=f"At most this many results are returned (1-{MAX_TEMPLATES_PAGE})",
        ),
    ],
) -> JSONResponse:
    require_role(caller, *READERS)
    chosen, meta = _page(request, quota.plans(), offset, limit)
    return JSONResponse({**meta, "data": [_template_wire(p) for p in chosen]})


@router.post(
    "/quotaTemplates/",
    status_code=201,
    response_model=QuotaTemplateResponse,
    summary="Create a Quota Template (tokenquota's addition)",
    description=(
        "Creates a plan with these rules. A taken name is a 409. Admin and staff. "
        "The windows of concurrentRequests and inputSequenceLength rules are not kept."
    ),
    responses=_responses(409),
)
def create_template(body: QuotaTemplateCreate, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    with _datarobot_fields():
        plan = quota.create_plan(
            body.name, [_native_rule(r) for r in body.rules], actor=actor_of(caller)
        )
    return JSONResponse(_template_wire(plan), status_code=201)


@router.get(
    "/quotaTemplates/{quotaTemplateId}/",
    response_model=QuotaTemplateResponse,
    summary="Retrieve Quota Templates by quota template ID",
    description="The plan with this id (its name is accepted too). Admin, staff and service.",
    responses=_responses(404),
)
def get_template(template_id: TemplateId, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    try:
        plan = quota.get_plan(template_id)
    except ValidationError:
        raise NotFound(f"no quota template {template_id!r}") from None
    return JSONResponse(_template_wire(plan))


# routes: quotas -----------------------------------------------------------------------
@router.get(
    "/quotas/",
    response_model=QuotaListResponse,
    summary="Retrieve Quotas",
    description=(
        "Resource quotas on deployments, ordered by id. `resourceId` and `resourceType` "
        "filter. Admin, staff and service."
    ),
    responses=_responses(),
)
@runs_on("reads")
def list_quotas(
    request: Request,
    caller: Caller,
    quota: QuotaDep,
    offset: Offset,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_QUOTAS_PAGE,
            description=f"At most this many results are returned (1-{MAX_QUOTAS_PAGE})",
        ),
    ],
    resource_id: Annotated[
        str | None,
        Query(alias="resourceId", description="Resource ID for which quota is configured"),
    ] = None,
    resource_type: Annotated[
        str | None,
        Query(alias="resourceType", description="Resource Type for which quota is configured"),
    ] = None,
) -> JSONResponse:
    require_role(caller, *READERS)
    found: list[tuple[SubjectRef, ResourceQuota]] = []
    if resource_type is None or resource_type == RESOURCE_KIND:
        if resource_id is None:
            found = list(_deployment_quotas(quota))
        else:
            try:
                ref = SubjectRef.parse(f"{RESOURCE_KIND}:{resource_id}", "resourceId")
                found = [(ref, quota.get_resource_quota(ref))]
            except (NotFound, ValidationError):
                found = []
    chosen, meta = _page(request, found, offset, limit)
    names = _Names(quota)
    data = [_quota_wire(quota, ref, q, names) for ref, q in chosen]
    return JSONResponse({**meta, "data": data})


@router.post(
    "/quotas/",
    status_code=201,
    response_model=QuotaResponse,
    summary="Create a Quota (tokenquota's addition)",
    description=(
        "Puts a quota on the deployment `resourceId`; its id is `deployment:<resourceId>`. "
        "A deployment that has a quota already is a 409 (PATCH it instead). Admin and staff."
    ),
    responses=_responses(409),
)
def create_quota(body: QuotaCreate, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    with _datarobot_fields(lambda _: "resourceId"):
        resource = SubjectRef.parse(f"{body.resource_type}:{body.resource_id}", "resourceId")
    try:
        quota.get_resource_quota(resource)
    except NotFound:
        pass
    else:
        raise Conflict(f"{resource} has a quota already; PATCH /api/v2/quotas/{resource}/")
    stored = _apply(quota, resource, body, {}, caller)
    return JSONResponse(_quota_wire(quota, resource, stored), status_code=201)


@router.get(
    "/quotas/{quotaId}/",
    response_model=QuotaResponse,
    summary="Retrieve Quotas by quota ID",
    description="Admin, staff and service.",
    responses=_responses(404),
)
def get_quota(quota_id: QuotaId, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    resource = _resource(quota_id)
    return JSONResponse(_quota_wire(quota, resource, quota.get_resource_quota(resource)))


@router.patch(
    "/quotas/{quotaId}/",
    response_model=QuotaResponse,
    summary="Modify Quotas by quota ID",
    description=(
        "Partial update: each field given replaces the stored one, fields left out are "
        "kept; `saturationThreshold: null` removes the threshold. Usage already counted "
        "is kept. Audited. Admin and staff."
    ),
    responses=_responses(404),
)
def patch_quota(
    quota_id: QuotaId, caller: Caller, quota: QuotaDep, body: QuotaUpdate | None = None
) -> JSONResponse:
    require_role(caller, *WRITERS)
    resource = _resource(quota_id)
    current = quota.get_resource_quota(resource)
    stored = _apply(quota, resource, body or QuotaUpdate(), encode_resource_quota(current), caller)
    return JSONResponse(_quota_wire(quota, resource, stored))


@router.delete(
    "/quotas/{quotaId}/",
    status_code=204,
    response_class=Response,
    summary="Delete Quotas by quota ID",
    description="The quota has been deleted. Usage already counted is kept. Admin and staff.",
    responses=_responses(404),
)
def delete_quota(quota_id: QuotaId, caller: Caller, quota: QuotaDep) -> Response:
    require_role(caller, *WRITERS)
    quota.delete_resource_quota(_resource(quota_id), actor=actor_of(caller))
    return Response(status_code=204)
