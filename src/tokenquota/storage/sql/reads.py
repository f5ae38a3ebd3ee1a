"""What one decision reads in the hot transaction, and what it found (``hot.HotTx``).

Split from ``hot.py`` so that a run of consumes (``batch.py``) can send the
reads of all of them at once and read each one's answers later, with what
the decisions before it in the run decided (``Seen``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenquota.domain.bounds import LIFETIME_BUCKET
from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Prepaid, Reading
from tokenquota.domain.errors import IdempotencyConflict, NotFound
from tokenquota.domain.grants import Grant
from tokenquota.domain.ledger import CounterKey
from tokenquota.domain.metrics import COUNTERS, Metric
from tokenquota.domain.plans import Placement
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.base import StaleConfig
from tokenquota.storage.snapshot import FIRST_TOKEN
from tokenquota.storage.sql.statements import (
    PG_READ_COLUMNS,
    READ_COUNTERS,
    READ_ENDS,
    READ_GRANTS,
    READ_HOLDS,
    READ_KEY,
    READ_LEASES,
    READ_NEXT,
    READ_SUBJECT,
    READ_TRACKED,
    READ_VERSION,
    SQLITE_READ_COLUMNS,
    TOTAL,
    Sql,
    Stmt,
    json_text,
    postgres_reads,
    sqlite_reads,
)
from tokenquota.wire import stored


@dataclass(slots=True)
class Found:
    """What the reads of one decision found, under its locks."""

    replay: tuple[str, dict[str, Any]] | None = None  # the key's fingerprint and stored answer
    subject_known: bool = True
    readings: list[Reading] = field(default_factory=list)
    prepaid: list[Prepaid] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    lifetime: dict[tuple[str, Metric], int] = field(default_factory=dict)
    event_id: int | None = None  # the number the event will carry (PostgreSQL; warm.py)
    series: tuple[str, ...] = ()  # the plan's, as ``DebitPlan.series`` (read once)
    # The one-row read's (SQLite, ``warm.py``): each check's one bucket, 0 for a cap, as
    # ``decisions.admitted`` takes them; ``readings`` stay empty until asked for.
    used: list[int] | None = None
    counting: Any = None  # and its shape (``warm.Warm``), which works out its counters

    def replayed(self, fingerprint: str) -> Decision | None:
        """The stored answer of the key, or None; a different request under it is refused."""
        if self.replay is None:
            return None
        if self.replay[0] != fingerprint:
            raise IdempotencyConflict(
                "this idempotency key was used for a different request",
                details={"field": "idempotency_key"},
            )
        return stored.decode_decision(self.replay[1]).as_replay()


@dataclass(slots=True)
class Tracked:
    """A transaction's tracked (metric, window) pairs per kind: read at most once in it
    (``HotTx.tracked``), and asked for by the first decision's reads that need them."""

    pairs: Tracking | None = None
    asking: bool = False  # a read of the pairs is on its way (``Reads``)


class Reads:
    """The reads of one decision (``HotTx.read``): its statements, then what they found.

    They are one compound select (``statements.sqlite_reads``,
    ``statements.postgres_reads``), its rows tagged by the part they answer.
    ``found`` takes ``seen``, what earlier decisions of the
    same run decided and have not written yet (``batch.py``), and reads as if
    they had been: their counter increments and grant burns added, the
    subjects they created known, the idempotency answers they stored found.
    """

    def __init__(
        self,
        sql: Sql,
        tracked: Tracked,
        plan: DebitPlan,
        *,
        keyed: bool,
        bounded: bool,
        numbered: bool,
    ) -> None:
        self.pairs = tracked
        self.plan = plan
        self.ranges: Ranges
        self.lifetime: list[tuple[str, str, str, int, int]]
        self.stmts: list[Stmt]
        # The amounts hold no zero (``Amounts``); the lifetime counters of every
        # counted metric the plan adds to, on every series it adds to.
        metrics = (
            tuple([m._value_ for m, _ in plan.amounts.items() if m in _COUNTED]) if bounded else ()
        )
        self.series = series = plan.series
        # The subject is charged first (``DebitPlan.charged``): its text is the series'.
        self.subject = subject = (
            series[0] if plan.charged and plan.charged[0] is plan.subject else str(plan.subject)
        )
        self.keyed = keyed = keyed and plan.idempotency_key is not None
        # The plan's configuration version (storage/snapshot.py), read where no
        # configuration write can move it.
        self.versioned = plan.config_version is not None
        # Once per transaction; a run's reads ask once for all of its decisions.
        self.tracked = tracked.pairs is None and not tracked.asking
        if self.tracked:
            tracked.asking = True
        self.postgres = sql.postgres
        self.numbered = numbered and sql.postgres
        placement = plan.placement
        if placement is not None and plan.capacity is None:
            # A warm decision: its statement and all but two of its parameters are
            # those of the last decision of the same span and request (``_Shape``).
            key: tuple[Any, ...] = (id(placement), series, len(plan.charged), subject, metrics)
            key += (keyed, self.versioned, self.tracked, self.numbered, self.postgres)
            shape = _SHAPES.get(key)
            if shape is None or shape.placement is not placement:
                shape = _Shape(self, plan, placement, metrics)
                if len(_SHAPES) >= _SHAPES_KEPT:
                    _SHAPES.clear()
                _SHAPES[key] = shape
            self.ranges, self.lifetime = shape.ranges, shape.lifetime
            self.stmts = shape.stmts(plan)
            return
        self._build(plan, metrics)

    def _build(self, plan: DebitPlan, metrics: Sequence[str]) -> None:
        """The statements of any plan, built from its checks."""
        self.ranges = ranges = Ranges(plan.reads)
        series = self.series
        self.lifetime = [
            (s, m, TOTAL, LIFETIME_BUCKET, LIFETIME_BUCKET) for s in series for m in metrics
        ]
        ranges.keys += self.lifetime
        charged = series[: len(plan.charged)]  # the charged subjects come first, as text
        held = ranges.held(charged)
        owners = sorted(set(charged))
        now = to_micros(plan.now)
        self.stmts = _folded(self, self.subject, plan.idempotency_key, held, owners, now)

    def _parts(self, cursors: Sequence[Any]) -> list[list[Any]]:
        """The rows of each part (``statements.READ_*``), without their tags; but the
        counters' rows, the most numerous, keep theirs (``Ranges.parse``'s ``at``)."""
        parts: list[list[Any]] = [[], [], [], [], [], [], [], [], []]  # one per tag
        counters = parts[READ_COUNTERS]
        columns = PG_READ_COLUMNS if self.postgres else SQLITE_READ_COLUMNS
        for cursor in cursors:
            for row in cursor.fetchall():
                tag = row[0]
                if tag == READ_COUNTERS:
                    counters.append(row)
                else:
                    lo, hi = columns[tag]
                    parts[tag].append(row[lo:hi])
        return parts

    def found(self, cursors: list[Any], seen: Seen | None = None) -> Found:
        """What the reads found, under the locks (``StaleConfig`` for a plan of
        another configuration version); ``cursors`` are those of ``stmts``."""
        plan = self.plan
        parts = self._parts(cursors)
        if self.tracked:  # first: a decision refused below still leaves the pairs to the next
            self.pairs.pairs = tracked_pairs(parts[READ_TRACKED])
        found = Found()
        if self.versioned:
            rows = parts[READ_VERSION]
            if (rows[0][0] if rows else FIRST_TOKEN) != plan.config_version:
                raise StaleConfig
        if self.keyed:
            rows = parts[READ_KEY]
            if rows:
                fingerprint, answer = rows[0]
                found.replay = (
                    fingerprint,
                    json.loads(answer) if isinstance(answer, str) else answer,
                )
            if seen is not None:
                found.replay = seen.remembered.get(
                    (self.subject, str(plan.idempotency_key)), found.replay
                )
        found.subject_known = bool(parts[READ_SUBJECT])
        if seen is not None and self.subject in seen.subjects:
            found.subject_known = True
        at = (PG_READ_COLUMNS if self.postgres else SQLITE_READ_COLUMNS)[READ_COUNTERS][0]
        readings, buckets, holds = self.ranges.parse(parts, seen, at=at)
        found.readings = readings
        lifetime = self.lifetime
        for key, got in zip(lifetime, buckets[len(buckets) - len(lifetime) :], strict=True):
            found.lifetime[(key[0], _METRIC[key[1]])] = got.get(LIFETIME_BUCKET, 0)
        found.series = self.series
        if parts[READ_GRANTS]:
            burned = seen.burns if seen is not None else {}
            found.grants = [grant_of(row, burned) for row in parts[READ_GRANTS]]
            for s in plan.charged:
                mine = tuple(g for g in found.grants if g.subject == s)
                if mine:
                    found.prepaid.append(
                        Prepaid(s, mine, holds.get((str(s), Metric.CREDITS.value), (0, 0))[0])
                    )
        if self.numbered:
            found.event_id = int(parts[READ_NEXT][0][0])
        return found


# The metrics counted over windows, lifetime counters among them (``COUNTERS``).
_COUNTED = frozenset(COUNTERS)
_METRIC = {m._value_: m for m in Metric}  # ``Metric(name)`` without the enum's call


def _folded(
    reads: Reads,
    subject: str,
    key: object,
    held: Sequence[str],
    owners: Sequence[str],
    now: object,
) -> list[Stmt]:
    """The statement (on SQLite, statements past ``sqlite_reads``'s chunk) of ``reads``,
    ``key`` its idempotency key and ``now`` the time its holds and leases are live at."""
    ranges = reads.ranges
    params: list[Any] = []
    if reads.postgres:
        if reads.keyed:
            params += (subject, key)
        params += (subject, json_text(ranges.keys), json_text(held), now)
        if ranges.leased:
            params += (json_text(ranges.leased), now)
        params.append(json_text(owners))
        text = postgres_reads(
            reads.versioned, reads.keyed, bool(ranges.leased), reads.tracked, reads.numbered
        )
        return [(text, params)]
    if reads.keyed:
        params += (subject, key)
    params.append(subject)
    for counter in ranges.keys:
        params += counter
    for s in held:
        params += (s, now)
    for s in ranges.leased:
        params += (s, now)
    params += owners
    texts = sqlite_reads(
        (
            reads.versioned,  # a bool counts one part or none
            reads.keyed,
            1,
            len(ranges.keys),
            len(held),
            len(ranges.leased),
            len(owners),
            reads.tracked,
        )
    )
    if len(texts) == 1:
        return [(texts[0][0], params)]
    stmts: list[Stmt] = []
    at = 0
    for text, count in texts:
        stmts.append((text, params[at : at + count]))
        at += count
    return stmts


class _Shape:
    """The folded read of every warm decision of one shape (``Reads``).

    Plans made from one ``Placement`` (a span of time, ``domain/plans.py``)
    check the same limits in the same buckets, so with the same series,
    subject, lifetime metrics and parts they read the same rows: only the
    idempotency key and the time differ. The statements' texts and a template
    of their parameters are kept here, with the places of those two; the
    ``Ranges`` parse every such decision's rows (they keep no request's own
    value). Kept in ``_SHAPES`` under the placement's ``id()``, and used only
    when the entry's own placement *is* the plan's: it keeps that placement
    alive, so the id cannot name another meanwhile.
    """

    __slots__ = ("chunks", "lifetime", "placement", "ranges")

    def __init__(
        self, reads: Reads, plan: DebitPlan, placement: Placement, metrics: Sequence[str]
    ) -> None:
        self.placement = placement
        reads.ranges = self.ranges = ranges = Ranges(plan.reads)
        series = reads.series
        self.lifetime = lifetime = [
            (s, m, TOTAL, LIFETIME_BUCKET, LIFETIME_BUCKET) for s in series for m in metrics
        ]
        ranges.keys += lifetime
        charged = series[: len(plan.charged)]
        stmts = _folded(
            reads, reads.subject, _KEY, ranges.held(charged), sorted(set(charged)), _NOW
        )
        # Per statement: its text, its parameters, and where the key and the time go.
        self.chunks = [
            (
                text,
                list(params),
                [i for i, p in enumerate(params) if p is _KEY],
                [i for i, p in enumerate(params) if p is _NOW],
            )
            for text, params in stmts
        ]

    def stmts(self, plan: DebitPlan) -> list[Stmt]:
        """The statements of ``plan``, one of this shape."""
        now = to_micros(plan.now)
        key = plan.idempotency_key
        out: list[Stmt] = []
        for text, template, keys, times in self.chunks:
            params = template.copy()
            for i in keys:
                params[i] = key
            for i in times:
                params[i] = now
            out.append((text, params))
        return out


_KEY = object()  # where a template takes the decision's idempotency key (``_Shape``)
_NOW = object()  # where it takes the decision's time
# (id(placement), series, charged count, subject, lifetime metrics, keyed, versioned,
# tracked) -> _Shape;
# emptied when full (a configuration change or a new span makes new placements).
_SHAPES: dict[tuple[Any, ...], _Shape] = {}
_SHAPES_KEPT = 512


@dataclass(slots=True)
class Seen:
    """What the decisions of a run wrote, before it reaches the store (``Reads.found``)."""

    # (subject, metric, window) -> bucket -> units added
    counters: dict[tuple[str, str, str], dict[int, int]] = field(default_factory=dict)
    deltas: dict[CounterKey, int] = field(default_factory=dict)  # the same, as written
    burns: dict[str, int] = field(default_factory=dict)  # grant id -> units burned
    subjects: set[str] = field(default_factory=set)  # created
    # (subject, key) -> (fingerprint, stored answer)
    remembered: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def add(self, deltas: dict[CounterKey, int], burns: dict[str, int]) -> None:
        for key, units in deltas.items():
            self.deltas[key] = self.deltas.get(key, 0) + units
            series = self.counters.setdefault(key[:3], {})
            series[key[3]] = series.get(key[3], 0) + units
        for gid, units in burns.items():
            self.burns[gid] = self.burns.get(gid, 0) + units


class Ranges:
    """The reads behind a list of checks: one select of counters, one of holds, one of leases."""

    def __init__(self, checks: Sequence[Check]) -> None:
        # (subject, metric, window, lo, hi) of each check that sums buckets; caps and
        # leases sum none. The names are the limit's own (``EffectiveLimit.names``),
        # made once per configuration, not once per decision.
        self.keys: list[tuple[str, str, str, int, int]] = []
        # Each check's (subject, metric, window, position of its range or -1): all
        # ``parse`` reads of it, so that ``Reads`` may parse the rows of another plan of
        # the same shape with it (``_Shape``).
        self.names: list[tuple[str, str, str | None, int]] = []
        subjects: set[str] = set()
        leased: set[str] = set()
        for check in checks:
            subject, metric, window, _ = check.limit.names()
            subjects.add(subject)
            if window is None:
                self.names.append((subject, metric, window, -1))
                if metric == _LEASED:
                    leased.add(subject)
                continue
            self.names.append((subject, metric, window, len(self.keys)))
            self.keys.append((subject, metric, window, check.lo, check.hi))
        self.subjects = subjects
        self.leased = sorted(leased)

    def held(self, extra: Sequence[str] = ()) -> list[str]:
        """The subjects whose live holds are read: the checks' and ``extra`` (the prepaid
        wallets' credits), sorted."""
        return sorted(self.subjects.union(extra))

    def statements(self, sql: Sql, now: int) -> list[Stmt]:
        """The selects, one statement each (``HotTx.readings``)."""
        stmts = [sql.counters(self.keys), sql.holds(self.held(), now)]
        if self.leased:
            stmts.append(sql.leases(self.leased, now))
        return stmts

    def found(self, cursors: Sequence[Any]) -> list[Reading]:
        """The readings of ``statements``' answers."""
        parts: list[list[Any]] = [[] for _ in READ_ENDS]
        for tag, cursor in zip((READ_COUNTERS, READ_HOLDS, READ_LEASES), cursors, strict=False):
            parts[tag] = cursor.fetchall()
        return self.parse(parts)[0]

    def parse(
        self, parts: Sequence[Sequence[Any]], seen: Seen | None = None, *, at: int = 0
    ) -> tuple[list[Reading], list[dict[int, int]], dict[tuple[str, str], tuple[int, int]]]:
        """The readings of the checks, the buckets of every range, and the live holds
        (with what ``seen`` added to the buckets), from the rows of each part; the
        counters' rows begin at column ``at``."""
        buckets: list[dict[int, int]] = [{} for _ in self.keys]
        for row in parts[READ_COUNTERS]:
            value = row[at + 2]
            if value:
                # int(): a counter is an integer; never let a driver's type leak to the wire.
                buckets[row[at]][int(row[at + 1])] = int(value)
        if seen is not None and seen.counters:
            for got, (s, m, w, lo, hi) in zip(buckets, self.keys, strict=True):
                added = seen.counters.get((s, m, w))
                if not added:
                    continue
                for bucket, units in added.items():
                    if lo <= bucket <= hi:
                        value = got.get(bucket, 0) + units
                        if value:
                            got[bucket] = value
                        else:
                            got.pop(bucket, None)
        # (A comprehension is a call: none for the parts that are usually empty.)
        holds = (
            {(s, m): (int(total), int(last)) for s, m, total, last in parts[READ_HOLDS]}
            if parts[READ_HOLDS]
            else {}
        )
        leases = (
            {s: (int(n), int(first)) for s, n, first in parts[READ_LEASES]}
            if parts[READ_LEASES]
            else {}
        )
        readings: list[Reading] = []
        for subject, metric, window, i in self.names:
            if window is None:  # a cap reads nothing; a concurrency limit its leases
                count, first = leases.get(subject, _NONE) if metric == _LEASED else _NONE
                readings.append(
                    Reading({0: count}, held_until=from_micros(first)) if count else Reading()
                )
                continue
            held, last = holds.get((subject, metric), _NONE) if holds else _NONE
            readings.append(
                Reading(buckets[i], held, from_micros(last)) if held else Reading(buckets[i])
            )
        return readings, buckets, holds


_NONE = (0, 0)  # no live hold or lease: nothing held, no time


_LEASED = Metric.CONCURRENT_REQUESTS.value


def grant_of(row: Sequence[Any], burned: dict[str, int]) -> Grant:
    gid, subject, amount, granted_at, expires_at, remaining = row
    return Grant(
        id=gid,
        subject=SubjectRef.parse(subject),
        amount=int(amount),
        granted_at=from_micros(int(granted_at)),
        expires_at=from_micros(int(expires_at)) if expires_at is not None else None,
        remaining=int(remaining) - burned.get(gid, 0),
    )


def tracked_pairs(rows: Iterable[Sequence[Any]]) -> Tracking:
    """The tracking of rows (kind, metric, window), or (kind and metric joined by a
    space, window) from PostgreSQL's folded read. As SqlCatalog.tracked: the
    lifetime pairs are counted even if a row was removed."""
    return Tracking.from_rows(
        (row[0], row[1], row[2]) if len(row) == 3 else (*row[0].split(" ", 1), row[1])
        for row in rows
    )


def require_known(found: Found, plan: DebitPlan, create: bool) -> None:
    """A decision for a subject the store does not know is refused, unless it may create it."""
    if not create and not found.subject_known:
        raise NotFound(f"unknown subject {plan.subject}", details={"field": "subject"})
