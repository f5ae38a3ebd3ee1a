"""How often each shadow limit would have refused: a statistic kept in SQL.

Both meters count here (the Redis one too: a statistic decides nothing, so
it need not be in the atomic step).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.decisions import Decision
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database


class ShadowHits:
    def __init__(self, db: Database) -> None:
        self.db = db

    def count(self, conn: Connection, decision: Decision) -> None:
        for status in decision.shadow_blocked:
            stmt = self.db.insert(t.shadow_hits).values(
                subject=status.subject, metric=status.metric, window=status.window or "", hits=1
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["subject", "metric", "window"],
                    set_={"hits": t.shadow_hits.c.hits + 1},
                )
            )

    def of(self, ref: SubjectRef) -> dict[LimitKey, int]:
        with self.db.tx() as conn:
            rows = conn.execute(sa.select(t.shadow_hits).where(t.shadow_hits.c.subject == str(ref)))
            return {LimitKey.from_storage(r.metric, r.window): r.hits for r in rows}
