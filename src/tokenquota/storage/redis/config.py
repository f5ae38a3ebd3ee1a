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
from typing import Any, Final

from tokenquota.domain.errors import StoreUnavailable
from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout
from tokenquota.storage.redis.ops import back_off
from tokenquota.storage.snapshot import FIRST_TOKEN

BUMP_ROUNDS: Final = 20  # see bump: only racing bumps need a second one


class RedisVersion:
    def __init__(self, client: Any, layout: Layout) -> None:
        self.redis = client
        self.layout = layout

    def current(self) -> str:
        """The token of shard 0; every shard holds the same one once a bump is done."""
        raw = call(lambda: self.redis.get(self.layout.config(0)))
        return raw.decode() if raw else FIRST_TOKEN

    def bump(self) -> None:
        """After a configuration write: every replica's snapshot is stale from now on.

        On a cluster the copies live in different slots, so no one command sets
        them all, and two replicas bumping at once could leave the shards
        holding different tokens: plans (made from shard 0's) would then be
        stale on the other shards until the next write. So each bump reads the
        copies back and sets them again until it finds them all equal; the
        last bumper to finish reads them after every other one's writes.
        """
        shards = range(self.layout.shards)
        for attempt in range(BUMP_ROUNDS):
            if attempt:
                back_off(attempt)  # racing bumpers in lockstep would keep tearing each other
            token = uuid.uuid4().hex
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards:
                pipe.set(self.layout.config(shard), token)
            call(pipe.execute)
            if self.layout.shards == 1:
                return
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards:
                pipe.get(self.layout.config(shard))
            if len(set(call(pipe.execute))) == 1:
                return
        raise StoreUnavailable("the configuration version kept changing on Redis; retry")
