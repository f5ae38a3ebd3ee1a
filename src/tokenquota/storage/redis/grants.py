"""Prepaid credits beside Redis: the grant rows in SQL, what is left of each in Redis.

A grant's row and audit entry live in the SQL ledger; what is left of it,
and the sum of every grant a subject was given, live in the subject's grants
hash, which a consume burns inside its script. The meter asks this module
for the grants a request may spend and for balances; ``restore`` is the
grants' part of a rebuild.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.bounds import grant_too_large
from tokenquota.domain.decisions import Prepaid
from tokenquota.domain.errors import StoreUnreachable
from tokenquota.domain.grants import Grant
from tokenquota.domain.ledger import grant_event
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.ledger_rows import event_row, grant_audit
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.ops import Runner
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlLedger
from tokenquota.storage.sql.tx import Database

# In a subject's grants hash (grant id -> what is left), the sum of every grant
# it was ever given: what the 63-bit bound is checked on. Grant ids are hex, so
# no grant can take this name.
GRANTED = "+granted"


class RedisGrants:
    def __init__(self, db: Database, catalog: SqlCatalog, ledger: SqlLedger, ops: Runner) -> None:
        self.db = db
        self.catalog = catalog
        self.ledger = ledger
        self.ops = ops
        self.redis = ops.redis
        self.layout = ops.layout

    def spendable(self, subjects: Sequence[SubjectRef]) -> dict[SubjectRef, tuple[Grant, ...]]:
        """The grants of those subjects that have any, each subject's in spending order."""
        with self.db.tx() as conn:
            return in_burn_order(self.ledger.grants_of(conn, subjects))

    def prepaid(self, subjects: Sequence[SubjectRef], now: datetime) -> list[Prepaid]:
        grants = self.spendable(subjects)
        ordered = {s: list(grants[s]) for s in subjects if s in grants}
        if not ordered:
            return []
        op = self.ops.op()
        self.ops.add_wallets(op, ordered, amount=0, enforce=False, burn=0)
        return self.ops.answers(op, self.ops.execute(op, now, dry=True))[1]

    def grants(self, subject: SubjectRef) -> list[Grant]:
        with self.db.tx() as conn:
            found = self.ledger.grants_of(conn, [subject])
        stored = sorted(found, key=lambda g: (g.granted_at, g.id))
        if not stored:
            return stored
        key = self.layout.grants(str(subject))
        values = call(lambda: self.redis.hmget(key, [g.id for g in stored]))
        return [
            Grant(g.id, g.subject, g.amount, g.granted_at, g.expires_at, int(v or 0))
            for g, v in zip(stored, values, strict=True)
        ]

    def add_grant(self, grant: Grant, *, actor: str) -> int:
        """The balance and the grant's event first (in Redis, at once), then the SQL row."""
        shard = random.randrange(self.layout.shards)
        op = self.ops.op()
        step = self.ops.ledger_step(op, shard, self.layout.stream(shard))
        gkey = self.layout.grants(str(grant.subject))
        at = op.steps.at(gkey)
        # GRANTED is added by its "cap" entry, which checks it against 2^63 - 1
        at.add("cap", [at.key(gkey), GRANTED, str(grant.amount), "credits"])
        at.add("incr", [at.key(gkey), grant.id, str(grant.amount)])
        body = event_row(grant_event(grant))
        self.ops.add_event(step, shard, body)
        replies = self.ops.execute(op, grant.granted_at)
        if replies[-1].status == "lost":
            raise StoreUnreachable("Redis has lost tokenquota's data; run `tokenquota rebuild`")
        if any(r.status == "too_large" for r in replies):
            raise grant_too_large(str(grant.subject))
        with self.db.tx(write=True) as conn:
            self.catalog.ensure_subject(conn, grant.subject, grant.granted_at)
            self.ledger.insert_grant(conn, grant)
            self.catalog.write_audit(conn, grant.granted_at, actor, *grant_audit(grant))
        return replies[-1].event_id

    def restore(self, conn: Connection, pipe: Any) -> None:
        """Recompute what is left of each grant from the ledger, and queue it on ``pipe``."""
        self.ledger.restore_grants(conn)
        for row in conn.execute(sa.select(t.grants.c.id, t.grants.c.subject, t.grants.c.remaining)):
            pipe.hset(self.layout.grants(row.subject), row.id, row.remaining)
        total = sa.func.sum(t.grants.c.amount)
        for subject, granted in conn.execute(
            sa.select(t.grants.c.subject, total).group_by(t.grants.c.subject)
        ):
            pipe.hset(self.layout.grants(subject), GRANTED, int(granted))


def in_burn_order(found: Iterable[Grant]) -> dict[SubjectRef, tuple[Grant, ...]]:
    """Grants by subject (in the order found), each subject's in spending order."""
    grants: dict[SubjectRef, list[Grant]] = {}
    for grant in found:
        grants.setdefault(grant.subject, []).append(grant)
    return {s: tuple(sorted(g, key=_burn_key)) for s, g in grants.items()}


def _burn_key(g: Grant) -> tuple[bool, datetime, datetime, str]:
    """Spending order: earliest expiry first (see domain.grants.burn_order)."""
    return (g.expires_at is None, g.expires_at or g.granted_at, g.granted_at, g.id)
