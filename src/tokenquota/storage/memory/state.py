"""The memory backend's one state: every table, behind one lock.

The catalog and the meter are two views of this one object and take its one
lock around every operation, so each operation is as atomic as it was when
they were one class; a second lock would let a rule change and a consume
interleave. Only what both halves need lives here as code: the bare subject
an operation may create, the audit log, the counting of an event, and the
configuration version token (the catalog moves it, the meter checks it).
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.decisions import DebitPlan, Decision
from tokenquota.domain.grants import Grant
from tokenquota.domain.holds import HoldState, Lease, Reservation
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry, CounterKey, Event, increments
from tokenquota.domain.limits import LimitKey, Rule
from tokenquota.domain.metrics import Amounts, Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Counted, Tracking
from tokenquota.domain.windows import ALWAYS, Window
from tokenquota.storage.base import Scope, StaleConfig
from tokenquota.storage.snapshot import FIRST_TOKEN

# (subject, metric, window key) -> bucket -> units.
Counters = dict[tuple[str, str, str], dict[int, int]]
_MAX_COUNTING: Final = 4_096  # shapes remembered; more (many users) start it afresh


class Counting:
    """Where an event of one (series, metrics) shape is counted: the bucket dicts of
    every tracked window of its metrics in each series, and the bucket each adds to.

    Every window's bucket of an instant is fixed over a span of time (a calendar
    period, a rolling window's bucket, forever for ``total``); the buckets are
    computed for the span common to all of them (``start`` to ``end``, half
    open) and reused while events fall in it, so counting an event is a dict
    update per (window, series) and one comparison of instants: the buckets a
    consume adds to change at the next minute boundary, not per consume.
    """

    __slots__ = ("buckets", "end", "lifetime", "start", "tz", "windows")

    def __init__(self, windows: list[tuple[Window, Metric, tuple[dict[int, int], ...]]]) -> None:
        # Per tracked window of one metric: the window, the metric, and the bucket
        # dict of that (metric, window) in each series, in series order.
        self.windows = windows
        # The lifetime (``total``) dicts, which the 63-bit bound reads.
        self.lifetime = [(metric, dicts) for window, metric, dicts in windows if window.is_total]
        # Per metric, each (dict, bucket) an event in [start, end) in zone tz adds to.
        self.buckets: list[tuple[Metric, list[tuple[dict[int, int], int]]]] = []
        self.start = self.end = ALWAYS[0]  # an empty span: the first event places them
        self.tz: ZoneInfo | None = None

    def add(self, at: datetime, tz: ZoneInfo, units: Mapping[Metric, int]) -> None:
        """Add ``units`` (metric -> units) of an event at ``at`` to every bucket it counts in."""
        if not (self.start <= at < self.end) or tz is not self.tz:
            self._place(at, tz)
        for metric, targets in self.buckets:
            amount = units[metric]
            for buckets, bucket in targets:
                buckets[bucket] = buckets.get(bucket, 0) + amount

    def _place(self, at: datetime, tz: ZoneInfo) -> None:
        """The buckets of ``at``, and the span around it in which they all stay the same."""
        start, end = ALWAYS
        placed: dict[Metric, list[tuple[dict[int, int], int]]] = {}
        for window, metric, dicts in self.windows:
            bucket = window.bucket_of(at, tz)
            first, after = window.bucket_span(at, tz)
            start, end = max(start, first), min(end, after)
            placed.setdefault(metric, []).extend((buckets, bucket) for buckets in dicts)
        self.buckets = list(placed.items())
        self.start, self.end, self.tz = start, end, tz


@dataclass
class SubjectRow:
    name: str | None
    metadata: dict[str, Any]
    parents: tuple[SubjectRef, ...]
    plan_id: str | None = None


@dataclass
class State:
    tz: ZoneInfo
    lock: threading.RLock = field(default_factory=threading.RLock)
    subjects: dict[SubjectRef, SubjectRow] = field(default_factory=dict)
    rules: dict[Scope, dict[LimitKey, Rule]] = field(default_factory=lambda: defaultdict(dict))
    plans: dict[str, str] = field(default_factory=dict)  # id -> name
    # Replaced whole when it grows (domain/tracking.py): shapes are kept by its identity.
    tracked: Tracking = field(default_factory=Tracking)
    # (subject, metric, window key) -> bucket -> units: a decision reads a few
    # buckets of a few series, so it finds them without walking every counter.
    counters: Counters = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    idempotency: dict[tuple[str, str], tuple[str, Decision]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    shadow: dict[tuple[str, LimitKey], int] = field(default_factory=lambda: defaultdict(int))
    keys: dict[str, tuple[ApiKey, str]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # The reservations still HELD, a subset of ``reservations``: a decision weighs
    # these, not every reservation ever made. Expired ones leave when settled.
    held: dict[str, Reservation] = field(default_factory=dict)
    resource_quotas: dict[SubjectRef, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    grant_ids: dict[SubjectRef, list[str]] = field(default_factory=dict)  # in grant order
    leases: dict[str, Lease] = field(default_factory=dict)
    # The alert outbox (storage.base.AlertLog): events in id order, keyed by
    # ``AlertEvent.dedupe`` so one is recorded once; ``alerts_fanned`` holds the
    # ids already handed to the webhook deliveries.
    alert_events: list[AlertEvent] = field(default_factory=list)
    alert_dedupe: dict[str, int] = field(default_factory=dict)  # dedupe -> id
    alerts_fanned: set[int] = field(default_factory=set)
    # The id of the last event appended: a decision is built with the id its
    # event will get (``last_event_id + 1``) before the event is appended.
    last_event_id: int = 0
    audit_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # The configuration version (storage/snapshot.py): moved by every catalog
    # write under the lock, compared by every step that decides on a plan.
    config_version: str = FIRST_TOKEN
    config_versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # The bucket dicts an event of one (series, metrics) shape adds to: ``shape``.
    # Dropped whenever ``tracked`` grows or ``counters`` is emptied.
    _counting: dict[tuple[tuple[str, ...], tuple[Metric, ...]], Counting] = field(
        default_factory=dict, repr=False
    )
    _counting_tracked: Tracking | None = None
    # Moved whenever the remembered shapes are dropped: a caller that keeps a
    # shape of its own (the meter, by plan) keeps it only while this stands.
    counting_epoch: int = 0

    def bump_config(self) -> None:
        """A configuration write: every snapshot of the old version is stale from now."""
        self.config_version = str(next(self.config_versions))

    def verify_version(self, plan: DebitPlan) -> None:
        """Refuse a plan made from another configuration version; call it under the lock."""
        if plan.config_version is not None and plan.config_version != self.config_version:
            raise StaleConfig

    def subject_row(self, ref: SubjectRef) -> SubjectRow:
        """The subject's row, created bare (no name, metadata or parents) if it is new."""
        return self.subjects.setdefault(ref, SubjectRow(None, {}, ()))

    def append_event(self, event: Event) -> None:
        """Append an event numbered ``last_event_id + 1`` (``usage_event``, ``grant_event``)."""
        assert event.id == self.last_event_id + 1
        self.last_event_id = event.id
        self.events.append(event)

    def record_alert(self, event: AlertEvent) -> AlertEvent | None:
        """Append ``event`` numbered, unless its dedupe key is recorded already; under the lock."""
        if event.dedupe in self.alert_dedupe:
            return None
        numbered = replace(event, id=len(self.alert_events) + 1)
        self.alert_events.append(numbered)
        self.alert_dedupe[event.dedupe] = numbered.id
        return numbered

    def put_reservation(self, reservation: Reservation) -> None:
        self.reservations[reservation.id] = reservation
        if reservation.state is HoldState.HELD:
            self.held[reservation.id] = reservation
        else:
            self.held.pop(reservation.id, None)

    def grants_of(self, subject: SubjectRef) -> list[Grant]:
        """The subject's grants in the order they were given."""
        return [self.grants[i] for i in self.grant_ids.get(subject, ())]

    def parents_of(self, ref: SubjectRef) -> tuple[SubjectRef, ...]:
        row = self.subjects.get(ref)
        return row.parents if row else ()

    def write_audit(
        self, at: datetime, actor: str, action: str, target: str, before: Any, after: Any
    ) -> None:
        self.audit.append(
            AuditEntry(next(self.audit_ids), at, actor, action, target, before, after)
        )

    def count(self, event: Event, keys: Counted) -> None:
        """Add a usage event to the counters it is counted in by ``keys`` (a backfill's
        ``Added``, or ``tracked`` for a consume and a rebuild)."""
        if not event.is_usage:
            return  # a grant adds credits to spend; it is not usage
        if keys is self.tracked:
            self.count_into(event, self.shape(event.series, event.amounts))
            return
        counters = self.counters
        # ``ledger.increments``, added straight into each series' buckets.
        for (subject, metric, window, bucket), units in increments(
            event.series, event.amounts, event.timestamp, self.tz, keys
        ).items():
            buckets = counters.get((subject, metric, window))
            if buckets is None:
                counters[(subject, metric, window)] = {bucket: units}
            else:
                buckets[bucket] = buckets.get(bucket, 0) + units

    def count_into(self, event: Event, counting: Counting) -> None:
        """``count`` over every tracked key, into the bucket dicts ``shape`` gave for the
        event's series and metrics: no key tuple built, looked up or skipped per series."""
        counting.add(event.timestamp, self.tz, dict(event.amounts.items()))

    def shape(self, series: tuple[str, ...], amounts: Amounts) -> Counting:
        """The bucket dicts an event of these series and metrics adds to, per tracked
        window (``Counting``), among them the lifetime (``total``) ones the 63-bit
        bound reads.

        Remembered per (series, metrics): every consume of one subject counts
        into the same dicts, which live as long as ``counters`` keeps them. A
        dict is made empty here if its series had none yet; an empty dict reads
        as no usage everywhere. Call it under the lock.
        """
        if self._counting_tracked is not self.tracked:  # replaced whole when it grows
            self.forget_counting()
            self._counting_tracked = self.tracked
        key = (series, tuple(amounts.keys()))
        found = self._counting.get(key)
        if found is not None:
            return found
        counters = self.counters
        made: list[tuple[Window, Metric, tuple[dict[int, int], ...]]] = []
        for tracked, names in self.tracked.shape(series):  # each series: its kind's pairs
            window, metric = tracked.window, tracked.metric
            if window is None or metric not in amounts:
                continue
            name = metric._value_
            dicts = tuple(counters.setdefault((s, name, window.key), {}) for s in names)
            made.append((window, metric, dicts))
        if len(self._counting) >= _MAX_COUNTING:
            self.forget_counting()
        found = self._counting[key] = Counting(made)
        return found

    def forget_counting(self) -> None:
        """Drop the remembered bucket dicts: call it whenever ``counters`` is emptied
        or a series' dict is taken out of it, and when ``tracked`` grows."""
        self._counting.clear()
        self.counting_epoch += 1

    def counter(self, key: CounterKey) -> int:
        subject, metric, window, bucket = key
        buckets = self.counters.get((subject, metric, window))
        return buckets.get(bucket, 0) if buckets else 0
