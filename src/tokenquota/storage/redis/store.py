"""The Redis backend: the SQL catalog and ledger, with a Redis meter for the hot state.

It *has* a SQL catalog (subjects, limits, plans, keys, audit) and a SQL
ledger; the meter (meter.py) keeps counters, holds, grant balances and
idempotency in Redis, and the mover (mover.py) copies its events into the
ledger. The planner reads configuration through the SQL catalog's snapshot
(storage/snapshot.py), whose version token lives in Redis (config.py) so
that every ledger step can check it; every configuration write announces
itself and moves it. docs/redis.md states what each failure loses.
"""

from __future__ import annotations

import logging
import threading
from zoneinfo import ZoneInfo

from tokenquota.domain.errors import StoreUnavailable
from tokenquota.storage.composed import ComposedStore
from tokenquota.storage.redis.config import RedisVersion
from tokenquota.storage.redis.counters import RedisCounters
from tokenquota.storage.redis.keyspace import (
    Keyspace,
    KeyspaceTaken,
    call,
    connect,
    warn_on_eviction,
)
from tokenquota.storage.redis.layout import CLUSTER_SHARDS, Layout
from tokenquota.storage.redis.meter import RedisMeter
from tokenquota.storage.redis.mover import Mover
from tokenquota.storage.redis.ops import Runner
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlLedger
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.sql.webhooks import SqlWebhooks

__all__ = ["KeyspaceTaken", "RedisStore"]

log = logging.getLogger("tokenquota.redis")


class RedisStore(ComposedStore):
    catalog: SqlCatalog
    meter: RedisMeter

    def __init__(
        self,
        url: str,
        redis_url: str,
        tz: ZoneInfo | None,
        *,
        move_timezone: bool = False,
        migrate: bool = True,
    ) -> None:
        self.redis, self.cluster, prefix = connect(redis_url)
        self.layout = Layout(prefix, CLUSTER_SHARDS if self.cluster else 1)
        self.version = RedisVersion(self.redis, self.layout)
        warn_on_eviction(self.redis)
        try:
            self.db = Database(url, migrate=migrate)
        except BaseException:
            self.redis.close()
            raise
        ledger = SqlLedger(self.db)
        self.mover = Mover(self.db, ledger, self.redis, self.layout)
        counters = RedisCounters(self.redis, self.cluster, self.layout, ledger, self.mover)
        catalog = SqlCatalog(self.db, counters, token=self.version.current)
        self.db.after_write.append(self._config_written)
        self.keyspace = Keyspace(self.db, self.redis, self.layout)
        ops = Runner(self.db, self.redis, self.cluster, self.layout)
        meter = RedisMeter(self.db, catalog, ledger, counters, self.keyspace, ops)
        super().__init__(catalog, meter)
        self.alerts = SqlWebhooks(self.db)  # the mover writes the alert events there
        try:
            self.keyspace.stamp(prefix)
            self.db.pin_timezone(tz, move_timezone, meter.rebuild_in)
            self.keyspace.open_epoch(meter.rebuild_in)
        except BaseException:
            self.redis.close()
            self.db.close()
            raise
        self.mover.start()

    @property
    def deployment_id(self) -> str:
        return self.keyspace.deployment_id

    # What tests pause the mover with.
    @property
    def _stop(self) -> threading.Event:
        return self.mover.stop

    @property
    def _mover(self) -> threading.Thread:
        return self.mover.thread

    def _config_written(self) -> None:
        """After a write transaction that announces itself (configuration, grants, rebuild)."""
        self.version.bump()
        self.catalog.config_stale()  # this replica reads its own write at once

    # lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        if self.mover.stop.is_set():
            # Closed already (a quota may be closed twice), or a test stopped the mover:
            # the step's own connections are closed either way, never left to the collector.
            self.meter.ops.close()
            return
        self.mover.stop.set()
        self.mover.thread.join(timeout=10)
        try:
            self.mover.flush()
        except StoreUnavailable as exc:  # the next opener moves what is left
            log.warning("could not move the last events to the ledger: %s", exc)
        self.meter.ops.close()
        self.redis.close()
        self.db.close()

    def ping(self) -> None:
        self.db.ping()
        call(lambda: self.redis.ping())

    def flush(self) -> int:
        """Move every event in the Redis streams into the SQL ledger; returns how many."""
        return self.mover.flush()

    def quarantined(self) -> list[dict[str, str]]:
        """Every quarantined event, oldest first per shard, for an operator to inspect."""
        return self.mover.quarantined()
