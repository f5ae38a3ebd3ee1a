"""SQLite: counters and event links kept in their primary key's order (WITHOUT ROWID).

A rowid table with a composite primary key is two b-trees: the rows in rowid
order and an index in key order. Every consume upserts a dozen counters and
inserts one link per charged subject, so it dirtied pages of both, and each
dirty page is a frame of the WAL its commit writes and syncs. A WITHOUT ROWID
table is the one b-tree in key order: a subject's counters sit together,
the hot read is one descent per range, and a commit writes fewer frames
(docs/performance-log.md has the counts). SQLite cannot change this in place, so
each table is copied into a new one and renamed; that reads the table once,
at upgrade. The columns, their types and the primary keys stay as they were.

PostgreSQL has no rowid: nothing changes there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

REF = sa.String(161)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _columns(table: str) -> list[sa.schema.SchemaItem]:
    # As 0001 created them; written out so the migration means the same forever.
    if table == "counters":
        return [
            sa.Column("subject", REF, nullable=False),
            sa.Column("metric", sa.String(32), nullable=False),
            sa.Column("window", sa.String(32), nullable=False),
            sa.Column("bucket", sa.BigInteger, nullable=False),
            sa.Column("value", sa.BigInteger, nullable=False),
            sa.PrimaryKeyConstraint("subject", "metric", "window", "bucket", name="pk_counters"),
        ]
    return [
        sa.Column("subject", REF, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("subject", "ts", "event_id", name="pk_event_subjects"),
    ]


_NAMES = {
    "counters": 'subject, metric, "window", bucket, value',
    "event_subjects": "subject, ts, event_id",
}


def _rebuild(table: str, *, with_rowid: bool) -> None:
    new = f"{table}_rebuilt"
    op.create_table(new, *_columns(table), sqlite_with_rowid=with_rowid)
    # In key order, so the new b-tree is filled by appends.
    columns = _NAMES[table]
    key = columns.removesuffix(", value")
    op.execute(f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {table} ORDER BY {key}")
    op.drop_table(table)
    op.rename_table(new, table)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _NAMES:
        _rebuild(table, with_rowid=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _NAMES:
        _rebuild(table, with_rowid=True)
