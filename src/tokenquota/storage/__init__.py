"""Backends, chosen by the URL scheme: ``memory://``, ``sqlite:///path``, ``postgresql://``.

Redis arrives with its own issue and registers here.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tokenquota.domain.errors import ValidationError
from tokenquota.storage.base import Layer, Page, RuleSet, Scope, Store

__all__ = ["Layer", "Page", "RuleSet", "Scope", "Store", "open_store"]


def open_store(url: str, tz: ZoneInfo | None, *, move_timezone: bool = False) -> Store:
    """``tz`` None takes the store's own zone (UTC for a new one)."""
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        from tokenquota.storage.memory import MemoryStore

        return MemoryStore(tz)
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        from tokenquota.storage.sql import SqlStore

        return SqlStore(url, tz, move_timezone=move_timezone)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from tokenquota.storage.sql import SqlStore

        # psycopg 3 is the driver we ship (the `postgres` extra), whatever the URL says.
        driver_url = "postgresql+psycopg:" + url.partition(":")[2]
        return SqlStore(driver_url, tz, move_timezone=move_timezone)
    # Only the scheme is echoed: a full URL may carry a password.
    raise ValidationError(
        "db",
        f"unsupported store scheme {scheme!r}; use memory://, sqlite:///path/to/file.db "
        "or postgresql://user@host/db",
    )
