"""Resource quotas: shared capacity on a protected resource (contract §6).

A resource such as ``deployment:llama-70b`` may carry a quota with

- ``default_rules``: rules applied to *each* consumer of the resource on its own;
- ``policies``: per-consumer overrides, each with its own rules and an optional
  ``reserved`` share of the capacity;
- ``capacity``: the resource's total per calendar minute, in requests or tokens;
- ``saturation_threshold`` s: above s·C reservations are honoured.

This module holds the types, their validation and the admission arithmetic.
It is pure: the caller reads the counters (U and the U_i) and passes them in.

Numbers. Limits and capacities are integer units (``metrics.to_units``), so a
bound is one check. Shares and the threshold are exact ``Decimal`` values with
at most ``MAX_SHARE_PLACES`` decimal places; every product r·C and every sum is
computed in an exact decimal context, never in floats, so a denial is never
the result of rounding.

Bounds. A rule list holds at most ``MAX_RULES`` items and a quota at most
``MAX_POLICIES`` policies: the ``maxItems`` of DataRobot's quota API (100 and
10 000), which a compatibility layer must be able to pass through. Since a
(metric, window) may appear only once per list, a valid list in fact holds at
most 8 rules (requests and tokens x 3 windows, plus the two windowless metrics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from enum import StrEnum
from typing import Final

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import (
    MAX_UNITS,
    WINDOWLESS,
    Metric,
    parse_decimal,
    to_units,
)
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import Calendar, Window, admits

RESOURCE_METRICS: Final = (
    Metric.REQUESTS,
    Metric.TOKENS,
    Metric.CONCURRENT_REQUESTS,
    Metric.INPUT_SEQUENCE_LENGTH,
)
RESOURCE_WINDOWS: Final = (Calendar.MINUTE, Calendar.HOUR, Calendar.DAY)
CAPACITY_UNITS: Final = (Metric.REQUESTS, Metric.TOKENS)
MAX_RULES: Final = 100
MAX_POLICIES: Final = 10_000
# 20 places name one unit of any capacity below 2^63 (about 9.2e18): finer
# shares would mean nothing, and the bound keeps every product short.
MAX_SHARE_PLACES: Final = 20

# Exact decimal arithmetic: nothing is rounded, nothing overflows. (Shares have
# at most 21 digits and capacities 19, so products and sums stay short.)
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[])
_RULE_FIELDS: Final = frozenset({"metric", "window", "limit"})
_POLICY_FIELDS: Final = frozenset({"consumer", "rules", "reserved"})
_CAPACITY_FIELDS: Final = frozenset({"value", "units"})
_QUOTA_FIELDS: Final = frozenset({"default_rules", "policies", "capacity", "saturation_threshold"})


class DenyReason(StrEnum):
    """Why the capacity check refused a request; stable wire values."""

    CAPACITY = "capacity"  # U + a would exceed C
    RESERVED_FOR_OTHERS = "reserved_for_others"  # saturated, and it would eat others' shares


# ---------------------------------------------------------------------------
# Types


@dataclass(frozen=True, slots=True)
class ResourceRule:
    """One per-consumer rule on a resource: (metric, window, limit in units).

    ``window`` is a calendar minute, hour or day for ``requests`` and ``tokens``,
    and None for ``concurrent_requests`` and ``input_sequence_length``, which
    apply per request or lease (contract §2) rather than summed over time.
    """

    metric: Metric
    window: Window | None
    limit: int

    def __post_init__(self) -> None:
        _check_rule(self.metric, self.window, self.limit, "")

    @property
    def key(self) -> LimitKey:
        """The (metric, window) pair, in the form the limits machinery uses."""
        return LimitKey(self.metric, self.window)

    @classmethod
    def parse(cls, data: object, field: str = "rule") -> ResourceRule:
        """Validate one wire rule ``{metric, window?, limit}``; errors name ``field.<part>``."""
        item = _object(data, field, _RULE_FIELDS, "metric, window and limit")
        metric = _parse_metric(item.get("metric"), _join(field, "metric"))
        window = _parse_window(metric, item.get("window"), _join(field, "window"))
        if "limit" not in item or item["limit"] is None:
            raise ValidationError(_join(field, "limit"), "is required")
        limit = to_units(metric, item["limit"], _join(field, "limit"))
        return cls(metric, window, limit)


@dataclass(frozen=True, slots=True)
class Policy:
    """A consumer's override: its own rules, and optionally a reserved share of capacity.

    The rules replace the default rules as a whole (they are not merged), so an
    empty ``rules`` means "no per-consumer rules for this consumer". ``reserved``
    None and 0 both reserve nothing; None is kept apart so the wire round-trips.
    """

    consumer: SubjectRef
    rules: tuple[ResourceRule, ...] = ()
    reserved: Decimal | None = None

    def __post_init__(self) -> None:
        _check_rule_list(self.rules, "rules")
        if self.reserved is not None:
            object.__setattr__(self, "reserved", _fraction(self.reserved, "reserved"))

    @classmethod
    def parse(cls, data: object, field: str = "policy") -> Policy:
        """Validate one wire policy ``{consumer, rules, reserved?}``.

        ``rules`` is required: a missing list could be read as "inherit the
        defaults", which is not what a policy does, so the caller must say ``[]``.
        """
        item = _object(data, field, _POLICY_FIELDS, "consumer, rules and reserved")
        consumer = SubjectRef.parse(item.get("consumer"), _join(field, "consumer"))
        if "rules" not in item:
            raise ValidationError(_join(field, "rules"), "is required ([] for no rules)")
        rules = _parse_rules(item["rules"], _join(field, "rules"))
        raw = item.get("reserved")
        reserved = None if raw is None else _fraction(raw, _join(field, "reserved"))
        return cls(consumer, rules, reserved)


@dataclass(frozen=True, slots=True)
class Capacity:
    """The resource's total per calendar minute, in requests or tokens."""

    value: int
    units: Metric

    def __post_init__(self) -> None:
        if self.units not in CAPACITY_UNITS:
            raise ValidationError("units", "must be requests or tokens")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
            raise ValidationError("value", "must be a whole number from 0 below 2^63")

    @classmethod
    def parse(cls, data: object, field: str = "capacity") -> Capacity:
        item = _object(data, field, _CAPACITY_FIELDS, "value and units")
        raw_units = item.get("units")
        if raw_units not in CAPACITY_UNITS:  # StrEnum: "tokens" == Metric.TOKENS
            raise ValidationError(
                _join(field, "units"), f"must be requests or tokens, got {raw_units!r}"
            )
        units = Metric(str(raw_units))
        if item.get("value") is None:
            raise ValidationError(_join(field, "value"), "is required")
        return cls(to_units(units, item["value"], _join(field, "value")), units)


@dataclass(frozen=True, slots=True)
class ResourceQuota:
    """The quota of one protected resource (contract §6).

    Invariants (checked on construction, so no invalid quota exists): every
    share and the threshold lie in [0, 1]; the shares sum to at most 1, so the
    reservations fit in the capacity together; each consumer has at most one
    policy; each rule list names a (metric, window) at most once.
    """

    default_rules: tuple[ResourceRule, ...] = ()
    policies: tuple[Policy, ...] = ()
    capacity: Capacity | None = None
    saturation_threshold: Decimal | None = None
    _by_consumer: Mapping[SubjectRef, Policy] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )
    _shares: tuple[tuple[SubjectRef, Decimal], ...] = dataclasses.field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        _check_rule_list(self.default_rules, "default_rules")
        _check_policies(self.policies, "policies")
        if self.saturation_threshold is not None:
            threshold = _fraction(self.saturation_threshold, "saturation_threshold")
            object.__setattr__(self, "saturation_threshold", threshold)
        # Indexes built once: rules_for is one lookup and capacity_admits walks
        # only the reserving consumers, however many policies there are.
        object.__setattr__(self, "_by_consumer", {p.consumer: p for p in self.policies})
        shares = tuple((p.consumer, p.reserved) for p in self.policies if p.reserved)
        object.__setattr__(self, "_shares", shares)

    @classmethod
    def parse(cls, data: Mapping[str, object], field: str = "quota") -> ResourceQuota:
        """Validate a wire quota; nothing partial is returned.

        ``field`` prefixes every error's field path (``quota.policies[2].reserved``);
        pass ``""`` when the quota is the whole request body, to get the
        body-relative ``policies[2].reserved``. Absent ``default_rules`` and
        ``policies`` mean none; absent or null ``capacity`` means no capacity
        check; absent or null ``saturation_threshold`` means never saturated.
        """
        item = _object(
            data,
            field,
            _QUOTA_FIELDS,
            "default_rules, policies, capacity and saturation_threshold",
        )
        default_rules = _parse_rules(item.get("default_rules", []), _join(field, "default_rules"))
        policies = _parse_policies(item.get("policies", []), _join(field, "policies"))
        raw_capacity = item.get("capacity")
        capacity = (
            None if raw_capacity is None else Capacity.parse(raw_capacity, _join(field, "capacity"))
        )
        raw_threshold = item.get("saturation_threshold")
        threshold = (
            None
            if raw_threshold is None
            else _fraction(raw_threshold, _join(field, "saturation_threshold"))
        )
        return cls(default_rules, policies, capacity, threshold)

    def policy_for(self, consumer: SubjectRef) -> Policy | None:
        return self._by_consumer.get(consumer)

    def governing_policy(
        self, consumer: SubjectRef, ancestors: Sequence[SubjectRef] = ()
    ) -> Policy | None:
        """The policy a consumer is held to: its own, else its nearest ancestor's, else none.

        ``ancestors`` are the consumer's, nearest first (``subjects.ancestors_of``).
        A policy on a group (DataRobot's ``usergroup``) thus reaches every member
        that has none of its own; a member's own policy always wins over a group's,
        and a nearer group's over a farther one's.
        """
        for subject in (consumer, *ancestors):
            policy = self._by_consumer.get(subject)
            if policy is not None:
                return policy
        return None

    def rules_for(
        self, consumer: SubjectRef, ancestors: Sequence[SubjectRef] = ()
    ) -> tuple[ResourceRule, ...]:
        """The governing policy's rules (even an empty list), else the default rules.

        A policy replaces the default rules wholesale; nothing is merged, as with
        plans and overrides elsewhere, so one list is the whole truth for a consumer.
        """
        policy = self.governing_policy(consumer, ancestors)
        return policy.rules if policy is not None else self.default_rules

    def reserved_shares(self) -> dict[SubjectRef, Decimal]:
        """Consumers with a positive reserved share: the only ones whose usage U_i matters."""
        return dict(self._shares)


# ---------------------------------------------------------------------------
# Admission against capacity


@dataclass(frozen=True, slots=True)
class CapacityVerdict:
    """The capacity part of a decision.

    ``headroom`` is the exact bound U + a was compared with: C when the resource
    is not saturated, C - Σ_{i≠j} max(0, r_i·C - U_i) when it is (a Decimal,
    since r_i·C need not be whole), None when the quota has no capacity.
    ``reason`` is None when admitted.
    """

    admitted: bool
    saturated: bool
    headroom: Decimal | None
    reason: DenyReason | None = None


def capacity_admits(
    quota: ResourceQuota,
    consumer: SubjectRef,
    amount: int,
    total_used: int,
    used_by: Mapping[SubjectRef, int],
) -> CapacityVerdict:
    """May ``consumer`` add ``amount`` to the resource's usage this minute?

    ``total_used`` is U, the resource's usage in the current calendar minute, and
    ``amount`` is a, both in the capacity's units; ``used_by`` maps consumers
    with a reserved share to their own usage U_i this minute (a missing entry
    is 0; entries of other consumers are ignored).

    The rule (contract §6), with C the capacity and s the threshold:

    - the resource is saturated when s is not None and U + a > s·C;
    - the bound B is C, or when saturated C - Σ_{i≠j} max(0, r_i·C - U_i): the
      capacity less what other consumers still have reserved and unused;
    - admitted iff U < B and U + a ≤ B: the project's one admission rule
      (``windows.admits``) with B as the limit.

    Edge semantics:

    - no capacity: always admitted, never saturated, ``headroom`` None;
    - threshold None: never saturated, so reservations are never enforced;
      threshold 0: saturated as soon as U + a > 0, so reservations are always
      enforced; threshold 1: saturated only when U + a > C, which the capacity
      check refuses anyway, so reservations never bite;
    - C = 0: everything is refused (reason ``capacity``), as a limit of 0
      blocks everything elsewhere;
    - a = 0: admitted only while U < B, so a request that carries none of the
      capacity's unit waits once the capacity is used up, as with any other
      limit (the literal U + a ≤ B alone would let it through at U = B);
    - the consumer's own share never counts against it (i ≠ j), whether it has
      used less or more than its share; a consumer past its share keeps nothing
      back (max(0, ·)), its usage is simply part of U;
    - shares summing to exactly 1 are allowed: when saturated, a consumer
      without a share then gets only what the reserving consumers have used
      beyond their shares, less what is already used;
    - a refusal is ``capacity`` when U + a > C (or U ≥ C), even if saturated,
      and ``reserved_for_others`` when only the saturated bound refuses it.

    Exactness: r_i·C, the sum and every comparison are done in an exact decimal
    context against integers; nothing is rounded and no float is involved.
    """
    if amount < 0 or total_used < 0:
        raise ValueError("amount and total_used must not be negative")
    capacity = quota.capacity
    if capacity is None:
        return CapacityVerdict(admitted=True, saturated=False, headroom=None)
    limit = Decimal(capacity.value)
    demand = total_used + amount
    threshold = quota.saturation_threshold
    saturated = threshold is not None and demand > _EXACT.multiply(threshold, limit)
    bound = limit
    if saturated:
        held = Decimal(0)
        for other, share in quota._shares:
            if other == consumer:
                continue  # one's own share never blocks oneself
            used = used_by.get(other, 0)
            if used < 0:
                raise ValueError(f"usage of {other} must not be negative")
            unused = _EXACT.subtract(_EXACT.multiply(share, limit), Decimal(used))
            if unused > 0:
                held = _EXACT.add(held, unused)
        # held ≤ Σ r_i·C ≤ C (shares sum to at most 1), so the bound is never negative.
        bound = _EXACT.subtract(limit, held)
    if not admits(total_used, amount, capacity.value):
        return CapacityVerdict(False, saturated, bound, DenyReason.CAPACITY)
    # windows.admits on a bound that need not be whole: int vs Decimal compares exactly.
    if not (total_used < bound and demand <= bound):
        return CapacityVerdict(False, saturated, bound, DenyReason.RESERVED_FOR_OTHERS)
    return CapacityVerdict(True, saturated, bound)


# ---------------------------------------------------------------------------
# Validation helpers: each takes the field path of what it checks.


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _object(
    data: object, field: str, allowed: frozenset[str], expected: str
) -> Mapping[str, object]:
    where = field or "body"
    if not isinstance(data, Mapping):
        raise ValidationError(where, f"must be an object with {expected}")
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise ValidationError(where, f"unknown field(s): {', '.join(sorted(unknown))}")
    return data


def _list(data: object, field: str, bound: int, what: str) -> Sequence[object]:
    # A str is a Sequence too; it is never a list of rules.
    if not isinstance(data, list | tuple):
        raise ValidationError(field, f"must be a list of {what}")
    if len(data) > bound:
        raise ValidationError(field, f"at most {bound} {what}")
    return data


def _parse_metric(value: object, field: str) -> Metric:
    if value in RESOURCE_METRICS:
        return Metric(str(value))
    allowed = ", ".join(m.value for m in RESOURCE_METRICS)
    raise ValidationError(field, f"unknown resource metric {value!r}; expected one of {allowed}")


def _parse_window(metric: Metric, value: object, field: str) -> Window | None:
    if metric in WINDOWLESS:
        if value is not None:
            raise ValidationError(field, f"{metric.value} rules take no window")
        return None
    if value is None:
        raise ValidationError(field, f"a {metric.value} rule needs a window (minute, hour or day)")
    if value not in RESOURCE_WINDOWS:
        raise ValidationError(field, f"must be minute, hour or day, got {value!r}")
    return Window.parse(value, field)


def _parse_rules(data: object, field: str) -> tuple[ResourceRule, ...]:
    items = _list(data, field, MAX_RULES, "rules")
    rules = tuple(ResourceRule.parse(item, f"{field}[{i}]") for i, item in enumerate(items))
    _check_rule_list(rules, field)
    return rules


def _parse_policies(data: object, field: str) -> tuple[Policy, ...]:
    items = _list(data, field, MAX_POLICIES, "policies")
    policies = tuple(Policy.parse(item, f"{field}[{i}]") for i, item in enumerate(items))
    _check_policies(policies, field)
    return policies


def _check_rule(metric: Metric, window: Window | None, limit: int, field: str) -> None:
    if metric not in RESOURCE_METRICS:
        _parse_metric(metric, _join(field, "metric"))  # raises with the allowed list
    if metric in WINDOWLESS:
        if window is not None:
            raise ValidationError(_join(field, "window"), f"{metric.value} rules take no window")
    elif window is None or window.calendar not in RESOURCE_WINDOWS:
        raise ValidationError(_join(field, "window"), "must be minute, hour or day")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_UNITS:
        raise ValidationError(_join(field, "limit"), "must be a whole number from 0 below 2^63")


def _check_rule_list(rules: Sequence[ResourceRule], field: str) -> None:
    if len(rules) > MAX_RULES:
        raise ValidationError(field, f"at most {MAX_RULES} rules")
    seen: set[LimitKey] = set()
    for i, rule in enumerate(rules):
        if rule.key in seen:
            raise ValidationError(f"{field}[{i}]", f"{rule.key} appears twice")
        seen.add(rule.key)


def _check_policies(policies: Sequence[Policy], field: str) -> None:
    """One policy per consumer, and reservations that fit in the capacity together."""
    if len(policies) > MAX_POLICIES:
        raise ValidationError(field, f"at most {MAX_POLICIES} policies")
    first: dict[SubjectRef, int] = {}
    total = Decimal(0)
    for i, policy in enumerate(policies):
        if policy.consumer in first:
            raise ValidationError(
                f"{field}[{i}].consumer",
                f"{policy.consumer} already has a policy ({field}[{first[policy.consumer]}])",
            )
        first[policy.consumer] = i
        if policy.reserved is not None:
            total = _EXACT.add(total, policy.reserved)
    if total > 1:
        raise ValidationError(
            field, f"reserved shares sum to {format(total, 'f')}; the sum may be at most 1"
        )


def _fraction(value: object, field: str) -> Decimal:
    """An exact share in [0, 1]: str, int, Decimal, or a float read by its repr (0.1 is 0.1).

    Returned without trailing zeros, so ``"0.50"`` and ``0.5`` are the same value
    on the wire and in storage.
    """
    if isinstance(value, bool):
        raise ValidationError(field, "must be a number, not a boolean")
    number = parse_decimal(value, field)
    if not 0 <= number <= 1:
        raise ValidationError(field, "must be between 0 and 1")
    if number == 0:
        return Decimal(0)  # also turns -0 into 0
    number = number.normalize(_EXACT)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if -exponent > MAX_SHARE_PLACES:
        raise ValidationError(field, f"may have at most {MAX_SHARE_PLACES} decimal places")
    return number
