"""API keys in SQL: stored hashed, audited, and outside the configuration version.

A key is not part of what a plan reads, so writing one moves no version token
(storage/snapshot.py): the engine keeps the keys it trusts in its own bounded
cache for at most a second (engine/keycache.py), which is the bound a
revoked key is honoured within on other replicas.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.ledger import key_target
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database
from tokenquota.wire.catalog import encode_key


class Audit(Protocol):
    def __call__(
        self,
        conn: Connection,
        at: datetime,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
    ) -> None: ...


class SqlKeys:
    def __init__(self, db: Database, audit: Audit) -> None:
        self.db = db
        self.audit = audit

    def create(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        with self.db.tx(write=True, announce=False) as conn:
            conn.execute(
                t.api_keys.insert().values(
                    id=key.id,
                    role=key.role.value,
                    subject=str(key.subject) if key.subject else None,
                    name=key.name,
                    secret_hash=secret_hash,
                    created_at=to_micros(key.created_at),
                    revoked_at=None,
                )
            )
            self.audit(
                conn, key.created_at, actor, "key.create", key_target(key.id), None, encode_key(key)
            )

    def get(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self.db.tx() as conn:
            row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
        return None if row is None else (_key(row), row.secret_hash)

    def list(self, *, offset: int, limit: int) -> Page[ApiKey]:
        with self.db.tx() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t.api_keys)).scalar_one()
            rows = conn.execute(
                sa.select(t.api_keys)
                .order_by(t.api_keys.c.created_at, t.api_keys.c.id)
                .offset(offset)
                .limit(limit)
            ).all()
        return Page([_key(r) for r in rows], total, offset, limit)

    def revoke(self, key_id: str, *, actor: str, now: datetime) -> bool:
        with self.db.tx(write=True, announce=False) as conn:
            row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
            if row is None or row.revoked_at is not None:
                return False
            conn.execute(
                t.api_keys.update()
                .where(t.api_keys.c.id == key_id)
                .values(revoked_at=to_micros(now))
            )
            before = _key(row)
            after = replace(before, revoked_at=now)
            self.audit(
                conn,
                now,
                actor,
                "key.revoke",
                key_target(key_id),
                encode_key(before),
                encode_key(after),
            )
            return True


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        role=Role(row.role),
        subject=SubjectRef.parse(row.subject) if row.subject else None,
        name=row.name,
        created_at=from_micros(row.created_at),
        revoked_at=from_micros(row.revoked_at) if row.revoked_at is not None else None,
    )
