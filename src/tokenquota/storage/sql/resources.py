"""Resource quotas in SQL: the policy document a resource subject carries.

A quota names limits, so writing one tracks their (metric, window) pairs like
a rule does (rules.py), and it moves the configuration version like every
other catalog write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.clock import to_micros
from tokenquota.domain.ledger import resource_target
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import Page
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.rules import SqlRules


class SqlResources(SqlRules):
    def get_resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        with self.db.tx() as conn:
            return self._resource_quota(conn, resource)

    def _resource_quota(self, conn: Connection, resource: SubjectRef) -> dict[str, Any] | None:
        row = conn.execute(
            sa.select(t.resource_quotas.c.quota).where(
                t.resource_quotas.c.resource == str(resource)
            )
        ).first()
        return dict(row.quota) if row else None

    def put_resource_quota(
        self,
        resource: SubjectRef,
        quota: dict[str, Any],
        keys: Sequence[LimitKey],
        *,
        actor: str,
        now: datetime,
    ) -> None:
        with self._write() as conn:
            before = self._resource_quota(conn, resource)
            self.ensure_subject(conn, resource, now)
            stamp = to_micros(now)
            if before is None:
                conn.execute(
                    t.resource_quotas.insert().values(
                        resource=str(resource), quota=quota, created_at=stamp, updated_at=stamp
                    )
                )
            else:
                conn.execute(
                    t.resource_quotas.update()
                    .where(t.resource_quotas.c.resource == str(resource))
                    .values(quota=quota, updated_at=stamp)
                )
            self._track(conn, resource.kind, keys, now)
            if before != quota:
                target = resource_target(str(resource))
                self.write_audit(conn, now, actor, "quota.set", target, before, quota)

    def delete_resource_quota(self, resource: SubjectRef, *, actor: str, now: datetime) -> bool:
        with self._write() as conn:
            before = self._resource_quota(conn, resource)
            if before is None:
                return False
            conn.execute(
                t.resource_quotas.delete().where(t.resource_quotas.c.resource == str(resource))
            )
            target = resource_target(str(resource))
            self.write_audit(conn, now, actor, "quota.delete", target, before, None)
            return True

    def list_resource_quotas(
        self, *, offset: int, limit: int
    ) -> Page[tuple[SubjectRef, dict[str, Any]]]:
        with self.db.tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(t.resource_quotas)
            ).scalar_one()
            rows = conn.execute(
                sa.select(t.resource_quotas)
                .order_by(t.resource_quotas.c.resource)
                .offset(offset)
                .limit(limit)
            ).all()
        return Page(
            [(SubjectRef.parse(r.resource), dict(r.quota)) for r in rows], total, offset, limit
        )
