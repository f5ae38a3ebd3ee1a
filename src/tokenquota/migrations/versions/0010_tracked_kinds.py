"""The tracked pairs per kind of series: ``tracked`` gains ``kind`` in its primary key.

Every existing row becomes a wildcard row (``*``, every kind: domain/tracking.py),
so an upgraded database counts exactly what it counted before and no counter
moves: ``tokenquota rebuild`` is not needed. Pairs named from now on are
tracked for the kind of the rule that names them; the old ones stay store-wide.
A downgrade keeps one row per (metric, window), store-wide again (the
counters of a pair some kinds did not count then fill in only by a rebuild).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WILDCARD = "*"  # domain.tracking.WILDCARD, as it is spelled today


def upgrade() -> None:
    with op.batch_alter_table("tracked", recreate="auto") as batch:
        batch.add_column(sa.Column("kind", sa.String(32), nullable=False, server_default=WILDCARD))
        batch.drop_constraint("pk_tracked", type_="primary")
        batch.create_primary_key("pk_tracked", ["kind", "metric", "window"])
    with op.batch_alter_table("tracked", recreate="auto") as batch:
        batch.alter_column("kind", server_default=None, existing_type=sa.String(32))


def downgrade() -> None:
    conn = op.get_bind()
    tracked = sa.table("tracked", sa.column("kind"), sa.column("metric"), sa.column("window"))
    pairs = {(r.metric, r.window) for r in conn.execute(sa.select(tracked))}
    conn.execute(tracked.delete())
    with op.batch_alter_table("tracked", recreate="auto") as batch:
        batch.drop_constraint("pk_tracked", type_="primary")
        batch.drop_column("kind")
        batch.create_primary_key("pk_tracked", ["metric", "window"])
    old = sa.table("tracked", sa.column("metric"), sa.column("window"))
    if pairs:
        conn.execute(old.insert(), [{"metric": m, "window": w} for m, w in sorted(pairs)])
