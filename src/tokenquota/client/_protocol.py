"""What the sync and async clients share: requests as data, responses as parsers.

Every operation is a pure function that returns a ``Call``: the HTTP method,
path, query and body, plus the function that turns the decoded JSON answer
into the library's own types. The two clients only send a ``Call`` and hand
the answer to ``finish``, so each operation's wire format lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from tokenquota.domain.decisions import Decision, LimitStatus, Mode, QuotaExceeded
from tokenquota.domain.errors import (
    Conflict,
    CycleError,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    TokenQuotaError,
    Unauthorized,
    ValidationError,
)
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.holds import HoldState, Lease, Reservation, ReservationClosed
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import (
    EffectiveLimit,
    LimitKey,
    Plan,
    Rule,
    Source,
    parse_limit_value,
)
from tokenquota.domain.metrics import Amounts, Metric, Number, merge_amounts, to_units
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

T = TypeVar("T")
Params = dict[str, str | int | bool]
ExportFormat = Literal["csv", "jsonl"]

USER_AGENT: Final = "tokenquota-client/0.1.0"
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


def finish(call: Call[T], response: httpx.Response) -> T:
    """Raise the library's error for an error answer, else parse it (the body is read)."""
    if response.is_error:
        error = error_from(response)
        if call.refused is not None and isinstance(error, QuotaExceeded):
            return call.refused(error.decision)
        raise error
    if response.status_code == 204 or not response.content:
        return call.parse(None)
    return call.parse(response.json())


_BY_CODE: Final[dict[str, type[TokenQuotaError]]] = {
    cls.code: cls
    for cls in (
        NotFound,
        Conflict,
        CycleError,
        IdempotencyConflict,
        ReservationClosed,
        Unauthorized,
        Forbidden,
        StoreUnavailable,
    )
}
_BY_STATUS: Final[dict[int, type[TokenQuotaError]]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: StoreUnavailable,
}


def error_from(response: httpx.Response) -> TokenQuotaError:
    """The exception an error answer stands for, chosen by its stable ``code``."""
    status = response.status_code
    try:
        error = response.json()["error"]
        code = str(error["code"])
        message = str(error.get("message") or code)
        details = dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not our error shape (e.g. a proxy's HTML page): go by the status alone.
        code, message, details = "", f"HTTP {status}: {response.text[:200]}", {}
    if code == "quota_exceeded" and isinstance(details.get("decision"), Mapping):
        exc: TokenQuotaError = QuotaExceeded(
            message, Decision.from_wire(details["decision"]), details=details
        )
        return exc
    if code == "validation_error" or (not code and status == 422):
        field = str(details.get("field") or "body")
        exc = ValidationError(field, message, details=details)
        # Keep the server's message as it is: it already names the field.
        exc.message = message
        exc.args = (message,)
        return exc
    cls = _BY_CODE.get(code) or (None if code else _BY_STATUS.get(status))
    if cls is not None:
        return cls(message, details=details)
    return TokenQuotaError(
        f"{message} ({code or 'error'}, HTTP {status})" if code else message, details=details
    )


class LineSplitter:
    """Cuts streamed text into lines that keep their ending, like iterating a file.

    Only "\n" ends a line, so a CSV record's "\r\n" stays whole and a quoted
    field holding a newline survives for ``csv.reader``.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        *lines, self._pending = (self._pending + text).split("\n")
        return [line + "\n" for line in lines]

    def end(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []


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
    return Call("POST", "/v1/check", Decision.from_wire, body=body)


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
    return Call("POST", "/v1/consume", Decision.from_wire, body=body)


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
        parse_reserved,
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
    return Call(
        "POST", f"{_reservation_path(reservation_id)}/commit", Decision.from_wire, body=body
    )


def release(reservation_id: str) -> Call[bool]:
    return Call("DELETE", _reservation_path(reservation_id), _released)


def get_reservation(reservation_id: str) -> Call[Reservation]:
    return Call("GET", _reservation_path(reservation_id), parse_reservation)


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
        parse_acquired,
        body={"subject": str(subject), "ttl": _ttl(ttl)} | _without_none(resource=resource),
        refused=None if raise_refused else _refused_lease,
    )


def _lease_path(lease_id: str) -> str:
    return f"/v1/leases/{_segment(lease_id, 'id')}"


def release_lease(lease_id: str) -> Call[bool]:
    return Call("DELETE", _lease_path(lease_id), _released)


def heartbeat(lease_id: str, *, ttl: float | timedelta) -> Call[Lease]:
    return Call("POST", f"{_lease_path(lease_id)}/heartbeat", parse_lease, body={"ttl": _ttl(ttl)})


def get_lease(lease_id: str) -> Call[Lease]:
    return Call("GET", _lease_path(lease_id), parse_lease)


# reads


def usage(subject: str | SubjectRef, include_ancestors: bool) -> Call[Usage]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/usage",
        parse_usage,
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
        lambda data: [parse_history_point(p) for p in data["points"]],
        params=_params(start=start, end=end, granularity=granularity, group_by=group_by),
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
        lambda data: parse_page(data, parse_event),
        params=_params(
            subject=subject, start=start, end=end, offset=offset, limit=limit, format="json"
        ),
    )


def shadow_hits(subject: str | SubjectRef) -> Call[dict[str, int]]:
    """Read from the subject's usage, which carries each shadow limit's count."""
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/usage",
        parse_shadow_hits,
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
    return Call("PUT", f"/v1/subjects/{_ref(subject)}", parse_subject, body=body)


def get_subject(subject: str | SubjectRef) -> Call[Subject]:
    return Call("GET", f"/v1/subjects/{_ref(subject)}", parse_subject)


def list_subjects(
    *, kind: str | None, parent: str | SubjectRef | None, offset: int, limit: int
) -> Call[Page[Subject]]:
    return Call(
        "GET",
        "/v1/subjects",
        lambda data: parse_page(data, parse_subject),
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
        parse_limits_view,
        body={"limits": _jsonable(list(limits))},
    )


def limits(subject: str | SubjectRef) -> Call[LimitsView]:
    return Call("GET", f"/v1/subjects/{_ref(subject)}/limits", parse_limits_view)


def set_defaults(items: Sequence[Mapping[str, object]]) -> Call[list[DefaultRule]]:
    return Call("PUT", "/v1/defaults", parse_defaults, body={"defaults": _jsonable(list(items))})


def defaults() -> Call[list[DefaultRule]]:
    return Call("GET", "/v1/defaults", parse_defaults)


def create_plan(name: str, rules: Sequence[Mapping[str, object]]) -> Call[Plan]:
    return Call(
        "POST", "/v1/plans", parse_plan, body={"name": name, "rules": _jsonable(list(rules))}
    )


def update_plan(
    plan: str, *, name: str | None, rules: Sequence[Mapping[str, object]] | None
) -> Call[Plan]:
    body = _without_none(name=name, rules=list(rules) if rules is not None else None)
    return Call("PUT", f"/v1/plans/{_segment(plan, 'plan_id')}", parse_plan, body=body)


def get_plan(plan: str) -> Call[Plan]:
    return Call("GET", f"/v1/plans/{_segment(plan, 'plan_id')}", parse_plan)


def plans() -> Call[list[Plan]]:
    return Call("GET", "/v1/plans", lambda data: [parse_plan(p) for p in data["items"]])


def delete_plan(plan: str) -> Call[None]:
    return Call("DELETE", f"/v1/plans/{_segment(plan, 'plan_id')}", _nothing)


def assign_plan(subject: str | SubjectRef, plan: str | None) -> Call[LimitsView]:
    path = f"/v1/subjects/{_ref(subject)}/plan"
    if plan is None:
        return Call("DELETE", path, parse_limits_view)
    _segment(plan, "plan_id")
    return Call("PUT", path, parse_limits_view, body={"plan_id": plan})


# prepaid credits


def grant(
    subject: str | SubjectRef, credits: object, *, expires_at: datetime | None
) -> Call[Grant]:
    body = {"credits": _jsonable(credits)} | _without_none(expires_at=expires_at)
    return Call("POST", f"/v1/subjects/{_ref(subject)}/grants", parse_grant, body=body)


def grants(subject: str | SubjectRef) -> Call[list[Grant]]:
    return Call(
        "GET",
        f"/v1/subjects/{_ref(subject)}/grants",
        lambda data: [parse_grant(g) for g in data["items"]],
    )


def balance(subject: str | SubjectRef) -> Call[Balance | None]:
    """The same answer as ``grants``: the list comes with the balance."""
    return Call("GET", f"/v1/subjects/{_ref(subject)}/grants", parse_balance)


# resource quotas


def _quota_path(resource: str | SubjectRef) -> str:
    return f"/v1/resources/{_ref(resource, 'resource')}/quota"


def set_resource_quota(
    resource: str | SubjectRef, quota: Mapping[str, object]
) -> Call[ResourceQuota]:
    # Anything but an object goes out as it is, for the server to refuse with a 422.
    body = _jsonable(quota) if isinstance(quota, Mapping) else quota
    return Call("PUT", _quota_path(resource), parse_resource_quota, body=body)


def get_resource_quota(resource: str | SubjectRef) -> Call[ResourceQuota]:
    return Call("GET", _quota_path(resource), parse_resource_quota)


def delete_resource_quota(resource: str | SubjectRef) -> Call[None]:
    return Call("DELETE", _quota_path(resource), _nothing)


# keys and audit


def create_key(
    role: str | Role, *, subject: str | SubjectRef | None, name: str | None
) -> Call[tuple[ApiKey, str]]:
    body = {"role": str(role)}
    body |= _without_none(subject=subject, name=name)
    return Call("POST", "/v1/keys", lambda data: (parse_key(data), str(data["key"])), body=body)


def list_keys(*, offset: int, limit: int) -> Call[Page[ApiKey]]:
    return Call(
        "GET",
        "/v1/keys",
        lambda data: parse_page(data, parse_key),
        params=_params(offset=offset, limit=limit),
    )


def revoke_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/keys/{_segment(key_id, 'id')}", _nothing)


def audit(*, subject: str | None, offset: int, limit: int) -> Call[Page[AuditEntry]]:
    return Call(
        "GET",
        "/v1/audit",
        lambda data: parse_page(data, parse_audit_entry),
        params=_params(subject=subject, offset=offset, limit=limit),
    )


# response parsing ----------------------------------------------------------


def _nothing(_: Any) -> None:
    return None


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _optional_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def number(metric: str, value: Any) -> Number:
    """A wire amount in the metric's own unit: Decimal for credits, int otherwise."""
    if Metric(metric).is_decimal:
        return Decimal(str(value))
    return int(value)


def parse_page(data: Any, item: Callable[[Any], T]) -> Page[T]:
    return Page(
        items=[item(x) for x in data["items"]],
        total=int(data["total"]),
        offset=int(data["offset"]),
        limit=int(data["limit"]),
    )


def parse_usage(data: Any) -> Usage:
    return Usage(
        subject=str(data["subject"]),
        at=_time(data["at"]),
        limits=tuple(LimitStatus.from_wire(s) for s in data["limits"]),
    )


def parse_shadow_hits(data: Any) -> dict[str, int]:
    """Counts by ``metric/window``; a shadow limit that blocked nothing is left out.

    As the engine's ``shadow_hits``, which counts only what would have been blocked.
    """
    hits: dict[str, int] = {}
    for limit in data["limits"]:
        if limit.get("shadow") and limit.get("shadow_hits"):
            hits[str(_key(limit))] = int(limit["shadow_hits"])
    return hits


def parse_history_point(data: Any) -> HistoryPoint:
    return HistoryPoint(
        start=_time(data["start"]),
        end=_time(data["end"]),
        metric=str(data["metric"]),
        model=data.get("model"),
        value=number(data["metric"], data["value"]),
    )


def parse_amounts(data: Any) -> Amounts:
    """Wire amounts (credits as decimal strings) back to units, as the engine keeps them."""
    units = {}
    for name, value in data.items():
        metric = Metric(name)
        units[metric] = to_units(metric, value, f"amounts.{name}")
    return Amounts(units)


def parse_event(data: Any) -> Event:
    return Event(
        id=int(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=tuple(SubjectRef.parse(s) for s in data.get("charged", ())),
        timestamp=_time(data["timestamp"]),
        recorded_at=_time(data["recorded_at"]),
        mode=Mode(data["mode"]),
        amounts=parse_amounts(data["amounts"]),
        model=data.get("model"),
        tags=dict(data.get("tags") or {}),
        idempotency_key=data.get("idempotency_key"),
        kind=str(data.get("kind", "consume")),
        resource=_optional_ref(data.get("resource")),
    )


def parse_subject(data: Any) -> Subject:
    return Subject(
        ref=SubjectRef.parse(data["ref"]),
        name=data.get("name"),
        metadata=dict(data.get("metadata") or {}),
        parents=tuple(SubjectRef.parse(p) for p in data.get("parents") or ()),
        plan_id=data.get("plan_id"),
    )


def _key(data: Any) -> LimitKey:
    return LimitKey.parse(data["metric"], data.get("window"))


def _value(key: LimitKey, value: Any) -> int:
    units = parse_limit_value(key.metric, value, "limit")
    if units is None:
        raise ValidationError("limit", "the server answered a rule without a value")
    return units


def parse_rule(data: Any) -> Rule:
    key = _key(data)
    return Rule(key, _value(key, data["limit"]), bool(data.get("shadow", False)))


def parse_effective_limit(data: Any) -> EffectiveLimit:
    key = _key(data)
    return EffectiveLimit(
        subject=SubjectRef.parse(data["subject"]),
        key=key,
        value=_value(key, data["limit"]),
        source=Source(data["source"]),
        shadow=bool(data.get("shadow", False)),
    )


def parse_plan(data: Any) -> Plan:
    return Plan(
        id=str(data["id"]),
        name=str(data["name"]),
        rules=tuple(parse_rule(r) for r in data.get("rules") or ()),
    )


def parse_limits_view(data: Any) -> LimitsView:
    plan = data.get("plan")
    return LimitsView(
        subject=str(data["subject"]),
        overrides=tuple(parse_rule(r) for r in data.get("overrides") or ()),
        plan=parse_plan(plan) if plan is not None else None,
        effective=tuple(parse_effective_limit(e) for e in data.get("effective") or ()),
    )


def parse_defaults(data: Any) -> list[DefaultRule]:
    return [
        DefaultRule(kind=str(d["kind"]), rule=parse_rule(d), origin=str(d.get("origin", "")))
        for d in data["defaults"]
    ]


def parse_key(data: Any) -> ApiKey:
    subject = data.get("subject")
    return ApiKey(
        id=str(data["id"]),
        role=Role(data["role"]),
        subject=SubjectRef.parse(subject) if subject is not None else None,
        name=data.get("name"),
        created_at=_time(data["created_at"]),
        revoked_at=_optional_time(data.get("revoked_at")),
    )


def parse_audit_entry(data: Any) -> AuditEntry:
    return AuditEntry(
        id=int(data["id"]),
        at=_time(data["at"]),
        actor=str(data["actor"]),
        action=str(data["action"]),
        target=str(data["target"]),
        before=data.get("before"),
        after=data.get("after"),
    )


def _credit_units(value: Any, field: str) -> int:
    return to_units(Metric.CREDITS, value, field)


def parse_grant(data: Any) -> Grant:
    """A grant from its wire form; ``state`` is left out, as it is derived from the others."""
    return Grant(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        amount=_credit_units(data["amount"], "amount"),
        granted_at=_time(data["granted_at"]),
        expires_at=_optional_time(data.get("expires_at")),
        remaining=_credit_units(data["remaining"], "remaining"),
    )


def parse_balance(data: Any) -> Balance | None:
    wallet = data["balance"]
    if wallet is None:
        return None
    return Balance(
        subject=SubjectRef.parse(wallet["subject"]),
        remaining=_credit_units(wallet["remaining"], "remaining"),
        granted=_credit_units(wallet["granted"], "granted"),
        next_expiry=_optional_time(wallet.get("next_expiry")),
    )


def parse_resource_quota(data: Any) -> ResourceQuota:
    """The quota from its wire form; the answer's ``resource`` names whose it is."""
    return ResourceQuota.parse({k: v for k, v in data.items() if k != "resource"}, field="")


def _released(data: Any) -> bool:
    return bool(data["released"])


def parse_reservation(data: Any) -> Reservation:
    """A reservation from its wire form.

    The wire leaves out ``charged`` (the ancestors: a member key may not see
    them) and the commit's decision, so those come back as ``()`` and None.
    "expired" is a hold past ``expires_at``, which the engine keeps as
    ``HoldState.HELD`` (``live(now)`` is False).
    """
    state = str(data["state"])
    return Reservation(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=(),
        amounts=parse_amounts(data["amounts"]),
        created_at=_time(data["created_at"]),
        expires_at=_time(data["expires_at"]),
        state=HoldState.HELD if state == "expired" else HoldState(state),
        resource=_optional_ref(data.get("resource")),
    )


def _optional_ref(value: Any) -> SubjectRef | None:
    return SubjectRef.parse(value) if value else None


def parse_reserved(data: Any) -> Reserved:
    return Reserved(Decision.from_wire(data["decision"]), parse_reservation(data["reservation"]))


def _refused_reservation(decision: Decision) -> Reserved:
    return Reserved(decision, None)


def parse_lease(data: Any) -> Lease:
    """A lease from its wire form; ``charged`` is not sent, so it comes back as ``()``."""
    return Lease(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=(),
        created_at=_time(data["created_at"]),
        expires_at=_time(data["expires_at"]),
        released_at=_optional_time(data.get("released_at")),
        resource=_optional_ref(data.get("resource")),
    )


def parse_acquired(data: Any) -> Acquired:
    return Acquired(Decision.from_wire(data["decision"]), parse_lease(data["lease"]))


def _refused_lease(decision: Decision) -> Acquired:
    return Acquired(decision, None)
