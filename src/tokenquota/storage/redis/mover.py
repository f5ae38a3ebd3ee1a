"""The mover: events from the Redis streams into the SQL ledger.

Redis assigns an event its id and keeps it in a stream until the mover has
inserted it into SQL, where the id is the primary key: a second copy (two
replicas moving at once, a crash between insert and delete) is skipped.
A row the ledger refuses for its data is quarantined, never dropped and
never allowed to hold back the rest (docs/redis.md).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.errors import display
from tokenquota.storage.ledger_rows import event_links
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.ledger import SqlLedger
from tokenquota.storage.sql.outbox import insert_alerts
from tokenquota.storage.sql.tx import Database

log = logging.getLogger("tokenquota.redis")

MOVE_BATCH = 500
MOVE_INTERVAL = 0.2  # seconds between mover passes


@dataclass(frozen=True)
class LedgerLag:
    """How far the SQL ledger is behind the Redis streams."""

    pending: int  # events in the streams, not yet copied
    seconds: float  # age of the oldest of them by this host's clock; 0 when none wait


class Mover:
    def __init__(self, db: Database, ledger: SqlLedger, client: Any, layout: Layout) -> None:
        self.db = db
        self.ledger = ledger
        self.redis = client
        self.layout = layout
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._forever, name="tq-mover", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _forever(self) -> None:
        while not self.stop.wait(MOVE_INTERVAL):
            try:
                self.flush()
            except Exception:  # keep moving once the database is back
                log.exception("moving events to the ledger failed; retrying")

    def flush(self) -> int:
        """Move every event in the Redis streams into the SQL ledger; returns how many.

        Safe to run in many replicas at once: an event's id is its primary key,
        so a second copy is skipped, and it leaves the stream only after its
        transaction committed.
        """
        moved = 0
        for shard in range(self.layout.shards):
            self._move_alerts(shard, None)
            stream = self.layout.stream(shard)
            while True:
                entries = call(lambda s=stream: self.redis.xrange(s, count=MOVE_BATCH))
                if not entries:
                    break
                with self.db.tx(hot=True) as conn:  # unique ids: nothing to serialise
                    refused = self._insert_events(conn, entries)
                self._set_aside(shard, stream, entries, refused)
                moved += len(entries) - len(refused)
                if len(entries) < MOVE_BATCH:
                    break
        return moved

    def drain(self, conn: Connection) -> None:
        """Move everything now, inside ``conn`` (which may hold the write lock)."""
        for shard in range(self.layout.shards):
            self._move_alerts(shard, conn)
            stream = self.layout.stream(shard)
            while True:
                entries = call(lambda s=stream: self.redis.xrange(s, count=MOVE_BATCH))
                if not entries:
                    break
                refused = self._insert_events(conn, entries)
                self._set_aside(shard, stream, entries, refused)

    def _move_alerts(self, shard: int, conn: Connection | None) -> None:
        """The shard's alert events into SQL's outbox (inside ``conn`` when given).

        Their dedupe key is unique there, so a second copy (two movers, a crash
        between the insert and the delete) is skipped, as an event's id is. An
        entry carries the row the service built and, for a crossing the script
        decided, the usage it found (``u``) and a rolling window's reset in
        seconds (``r``).
        """
        stream = self.layout.alerts(shard)
        while True:
            entries = call(lambda: self.redis.xrange(stream, count=MOVE_BATCH))
            if not entries:
                return
            rows = [_alert_row(data) for _, data in entries]
            if conn is None:
                with self.db.tx(hot=True) as fresh:
                    insert_alerts(fresh, rows)
            else:
                insert_alerts(conn, rows)
            self._drop(stream, entries)
            if len(entries) < MOVE_BATCH:
                return

    def _drop(self, stream: str, entries: Sequence[Any]) -> None:
        """Take a moved batch out of its stream: every entry up to the batch's last.

        A batch is the stream's oldest entries (XRANGE from the start), and an
        entry added later always has a greater id, so trimming below the id after
        the last one takes exactly the batch, or less where another mover took
        some first. Cheaper in Redis, whose one thread every step waits on, than
        an XDEL naming 500 ids: whole nodes go at once (about 1 us of Redis's
        time per consume moved, session 11).
        """
        ms, _, seq = _text(entries[-1][0]).partition("-")
        after = f"{ms}-{int(seq) + 1}"
        call(lambda: self.redis.xtrim(stream, minid=after, approximate=False))

    def _insert_events(self, conn: Connection, entries: Sequence[Any]) -> dict[Any, str]:
        """Insert a batch; returns the entries the ledger refused, by stream id, with why.

        One bad entry (a NUL a pre-validation version let in, a body that is not
        an event) must not hold back the rest, or the mover, ``rebuild`` and
        every ledger read fail on it forever. The batch is tried whole; when the
        database refuses it for its data, each entry is retried on its own and
        only the refused ones are set aside. A database that is down is not a
        data error: that still fails the whole pass, to be retried later.
        """
        if conn.dialect.name == "postgresql":
            try:
                with conn.begin_nested():
                    _move_batch(conn, entries)
                return {}
            except sa.exc.OperationalError:
                raise  # the database is down, not refusing a row: retry the pass later
            except (sa.exc.StatementError, KeyError, ValueError):
                pass  # DataError, IntegrityError, bad UTF-8, no id: found row by row below
        refused: dict[Any, str] = {}
        parsed: list[tuple[Any, dict[str, Any], list[dict[str, Any]]]] = []
        for entry_id, data in entries:
            try:
                body = json.loads(data[b"e"])
                event_id = int(data[b"id"])
                row = {"id": event_id, **body}
                links = event_links(event_id, body)
            except (KeyError, TypeError, ValueError) as exc:
                refused[entry_id] = f"not an event: {type(exc).__name__}: {exc}"
                continue
            parsed.append((entry_id, row, links))
        try:
            with conn.begin_nested():
                self.ledger.copy(
                    conn, [r for _, r, _ in parsed], [k for *_, ks in parsed for k in ks]
                )
            return refused
        except _DATA_ERRORS:
            pass
        for entry_id, row, links in parsed:
            try:
                with conn.begin_nested():
                    self.ledger.copy(conn, [row], links)
            except _DATA_ERRORS as exc:
                refused[entry_id] = f"refused by the ledger: {_reason(exc)}"
        return refused

    def _set_aside(
        self, shard: int, stream: str, entries: Sequence[Any], refused: dict[Any, str]
    ) -> None:
        """Quarantine the refused entries, then drop the batch from the stream.

        Quarantine comes first: a crash in between leaves an entry in both
        places (seen twice by an operator), never in neither. docs/redis.md
        says how to read the quarantine.
        """
        if refused:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id, data in entries:
                if entry_id in refused:
                    fields = {**data, b"stream_id": entry_id, b"reason": refused[entry_id]}
                    pipe.xadd(self.layout.quarantine(shard), fields)
            call(pipe.execute)
            for entry_id, reason in refused.items():
                log.error(
                    "ledger refused Redis event %s; quarantined in %s: %s",
                    display(_text(entry_id)),
                    self.layout.quarantine(shard),
                    display(reason),
                )
        self._drop(stream, entries)

    def lag(self) -> LedgerLag:
        """Read-only: what waits in the streams now, for monitoring (/metrics).

        An event's stream id starts with the Redis server's time in milliseconds;
        the age is measured against this host's clock, so a skew between the two
        shows up in it (never below 0).
        """
        pending = 0
        oldest: float | None = None
        for shard in range(self.layout.shards):
            stream = self.layout.stream(shard)
            pending += int(call(lambda s=stream: self.redis.xlen(s)))
            first = call(lambda s=stream: self.redis.xrange(s, count=1))
            if first:
                millis = int(_text(first[0][0]).partition("-")[0])
                oldest = millis if oldest is None else min(oldest, millis)
        seconds = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        return LedgerLag(pending, seconds)

    def quarantined(self) -> list[dict[str, str]]:
        """Every quarantined event, oldest first per shard, for an operator to inspect."""
        out: list[dict[str, str]] = []
        for shard in range(self.layout.shards):
            key = self.layout.quarantine(shard)
            for qid, data in call(lambda k=key: self.redis.xrange(k)):
                out.append(
                    {
                        "quarantine_id": _text(qid),
                        **{_text(k): _text(v) for k, v in data.items()},
                    }
                )
        return out


# A row the database refuses for what it holds (NUL in text, a string no encoder
# takes, a missing column). A database that cannot be reached (OperationalError,
# also a StatementError) is not among them: that pass fails and is retried.
_DATA_ERRORS = (sa.exc.DataError, sa.exc.IntegrityError, UnicodeError)


# One statement moves a batch on PostgreSQL: the stream entries go as one JSON
# array of event rows (each entry's body as stored, with the entry's id added as
# its last key), PostgreSQL reads each row's columns in one pass
# (json_to_recordset), and inserts the events and their event_subjects links
# (one per charged subject, as event_links builds them), skipping rows already
# present as SqlLedger.copy does. Taking each column out of a nested body with
# ``->>`` instead re-read the body's text once per column (the json type is
# kept as text): 42-45 us of PostgreSQL's CPU per moved event, against 22-25 so.
_MOVE_BATCH_SQL = (
    "WITH x AS (SELECT * FROM json_to_recordset(%s::json) AS r(id bigint, kind text,"
    " subject text, charged json, ts bigint, recorded_at bigint, mode text, amounts json,"
    " model text, tags json, idempotency_key text, resource text)),"
    f" moved AS (INSERT INTO {t.events.name} (id, kind, subject, charged, ts,"
    " recorded_at, mode, amounts, model, tags, idempotency_key, resource)"
    " SELECT id, kind, subject, charged, ts, recorded_at, mode, amounts, model, tags,"
    " idempotency_key, resource FROM x ON CONFLICT (id) DO NOTHING)"
    f" INSERT INTO {t.event_subjects.name} (subject, ts, event_id)"
    " SELECT s, ts, id FROM x, json_array_elements_text(charged) AS s"
    " ON CONFLICT DO NOTHING"
)


def _move_batch(conn: Connection, entries: Sequence[Any]) -> None:
    """Insert a batch of stream entries into the ledger on PostgreSQL, in one statement.

    What ``SqlLedger.copy`` does for the rows ``_insert_events`` parses, without
    parsing them here: the bodies are JSON objects already, so each becomes a
    row by putting the entry's id in before its closing brace (last, so the
    stream's id is the one read, as the links' is). Sent row by row, a batch
    cost the mover about 45 us of this process's CPU per event (psycopg
    preparing and sending three statements an event), under the GIL the
    decisions share. Anything PostgreSQL refuses here (a body that is not a
    JSON object or not an event, a NUL) fails the whole statement, and the
    caller then takes the row-by-row path that finds and quarantines the
    culprits.
    """
    batch = ",".join(
        data[b"e"].decode()[:-1] + ',"id":' + str(int(data[b"id"])) + "}" for _, data in entries
    )
    conn.exec_driver_sql(_MOVE_BATCH_SQL, (f"[{batch}]",))


def _alert_row(data: dict[bytes, bytes]) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(data[b"a"])
    if data.get(b"u"):
        row["used"] = int(data[b"u"])
    if data.get(b"r"):
        row["reset_at"] = int(data[b"r"]) * 1_000_000
    return row


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}".splitlines()[0]


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
