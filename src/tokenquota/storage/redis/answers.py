"""The stored records of a Redis store: the first answer to an idempotent request,
and the fields of reservation and lease records.

The first answer is kept by the script that charged it.

An answer is ``decide(plan, readings, event id, prepaid)``: a pure function
of the plan and of what the script read. The script cannot run ``decide``,
but it can keep its inputs: the service sends the plan (as JSON, with where
each check's reading comes back) with the charging call, and the script
stores it next to the readings it found, in the same atomic step as the
charge. A retry recomputes the first answer from those, exactly, whatever
happened in between: a crash after the script, new usage, a changed limit.
Storing the finished answer afterwards would leave a window in which a
crash loses it (issue 11, item 6).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import (
    CapacityPlan,
    Check,
    DebitPlan,
    Decision,
    Mode,
    Prepaid,
    Reading,
    decide,
)
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import HoldState, Lease, Reservation
from tokenquota.domain.limits import EffectiveLimit, LimitKey, Source
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.redis.layout import parse_reading, parse_wallet, split
from tokenquota.wire import stored

# Where one check's reading comes back: (step index, position, bucket fields,
# lease?), or None for a per-request cap that reads nothing.
CheckPlace = tuple[int, int, list[int], bool] | None
# Where one wallet comes back: (step index, position, subject, its grants).
WalletPlace = tuple[int, int, SubjectRef, list[Grant]]


def _check(c: Check) -> list[Any]:
    limit = c.limit
    # Kind and id apart: a resource share's handle (domain.subjects.consumer_ref)
    # is ref-shaped but would not parse back.
    return [
        [limit.subject.kind, limit.subject.id],
        limit.key.metric.value,
        limit.key.window_key,
        limit.value,
        limit.source.value,
        limit.shadow,
        c.amount,
        to_micros(c.read_at),
        c.lo,
        c.hi,
        c.bucket,
    ]


def _uncheck(d: Sequence[Any]) -> Check:
    subject, metric, window, value, source, shadow, amount, read_at, lo, hi, bucket = d
    limit = EffectiveLimit(
        SubjectRef(*subject),
        LimitKey.from_storage(metric, window),
        int(value),
        Source(source),
        bool(shadow),
    )
    return Check(limit, int(amount), from_micros(int(read_at)), int(lo), int(hi), bucket)


def _grant(g: Grant) -> list[Any]:
    return [
        g.id,
        str(g.subject),
        g.amount,
        to_micros(g.granted_at),
        to_micros(g.expires_at) if g.expires_at else None,
    ]


def _ungrant(d: Sequence[Any], remaining: int) -> Grant:
    gid, subject, amount, granted_at, expires_at = d
    return Grant(
        gid,
        SubjectRef.parse(subject),
        int(amount),
        from_micros(int(granted_at)),
        from_micros(int(expires_at)) if expires_at is not None else None,
        remaining,
    )


def plan_json(plan: DebitPlan, checks: Sequence[CheckPlace], wallets: Sequence[WalletPlace]) -> str:
    """Everything ``decide`` needs besides what the script reads."""
    capacity = plan.capacity
    body = {
        "subject": str(plan.subject),
        "charged": [str(s) for s in plan.charged],
        "amounts": plan.amounts.to_units_json(),
        "mode": plan.mode.value,
        "ts": to_micros(plan.timestamp),
        "now": to_micros(plan.now),
        "tz": plan.tz.key,
        "checks": [_check(c) for c in plan.checks],
        "hold": plan.hold,
        "resource": str(plan.resource) if plan.resource else None,
        "capacity": None
        if capacity is None
        else {
            "quota": stored.encode_resource_quota(capacity.quota),
            "resource": str(capacity.resource),
            "consumer": str(capacity.consumer),
            "amount": capacity.amount,
            "total": _check(capacity.total),
            "shares": [[str(s), _check(c)] for s, c in capacity.shares],
        },
        "where": [list(p) if p is not None else None for p in checks],
        "wallets": [[i, pos, str(s), [_grant(g) for g in mine]] for i, pos, s, mine in wallets],
    }
    return json.dumps(body, separators=(",", ":"))


def _unplan(body: dict[str, Any]) -> DebitPlan:
    cap = body["capacity"]
    capacity = (
        None
        if cap is None
        else CapacityPlan(
            ResourceQuota.parse(cap["quota"]),
            SubjectRef.parse(cap["resource"]),
            SubjectRef.parse(cap["consumer"]),
            int(cap["amount"]),
            _uncheck(cap["total"]),
            tuple((SubjectRef.parse(s), _uncheck(c)) for s, c in cap["shares"]),
        )
    )
    return DebitPlan(
        subject=SubjectRef.parse(body["subject"]),
        charged=tuple(SubjectRef.parse(s) for s in body["charged"]),
        amounts=Amounts.from_units_json(body["amounts"]),
        mode=Mode(body["mode"]),
        timestamp=from_micros(int(body["ts"])),
        now=from_micros(int(body["now"])),
        tz=ZoneInfo(body["tz"]),
        checks=tuple(_uncheck(c) for c in body["checks"]),
        hold=bool(body["hold"]),
        resource=SubjectRef.parse(body["resource"]) if body["resource"] else None,
        capacity=capacity,
    )


def first_answer(stored_plan: str, steps: Sequence[tuple[str, str]], event_id: int) -> Decision:
    """The first answer again, from the stored plan and each step's (readings, wallets)."""
    body = json.loads(stored_plan)
    plan = _unplan(body)
    readings: list[Reading] = []
    for place in body["where"]:
        if place is None:
            readings.append(Reading())
            continue
        i, pos, fields, lease = place
        readings.append(parse_reading(split(steps[i][0])[pos], fields, lease))
    prepaid = []
    for i, pos, subject, mine in body["wallets"]:
        remaining, held = parse_wallet(split(steps[i][1])[pos])
        grants = tuple(_ungrant(g, r) for g, r in zip(mine, remaining, strict=True))
        prepaid.append(Prepaid(SubjectRef.parse(subject), grants, held))
    return decide(plan, readings, event_id, prepaid=prepaid)


def committed_answer(row: dict[str, str]) -> Decision | None:
    """A committed reservation's answer: as stored after the script, or recomputed from
    the inputs a one-step commit kept; None when neither survived."""
    if row.get("d"):
        return stored.decode_decision(json.loads(row["d"]))
    if row.get("p") and row.get("state") == HoldState.COMMITTED.value:
        return first_answer(row["p"], [(row.get("rd", ""), row.get("wl", ""))], int(row["eid"]))
    return None


def reservation_fields(r: Reservation) -> list[str]:
    return [
        "state",
        HoldState.HELD.value,
        "subject",
        str(r.subject),
        "charged",
        json.dumps([str(s) for s in r.charged]),
        "amounts",
        json.dumps(r.amounts.to_units_json()),
        "created_at",
        str(to_micros(r.created_at)),
        "expires_at",
        str(to_micros(r.expires_at)),
        "resource",
        str(r.resource) if r.resource else "",
    ]


def lease_fields(lease: Lease) -> list[str]:
    return [
        "state",
        "live",
        "subject",
        str(lease.subject),
        "charged",
        json.dumps([str(s) for s in lease.charged]),
        "created_at",
        str(to_micros(lease.created_at)),
        "expires_at",
        str(to_micros(lease.expires_at)),
        "resource",
        str(lease.resource) if lease.resource else "",
    ]
