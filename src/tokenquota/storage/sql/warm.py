"""SQLite: a warm consume's reads in one row, and what the meter decides it from.

Nearly every consume is *warm*: its plan has a ``Placement`` (each limit read
in one bucket, or a cap that reads nothing, ``domain/plans.py``), no resource
capacity, and its subjects hold no live reservation and no prepaid grant.
Such a decision needs one number per limit, the lifetime counters of the
63-bit bound, whether the subject exists, the configuration version, the
idempotency key's answer (when keyed) and the number its event will carry.
This module reads all of them as **one row** of scalar subqueries, instead of
the tagged rows of the general read (``reads.Reads``): no row per counter to
build, tag and sort out in Python, and a parameter list in which each
distinct value is bound once (numbered parameters).

The same row says whether the general read is needed after all: a live hold
or a grant of a charged subject makes its first column true, and the meter
then reads again with ``reads.Reads`` in the same transaction (under the
same write lock, so the two agree). A shape that found one skips this read
for its next ``_COOL`` decisions, so a subject that always has grants does
not pay for two reads a consume.

The event's number is ``max(id) + 1`` of ``events``: under BEGIN IMMEDIATE no
other writer can insert meanwhile, and it is the rowid SQLite itself would
give the row (``events.id`` is the rowid, without AUTOINCREMENT). Known
before the writes, it lets the decision be built numbered once (``admitted``
takes it) and the writes go in one batch.

What an admitted consume adds to is kept per shape too (``Warm.deltas``,
``Warm.bumps``): the buckets of every tracked window stay the same over a
span of time, so the counters and their upsert's text are worked out once
per span, as the memory store's ``Counting`` does, and only the amounts are
put in per call. Everything here is checked against the general read and
``ledger.increments`` in tests/test_sql_warm_read.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tokenquota.domain.bounds import LIFETIME_BUCKET
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import DebitPlan, Reading
from tokenquota.domain.ledger import CounterKey
from tokenquota.domain.metrics import COUNTERS, Metric
from tokenquota.domain.plans import Placement
from tokenquota.domain.tracking import Tracking
from tokenquota.domain.windows import ALWAYS
from tokenquota.storage.base import StaleConfig
from tokenquota.storage.snapshot import FIRST_TOKEN
from tokenquota.storage.sql.reads import Found
from tokenquota.storage.sql.statements import SQLITE, TOTAL, Stmt, numbered_bumps
from tokenquota.storage.sql.version import VERSION_KEY

# After a row that needed the general read, this many decisions of the shape go
# straight to it before the one-row read is tried again.
_COOL = 64
# A row of more columns, or more holds and grants to look for, is left to the general
# read: SQLite allows 2,000 result columns and an expression 1,000 deep (the ORs).
_MOST_COLUMNS = 500


class Warm:
    """The one-row read of every warm decision of one shape, and how to read its row.

    A shape is what ``reads._Shape`` keys on (the placement, the series, the
    subject, the lifetime metrics, whether keyed and versioned): plans of one
    placement read the same limits in the same buckets, so only the
    idempotency key and the time differ between their statements. Kept in
    ``_WARM`` under the placement's ``id()`` and used only when its own
    placement *is* the plan's (it keeps that placement alive).
    """

    __slots__ = (
        "charged",
        "cool",
        "counting",
        "general",
        "keyed",
        "lifetime",
        "placement",
        "reads",
        "series",
        "template",
        "text",
        "upsert",
        "versioned",
    )

    def __init__(
        self,
        plan: DebitPlan,
        placement: Placement,
        series: tuple[str, ...],
        subject: str,
        metrics: Sequence[str],
        keyed: bool,
        versioned: bool,
    ) -> None:
        self.placement = placement
        self.charged = plan.charged
        self.series = series
        self.keyed = keyed
        self.versioned = versioned
        self.cool = 0
        # Where an admitted consume of this shape adds: (tracked pairs, zone, start,
        # end, per metric the counters), for instants in [start, end) (``deltas``).
        self.counting: tuple[Any, Any, datetime, datetime, list[tuple[Metric, list[CounterKey]]]]
        self.counting = (None, None, ALWAYS[0], ALWAYS[0], [])
        # The counters' upsert for that span (``bumps``): its text, its parameters, and
        # where each metric's amount goes; None when two of its counters are one.
        self.upsert: tuple[str, list[Any], list[tuple[int, Metric]]] | None = None
        # Always the general read: with thresholds, which alert on the readings
        # (``alert_events``), or a row too wide for one select (below).
        self.general = any(limit.thresholds for limit in placement.limits)
        values: list[Any] = [None, None]  # ?1 the idempotency key, ?2 the time (``stmt``)
        at: dict[tuple[type, Any], int] = {}

        def slot(value: Any) -> str:
            """The numbered parameter of a constant ``value``, each bound once."""
            index = at.get((type(value), value))
            if index is None:
                index = at[(type(value), value)] = len(values)
                values.append(value)
            return f"?{index + 1}"

        charged = series[: len(plan.charged)]
        # Holds are read for the limits' subjects and the charged ones (``Ranges.held``),
        # grants for the charged subjects (the prepaid wallets).
        subjects = sorted({limit.names()[0] for limit in placement.limits}.union(charged))
        other = [
            f"EXISTS (SELECT 1 FROM holds WHERE subject = {slot(s)} AND expires_at > ?2)"
            for s in subjects
        ]
        other += [
            f"EXISTS (SELECT 1 FROM grants WHERE subject = {slot(s)})" for s in sorted(set(charged))
        ]
        columns = [
            " OR ".join(other),
            f"EXISTS (SELECT 1 FROM subjects WHERE ref = {slot(subject)})",
            "(SELECT max(id) FROM events)",
        ]
        if versioned:
            columns.append(f"(SELECT value FROM meta WHERE \"key\" = '{VERSION_KEY}')")
        if keyed:
            where = f'WHERE subject = {slot(subject)} AND "key" = ?1'
            columns.append(f"(SELECT fingerprint FROM idempotency {where})")
            columns.append(f"(SELECT decision FROM idempotency {where})")
        counter = (
            "(SELECT value FROM counters WHERE subject = {} AND metric = {}"
            ' AND "window" = {} AND bucket = {})'
        )
        # Per limit, the column its count is in (-1: a cap, which reads nothing).
        reads: list[int] = []
        for limit, bucket in zip(placement.limits, placement.buckets, strict=True):
            window = limit.key.window
            if bucket is None or window is None:
                reads.append(-1)
                continue
            name, metric, window_name, _ = limit.names()
            reads.append(len(columns))
            columns.append(
                counter.format(slot(name), slot(metric), slot(window_name), slot(bucket))
            )
        self.reads = tuple(reads)
        # The lifetime counters of the 63-bit bound: (column, series, metric).
        self.lifetime: list[tuple[int, str, Metric]] = []
        for s in series:
            for m in metrics:
                self.lifetime.append((len(columns), s, Metric(m)))
                columns.append(counter.format(slot(s), slot(m), slot(TOTAL), slot(LIFETIME_BUCKET)))
        if len(columns) > _MOST_COLUMNS or len(other) > _MOST_COLUMNS:
            self.general = True  # SQLite's bounds on columns and expression depth
        self.text = "SELECT " + ", ".join(columns)
        self.template = values

    def stmt(self, plan: DebitPlan) -> Stmt:
        params = self.template.copy()
        params[0] = plan.idempotency_key if self.keyed else None
        params[1] = to_micros(plan.now)
        return self.text, params

    def deltas(self, plan: DebitPlan, tz: Any, tracked: Tracking) -> dict[CounterKey, int]:
        """``ledger.increments`` of ``plan`` (one of this shape) in ``tz`` over ``tracked``.

        Every tracked window's bucket is fixed over a span of time (a calendar
        period, a rolling window's bucket, forever for ``total``), so the
        counters an event adds to are worked out for the span common to them all
        and kept while events fall in it, as the memory store's ``Counting``
        does: the buckets change at the next boundary, not per consume.
        """
        at = plan.timestamp
        pairs, zone, start, end, counters = self.counting
        if pairs is not tracked or zone is not tz or not start <= at < end:
            counters = self._place(plan, at, tz, tracked)
        units = plan.amounts.units()
        out: dict[CounterKey, int] = {}
        for metric, keys in counters:
            amount = units[metric]
            for key in keys:
                out[key] = out.get(key, 0) + amount
        return out

    def bumps(self, plan: DebitPlan, tz: Any, tracked: Tracking) -> Stmt:
        """The upsert of ``deltas``' counters (``Sql.bumps``), its text kept for the span
        with each distinct value bound once: only the amounts are put in per call."""
        at = plan.timestamp
        pairs, zone, start, end, _ = self.counting
        if pairs is not tracked or zone is not tz or not start <= at < end:
            self._place(plan, at, tz, tracked)
        if self.upsert is None:
            return SQLITE.bumps(self.deltas(plan, tz, tracked))
        text, template, amounts = self.upsert
        params = template.copy()
        units = plan.amounts.units()
        for i, metric in amounts:
            params[i] = units[metric]
        return text, params

    def _place(
        self, plan: DebitPlan, at: datetime, tz: ZoneInfo, tracked: Tracking
    ) -> list[tuple[Metric, list[CounterKey]]]:
        """The counters of an event at ``at`` (``ledger.increments``', in its order), and
        the span around ``at`` in which they stay the same."""
        start, end = ALWAYS
        units = plan.amounts.units()
        counters: list[tuple[Metric, list[CounterKey]]] = []
        for key, names in tracked.shape(self.series):  # each series: its kind's pairs
            window = key.window
            if window is None or not units.get(key.metric):
                continue
            bucket = window.bucket_of(at, tz)
            first, after = window.bucket_span(at, tz)
            start, end = max(start, first), min(end, after)
            name = key.metric._value_
            counters.append((key.metric, [(s, name, window.key, bucket) for s in names]))
        self.counting = (tracked, tz, start, end, counters)
        self.upsert = None
        every = [counter for _, of_metric in counters for counter in of_metric]
        if every and len(set(every)) == len(every):
            values: list[Any] = []
            at_value: dict[tuple[type, Any], int] = {}
            amounts: list[tuple[int, Metric]] = []
            rows: list[list[str]] = []
            for metric, of_metric in counters:
                amounts.append((len(values), metric))
                amount = f"?{len(values) + 1}"
                values.append(0)
                for counter in of_metric:
                    row = []
                    for value in counter:
                        index = at_value.get((type(value), value))
                        if index is None:
                            index = at_value[(type(value), value)] = len(values)
                            values.append(value)
                        row.append(f"?{index + 1}")
                    rows.append([*row, amount])
            self.upsert = (numbered_bumps(rows), values, amounts)
        return counters

    def found(self, row: Sequence[Any], plan: DebitPlan) -> Found | None:
        """What the row says, or None when the general read is needed (a live hold or
        a grant): then this shape skips the one-row read for a while."""
        if row[0]:
            self.cool = _COOL
            return None
        found = Found()
        found.subject_known = bool(row[1])
        found.event_id = (row[2] or 0) + 1
        at = 3
        if self.versioned:
            version = row[3]
            if (version if version is not None else FIRST_TOKEN) != plan.config_version:
                raise StaleConfig
            at = 4
        if self.keyed and row[at] is not None:
            answer = row[at + 1]
            found.replay = (row[at], json.loads(answer) if isinstance(answer, str) else answer)
        # int(): a counter is an integer; never let a driver's type leak to the wire.
        found.used = [int(row[i] or 0) if i >= 0 else 0 for i in self.reads]
        found.lifetime = {(s, m): int(row[i] or 0) for i, s, m in self.lifetime}
        found.series = self.series
        found.counting = self
        return found


def readings(placement: Placement, used: Sequence[int]) -> list[Reading]:
    """The readings the general read would have found for ``used`` (no holds): each
    limit's one bucket, or nothing (``decide``'s input when ``admitted`` declines)."""
    out = []
    for bucket, units in zip(placement.buckets, used, strict=True):
        out.append(Reading({bucket: units}) if units and bucket is not None else Reading())
    return out


def warm(plan: DebitPlan, *, keyed: bool, bounded: bool) -> Warm | None:
    """The kept one-row read of ``plan``'s shape, or None when the general read is
    due: the plan has no placement, or a capacity, or thresholds to alert on, or
    the shape is cooling off after a row that needed the general read.
    ``keyed`` and ``bounded`` are ``HotTx.read``'s."""
    placement = plan.placement
    if placement is None or plan.resource is not None or plan.capacity is not None:
        return None
    # Plans of one subject share their ``charged`` tuple (the planner keeps it per
    # configuration), so the shape is found by identities: no series made per call.
    # The entry holds the placement and the tuple, so neither id names another.
    charged = plan.charged
    keyed = keyed and plan.idempotency_key is not None
    versioned = plan.config_version is not None
    metric_key = tuple(plan.amounts.units()) if bounded else ()
    key = (id(placement), id(charged), metric_key, keyed, versioned)
    shape = _WARM.get(key)
    if shape is None or shape.placement is not placement or shape.charged is not charged:
        series = plan.series
        subject = str(plan.subject)
        if not series or series[0] != subject:  # the subject is charged first
            return None
        metrics = (
            tuple([m._value_ for m, _ in plan.amounts.items() if m in _COUNTED]) if bounded else ()
        )
        shape = Warm(plan, placement, series, subject, metrics, keyed, versioned)
        if len(_WARM) >= _WARM_KEPT:
            _WARM.clear()
        _WARM[key] = shape
    if shape.general:
        return None
    if shape.cool:
        shape.cool -= 1
        return None
    return shape


_COUNTED = frozenset(COUNTERS)  # the metrics counted over windows, lifetime included
# (id(placement), id(charged), the amounts' metrics, keyed, versioned) -> Warm; emptied
# when full (a configuration change or a new span makes new placements).
_WARM: dict[tuple[Any, ...], Warm] = {}
_WARM_KEPT = 512
