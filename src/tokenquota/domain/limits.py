"""Limits and their resolution (contract §4).

A rule is (metric, window, value). Values are in units (see ``metrics``);
``UNLIMITED`` (-1) never blocks. A subject's enforced limit for one
(metric, window) comes from the first layer with an enforcing rule for it: the
subject's own override, then its plan, then the system default for its kind.
Shadow rules take no part in that choice (a trial must never loosen what is
enforced); the nearest shadow rule is measured beside the enforced limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from tokenquota.domain.errors import ValidationError
from tokenquota.domain.metrics import (
    Metric,
    Number,
    from_units,
    parse_metric,
    to_units,
)
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.text import check_text
from tokenquota.domain.thresholds import parse_thresholds
from tokenquota.domain.windows import Window

UNLIMITED: Final = -1
MAX_RULES: Final = 256


class Source(StrEnum):
    OVERRIDE = "override"
    PLAN = "plan"
    DEFAULT = "default"
    RESOURCE = "resource"  # a resource quota's rule for one consumer (contract §6)
    NONE = "none"


@dataclass(frozen=True, slots=True)
class LimitKey:
    metric: Metric
    window: Window | None

    @classmethod
    def parse(cls, metric: object, window: object, field: str = "") -> LimitKey:
        prefix = f"{field}." if field else ""
        m = parse_metric(metric, f"{prefix}metric")
        if not m.is_counter:
            if window not in (None, ""):
                raise ValidationError(f"{prefix}window", f"{m.value} limits take no window")
            return cls(m, None)
        if window is None:
            raise ValidationError(f"{prefix}window", f"a {m.value} limit needs a window")
        return cls(m, Window.parse(window, f"{prefix}window"))

    @property
    def window_key(self) -> str:
        """Storage form; windowless metrics use the empty string so keys stay non-null."""
        return self.window.key if self.window is not None else ""

    @classmethod
    def from_storage(cls, metric: str, window: str) -> LimitKey:
        return cls(Metric(metric), Window.parse(window) if window else None)

    def __str__(self) -> str:
        return f"{self.metric.value}/{self.window_key or '-'}"

    @property
    def sort_key(self) -> tuple[str, int, str]:
        """Metric, then windows from short to long: the order limits are listed in."""
        return _key_order(self)


@dataclass(frozen=True, slots=True)
class Rule:
    key: LimitKey
    value: int  # units, or UNLIMITED
    shadow: bool = False
    # Alert thresholds, whole percentages of ``value`` sorted (domain/alerts.py).
    thresholds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleChange:
    """A requested change: ``value`` None removes the rule at this layer."""

    key: LimitKey
    value: int | None
    shadow: bool = False
    thresholds: tuple[int, ...] = ()


def parse_limit_value(metric: Metric, value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value == UNLIMITED:
        return UNLIMITED
    if isinstance(value, str) and value.strip() == "-1":
        return UNLIMITED
    return to_units(metric, value, field)


def limit_to_wire(metric: Metric, value: int) -> Number:
    return UNLIMITED if value == UNLIMITED else from_units(metric, value)


def parse_rule_changes(items: Iterable[Mapping[str, object]], field: str) -> list[RuleChange]:
    """Validate a batch of rules before anything is written, so a bad item changes nothing."""
    changes: list[RuleChange] = []
    seen: set[LimitKey] = set()
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise ValidationError(where, "must be an object with metric, window and limit")
        unknown = set(item) - {"metric", "window", "limit", "shadow", "thresholds"}
        if unknown:
            raise ValidationError(where, f"unknown field(s): {', '.join(sorted(unknown))}")
        if "limit" not in item:
            raise ValidationError(f"{where}.limit", "is required (null removes the rule)")
        key = LimitKey.parse(item.get("metric"), item.get("window"), where)
        if key in seen:
            raise ValidationError(where, f"{key} appears twice")
        seen.add(key)
        shadow = item.get("shadow", False)
        if not isinstance(shadow, bool):
            raise ValidationError(f"{where}.shadow", "must be true or false")
        value = parse_limit_value(key.metric, item["limit"], f"{where}.limit")
        # Absent or null: none. A rule is replaced whole, as its shadow flag is.
        raw = item.get("thresholds")
        thresholds = () if raw is None else parse_thresholds(raw, f"{where}.thresholds")
        changes.append(RuleChange(key, value, shadow, thresholds))
        if len(changes) > MAX_RULES:
            raise ValidationError(field, f"at most {MAX_RULES} rules at once")
    return changes


@dataclass(frozen=True, slots=True)
class EffectiveLimit:
    subject: SubjectRef
    key: LimitKey
    value: int
    source: Source
    shadow: bool
    # The alert thresholds of the rule that supplies this limit (contract §9):
    # an override's own, else its plan's, else the default's; never mixed.
    thresholds: tuple[int, ...] = ()
    # ``names()``, computed on first use. A configuration's resolved limits are
    # shared by every plan made from it, and each decision names each limit
    # twice (its counter series, its status). Not part of the value.
    _names: tuple[str, str, str | None, str] | None = field(
        default=None, init=False, compare=False, hash=False, repr=False
    )

    @property
    def unlimited(self) -> bool:
        return self.value == UNLIMITED

    def names(self) -> tuple[str, str, str | None, str]:
        """Subject, metric, window key (None when windowless) and source, as text."""
        names = self._names
        if names is None:
            window = self.key.window
            names = (
                str(self.subject),
                self.key.metric._value_,
                None if window is None else window.key,
                self.source._value_,
            )
            object.__setattr__(self, "_names", names)  # one tuple: readers see none or all
        return names


def resolve(
    subject: SubjectRef,
    overrides: Iterable[Rule],
    plan_rules: Iterable[Rule],
    defaults: Iterable[Rule],
) -> list[EffectiveLimit]:
    """Per (metric, window): the enforced limit, and beside it the shadow limit on trial.

    The enforced limit is the nearest enforcing rule; shadow rules are skipped
    while choosing it, so a shadow override never switches off the plan or
    default under it (contract §4). The nearest shadow rule of the same
    (metric, window) is listed too, after the enforced one; it only counts the
    decisions it would have blocked. One shadow limit per (metric, window), so
    its hit counter, kept per (subject, metric, window), means one rule.

    A (metric, window) with a shadow rule but no enforcing rule on any layer
    gets an enforced entry of source ``none`` (unlimited): the answer says
    outright that nothing enforces it, rather than showing only the trial.
    """
    enforced: dict[LimitKey, EffectiveLimit] = {}
    trials: dict[LimitKey, EffectiveLimit] = {}
    for source, rules in (
        (Source.OVERRIDE, overrides),
        (Source.PLAN, plan_rules),
        (Source.DEFAULT, defaults),
    ):
        for rule in rules:
            chosen = trials if rule.shadow else enforced
            if rule.key not in chosen:
                chosen[rule.key] = EffectiveLimit(
                    subject, rule.key, rule.value, source, rule.shadow, rule.thresholds
                )
    for key in trials.keys() - enforced.keys():
        enforced[key] = EffectiveLimit(subject, key, UNLIMITED, Source.NONE, False)
    out: list[EffectiveLimit] = []
    for key in sorted(enforced, key=_key_order):
        out.append(enforced[key])
        if key in trials:
            out.append(trials[key])
    return out


def _key_order(key: LimitKey) -> tuple[str, int, str]:
    window = key.window
    span = 0
    if window is not None:
        span = window.rolling_seconds or _CALENDAR_SPAN.get(window.key, 10**12)
    return key.metric.value, span, key.window_key


# Only for listing limits from short to long; never used for arithmetic.
_CALENDAR_SPAN: Final = {
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    "week": 604_800,
    "month": 2_678_400,
    "year": 31_622_400,
}


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    rules: tuple[Rule, ...]


MAX_PLAN_NAME: Final = 128


def validate_plan_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(field, "must be a non-empty string")
    return check_text(name.strip(), field, max_length=MAX_PLAN_NAME)
