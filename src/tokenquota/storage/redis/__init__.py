"""Redis (or Valkey, or Redis Cluster) for the hot counters; see store.py and docs/redis.md."""

from tokenquota.storage.redis.store import RedisStore

__all__ = ["RedisStore"]
