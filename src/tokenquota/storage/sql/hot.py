"""The hot transaction: every statement a decision runs, written once per dialect.

This is where to look for the SQL of a consume, a reservation or a lease. The
statements are plain text per dialect (``statements.py``), run on the driver's own connection
(sqlite3, psycopg 3) inside the transaction ``Database.hot_tx`` opened, so no
SQLAlchemy expression is built, compiled or cached-looked-up per call:
profiled, that was most of a decision's Python time. sqlite3 keeps each
text's prepared statement in its per-connection cache; psycopg prepares a
text server-side once it has run it ``prepare_threshold`` (5) times, which is
why the PostgreSQL texts never vary with the number of rows (arrays and
``unnest`` instead of IN lists).

One decision runs, in order:

1. (PostgreSQL) the global key shared and the series locks, in one sorted
   statement per transaction (``Database.lock_series`` says why);
2. the reads, one compound select of tagged rows (``statements.sqlite_reads``,
   ``statements.postgres_reads``): the configuration version, the idempotency
   key (when given), whether the subject exists, the buckets of every check
   plus the lifetime counters of the 63-bit bound, the live holds of every
   series read (the prepaid wallets' held credits with them), live leases
   (only when a check counts them), the charged subjects' grants, once per
   transaction the tracked (metric, window) pairs, and (PostgreSQL) the
   number of the event to come;
3. the pure ``decide``, in the meter;
4. the writes, when admitted: the event, its subject links, one multi-row
   counter upsert, the burn (only when credits are charged) and the
   idempotency answer (on PostgreSQL all in one statement,
   ``PostgresSql.record``); a new subject and shadow hits whether admitted
   or not.

On PostgreSQL the statements of steps 1 and 2 go in one psycopg pipeline and
those of step 4 in another, so a decision costs two network round trips
before its commit, however many statements it has. The reads of step 2 are
built and read back in ``reads.py``; a run of consumes in one group-commit
batch sends the reads of all of them in one pipeline (``batch.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import Connection

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.clock import to_micros
from tokenquota.domain.decisions import Check, DebitPlan, Decision, Reading
from tokenquota.domain.errors import StoreUnreachable
from tokenquota.domain.grants import Grant, allocate
from tokenquota.domain.holds import HoldState, Lease, Reservation
from tokenquota.domain.ledger import CounterKey, Event, increments
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.ledger_rows import event_row
from tokenquota.storage.sql.outbox import alert_values
from tokenquota.storage.sql.reads import Found, Ranges, Reads, Tracked, tracked_pairs
from tokenquota.storage.sql.statements import (
    GLOBAL_EXCLUSIVE,
    POSTGRES,
    SQLITE,
    Stmt,
)
from tokenquota.storage.sql.tx import series_keys
from tokenquota.storage.sql.warm import warm
from tokenquota.wire import stored


class HotTx:
    """The statements of one hot transaction, on the driver's connection under ``conn``.

    Statements that answer nothing the next step needs (locks, savepoints) wait
    in ``pending`` and go out with the next batch, which on PostgreSQL is one
    pipeline: one round trip.
    """

    def __init__(self, conn: Connection, *, single_lock: bool = False, raw: Any = None) -> None:
        self.conn = conn
        if raw is None:  # ``raw``: the driver's connection under ``conn``, when known
            raw = conn.connection.driver_connection
            assert raw is not None
        self.raw: Any = raw
        # The driver's own OperationalError (sqlite3's, psycopg's): what SQLAlchemy
        # would have wrapped had it run the statement; see ``_driver``.
        self._lost: type[Exception] = conn.dialect.loaded_dbapi.OperationalError
        self.sql = POSTGRES if conn.dialect.name == "postgresql" else SQLITE
        self.single_lock = single_lock
        self.pending: list[Stmt] = []
        self._tracked = Tracked()
        self._savepoints = 0
        self._queued: int | None = None  # where the last savepoint waits in ``pending``
        # PostgreSQL: send a decision's writes with the next batch instead of at once.
        # Only for a transaction of one decision, so a failing write can only be
        # that decision's error (a batch's would surface in the next one's reads).
        self.defer_writes = False

    # running statements ------------------------------------------------------------
    def run(self, stmts: Sequence[Stmt]) -> list[Any]:
        """Run the pending statements and then ``stmts``; the cursors of ``stmts``, in order."""
        self._queued = None
        todo: Sequence[Stmt]
        if self.pending:
            todo = [*self.pending, *stmts]
            self.pending.clear()
        elif stmts:
            todo = stmts
        else:
            return []
        raw = self.raw
        # As ``_driver``, written out: this runs two or three times a decision.
        try:
            if self.sql.postgres:
                with raw.pipeline():
                    cursors = [raw.execute(sql, params) for sql, params in todo]
            else:
                cursors = [raw.execute(sql, params) for sql, params in todo]
        except self._lost as exc:
            raise StoreUnreachable(f"the database did not answer: {exc}") from exc
        return cursors[len(todo) - len(stmts) :]

    @contextmanager
    def _driver(self) -> Iterator[None]:
        """A store that stopped answering is ``StoreUnreachable`` (503, or the outage
        path), as ``Database.tx`` makes of the errors SQLAlchemy raises."""
        try:
            yield
        except self._lost as exc:
            raise StoreUnreachable(f"the database did not answer: {exc}") from exc

    def flush(self) -> None:
        if self.pending:
            self.run([])

    def commit(self) -> None:
        """End the transaction: what is pending, then (PostgreSQL) COMMIT in the same batch.

        On PostgreSQL that makes the last writes and the commit one round trip;
        the driver then knows the transaction is over, and the ``conn.begin()``
        block's own commit finds nothing left to do. SQLite commits at the end
        of that block (no round trips in-process).
        """
        if self.sql.postgres:
            self.pending.append(("COMMIT", ()))
        self.flush()

    def lock(self, names: Iterable[str]) -> None:
        """Queue the global key (shared) and the series locks: the first thing the next batch does.

        PostgreSQL only; SQLite's BEGIN IMMEDIATE already made this the only writer.
        One call per transaction, as ``Database.lock_series`` requires.
        """
        if not self.sql.postgres:
            return
        info = self.conn.info
        assert not info.get("tokenquota_series_locked"), "series locked twice in one tx"
        info["tokenquota_series_locked"] = True
        if self.single_lock:
            self.pending.append((GLOBAL_EXCLUSIVE, ()))
            return
        self.pending += POSTGRES.locks(series_keys(names))

    # one decision inside a shared transaction ---------------------------------------
    def savepoint(self) -> None:
        self._savepoints += 1
        self._queued = len(self.pending)
        self.pending.append((f"SAVEPOINT d{self._savepoints}", ()))

    def release(self) -> None:
        self.pending.append((f"RELEASE SAVEPOINT d{self._savepoints}", ()))

    def undo(self) -> None:
        """Undo everything since the last savepoint (the decision that failed)."""
        if self._queued is not None:
            # The savepoint never left: drop it and what followed it, keep what preceded.
            del self.pending[self._queued :]
            return
        self.pending.clear()  # queued after the savepoint: undone with it
        with self._driver():
            self.raw.execute(f"ROLLBACK TO SAVEPOINT d{self._savepoints}")

    # reads -----------------------------------------------------------------------------
    def use_tracked(self, pairs: Tracking | None) -> None:
        """The tracked pairs from the configuration snapshot: no statement reads them.

        Safe because ``read`` verifies the plan's version in the same batch:
        the pairs are the verified version's or the step is refused.
        """
        if self._tracked.pairs is None and pairs is not None:
            self._tracked.pairs = pairs

    def tracked(self) -> Tracking:
        """The (metric, window) pairs counted per kind; read once per transaction (a change to them
        takes the exclusive lock, so it cannot land inside one)."""
        if self._tracked.pairs is None:
            (cursor,) = self.run([(self.sql.tracked, ())])
            self._tracked.pairs = tracked_pairs(cursor.fetchall())
        return self._tracked.pairs

    def spent(
        self, plan: DebitPlan, found: Found, tz: tzinfo
    ) -> tuple[dict[CounterKey, int], dict[str, int]]:
        """What an admitted usage writes besides its event: the counters it adds to and
        the credits it burns from the grants ``found``. One place, for a lone decision
        and a batched run alike, so the two cannot count differently."""
        if found.counting is not None:  # the one-row read's: no grant to burn
            return found.counting.deltas(plan, tz, self.tracked()), {}
        series = found.series or plan.series
        return (
            increments(series, plan.amounts, plan.timestamp, tz, self.tracked()),
            burns_of(found.grants, plan.charged, plan.amounts[Metric.CREDITS], plan.now),
        )

    def read(
        self, plan: DebitPlan, *, keyed: bool = True, bounded: bool = True, numbered: bool = False
    ) -> Found:
        """Everything a decision on ``plan`` reads, in one batch (with what was pending).

        ``keyed`` reads the idempotency key; ``bounded`` the lifetime counters the
        63-bit bound is checked on (a step that adds usage); ``numbered`` takes
        the event's number beforehand (PostgreSQL; a step that may append one).
        """
        if numbered and not self.sql.postgres and self._tracked.pairs is not None:
            # SQLite, a step that may append an event: the one-row read (``warm.py``) of a
            # warm decision, numbered; None when the decision needs the general read.
            found = self._warm(plan, keyed, bounded)
            if found is not None:
                return found
        reads = self.reads(plan, keyed=keyed, bounded=bounded, numbered=numbered)
        return reads.found(self.run(reads.stmts))

    def _warm(self, plan: DebitPlan, keyed: bool, bounded: bool) -> Found | None:
        shape = warm(plan, keyed=keyed, bounded=bounded)
        if shape is None:
            return None
        (cursor,) = self.run([shape.stmt(plan)])
        return shape.found(cursor.fetchone(), plan)

    def reads(
        self, plan: DebitPlan, *, keyed: bool = True, bounded: bool = True, numbered: bool = False
    ) -> Reads:
        """The statements of ``read``, not yet sent, and how to read their answers:
        a run of decisions (``batch.py``) sends the reads of all of them at once."""
        return Reads(self.sql, self._tracked, plan, keyed=keyed, bounded=bounded, numbered=numbered)

    def readings(self, checks: Sequence[Check], now: datetime) -> list[Reading]:
        """What ``checks`` read (usage, check): counters, holds and leases, one select each."""
        if not checks:
            return []
        ranges = Ranges(checks)
        return ranges.found(self.run(ranges.statements(self.sql, to_micros(now))))

    # writes ----------------------------------------------------------------------------
    def write(
        self,
        *,
        subject: SubjectRef | None,
        now: datetime,
        shadow: Decision | None,
        event: Event | DebitPlan | None,
        event_id: int | None,
        deltas: dict[CounterKey, int],
        burns: dict[str, int],
        remember: tuple[str, str, str, Decision] | None,
        out: list[Stmt] | None = None,
        charged: Sequence[str] = (),
        bumps: Stmt | None = None,
    ) -> int | None:
        """The writes of one decision in one batch; returns the event's number.

        ``subject`` is created when given; ``shadow`` counts its shadow hits;
        ``event`` is appended (numbered ``event_id`` on PostgreSQL, or by the
        one-row read on SQLite) with its counter ``deltas`` and grant ``burns``
        (a plan: the consume event it appends, ``consume_values``, its charged
        subjects as text in ``charged``; SQLite: ``bumps``, the counters' upsert
        made already, instead of ``deltas``); ``remember`` stores
        (subject, key, fingerprint, decision), the decision taking the event's number.
        With ``out`` (PostgreSQL) the statements are added to it, not sent.
        """
        sql = self.sql
        assert out is None or sql.postgres, "SQLite numbers its events as it writes them"
        stmts: list[Stmt] = []
        if subject is not None:
            stmts.append((sql.add_subject, (str(subject), subject.kind, to_micros(now))))
        if shadow is not None:
            for s in shadow.shadow_blocked:
                stmts.append((sql.shadow, (s.subject, s.metric, s.window or "")))
        if event is None:
            self._send(stmts, out)
            return None
        if isinstance(event, DebitPlan):
            values = consume_values(event, charged)
            ts = values[3]
        else:
            row = event_row(event)
            values = event_values(row)
            charged, ts = row["charged"], row["ts"]
        if sql.postgres:
            # Numbered by the reads: everything in one statement (``PostgresSql.record``).
            assert event_id is not None
            remembers = []
            if remember is not None:
                remembers.append(self._answer(remember, event_id, now))
            stmts.append(POSTGRES.record([(event_id, *values)], deltas, burns, remembers))
            self._send(stmts, out)
            return event_id
        if event_id is None:
            # SQLite numbers the event as it inserts it; the rest follows at once (no
            # round trips in-process).
            (inserted,) = self.run([*stmts, (sql.event, values)])[-1:]
            event_id = int(inserted.lastrowid)
            stmts = []
        else:  # numbered by the one-row read (warm.py): the rowid SQLite would give it
            stmts.append((sql.numbered_event, (event_id, *values)))
        if charged:
            stmts.append(sql.links(ts, event_id, charged))
        if bumps is not None:
            stmts.append(bumps)
        elif deltas:
            stmts.append(sql.bumps(deltas))
        stmts += [(sql.burn, (units, gid)) for gid, units in burns.items()]
        if remember is not None:
            stmts.append((sql.remember, self._answer(remember, event_id, now)))
        self._send(stmts, out)
        return event_id

    @staticmethod
    def _answer(
        remember: tuple[str, str, str, Decision], event_id: int, now: datetime
    ) -> tuple[Any, ...]:
        """The idempotency row of ``write``'s ``remember``: its decision numbered."""
        who, key_name, fingerprint, decision = remember
        if decision.event_id != event_id:
            decision = decision.numbered(event_id)
        answer = json.dumps(stored.encode_decision(decision))
        return (who, key_name, fingerprint, answer, to_micros(now))

    def hold_reservation(self, reservation: Reservation) -> None:
        """The reservation's row and its holds, with the step's other writes."""
        expires = to_micros(reservation.expires_at)
        sql = self.sql
        values = (
            reservation.id,
            str(reservation.subject),
            json.dumps([str(s) for s in reservation.charged]),
            json.dumps(reservation.amounts.to_units_json()),
            to_micros(reservation.created_at),
            expires,
            HoldState.HELD.value,
            str(reservation.resource) if reservation.resource else None,
        )
        rows = [
            (s, m.value, units)
            for s in reservation.series
            for m, units in reservation.amounts.items()
        ]
        stmts: list[Stmt] = [(sql.reservation, values)]
        if rows:
            stmts.append(sql.holds_of(reservation.id, expires, rows))
        self._send(stmts)

    def hold_lease(self, lease: Lease) -> None:
        """The lease's row and its holders, with the step's other writes."""
        expires = to_micros(lease.expires_at)
        sql = self.sql
        values = (
            lease.id,
            str(lease.subject),
            json.dumps([str(s) for s in lease.charged]),
            to_micros(lease.created_at),
            expires,
            str(lease.resource) if lease.resource else None,
        )
        stmts: list[Stmt] = [(sql.lease, values)]
        if lease.series:
            stmts.append(sql.holders_of(lease.id, expires, list(lease.series)))
        self._send(stmts)

    def alerts(self, events: Sequence[AlertEvent], out: list[Stmt] | None = None) -> None:
        """The alert outbox rows of this decision, with its other writes (storage/sql/outbox.py)."""
        self._send([(self.sql.alert, alert_values(e)) for e in events], out)

    def _send(self, stmts: list[Stmt], out: list[Stmt] | None = None) -> None:
        # Writes answer nothing the decision needs: when ``defer_writes`` is set
        # they wait for the next batch (the commit's, for a lone decision).
        if out is not None:
            out += stmts
        elif self.defer_writes and self.sql.postgres:
            self.pending += stmts
        else:
            self.run(stmts)


def event_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """An event row (``ledger_rows.event_row``) as ``Sql.event``'s parameters (its id aside)."""
    tags = row["tags"]
    return (
        row["kind"],
        row["subject"],
        _charged_json(row["charged"]),
        row["ts"],
        row["recorded_at"],
        row["mode"],
        _units_json(row["amounts"]),
        row["model"],
        json.dumps(tags) if tags else "{}",
        row["idempotency_key"],
        row["resource"],
    )


def consume_values(plan: DebitPlan, charged: Sequence[str]) -> tuple[Any, ...]:
    """``event_values(event_row(usage_event(plan)))`` of a consume (no reservation, no
    resource) whose charged subjects are ``charged`` as text, without the ``Event``
    and the row between: the same values, to the byte (tests/test_sql_warm_read.py)."""
    assert plan.resource is None
    tags = plan.tags
    key = tuple(charged)  # (no copy of a tuple: the one-row read's series is one)
    text = _CHARGED_JSON.get(key)
    return (
        "consume",
        charged[0],  # the subject, charged first
        text if text is not None else _charged_json(list(charged)),
        to_micros(plan.timestamp),
        to_micros(plan.now),
        plan.mode._value_,
        _units_json(plan.amounts.to_units_json()),
        plan.model,
        json.dumps(dict(tags)) if tags else "{}",
        plan.idempotency_key,
        None,
    )


# The JSON columns of an event are the text ``json.dumps`` writes, to the byte
# (exports and the Redis mover's rows compare equal to them); ``json.dumps``
# itself took about 5 µs a column on the bench's machine, so the two columns
# every event has are written here without it where that is exact, and through
# it otherwise.
_CHARGED_JSON: dict[tuple[str, ...], str] = {}
_CHARGED_KEPT = 4096  # distinct charged lists remembered; then the memo starts over
_METRIC_NAMES = frozenset(m.value for m in Metric)


def _charged_json(charged: list[str]) -> str:
    """``json.dumps(charged)``, remembered per list: a subject's ancestry rarely changes."""
    key = tuple(charged)
    text = _CHARGED_JSON.get(key)
    if text is None:
        if len(_CHARGED_JSON) >= _CHARGED_KEPT:
            _CHARGED_JSON.clear()
        text = _CHARGED_JSON[key] = json.dumps(charged)
    return text


def _units_json(units: dict[str, int]) -> str:
    """``json.dumps(units)``: metric names need no escaping and an ``int`` is its repr,
    so the text is built directly; anything else goes through ``json.dumps``."""
    parts = []
    for name, value in units.items():
        if type(value) is not int or name not in _METRIC_NAMES:
            return json.dumps(units)
        parts.append(f'"{name}": {value}')
    return "{" + ", ".join(parts) + "}"


def burns_of(
    grants: Sequence[Grant], charged: Sequence[SubjectRef], credits: int, at: datetime
) -> dict[str, int]:
    """What spending ``credits`` takes from each grant: every charged subject pays them."""
    if not credits or not grants:
        return {}
    out: dict[str, int] = {}
    for subject in charged:
        mine = [g for g in grants if g.subject == subject]
        if mine:
            out.update(allocate(mine, credits, at)[0])
    return out
