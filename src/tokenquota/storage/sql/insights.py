"""Top consumers in one aggregate query over the ledger, on SQLite and PostgreSQL.

Written against columns only (the events, event_subjects and subject_parents
tables), so it stays right whichever indexes the hot path keeps. The amount
is read from the event's ``amounts`` JSON as a 64-bit integer of units, as
the ledger stores it (storage/ledger_rows.py). ``event_subjects`` has one row
per charged subject and event, so the sum per subject is a GROUP BY over it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tokenquota.domain.clock import to_micros
from tokenquota.domain.ledger import USAGE_KINDS
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Spent
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database


class SqlInsights:
    def __init__(self, db: Database, flush: Callable[[], Any] | None = None) -> None:
        self.db = db
        self.flush = flush

    def top_consumers(
        self,
        metric: Metric,
        *,
        start: datetime | None,
        end: datetime | None,
        parent: SubjectRef | None,
        within: SubjectRef | None,
        hidden: frozenset[SubjectRef],
        kind: str | None,
        limit: int,
    ) -> list[Spent]:
        if self.flush is not None:
            self.flush()
        query = _query(metric, start, end, parent, within, hidden, kind, limit)
        with self.db.tx() as conn:
            rows = conn.execute(query).all()
        return [Spent(SubjectRef.parse(r.subject), int(r.units), int(r.events)) for r in rows]


def _query(
    metric: Metric,
    start: datetime | None,
    end: datetime | None,
    parent: SubjectRef | None,
    within: SubjectRef | None,
    hidden: frozenset[SubjectRef],
    kind: str | None,
    limit: int,
) -> sa.Select[Any]:
    ranked = t.event_subjects.alias("ranked")
    events = t.events
    amount = sa.cast(events.c.amounts[metric.value].as_string(), sa.BigInteger)
    units = sa.func.sum(amount).label("units")
    query = (
        sa.select(ranked.c.subject, units, sa.func.count().label("events"))
        .select_from(ranked.join(events, events.c.id == ranked.c.event_id))
        .where(events.c.kind.in_(sorted(USAGE_KINDS)), amount != 0)  # NULL (absent) is not != 0
    )
    if start is not None:
        query = query.where(ranked.c.ts >= to_micros(start))
    if end is not None:
        query = query.where(ranked.c.ts < to_micros(end))
    # A link of the same event to ``also``: the event was charged to it as well.
    for also in (parent, within):
        if also is None:
            continue
        link = t.event_subjects.alias()
        query = query.where(
            sa.exists().where(
                link.c.subject == str(also),
                link.c.ts == ranked.c.ts,  # every link of an event has the event's time
                link.c.event_id == ranked.c.event_id,
            )
        )
    if parent is not None:
        sp = t.subject_parents
        query = query.where(
            sa.exists().where(sp.c.child == ranked.c.subject, sp.c.parent == str(parent))
        )
    if hidden:
        query = query.where(ranked.c.subject.not_in(sorted(map(str, hidden))))
    if kind is not None:
        # substr, not LIKE: a kind may hold "_", which LIKE reads as a wildcard.
        prefix = f"{kind}:"
        query = query.where(sa.func.substr(ranked.c.subject, 1, len(prefix)) == prefix)
    return query.group_by(ranked.c.subject).order_by(units.desc(), ranked.c.subject).limit(limit)
