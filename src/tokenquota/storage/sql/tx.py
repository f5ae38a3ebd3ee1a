"""Connections, transactions and locks of the SQL stores (SQLite and PostgreSQL).

Atomicity on SQLite: every write runs in ``BEGIN IMMEDIATE``, which takes the
database's single write lock before the first read, so the read-decide-write
of a debit is serialised across threads and processes; WAL lets readers go on
meanwhile. ``synchronous=FULL`` makes a commit durable before we answer.

On PostgreSQL writes are serialised per counter series instead, so one hot
company does not hold up every other one: see ``Database.tx`` and
``Database.lock_series`` for the locks and why they cannot deadlock. A commit
is durable when it returns.

The catalog, the meter and the ledger of a SQL store (and the SQL half of a
Redis store) share one ``Database``: one pool, one lock discipline, one zone.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy import event as sa_event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

from tokenquota.domain.decisions import DebitPlan
from tokenquota.domain.errors import StoreUnreachable, ValidationError
from tokenquota.domain.holds import Lease, Reservation
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.migrate import upgrade

BATCH = 500
# The global advisory key, "tq" in ASCII, in PostgreSQL's one-bigint key space.
# Every write transaction takes it first: shared by the hot operations, which then
# lock their series; exclusive by everything that needs a quiet store. Released
# by the transaction's end, like every lock below.
_GLOBAL_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(29809)")
_GLOBAL_EXCLUSIVE = sa.text("SELECT pg_advisory_xact_lock(29809)")
# Series locks live in the two-int4 key space, which PostgreSQL keeps apart from
# the bigint one, so no series hash can ever equal the global key. unnest scans
# the arrays in order and the locks are taken row by row in that order: the
# order the keys are given in (sorted, see ``series_keys``).
_SERIES_LOCKS = sa.text(
    "SELECT pg_advisory_xact_lock(k.hi, k.lo)"
    " FROM unnest(CAST(:hi AS integer[]), CAST(:lo AS integer[])) AS k(hi, lo)"
)
SQLITE_BUSY_SECONDS = 60
# A checkpoint copies the WAL into the database file and syncs both: two more
# fsyncs, on the thread of the commit that crossed the threshold. SQLite's own
# default (1,000 pages) is kept: 8,000 made one consume in ~1,600 pay for a
# checkpoint instead of one in ~200, but the timed row got slower (SQLite
# in-process 0.22-0.25 of the floor against 0.33-0.34 at 1,000, alternating on
# a quiet machine, docs/performance-log.md): a longer WAL costs every read its
# lookup in the WAL index, and a consume reads before it writes.
SQLITE_CHECKPOINT_PAGES = 1_000
# Only a WAL that outgrew this (a reader held a checkpoint back) is cut back.
SQLITE_WAL_LIMIT_BYTES = 64 * 1024 * 1024


class Database:
    """One SQL database: its engine, its transactions and locks, and its time zone."""

    # True takes the global key exclusively in every write, as before issue 6,
    # and no series locks: bench/bench_hot_rows.py sets it (through
    # ``SqlStore._single_lock``) to measure both designs in one run. Nothing else should.
    single_lock: bool = False

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self.tz = ZoneInfo("UTC")  # until pin_timezone reads the stored one
        # Called after every write transaction that announces itself (see tx):
        # the Redis store drops its configuration caches there.
        self.after_write: list[Callable[[], None]] = []
        # The connection group commit's leader keeps between its transactions (see
        # ``leader_tx``), and the lock that makes it one leader's at a time.
        self._kept: Connection | None = None
        self._kept_raw: Any = None  # its driver connection
        self._kept_info: dict[Any, Any] = {}  # and its ``info``
        self._kept_lock = threading.Lock()
        if migrate:
            try:
                upgrade(self.engine)
            except OperationalError as exc:
                self.engine.dispose()  # a store that failed to open keeps no connections
                raise StoreUnreachable(f"cannot open the database: {exc.orig}") from exc
            except BaseException:
                self.engine.dispose()
                raise

    def close(self) -> None:
        with self._kept_lock:
            self._drop_kept()
        self.engine.dispose()

    def ping(self) -> None:
        with self.tx() as conn:
            conn.execute(sa.text("SELECT 1"))

    def pin_timezone(
        self, wanted: ZoneInfo | None, move: bool, rebuild: Callable[[Connection], int]
    ) -> ZoneInfo:
        """Calendar counters are bucketed in one zone; keep it with the data.

        The first opener decides (UTC unless told); later openers get it by
        default, and asking for another zone is refused unless ``move`` is set,
        which re-buckets every counter (``rebuild``) in the same transaction.
        """
        with self.tx(write=True, announce=False) as conn:
            stored = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "timezone")
            ).scalar()
            if stored is not None and (wanted is None or wanted.key == stored):
                self.tz = ZoneInfo(stored)
                return self.tz  # changed nothing, so it announces nothing
            if stored is None:
                self.tz = wanted or ZoneInfo("UTC")
                conn.execute(t.meta.insert().values(key="timezone", value=self.tz.key))
            else:
                assert wanted is not None
                if not move:
                    raise ValidationError(
                        "timezone",
                        f"this store keeps calendar windows in {stored}; open it without a "
                        f"time zone (or with {stored}), or move it with "
                        f"`tokenquota rebuild --timezone {wanted.key}`",
                    )
                self.tz = wanted
                conn.execute(
                    t.meta.update().where(t.meta.c.key == "timezone").values(value=wanted.key)
                )
                rebuild(conn)
        self.announce()
        return self.tz

    @contextmanager
    def tx(
        self,
        *,
        write: bool = False,
        hot: bool = False,
        announce: bool = True,
        global_key: bool = True,
    ) -> Iterator[Connection]:
        """One transaction; ``write`` or ``hot`` ones are serialised against each other.

        SQLite: every write is ``BEGIN IMMEDIATE``, one writer at a time.

        PostgreSQL: a write first takes the global advisory key. A ``hot`` write
        (debit, reserve, commit, release, leases, grants) takes it *shared*, so
        hot writes run side by side, and must then call ``lock_series`` before
        it reads anything it decides on. Every other write takes it
        *exclusively*: rebuild, backfill of a newly tracked window, a time zone
        move and the admin changes (subjects, rules, plans, quotas, keys) see
        and leave a store no hot write is half-way through, exactly as under
        the single lock this replaced.

        Why no deadlock: the global key is always the first lock a transaction
        takes, so a transaction waiting for it holds nothing anyone waits for;
        a hot one then takes all its series locks in one statement in one
        global order (``series_keys``) and never another advisory lock after
        them. The rows hot writes change are the rows of series they have
        locked (counters, holds, grants, idempotency keys, shadow hits) or new
        rows with unique ids (events, reservations, leases), so no row lock
        wait can close a cycle either. The exclusive key waits for the shared
        holders, and new shared requests queue behind a waiting exclusive one,
        so admin changes are not starved.

        Why still no overspend: two writes that touch a common series hold a
        common series lock, so their read-decide-write steps are serialised as
        before, and READ COMMITTED reads afresh after the lock: each sees every
        change committed by the one before. Writes with no common series share
        no counter, hold, grant or key, so running them at once changes nothing
        either of them reads.

        A ``write`` that commits runs the ``after_write`` callbacks unless
        ``announce`` is False (a write that changes no configuration).

        ``global_key=False`` leaves the global key to the caller, which must take
        it before anything else: the hot transaction (``hot.HotTx.lock``) sends
        it in the same round trip as its series locks and first reads.
        """
        try:
            with self.engine.connect() as conn:
                if write or hot:
                    conn.execution_options(tokenquota_write=True)
                conn.info["tokenquota_series_locked"] = False  # info outlives the checkout
                with conn.begin():
                    if (write or hot) and global_key and self.dialect == "postgresql":
                        shared = hot and not self.single_lock
                        conn.execute(_GLOBAL_SHARED if shared else _GLOBAL_EXCLUSIVE)
                    yield conn
        except OperationalError as exc:
            raise StoreUnreachable(f"the database did not answer: {exc.orig}") from exc
        if write and announce:
            self.announce()

    def announce(self) -> None:
        """Tell the ``after_write`` callbacks a configuration write committed.

        For a write that knows only inside its transaction whether it changed
        anything (``tx(write=True, announce=False)``, then this): a store that
        opens or tracks what is already tracked must not move the Redis token,
        or replicas starting together keep each other's plans stale.
        """
        for callback in self.after_write:
            callback()

    @contextmanager
    def leader_tx(self) -> Iterator[tuple[Connection, bool]]:
        """A hot transaction (as ``tx(hot=True, global_key=False)``) on a kept connection.

        Group commit's leader runs one transaction after another; checking a
        connection out of the pool for each would cost a pool round and, on
        PostgreSQL, the pool's liveness ping (a BEGIN and a SELECT 1: two round
        trips of a decision's five). So one connection is kept for it, and
        yielded with ``reused``: True when it served an earlier transaction and
        may have gone stale while idle (a restarted server). The leader retries
        a batch that failed on a reused connection before its commit, once, on
        a fresh one (``SqlMeter._run_batch``): nothing of it was committed.
        Any failure drops the kept connection, so the next transaction starts
        on a fresh one. An in-memory SQLite database has one connection for
        everyone (StaticPool), so there the pool's is used each time.

        The transaction is the driver's, not SQLAlchemy's: BEGIN (SQLite's
        ``BEGIN IMMEDIATE``, from the engine's ``begin`` event; psycopg begins by
        itself at the first statement), COMMIT and ROLLBACK go straight to the
        sqlite3 or psycopg connection.
        SQLAlchemy's begin and commit bookkeeping (its transaction object and
        the execution context of its commit) counted 16.6k instructions a
        transaction, about 1.5 % of a warm SQLite consume (performance-log.md,
        branch ``sql``). So whatever runs inside must run on the driver too
        (``hot.HotTx``): a SQLAlchemy ``conn.execute`` here would begin a
        second transaction.
        """
        if isinstance(self.engine.pool, StaticPool):
            with self.tx(hot=True, global_key=False) as conn:
                yield conn, False
            return
        lost = self.engine.dialect.loaded_dbapi.OperationalError
        with self._kept_lock:
            try:
                reused = self._kept is not None
                if self._kept is None:
                    self._kept = self.engine.connect()
                    self._kept.execution_options(tokenquota_write=True)
                    self._kept_raw = self._kept.connection.driver_connection
                    self._kept_info = self._kept.info
                conn = self._kept
                self._kept_info["tokenquota_series_locked"] = False
                raw: Any = self._kept_raw
                self._begin(conn, raw)
                try:
                    yield conn, reused
                except BaseException:
                    try:
                        raw.rollback()
                    except Exception:
                        self._drop_kept()  # its state is unknown: never used again
                    raise
                try:
                    raw.commit()
                except BaseException:
                    self._drop_kept()  # a commit that failed may or may not have committed
                    raise
            except (OperationalError, lost) as exc:
                self._drop_kept()
                raise StoreUnreachable(f"the database did not answer: {_orig(exc)}") from exc
            except StoreUnreachable:
                self._drop_kept()
                raise

    def driver(self, conn: Connection) -> Any:
        """The driver's connection under ``conn`` (the kept one's without a lookup)."""
        if conn is self._kept:
            return self._kept_raw
        return conn.connection.driver_connection

    def _begin(self, conn: Connection, raw: Any) -> None:
        """The engine's ``begin`` event, as SQLAlchemy's own begin would fire it: on
        SQLite our hook sends BEGIN IMMEDIATE (``create_engine``), and what else
        listens (a test counting transactions) still sees this one.

        When our hook is the only listener (always, outside tests), what it does is
        done here without the event's dispatch, which with the hook's own lookups
        cost about a quarter of an empty hot transaction. Listeners are only ever
        added to the engine, where ``len`` counts them (SQLite's hook among them).
        """
        listeners = len(self.engine.dispatch.begin)
        if listeners == 1 and self.dialect == "sqlite":
            _begin_immediate(raw)
        elif listeners:
            conn.dispatch.begin(conn)

    def _drop_kept(self) -> None:
        if self._kept is not None:
            kept, self._kept = self._kept, None
            try:
                kept.invalidate()  # never back to the pool: its state is unknown
                kept.close()
            except Exception:
                pass  # it is being thrown away either way

    def lock_series(self, conn: Connection, names: Iterable[str]) -> None:
        """Lock every counter series a hot write reads or writes, before its first read.

        ``names`` must be the whole set: the subjects and the resource-consumer
        series the decision reads (capacity shares too), the ones the write
        adds to, holds on or burns grants of, and the subject whose idempotency
        key is used. One call per transaction, so the locks are taken in one
        sorted order and a second batch can never be taken out of that order.
        """
        if self.dialect != "postgresql" or self.single_lock:
            return  # SQLite's BEGIN IMMEDIATE (or the exclusive key) already serialises
        assert not conn.info.get("tokenquota_series_locked"), "series locked twice in one tx"
        conn.info["tokenquota_series_locked"] = True
        keys = series_keys(names)
        conn.execute(_SERIES_LOCKS, {"hi": [k[0] for k in keys], "lo": [k[1] for k in keys]})

    def lock_hold(
        self, conn: Connection, plan: DebitPlan | None, hold: Reservation | Lease | None
    ) -> None:
        """Lock the series of an existing hold (and of a commit's plan) by its first read.

        That read, made before any series lock, is used only for the hold's
        series, which never change once it is written; the caller reads the
        hold again under the locks for its state. Two calls on one hold (a
        commit racing a release, two releases) lock its series in common, so
        the second sees what the first did.
        """
        names = set(hold.series) if hold is not None else set()
        if plan is not None:
            names |= plan_series(plan)
        if names:
            self.lock_series(conn, names)

    def insert(self, table: sa.Table) -> Any:
        """An INSERT that knows ON CONFLICT, in this database's dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)


def _orig(exc: BaseException) -> BaseException:
    """The driver's error behind SQLAlchemy's wrapper, or the driver's own."""
    return exc.orig if isinstance(exc, OperationalError) and exc.orig is not None else exc


def series_keys(names: Iterable[str]) -> list[tuple[int, int]]:
    """Two-int4 advisory keys for counter series, deduplicated and in one global order.

    A 64-bit BLAKE2b hash, not Python's ``hash`` (salted per process) nor a
    server function: every process and replica must map a series to the same
    key and sort the keys the same way, or two of them could lock in opposite
    orders. Two series that share a key only wait for each other needlessly.
    """
    keys: set[tuple[int, int]] = set()
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        keys.add(
            (
                int.from_bytes(digest[:4], "big", signed=True),
                int.from_bytes(digest[4:], "big", signed=True),
            )
        )
    return sorted(keys)


def plan_series(plan: DebitPlan) -> set[str]:
    """Every series a plan's decision reads and its write touches, to lock them all.

    ``plan.series`` holds the charged subjects (counters bumped, grants
    burned, the subject's idempotency key) and the resource-consumer share;
    the reads add what is only read: limits' subjects and the capacity
    series of contract §6, other consumers' shares among them.
    """
    return {*plan.series, *(str(check.limit.subject) for check in plan.reads)}


def create_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    options: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS}
    }
    if in_memory:
        options["poolclass"] = StaticPool  # one shared connection, or each would be a new database
    engine = sa.create_engine(url, **options)

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit transactions
        # would start them late, after the first read.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_LIMIT_BYTES}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Straight on the driver: SQLAlchemy's statement machinery around a
        # BEGIN cost more than the BEGIN (about 10 µs of a consume). Its error
        # is wrapped as SQLAlchemy would, so ``tx`` sees a busy store as usual.
        write = conn.get_execution_options().get("tokenquota_write", False)
        raw = conn.connection.driver_connection
        assert raw is not None
        if write:
            _begin_immediate(raw)
            return
        try:
            raw.execute("BEGIN")
        except sqlite3.OperationalError as exc:
            raise OperationalError("BEGIN", None, exc) from exc

    return engine


def _begin_immediate(raw: Any) -> None:
    """SQLite: begin a write transaction (the write lock at once), its error as SQLAlchemy's."""
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise OperationalError("BEGIN", None, exc) from exc
