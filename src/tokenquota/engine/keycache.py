"""API keys an engine has looked up lately, so a request need not ask the store.

Every HTTP request authenticates; asking the store each time put one SQL
round trip in front of every decision. An entry holds what the store said
about one key id (the key and its secret's hash) and lives at most
``seconds`` by the engine's clock: that is the bound within which a key
revoked elsewhere (another replica, the CLI) stops working here. The secret
a caller presents is still compared with the hash on every request, so the
cache never decides who a caller is, only spares the read. Only ids the
store knows are kept, at most ``size`` of them (least recently used leave
first): an unknown id is never cached, so random keys cannot fill memory.

With ``on_store_error="open"`` the same entries are the keys this process has
seen live: ``last_known`` answers them whatever their age while the store
is unreachable (docs/outages.md), so a service can still consume then.

``answer`` is the part of ``Quota.authenticate`` that needs no store, so the
HTTP layer can authenticate a cached key on its event loop and send only a
miss to a thread (docs/architecture.md, "The request path").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from enum import Enum
from typing import Final, Literal

from tokenquota.domain.clock import Clock
from tokenquota.domain.errors import ValidationError
from tokenquota.domain.keys import ApiKey, secret_matches, split_key

KEY_CACHE_SECONDS: Final = 1.0  # the default bound, and the largest one allowed
MAX_CACHED_KEYS: Final = 10_000


class Miss(Enum):
    """The cache cannot say: only the store can (a sentinel, not an answer)."""

    MISS = "miss"


MISS: Final = Miss.MISS


class KeyCache:
    """Live keys by id, each for at most ``seconds``; ``seconds=0`` turns it off."""

    def __init__(
        self,
        clock: Clock,
        seconds: float = KEY_CACHE_SECONDS,
        size: int = MAX_CACHED_KEYS,
        *,
        keep_last_known: bool = False,
    ) -> None:
        if isinstance(seconds, bool) or not 0 <= seconds <= KEY_CACHE_SECONDS:
            raise ValidationError(
                "key_cache_seconds", f"must be between 0 and {KEY_CACHE_SECONDS:g}"
            )
        self.clock = clock
        self.ttl = timedelta(seconds=seconds)
        self.size = size
        self.keep_last_known = keep_last_known
        self._entries: OrderedDict[str, tuple[datetime, ApiKey, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key and hash stored under ``key_id`` if fetched within the bound, else None."""
        if not self.ttl:
            return None
        now = self.clock.now()
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            fetched, key, hashed = entry
            # A clock set back makes an entry's age negative: not to be trusted either.
            if not fetched <= now < fetched + self.ttl:
                if not self.keep_last_known:
                    del self._entries[key_id]
                return None
            self._entries.move_to_end(key_id)
            return key, hashed

    def answer(self, presented: str) -> ApiKey | Literal[Miss.MISS] | None:
        """What ``Quota.authenticate`` would answer, when that needs no store; else ``MISS``.

        The same checks in the same order as the engine's cached path: a
        presented key that is not of our form is refused without a lookup; a
        fresh entry is still compared with the secret and its revocation on
        every call. An unknown id, an entry past its bound, or a disabled
        cache is a ``MISS``: the caller must ask ``Quota.authenticate``.
        """
        parts = split_key(presented)
        if parts is None:
            return None
        found = self.get(parts[0])
        if found is None:
            return MISS
        return live(found, parts[1])

    def last_known(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key as last seen live, whatever its age; only kept with ``keep_last_known``."""
        with self._lock:
            entry = self._entries.get(key_id)
            return entry[1:] if entry is not None and self.keep_last_known else None

    def put(self, key_id: str, found: tuple[ApiKey, str]) -> None:
        if not self.ttl and not self.keep_last_known:
            return
        if found[0].revoked_at is not None:  # refused anyway; forget it
            self.drop(key_id)
            return
        now = self.clock.now()
        with self._lock:
            self._entries[key_id] = (now, *found)
            self._entries.move_to_end(key_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, key_id: str) -> None:
        with self._lock:
            self._entries.pop(key_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def live(found: tuple[ApiKey, str], secret: str) -> ApiKey | None:
    """The key, if ``secret`` is its secret and it is not revoked: the one check of a
    presented key, cached or read from the store."""
    key, stored = found
    if not secret_matches(secret, stored) or key.revoked_at is not None:
        return None
    return key
