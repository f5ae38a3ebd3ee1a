"""Backends, chosen by the URL scheme: ``memory://``, ``sqlite:///path``.

PostgreSQL and Redis arrive with their own issue and register here.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tokenquota.domain.errors import ValidationError
from tokenquota.storage.base import Layer, Page, RuleSet, Scope, Store

__all__ = ["Layer", "Page", "RuleSet", "Scope", "Store", "open_store"]


def open_store(url: str, tz: ZoneInfo) -> Store:
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        from tokenquota.storage.memory import MemoryStore

        return MemoryStore(tz)
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        from tokenquota.storage.sql import SqlStore

        return SqlStore(url, tz)
    raise ValidationError(
        "db", f"unsupported store URL {url!r}; use memory:// or sqlite:///path/to/file.db"
    )
