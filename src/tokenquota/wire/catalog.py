"""The configuration as the API shows it: subjects, rules, plans, keys, resource quotas."""

from __future__ import annotations

from typing import Any

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.limits import (
    EffectiveLimit,
    LimitKey,
    Plan,
    Rule,
    Source,
    limit_to_wire,
    parse_limit_value,
)
from tokenquota.domain.metrics import wire_number
from tokenquota.domain.resources import Capacity, Policy, ResourceQuota, ResourceRule
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import DefaultRule, LimitsView
from tokenquota.wire.fields import iso, ref_text, time


def encode_subject(subject: Subject) -> dict[str, Any]:
    return {
        "ref": str(subject.ref),
        "kind": subject.ref.kind,
        "id": subject.ref.id,
        "name": subject.name,
        "metadata": dict(subject.metadata),
        "parents": [str(p) for p in subject.parents],
        "plan_id": subject.plan_id,
    }


def decode_subject(data: Any) -> Subject:
    return Subject(
        ref=SubjectRef.parse(data["ref"]),
        name=data.get("name"),
        metadata=dict(data.get("metadata") or {}),
        parents=tuple(SubjectRef.parse(p) for p in data.get("parents") or ()),
        plan_id=data.get("plan_id"),
    )


def _key_fields(key: LimitKey) -> dict[str, object]:
    return {"metric": key.metric.value, "window": key.window.key if key.window else None}


def _key(data: Any) -> LimitKey:
    return LimitKey.parse(data["metric"], data.get("window"))


def _value(key: LimitKey, value: Any) -> int:
    units = parse_limit_value(key.metric, value, "limit")
    if units is None:
        raise ValidationError("limit", "the server answered a rule without a value")
    return units


def encode_rule(rule: Rule) -> dict[str, object]:
    return {
        **_key_fields(rule.key),
        "limit": wire_number(limit_to_wire(rule.key.metric, rule.value)),
        "shadow": rule.shadow,
        "thresholds": list(rule.thresholds),
    }


def decode_rule(data: Any) -> Rule:
    key = _key(data)
    return Rule(
        key,
        _value(key, data["limit"]),
        bool(data.get("shadow", False)),
        tuple(int(t) for t in data.get("thresholds") or ()),
    )


def encode_effective_limit(limit: EffectiveLimit) -> dict[str, object]:
    return {
        "subject": str(limit.subject),
        **_key_fields(limit.key),
        "limit": wire_number(limit_to_wire(limit.key.metric, limit.value)),
        "source": limit.source.value,
        "shadow": limit.shadow,
        "thresholds": list(limit.thresholds),
    }


def decode_effective_limit(data: Any) -> EffectiveLimit:
    key = _key(data)
    return EffectiveLimit(
        subject=SubjectRef.parse(data["subject"]),
        key=key,
        value=_value(key, data["limit"]),
        source=Source(data["source"]),
        shadow=bool(data.get("shadow", False)),
        thresholds=tuple(int(t) for t in data.get("thresholds") or ()),
    )


def encode_plan(plan: Plan) -> dict[str, object]:
    return {"id": plan.id, "name": plan.name, "rules": [encode_rule(r) for r in plan.rules]}


def decode_plan(data: Any) -> Plan:
    return Plan(
        id=str(data["id"]),
        name=str(data["name"]),
        rules=tuple(decode_rule(r) for r in data.get("rules") or ()),
    )


def decode_limits_view(data: Any) -> LimitsView:
    plan = data.get("plan")
    return LimitsView(
        subject=str(data["subject"]),
        overrides=tuple(decode_rule(r) for r in data.get("overrides") or ()),
        plan=decode_plan(plan) if plan is not None else None,
        effective=tuple(decode_effective_limit(e) for e in data.get("effective") or ()),
    )


def encode_default_rule(default: DefaultRule) -> dict[str, object]:
    return {"kind": default.kind, **encode_rule(default.rule), "origin": default.origin}


def decode_default_rules(data: Any) -> list[DefaultRule]:
    return [
        DefaultRule(kind=str(d["kind"]), rule=decode_rule(d), origin=str(d.get("origin", "")))
        for d in data["defaults"]
    ]


def encode_key(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "role": key.role.value,
        "subject": ref_text(key.subject),
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "revoked_at": iso(key.revoked_at),
    }


def decode_key(data: Any) -> ApiKey:
    subject = data.get("subject")
    return ApiKey(
        id=str(data["id"]),
        role=Role(data["role"]),
        subject=SubjectRef.parse(subject) if subject is not None else None,
        name=data.get("name"),
        created_at=time(data["created_at"]),
        revoked_at=None if data.get("revoked_at") is None else time(data["revoked_at"]),
    )


def encode_resource_rule(rule: ResourceRule) -> dict[str, object]:
    return {
        "metric": rule.metric.value,
        "window": rule.window.key if rule.window is not None else None,
        "limit": rule.limit,
    }


def encode_policy(policy: Policy) -> dict[str, object]:
    return {
        "consumer": str(policy.consumer),
        "rules": [encode_resource_rule(r) for r in policy.rules],
        # A string, as credits are, so no JSON parser turns the share into a float.
        "reserved": wire_number(policy.reserved),
    }


def encode_capacity(capacity: Capacity) -> dict[str, object]:
    return {"value": capacity.value, "units": capacity.units.value}


def encode_resource_quota(quota: ResourceQuota) -> dict[str, object]:
    return {
        "default_rules": [encode_resource_rule(r) for r in quota.default_rules],
        "policies": [encode_policy(p) for p in quota.policies],
        "capacity": encode_capacity(quota.capacity) if quota.capacity is not None else None,
        "saturation_threshold": wire_number(quota.saturation_threshold),
    }


def decode_resource_quota(data: Any) -> ResourceQuota:
    """The answer's ``resource`` names whose quota it is; the quota is the rest."""
    return ResourceQuota.parse({k: v for k, v in data.items() if k != "resource"}, field="")
