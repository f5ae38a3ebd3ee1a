"""The decision arithmetic as it was before it was made fast (commit c56b3b5), kept as an oracle.

``domain.decisions.decide`` was rewritten for speed (no per-limit copies, no
closures, reasons set at construction); these functions are the previous
straightforward version, unchanged but for their imports, so that
test_decide_oracle.py can check that the fast one answers exactly the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    LimitStatus,
    Mode,
    Prepaid,
    Reading,
    Readings,
    Reason,
)
from tokenquota.domain.grants import balance
from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import Amounts, Metric, from_units
from tokenquota.domain.resources import DenyReason, capacity_admits
from tokenquota.domain.windows import admits


def status(
    check: Check, reading: Reading, tz: ZoneInfo, *, added: int = 0, held: int = 0
) -> LimitStatus:
    """The limit as it stands with ``added`` used and ``held`` reserved on top of the reading."""
    limit = check.limit
    metric = limit.key.metric
    window = limit.key.window
    reserved = reading.reserved + held
    reset_at = None
    if window is None and metric is not Metric.CONCURRENT_REQUESTS:
        used: int | None = None  # a per-request cap has nothing to use up
        remaining = None if limit.unlimited else limit.value
        within = True
    else:
        used = sum(reading.buckets.values()) + added
        remaining = None if limit.unlimited else max(0, limit.value - used - reserved)
        within = limit.unlimited or used < limit.value  # contract §5: within_limit is used < limit
        if window is not None:
            buckets = dict(reading.buckets)
            if added and check.bucket is not None:
                buckets[check.bucket] = buckets.get(check.bucket, 0) + added
            reset_at = window.reset_at(check.read_at, tz, buckets)
    return LimitStatus(
        subject=str(limit.subject),
        metric=metric.value,
        window=window.key if window else None,
        limit=UNLIMITED if limit.unlimited else from_units(metric, limit.value),
        source=limit.source.value,
        shadow=limit.shadow,
        used=None if used is None else from_units(metric, used),
        reserved=from_units(metric, reserved),
        remaining=None if remaining is None else from_units(metric, remaining),
        reset_at=reset_at,
        within_limit=within,
    )


def blocks(check: Check, reading: Reading) -> bool:
    """Held reservations count as used: a hold is budget nobody else may take."""
    limit = check.limit
    if limit.unlimited:
        return False
    metric = limit.key.metric
    if metric is Metric.INPUT_SEQUENCE_LENGTH:
        return check.amount > limit.value
    if check.bucket is None and metric is not Metric.CONCURRENT_REQUESTS:
        return False
    return not admits(sum(reading.buckets.values()) + reading.reserved, check.amount, limit.value)


def decide(
    plan: DebitPlan,
    readings: Readings,
    event_id: int | None = None,
    prepaid: Sequence[Prepaid] = (),
) -> Decision:
    """Measure the request against every check; enforce is all-or-nothing, record always passes.

    ``prepaid`` holds the grants of charged subjects that have any: their
    credits must fit what is left (less what live reservations hold).
    """
    blocked: list[int] = []
    shadow: list[int] = []
    capacity_readings = readings[len(plan.checks) :]
    readings = readings[: len(plan.checks)]
    for i, (check, reading) in enumerate(zip(plan.checks, readings, strict=True)):
        if blocks(check, reading):
            (shadow if check.limit.shadow else blocked).append(i)
    capacity = _capacity(plan, capacity_readings)
    wallets = [_wallet(plan, p) for p in prepaid if p.grants]
    broke = [status for status, fits in wallets if not fits]
    allowed = plan.mode is Mode.RECORD or (
        not blocked and not broke and (capacity is None or capacity[1])
    )

    def counted(check: Check) -> int:
        lands = check.bucket is not None or check.limit.key.metric is Metric.CONCURRENT_REQUESTS
        return check.amount if allowed and lands else 0

    refusing = set(blocked) | set(shadow)
    statuses = tuple(
        replace(
            status(c, r, plan.tz, held=counted(c))
            if plan.hold
            else status(c, r, plan.tz, added=counted(c)),
            reason=_reason(c) if i in refusing else None,
        )
        for i, (c, r) in enumerate(zip(plan.checks, readings, strict=True))
    )
    retry_after = None
    blocked_by = tuple(statuses[i] for i in blocked)
    cap_refuses = capacity is not None and not capacity[1] and plan.mode is Mode.ENFORCE
    cap_exceeded = False
    if capacity is not None:
        cap_status, _, _ = capacity
        if allowed and plan.capacity is not None:
            cap_status = _with_added(cap_status, plan.capacity.amount, hold=plan.hold)
        if cap_refuses:
            assert plan.capacity is not None
            # More than the whole capacity: no minute ever admits it.
            cap_exceeded = plan.capacity.amount > int(cap_status.limit)
            cap_status = replace(
                cap_status, reason=Reason.EXCEEDS_LIMIT if cap_exceeded else Reason.LIMIT_REACHED
            )
            blocked_by += (cap_status,)
        statuses += (cap_status,)
    enforce = plan.mode is Mode.ENFORCE
    wallet_statuses = tuple(
        status if fits or not enforce else replace(status, reason=Reason.INSUFFICIENT_CREDITS)
        for status, fits in wallets
    )
    statuses += wallet_statuses
    if enforce:
        blocked_by += tuple(
            s for s, (_, fits) in zip(wallet_statuses, wallets, strict=True) if not fits
        )
    if not allowed:
        retry_after = _retry_after(plan, readings, blocked)
        if cap_refuses and retry_after is not None:
            assert capacity is not None
            retry_after = max(retry_after, capacity[2]) if blocked else capacity[2]
        if broke or cap_exceeded:
            retry_after = None  # waiting adds no credits, and no minute fits the amount
    return Decision(
        allowed=allowed,
        subject=str(plan.subject),
        mode=plan.mode,
        amounts=plan.amounts.to_numbers(),
        timestamp=plan.timestamp,
        limits=statuses,
        blocked_by=blocked_by,
        shadow_blocked=tuple(statuses[i] for i in shadow),
        retry_after=retry_after,
        event_id=event_id if allowed else None,
        reason=None if allowed else _overall(blocked_by),
    )


def _reason(check: Check) -> Reason:
    """Why a blocking check refuses: the amount alone is too big, or the limit is used up."""
    if not admits(0, check.amount, check.limit.value):
        return Reason.EXCEEDS_LIMIT
    return Reason.LIMIT_REACHED


def _overall(blocked_by: Sequence[LimitStatus]) -> str:
    """The refusal's reason: the one that most tells a client not to wait."""
    reasons = {s.reason for s in blocked_by}
    for reason in (Reason.EXCEEDS_LIMIT, Reason.INSUFFICIENT_CREDITS):
        if reason in reasons:
            return reason.value
    return Reason.LIMIT_REACHED.value


def capacity_refuses(plan: DebitPlan, capacity_readings: Readings) -> bool:
    """Whether the contract §6 capacity test alone refuses an enforced request.

    A store that cannot run ``decide`` inside its atomic section (Redis) asks
    this first, then makes the atomic section confirm it read the same.
    """
    verdict = _capacity(plan, capacity_readings)
    return plan.mode is Mode.ENFORCE and verdict is not None and not verdict[1]


def _capacity(plan: DebitPlan, readings: Readings) -> tuple[LimitStatus, bool, int] | None:
    """The capacity verdict as a limit status, whether it admits, and seconds to wait."""
    cap = plan.capacity
    if cap is None or cap.quota.capacity is None:
        return None
    total = readings[0]
    used = sum(total.buckets.values())
    held = total.reserved
    used_by = {
        consumer: sum(r.buckets.values()) + r.reserved
        for (consumer, _), r in zip(cap.shares, readings[1:], strict=True)
    }
    verdict = capacity_admits(cap.quota, cap.consumer, cap.amount, used + held, used_by)
    metric = cap.total.limit.key.metric
    window = cap.total.limit.key.window
    assert window is not None
    bound = cap.quota.capacity.value if verdict.headroom is None else int(verdict.headroom)
    reset_at = window.reset_at(cap.total.read_at, plan.tz, {0: 1})
    status = LimitStatus(
        subject=str(cap.resource),
        metric=metric.value,
        window=window.key,
        limit=cap.quota.capacity.value,
        source="saturation" if verdict.reason is DenyReason.RESERVED_FOR_OTHERS else "capacity",
        shadow=False,
        used=used,
        reserved=held,
        remaining=max(0, bound - used - held),
        reset_at=reset_at,
        within_limit=used < cap.quota.capacity.value,
    )
    wait = math.ceil((reset_at - plan.now).total_seconds()) if reset_at else 60
    return status, verdict.admitted, max(1, wait)


def prepaid_status(prepaid: Prepaid, now: datetime, tz: ZoneInfo) -> LimitStatus:
    """A prepaid subject's balance as usage shows it."""
    plan = DebitPlan(
        subject=prepaid.subject,
        charged=(prepaid.subject,),
        amounts=Amounts({}),
        mode=Mode.ENFORCE,
        timestamp=now,
        now=now,
        tz=tz,
        checks=(),
    )
    return _wallet(plan, prepaid)[0]


def _wallet(plan: DebitPlan, prepaid: Prepaid) -> tuple[LimitStatus, bool]:
    """A prepaid subject's balance as a limit status, and whether the request fits it."""
    wallet = balance(prepaid.subject, prepaid.grants, plan.now)
    assert wallet is not None
    available = max(0, wallet.remaining - prepaid.held)
    amount = plan.amounts[Metric.CREDITS]
    fits = amount == 0 or amount <= available
    spend = min(amount, available) if fits or plan.mode is Mode.RECORD else 0
    held = prepaid.held + (spend if plan.hold else 0)
    left = available - spend
    return (
        LimitStatus(
            subject=str(prepaid.subject),
            metric=Metric.CREDITS.value,
            window="prepaid",
            limit=from_units(Metric.CREDITS, wallet.granted),
            source="grant",
            shadow=False,
            used=from_units(
                Metric.CREDITS, wallet.granted - wallet.remaining + (0 if plan.hold else spend)
            ),
            reserved=from_units(Metric.CREDITS, held),
            remaining=from_units(Metric.CREDITS, max(0, left)),
            reset_at=wallet.next_expiry,
            within_limit=left > 0,
        ),
        fits,
    )


def _with_added(status: LimitStatus, amount: int, *, hold: bool) -> LimitStatus:
    assert isinstance(status.used, int)
    assert isinstance(status.reserved, int)
    assert isinstance(status.remaining, int)
    if hold:
        return replace(
            status, reserved=status.reserved + amount, remaining=max(0, status.remaining - amount)
        )
    used = status.used + amount
    limit = int(status.limit)
    return replace(
        status, used=used, remaining=max(0, status.remaining - amount), within_limit=used < limit
    )


def _retry_after(plan: DebitPlan, readings: Readings, blocked: Sequence[int]) -> int | None:
    """Seconds until every blocking limit would admit the request; None if one never will.

    A reservation's hold is assumed to last until it expires; a lease likewise.
    """
    latest = plan.now
    for i in blocked:
        check, reading = plan.checks[i], readings[i]
        window = check.limit.key.window
        if window is None:
            if check.limit.key.metric is not Metric.CONCURRENT_REQUESTS:
                return None  # a per-request cap does not pass with time
            if reading.held_until is None or not admits(0, check.amount, check.limit.value):
                return None
            latest = max(latest, reading.held_until)
            continue
        when = window.admits_at(
            check.read_at,
            plan.tz,
            reading.buckets,
            check.amount,
            check.limit.value,
            held=reading.reserved,
        )
        if when is None and reading.reserved and reading.held_until is not None:
            # Not while the holds last; perhaps once they have expired.
            when = window.admits_at(
                check.read_at, plan.tz, reading.buckets, check.amount, check.limit.value
            )
            when = max(when, reading.held_until) if when is not None else None
        if when is None:
            return None
        latest = max(latest, when)
    return max(1, math.ceil((latest - plan.now).total_seconds()))
