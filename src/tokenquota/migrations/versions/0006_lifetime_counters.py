"""Lifetime counters: the ``total`` window of every counter metric is always kept.

The 63-bit bound (domain/bounds.py) is checked on them, and a new ``total``
limit reads them instead of replaying the ledger. This marks the pairs as
tracked and, for each one no limit tracked before, counts the ledger once,
here, so an upgraded store starts with the right numbers. (A Redis
deployment keeps its counters in Redis: run ``tokenquota rebuild`` after
upgrading it.)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Kept here rather than imported, so the migration means the same thing forever.
COUNTERS = ("tokens", "input_tokens", "output_tokens", "requests", "credits")
MAX_UNITS = 2**63 - 1
BATCH = 500

tracked = sa.table("tracked", sa.column("metric"), sa.column("window"))
counters = sa.table(
    "counters",
    sa.column("subject"),
    sa.column("metric"),
    sa.column("window"),
    sa.column("bucket"),
    sa.column("value"),
)
events = sa.table(
    "events",
    sa.column("id"),
    sa.column("kind"),
    sa.column("subject"),
    sa.column("charged"),
    sa.column("amounts"),
    sa.column("resource"),
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    conn = op.get_bind()
    known = {r.metric for r in conn.execute(sa.select(tracked).where(tracked.c.window == "total"))}
    new = [m for m in COUNTERS if m not in known]
    if not new:
        return
    conn.execute(tracked.insert(), [{"metric": m, "window": "total"} for m in new])
    totals: dict[tuple[str, str], int] = defaultdict(int)
    last = 0
    while True:
        rows = conn.execute(
            sa.select(events)
            .where(events.c.kind == "consume", events.c.id > last)
            .order_by(events.c.id)
            .limit(BATCH)
        ).all()
        for row in rows:
            amounts = _json(row.amounts)
            series = list(_json(row.charged))
            if row.resource:
                # domain.subjects.consumer_series, as it is spelled today.
                series.append(f"{row.resource}~{row.subject}")
            for metric in new:
                units = int(amounts.get(metric, 0))
                if units:
                    for name in series:
                        totals[(name, metric)] += units
        if len(rows) < BATCH:
            break
        last = rows[-1].id
    # A ledger that went past the bound before it was enforced (SQLite stored
    # such sums as floats) pins the counter at the bound: nothing more fits.
    values = [
        {"subject": s, "metric": m, "window": "total", "bucket": 0, "value": min(v, MAX_UNITS)}
        for (s, m), v in totals.items()
    ]
    for start in range(0, len(values), BATCH):
        conn.execute(counters.insert(), values[start : start + BATCH])


def downgrade() -> None:
    # Lifetime pairs a limit still names stay: their counters are that limit's.
    conn = op.get_bind()
    rules = sa.table("rules", sa.column("metric"), sa.column("window"))
    named = {r.metric for r in conn.execute(sa.select(rules).where(rules.c.window == "total"))}
    unnamed = [m for m in COUNTERS if m not in named]
    conn.execute(tracked.delete().where(tracked.c.window == "total", tracked.c.metric.in_(unnamed)))
    conn.execute(
        counters.delete().where(counters.c.window == "total", counters.c.metric.in_(unnamed))
    )
