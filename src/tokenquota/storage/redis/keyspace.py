"""Reaching Redis, and knowing the keyspace there is this deployment's and intact.

A keyspace is stamped with the deployment id kept in the SQL catalog, and
with an epoch the SQL side remembers: a keyspace another deployment owns is
refused (issue 11, item 7), and one that lost our data is noticed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import Connection

from tokenquota.domain.errors import StoreUnavailable, StoreUnreachable
from tokenquota.storage.redis.layout import Layout
from tokenquota.storage.sql import schema as t
from tokenquota.storage.sql.tx import Database

log = logging.getLogger("tokenquota.redis")


class KeyspaceTaken(StoreUnavailable):
    """The Redis keyspace belongs to another deployment: this store will not start."""

    code = "redis_keyspace_taken"


def connect(url: str) -> tuple[Any, bool, str]:
    """A client for ``url`` (standalone or cluster, found by asking) and the key prefix.

    ``?prefix=NAME`` keeps several stores apart in one Redis (default ``tq``).
    """
    import redis
    from redis.cluster import RedisCluster

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "tq")
    clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
    try:
        client: Any = redis.Redis.from_url(clean, socket_timeout=10, socket_connect_timeout=5)
        info = client.info("cluster")
        if info.get("cluster_enabled"):
            client.close()
            client = RedisCluster.from_url(clean, socket_timeout=10, socket_connect_timeout=5)
            return client, True, prefix
        return client, False, prefix
    except redis.RedisError as exc:
        raise StoreUnreachable(f"Redis did not answer: {exc}") from exc


def call(fn: Any) -> Any:
    """Run one Redis call; a Redis that does not answer is a 503, like a database."""
    import redis

    try:
        return fn()
    except redis.RedisError as exc:
        raise StoreUnreachable(f"Redis did not answer: {exc}") from exc


def warn_on_eviction(client: Any) -> None:
    """An evicted counter reads as zero: say so at start if Redis may evict."""
    import redis

    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:  # CONFIG is often disabled on managed Redis
        return
    if policy not in (None, "noeviction", b"noeviction"):
        log.warning(
            "Redis maxmemory-policy is %s: set noeviction, or an evicted counter "
            "will be read as zero (docs/redis.md)",
            policy,
        )


class Keyspace:
    """The stamp and the epoch of one keyspace, checked against the SQL catalog."""

    def __init__(self, db: Database, client: Any, layout: Layout) -> None:
        self.db = db
        self.redis = client
        self.layout = layout
        self.deployment_id = ""

    def _deployment(self) -> str:
        """This deployment's id, kept in the SQL catalog and made on first use."""
        # The exclusive SQL write lock, so two first starts agree on one id (no
        # configuration bump: no limit changes).
        with self.db.tx(write=True, announce=False) as conn:
            found = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "deployment_id")
            ).scalar()
            if found is None:
                found = uuid.uuid4().hex
                conn.execute(t.meta.insert().values(key="deployment_id", value=found))
            return str(found)

    def stamp(self, prefix: str) -> None:
        """Claim the keyspace under our prefix, or refuse one that another deployment owns.

        Two deployments on one keyspace would move each other's events into
        their own ledgers and count each other's usage (issue 11, item 7).
        An unstamped keyspace is ours to claim, unless it holds an epoch our
        SQL database did not write: then a deployment from before stamps
        writes there.
        """
        self.deployment_id = self._deployment()
        with self.db.tx() as conn:
            epoch = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "redis_epoch")
            ).scalar()
        key = self.layout.deployment()
        claimed = call(lambda: self.redis.set(key, self.deployment_id, nx=True))
        raw = call(lambda: self.redis.get(key))
        owner = raw.decode() if raw else self.deployment_id
        if claimed:
            theirs = call(lambda: self.redis.get(self.layout.epoch()))
            if theirs is not None and theirs.decode() != epoch:
                call(lambda: self.redis.delete(key))  # not ours to claim after all
                owner = f"an unstamped deployment (Redis epoch {theirs.decode()})"
        if owner != self.deployment_id:
            raise KeyspaceTaken(
                f"the Redis keyspace under prefix {prefix!r} belongs to deployment {owner}, "
                f"not to this one ({self.deployment_id}, the database this store opened): "
                "give each deployment its own keyspace with ?prefix=NAME in the Redis URL"
            )

    def open_epoch(self, rebuild: Callable[[Connection], int]) -> None:
        """Tell a new Redis from one that lost our data.

        The SQL store remembers the epoch it wrote into Redis. No epoch in SQL:
        this is the first start on Redis, so fill Redis from the ledger. An
        epoch in SQL that Redis lacks: Redis lost its data; every enforcing
        operation then answers 503 (the scripts find no event sequence) until
        ``tokenquota rebuild`` restores it.
        """
        # The exclusive SQL write lock, but no configuration bump: opening changes
        # no limit, and a bump per starting replica would send every running
        # request back to plan again.
        with self.db.tx(write=True, announce=False) as conn:
            stored = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "redis_epoch")
            ).scalar()
            if stored is None:
                rebuild(conn)
                return
        current = call(lambda: self.redis.get(self.layout.epoch()))
        if current is None or current.decode() != stored:
            log.error("Redis has lost tokenquota's data: run `tokenquota rebuild` to restore it")

    def set_epoch(self, conn: Connection) -> None:
        """After a rebuild: Redis holds the ledger's state under a new epoch."""
        epoch = uuid.uuid4().hex
        conn.execute(t.meta.delete().where(t.meta.c.key == "redis_epoch"))
        conn.execute(t.meta.insert().values(key="redis_epoch", value=epoch))
        call(lambda: self.redis.set(self.layout.epoch(), epoch))
        call(lambda: self.redis.set(self.layout.deployment(), self.deployment_id))
