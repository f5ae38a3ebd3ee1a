"""What the sync and async clients share: requests as data, responses as parsers.

Every operation is a pure function that returns a ``Call``: the HTTP method,
path, query and body, plus the function that turns the decoded JSON answer
into the library's own types (a decoder of ``tokenquota.wire``, beside the
encoder the route answers with). The two clients only send a ``Call`` and
hand the answer to ``finish``, so each operation's request lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import quote

from tokenquota.domain.decisions import Decision, Mode
from tokenquota.domain.errors import (
    ValidationError,
)
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.domain.insights import TopConsumers
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import Plan
from tokenquota.domain.metrics import merge_amounts
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import (
    Acquired,
    DefaultRule,
    HistoryPoint,
    LimitsView,
    Page,
    Reserved,
    Usage,
)
from tokenquota.wire.catalog import (
    decode_default_rules,
    decode_key,
    decode_limits_view,
    decode_plan,
    decode_resource_quota,
    decode_subject,
)
from tokenquota.wire.decisions import decode_decision
from tokenquota.wire.holds import decode_acquired, decode_lease, decode_reservation, decode_reserved
from tokenquota.wire.insights import decode_top_consumers
from tokenquota.wire.ledger import decode_audit_entry, decode_balance, decode_event, decode_grant
from tokenquota.wire.version import VERSION
from tokenquota.wire.views import (
    decode_history_point,
    decode_page,
    decode_shadow_hits,
    decode_usage,
)

T = TypeVar("T")
Params = dict[str, str | int | bool]
ExportFormat = Literal["csv", "jsonl"]

USER_AGENT: Final = f"tokenquota-client/{VERSION}"
PAGE_SIZE: Final = 1000  # the server's largest page, for iter_events


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer (``None`` is passed for a 204).

    ``refused``, when set, turns a 429's denied decision into an answer instead
    of raising ``QuotaExceeded``: reserve and acquire report a refusal as a value.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Params | None = None
    body: Any = None
    refused: Callable[[Decision], T] | None = None


def headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


# request building ---------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Credits go out as decimal strings, times as ISO 8601, refs as kind:id."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, SubjectRef):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _params(**values: object) -> Params:
    out: Params = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, str | int | bool):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _ref(subject: str | SubjectRef, field: str = "subject") -> str:
    # Validated here because it becomes part of the path: "a/b" must not reach another route.
    return str(SubjectRef.parse(subject, field))


def _segment(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty string")
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if set(value) == {"."} else quoted


def _without_none(**values: object) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in values.items() if v is not None}


def check(
    subject: str | SubjectRef,
    amounts: Mapping[str, object] | None,
    timestamp: datetime | None,
    metric_amounts: Mapping[str, object],
    resource: str | SubjectRef | None = None,
) -> Call[Decision]:
    body = {"subject": str(subject), "amounts": _jsonable(merge_amounts(amounts, metric_amounts))}
    body |= _without_none(timestamp=timestamp, resource=resource)
    return Call("POST", "/v1/check", decode_decision, body=body)


def consume(
    subject: str | SubjectRef,
    amounts: Mapping[str, object] | None,
    *,
    mode: str | Mode,
    idempotency_key: str | None,
    timestamp: datetime | None,
    model: str | None,
    tags: Mapping[str, str] | None,
    metric_amounts: Mapping[str, object],
    resource: str | SubjectRef | None = None,
) -> Call[Decision]:
    body = {
        "subject": str(subject),
        "amounts": _jsonable(merge_amounts(amounts, metric_amounts)),
        "mode": str(mode),
    }
    body |= _without_none(
        idempotency_key=idempotency_key,
        timestamp=timestamp,
        model=model,
        tags=tags,
        resource=resource,
    )
    return Call("POST", "/v1/consume", decode_decision, body=body)


# reservations and leases


def _ttl(ttl: float | timedelta) -> object:
    # Any other value goes out as it is, for the server to refuse with a 422 naming ttl.
    return ttl.total_seconds() if isinstance(ttl, timedelta) else ttl


def reserve(
    subject: str | SubjectRef,
    amounts: Mapping[str, object] | None,
    *,
    ttl: float | timedelta,
    metric_amounts: Mapping[str, object],
    raise_refused: bool = False,
    resource: str | SubjectRef | None = None,
) -> Call[Reserved]:
    """``raise_refused``: a 429 raises ``QuotaExceeded`` instead of answering a refusal."""
    body = {
        "subject": str(subject),
        "amounts": _jsonable(merge_amounts(amounts, metric_amounts)),
        "ttl": _ttl(ttl),
    }
    body |= _without_none(resource=resource)
    return Call(
        "POST",
        "/v1/reservations",
        decode_reserved,
        body=body,
        refused=None if raise_refused else _refused_reservation,
    )


def _reservation_path(reservation_id: str) -> str:
    return f"/v1/reservations/{_segment(reservation_id, 'id')}"


def commit(
    reservation_id: str,
    amounts: Mapping[str, object] | None,
    metric_amounts: Mapping[str, object],
) -> Call[Decision]:
    body = {"amounts": _jsonable(merge_amounts(amounts, metric_amounts))}
    return Call("POST", f"{_reservation_path(reservation_id)}/commit", decode_decision, body=body)


def release(reservation_id: str) -> Call[bool]:
    return Call("DELETE", _reservation_path(reservation_id), _released)


def get_reservation(reservation_id: str) -> Call[Reservation]:
    return Call("GET", _reservation_path(reservation_id), decode_reservation)


def acquire(
    subject: str | SubjectRef,
    *,
    ttl: float | timedelta,
    raise_refused: bool = False,
    resource: str | SubjectRef | None = None,
) -> Call[Acquired]:
    """``raise_refused``: a 429 raises ``QuotaExceeded`` instead of answering a refusal."""
    return Call(
        "POST",
        "/v1/leases",
        decode_acquired,
        body={"subject": str(subject), "ttl": _ttl(ttl)} | _without_none(resource=resource),
        refused=None if raise_refused else _refused_lease,
    )


def _lease_path(lease_id: str) -> str:
    return f"/v1/leases/{_segment(lease_id, 'id')}"


def release_lease(lease_id: str) -> Call[bool]:
    return Call("DELETE", _lease_path(lease_id), _released)


def heartbeat(lease_id: str, *, ttl: float | timedelta) -> Call[Lease]:
    return Call("POST", f"{_lease_path(lease_id)}/heartbeat", decode_lease, body={"ttl": _ttl(ttl)})


def get_lease(lease_id: str) -> Call[Lease]:
    return Call("GET", _lease_path(lease_id), decode_lease)


# reads


def usage(subject: str | SubjectRef, include_ancestors: bool) -> Call[Usage]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/usage",
        decode_usage,
        params=_params(include_ancestors=include_ancestors),
    )


def history(
    subject: str | SubjectRef,
    *,
    start: datetime | None,
    end: datetime | None,
    granularity: str,
    group_by: str,
) -> Call[list[HistoryPoint]]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/history",
        lambda data: [decode_history_point(p) for p in data["points"]],
        params=_params(start=start, end=end, granularity=granularity, group_by=group_by),
    )


def top_consumers(
    metric: str,
    *,
    window: str | None,
    start: datetime | None,
    end: datetime | None,
    parent: str | SubjectRef | None,
    kind: str | None,
    limit: int,
) -> Call[TopConsumers]:
    return Call(
        "GET",
        "/v1/insights/top-consumers",
        decode_top_consumers,
        params=_params(
            metric=metric,
            window=window,
            start=start,
            end=end,
            parent=str(parent) if parent is not None else None,
            kind=kind,
            limit=limit,
        ),
    )


def events(
    *,
    subject: str | SubjectRef | None,
    start: datetime | None,
    end: datetime | None,
    offset: int,
    limit: int,
) -> Call[Page[Event]]:
    return Call(
        "GET",
        "/v1/events",
        lambda data: decode_page(data, decode_event),
        params=_params(
            subject=subject, start=start, end=end, offset=offset, limit=limit, format="json"
        ),
    )


def shadow_hits(subject: str | SubjectRef) -> Call[dict[str, int]]:
    """Read from the subject's usage, which carries each shadow limit's count."""
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/usage",
        decode_shadow_hits,
        params=_params(include_ancestors=False),
    )


def export_events(
    format: str,
    *,
    subject: str | SubjectRef | None,
    start: datetime | None,
    end: datetime | None,
) -> Call[None]:
    """The request for a streamed export; the clients read its lines themselves."""
    if format not in ("csv", "jsonl"):
        raise ValidationError("format", "must be csv or jsonl")
    return Call(
        "GET",
        "/v1/events",
        lambda _: None,
        params=_params(subject=subject, start=start, end=end, format=format),
    )


# subjects


def put_subject(
    subject: str | SubjectRef,
    *,
    name: str | None,
    parents: Sequence[str | SubjectRef] | None,
    metadata: Mapping[str, Any] | None,
) -> Call[Subject]:
    body = _without_none(name=name, parents=parents, metadata=metadata)
    return Call("PUT", f"/v1/subjects/{_ref(subject)}", decode_subject, body=body)


def get_subject(subject: str | SubjectRef) -> Call[Subject]:
    return Call("GET", f"/v1/subjects/{_ref(subject)}", decode_subject)


def list_subjects(
    *, kind: str | None, parent: str | SubjectRef | None, offset: int, limit: int
) -> Call[Page[Subject]]:
    return Call(
        "GET",
        "/v1/subjects",
        lambda data: decode_page(data, decode_subject),
        params=_params(kind=kind, parent=parent, offset=offset, limit=limit),
    )


def delete_subject(subject: str | SubjectRef) -> Call[None]:
    return Call("DELETE", f"/v1/subjects/{_ref(subject)}", _nothing)


# limits, defaults, plans


def set_limits(
    subject: str | SubjectRef, limits: Sequence[Mapping[str, object]]
) -> Call[LimitsView]:
    return Call(
        "PUT",
        f"/v1/subjects/{_ref(subject)}/limits",
        decode_limits_view,
        body={"limits": _jsonable(list(limits))},
    )


def limits(subject: str | SubjectRef) -> Call[LimitsView]:
    return Call("GET", f"/v1/subjects/{_ref(subject)}/limits", decode_limits_view)


def set_defaults(items: Sequence[Mapping[str, object]]) -> Call[list[DefaultRule]]:
    return Call(
        "PUT", "/v1/defaults", decode_default_rules, body={"defaults": _jsonable(list(items))}
    )


def defaults() -> Call[list[DefaultRule]]:
    return Call("GET", "/v1/defaults", decode_default_rules)


def create_plan(name: str, rules: Sequence[Mapping[str, object]]) -> Call[Plan]:
    return Call(
        "POST", "/v1/plans", decode_plan, body={"name": name, "rules": _jsonable(list(rules))}
    )


def update_plan(
    plan: str, *, name: str | None, rules: Sequence[Mapping[str, object]] | None
) -> Call[Plan]:
    body = _without_none(name=name, rules=list(rules) if rules is not None else None)
    return Call("PUT", f"/v1/plans/{_segment(plan, 'plan_id')}", decode_plan, body=body)


def get_plan(plan: str) -> Call[Plan]:
    return Call("GET", f"/v1/plans/{_segment(plan, 'plan_id')}", decode_plan)


def plans() -> Call[list[Plan]]:
    return Call("GET", "/v1/plans", lambda data: [decode_plan(p) for p in data["items"]])


def delete_plan(plan: str) -> Call[None]:
    return Call("DELETE", f"/v1/plans/{_segment(plan, 'plan_id')}", _nothing)


def assign_plan(subject: str | SubjectRef, plan: str | None) -> Call[LimitsView]:
    path = f"/v1/subjects/{_ref(subject)}/plan"
    if plan is None:
        return Call("DELETE", path, decode_limits_view)
    _segment(plan, "plan_id")
    return Call("PUT", path, decode_limits_view, body={"plan_id": plan})


# prepaid credits


def grant(
    subject: str | SubjectRef, credits: object, *, expires_at: datetime | None
) -> Call[Grant]:
    body = {"credits": _jsonable(credits)} | _without_none(expires_at=expires_at)
    return Call("POST", f"/v1/subjects/{_ref(subject)}/grants", decode_grant, body=body)


def grants(subject: str | SubjectRef) -> Call[list[Grant]]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/grants",
        lambda data: [decode_grant(g) for g in data["items"]],
    )


def balance(subject: str | SubjectRef) -> Call[Balance | None]:
    """The same answer as ``grants``: the list comes with the balance."""
    return Call("GET", f"/v1/subjects/{_ref(subject)}/grants", _balance)


# resource quotas


def _quota_path(resource: str | SubjectRef) -> str:
    return f"/v1/resources/{_ref(resource, 'resource')}/quota"


def set_resource_quota(
    resource: str | SubjectRef, quota: Mapping[str, object]
) -> Call[ResourceQuota]:
    # Anything but an object goes out as it is, for the server to refuse with a 422.
    body = _jsonable(quota) if isinstance(quota, Mapping) else quota
    return Call("PUT", _quota_path(resource), decode_resource_quota, body=body)


def get_resource_quota(resource: str | SubjectRef) -> Call[ResourceQuota]:
    return Call("GET", _quota_path(resource), decode_resource_quota)


def delete_resource_quota(resource: str | SubjectRef) -> Call[None]:
    return Call("DELETE", _quota_path(resource), _nothing)


# keys and audit


def create_key(
    role: str | Role, *, subject: str | SubjectRef | None, name: str | None
) -> Call[tuple[ApiKey, str]]:
    body = {"role": str(role)}
    body |= _without_none(subject=subject, name=name)
    return Call("POST", "/v1/keys", lambda data: (decode_key(data), str(data["key"])), body=body)


def list_keys(*, offset: int, limit: int) -> Call[Page[ApiKey]]:
    return Call(
        "GET",
        "/v1/keys",
        lambda data: decode_page(data, decode_key),
        params=_params(offset=offset, limit=limit),
    )


def revoke_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/keys/{_segment(key_id, 'id')}", _nothing)


def audit(*, subject: str | None, offset: int, limit: int) -> Call[Page[AuditEntry]]:
    return Call(
        "GET",
        "/v1/audit",
        lambda data: decode_page(data, decode_audit_entry),
        params=_params(subject=subject, offset=offset, limit=limit),
    )


# response parsing: the decoders live in ``tokenquota.wire``, beside the encoders
# the routes use, so an answer is read by the same code that describes it.


def _nothing(_: Any) -> None:
    return None


def _released(data: Any) -> bool:
    return bool(data["released"])


def _balance(data: Any) -> Balance | None:
    """The balance inside a grants answer; None when the subject is not prepaid."""
    wallet = data["balance"]
    return None if wallet is None else decode_balance(wallet)


def _refused_reservation(decision: Decision) -> Reserved:
    return Reserved(decision, None)


def _refused_lease(decision: Decision) -> Acquired:
    return Acquired(decision, None)
