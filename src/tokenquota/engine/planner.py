"""The planner: which limits bind a request, and the ``DebitPlan`` that checks them.

It resolves every charged subject's limits (override, plan, default; a
resource's quota and the consumer's share of it), turns each into the
``Check`` of the window buckets a store must read, and fingerprints the
request for idempotency. It reads configuration through ``ConfigSource``:
one ``ConfigView`` of the store's configuration snapshot per plan
(storage/snapshot.py), whose version the plan carries to the store's atomic
step, which refuses it if the configuration moved meanwhile (then the plan
is made again: ``planned``). It writes nothing: a plan is a value, and the
store alone decides and writes it atomically. That is why any number of
engines can share one store, and why this is one piece: every step here
feeds the one plan.

What a view's reads resolve to (a subject's effective limits and its
ancestors', a resource's parsed quota) is remembered in the view's
generation, so a plan on a warm snapshot reads and resolves nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from tokenquota.domain.clock import Clock
from tokenquota.domain.decisions import CapacityPlan, Check, DebitPlan, Mode
from tokenquota.domain.errors import StoreUnavailable, ValidationError
from tokenquota.domain.frozen import builder
from tokenquota.domain.limits import (
    UNLIMITED,
    EffectiveLimit,
    LimitKey,
    Rule,
    Source,
    parse_limit_value,
    resolve,
)
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.plans import Placement, placed_plan
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import SubjectRef, consumer_ref, parse_kind
from tokenquota.domain.thresholds import parse_thresholds
from tokenquota.domain.windows import ALWAYS, Window
from tokenquota.engine import inputs
from tokenquota.storage.base import ConfigView, RuleSet, StaleConfig

STALE_ROUNDS: Final = 5  # see planned
STALE_MESSAGE: Final = "the limits kept changing while this request was planned; retry"
_CHAIN: Final = "effective chain"  # the keys of what a view remembers for the planner
_LIMITS: Final = "effective limits"
_QUOTA: Final = "parsed quota"
_SKELETON: Final = "plan skeleton"
_CONCURRENT: Final = Metric.CONCURRENT_REQUESTS
_INPUT: Final = Metric.INPUT_TOKENS
# Check(...) and DebitPlan(...) without their frozen __init__ (domain/frozen.py).
_new_check: Final = builder(Check)
_new_plan: Final = builder(DebitPlan)
T = TypeVar("T")
Intent = Literal["consume", "reserve", "acquire"]
Chain = list[tuple[SubjectRef, list[EffectiveLimit]]]


class ConfigSource(Protocol):
    """What the planner reads from a store: configuration only, never a write."""

    @property
    def tz(self) -> ZoneInfo:
        """The zone calendar windows are counted in."""
        ...

    def config(self) -> ConfigView:
        """A view of the store's configuration snapshot: one per plan."""
        ...


class Planner:
    """Builds plans from a store's configuration, the config file's defaults and a clock."""

    def __init__(
        self,
        source: ConfigSource,
        clock: Clock,
        *,
        defaults: Mapping[str, list[Rule]],
        retention: timedelta,
    ) -> None:
        self.source = source
        self.clock = clock
        self.tz = source.tz
        self.config_defaults = dict(defaults)
        self.retention = retention

    def timestamp(self, value: datetime | None, now: datetime) -> datetime:
        return inputs.timestamp(value, now, self.retention)

    def plan(
        self,
        ref: SubjectRef,
        raw_amounts: Mapping[str, object] | Amounts,
        mode: Mode,
        timestamp: datetime | None,
        *,
        idempotency_key: str | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        intent: Intent = "consume",
        resource: str | SubjectRef | None = None,
        asked: tuple[Mode, datetime | None] | None = None,
    ) -> DebitPlan:
        """The checks a request must pass; ``intent`` says which limits apply.

        A consume, commit or reservation is measured against counter limits and
        input_sequence_length; a lease only against concurrent_requests.
        ``asked`` is the mode and timestamp a queued request came with: its
        idempotency fingerprint is the original one, so that a first attempt
        that did reach the store is replayed, not stored a second time.
        """
        if intent == "acquire":
            amounts = Amounts({})
        elif isinstance(raw_amounts, Amounts):
            amounts = raw_amounts
        else:
            amounts = Amounts.parse(raw_amounts)
        now = self.clock.now()
        at = now if timestamp is None else self.timestamp(timestamp, now)
        view = self.source.config()
        target = None if resource is None else inputs.resource(resource)
        capacity = None
        # Only an idempotency key is ever compared with the fingerprint: without
        # one, the JSON and SHA-256 (a twentieth of a memory consume) buy nothing.
        fingerprint = ""
        if idempotency_key is not None:
            asked_mode, asked_at = asked or (mode, timestamp)
            fingerprint = request_fingerprint(
                request(amounts, asked_mode, asked_at, model, tags or {}, target)
            )
        if target is None:
            # The warm path: who is charged and which limits apply, remembered per
            # view; only the windows' placement of this instant is computed. Keyed
            # by the ref's two texts: a tuple of strings hashes in C, a ref in Python.
            charged, layout = view.memo(
                (_SKELETON, ref.kind, ref.id, intent == "acquire"),
                lambda: self._skeleton(ref, view, intent),
            )
            placement = layout.placement(at, self.tz)
            if placement is not None:
                # Nearly every plan: its checks are the span's placement's, built
                # only if something reads them (the memory meter's warm step does not).
                return placed_plan(
                    ref,  # subject
                    charged,
                    amounts,
                    mode,
                    at,  # timestamp
                    now,
                    self.tz,
                    idempotency_key,
                    fingerprint,
                    model,
                    dict(tags) if tags else {},
                    intent == "reserve",  # hold
                    None,  # resource
                    None,  # capacity
                    view.version,  # config_version
                    placement,
                )
            checks = layout.checks(amounts, at, now, self.tz)
        else:
            chain = self.effective_chain(ref, view=view)
            chain, consumer_limits, quota = self._resource_chain(view, ref, target, chain)
            chain = [*chain, (consumer_ref(target, ref), consumer_limits)]
            charged = tuple(subject for subject, _ in chain if not is_share(subject))
            checks = tuple(
                check
                for _, limits in chain
                for limit in limits
                if (check := self.check(limit, amounts, at, now, intent)) is not None
            )
            if quota is not None and quota.capacity and intent != "acquire":
                capacity = self._capacity_plan(view, quota, target, ref, amounts, at, now)
        # Positional, in DebitPlan's field order: a call by keyword matches each of
        # the sixteen names (tests/domain/test_plan_fields.py pins the order).
        return _new_plan(
            ref,  # subject
            charged,
            amounts,
            mode,
            at,  # timestamp
            now,
            self.tz,
            checks,
            idempotency_key,
            fingerprint,
            model,
            dict(tags) if tags else {},
            intent == "reserve",  # hold
            target,  # resource
            capacity,
            view.version,  # config_version
        )

    def _skeleton(
        self, ref: SubjectRef, view: ConfigView, intent: Intent
    ) -> tuple[tuple[SubjectRef, ...], Layout]:
        """The charged subjects and the limits a request without a resource is checked
        against, in ``check``'s order: what every plan of one version shares.

        Remembered instead of the chain it is made from (``_chain``, not
        ``effective_chain``), so a planned subject still takes two of the view's
        entries (this and its own limits), not three.
        """
        chain = self._chain(ref, True, view)
        acquire = intent == "acquire"
        return (
            tuple(subject for subject, _ in chain if not is_share(subject)),
            Layout(
                tuple(
                    limit
                    for _, limits in chain
                    for limit in limits
                    if (limit.key.metric is _CONCURRENT) == acquire
                )
            ),
        )

    def effective_chain(
        self, ref: SubjectRef, *, with_ancestors: bool = True, view: ConfigView | None = None
    ) -> Chain:
        """Each charged subject with its effective limits, the subject first.

        Remembered per version and subject, each subject's limits once however
        many chains it is in (a company's, in each of its users'): callers
        share the lists, and never change them.
        """
        seen = view or self.source.config()
        return seen.memo(
            (_CHAIN, ref, with_ancestors), lambda: self._chain(ref, with_ancestors, seen)
        )

    def _chain(self, ref: SubjectRef, with_ancestors: bool, view: ConfigView) -> Chain:
        """``effective_chain`` resolved afresh, each subject's limits from the view's memo."""

        def limits(subject: SubjectRef, rules: RuleSet) -> list[EffectiveLimit]:
            return view.memo((_LIMITS, subject), lambda: self.resolve(subject, rules))

        layers = view.rule_sets(ref, with_ancestors=with_ancestors, keep=False)
        return [(s, limits(s, rules)) for s, rules in layers]

    def resolve(self, ref: SubjectRef, rules: RuleSet) -> list[EffectiveLimit]:
        defaults = list(rules.defaults) + self.config_defaults.get(ref.kind, [])
        return resolve(ref, rules.overrides, rules.plan.rules if rules.plan else (), defaults)

    def quota(self, resource: SubjectRef, view: ConfigView | None = None) -> ResourceQuota | None:
        """The resource's quota, parsed once per version."""
        seen = view or self.source.config()

        def parse() -> ResourceQuota | None:
            stored = seen.resource_quota(resource)
            return ResourceQuota.parse(stored, field="") if stored is not None else None

        return seen.memo((_QUOTA, resource), parse)

    def _resource_chain(
        self, view: ConfigView, consumer: SubjectRef, resource: SubjectRef, chain: Chain
    ) -> tuple[Chain, list[EffectiveLimit], ResourceQuota | None]:
        """The resource (and its ancestors) join the charged chain; its quota adds rules.

        The consumer's rules (its own policy's, else its nearest ancestor's
        policy's, else the defaults) are measured on its own share of the
        resource, a counter series of its own: a group's policy rules bind each
        member on its own use, as default rules bind each consumer.
        """
        if resource == consumer:
            raise ValidationError("resource", "a subject cannot be its own resource")
        seen = {s for s, _ in chain}
        chain = chain + [
            (s, limits) for s, limits in self.effective_chain(resource, view=view) if s not in seen
        ]
        quota = self.quota(resource, view)
        share = consumer_ref(resource, consumer)
        # A group's policy reaches its members (own policy > nearest group's > defaults).
        lineage = view.ancestors(consumer) if quota is not None and quota.policies else []
        rules = quota.rules_for(consumer, lineage) if quota is not None else ()
        limits = [EffectiveLimit(share, r.key, r.limit, Source.RESOURCE, False) for r in rules]
        return chain, limits, quota

    def _capacity_plan(
        self,
        view: ConfigView,
        quota: ResourceQuota,
        resource: SubjectRef,
        consumer: SubjectRef,
        amounts: Amounts,
        at: datetime,
        now: datetime,
    ) -> CapacityPlan:
        assert quota.capacity is not None
        units = quota.capacity.units
        key = LimitKey(units, Window.parse("minute"))

        def series(subject: SubjectRef, amount: int) -> Check:
            limit = EffectiveLimit(subject, key, UNLIMITED, Source.RESOURCE, False)
            check = self.check(limit, amounts, at, now)
            assert check is not None
            return replace(check, amount=amount)

        # The reservation a consumer may use is its governing policy's: a member of a
        # group with a reserved share is never held back by its own group's share.
        policy = quota.governing_policy(consumer, view.ancestors(consumer))
        return CapacityPlan(
            quota=quota,
            resource=resource,
            consumer=policy.consumer if policy is not None else consumer,
            amount=amounts[units],
            total=series(resource, amounts[units]),
            shares=tuple(
                (other, series(consumer_ref(resource, other), 0))
                for other in quota.reserved_shares()
            ),
        )

    def check(
        self,
        limit: EffectiveLimit,
        amounts: Amounts,
        at: datetime,
        now: datetime,
        intent: Intent = "consume",
    ) -> Check | None:
        window = limit.key.window
        if (limit.key.metric is Metric.CONCURRENT_REQUESTS) != (intent == "acquire"):
            return None  # leases answer to concurrency limits only, and only they do
        if window is None:
            if limit.key.metric is Metric.CONCURRENT_REQUESTS:
                return _new_check(limit, 1, now, 0, 0, None)
            return _new_check(limit, amounts[Metric.INPUT_TOKENS], at, 0, 0, None)
        # A calendar window is measured in the period holding the event; a
        # rolling one always as of now, where a back-dated event may still count.
        read_at, lo, hi, bucket = window.placement(at, now, self.tz)
        return _new_check(limit, amounts[limit.key.metric], read_at, lo, hi, bucket)

    def usage_check(self, limit: EffectiveLimit, now: datetime) -> Check:
        """What a usage read measures for one limit: the window as of now, adding nothing."""
        window = limit.key.window
        if window is None:
            return Check(limit, 0, now, 0, 0, None)
        lo, hi = window.read_range(now, self.tz)
        return Check(limit, 0, now, lo, hi, hi)


_CAP, _LEASE, _PLACED, _ROLLING = range(4)  # how a Layout places a limit's check


class Layout:
    """The limits of one skeleton, and where a request at an instant is measured.

    ``checks`` is ``Planner.check`` for each limit (their intent is the
    skeleton's). A calendar or ``total`` window measures a request in the
    bucket holding it, the same bucket for every instant of a span (a
    period; forever for ``total``), so the buckets of all of them are
    computed for the span common to them (``Window.bucket_span``) and kept
    while requests fall in it: a plan then builds its checks without asking
    a window anything. A rolling window is placed per request (its reading
    depends on now as well). Shared by the planning threads: what a request
    reads is one tuple, replaced whole.
    """

    __slots__ = ("_placed", "limits")

    def __init__(self, limits: tuple[EffectiveLimit, ...]) -> None:
        self.limits = limits
        # (zone, start, end, per limit: (limit, how, metric, window, bucket), and the
        # span's Placement when every limit is placed per span, else None).
        self._placed: tuple[ZoneInfo | None, datetime, datetime, list[_Placed], Placement | None]
        self._placed = (None, ALWAYS[0], ALWAYS[0], [], None)

    def placement(self, at: datetime, tz: ZoneInfo) -> Placement | None:
        """The checks of a request at ``at`` as one ``Placement`` shared by its span; None
        when a limit is placed per request (a rolling window, a lease): then ``checks``."""
        zone, start, end, _, placement = self._placed
        if zone is not tz or not start <= at < end:
            placement = self._place(at, tz)[1]
        return placement

    def checks(
        self, amounts: Amounts, at: datetime, now: datetime, tz: ZoneInfo
    ) -> tuple[Check, ...]:
        zone, start, end, placed, _ = self._placed
        if zone is not tz or not start <= at < end:
            placed = self._place(at, tz)[0]
        units = dict(amounts.items())  # one C lookup per limit, not Amounts.__getitem__
        out = []
        for limit, how, metric, window, bucket in placed:
            if how == _PLACED:
                out.append(_new_check(limit, units.get(metric, 0), at, bucket, bucket, bucket))
            elif how == _ROLLING:
                assert window is not None
                read_at, lo, hi, landed = window.placement(at, now, tz)
                out.append(_new_check(limit, units.get(metric, 0), read_at, lo, hi, landed))
            elif how == _LEASE:
                out.append(_new_check(limit, 1, now, 0, 0, None))
            else:
                out.append(_new_check(limit, units.get(_INPUT, 0), at, 0, 0, None))
        return tuple(out)

    def _place(self, at: datetime, tz: ZoneInfo) -> tuple[list[_Placed], Placement | None]:
        start, end = ALWAYS
        placed: list[_Placed] = []
        each_span = True  # every limit placed per span, none per request
        for limit in self.limits:
            key = limit.key
            window = key.window
            if window is None:
                how = _LEASE if key.metric is _CONCURRENT else _CAP
                placed.append((limit, how, key.metric, None, 0))
                each_span = each_span and how == _CAP
            elif window.rolling_seconds:
                placed.append((limit, _ROLLING, key.metric, window, 0))
                each_span = False
            else:
                first, after = window.bucket_span(at, tz)
                start, end = max(start, first), min(end, after)
                placed.append((limit, _PLACED, key.metric, window, window.bucket_of(at, tz)))
        placement = None
        if each_span:
            placement = Placement(
                self.limits,
                tuple(_INPUT if how == _CAP else metric for _, how, metric, _, _ in placed),
                tuple(None if how == _CAP else bucket for _, how, _, _, bucket in placed),
            )
        self._placed = (tz, start, end, placed, placement)
        return placed, placement


_Placed = tuple[EffectiveLimit, int, Metric, Window | None, int]


def is_share(subject: SubjectRef) -> bool:
    """A consumer's share of a resource (see ``consumer_ref``), not a subject."""
    return "~" in subject.id


def request(
    amounts: Amounts,
    mode: Mode,
    timestamp: datetime | None,
    model: str | None,
    tags: Mapping[str, str],
    resource: SubjectRef | None,
) -> dict[str, Any]:
    """What a consume asked for, as the idempotency fingerprint and the spool see it."""
    return {
        "amounts": amounts.to_units_json(),
        "mode": mode.value,
        "timestamp": timestamp.isoformat() if timestamp else None,
        "model": model,
        "tags": dict(tags),
        "resource": str(resource) if resource else None,
    }


def request_fingerprint(asked: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def planned(attempt: Callable[[], T]) -> T:
    """Run a planned store call, planning again when its configuration version was stale.

    The store's step refuses a plan whose version is not the store's current
    one (a limit, plan, default, quota or the hierarchy changed since the
    snapshot was read), and tells the snapshot to ask for the new version.
    """
    for _ in range(STALE_ROUNDS):
        try:
            return attempt()
        except StaleConfig:
            continue
    raise StoreUnavailable(STALE_MESSAGE)


def parse_config_defaults(items: Iterable[Mapping[str, object]]) -> dict[str, list[Rule]]:
    """The config file's default rules by kind; runtime defaults in the store win over them."""
    out: dict[str, list[Rule]] = defaultdict(list)
    for i, item in enumerate(items):
        kind = parse_kind(item.get("kind"), f"defaults[{i}].kind")
        key = LimitKey.parse(item.get("metric"), item.get("window"), f"defaults[{i}]")
        value = parse_limit_value(key.metric, item.get("limit"), f"defaults[{i}].limit")
        if value is None:
            continue
        raw = item.get("thresholds")
        thresholds = () if raw is None else parse_thresholds(raw, f"defaults[{i}].thresholds")
        out[kind].append(Rule(key, value, bool(item.get("shadow", False)), thresholds))
    return dict(out)
