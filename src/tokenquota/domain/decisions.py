"""Decisions: the pure part of check and consume.

The engine turns a request into a ``DebitPlan`` (which limits apply, which
buckets to read); a store reads those buckets inside its atomic section and
calls ``decide`` there, so the comparison and the write see the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.frozen import builder
from tokenquota.domain.grants import balance
from tokenquota.domain.limits import UNLIMITED
from tokenquota.domain.metrics import Amounts, Metric, Number, from_units
from tokenquota.domain.outcomes import RESOURCE_SOURCES as RESOURCE_SOURCES
from tokenquota.domain.outcomes import Decision as Decision
from tokenquota.domain.outcomes import LimitStatus as LimitStatus
from tokenquota.domain.outcomes import QuotaExceeded as QuotaExceeded
from tokenquota.domain.outcomes import Reason as Reason
from tokenquota.domain.outcomes import Scope as Scope
from tokenquota.domain.outcomes import WithheldBlock as WithheldBlock
from tokenquota.domain.outcomes import deferred_decision, new_decision, new_status
from tokenquota.domain.plans import CapacityPlan as CapacityPlan
from tokenquota.domain.plans import Check as Check
from tokenquota.domain.plans import DebitPlan as DebitPlan
from tokenquota.domain.plans import Mode as Mode
from tokenquota.domain.plans import Placement
from tokenquota.domain.plans import Prepaid as Prepaid
from tokenquota.domain.plans import Reading as Reading
from tokenquota.domain.plans import Readings as Readings
from tokenquota.domain.resources import DenyReason, capacity_admits
from tokenquota.domain.windows import admits

_new_reading: Final = builder(Reading)  # Reading(...) without its frozen __init__
# Compared by identity on the hot path: cheaper than the enum properties.
_CREDITS: Final = Metric.CREDITS
_CONCURRENT: Final = Metric.CONCURRENT_REQUESTS
_SEQUENCE: Final = Metric.INPUT_SEQUENCE_LENGTH


def status(
    check: Check, reading: Reading, tz: ZoneInfo, *, added: int = 0, held: int = 0
) -> LimitStatus:
    """The limit as it stands with ``added`` used and ``held`` reserved on top of the reading."""
    return _status(check, reading, tz, added, held, None)


def _left(value: int, used: int, reserved: int, unlimited: bool) -> tuple[int | None, bool]:
    """A window's remaining (never below 0; None when unlimited) and within_limit, which
    contract §5 makes ``used < limit``: one rule for ``_status`` and the span rows."""
    if unlimited:
        return None, True
    return max(value - used - reserved, 0), used < value


def _status(
    check: Check, reading: Reading, tz: ZoneInfo, added: int, held: int, reason: Reason | None
) -> LimitStatus:
    """``status``, with the refusal's reason set at construction (no copy to add it)."""
    limit = check.limit
    key = limit.key
    metric = key.metric
    window = key.window
    value = limit.value
    unlimited = value == UNLIMITED
    reserved = reading.reserved + held
    reset_at = None
    used: int | None
    remaining: int | None
    if window is None and metric is not _CONCURRENT:
        used = None  # a per-request cap has nothing to use up
        remaining = None if unlimited else value
        within = True
    else:
        buckets = reading.buckets
        used = sum(buckets.values()) + added
        remaining, within = _left(value, used, reserved, unlimited)
        if window is not None:
            # Only a rolling window's reset depends on the buckets: its oldest
            # one holding usage, which may be the one this request lands in.
            if added and check.bucket is not None and window.rolling_seconds:
                buckets = dict(buckets)
                buckets[check.bucket] = buckets.get(check.bucket, 0) + added
            reset_at = window.reset_at(check.read_at, tz, buckets)
    subject, metric_name, window_name, source = limit.names()
    if metric is _CREDITS:  # the one metric whose wire numbers are not its units
        return new_status(
            subject,
            metric_name,
            window_name,
            UNLIMITED if unlimited else from_units(metric, value),
            source,
            limit.shadow,
            None if used is None else from_units(metric, used),
            from_units(metric, reserved),
            None if remaining is None else from_units(metric, remaining),
            reset_at,
            within,
            reason,
        )
    return new_status(
        subject,
        metric_name,
        window_name,
        value,  # UNLIMITED is -1 either way
        source,
        limit.shadow,
        used,
        reserved,
        remaining,
        reset_at,
        within,
        reason,
    )


def blocks(check: Check, reading: Reading) -> bool:
    """Held reservations count as used: a hold is budget nobody else may take."""
    limit = check.limit
    value = limit.value
    if value == UNLIMITED:
        return False
    metric = limit.key.metric
    if metric is _SEQUENCE:
        return check.amount > value
    if check.bucket is None and metric is not _CONCURRENT:
        return False
    return not admits(sum(reading.buckets.values()) + reading.reserved, check.amount, value)


def decide(
    plan: DebitPlan,
    readings: Readings,
    event_id: int | None = None,
    prepaid: Sequence[Prepaid] = (),
) -> Decision:
    """Measure the request against every check; enforce is all-or-nothing, record always passes.

    ``prepaid`` holds the grants of charged subjects that have any: their
    credits must fit what is left (less what live reservations hold).
    ``readings`` are the checks' readings, then the capacity series' (``plan.reads``).
    """
    checks = plan.checks
    n = len(checks)
    if len(readings) < n:
        raise ValueError(f"{len(readings)} readings for {n} checks")
    blocked: list[int] = []
    shadow: list[int] = []
    for i in range(n):
        check = checks[i]
        if blocks(check, readings[i]):
            (shadow if check.limit.shadow else blocked).append(i)
    capacity = _capacity(plan, readings[n:]) if plan.capacity is not None else None
    wallets = [_wallet(plan, p) for p in prepaid if p.grants] if prepaid else []
    broke = any(not fits for _, fits in wallets)
    mode = plan.mode
    enforce = mode is Mode.ENFORCE
    allowed = mode is Mode.RECORD or (
        not blocked and not broke and (capacity is None or capacity[1])
    )
    hold = plan.hold
    tz = plan.tz
    refusing = blocked + shadow
    extra: tuple[LimitStatus, ...] = ()
    cap_refuses = capacity is not None and not capacity[1] and enforce
    cap_exceeded = False
    if capacity is not None:
        cap_status, _, _ = capacity
        if allowed and plan.capacity is not None:
            cap_status = _with_added(cap_status, plan.capacity.amount, hold=hold)
        if cap_refuses:
            assert plan.capacity is not None
            # More than the whole capacity: no minute ever admits it.
            cap_exceeded = plan.capacity.amount > int(cap_status.limit)
            cap_status = replace(
                cap_status, reason=Reason.EXCEEDS_LIMIT if cap_exceeded else Reason.LIMIT_REACHED
            )
        extra = (cap_status,)
    if wallets:
        extra += tuple(status for status, _ in wallets)
    built = _statuses(checks, readings, tz, allowed, hold, refusing) if refusing else ()
    blocked_by = tuple([built[i] for i in blocked]) if blocked else ()
    if cap_refuses:
        blocked_by += (extra[0],)
    if wallets and enforce:
        blocked_by += tuple(status for status, fits in wallets if not fits)
    retry_after = (
        None
        if allowed
        else _refused_retry(plan, readings, blocked, capacity, cap_refuses, broke or cap_exceeded)
    )
    if not refusing:
        # No check refused, so nothing here needs a check's status: they are
        # built when (if) someone reads ``limits``, from this decision's own
        # readings (a store's are fresh per step and never changed afterwards).
        reads = readings[:n]  # a copy: the caller's list may change, its readings do not

        def pending() -> tuple[LimitStatus, ...]:
            return _statuses(checks, reads, tz, allowed, hold, ()) + extra

        return deferred_decision(
            allowed=allowed,
            subject=str(plan.subject),
            mode=mode,
            amounts=plan.amounts.to_numbers(),
            timestamp=plan.timestamp,
            blocked_by=blocked_by,
            retry_after=retry_after,
            event_id=event_id if allowed else None,
            reason=None if allowed else _overall(blocked_by),
            _pending=pending,
        )
    return new_decision(
        allowed=allowed,
        subject=str(plan.subject),
        mode=mode,
        amounts=plan.amounts.to_numbers(),
        timestamp=plan.timestamp,
        limits=built + extra,
        blocked_by=blocked_by,
        shadow_blocked=tuple([built[i] for i in shadow]) if shadow else (),
        retry_after=retry_after,
        event_id=event_id if allowed else None,
        reason=None if allowed else _overall(blocked_by),
    )


def admitted(plan: DebitPlan, used: Sequence[int], event_id: int | None = None) -> Decision | None:
    """``decide``'s answer when no check refuses, else None (then ask ``decide``).

    For a store that reads a plan's usage as one number per check: ``used[i]``
    is what the one bucket ``checks[i].lo`` holds, for a check whose window is
    calendar or ``total`` (``lo == hi``), and 0 for a per-request cap. So the
    readings ``decide`` would be given are ``Reading({lo: used[i]})`` (or
    ``Reading()`` when 0), and the caller guarantees what makes ``decide`` use
    nothing else: no reservation holds anything (``reserved`` 0), no prepaid
    wallet, no capacity, and no rolling window or concurrency limit among the
    checks. Nearly every admitted consume is such a plan; this answers it
    without building a ``Reading`` per check (the deferred statuses build
    them when, if ever, they are read). A plan with a ``placement`` is
    measured from it, without building its checks (the statuses do, when
    read). ``tests/domain/test_admitted.py`` compares it with ``decide``.
    """
    placement = plan.placement
    if placement is not None:
        if len(used) != len(placement.limits):
            raise ValueError(f"{len(used)} counts for {len(placement.limits)} limits")
        units = plan.amounts.units()
        # Only the limits that can refuse here (``Placement.bounded``, ``capped``): an
        # unlimited one never does, nor a cap other than input_sequence_length.
        for i, metric, value in placement.bounded:
            count = used[i]
            if not (count < value and count + units.get(metric, 0) <= value):  # ``admits``
                return None
        for metric, value in placement.capped:
            if units.get(metric, 0) > value:
                return None
    else:
        checks = plan.checks
        for i in range(len(checks)):
            check = checks[i]
            limit = check.limit
            value = limit.value
            if value == UNLIMITED:
                continue
            if limit.key.metric is _SEQUENCE:
                if check.amount > value:
                    return None
                continue
            if check.bucket is None:
                continue  # a cap (the metric is no concurrency: see above) never blocks here
            units_used = used[i]
            if not (units_used < value and units_used + check.amount <= value):  # ``admits``
                return None
    counted = tuple(used)  # the caller's list may change; these numbers do not

    def pending() -> tuple[LimitStatus, ...]:
        if placement is not None:  # the span's statuses, only the numbers filled in
            return _placed_statuses(plan, placement, counted)
        checks = plan.checks
        reads = [
            _new_reading({check.lo: units} if units else {})
            for check, units in zip(checks, counted, strict=True)
        ]
        return _statuses(checks, reads, plan.tz, True, plan.hold, ())

    return deferred_decision(
        True,  # allowed
        str(plan.subject),
        plan.mode,
        plan.amounts.to_numbers(),
        plan.timestamp,
        (),  # blocked_by
        (),  # shadow_blocked
        None,  # retry_after
        event_id,
        False,  # replayed
        False,  # failed_open
        None,  # reason
        (),  # blocked_outside
        pending,
    )


# Per limit of a placement, what its status is whatever a request of its span adds:
# for a cap (which reads and adds nothing) the status itself, else None; then the
# status's subject, metric, window, source, limit, shadow and reset_at; then the
# metric whose amount the limit adds, its size in units, and whether it is unlimited.
_Row = tuple[
    LimitStatus | None, str, str, str | None, str, Number, bool, datetime | None, Metric, int, bool
]
_Span = tuple[Placement, ZoneInfo, tuple[_Row, ...]]
_SPANS: dict[int, _Span] = {}  # by id(placement); each entry holds its placement
_MAX_SPANS: Final = 4_096  # a placement per skeleton and span: cleared whole past this


def _span_rows(plan: DebitPlan, placement: Placement) -> tuple[_Row, ...]:
    """The placement's rows (``_Row``), made once per placement and zone.

    A placement is one span's (``engine.planner.Layout``): every plan made with
    it has its timestamp in one period of each calendar window, so each
    status's ``reset_at`` (that period's end; None for ``total`` and caps) and
    its names are the same for all of them; only used, reserved, remaining and
    within_limit depend on the request. They are read from ``_status`` of an
    empty reading, so they are what ``_statuses`` makes.
    """
    tz = plan.tz
    span = _SPANS.get(id(placement))
    if span is not None and span[0] is placement and span[1] is tz:
        return span[2]
    rows: list[_Row] = []
    for limit, metric, bucket in zip(
        placement.limits, placement.metrics, placement.buckets, strict=True
    ):
        check = Check(limit, 0, plan.timestamp, 0, 0, bucket)
        empty = _status(check, Reading(), tz, 0, 0, None)
        value = limit.value
        rows.append(
            (
                empty if bucket is None else None,
                empty.subject,
                empty.metric,
                empty.window,
                empty.source,
                empty.limit,
                empty.shadow,
                empty.reset_at,
                metric,
                value,
                value == UNLIMITED,
            )
        )
    made = tuple(rows)
    if len(_SPANS) >= _MAX_SPANS:
        _SPANS.clear()
    _SPANS[id(placement)] = (placement, tz, made)
    return made


def _placed_statuses(
    plan: DebitPlan, placement: Placement, counted: Sequence[int]
) -> tuple[LimitStatus, ...]:
    """``_statuses`` of an admitted plan made with ``placement``, from the units each
    limit's bucket held (``admitted``'s ``used``), without building its checks or
    readings: ``_status``'s numbers filled into the span's rows."""
    units = plan.amounts.units()
    hold = plan.hold
    built: list[LimitStatus] = []
    for row, count in zip(_span_rows(plan, placement), counted, strict=True):
        cap, subject, metric_name, window_name, source, size, shadow, reset_at = row[:8]
        if cap is not None:
            built.append(cap)
            continue
        metric, value, unlimited = row[8:]
        amount = units.get(metric, 0)
        used = count if hold else count + amount
        reserved = amount if hold else 0
        remaining, within = _left(value, used, reserved, unlimited)
        wire_used: Number = used
        wire_reserved: Number = reserved
        wire_remaining: Number | None = remaining
        if metric_name == "credits":  # the one metric whose wire numbers are not its units
            wire_used = from_units(_CREDITS, used)
            wire_reserved = from_units(_CREDITS, reserved)
            wire_remaining = None if remaining is None else from_units(_CREDITS, remaining)
        built.append(
            new_status(
                subject,
                metric_name,
                window_name,
                size,
                source,
                shadow,
                wire_used,
                wire_reserved,
                wire_remaining,
                reset_at,
                within,
                None,
            )
        )
    return tuple(built)


def _statuses(
    checks: Sequence[Check],
    readings: Readings,
    tz: ZoneInfo,
    allowed: bool,
    hold: bool,
    refusing: Sequence[int],
) -> tuple[LimitStatus, ...]:
    """Each check's status as it stands after the decision; ``refusing`` carry a reason."""
    built: list[LimitStatus] = []
    for i in range(len(checks)):
        check = checks[i]
        # What this request adds: nothing when refused, and nothing to a window
        # it lands outside of (a back-dated event older than a rolling window).
        counted = (
            check.amount
            if allowed and (check.bucket is not None or check.limit.key.metric is _CONCURRENT)
            else 0
        )
        built.append(
            _status(
                check,
                readings[i],
                tz,
                0 if hold else counted,
                counted if hold else 0,
                _reason(check) if refusing and i in refusing else None,
            )
        )
    return tuple(built)


def _refused_retry(
    plan: DebitPlan,
    readings: Readings,
    blocked: Sequence[int],
    capacity: tuple[LimitStatus, bool, int] | None,
    cap_refuses: bool,
    hopeless: bool,
) -> int | None:
    """``retry_after`` of a refused decision: every blocking limit's wait, capacity's too.

    ``hopeless``: a wallet cannot pay or the amount exceeds the whole capacity.
    """
    if hopeless:
        return None  # waiting adds no credits, and no minute fits the amount
    retry_after = _retry_after(plan, readings, blocked)
    if cap_refuses and retry_after is not None:
        assert capacity is not None
        retry_after = max(retry_after, capacity[2]) if blocked else capacity[2]
    return retry_after


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
    """A prepaid subject's balance as a limit status, and whether the request fits it.

    The status carries ``insufficient_credits`` when it refuses an enforced request.
    """
    wallet = balance(prepaid.subject, prepaid.grants, plan.now)
    assert wallet is not None
    available = max(0, wallet.remaining - prepaid.held)
    amount = plan.amounts[Metric.CREDITS]
    fits = amount == 0 or amount <= available
    spend = min(amount, available) if fits or plan.mode is Mode.RECORD else 0
    held = prepaid.held + (spend if plan.hold else 0)
    left = available - spend
    # An enforced request the balance cannot cover is refused by this wallet.
    refused = not fits and plan.mode is Mode.ENFORCE
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
            reason=Reason.INSUFFICIENT_CREDITS if refused else None,
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
