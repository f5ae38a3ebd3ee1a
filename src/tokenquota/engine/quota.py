"""The engine: the one place that turns a request into a decision.

It validates input, resolves each charged subject's limits (override, plan,
default), builds a ``DebitPlan`` naming every bucket to read, and lets the
store decide and write atomically. It holds no state of its own that decides
anything, so any number of engines may share one store. The one exception is
``on_store_error="open"``: while the store is unreachable, an engine admits
from its own spool and the keys it has seen (docs/outages.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from tokenquota.domain.clock import Clock, SystemClock, ensure_utc
from tokenquota.domain.decisions import (
    CapacityPlan,
    Check,
    DebitPlan,
    Decision,
    LimitStatus,
    Mode,
    QuotaExceeded,
    decide,
    prepaid_status,
    status,
)
from tokenquota.domain.errors import (
    NotFound,
    StoreUnavailable,
    StoreUnreachable,
    TokenQuotaError,
    ValidationError,
)
from tokenquota.domain.grants import Balance, Grant
from tokenquota.domain.grants import balance as grant_balance
from tokenquota.domain.holds import (
    Lease,
    Reservation,
    check_committable,
    parse_ttl,
)
from tokenquota.domain.keys import (
    MAX_KEY_NAME,
    ApiKey,
    format_key,
    hash_secret,
    parse_role,
    secret_matches,
    split_key,
    validate_key_binding,
)
from tokenquota.domain.ledger import AuditEntry, Event
from tokenquota.domain.limits import (
    MAX_PLAN_NAME,
    UNLIMITED,
    EffectiveLimit,
    LimitKey,
    Plan,
    Rule,
    RuleChange,
    Source,
    parse_limit_value,
    parse_rule_changes,
    resolve,
    validate_plan_name,
)
from tokenquota.domain.metrics import Amounts, Metric, Number, from_units, merge_amounts, to_units
from tokenquota.domain.resources import ResourceQuota
from tokenquota.domain.subjects import (
    Subject,
    SubjectRef,
    consumer_ref,
    parse_kind,
    validate_metadata,
    validate_name,
    validate_parents,
)
from tokenquota.domain.text import check_text
from tokenquota.domain.windows import Calendar, Window, calendar_period, parse_timezone
from tokenquota.engine.spool import OPEN_PREFIX, Queued, Spool
from tokenquota.storage import Layer, Page, RuleSet, Scope, Store, open_store
from tokenquota.storage.base import MAX_PAGE, StaleConfig

log = logging.getLogger("tokenquota")
shadow_log = logging.getLogger("tokenquota.shadow")

MAX_KEY_LENGTH: Final = 255
MAX_MODEL_LENGTH: Final = 128
MAX_TAGS: Final = 32
MAX_TAG_LENGTH: Final = 256
MAX_TAG_NAME: Final = 64
MAX_ID_LENGTH: Final = 64
MAX_HISTORY_POINTS: Final = 10_000
MAX_GRANTS: Final = 10_000
DEFAULT_RETENTION: Final = timedelta(days=400)
DEFAULT_TTL: Final = 60.0
STALE_ROUNDS: Final = 5  # see _planned
T = TypeVar("T")
Intent = Literal["consume", "reserve", "acquire"]
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
OnStoreError = Literal["closed", "open"]
DEFAULT_SPOOL: Final = "tokenquota-spool.db"
DRAIN_SECONDS: Final = 1.0  # how often a replica tries to store what it queued
DRAIN_BATCH: Final = 100
MAX_REMEMBERED_KEYS: Final = 10_000


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class GroupBy(StrEnum):
    METRIC = "metric"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class Usage:
    subject: str
    at: datetime
    limits: tuple[LimitStatus, ...]  # the subject's, then each ancestor's when asked for


@dataclass(frozen=True, slots=True)
class LimitsView:
    subject: str
    overrides: tuple[Rule, ...]
    plan: Plan | None
    effective: tuple[EffectiveLimit, ...]


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    start: datetime
    end: datetime
    metric: str
    model: str | None  # set when grouped by model ("" for events that named none)
    value: Number


@dataclass(frozen=True, slots=True)
class Reserved:
    """A reserve's answer: the decision, and the reservation when it was admitted."""

    decision: Decision
    reservation: Reservation | None

    @property
    def allowed(self) -> bool:
        return self.reservation is not None


@dataclass(frozen=True, slots=True)
class Acquired:
    decision: Decision
    lease: Lease | None

    @property
    def allowed(self) -> bool:
        return self.lease is not None


class Committer(Protocol):
    """What a hold commits through: the engine, or the synchronous HTTP client."""

    def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision: ...


class Hold:
    """A live reservation inside ``reservation(...)``; commit it with the real usage."""

    def __init__(self, owner: Committer, reservation: Reservation) -> None:
        self.owner = owner
        self.reservation = reservation
        self.result: Decision | None = None

    @property
    def id(self) -> str:
        return self.reservation.id

    def commit(
        self, amounts: Mapping[str, object] | None = None, **metric_amounts: object
    ) -> Decision:
        self.result = self.owner.commit(self.id, amounts, **metric_amounts)
        return self.result


@dataclass(frozen=True, slots=True)
class DefaultRule:
    kind: str
    rule: Rule
    origin: str  # "runtime" (set through the API or CLI, wins) or "config"


class Quota:
    """The library's entry point; see ``tokenquota.open``."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        strict_subjects: bool = False,
        defaults: Iterable[Mapping[str, object]] = (),
        retention: timedelta = DEFAULT_RETENTION,
        on_store_error: OnStoreError = "closed",
        spool: str | Path | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.tz = store.tz
        self.strict_subjects = strict_subjects
        self.retention = retention
        self._config_defaults = _parse_config_defaults(defaults)
        self.store.track(
            [r.key for rules in self._config_defaults.values() for r in rules], self.clock.now()
        )
        if on_store_error not in ("closed", "open"):
            raise ValidationError("on_store_error", "must be closed or open")
        # on_store_error="open" (SPEC section 5): see docs/outages.md.
        self.spool = Spool(spool or DEFAULT_SPOOL) if on_store_error == "open" else None
        self._keys: OrderedDict[str, tuple[ApiKey, str]] = OrderedDict()
        self._keys_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        if self.spool is not None:
            self._drainer = threading.Thread(
                target=self._drain_forever, name="tokenquota-spool", daemon=True
            )
            self._drainer.start()

    def close(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(timeout=30)
        self.store.close()

    def __enter__(self) -> Quota:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # subjects ---------------------------------------------------------------
    def put_subject(
        self,
        subject: str | SubjectRef,
        *,
        name: str | None = None,
        parents: Sequence[str | SubjectRef] | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str = "library",
    ) -> Subject:
        """Create or update a subject; arguments left as None keep what is stored.

        Changes are audited: new parents change who is charged from then on.
        With ``strict_subjects`` every parent must exist already.
        """
        ref = SubjectRef.parse(subject)
        parent_refs = validate_parents(ref, parents) if parents is not None else None
        if self.strict_subjects:
            for parent in parent_refs or ():
                if self.store.get_subject(parent) is None:
                    raise NotFound(f"unknown subject {parent}", details={"field": "parents"})
        return self.store.put_subject(
            ref,
            name=validate_name(name),
            metadata=validate_metadata(metadata) if metadata is not None else None,
            parents=parent_refs,
            now=self.clock.now(),
            actor=actor,
        )

    def set_parents(
        self,
        subject: str | SubjectRef,
        parents: Sequence[str | SubjectRef],
        *,
        actor: str = "library",
    ) -> Subject:
        return self.put_subject(subject, parents=parents, actor=actor)

    def get_subject(self, subject: str | SubjectRef) -> Subject:
        ref = SubjectRef.parse(subject)
        found = self.store.get_subject(ref)
        if found is None:
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})
        return found

    def list_subjects(
        self,
        *,
        kind: str | None = None,
        parent: str | SubjectRef | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Subject]:
        return self.store.list_subjects(
            kind=parse_kind(kind) if kind is not None else None,
            parent=SubjectRef.parse(parent, "parent") if parent is not None else None,
            offset=_offset(offset),
            limit=_limit(limit),
        )

    def delete_subject(self, subject: str | SubjectRef, *, actor: str = "library") -> None:
        ref = SubjectRef.parse(subject)
        if not self.store.delete_subject(ref, actor=actor, now=self.clock.now()):
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})

    def ancestors(self, subject: str | SubjectRef) -> list[SubjectRef]:
        return self.store.ancestors(SubjectRef.parse(subject))

    # limits -----------------------------------------------------------------
    def set_limit(
        self,
        subject: str | SubjectRef,
        metric: str,
        window: str | None,
        value: object,
        *,
        shadow: bool = False,
        actor: str = "library",
    ) -> LimitsView:
        """Set one override; ``value`` None removes it, -1 makes the subject unlimited."""
        return self.set_limits(
            subject,
            [{"metric": metric, "window": window, "limit": value, "shadow": shadow}],
            actor=actor,
        )

    def set_limits(
        self,
        subject: str | SubjectRef,
        limits: Sequence[Mapping[str, object]],
        *,
        actor: str = "library",
    ) -> LimitsView:
        ref = SubjectRef.parse(subject)
        changes = parse_rule_changes(limits, "limits")
        self._require_known(ref)
        self.store.change_rules(
            Scope(Layer.OVERRIDE, str(ref)), changes, actor=actor, now=self.clock.now()
        )
        return self.limits(ref)

    def limits(self, subject: str | SubjectRef) -> LimitsView:
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        ((_, rules),) = self.store.rule_sets(ref, with_ancestors=False)
        return LimitsView(str(ref), rules.overrides, rules.plan, tuple(self._resolve(ref, rules)))

    def _effective_chain(
        self, ref: SubjectRef, *, with_ancestors: bool = True
    ) -> list[tuple[SubjectRef, list[EffectiveLimit]]]:
        """Each charged subject with its effective limits, the subject first."""
        chain = self.store.rule_sets(ref, with_ancestors=with_ancestors)
        return [(s, self._resolve(s, rules)) for s, rules in chain]

    def _resolve(self, ref: SubjectRef, rules: RuleSet) -> list[EffectiveLimit]:
        defaults = list(rules.defaults) + self._config_defaults.get(ref.kind, [])
        return resolve(ref, rules.overrides, rules.plan.rules if rules.plan else (), defaults)

    def set_default(
        self,
        kind: str,
        metric: str,
        window: str | None,
        value: object,
        *,
        shadow: bool = False,
        actor: str = "library",
    ) -> list[DefaultRule]:
        return self.set_defaults(
            [{"kind": kind, "metric": metric, "window": window, "limit": value, "shadow": shadow}],
            actor=actor,
        )

    def set_defaults(
        self, items: Sequence[Mapping[str, object]], *, actor: str = "library"
    ) -> list[DefaultRule]:
        """Runtime defaults win over the config file's; ``limit`` None removes a runtime default."""
        by_kind: dict[str, list[Mapping[str, object]]] = defaultdict(list)
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ValidationError(f"defaults[{i}]", "must be an object")
            kind = parse_kind(item.get("kind"), f"defaults[{i}].kind")
            by_kind[kind].append({k: v for k, v in item.items() if k != "kind"})
        parsed = {kind: parse_rule_changes(rules, "defaults") for kind, rules in by_kind.items()}
        now = self.clock.now()
        for kind, changes in parsed.items():
            self.store.change_rules(Scope(Layer.DEFAULT, kind), changes, actor=actor, now=now)
        return self.defaults()

    def defaults(self) -> list[DefaultRule]:
        out: list[DefaultRule] = []
        kinds = set(self.store.list_default_kinds()) | set(self._config_defaults)
        for kind in sorted(kinds):
            runtime = self.store.get_rules(Scope(Layer.DEFAULT, kind))
            out += [DefaultRule(kind, r, "runtime") for r in runtime]
            shadowed = {r.key for r in runtime}
            out += [
                DefaultRule(kind, r, "config")
                for r in self._config_defaults.get(kind, [])
                if r.key not in shadowed
            ]
        return out

    # plans ------------------------------------------------------------------
    def create_plan(
        self, name: str, rules: Sequence[Mapping[str, object]], *, actor: str = "library"
    ) -> Plan:
        plan_name = validate_plan_name(name)
        changes = parse_rule_changes(rules, "rules")
        parsed = [Rule(c.key, c.value, c.shadow) for c in changes if c.value is not None]
        return self.store.create_plan(plan_name, parsed, actor=actor, now=self.clock.now())

    def update_plan(
        self,
        plan: str,
        *,
        name: str | None = None,
        rules: Sequence[Mapping[str, object]] | None = None,
        actor: str = "library",
    ) -> Plan:
        """Rename and/or replace the rules; every subject on the plan sees the change at once."""
        current = self.get_plan(plan)
        new_name = validate_plan_name(name) if name is not None else None
        changes: list[RuleChange] = []
        if rules is not None:
            changes = [c for c in parse_rule_changes(rules, "rules") if c.value is not None]
            given = {c.key for c in changes}
            changes += [RuleChange(r.key, None) for r in current.rules if r.key not in given]
        now = self.clock.now()
        self.store.update_plan(current.id, name=new_name, actor=actor, now=now)
        if changes:
            self.store.change_rules(Scope(Layer.PLAN, current.id), changes, actor=actor, now=now)
        return self.get_plan(current.id)

    def get_plan(self, plan: str) -> Plan:
        """Find a plan by id, or else by name."""
        check_text(plan, "plan_id", max_length=MAX_PLAN_NAME)
        found = self.store.get_plan(plan) or self.store.find_plan(plan)
        if found is None:
            raise NotFound(f"no plan {plan!r}", details={"field": "plan_id"})
        return found

    def plans(self) -> list[Plan]:
        return self.store.list_plans()

    def delete_plan(self, plan: str, *, actor: str = "library") -> None:
        self.store.delete_plan(self.get_plan(plan).id, actor=actor, now=self.clock.now())

    def assign_plan(
        self, subject: str | SubjectRef, plan: str | None, *, actor: str = "library"
    ) -> None:
        """Put a subject on a plan (by id or name); None takes it off."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        plan_id = self.get_plan(plan).id if plan is not None else None
        self.store.assign_plan(ref, plan_id, actor=actor, now=self.clock.now())

    # operations -------------------------------------------------------------
    def check(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        timestamp: datetime | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """The decision a consume in enforce mode would get now, spending nothing."""
        ref = SubjectRef.parse(subject)
        raw = merge_amounts(amounts, metric_amounts)
        try:
            self._require_known(ref)
            plan = self._plan(ref, raw, Mode.ENFORCE, timestamp, resource=resource)
            return decide(
                plan,
                self.store.read(plan.reads, plan.now),
                prepaid=self.store.prepaid(plan.charged, plan.now),
            )
        except StoreUnreachable:
            if self.spool is None:
                raise
            parsed = Amounts.parse(raw)
            return _failed_open(
                ref, parsed, Mode.ENFORCE, self._timestamp(timestamp, self.clock.now())
            )

    def consume(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        mode: str | Mode = Mode.ENFORCE,
        idempotency_key: str | None = None,
        timestamp: datetime | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Spend, all or nothing across the subject, its ancestors and every limit.

        ``mode="record"`` stores usage that already happened, whatever the limits
        say. A retry with the same ``idempotency_key`` returns the first answer
        and charges nothing; a denied call is not remembered, so it may be retried.
        """
        ref = SubjectRef.parse(subject)
        try:
            parsed_mode = Mode(mode)
        except ValueError:
            raise ValidationError("mode", "must be enforce or record") from None
        raw = merge_amounts(amounts, metric_amounts)
        key = _bounded_text(idempotency_key, "idempotency_key", MAX_KEY_LENGTH)
        model = _bounded_text(model, "model", MAX_MODEL_LENGTH)
        parsed_tags = _tags(tags)

        def attempt() -> Decision:
            plan = self._plan(
                ref,
                raw,
                parsed_mode,
                timestamp,
                idempotency_key=key,
                model=model,
                tags=parsed_tags,
                resource=resource,
            )
            return self.store.debit(plan, create_subject=not self.strict_subjects)

        try:
            decision = _planned(attempt)
        except StoreUnreachable:
            if self.spool is None:
                raise
            return self._queue(
                ref,
                Amounts.parse(raw),
                parsed_mode,
                key=key,
                timestamp=timestamp,
                model=model,
                tags=parsed_tags,
                resource=resource,
            )
        for hit in decision.shadow_blocked:
            shadow_log.warning(
                "shadow limit would have blocked %s: %s %s used %s of %s",
                decision.subject,
                hit.subject,
                f"{hit.metric}/{hit.window}",
                hit.used,
                hit.limit,
            )
        return decision

    # on_store_error="open": admit, queue, store later ------------------------------
    def _queue(
        self,
        ref: SubjectRef,
        amounts: Amounts,
        mode: Mode,
        *,
        key: str | None,
        timestamp: datetime | None = None,
        model: str | None = None,
        tags: Mapping[str, str] | None = None,
        resource: str | SubjectRef | None = None,
    ) -> Decision:
        """Admit a consume the store could not take, and keep it in the spool.

        Without a caller's idempotency key the spool makes one up: storing the
        entry later is then idempotent too, should a drain be cut short.
        """
        assert self.spool is not None
        at = self._timestamp(timestamp, self.clock.now())
        request = _request(amounts, mode, timestamp, model, tags or {}, _resource(resource))
        request["at"] = at.isoformat()  # when it happened: the windows it counts in
        answer = _failed_open(ref, amounts, mode, at)
        entry_key = key if key is not None else f"spool:{secrets.token_hex(16)}"
        decision = self.spool.queue(str(ref), entry_key, request, answer, _fingerprint(request))
        if not decision.replayed:
            log.warning("store unreachable: admitted %s for %s, queued", amounts.to_wire(), ref)
        return decision

    def drain(self) -> int:
        """Store what was admitted while the store was unreachable; returns how many.

        Runs every DRAIN_SECONDS on its own; stops at the first entry the store
        cannot take yet, so the spool keeps its order. Entries are stored as
        ``mode=record`` (they were admitted already) in the windows of the time
        they happened. One the store refuses for good (a subject deleted since,
        say) is set aside in the spool's ``failed`` table and logged.
        """
        if self.spool is None:
            return 0
        stored = 0
        with self._drain_lock:
            while batch := self.spool.pending(DRAIN_BATCH):
                for entry in batch:
                    try:
                        self._store_queued(entry)
                    except StoreUnavailable:
                        return stored
                    except TokenQuotaError as exc:
                        log.error("the store refused queued usage %s: %s", entry.key, exc.message)
                        self.spool.fail(entry, f"{exc.code}: {exc.message}", self.clock.now())
                        continue
                    self.spool.done(entry)
                    stored += 1
        return stored

    def _store_queued(self, entry: Queued) -> None:
        r = entry.request
        asked_at = datetime.fromisoformat(r["timestamp"]) if r["timestamp"] else None

        def attempt() -> Decision:
            plan = self._plan(
                SubjectRef.parse(entry.subject),
                Amounts.from_units_json(r["amounts"]),
                Mode.RECORD,
                datetime.fromisoformat(r["at"]),
                idempotency_key=entry.key,
                model=r["model"],
                tags=r["tags"],
                resource=r["resource"],
                asked=(Mode(r["mode"]), asked_at),
            )
            return self.store.debit(plan, create_subject=not self.strict_subjects)

        _planned(attempt)

    def _drain_forever(self) -> None:
        while not self._stop.wait(DRAIN_SECONDS):
            try:
                self.drain()
            except Exception:  # a bug must not stop the drainer for good
                log.exception("storing queued usage failed; trying again")

    def _holds(self, hold_id: str) -> Store | Spool:
        """Where a reservation or lease lives: an ``open-`` one, taken while the store
        was unreachable, in the spool; every other one in the store."""
        if _id(hold_id).startswith(OPEN_PREFIX) and self.spool is not None:
            return self.spool
        return self.store

    def _plan(
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
        at = self._timestamp(timestamp, now)
        chain = self._effective_chain(ref)
        target = _resource(resource)
        capacity = None
        if target is not None:
            chain, consumer_limits, quota = self._resource_chain(ref, target, chain)
            chain.append((consumer_ref(target, ref), consumer_limits))
        charged = tuple(subject for subject, _ in chain if not _is_share(subject))
        checks = [
            check
            for _, limits in chain
            for limit in limits
            if (check := self._check(limit, amounts, at, now, intent)) is not None
        ]
        if target is not None and quota is not None and quota.capacity and intent != "acquire":
            capacity = self._capacity_plan(quota, target, ref, amounts, at, now)
        asked_mode, asked_at = asked or (mode, timestamp)
        fingerprint = _fingerprint(
            _request(amounts, asked_mode, asked_at, model, tags or {}, target)
        )
        return DebitPlan(
            subject=ref,
            charged=charged,
            amounts=amounts,
            mode=mode,
            timestamp=at,
            now=now,
            tz=self.tz,
            checks=tuple(checks),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            model=model,
            tags=dict(tags or {}),
            hold=intent == "reserve",
            resource=target,
            capacity=capacity,
        )

    def _resource_chain(
        self,
        consumer: SubjectRef,
        resource: SubjectRef,
        chain: list[tuple[SubjectRef, list[EffectiveLimit]]],
    ) -> tuple[
        list[tuple[SubjectRef, list[EffectiveLimit]]], list[EffectiveLimit], ResourceQuota | None
    ]:
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
            (s, limits) for s, limits in self._effective_chain(resource) if s not in seen
        ]
        quota = self._quota(resource)
        share = consumer_ref(resource, consumer)
        # A group's policy reaches its members (own policy > nearest group's > defaults).
        lineage = self.store.ancestors(consumer) if quota is not None and quota.policies else []
        rules = quota.rules_for(consumer, lineage) if quota is not None else ()
        limits = [EffectiveLimit(share, r.key, r.limit, Source.RESOURCE, False) for r in rules]
        return chain, limits, quota

    def _capacity_plan(
        self,
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
            check = self._check(limit, amounts, at, now)
            assert check is not None
            return replace(check, amount=amount)

        # The reservation a consumer may use is its governing policy's: a member of a
        # group with a reserved share is never held back by its own group's share.
        policy = quota.governing_policy(consumer, self.store.ancestors(consumer))
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

    # resource quotas ----------------------------------------------------------
    def _quota(self, resource: SubjectRef) -> ResourceQuota | None:
        stored = self.store.get_resource_quota(resource)
        return ResourceQuota.parse(stored, field="") if stored is not None else None

    def set_resource_quota(
        self, resource: str | SubjectRef, quota: Mapping[str, object], *, actor: str = "library"
    ) -> ResourceQuota:
        """Put a shared-capacity quota on a resource (SPEC section 6); replaces any earlier one."""
        ref = SubjectRef.parse(resource, "resource")
        if not isinstance(quota, Mapping):
            raise ValidationError("body", "a quota is an object")
        parsed = ResourceQuota.parse(quota, field="")
        keys = [r.key for r in parsed.default_rules]
        keys += [r.key for p in parsed.policies for r in p.rules]
        if parsed.capacity is not None:
            keys.append(LimitKey(parsed.capacity.units, Window.parse("minute")))
        self.store.put_resource_quota(
            ref, dict(parsed.to_wire()), keys, actor=actor, now=self.clock.now()
        )
        return parsed

    def get_resource_quota(self, resource: str | SubjectRef) -> ResourceQuota:
        ref = SubjectRef.parse(resource, "resource")
        found = self._quota(ref)
        if found is None:
            raise NotFound(f"no quota on {ref}", details={"field": "resource"})
        return found

    def delete_resource_quota(self, resource: str | SubjectRef, *, actor: str = "library") -> None:
        ref = SubjectRef.parse(resource, "resource")
        if not self.store.delete_resource_quota(ref, actor=actor, now=self.clock.now()):
            raise NotFound(f"no quota on {ref}", details={"field": "resource"})

    def resource_quotas(
        self, *, offset: int = 0, limit: int = 100
    ) -> Page[tuple[SubjectRef, ResourceQuota]]:
        page = self.store.list_resource_quotas(offset=_offset(offset), limit=_limit(limit))
        items = [(ref, ResourceQuota.parse(q, field="")) for ref, q in page.items]
        return Page(items, page.total, page.offset, page.limit)

    def _check(
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
                return Check(limit, 1, now, 0, 0, None)
            return Check(limit, amounts[Metric.INPUT_TOKENS], at, 0, 0, None)
        # A calendar window is measured in the period holding the event; a
        # rolling one always as of now, where a back-dated event may still count.
        read_at = now if window.is_rolling else at
        lo, hi = window.read_range(read_at, self.tz)
        bucket = window.bucket_of(at, self.tz)
        return Check(
            limit,
            amounts[limit.key.metric],
            read_at,
            lo,
            hi,
            bucket if lo <= bucket <= hi else None,
        )

    def _timestamp(self, timestamp: datetime | None, now: datetime) -> datetime:
        if timestamp is None:
            return now
        at = ensure_utc(timestamp, "timestamp")
        if at > now + MAX_FUTURE_SKEW:
            raise ValidationError("timestamp", "is in the future")
        if at < now - self.retention:
            raise ValidationError(
                "timestamp", f"is older than the retention horizon ({self.retention.days} days)"
            )
        return at

    def _require_known(self, ref: SubjectRef) -> None:
        if self.strict_subjects and self.store.get_subject(ref) is None:
            raise NotFound(f"unknown subject {ref}", details={"field": "subject"})

    def usage(self, subject: str | SubjectRef, *, include_ancestors: bool = False) -> Usage:
        """Every effective limit with what is used, left and when it resets."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        now = self.clock.now()
        checks = [
            self._usage_check(limit, now)
            for _, limits in self._effective_chain(ref, with_ancestors=include_ancestors)
            for limit in limits
        ]
        readings = self.store.read(checks, now)
        subjects = [ref, *self.store.ancestors(ref)] if include_ancestors else [ref]
        wallets = [prepaid_status(p, now, self.tz) for p in self.store.prepaid(subjects, now)]
        return Usage(
            str(ref),
            now,
            tuple(status(c, r, self.tz) for c, r in zip(checks, readings, strict=True))
            + tuple(wallets),
        )

    def _usage_check(self, limit: EffectiveLimit, now: datetime) -> Check:
        window = limit.key.window
        if window is None:
            return Check(limit, 0, now, 0, 0, None)
        lo, hi = window.read_range(now, self.tz)
        return Check(limit, 0, now, lo, hi, hi)

    def shadow_hits(self, subject: str | SubjectRef) -> dict[str, int]:
        """How many decisions each shadow limit of the subject would have blocked."""
        return {str(k): v for k, v in self.store.shadow_hits(SubjectRef.parse(subject)).items()}

    def history(
        self,
        subject: str | SubjectRef,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str = "day",
        group_by: str = "metric",
    ) -> list[HistoryPoint]:
        """A time series from the ledger, in periods of the configured time zone."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        try:
            grain = Granularity(granularity)
        except ValueError:
            raise ValidationError("granularity", "must be hour, day or month") from None
        try:
            grouping = GroupBy(group_by)
        except ValueError:
            raise ValidationError("group_by", "must be metric or model") from None
        unit = Calendar(grain.value)
        # By default: through the end of the current period, so "now" is included.
        stop = (
            ensure_utc(end, "end") if end else calendar_period(unit, self.clock.now(), self.tz)[1]
        )
        begin = ensure_utc(start, "start") if start else stop - timedelta(days=30)
        if begin >= stop:
            raise ValidationError("start", "must be before end")
        first = calendar_period(unit, begin, self.tz)[0]
        if (stop - first) / _GRAIN_SPAN[grain] > MAX_HISTORY_POINTS:
            raise ValidationError(
                "start", f"the range spans more than {MAX_HISTORY_POINTS} periods"
            )
        sums: dict[tuple[datetime, str, str | None], int] = defaultdict(int)
        ends: dict[datetime, datetime] = {}
        for event in self.store.iter_events(subject=ref, start=begin, end=stop):
            if not event.is_usage:
                continue  # grants are credit, not usage
            period_start, period_end = calendar_period(unit, event.timestamp, self.tz)
            ends[period_start] = period_end
            model = (event.model or "") if grouping is GroupBy.MODEL else None
            for metric, units in event.amounts.items():
                sums[(period_start, metric.value, model)] += units
        return [
            HistoryPoint(p, ends[p], metric, model, from_units(Metric(metric), units))
            for (p, metric, model), units in sorted(
                sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
            )
        ]

    def events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[Event]:
        return self.store.events(
            subject=SubjectRef.parse(subject) if subject is not None else None,
            start=ensure_utc(start, "start") if start else None,
            end=ensure_utc(end, "end") if end else None,
            offset=_offset(offset),
            limit=_limit(limit),
        )

    def iter_events(
        self,
        *,
        subject: str | SubjectRef | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Event]:
        """Every matching event, streamed in batches: for exports."""
        return self.store.iter_events(
            subject=SubjectRef.parse(subject) if subject is not None else None,
            start=ensure_utc(start, "start") if start else None,
            end=ensure_utc(end, "end") if end else None,
        )

    def audit(
        self, *, subject: str | None = None, offset: int = 0, limit: int = 100
    ) -> Page[AuditEntry]:
        """Changes to a subject, or to ``defaults/<kind>``, ``plans/<id>`` or ``keys/<id>``."""
        target = None
        if subject is not None:
            target = subject if "/" in subject else str(SubjectRef.parse(subject))
            check_text(target, "subject", max_length=200)
        return self.store.audit(target=target, offset=_offset(offset), limit=_limit(limit))

    def rebuild(self) -> int:
        """Recompute every counter from the ledger; returns the number of events replayed."""
        return self.store.rebuild()

    # reservations -------------------------------------------------------------
    def reserve(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Reserved:
        """Hold an estimate before an LLM call, all or nothing across the hierarchy.

        Held amounts count as used for every other caller until ``commit``,
        ``release`` or ``ttl`` seconds pass, whichever comes first.
        """
        ref = SubjectRef.parse(subject)
        lifetime = parse_ttl(ttl)
        raw = merge_amounts(amounts, metric_amounts)

        def attempt() -> Reserved:
            plan = self._plan(ref, raw, Mode.ENFORCE, None, intent="reserve", resource=resource)
            reservation = Reservation(
                id=secrets.token_hex(16),
                subject=ref,
                charged=plan.charged,
                amounts=plan.amounts,
                created_at=plan.now,
                expires_at=plan.now + lifetime,
                resource=plan.resource,
            )
            decision = self.store.reserve(
                plan, reservation, create_subject=not self.strict_subjects
            )
            return Reserved(decision, reservation if decision.allowed else None)

        try:
            return _planned(attempt)
        except StoreUnreachable:
            if self.spool is None:
                raise
        parsed = Amounts.parse(raw)
        now = self.clock.now()
        held = Reservation(
            id=OPEN_PREFIX + secrets.token_hex(16),
            subject=ref,
            charged=(ref,),
            amounts=parsed,
            created_at=now,
            expires_at=now + lifetime,
            resource=_resource(resource),
        )
        self.spool.add_reservation(held, now)
        return Reserved(_failed_open(ref, parsed, Mode.ENFORCE, now), held)

    def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision:
        """Replace the hold by what the call really used (more or less; never refused).

        Without amounts, the held estimate is recorded. A second commit returns
        the first one's answer; a commit after release or expiry is a 409.
        """
        given = merge_amounts(amounts, metric_amounts)
        if given:
            # Validated before the replay below, which never reads them: a bad
            # body is refused on a repeat too, as on the first commit.
            Amounts.parse(given)
        reservation = self.get_reservation(reservation_id)
        if reservation.committed is not None:
            return reservation.committed.as_replay()  # a repeat, whatever it says now
        check_committable(reservation, reservation.id, self.clock.now())
        actual = given if given else reservation.amounts.to_wire()
        spool = self._holds(reservation.id)
        if isinstance(spool, Spool):
            # Held while the store was away: the usage joins the queue. The key is
            # the reservation's, so a repeated commit is queued (and stored) once.
            decision = self._queue(
                reservation.subject,
                Amounts.parse(actual),
                Mode.RECORD,
                key=f"commit:{reservation.id}",
                resource=reservation.resource,
            )
            spool.committed(reservation.id, decision)
            return decision

        def attempt() -> Decision:
            plan = self._plan(
                reservation.subject, actual, Mode.RECORD, None, resource=reservation.resource
            )
            return self.store.commit(reservation.id, plan)

        return _planned(attempt)

    def release(self, reservation_id: str) -> bool:
        """Free a hold now; False when there was nothing left to free (a no-op)."""
        return self._holds(reservation_id).release(reservation_id, self.clock.now())

    def get_reservation(self, reservation_id: str) -> Reservation:
        found = self._holds(reservation_id).get_reservation(reservation_id)
        if found is None:
            raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
        return found

    @contextmanager
    def reservation(
        self,
        subject: str | SubjectRef,
        amounts: Mapping[str, object] | None = None,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
        **metric_amounts: object,
    ) -> Iterator[Hold]:
        """``with q.reservation("user:a", tokens=2000) as hold: ...; hold.commit(tokens=n)``

        Raises QuotaExceeded when the hold is refused. An exception in the block
        releases the hold; leaving the block without a commit records the estimate.
        """
        reserved = self.reserve(
            subject, merge_amounts(amounts, metric_amounts), ttl=ttl, resource=resource
        )
        if reserved.reservation is None:
            raise QuotaExceeded(reserved.decision.denial(), reserved.decision)
        hold = Hold(self, reserved.reservation)
        try:
            yield hold
        except BaseException:
            if hold.result is None:
                self.release(hold.id)
            raise
        if hold.result is None:
            hold.commit()

    # leases -------------------------------------------------------------------
    def acquire(
        self,
        subject: str | SubjectRef,
        *,
        ttl: float | timedelta = DEFAULT_TTL,
        resource: str | SubjectRef | None = None,
    ) -> Acquired:
        """A concurrency slot on the subject and every ancestor, until released or expired."""
        ref = SubjectRef.parse(subject)
        lifetime = parse_ttl(ttl)

        def attempt() -> Acquired:
            plan = self._plan(ref, {}, Mode.ENFORCE, None, intent="acquire", resource=resource)
            lease = Lease(
                id=secrets.token_hex(16),
                subject=ref,
                charged=plan.charged,
                created_at=plan.now,
                expires_at=plan.now + lifetime,
                resource=plan.resource,
            )
            decision = self.store.acquire(plan, lease, create_subject=not self.strict_subjects)
            return Acquired(decision, lease if decision.allowed else None)

        try:
            return _planned(attempt)
        except StoreUnreachable:
            if self.spool is None:
                raise
        now = self.clock.now()
        held = Lease(
            id=OPEN_PREFIX + secrets.token_hex(16),
            subject=ref,
            charged=(ref,),
            created_at=now,
            expires_at=now + lifetime,
            resource=_resource(resource),
        )
        self.spool.add_lease(held, now)
        return Acquired(_failed_open(ref, Amounts({}), Mode.ENFORCE, now), held)

    def release_lease(self, lease_id: str) -> bool:
        return self._holds(lease_id).release_lease(lease_id, self.clock.now())

    def heartbeat(self, lease_id: str, *, ttl: float | timedelta = DEFAULT_TTL) -> Lease:
        """Extend a live lease to ``ttl`` seconds from now; an expired one is a 409."""
        now = self.clock.now()
        return self._holds(lease_id).extend_lease(lease_id, now + parse_ttl(ttl), now)

    def get_lease(self, lease_id: str) -> Lease:
        found = self._holds(lease_id).get_lease(lease_id)
        if found is None:
            raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
        return found

    @contextmanager
    def lease(
        self, subject: str | SubjectRef, *, ttl: float | timedelta = DEFAULT_TTL
    ) -> Iterator[Lease]:
        """``with q.lease("user:a"): call_the_model()``; raises QuotaExceeded when full."""
        acquired = self.acquire(subject, ttl=ttl)
        if acquired.lease is None:
            raise QuotaExceeded(acquired.decision.denial(), acquired.decision)
        try:
            yield acquired.lease
        finally:
            self.release_lease(acquired.lease.id)

    # prepaid credits ----------------------------------------------------------
    def grant(
        self,
        subject: str | SubjectRef,
        credits: object,
        *,
        expires_at: datetime | None = None,
        actor: str = "library",
    ) -> Grant:
        """Add prepaid credits. From then on the subject's credit spending must fit its balance."""
        ref = SubjectRef.parse(subject)
        self._require_known(ref)
        units = to_units(Metric.CREDITS, credits, "credits")
        if units <= 0:
            raise ValidationError("credits", "must be more than 0")
        now = self.clock.now()
        expiry = ensure_utc(expires_at, "expires_at") if expires_at is not None else None
        if expiry is not None and expiry <= now:
            raise ValidationError("expires_at", "must be in the future")
        if len(self.store.grants(ref)) >= MAX_GRANTS:
            raise ValidationError("subject", f"a subject holds at most {MAX_GRANTS} grants")
        grant = Grant(secrets.token_hex(16), ref, units, now, expiry, units)
        self.store.add_grant(grant, actor=actor)
        return grant

    def grants(self, subject: str | SubjectRef) -> list[Grant]:
        return self.store.grants(SubjectRef.parse(subject))

    def balance(self, subject: str | SubjectRef) -> Balance | None:
        """What a prepaid subject has left now; None when it was never granted credits."""
        ref = SubjectRef.parse(subject)
        return grant_balance(ref, self.store.grants(ref), self.clock.now())

    # API keys ---------------------------------------------------------------
    def create_key(
        self,
        role: str,
        *,
        subject: str | SubjectRef | None = None,
        name: str | None = None,
        actor: str = "library",
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown this once and never stored."""
        parsed_role = parse_role(role)
        ref = SubjectRef.parse(subject) if subject is not None else None
        validate_key_binding(parsed_role, ref)
        key = ApiKey(
            id=secrets.token_hex(8),
            role=parsed_role,
            subject=ref,
            name=_bounded_text(name, "name", MAX_KEY_NAME),
            created_at=self.clock.now(),
        )
        secret = secrets.token_urlsafe(32)
        self.store.create_key(key, hash_secret(secret), actor=actor)
        return key, format_key(key.id, secret)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key a caller presented, or None; never says which part was wrong."""
        parts = split_key(presented)
        if parts is None:
            return None
        try:
            found = self.store.get_key(parts[0])
        except StoreUnreachable:
            found = self._remembered_key(parts[0])
            if found is None:
                raise
        else:
            self._remember_key(parts[0], found)
        if found is None:
            hash_secret(parts[1])  # the same work either way: no timing hint
            return None
        key, stored = found
        if not secret_matches(parts[1], stored) or key.revoked_at is not None:
            return None
        return key

    def _remember_key(self, key_id: str, found: tuple[ApiKey, str] | None) -> None:
        """With on_store_error="open", keys this process has seen live still work
        while the store is unreachable (a service could not consume otherwise).
        Only the hash is kept, and a key found revoked or gone is forgotten."""
        if self.spool is None:
            return
        with self._keys_lock:
            if found is None or found[0].revoked_at is not None:
                self._keys.pop(key_id, None)
                return
            self._keys[key_id] = found
            self._keys.move_to_end(key_id)
            while len(self._keys) > MAX_REMEMBERED_KEYS:
                self._keys.popitem(last=False)

    def _remembered_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._keys_lock:
            return self._keys.get(key_id)

    def list_keys(self, *, offset: int = 0, limit: int = 100) -> Page[ApiKey]:
        return self.store.list_keys(offset=_offset(offset), limit=_limit(limit))

    def revoke_key(self, key_id: str, *, actor: str = "library") -> None:
        check_text(key_id, "id", max_length=MAX_ID_LENGTH)
        if not self.store.revoke_key(key_id, actor=actor, now=self.clock.now()):
            raise NotFound(f"no live key {key_id!r}", details={"field": "id"})


_GRAIN_SPAN: Final = {
    Granularity.HOUR: timedelta(hours=1),
    Granularity.DAY: timedelta(days=1),
    Granularity.MONTH: timedelta(days=28),
}


def _is_share(subject: SubjectRef) -> bool:
    """A consumer's share of a resource (see ``consumer_ref``), not a subject."""
    return "~" in subject.id


def _request(
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


def _resource(value: str | SubjectRef | None) -> SubjectRef | None:
    return SubjectRef.parse(value, "resource") if value is not None else None


def _fingerprint(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _failed_open(ref: SubjectRef, amounts: Amounts, mode: Mode, at: datetime) -> Decision:
    """The answer given without the store: admitted, nothing measured."""
    return Decision(
        allowed=True,
        subject=str(ref),
        mode=mode,
        amounts=amounts.to_numbers(),
        timestamp=at,
        limits=(),
        failed_open=True,
    )


def _planned(attempt: Callable[[], T]) -> T:
    """Run a planned store call, planning again when the store's cached limits were stale.

    Only a store that caches its configuration (Redis) says so; each round
    means a limit or the hierarchy changed in the meantime.
    """
    for _ in range(STALE_ROUNDS):
        try:
            return attempt()
        except StaleConfig:
            continue
    raise StoreUnavailable("the limits kept changing while this request was planned; retry")


def _id(value: object, field: str = "id") -> str:
    return check_text(value, field, max_length=MAX_ID_LENGTH)


def _bounded_text(value: object, field: str, size: int) -> str | None:
    return None if value is None else check_text(value, field, max_length=size)


def _tags(tags: object) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError("tags", "must be an object of string: string")
    if len(tags) > MAX_TAGS:
        raise ValidationError("tags", f"at most {MAX_TAGS} tags")
    out: dict[str, str] = {}
    for key, value in tags.items():
        name = check_text(key, "tags", max_length=MAX_TAG_NAME)
        out[name] = check_text(value, f"tags.{name}", max_length=MAX_TAG_LENGTH, allow_empty=True)
    return out


def _offset(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**31:
        raise ValidationError("offset", "must be a whole number from 0")
    return value


def _limit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PAGE:
        raise ValidationError("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return value


def _parse_config_defaults(items: Iterable[Mapping[str, object]]) -> dict[str, list[Rule]]:
    out: dict[str, list[Rule]] = defaultdict(list)
    for i, item in enumerate(items):
        kind = parse_kind(item.get("kind"), f"defaults[{i}].kind")
        key = LimitKey.parse(item.get("metric"), item.get("window"), f"defaults[{i}]")
        value = parse_limit_value(key.metric, item.get("limit"), f"defaults[{i}].limit")
        if value is None:
            continue
        out[kind].append(Rule(key, value, bool(item.get("shadow", False))))
    return dict(out)


def open(
    url: str = "sqlite:///tokenquota.db",
    *,
    redis: str | None = None,
    clock: Clock | None = None,
    timezone: str | None = None,
    move_timezone: bool = False,
    strict_subjects: bool = False,
    defaults: Iterable[Mapping[str, object]] = (),
    retention: timedelta = DEFAULT_RETENTION,
    on_store_error: OnStoreError = "closed",
    spool: str | Path | None = None,
) -> Quota:
    """Open a quota store: ``memory://``, ``sqlite:///path.db`` or ``postgresql://…``.

    SQL stores are migrated on open. ``redis="redis://host:port"`` keeps the
    hot counters in Redis (or a Redis Cluster) beside a SQL store that holds
    the ledger: see docs/redis.md.

    Calendar windows are counted in one IANA ``timezone`` kept with the data:
    a new store takes the one given (UTC by default), an existing one keeps its
    own, and asking it for another is refused unless ``move_timezone`` is set,
    which recomputes every counter in the new zone.

    ``on_store_error="open"`` admits consumes, checks, reservations and leases
    while the store is unreachable, and keeps the usage in a local ``spool``
    file (``tokenquota-spool.db`` by default) until the store takes it; see
    docs/outages.md. The default, ``"closed"``, answers StoreUnavailable.
    """
    tz = parse_timezone(timezone) if timezone is not None else None
    store = open_store(url, tz, move_timezone=move_timezone, redis=redis)
    try:
        return Quota(
            store,
            clock=clock,
            strict_subjects=strict_subjects,
            defaults=defaults,
            retention=retention,
            on_store_error=on_store_error,
            spool=spool,
        )
    except BaseException:
        store.close()  # bad settings: no connection pool or mover thread left behind
        raise


__all__ = [
    "DefaultRule",
    "Granularity",
    "GroupBy",
    "HistoryPoint",
    "LimitsView",
    "Quota",
    "Usage",
    "ensure_utc",
    "open",
]
