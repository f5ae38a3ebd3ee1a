"""The SQL catalog: one object over subjects, rules, plans, defaults, keys, resource quotas.

Read often and written rarely: every write of configuration here takes the
exclusive lock (see ``Database.tx``) and moves the version token in the same
transaction (the ``config_version`` row of ``meta``), which every hot step
reads under its shared lock to refuse a plan made from an older version;
the planner reads through this catalog's ``Snapshot`` (storage/snapshot.py).
Beside Redis the token lives in Redis instead (``token``), moved when the
write announces itself. Counters backfilled for a newly tracked window go to
whatever ``Counters`` the store was composed with.

Where a change goes: the write, audit and rule-row shapes every part shares
are in parts.py; subjects and their parents in subjects.py; rules, plans,
defaults and the tracked pairs in rules.py; resource quotas in resources.py;
API keys in keys.py. This file assembles them and answers the planner's
versioned reads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from tokenquota.domain.keys import ApiKey
from tokenquota.domain.subjects import SubjectRef, ancestors_of
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.base import Page, RuleSet
from tokenquota.storage.snapshot import Snapshot, View
from tokenquota.storage.sql.keys import SqlKeys
from tokenquota.storage.sql.ledger import Counters
from tokenquota.storage.sql.resources import SqlResources
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.sql.version import SqlVersion


class SqlCatalog(SqlResources):
    def __init__(
        self, db: Database, counters: Counters, *, token: Callable[[], str] | None = None
    ) -> None:
        self.db = db
        self.counters = counters
        self.version = SqlVersion(db, token)  # token: where it lives beside Redis
        self.snapshot = Snapshot(self)
        self.keys = SqlKeys(db, self.write_audit)

    # the configuration snapshot (storage/snapshot.py) and its version (version.py) ----
    def config(self) -> View:
        return self.snapshot.view()

    def config_stale(self) -> None:
        self.snapshot.invalidate()

    def config_version(self) -> str:
        return self.version.current()

    def load_rule_sets(
        self, ref: SubjectRef, *, with_ancestors: bool
    ) -> tuple[str, list[tuple[SubjectRef, RuleSet]]]:
        return self.version.versioned(lambda conn: self._chain(conn, ref, with_ancestors))

    def load_ancestors(self, ref: SubjectRef) -> tuple[str, list[SubjectRef]]:
        return self.version.versioned(
            lambda conn: ancestors_of(ref, lambda r: self._parents(conn, r))
        )

    def load_resource_quota(self, resource: SubjectRef) -> tuple[str, dict[str, Any] | None]:
        return self.version.versioned(lambda conn: self._resource_quota(conn, resource))

    def load_tracked(self) -> tuple[str, Tracking]:
        return self.version.versioned(self.tracked)

    # API keys (keys.py) ---------------------------------------------------------
    def create_key(self, key: ApiKey, secret_hash: str, *, actor: str) -> None:
        self.keys.create(key, secret_hash, actor=actor)

    def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        return self.keys.get(key_id)

    def list_keys(self, *, offset: int, limit: int) -> Page[ApiKey]:
        return self.keys.list(offset=offset, limit=limit)

    def revoke_key(self, key_id: str, *, actor: str, now: datetime) -> bool:
        return self.keys.revoke(key_id, actor=actor, now=now)
