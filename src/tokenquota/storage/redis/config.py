"""The configuration cache of a Redis store, and the version check that keeps it honest.

Limits, tracked windows, grants and resource quotas are read from the SQL
catalog through this cache. Every replica remembers which version its
entries belong to; a configuration write sets a new version token in Redis
(one per shard), and every ledger step compares the version its plan was
built on with the token: a mismatch refuses the step as "stale" and the
engine plans again. docs/redis.md describes it.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from tokenquota.storage.redis.keyspace import call
from tokenquota.storage.redis.layout import Layout

# How long a replica serves limits from its cache before asking Redis whether
# they changed. Reads may lag by this much; decisions never do (see cached).
CONFIG_TTL = 1.0
MIXED = "mixed"  # a plan read from two cache versions: always stale


class ConfigCache:
    def __init__(self, client: Any, layout: Layout) -> None:
        self.redis = client
        self.layout = layout
        self._lock = threading.Lock()
        self._version = ""
        self._entries: dict[Any, Any] = {}
        self._checked = -math.inf
        self._local = threading.local()

    def _snapshot(self) -> tuple[str, dict[Any, Any]]:
        """The cache and the version it belongs to, asking Redis at most once a second."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked > CONFIG_TTL:
                raw = call(lambda: self.redis.get(self.layout.config(0)))
                current = raw.decode() if raw else "0"
                if current != self._version:
                    self._version, self._entries = current, {}
                self._checked = now
            return self._version, self._entries

    def cached(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        """A configuration read, served from the cache of the current version.

        The version is remembered for this thread's operation, and the ledger
        step refuses with "stale" when Redis holds another: then the engine
        plans again from fresh reads. So a cached limit can make a request
        wait a round trip, never admit what the store would refuse.
        """
        version, entries = self._snapshot()
        seen = getattr(self._local, "version", None)
        self._local.version = version if seen in (None, version) else MIXED
        if key in entries:
            return entries[key]
        value = load()
        if value is not None:
            entries[key] = value
        return value

    def invalidate(self) -> None:
        with self._lock:
            self._checked = -math.inf

    def bump(self) -> None:
        """After a configuration write: every replica's cache is stale from now on."""
        token = uuid.uuid4().hex
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.layout.shards):
            pipe.set(self.layout.config(shard), token)
        call(pipe.execute)
        self.invalidate()

    def operation_version(self) -> str:
        """The configuration version this thread's plan was built on (MIXED if several).

        It is kept through every round of a conflict loop, so a round that
        reads the cache again cannot quietly move the plan to a newer version.
        """
        version = getattr(self._local, "version", None)
        if version is None:
            version = self._local.version = self._snapshot()[0]
        return str(version)

    def end_operation(self) -> None:
        """The thread's next operation starts from the version it plans on."""
        self._local.version = None


class _HasConfig(Protocol):
    config: ConfigCache


_P = ParamSpec("_P")
_T = TypeVar("_T")
_S = TypeVar("_S", bound=_HasConfig)


def one_operation(
    method: Callable[Concatenate[_S, _P], _T],
) -> Callable[Concatenate[_S, _P], _T]:
    """An enforcing call: the thread's next call starts from the version it plans on."""

    @functools.wraps(method)
    def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.config.end_operation()

    return run
