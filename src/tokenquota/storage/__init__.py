"""Backends, chosen by the URL scheme: ``memory://``, ``sqlite:///path``.

PostgreSQL and Redis arrive with their own issue and register here.
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
    # Only the scheme is echoed: a full URL may carry a password.
    raise ValidationError(
        "db", f"unsupported store scheme {scheme!r}; use memory:// or sqlite:///path/to/file.db"
    )
