"""Which ``Insights`` answers for a store: the SQL queries where a database holds
the ledger (SQL and Redis stores), else the ledger walk (the memory store).

Chosen here rather than as a ``Store`` method so the backends' hot files stay
as they are: each answer comes from a file of its own.
"""

from __future__ import annotations

from tokenquota.storage.base import Insights, Store
from tokenquota.storage.memory.insights import LedgerInsights
from tokenquota.storage.sql.insights import SqlInsights
from tokenquota.storage.sql.tx import Database


def insights_of(store: Store) -> Insights:
    db = getattr(store, "db", None)
    if isinstance(db, Database):
        # A Redis store moves events to SQL in the background: flushed first, so an
        # answer counts every event acknowledged before it (as its events() does).
        mover = getattr(store, "mover", None)
        return SqlInsights(db, flush=getattr(mover, "flush", None))
    return LedgerInsights(store)
