"""The memory meter: counters, holds, prepaid credits and the ledger.

It keeps its tables in the one ``State`` it shares with the memory catalog
and takes that state's lock around every operation (see state.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from tokenquota.domain.alerts import alert_events
from tokenquota.domain.bounds import LIFETIME_BUCKET, check_granted, check_lifetime
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import (
    Check,
    DebitPlan,
    Decision,
    Prepaid,
    Reading,
    admitted,
    decide,
)
from tokenquota.domain.errors import IdempotencyConflict, NotFound
from tokenquota.domain.frozen import builder
from tokenquota.domain.grants import Grant, allocate
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_committable,
    check_extendable,
    check_lease_releasable,
    check_releasable,
)
from tokenquota.domain.ledger import Event, grant_event, usage_event
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import MAX_UNITS, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.windows import ROLLING_BUCKETS, TOTAL
from tokenquota.storage.base import PROGRESS_EVERY, Page, RebuildProgress, StaleConfig
from tokenquota.storage.ledger_rows import grant_audit
from tokenquota.storage.memory.shapes import Shape
from tokenquota.storage.memory.state import Counting, State

_new_reading: Final = builder(Reading)  # Reading(...) without its frozen __init__: one per limit
_MAX_SHAPES: Final = 4_096  # plan shapes remembered; more (many users) start afresh
_CREDITS: Final = Metric.CREDITS


class MemoryMeter:
    def __init__(self, state: State) -> None:
        self._s = state
        self._lock = state.lock
        self._shapes: dict[tuple[int, tuple[Metric, ...]], Shape] = {}  # by (id(charged), metrics)

    @property
    def tz(self) -> ZoneInfo:
        return self._s.tz

    # counting ---------------------------------------------------------------
    def read(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        with self._lock:
            return [self._read(c, now) for c in checks]

    def _reads(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        """``_read`` of each check; a calendar or ``total`` window, with no reservation
        held anywhere, read here in line: nearly every check of nearly every decision."""
        state = self._s
        if state.held:
            return [self._read(c, now) for c in checks]
        counters = state.counters
        out = []
        for check in checks:
            lo = check.lo
            limit = check.limit
            window = limit.key.window
            if window is None or lo != check.hi or window.rolling_seconds:
                out.append(self._read(check, now))
                continue
            subject, metric_name, _, _ = limit.names()
            series = counters.get((subject, metric_name, window.key))
            units = series.get(lo) if series else None
            out.append(_new_reading({lo: units} if units else {}))
        return out

    def _read(self, check: Check, now: datetime) -> Reading:
        limit = check.limit
        key = limit.key
        metric, window = key.metric, key.window
        subject, metric_name, _, _ = limit.names()
        if metric is Metric.CONCURRENT_REQUESTS:
            ends = [
                lease.expires_at
                for lease in self._s.leases.values()
                if lease.live(now) and subject in lease.series
            ]
            return Reading({0: len(ends)}, held_until=min(ends)) if ends else Reading()
        if window is None:
            return Reading()
        series = self._s.counters.get((subject, metric_name, window.key))
        lo, hi = check.lo, check.hi
        buckets: dict[int, int]
        if not series:
            buckets = {}
        elif lo == hi:  # a calendar window, total: one bucket
            units = series.get(lo)
            buckets = {lo: units} if units else {}
        elif len(series) <= ROLLING_BUCKETS:
            buckets = {b: v for b, v in series.items() if lo <= b <= hi and v}
        else:  # a long-lived rolling series: its window's buckets, not its whole past
            step = window.bucket_seconds
            buckets = {b: v for b in range(lo, hi + 1, step) if (v := series.get(b))}
        if not self._s.held:
            return _new_reading(buckets)
        holds = [
            (r.amounts[metric], r.expires_at)
            for r in self._s.held.values()
            if r.live(now) and subject in r.series and r.amounts[metric]
        ]
        if not holds:
            return Reading(buckets)
        return Reading(buckets, sum(a for a, _ in holds), max(e for _, e in holds))

    def _require_subject(self, plan: DebitPlan, create: bool) -> None:
        if plan.subject in self._s.subjects:
            return
        if not create:
            raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
        self._s.subject_row(plan.subject)

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        with self._lock:
            return self._prepaid(subjects, now)

    def _prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        out: list[Prepaid] = []
        if not self._s.grant_ids:
            return out  # nobody was ever granted credits
        for subject in subjects:
            grants = tuple(self._s.grants_of(subject))
            if not grants:
                continue
            held = sum(
                r.amounts[Metric.CREDITS]
                for r in self._s.held.values()
                if r.live(now) and str(subject) in r.series
            )
            out.append(Prepaid(subject, grants, held))
        return out

    def _decide(self, plan: DebitPlan, event_id: int | None = None) -> Decision:
        """The decision on ``plan``; if admitted, it names ``event_id`` (its event's id)."""
        now = plan.now
        readings = self._reads(plan.reads, now)
        decision = decide(plan, readings, event_id, self._prepaid(plan.charged, now))
        self._record_alerts(plan, readings, decision)
        for status in decision.shadow_blocked:
            self._s.shadow[(status.subject, LimitKey.parse(status.metric, status.window))] += 1
        return decision

    def _record_alerts(
        self, plan: DebitPlan, readings: Sequence[Reading], decision: Decision
    ) -> None:
        for alert in alert_events(plan, readings, decision):  # in this step, under the lock
            self._s.record_alert(alert)

    def debit(self, plan: DebitPlan, *, create_subject: bool) -> Decision:
        with self._lock:
            state = self._s
            version = plan.config_version
            if version is not None and version != state.config_version:
                raise StaleConfig  # ``State.verify_version``, in line
            key = (str(plan.subject), plan.idempotency_key) if plan.idempotency_key else None
            if key and key in state.idempotency:
                fingerprint, first = state.idempotency[key]
                if fingerprint != plan.fingerprint:
                    raise IdempotencyConflict(
                        "this idempotency key was used for a different request",
                        details={"field": "idempotency_key"},
                    )
                return first.as_replay()
            decision = self._apply(plan, None, create_subject)
            if decision.allowed and key:
                state.idempotency[key] = (plan.fingerprint, decision)
            return decision

    def _counting(self, plan: DebitPlan, metrics: tuple[Metric, ...]) -> Counting:
        """``State.shape`` of the plan's series and ``metrics`` (the plan's)."""
        if plan.resource is not None:
            return self._s.shape(plan.series, plan.amounts)
        return self._shape(plan, metrics).counting

    def _shape(self, plan: DebitPlan, metrics: tuple[Metric, ...]) -> Shape:
        """What the meter keeps for plans of one charged tuple and ``metrics``; for a
        plan without a resource.

        Such a plan is charged ``plan.charged``, a tuple the planner shares
        between the plans of one configuration: its shape is remembered by that
        tuple's identity (``_shapes``, which holds the tuple, so its id names no
        other while remembered) instead of naming each subject again per plan,
        for as long as the state keeps its shapes (``State.counting_epoch``).
        """
        found = self._kept(plan.charged, metrics)
        if found is None:
            state = self._s
            counting = state.shape(plan.series, plan.amounts)  # may move the epoch
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            found = self._shapes[(id(plan.charged), metrics)] = Shape(
                plan.charged, state.counting_epoch, counting
            )
        return found

    def _kept(self, charged: tuple[SubjectRef, ...], metrics: tuple[Metric, ...]) -> Shape | None:
        """The shape ``_shape`` keeps for ``charged`` and ``metrics``, if it still holds."""
        found = self._shapes.get((id(charged), metrics))
        if found is None or found.charged is not charged or found.epoch != self._s.counting_epoch:
            return None
        return found

    def _check_bounds(
        self,
        plan: DebitPlan,
        counting: Counting | None = None,
        units: Mapping[Metric, int] | None = None,
    ) -> None:
        # Only the metrics the request carries can cross the bound: their
        # lifetime counters (the ``total`` bucket of LIFETIME), not all of them.
        # Nearly always far below it: the exact check only when one might cross.
        if units is None:
            units = dict(plan.amounts.items())
        if counting is None:
            counting = self._counting(plan, tuple(units))
        for metric, dicts in counting.lifetime:
            headroom = MAX_UNITS - units[metric]
            for buckets in dicts:
                if buckets.get(LIFETIME_BUCKET, 0) > headroom:
                    self._check_bounds_exactly(plan)
                    return

    def _check_bounds_exactly(self, plan: DebitPlan) -> None:
        counters = self._s.counters
        series = plan.series
        lifetime: dict[tuple[str, Metric], int] = {}
        for metric in plan.amounts:
            for name in series:
                buckets = counters.get((name, metric._value_, TOTAL.key))
                if buckets:
                    lifetime[(name, metric)] = buckets.get(LIFETIME_BUCKET, 0)
        check_lifetime(series, plan.amounts, lifetime)

    def _apply(
        self,
        plan: DebitPlan,
        reservation_id: str | None = None,
        create_subject: bool | None = None,
    ) -> Decision:
        """Decide ``plan`` and, if admitted, append its event and count it.

        ``create_subject`` is a debit's (None: a commit, whose subject exists):
        an unknown subject is made, or refused, before anything is counted.
        """
        state = self._s
        units = plan.amounts.units()  # read with one C lookup per metric
        metrics = tuple(units)
        # A shape is built only once the subject is known (below): never for a refused one.
        shape = self._kept(plan.charged, metrics) if plan.resource is None else None
        # The subject's row, looked up (a ref hashes in Python) unless this shape saw
        # it at this very configuration version: only a configuration write (which
        # moves the version) deletes a subject, and nothing else does.
        if create_subject is not None and (
            shape is None
            or plan.subject is not shape.subject
            or state.config_version is not shape.version
        ):
            if plan.subject not in state.subjects:
                self._require_subject(plan, create_subject)
            if shape is not None:
                shape.subject, shape.version = plan.subject, state.config_version
        if plan.resource is None:
            if shape is None:
                shape = self._shape(plan, metrics)
                if create_subject is not None:
                    shape.subject, shape.version = plan.subject, state.config_version
            counting = shape.counting
        else:
            counting = state.shape(plan.series, plan.amounts)
        # Before deciding, which counts shadow hits: a refused amount changes nothing.
        self._check_bounds(plan, counting, units)
        # Decided with the id its event will get, so the answer is built once.
        event_id = state.last_event_id + 1
        decision = None
        if shape is not None and not state.held and not state.grant_ids and plan.capacity is None:
            placement = plan.placement
            used = (
                shape.used(plan.checks, state.counters)
                if placement is None
                else shape.placed(placement, state.counters)
            )
            if used is not None:
                decision = admitted(plan, used, event_id)
                if decision is not None and shape.thresholds:  # (of these very limits)
                    self._record_alerts(plan, self._reads(plan.reads, plan.now), decision)
        if decision is None:
            decision = self._decide(plan, event_id)
            if not decision.allowed:
                return decision
        event = usage_event(plan, reservation_id, event_id)
        state.last_event_id = event_id  # ``State.append_event``, in line
        state.events.append(event)
        counting.add(event.timestamp, state.tz, units)
        if units.get(_CREDITS):
            self._burn(event)
        return decision

    def _burn(self, event: Event) -> None:
        credits = event.amounts[Metric.CREDITS]
        if not credits:
            return
        for subject in event.charged:
            burned, _ = allocate(self._s.grants_of(subject), credits, event.recorded_at)
            for grant_id, units in burned.items():
                grant = self._s.grants[grant_id]
                self._s.grants[grant_id] = replace(grant, remaining=grant.remaining - units)

    # prepaid credits --------------------------------------------------------
    def add_grant(self, grant: Grant, *, actor: str) -> int:
        with self._lock:
            granted = sum(g.amount for g in self._s.grants_of(grant.subject))
            check_granted(str(grant.subject), granted, grant.amount)
            self._s.subject_row(grant.subject)
            if grant.id not in self._s.grants:
                self._s.grant_ids.setdefault(grant.subject, []).append(grant.id)
            self._s.grants[grant.id] = grant
            event = grant_event(grant, self._s.last_event_id + 1)
            self._s.append_event(event)
            self._s.write_audit(grant.granted_at, actor, *grant_audit(grant))
            return event.id

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self._lock:
            mine = self._s.grants_of(subject)
        return sorted(mine, key=lambda g: (g.granted_at, g.id))

    # reservations and leases ------------------------------------------------
    def reserve(
        self, plan: DebitPlan, reservation: Reservation, *, create_subject: bool
    ) -> Decision:
        with self._lock:
            self._s.verify_version(plan)
            self._require_subject(plan, create_subject)
            decision = self._decide(plan)
            if decision.allowed:
                self._s.put_reservation(reservation)
            return decision

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        with self._lock:
            return self._s.reservations.get(reservation_id)

    def commit(self, reservation_id: str, plan: DebitPlan) -> Decision:
        with self._lock:
            self._s.verify_version(plan)
            reservation = self._s.reservations.get(reservation_id)
            check_committable(reservation, reservation_id, plan.now)
            assert reservation is not None
            if reservation.committed is not None:
                return reservation.committed.as_replay()
            self._check_bounds(plan)  # while the hold is still in place
            # The hold goes first, so the actual usage is measured without it.
            self._s.put_reservation(replace(reservation, state=HoldState.RELEASED))
            decision = self._apply(plan, reservation_id)
            self._s.put_reservation(
                replace(reservation, state=HoldState.COMMITTED, committed=decision)
            )
            return decision

    def release(self, reservation_id: str, now: datetime) -> bool:
        with self._lock:
            reservation = self._s.reservations.get(reservation_id)
            if not check_releasable(reservation, reservation_id):
                return False
            self._s.put_reservation(replace(reservation, state=HoldState.RELEASED))
            return True

    def acquire(self, plan: DebitPlan, lease: Lease, *, create_subject: bool) -> Decision:
        with self._lock:
            self._s.verify_version(plan)
            self._require_subject(plan, create_subject)
            decision = self._decide(plan)
            if decision.allowed:
                self._s.leases[lease.id] = lease
            return decision

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._lock:
            return self._s.leases.get(lease_id)

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        with self._lock:
            lease = self._s.leases.get(lease_id)
            if not check_lease_releasable(lease, lease_id):
                return False
            self._s.leases[lease_id] = replace(lease, released_at=now)
            return True

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        with self._lock:
            lease = self._s.leases.get(lease_id)
            check_extendable(lease, lease_id, now)
            assert lease is not None
            extended = self._s.leases[lease_id] = replace(lease, expires_at=expires_at)
            return extended

    # ledger -----------------------------------------------------------------
    def _select(
        self, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> list[Event]:
        lo = to_micros(start) if start else None
        hi = to_micros(end) if end else None
        return [
            e
            for e in self._s.events
            if (subject is None or subject in e.charged)
            and (lo is None or to_micros(e.timestamp) >= lo)
            and (hi is None or to_micros(e.timestamp) < hi)
        ]

    def events(
        self,
        *,
        subject: SubjectRef | None,
        start: datetime | None,
        end: datetime | None,
        offset: int,
        limit: int,
    ) -> Page[Event]:
        with self._lock:
            rows = self._select(subject, start, end)
        return Page(rows[offset : offset + limit], len(rows), offset, limit)

    def iter_events(
        self, *, subject: SubjectRef | None, start: datetime | None, end: datetime | None
    ) -> Iterator[Event]:
        with self._lock:
            rows = self._select(subject, start, end)
        return iter(rows)

    def shadow_hits(self, ref: SubjectRef) -> dict[LimitKey, int]:
        with self._lock:
            return {k: v for (s, k), v in self._s.shadow.items() if s == str(ref)}

    def rebuild(self, on_progress: RebuildProgress | None = None) -> int:
        with self._lock:
            self._s.counters.clear()
            self._s.forget_counting()
            for grant_id, grant in self._s.grants.items():
                self._s.grants[grant_id] = replace(grant, remaining=grant.amount)
            total = len(self._s.events)
            for done, event in enumerate(self._s.events):
                if on_progress is not None and done % PROGRESS_EVERY == 0:
                    on_progress(done, total)
                self._s.count(event, self._s.tracked)
                if event.is_usage:
                    self._burn(event)
            if on_progress is not None:
                on_progress(total, total)
            return total
