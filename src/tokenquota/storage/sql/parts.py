"""What every part of the SQL catalog shares: its handles, the write, the audit, rule rows.

The catalog is one object (``SqlCatalog`` in catalog.py) assembled from parts
so each kind of configuration has its own file: subjects and resource quotas
(subjects.py), rules, plans and the tracked pairs (rules.py), keys (keys.py).
This base holds what they all lean on: the exclusive write that moves the
version token, the audit log every write appends to, and the shape of a rule
row, which subjects.py also reads when it deletes a subject's overrides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.clock import from_micros, to_micros
from tokenquota.domain.ledger import AuditEntry
from tokenquota.domain.limits import LimitKey, Rule
from tokenquota.domain.thresholds import thresholds_from_text, thresholds_text
from tokenquota.storage.base import Page, Scope
from tokenquota.storage.snapshot import Snapshot
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.ledger import Counters
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.sql.version import SqlVersion


class CatalogBase:
    db: Database
    counters: Counters
    version: SqlVersion
    snapshot: Snapshot

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A configuration write: exclusive, moving the version in the same transaction."""
        with self.db.tx(write=True) as conn:
            self.version.bump(conn)
            yield conn
        self.snapshot.invalidate()  # this replica reads its own write at once

    def write_audit(
        self,
        conn: Connection,
        at: datetime,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
    ) -> None:
        conn.execute(
            t.audit.insert().values(
                at=to_micros(at),
                actor=actor,
                action=action,
                target=target,
                before=before,
                after=after,
            )
        )

    def audit(self, *, target: str | None, offset: int, limit: int) -> Page[AuditEntry]:
        query = sa.select(t.audit)
        if target is not None:
            query = query.where(t.audit.c.target == target)
        with self.db.tx() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
            rows = conn.execute(query.order_by(t.audit.c.id).offset(offset).limit(limit)).all()
        return Page(
            [
                AuditEntry(r.id, from_micros(r.at), r.actor, r.action, r.target, r.before, r.after)
                for r in rows
            ],
            total,
            offset,
            limit,
        )


def rules_in(conn: Connection, scope: Scope) -> list[Rule]:
    rows = conn.execute(scope_filter(sa.select(t.rules), scope))
    return sorted(
        (
            Rule(
                LimitKey.from_storage(r.metric, r.window),
                r.value,
                r.shadow,
                thresholds_from_text(r.thresholds),
            )
            for r in rows
        ),
        key=lambda r: r.key.sort_key,
    )


def scope_filter(stmt: Any, scope: Scope) -> Any:
    return stmt.where(t.rules.c.layer == scope.layer.value, t.rules.c.scope == scope.name)


def rule_row(scope: Scope, rule: Rule) -> dict[str, Any]:
    return {
        "layer": scope.layer.value,
        "scope": scope.name,
        "metric": rule.key.metric.value,
        "window": rule.key.window_key,
        "value": rule.value,
        "shadow": rule.shadow,
        "thresholds": thresholds_text(rule.thresholds),
    }
