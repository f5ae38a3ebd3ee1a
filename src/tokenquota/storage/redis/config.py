"""The configuration version of a Redis store: a token in Redis, one copy per ledger shard.

Beside Redis the configuration stays in SQL, but its version token lives in
Redis (``tq:{L<n>}:cfg``), where every ledger step (``step.lua``) compares it
with the version its plan was made from and answers "stale" when they
differ. The SQL catalog's snapshot (storage/snapshot.py) reads the token from
here (``current``), before the SQL data it files under it; every
configuration write moves it once its SQL transaction committed (``bump``,
called through ``Database.after_write``). docs/redis.md describes it.
"""

from __future__ import annotations

import uuid
from typing import Any

from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout


class RedisVersion:
    def __init__(self, client: Any, layout: Layout) -> None:
        self.redis = client
        self.layout = layout

    def current(self) -> str:
        """The token of shard 0; every shard holds the same one once a bump is done."""
        raw = call(lambda: self.redis.get(self.layout.config(0)))
        return raw.decode() if raw else "0"

    def bump(self) -> None:
        """After a configuration write: every replica's snapshot is stale from now on."""
        token = uuid.uuid4().hex
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.layout.shards):
            pipe.set(self.layout.config(shard), token)
        call(pipe.execute)
