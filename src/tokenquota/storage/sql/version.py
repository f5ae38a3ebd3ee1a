"""The configuration version of a SQL store: the token its snapshot and its hot steps share.

The token is the ``config_version`` row of ``meta``, given a new random value
by every configuration write in that write's transaction (absent until the
first one: ``FIRST_TOKEN``). A hot step reads it under its locks and refuses a plan
made from another one (``HotTx.read``) (storage/snapshot.py says why that is exact). Beside
Redis the token lives in Redis, where the Lua steps compare it; then
``token`` reads it and the meta row is only written, never compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.storage.snapshot import FIRST_TOKEN
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database

T = TypeVar("T")
VERSION_KEY: Final = "config_version"
# Built once: every hot step runs it, and building a statement costs more than running it.
_READ: Final = sa.select(t.meta.c.value).where(t.meta.c.key == VERSION_KEY)


class SqlVersion:
    def __init__(self, db: Database, token: Callable[[], str] | None = None) -> None:
        self.db = db
        self.token = token

    def current(self) -> str:
        if self.token is not None:
            return self.token()
        with self.db.tx() as conn:
            return self.read(conn)

    def read(self, conn: Connection) -> str:
        return conn.execute(_READ).scalar() or FIRST_TOKEN

    def bump(self, conn: Connection) -> None:
        """Inside a configuration write (under the exclusive lock): a version no one has seen."""
        token = uuid4().hex
        conn.execute(
            self.db.insert(t.meta)
            .values(key=VERSION_KEY, value=token)
            .on_conflict_do_update(index_elements=[t.meta.c.key], set_={"value": token})
        )

    def versioned(self, read: Callable[[Connection], T]) -> tuple[str, T]:
        """``read``'s answer and the version read before it, in one transaction.

        Read first, the token is never newer than the data (storage/snapshot.py).
        """
        if self.token is not None:
            version = self.token()
            with self.db.tx() as conn:
                return version, read(conn)
        with self.db.tx() as conn:
            return self.read(conn), read(conn)
