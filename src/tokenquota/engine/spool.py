"""Usage admitted while the store was unreachable (``on_store_error="open"``).

contract §5 lets a product prefer availability: when the store cannot be
reached, admit and queue the usage. The queue is a SQLite file on the
replica's own disk, written durably (``synchronous=FULL``) before the answer
goes out, so an acknowledged consume survives a crash of the replica as it
would survive one of the store. ``Quota`` moves it into the store once the
store answers again (see ``Quota.drain``).

The file is a local buffer, not part of the store: its three tables are
created here, not by the Alembic migrations, and a newer layout would bump
``LAYOUT``. Several processes may share one file (uvicorn workers on one
host): SQLite serialises their writes, and every queued entry carries an
idempotency key, so two of them storing the same entry count it once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tokenquota.domain.decisions import Decision
from tokenquota.domain.errors import (
    IdempotencyConflict,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from tokenquota.domain.holds import (
    HoldState,
    Lease,
    Reservation,
    check_extendable,
)
from tokenquota.domain.metrics import Amounts
from tokenquota.domain.subjects import SubjectRef
from tokenquota.wire import stored

LAYOUT: Final = 1
# Ids of reservations and leases taken while the store was unreachable: they
# live in the spool, and the store never issues ids of this shape (hex only).
OPEN_PREFIX: Final = "open-"
# Bounds: an outage long enough to fill these answers 503 (fail closed) from then on.
MAX_QUEUED: Final = 1_000_000
MAX_HOLDS: Final = 100_000
BUSY_SECONDS: Final = 30
KEEP_LAPSED: Final = timedelta(days=1)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queued (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        request TEXT NOT NULL,
        answer TEXT NOT NULL,
        queued_at TEXT NOT NULL,
        UNIQUE (subject, key)
    )""",
    """CREATE TABLE IF NOT EXISTS failed (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        key TEXT NOT NULL,
        request TEXT NOT NULL,
        error TEXT NOT NULL,
        failed_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS holds (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class Queued:
    """One admitted request waiting for the store."""

    id: int
    subject: str
    key: str
    request: dict[str, Any]


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValidationError("spool", f"{self.path} is a directory; give a file path")
        try:
            with closing(sqlite3.connect(self.path, timeout=BUSY_SECONDS)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")  # kept by the file from now on
            with self._tx() as conn:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found not in (0, LAYOUT):
                    raise ValidationError(
                        "spool",
                        f"{self.path} has spool layout {found}; this version reads {LAYOUT}",
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {LAYOUT}")
        except sqlite3.Error as exc:
            raise ValidationError("spool", f"cannot use {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction on a fresh connection (the spool is used rarely).

        A connection per call keeps threads and forked workers apart without a
        lock of our own; ``BEGIN IMMEDIATE`` makes read-then-write atomic.
        """
        conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        with closing(conn):
            conn.execute("PRAGMA synchronous=FULL")  # per connection: durable before the answer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # queued usage -------------------------------------------------------------
    def queue(
        self, subject: str, key: str, request: dict[str, Any], answer: Decision, fingerprint: str
    ) -> Decision:
        """Keep a request until the store takes it; a repeat of its key gets the first answer."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT fingerprint, answer FROM queued WHERE subject = ? AND key = ?",
                (subject, key),
            ).fetchone()
            if row is not None:
                if row[0] != fingerprint:
                    raise IdempotencyConflict(
                        f"idempotency key {key!r} was used for another request",
                        details={"field": "idempotency_key"},
                    )
                return stored.decode_decision(json.loads(row[1])).as_replay()
            (count,) = conn.execute("SELECT count(*) FROM queued").fetchone()
            if count >= MAX_QUEUED:
                raise StoreUnavailable(
                    f"the store is unreachable and the spool holds {MAX_QUEUED:,} requests already"
                )
            conn.execute(
                "INSERT INTO queued (subject, key, fingerprint, request, answer, queued_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    subject,
                    key,
                    fingerprint,
                    json.dumps(request, sort_keys=True),
                    json.dumps(stored.encode_decision(answer)),
                    answer.timestamp.isoformat(),
                ),
            )
        return answer

    def pending(self, limit: int) -> list[Queued]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, subject, key, request FROM queued ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [Queued(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def done(self, entry: Queued) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM queued WHERE id = ?", (entry.id,))

    def fail(self, entry: Queued, error: str, now: datetime) -> None:
        """Set aside an entry the store refuses for good (kept for the operator)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO failed (subject, key, request, error, failed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (entry.subject, entry.key, json.dumps(entry.request), error, now.isoformat()),
            )
            conn.execute("DELETE FROM queued WHERE id = ?", (entry.id,))

    def depth(self) -> int:
        with self._tx() as conn:
            return int(conn.execute("SELECT count(*) FROM queued").fetchone()[0])

    def failed(self) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT subject, key, request, error, failed_at FROM failed ORDER BY id"
            ).fetchall()
        return [
            {"subject": s, "key": k, "request": json.loads(r), "error": e, "failed_at": f}
            for s, k, r, e, f in rows
        ]

    # holds taken while the store was away ---------------------------------------
    # The same calls, with the same answers, as the store's (storage.base.Store):
    # the engine sends an open- id here and every other id to the store.
    def add_reservation(self, reservation: Reservation, now: datetime) -> None:
        self._add_hold("reservation", reservation, now)

    def add_lease(self, lease: Lease, now: datetime) -> None:
        self._add_hold("lease", lease, now)

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        with self._tx() as conn:
            return self._reservation(conn, reservation_id)

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._tx() as conn:
            return self._lease(conn, lease_id)

    def committed(self, reservation_id: str, decision: Decision) -> None:
        """Record a commit's answer, replayed to a repeated commit."""
        with self._tx() as conn:
            held = self._reservation(conn, reservation_id)
            if held is not None and held.committed is None:
                done = replace(held, state=HoldState.COMMITTED, committed=decision)
                self._put(conn, "reservation", done)

    def release(self, reservation_id: str, now: datetime) -> bool:
        with self._tx() as conn:
            held = self._reservation(conn, reservation_id)
            if held is None:
                raise NotFound(f"no reservation {reservation_id!r}", details={"field": "id"})
            if held.state is not HoldState.HELD:
                return False
            self._put(conn, "reservation", replace(held, state=HoldState.RELEASED))
            return True

    def release_lease(self, lease_id: str, now: datetime) -> bool:
        with self._tx() as conn:
            lease = self._lease(conn, lease_id)
            if lease is None:
                raise NotFound(f"no lease {lease_id!r}", details={"field": "id"})
            if lease.released_at is not None:
                return False
            self._put(conn, "lease", replace(lease, released_at=now))
            return True

    def extend_lease(self, lease_id: str, expires_at: datetime, now: datetime) -> Lease:
        with self._tx() as conn:
            lease = self._lease(conn, lease_id)
            check_extendable(lease, lease_id, now)
            assert lease is not None
            extended = replace(lease, expires_at=expires_at)
            self._put(conn, "lease", extended)
            return extended

    def _add_hold(self, kind: str, hold: Reservation | Lease, now: datetime) -> None:
        with self._tx() as conn:
            # A lapsed hold is kept a day, to answer a late commit or heartbeat clearly.
            conn.execute(
                "DELETE FROM holds WHERE expires_at < ?", ((now - KEEP_LAPSED).isoformat(),)
            )
            (count,) = conn.execute("SELECT count(*) FROM holds").fetchone()
            if count >= MAX_HOLDS:
                raise StoreUnavailable(
                    f"the store is unreachable and the spool holds {MAX_HOLDS:,} holds already"
                )
            self._put(conn, kind, hold)

    def _put(self, conn: sqlite3.Connection, kind: str, hold: Reservation | Lease) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO holds (id, kind, body, expires_at) VALUES (?, ?, ?, ?)",
            (hold.id, kind, json.dumps(_hold_body(hold)), hold.expires_at.isoformat()),
        )

    def _body(self, conn: sqlite3.Connection, kind: str, hold_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT body FROM holds WHERE id = ? AND kind = ?", (hold_id, kind)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _reservation(self, conn: sqlite3.Connection, hold_id: str) -> Reservation | None:
        body = self._body(conn, "reservation", hold_id)
        if body is None:
            return None
        return Reservation(
            id=hold_id,
            **_hold_fields(body),
            amounts=Amounts.from_units_json(body["amounts"]),
            state=HoldState(body["state"]),
            committed=stored.decode_decision(body["committed"]) if body["committed"] else None,
        )

    def _lease(self, conn: sqlite3.Connection, hold_id: str) -> Lease | None:
        body = self._body(conn, "lease", hold_id)
        if body is None:
            return None
        released = body["released_at"]
        return Lease(
            id=hold_id,
            **_hold_fields(body),
            released_at=datetime.fromisoformat(released) if released else None,
        )


def _hold_body(hold: Reservation | Lease) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": str(hold.subject),
        "created_at": hold.created_at.isoformat(),
        "expires_at": hold.expires_at.isoformat(),
        "resource": str(hold.resource) if hold.resource else None,
    }
    if isinstance(hold, Reservation):
        body["amounts"] = hold.amounts.to_units_json()
        body["state"] = hold.state.value
        body["committed"] = stored.encode_decision(hold.committed) if hold.committed else None
    else:
        body["released_at"] = hold.released_at.isoformat() if hold.released_at else None
    return body


def _hold_fields(body: dict[str, Any]) -> dict[str, Any]:
    """What reservations and leases share. A hold taken without the store knows no
    ancestors: it is charged to its own subject only."""
    subject = SubjectRef.parse(body["subject"])
    return {
        "subject": subject,
        "charged": (subject,),
        "created_at": datetime.fromisoformat(body["created_at"]),
        "expires_at": datetime.fromisoformat(body["expires_at"]),
        "resource": SubjectRef.parse(body["resource"]) if body["resource"] else None,
    }
