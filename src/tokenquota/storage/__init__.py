"""Backends, chosen by the URL scheme: ``memory://``, ``sqlite:///path``, ``postgresql://``.

A Redis URL beside a SQL one moves the hot state (counters, holds, idempotency,
the newest events) into Redis; the SQL store keeps the rest and the ledger.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tokenquota.domain.errors import ValidationError
from tokenquota.storage.base import Layer, Page, RuleSet, Scope, Store

__all__ = ["Layer", "Page", "RuleSet", "Scope", "Store", "open_store"]

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def open_store(
    url: str, tz: ZoneInfo | None, *, move_timezone: bool = False, redis: str | None = None
) -> Store:
    """``tz`` None takes the store's own zone (UTC for a new one)."""
    scheme = url.partition(":")[0].lower()
    if redis:
        return _open_redis(url, scheme, redis, tz, move_timezone)
    if scheme == "memory":
        from tokenquota.storage.memory import MemoryStore

        return MemoryStore(tz)
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        from tokenquota.storage.sql import SqlStore

        return SqlStore(url, tz, move_timezone=move_timezone)
    if scheme in POSTGRES_SCHEMES:
        from tokenquota.storage.sql import SqlStore

        return SqlStore(_driver_url(url), tz, move_timezone=move_timezone)
    # Only the scheme is echoed: a full URL may carry a password.
    raise ValidationError(
        "db",
        f"unsupported store scheme {scheme!r}; use memory://, sqlite:///path/to/file.db "
        "or postgresql://user@host/db",
    )


def _driver_url(url: str) -> str:
    # psycopg 3 is the driver we ship (the `postgres` extra), whatever the URL says.
    return "postgresql+psycopg:" + url.partition(":")[2]


def _open_redis(
    url: str, scheme: str, redis: str, tz: ZoneInfo | None, move_timezone: bool
) -> Store:
    redis_scheme = redis.partition(":")[0].lower()
    if redis_scheme not in ("redis", "rediss", "valkey"):
        raise ValidationError(
            "redis", f"unsupported scheme {redis_scheme!r}; use redis://host:port/db"
        )
    if scheme in POSTGRES_SCHEMES:
        url = _driver_url(url)
    elif not (scheme == "sqlite" or scheme.startswith("sqlite+")):
        raise ValidationError(
            "db", "Redis keeps its ledger in SQL: use postgresql://... (or sqlite:///...) with it"
        )
    from tokenquota.storage.redis import RedisStore

    if redis_scheme == "valkey":
        redis = "redis:" + redis.partition(":")[2]
    return RedisStore(url, redis, tz, move_timezone=move_timezone)
