"""Filling a store with many ``user:alice``-shaped subjects fast, for ``make bench-size``.

A subject through the public API costs three calls (``set_parents``,
``set_limits``, a recorded ``consume``): about 0.3 ms each on memory, but
milliseconds on a durable store, so 10⁶ subjects would take hours. So:

- **memory**: the public API, one call at a time (nothing else can reach a
  memory store);
- **SQLite, PostgreSQL**: one *template* user and company are made through
  the public API; their rows (subject, parents, rules, audit, counters, the
  event and its per-subject index rows) are then copied with plain SQL for
  every other user and company, names substituted, event ids renumbered,
  the company's counters multiplied by its number of users. Setup only: the
  measured calls always go through ``tokenquota.open``.

The copy knows the tables by name, so it checks itself both ways: before
copying, it refuses a table it does not know that holds rows of the
template (the schema grew); after, ``verify`` reads sampled subjects back
through the public API (limits, parents, usage of user and company).

Names: user ``user:bu%07d`` in company ``company:bc%07d``, USERS_PER_COMPANY
users each; a store of N users holds N/100 companies and N events.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tokenquota
from bench.common import COMPANY_WINDOWS, LIMIT, USER_WINDOWS

USERS_PER_COMPANY = 100
TEMPLATE_USER_ID = "tu0000000"  # as wide as the copies' ids, so nothing fixed-width shifts
TEMPLATE_COMPANY_ID = "tc0000000"
TEMPLATE_USER = f"user:{TEMPLATE_USER_ID}"
TEMPLATE_COMPANY = f"company:{TEMPLATE_COMPANY_ID}"
TOKENS = 10  # each user's one recorded event
CHUNK = 20_000  # rows per executemany
# Which rows of the template each table holds, by the column that names the subject.
# owner "user": copied per user; "company": once per company.
KNOWN: dict[str, str] = {
    "subjects": "ref",
    "subject_parents": "child",
    "rules": "scope",
    "audit": "target",
    "counters": "subject",
    "events": "subject",
    "event_subjects": "subject",
}
# Tables that hold no row of a subject, or are global (which pairs are counted).
IGNORED = {"alembic_version", "tracked", "meta"}


def user(i: int) -> str:
    return f"user:bu{i:07d}"


def company_of(i: int) -> str:
    return f"company:bc{i // USERS_PER_COMPANY:07d}"


def add_through_api(quota: tokenquota.Quota, start: int, stop: int) -> None:
    """Users ``start``..``stop`` and their companies, one public call at a time."""
    user_limits = [{"metric": "tokens", "window": w, "limit": LIMIT} for w in USER_WINDOWS]
    company_limits = [{"metric": "tokens", "window": w, "limit": LIMIT} for w in COMPANY_WINDOWS]
    for i in range(start, stop):
        if i % USERS_PER_COMPANY == 0:
            quota.set_limits(company_of(i), company_limits)
        quota.set_parents(user(i), [company_of(i)])
        quota.set_limits(user(i), user_limits)
        quota.consume(user(i), tokens=TOKENS, mode="record")


def make_template(quota: tokenquota.Quota) -> None:
    """The subjects the SQL copy starts from, made the way an application would."""
    quota.set_limits(
        TEMPLATE_COMPANY,
        [{"metric": "tokens", "window": w, "limit": LIMIT} for w in COMPANY_WINDOWS],
    )
    quota.set_parents(TEMPLATE_USER, [TEMPLATE_COMPANY])
    quota.set_limits(
        TEMPLATE_USER, [{"metric": "tokens", "window": w, "limit": LIMIT} for w in USER_WINDOWS]
    )
    quota.consume(TEMPLATE_USER, tokens=TOKENS, mode="record")


class Sql(Protocol):
    """The little a copy needs from a DB-API connection, per dialect."""

    def tables(self) -> dict[str, list[str]]: ...
    def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...
    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...

    placeholder: str
    text_cast: str  # how to read any column as text in a LIKE


def q(name: str) -> str:
    """A quoted identifier: the schema has columns named like keywords (``window``)."""
    return '"' + name.replace('"', '""') + '"'


class SqliteSql:
    placeholder = "?"
    text_cast = "CAST({} AS TEXT)"

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        # Setup only: a crash here loses a benchmark store, nothing else.
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN IMMEDIATE")

    def tables(self) -> dict[str, list[str]]:
        names = [
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {n: [c[1] for c in self.conn.execute(f"PRAGMA table_info({q(n)})")] for n in names}

    def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params))

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        sql = (
            f"INSERT INTO {q(table)} ({', '.join(map(q, columns))})"
            f" VALUES ({', '.join('?' * len(columns))})"
        )
        for chunk in chunks(rows):
            self.conn.executemany(sql, chunk)

    def finish(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.conn.close()


class PostgresSql:
    placeholder = "%s"
    text_cast = "CAST({} AS TEXT)"

    def __init__(self, url: str, schema: str) -> None:
        import psycopg
        from psycopg.types.string import TextLoader

        self.schema = schema
        self.conn = psycopg.connect(url, options=f"-csearch_path={schema}")
        # JSON read as its text, so names can be substituted in it and copied back as is.
        for name in ("json", "jsonb"):
            self.conn.adapters.register_loader(name, TextLoader)

    def tables(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for table, column in self.conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            (self.schema,),
        ):
            found.setdefault(table, []).append(column)
        return found

    def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params))

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor().copy(
            f"COPY {q(table)} ({', '.join(map(q, columns))}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def finish(self) -> None:
        # Ids given explicitly leave the sequence behind; the next consume needs a fresh one.
        self.conn.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events))"
        )
        self.conn.commit()
        self.conn.autocommit = True
        # What autovacuum would have done by the time a store had grown this big
        # (table by table: a bare ANALYZE would visit every schema of the database).
        for table in KNOWN:
            self.conn.execute(f"ANALYZE {q(table)}")

    def close(self) -> None:
        self.conn.close()


def chunks(rows: Iterable[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class Template:
    """The template's rows per known table: (columns, user's rows, company's rows)."""

    rows: dict[str, tuple[list[str], list[tuple[Any, ...]], list[tuple[Any, ...]]]]

    @classmethod
    def read(cls, sql: Sql) -> Template:
        tables = sql.tables()
        check_tables(sql, tables)
        rows = {}
        p = sql.placeholder
        for table, column in KNOWN.items():
            if table not in tables:
                raise RuntimeError(f"populate.py: the store has no table {table!r} any more")
            columns = tables[table]
            select = f"SELECT {', '.join(map(q, columns))} FROM {q(table)} WHERE {q(column)} = {p}"
            rows[table] = (
                columns,
                sql.select(select, (TEMPLATE_USER,)),
                sql.select(select, (TEMPLATE_COMPANY,)),
            )
        return cls(rows)


def check_tables(sql: Sql, tables: dict[str, list[str]]) -> None:
    """Refuse to copy when a table this file does not know holds the template's rows."""
    p = sql.placeholder
    for table, columns in tables.items():
        if table in KNOWN or table in IGNORED:
            continue
        for column in columns:
            cast = sql.text_cast.format(q(column))
            hit = sql.select(
                f"SELECT 1 FROM {q(table)} WHERE {cast} LIKE {p} OR {cast} LIKE {p} LIMIT 1",
                (f"%{TEMPLATE_USER_ID}%", f"%{TEMPLATE_COMPANY_ID}%"),
            )
            if hit:
                raise RuntimeError(
                    f"populate.py does not know table {table!r}, which holds rows of a"
                    f" subject ({column!r}): teach it, or the store it builds is incomplete"
                )


def substituted(row: Sequence[Any], user_id: str, company_id: str) -> list[Any]:
    return [
        v.replace(TEMPLATE_USER_ID, user_id).replace(TEMPLATE_COMPANY_ID, company_id)
        if isinstance(v, str)
        else v
        for v in row
    ]


def add_through_sql(sql: Sql, template: Template, start: int, stop: int) -> None:
    """Users ``start``..``stop`` (whole companies) and their companies, copied in SQL."""
    if start % USERS_PER_COMPANY or stop % USERS_PER_COMPANY:
        raise ValueError(f"sizes are whole companies: multiples of {USERS_PER_COMPANY}")
    users = range(start, stop)
    companies = range(start // USERS_PER_COMPANY, stop // USERS_PER_COMPANY)

    def ids(i: int) -> tuple[str, str]:
        return f"bu{i:07d}", f"bc{i // USERS_PER_COMPANY:07d}"

    (max_id,) = sql.select("SELECT COALESCE(max(id), 0) FROM events", ())[0]
    columns, user_events, _ = template.rows["events"]
    id_at = columns.index("id")
    event_ids = [e[id_at] for e in user_events]
    per_user = len(event_ids)

    def new_event_id(i: int, old: int) -> int:
        return int(max_id) + (i - start) * per_user + event_ids.index(old) + 1

    for table in KNOWN:
        columns, user_rows, company_rows = template.rows[table]
        if table == "audit":  # its own ids: let the store number the copies
            keep = [k for k, c in enumerate(columns) if c != "id"]
            columns = [columns[k] for k in keep]
            user_rows = [tuple(r[k] for k in keep) for r in user_rows]
            company_rows = [tuple(r[k] for k in keep) for r in company_rows]

        def rows(
            table: str = table,
            columns: list[str] = columns,
            user_rows: Any = user_rows,
            company_rows: Any = company_rows,
        ) -> Iterator[list[Any]]:
            if table == "events":
                for i in users:
                    for row in user_rows:
                        copy = substituted(row, *ids(i))
                        copy[id_at] = new_event_id(i, row[id_at])
                        yield copy
                return
            if table == "event_subjects":
                at = columns.index("event_id")
                for i in users:
                    for row in [*user_rows, *company_rows]:
                        copy = substituted(row, *ids(i))
                        copy[at] = new_event_id(i, row[at])
                        yield copy
                return
            for i in users:
                for row in user_rows:
                    yield substituted(row, *ids(i))
            value_at = columns.index("value") if table == "counters" else -1
            for c in companies:
                for row in company_rows:
                    copy = substituted(row, "", f"bc{c:07d}")
                    if value_at >= 0:  # the template company has one user; these have more
                        copy[value_at] = row[value_at] * USERS_PER_COMPANY
                    yield copy

        sql.insert(table, columns, rows())
    sql.finish()


def verify(quota: tokenquota.Quota, start: int, stop: int, samples: int = 5) -> None:
    """Sampled users just added, and their companies, read back through the public API.

    Only the new ones: the measured consumes of a smaller size moved the others.
    """
    rng = random.Random(stop)
    for i in rng.sample(range(start, stop), min(samples, stop - start)):
        name, parent = user(i), company_of(i)
        if [str(a) for a in quota.ancestors(name)] != [parent]:
            raise RuntimeError(f"populate: {name} is not in {parent}")
        used = {s.window: s.used for s in quota.usage(name).limits}
        if sorted(str(w) for w in used) != sorted(USER_WINDOWS) or any(
            used[w] != TOKENS for w in USER_WINDOWS
        ):
            raise RuntimeError(f"populate: {name} shows {used}, not {TOKENS} per user window")
        month = {s.window: s.used for s in quota.usage(parent).limits}.get("month")
        if month != TOKENS * USERS_PER_COMPANY:
            raise RuntimeError(f"populate: {parent} used {month} this month")
