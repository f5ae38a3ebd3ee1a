"""The SQL texts of the hot transaction, one set per dialect (storage/sql/hot.py runs them).

Written once as text, never built per call: sqlite3 keeps each text's
prepared statement in its per-connection cache, and psycopg prepares a text
server-side after ``prepare_threshold`` runs, which is why the PostgreSQL
texts of the hot step never vary with the number of rows: their lists travel
as one JSON text each (``json_text``), which the server unpacks; psycopg
would dump a Python list (an array) or each scalar of a VALUES list in
Python, element by element, and that was most of a consume's client time.
SQLite's IN lists and multi-row VALUES are made once per row count
(``functools.cache``).

On PostgreSQL a consume is four statements: the locks (``PostgresSql.locks``),
the reads (``postgres_reads``), the writes of admitted usage
(``PostgresSql.record``) and COMMIT, in two pipelines (``hot.HotTx``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson

from tokenquota.domain.ledger import CounterKey
from tokenquota.storage.sql.version import VERSION_KEY

Stmt = tuple[str, Sequence[Any]]  # a text and its parameters

# The global advisory key ("tq"), as Database.tx takes it; see tx.py.
GLOBAL_SHARED = "SELECT pg_advisory_xact_lock_shared(29809)"
GLOBAL_EXCLUSIVE = "SELECT pg_advisory_xact_lock(29809)"
TOTAL = "total"


class Sql:
    """The statements of the hot transaction, as one dialect writes them."""

    postgres = False
    tracked = 'SELECT kind, metric, "window" FROM tracked'
    # The configuration version token (storage/sql/version.py); no row: FIRST_TOKEN.
    version = f"SELECT value FROM meta WHERE \"key\" = '{VERSION_KEY}'"
    add_subject = (
        "INSERT INTO subjects (ref, kind, name, metadata, plan_id, created_at)"
        " VALUES (?, ?, NULL, '{}', NULL, ?) ON CONFLICT DO NOTHING"
    )
    event = (
        "INSERT INTO events (kind, subject, charged, ts, recorded_at, mode, amounts, model,"
        " tags, idempotency_key, resource) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    # SQLite, an event numbered beforehand (``warm.py``): its id, then ``event``'s parameters.
    numbered_event = event.replace("(kind,", "(id, kind,").replace("VALUES (?,", "VALUES (?, ?,")
    remember = (
        'INSERT INTO idempotency (subject, "key", fingerprint, decision, created_at)'
        " VALUES (?, ?, ?, ?, ?)"
    )
    burn = "UPDATE grants SET remaining = remaining - ? WHERE id = ?"
    shadow = (
        'INSERT INTO shadow_hits (subject, metric, "window", hits) VALUES (?, ?, ?, 1)'
        ' ON CONFLICT (subject, metric, "window") DO UPDATE SET hits = shadow_hits.hits + 1'
    )
    # The alert outbox (storage/sql/outbox.py): the first of a dedupe key stays.
    alert = (
        'INSERT INTO alert_events (dedupe, kind, subject, metric, "window", period_start,'
        " threshold, used, limit_value, reset_at, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (dedupe) DO NOTHING"
    )

    # A reservation's and a lease's rows (meter.py's reserve and acquire).
    reservation = (
        "INSERT INTO reservations (id, subject, charged, amounts, created_at, expires_at,"
        " state, decision, resource) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)"
    )
    lease = (
        "INSERT INTO leases (id, subject, charged, created_at, expires_at, released_at,"
        " resource) VALUES (?, ?, ?, ?, ?, NULL, ?)"
    )

    def holds_of(
        self, reservation_id: str, expires: int, rows: Sequence[tuple[str, str, int]]
    ) -> Stmt:
        """A reservation's holds, one row per (subject, metric, amount), in one statement."""
        params: list[Any] = []
        for subject, metric, amount in rows:
            params += (subject, metric, expires, reservation_id, amount)
        return _sqlite_rows(_ADD_HOLDS, 5, len(rows)), params

    def holders_of(self, lease_id: str, expires: int, subjects: Sequence[str]) -> Stmt:
        """A lease's holder rows, one per series, in one statement."""
        params: list[Any] = []
        for subject in subjects:
            params += (subject, expires, lease_id)
        return _sqlite_rows(_ADD_HOLDERS, 3, len(subjects)), params

    def counters(self, keys: Sequence[tuple[str, str, str, int, int]]) -> Stmt:
        """The buckets of every (subject, metric, window, lo, hi), tagged by position."""
        params: list[Any] = []
        for i, key in enumerate(keys):
            params += (i, *key)
        return _sqlite_counters(len(keys)), params

    def holds(self, subjects: Sequence[str], now: int) -> Stmt:
        return _sqlite_in(_HOLDS, len(subjects)), [*subjects, now]

    def links(self, ts: int, event_id: int, subjects: Sequence[str]) -> Stmt:
        """The event's row per charged subject, in one statement."""
        params: list[Any] = []
        for subject in subjects:
            params += (subject, ts, event_id)
        return _sqlite_rows(_LINKS, 3, len(subjects)), params

    def bumps(self, deltas: dict[CounterKey, int]) -> Stmt:
        """Every counter the event adds to, in one multi-row upsert."""
        params: list[Any] = []
        for (subject, metric, window, bucket), units in deltas.items():
            params += (subject, metric, window, bucket, units)
        return _sqlite_rows(_BUMPS, 5, len(deltas)), params

    def leases(self, subjects: Sequence[str], now: int) -> Stmt:
        return _sqlite_in(_LEASES, len(subjects)), [*subjects, now]


class PostgresSql(Sql):
    postgres = True
    add_subject = Sql.add_subject.replace("?", "%s")
    burn = Sql.burn.replace("?", "%s")
    shadow = Sql.shadow.replace("?", "%s")
    alert = Sql.alert.replace("?", "%s")
    series_locks = (
        "SELECT pg_advisory_xact_lock(k.hi, k.lo)"
        " FROM unnest(%s::integer[], %s::integer[]) AS k(hi, lo)"
    )

    reservation = (
        "INSERT INTO reservations (id, subject, charged, amounts, created_at, expires_at,"
        " state, decision, resource) VALUES (%s, %s, %s::json, %s::json, %s, %s, %s, NULL, %s)"
    )
    lease = (
        "INSERT INTO leases (id, subject, charged, created_at, expires_at, released_at,"
        " resource) VALUES (%s, %s, %s::json, %s, %s, NULL, %s)"
    )

    def locks(self, keys: Sequence[tuple[int, int]]) -> list[Stmt]:
        """The global key shared, then the series locks in the order of ``keys``.

        One statement for up to ``_LOCKS_IN_ONE`` keys: the locks are the
        expressions of one select list, which PostgreSQL evaluates left to right,
        the global key first (``tx.Database.tx`` says why the order matters).
        Each key is two int4 parameters, so no array is dumped in Python.
        """
        if len(keys) > _LOCKS_IN_ONE:  # a select list has a bounded length
            return [
                (GLOBAL_SHARED, ()),
                (self.series_locks, ([k[0] for k in keys], [k[1] for k in keys])),
            ]
        return [(_pg_locks(len(keys)), [part for key in keys for part in key])]

    def record(
        self,
        events: Sequence[Sequence[Any]],
        deltas: dict[CounterKey, int],
        burns: dict[str, int],
        remembers: Sequence[Sequence[Any]],
    ) -> Stmt:
        """What admitted usage writes, in one statement: ``events`` (each row the
        event's number, then ``hot.event_values``) with their subject links, the
        counter ``deltas``, the grant ``burns`` and the idempotency answers (each
        row as ``remember``'s parameters).

        For one decision or a run of them (batch.py) alike; each list is one JSON
        text, so the text varies only with whether there are burns and answers.
        """
        params = [json_text(events)]  # in the order of the text (``_pg_record``)
        if burns:
            params.append(json_text(list(burns.items())))
        if remembers:
            params.append(json_text(remembers))
        params.append(json_text([[*key, units] for key, units in deltas.items()]))
        return _pg_record(bool(burns), bool(remembers)), params

    def holds_of(
        self, reservation_id: str, expires: int, rows: Sequence[tuple[str, str, int]]
    ) -> Stmt:
        return _PG_ADD_HOLDS, (
            expires,
            reservation_id,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
        )

    def holders_of(self, lease_id: str, expires: int, subjects: Sequence[str]) -> Stmt:
        return _PG_ADD_HOLDERS, (expires, lease_id, list(subjects))

    def counters(self, keys: Sequence[tuple[str, str, str, int, int]]) -> Stmt:
        columns: list[list[Any]] = [[], [], [], [], [], []]
        for i, key in enumerate(keys):
            for column, value in zip(columns, (i, *key), strict=True):
                column.append(value)
        return _PG_COUNTERS, columns

    def holds(self, subjects: Sequence[str], now: int) -> Stmt:
        return _PG_HOLDS, [list(subjects), now]

    def leases(self, subjects: Sequence[str], now: int) -> Stmt:
        return _PG_LEASES, [list(subjects), now]


_LINKS = "INSERT INTO event_subjects (subject, ts, event_id) VALUES {}"
_BUMPS = (
    'INSERT INTO counters (subject, metric, "window", bucket, value) VALUES {}'
    ' ON CONFLICT (subject, metric, "window", bucket)'
    " DO UPDATE SET value = counters.value + excluded.value"
)
_ADD_HOLDS = "INSERT INTO holds (subject, metric, expires_at, reservation_id, amount) VALUES {}"
_ADD_HOLDERS = "INSERT INTO lease_holders (subject, expires_at, lease_id) VALUES {}"
# On PostgreSQL one text whatever the number of rows (arrays through unnest), so
# psycopg prepares it once.
# PostgreSQL: the writes of admitted usage as one statement of data-modifying
# CTEs (``PostgresSql.record``), every list one JSON array of rows. An event's JSON
# columns travel as JSON strings and are cast back, so the stored text is the one
# written (``hot.event_values``). Each event's subject links come from its own
# ``charged`` column. No two rows of one list touch the same row (one counter
# upsert per key, one burn per grant), as one statement requires.
_PG_EVENTS_CTE = (
    "e AS (INSERT INTO events (id, kind, subject, charged, ts, recorded_at, mode, amounts,"
    " model, tags, idempotency_key, resource) SELECT (r->>0)::bigint, r->>1, r->>2,"
    " (r->>3)::json, (r->>4)::bigint, (r->>5)::bigint, r->>6, (r->>7)::json, r->>8,"
    " (r->>9)::json, r->>10, r->>11 FROM jsonb_array_elements(%s::jsonb) AS r"
    " RETURNING id, ts, charged),"
    " l AS (INSERT INTO event_subjects (subject, ts, event_id)"
    " SELECT s, e.ts, e.id FROM e, json_array_elements_text(e.charged) AS s)"
)
_PG_BURNS_CTE = (
    "g AS (UPDATE grants SET remaining = grants.remaining - (b->>1)::bigint"
    " FROM jsonb_array_elements(%s::jsonb) AS b WHERE grants.id = b->>0)"
)
_PG_REMEMBERS_CTE = (
    'i AS (INSERT INTO idempotency (subject, "key", fingerprint, decision, created_at)'
    " SELECT r->>0, r->>1, r->>2, (r->>3)::json, (r->>4)::bigint"
    " FROM jsonb_array_elements(%s::jsonb) AS r)"
)
_PG_COUNTERS_UPSERT = (
    'INSERT INTO counters (subject, metric, "window", bucket, value)'
    " SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, (r->>4)::bigint"
    " FROM jsonb_array_elements(%s::jsonb) AS r"
    ' ON CONFLICT (subject, metric, "window", bucket)'
    " DO UPDATE SET value = counters.value + excluded.value"
)


@cache
def _pg_record(burns: bool, remembers: bool) -> str:
    # Its parameters in text order: events, (burns), (answers), counters.
    ctes = [_PG_EVENTS_CTE]
    if burns:
        ctes.append(_PG_BURNS_CTE)
    if remembers:
        ctes.append(_PG_REMEMBERS_CTE)
    return f"WITH {', '.join(ctes)} {_PG_COUNTERS_UPSERT}"


_PG_ADD_HOLDS = (
    "INSERT INTO holds (subject, metric, expires_at, reservation_id, amount)"
    " SELECT s, m, %s, %s, a FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS h(s, m, a)"
)
_PG_ADD_HOLDERS = (
    "INSERT INTO lease_holders (subject, expires_at, lease_id)"
    " SELECT s, %s, %s FROM unnest(%s::text[]) AS s"
)
_HOLDS = (
    "SELECT subject, metric, sum(amount), max(expires_at) FROM holds"
    " WHERE subject IN ({}) AND expires_at > ? GROUP BY subject, metric"
)
_LEASES = (
    "SELECT subject, count(*), min(expires_at) FROM lease_holders"
    " WHERE subject IN ({}) AND expires_at > ? GROUP BY subject"
)
_PG_COUNTERS = (
    "SELECT k.i, c.bucket, c.value FROM unnest(%s::integer[], %s::text[], %s::text[],"
    " %s::text[], %s::bigint[], %s::bigint[]) AS k(i, s, m, w, lo, hi)"
    ' JOIN counters AS c ON c.subject = k.s AND c.metric = k.m AND c."window" = k.w'
    " AND c.bucket BETWEEN k.lo AND k.hi"
)
_PG_HOLDS = _HOLDS.replace("IN ({})", "= ANY(%s::text[])").replace("?", "%s")
_PG_LEASES = _LEASES.replace("IN ({})", "= ANY(%s::text[])").replace("?", "%s")


# More keys than this go in two statements (``PostgresSql.locks``): far below the
# 1,664 entries a select list may hold.
_LOCKS_IN_ONE = 256


@cache
def _pg_locks(count: int) -> str:
    locks = "".join([", pg_advisory_xact_lock(%s, %s)"] * count)
    return f"{GLOBAL_SHARED}{locks}"


def json_text(values: Sequence[Any]) -> str:
    """A list as the JSON text a PostgreSQL statement unpacks: psycopg dumps a Python
    list element by element in Python, and this is one ``orjson.dumps``. An int
    orjson refuses (past 64 bits) goes through ``json.dumps``."""
    try:
        return orjson.dumps(values).decode()
    except TypeError:
        return json.dumps(values)


@cache
def _sqlite_in(template: str, count: int) -> str:
    return template.format(", ".join("?" * count))


def numbered_bumps(rows: Sequence[Sequence[str]]) -> str:
    """SQLite: ``Sql.bumps``' text with the given parameters (``?N``) in each row's five
    places, for a caller that binds each distinct value once (``warm.Warm.bumps``)."""
    return _BUMPS.format(", ".join(["(" + ", ".join(row) + ")" for row in rows]))


@cache
def _sqlite_rows(template: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(", ".join([row] * count))


@cache
def _sqlite_counters(count: int) -> str:
    if not count:
        return "SELECT 0, 0, 0 WHERE 0"
    # A VALUES list joined on the counters' primary key: one index range per check.
    rows = ", ".join(["(?, ?, ?, ?, ?, ?)"] * count)
    return (
        f"WITH k(i, s, m, w, lo, hi) AS (VALUES {rows})"
        " SELECT k.i, c.bucket, c.value FROM k JOIN counters AS c"
        ' ON c.subject = k.s AND c.metric = k.m AND c."window" = k.w'
        " AND c.bucket BETWEEN k.lo AND k.hi"
    )


# SQLite: every read of a decision in one compound select (``reads.Reads``): one
# execute instead of five to eight. Each part's rows carry its tag first and
# are padded to the widest part (a grant: six columns). Every range, holder
# and grant owner is a part of its own, an equality lookup on an index: an IN
# list or a VALUES table makes SQLite build a temporary b-tree for it on every
# call (three a consume, each with its own page cache to allocate and clear).
READ_VERSION, READ_KEY, READ_SUBJECT, READ_COUNTERS = 0, 1, 2, 3
READ_HOLDS, READ_LEASES, READ_GRANTS, READ_TRACKED = 4, 5, 6, 7
# Where each part's columns end in its rows (the tag is column 0).
READ_ENDS = (2, 3, 2, 4, 5, 4, 7, 4)
SQLITE_READ_COLUMNS = tuple((1, end) for end in READ_ENDS)  # as PG_READ_COLUMNS, below
_READ_PARTS = (
    (READ_VERSION, f"SELECT 0, value, {{}} FROM meta WHERE \"key\" = '{VERSION_KEY}'", 0),
    (
        READ_KEY,
        'SELECT 1, fingerprint, decision, {} FROM idempotency WHERE subject = ? AND "key" = ?',
        2,
    ),
    (READ_SUBJECT, "SELECT 2, 1, {} FROM subjects WHERE ref = ?", 1),
    (
        READ_COUNTERS,
        "SELECT 3, {{i}}, bucket, value, {} FROM counters"
        ' WHERE subject = ? AND metric = ? AND "window" = ? AND bucket BETWEEN ? AND ?',
        5,
    ),
    (
        READ_HOLDS,
        "SELECT 4, subject, metric, sum(amount), max(expires_at), {} FROM holds"
        " WHERE subject = ? AND expires_at > ? GROUP BY subject, metric",
        2,
    ),
    (
        READ_LEASES,
        "SELECT 5, subject, count(*), min(expires_at), {} FROM lease_holders"
        " WHERE subject = ? AND expires_at > ? GROUP BY subject",
        2,
    ),
    (
        READ_GRANTS,
        "SELECT 6, id, subject, amount, granted_at, expires_at, remaining FROM grants"
        " WHERE subject = ?",
        1,
    ),
    (READ_TRACKED, 'SELECT 7, kind, metric, "window", {} FROM tracked', 0),
)
# SQLite refuses a compound select of more than 500 parts (SQLITE_MAX_COMPOUND_SELECT).
_READ_CHUNK = 400


@cache
def sqlite_reads(counts: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    """The folded reads of a decision: ``counts[tag]`` parts of each tag, in tag order.

    One text for each shape of decision, made once (sqlite3 then finds its
    prepared statement in the connection's cache); a shape of more than
    ``_READ_CHUNK`` parts is split over several statements. Each text comes
    with the number of parameters it takes, in the order the parts are listed.
    """
    parts: list[tuple[str, int]] = []
    for tag, template, params in _READ_PARTS:
        pad = ", ".join(["NULL"] * (6 - READ_ENDS[tag] + 1))
        text = template.format(pad) if "{}" in template else template
        for i in range(counts[tag]):
            parts.append((text.format(i=i) if tag == READ_COUNTERS else text, params))
    chunks = [parts[at : at + _READ_CHUNK] for at in range(0, len(parts), _READ_CHUNK)]
    return tuple(
        (" UNION ALL ".join(text for text, _ in chunk), sum(n for _, n in chunk))
        for chunk in chunks
    )


# PostgreSQL: the same parts in one UNION ALL select, run after the statement that
# took the locks (under READ COMMITTED each statement reads a snapshot taken at its
# start). A UNION's columns have one type each, so every row is (tag, text, text,
# bigint, bigint, bigint, bigint) and each part's columns sit where their types
# are: ``PG_READ_COLUMNS[tag]`` is where they start and end. The lists a part
# looks up (counter ranges, subjects) are one JSON text parameter each, unpacked
# by the server: psycopg dumps a Python list through Python code, element by
# element, and a JSON text is one ``orjson.dumps``, kept per request shape
# (``reads._Shape``). The server takes them as jsonb: its ``->>`` reads a parsed
# value, where json's parses the element's text again (about 20 µs of server CPU
# a consume). The text depends only on which parts there are, so psycopg
# prepares each of the few variants once.
READ_NEXT = 8  # the number the decision's event will carry (``nextval``)
PG_READ_COLUMNS = ((1, 2), (1, 3), (1, 2), (3, 6), (1, 5), (2, 5), (1, 7), (1, 3), (3, 4))
_PG_IN = "IN (SELECT jsonb_array_elements_text(%s::jsonb))"
# NULLs are typed: PostgreSQL types a UNION pair by pair, and two untyped NULLs
# would make a text column that a later bigint cannot join.
_T, _N = "NULL::text", "NULL::bigint"
_PG_READ_PARTS = (
    f"SELECT 0, value, {_T}, {_N}, {_N}, {_N}, {_N} FROM meta WHERE \"key\" = '{VERSION_KEY}'",
    f"SELECT 1, fingerprint, decision::text, {_N}, {_N}, {_N}, {_N} FROM idempotency"
    ' WHERE subject = %s AND "key" = %s',
    f"SELECT 2, {_T}, {_T}, {_N}, {_N}, {_N}, {_N} FROM subjects WHERE ref = %s",
    # Each range is [subject, metric, window, lo, hi]; its position tags its rows.
    f"SELECT 3, {_T}, {_T}, k.i - 1, c.bucket, c.value, {_N}"
    " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS k(r, i)"
    " JOIN counters AS c ON c.subject = k.r->>0 AND c.metric = k.r->>1"
    ' AND c."window" = k.r->>2 AND c.bucket BETWEEN (k.r->>3)::bigint AND (k.r->>4)::bigint',
    # Live holds past 2^63 - 1 units (possible on a metric with no limit) read as
    # that much: more than any limit or balance, which is all a decision asks.
    f"SELECT 4, subject, metric, least(sum(amount), {2**63 - 1})::bigint, max(expires_at),"
    f" {_N}, {_N} FROM holds"
    f" WHERE subject {_PG_IN} AND expires_at > %s GROUP BY subject, metric",
    f"SELECT 5, {_T}, subject, count(*), min(expires_at), {_N}, {_N} FROM lease_holders"
    f" WHERE subject {_PG_IN} AND expires_at > %s GROUP BY subject",
    "SELECT 6, id, subject, amount, granted_at, expires_at, remaining FROM grants"
    f" WHERE subject {_PG_IN}",
    # Two text columns for three: the kind and the metric joined by a space, which
    # neither holds (``reads.tracked_pairs`` splits them).
    f"SELECT 7, kind || ' ' || metric, \"window\", {_N}, {_N}, {_N}, {_N} FROM tracked",
    f"SELECT 8, {_T}, {_T}, nextval(pg_get_serial_sequence('events', 'id')), {_N}, {_N}, {_N}",
)


@cache
def postgres_reads(
    versioned: bool, keyed: bool, leased: bool, tracked: bool, numbered: bool
) -> str:
    """The one read statement of a PostgreSQL decision with these parts, in tag order;
    its parameters: the subject and key (``keyed``), the subject, the ranges, the held
    subjects and the time, the leased subjects and the time (``leased``), the owners."""
    wanted = (versioned, keyed, True, True, True, leased, True, tracked, numbered)
    return " UNION ALL ".join(
        part for part, want in zip(_PG_READ_PARTS, wanted, strict=True) if want
    )


SQLITE = Sql()
POSTGRES = PostgresSql()
