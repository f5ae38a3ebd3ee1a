"""Subjects, limits, plans, defaults, API keys and the audit log.

Each handler checks the caller's role (contract §7), parses the path, and
makes one engine call; the engine validates, and audits each change (limits,
defaults, plans, assignments, deletions, keys) under the caller's ``key:<id>``.
Handlers are plain ``def``: they run on the thread pool, never on the event loop.

| endpoints                                  | admin | staff | service | member      |
| ------------------------------------------ | ----- | ----- | ------- | ----------- |
| GET a subject, its limits                  | yes   | yes   | yes     | own + below |
| GET subject list, defaults, plans          | yes   | yes   | yes     | no          |
| write subjects, limits, plans, assignments | yes   | yes   | no      | no          |
| GET audit log                              | yes   | yes   | no      | no          |
| write defaults; keys                       | yes   | no    | no      | no          |
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse

from tokenquota.api.admin_schemas import (
    AuditPage,
    DefaultsIn,
    DefaultsOut,
    KeyCreatedOut,
    KeyIn,
    KeyPage,
    LimitQuery,
    LimitsIn,
    LimitsOut,
    OffsetQuery,
    PlanAssignIn,
    PlanIn,
    PlanOut,
    PlansOut,
    PlanUpdateIn,
    RefPath,
    SubjectIn,
    SubjectOut,
    SubjectPage,
    error_responses,
)
from tokenquota.domain.keys import Role
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import DefaultRule, LimitsView
from tokenquota.engine import Quota
from tokenquota.http.auth import (
    READERS,
    WRITERS,
    Caller,
    QuotaDep,
    actor_of,
    in_scope,
    require_read,
    require_role,
)
from tokenquota.http.capacity import runs_on
from tokenquota.wire.catalog import (
    encode_default_rule,
    encode_effective_limit,
    encode_key,
    encode_plan,
    encode_rule,
    encode_subject,
)
from tokenquota.wire.ledger import encode_audit_entry
from tokenquota.wire.views import encode_page

router = APIRouter(prefix="/v1")


PlanPath = Annotated[str, Path(description="A plan's id (its name is accepted too)")]
KeyPath = Annotated[str, Path(description="An API key's id")]

UNKNOWN_SUBJECT = {404: "Unknown subject"}
STRICT_UNKNOWN = {404: "Unknown subject (only with strict_subjects)"}


def limits_wire(view: LimitsView, quota: Quota) -> dict[str, Any]:
    """The limits view; each shadow limit carries the decisions it would have blocked."""
    hits = quota.shadow_hits(view.subject) if any(e.shadow for e in view.effective) else {}
    return {
        "subject": view.subject,
        "overrides": [encode_rule(r) for r in view.overrides],
        "plan": encode_plan(view.plan) if view.plan else None,
        "effective": [
            {
                **encode_effective_limit(e),
                "shadow_hits": hits.get(str(e.key), 0) if e.shadow else None,
            }
            for e in view.effective
        ],
    }


def defaults_wire(defaults: list[DefaultRule]) -> dict[str, Any]:
    return {"defaults": [encode_default_rule(d) for d in defaults]}


# subjects -------------------------------------------------------------------------
@router.put(
    "/subjects/{ref}",
    tags=["subjects"],
    response_model=SubjectOut,
    summary="Create or update a subject",
    description=(
        "Upsert. A field left out (or null) keeps what is stored; `parents` replaces the "
        "whole list; unknown parents are created (with strict_subjects: 404). A change "
        "that would make the parent graph cyclic is refused with 409 `parent_cycle`. "
        "Changes are audited. Admin and staff."
    ),
    responses=error_responses({409: "The parents would make a cycle"}),
)
def put_subject(ref: RefPath, body: SubjectIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    subject = quota.put_subject(
        SubjectRef.parse(ref, "ref"),
        name=body.name,
        parents=body.parents,
        metadata=body.metadata,
        actor=actor_of(caller),
    )
    return JSONResponse(encode_subject(subject))


@router.get(
    "/subjects/{ref}",
    tags=["subjects"],
    response_model=SubjectOut,
    summary="One subject",
    description=(
        "A member key may read its own subject and the subjects below it; `parents` "
        "then lists only the parents inside its subtree (its own subject has none)."
    ),
    responses=error_responses(UNKNOWN_SUBJECT),
)
def get_subject(ref: RefPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    wire = encode_subject(quota.get_subject(subject))
    if caller.role is Role.MEMBER:
        # A parent above the member's own subject is outside what it may see (contract §10).
        wire["parents"] = [
            p for p in wire["parents"] if in_scope(quota, caller, SubjectRef.parse(p))
        ]
    return JSONResponse(wire)


@router.delete(
    "/subjects/{ref}",
    tags=["subjects"],
    status_code=204,
    response_class=Response,
    summary="Delete a subject",
    description=(
        "Deletes the subject and its own limits; usage already in the ledger stays. "
        "A subject that still has children is refused with 409. Admin and staff."
    ),
    responses=error_responses({**UNKNOWN_SUBJECT, 409: "The subject still has children"}),
)
def delete_subject(ref: RefPath, caller: Caller, quota: QuotaDep) -> Response:
    require_role(caller, *WRITERS)
    quota.delete_subject(SubjectRef.parse(ref, "ref"), actor=actor_of(caller))
    return Response(status_code=204)


@router.get(
    "/subjects",
    tags=["subjects"],
    response_model=SubjectPage,
    summary="List subjects",
    description="Ordered by ref; filter by `kind` and/or direct `parent`. Not for member keys.",
    responses=error_responses(),
)
@runs_on("reads")
def list_subjects(
    caller: Caller,
    quota: QuotaDep,
    kind: Annotated[str | None, Query(description="Only subjects of this kind")] = None,
    parent: Annotated[
        str | None, Query(description="Only direct children of this subject (kind:id)")
    ] = None,
    offset: OffsetQuery = 0,
    limit: LimitQuery = 100,
) -> JSONResponse:
    require_role(caller, *READERS)
    page = quota.list_subjects(kind=kind, parent=parent, offset=offset, limit=limit)
    return JSONResponse(encode_page([encode_subject(s) for s in page.items], page))


# limits and plan assignment ----------------------------------------------------------
@router.put(
    "/subjects/{ref}/limits",
    tags=["limits"],
    response_model=LimitsOut,
    summary="Set or remove a subject's own limits",
    description=(
        "Each item sets one override; `limit: null` removes it (the plan's or the default "
        "then applies), `-1` makes the subject unlimited there. All items are validated "
        "before any is written. Usage already counted is kept. Admin and staff."
    ),
    responses=error_responses(STRICT_UNKNOWN),
)
def put_limits(ref: RefPath, body: LimitsIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    view = quota.set_limits(
        SubjectRef.parse(ref, "ref"),
        [item.model_dump() for item in body.limits],
        actor=actor_of(caller),
    )
    return JSONResponse(limits_wire(view, quota))


@router.get(
    "/subjects/{ref}/limits",
    tags=["limits"],
    response_model=LimitsOut,
    summary="A subject's overrides, plan and effective limits",
    description=(
        "`effective` lists every limit that applies to the subject itself, each with its "
        "source: override, plan or default, or none for a (metric, window) that only a "
        "shadow rule names (nothing enforces it). A shadow rule is listed after the "
        "enforced limit it sits beside, with `shadow_hits`: the decisions it would have "
        "blocked. A member key may read its own subject and below."
    ),
    responses=error_responses(),
)
def get_limits(ref: RefPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    subject = SubjectRef.parse(ref, "ref")
    require_read(quota, caller, subject)
    return JSONResponse(limits_wire(quota.limits(subject), quota))


@router.put(
    "/subjects/{ref}/plan",
    tags=["limits"],
    response_model=LimitsOut,
    summary="Put a subject on a plan",
    description="Replaces any plan the subject had. Answers the limits view. Admin and staff.",
    responses=error_responses({404: "Unknown plan (or subject, with strict_subjects)"}),
)
def assign_plan(ref: RefPath, body: PlanAssignIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    subject = SubjectRef.parse(ref, "ref")
    quota.assign_plan(subject, body.plan_id, actor=actor_of(caller))
    return JSONResponse(limits_wire(quota.limits(subject), quota))


@router.delete(
    "/subjects/{ref}/plan",
    tags=["limits"],
    response_model=LimitsOut,
    summary="Take a subject off its plan",
    description="Answers the limits view, also when the subject had no plan. Admin and staff.",
    responses=error_responses(STRICT_UNKNOWN),
)
def unassign_plan(ref: RefPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    subject = SubjectRef.parse(ref, "ref")
    quota.assign_plan(subject, None, actor=actor_of(caller))
    return JSONResponse(limits_wire(quota.limits(subject), quota))


# defaults ----------------------------------------------------------------------------
@router.get(
    "/defaults",
    tags=["defaults"],
    response_model=DefaultsOut,
    summary="System defaults per subject kind",
    description=(
        "Runtime defaults (set through the API or CLI) and the config file's; a runtime "
        "default hides the config one for the same kind, metric and window. "
        "Admin, staff and service."
    ),
    responses=error_responses(),
)
def get_defaults(caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    return JSONResponse(defaults_wire(quota.defaults()))


@router.put(
    "/defaults",
    tags=["defaults"],
    response_model=DefaultsOut,
    summary="Set or remove runtime defaults",
    description=(
        "`limit: null` removes a runtime default (a config default, if any, applies again). "
        "All items are validated before any is written. Admin only."
    ),
    responses=error_responses(),
)
def put_defaults(body: DefaultsIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, Role.ADMIN)
    defaults = quota.set_defaults(
        [item.model_dump() for item in body.defaults], actor=actor_of(caller)
    )
    return JSONResponse(defaults_wire(defaults))


# plans -------------------------------------------------------------------------------
@router.get(
    "/plans",
    tags=["plans"],
    response_model=PlansOut,
    summary="Every plan",
    description="Ordered by name. Admin, staff and service.",
    responses=error_responses(),
)
@runs_on("reads")
def list_plans(caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    return JSONResponse({"items": [encode_plan(p) for p in quota.plans()]})


@router.post(
    "/plans",
    tags=["plans"],
    status_code=201,
    response_model=PlanOut,
    summary="Create a plan",
    description=(
        "A named, reusable set of rules; rules with `limit: null` are left out. "
        "A taken name is a 409. Admin and staff."
    ),
    responses=error_responses({409: "A plan with this name exists"}),
)
def create_plan(body: PlanIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *WRITERS)
    plan = quota.create_plan(
        body.name, [rule.model_dump() for rule in body.rules], actor=actor_of(caller)
    )
    return JSONResponse(encode_plan(plan), status_code=201)


@router.get(
    "/plans/{plan_id}",
    tags=["plans"],
    response_model=PlanOut,
    summary="One plan",
    description="Admin, staff and service.",
    responses=error_responses({404: "Unknown plan"}),
)
def get_plan(plan_id: PlanPath, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, *READERS)
    return JSONResponse(encode_plan(quota.get_plan(plan_id)))


@router.put(
    "/plans/{plan_id}",
    tags=["plans"],
    response_model=PlanOut,
    summary="Rename a plan and/or replace its rules",
    description=(
        "`rules`, when given, is the plan's whole rule set. Every subject on the plan "
        "sees the change at once; usage already counted is kept. Admin and staff."
    ),
    responses=error_responses({404: "Unknown plan", 409: "A plan with this name exists"}),
)
def update_plan(
    plan_id: PlanPath, body: PlanUpdateIn, caller: Caller, quota: QuotaDep
) -> JSONResponse:
    require_role(caller, *WRITERS)
    rules = None if body.rules is None else [rule.model_dump() for rule in body.rules]
    plan = quota.update_plan(plan_id, name=body.name, rules=rules, actor=actor_of(caller))
    return JSONResponse(encode_plan(plan))


@router.delete(
    "/plans/{plan_id}",
    tags=["plans"],
    status_code=204,
    response_class=Response,
    summary="Delete a plan",
    description="A plan still assigned to a subject is refused with 409. Admin and staff.",
    responses=error_responses({404: "Unknown plan", 409: "The plan is assigned to subjects"}),
)
def delete_plan(plan_id: PlanPath, caller: Caller, quota: QuotaDep) -> Response:
    require_role(caller, *WRITERS)
    quota.delete_plan(plan_id, actor=actor_of(caller))
    return Response(status_code=204)


# API keys ----------------------------------------------------------------------------
@router.post(
    "/keys",
    tags=["keys"],
    status_code=201,
    response_model=KeyCreatedOut,
    summary="Create an API key",
    description=(
        "Answers the key with its secret in `key`, shown this once: only a hash is stored. "
        "A member key is bound to one `subject`; other roles take none. Admin only."
    ),
    responses=error_responses(),
)
def create_key(body: KeyIn, caller: Caller, quota: QuotaDep) -> JSONResponse:
    require_role(caller, Role.ADMIN)
    key, secret = quota.create_key(
        body.role, subject=body.subject, name=body.name, actor=actor_of(caller)
    )
    return JSONResponse({**encode_key(key), "key": secret}, status_code=201)


@router.get(
    "/keys",
    tags=["keys"],
    response_model=KeyPage,
    summary="List API keys",
    description="Live and revoked keys, oldest first; never their secrets. Admin only.",
    responses=error_responses(),
)
@runs_on("reads")
def list_keys(
    caller: Caller, quota: QuotaDep, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> JSONResponse:
    require_role(caller, Role.ADMIN)
    page = quota.list_keys(offset=offset, limit=limit)
    return JSONResponse(encode_page([encode_key(k) for k in page.items], page))


@router.delete(
    "/keys/{key_id}",
    tags=["keys"],
    status_code=204,
    response_class=Response,
    summary="Revoke an API key",
    description="From now on the key gets 401. Admin only.",
    responses=error_responses({404: "Unknown or already revoked key"}),
)
def revoke_key(key_id: KeyPath, caller: Caller, quota: QuotaDep) -> Response:
    require_role(caller, Role.ADMIN)
    quota.revoke_key(key_id, actor=actor_of(caller))
    return Response(status_code=204)


# audit -------------------------------------------------------------------------------
@router.get(
    "/audit",
    tags=["audit"],
    response_model=AuditPage,
    summary="The audit log",
    description=(
        "Who changed which limit, default, plan, plan assignment, subject deletion, key or "
        "webhook endpoint, when, from what to what; oldest first. `subject` filters by "
        "target: a subject (kind:id), `defaults/<kind>`, `plans/<id>`, `keys/<id>` or "
        "`webhooks/<id>`. Admin and staff."
    ),
    responses=error_responses(),
)
@runs_on("reads")
def audit(
    caller: Caller,
    quota: QuotaDep,
    subject: Annotated[
        str | None, Query(description="Only entries about this target", max_length=200)
    ] = None,
    offset: OffsetQuery = 0,
    limit: LimitQuery = 100,
) -> JSONResponse:
    require_role(caller, *WRITERS)
    page = quota.audit(subject=subject, offset=offset, limit=limit)
    return JSONResponse(encode_page([encode_audit_entry(a) for a in page.items], page))
