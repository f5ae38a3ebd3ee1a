"""The configuration snapshot: a replica's cache of its catalog, kept honest by a version token.

Planning a request reads configuration (a subject's rule layers and its
ancestors', a resource's quota, the tracked windows) that changes rarely.
Each store keeps a **version token** beside its configuration and changes it
in the same transaction as every configuration write (SQL: a row of ``meta``;
memory: a counter under the state's lock; Redis: the per-shard token). A
``Snapshot`` serves those reads from memory, every entry filed under the
token it was loaded with, and:

- asks the store for the current token only when its last answer is more
  than ``ttl`` old (one second; threads planning at that moment may each
  ask once), and at once after ``invalidate`` (a step refused a plan as
  stale, or this replica wrote configuration); a moved token starts a new,
  empty generation of entries. A step that verified the token also counts
  as an answer (``confirm``), so a busy replica never asks on its own;
- loads an entry with the token read *first*, in the same transaction: the
  data it reads is then at least as new as the token, so an entry can be
  newer than its token but never older; if newer, a write moved the token
  past it and no step will ever accept that token again;
- stamps every plan with the token of the one generation it read
  (``View.version``), and ``MIXED`` when its reads spanned two.

Decisions never rely on the cache being fresh: every atomic step that
decides on a plan compares the plan's token with the store's current one
inside the step and refuses a mismatch (``StaleConfig``); the engine then
plans again. So a changed limit binds the very next decision on every
replica; only reads (usage, limits) may lag, by at most ``ttl``.

Bound: a generation holds at most ``max_entries`` entries (100,000 by
default); a full generation is cleared and refilled on demand, which costs
reloads, never correctness. A subject the planner has seen takes two (its
resolved chain and its own limits; ancestors' limits are shared), about
0.6 KB each for a user with three limits under a company (measured with
tracemalloc on SQLite), so the bound is about 50,000 warm subjects and
60 MB.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Final, Protocol, TypeVar

from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.storage.base import RuleSet

T = TypeVar("T")
# How long a replica trusts its snapshot before asking the store whether the
# token moved. Reads may lag by this much; decisions never do (see above).
CONFIG_TTL: Final = 1.0
MAX_ENTRIES: Final = 100_000
MIXED: Final = "mixed"  # a plan read from two generations: no store holds this token
# The token of a store no configuration write has touched yet (every backend).
FIRST_TOKEN: Final = "0"
_MISSING: Final = object()

Chain = list[tuple[SubjectRef, RuleSet]]


class ConfigReads(Protocol):
    """What a catalog offers the snapshot: its token, and reads that carry it.

    Each ``load_*`` returns the token read first, then the data, in one
    transaction (or under one lock): see the module's docstring for why that
    order is the safe one.
    """

    def config_version(self) -> str: ...

    def load_rule_sets(self, ref: SubjectRef, *, with_ancestors: bool) -> tuple[str, Chain]: ...

    def load_ancestors(self, ref: SubjectRef) -> tuple[str, list[SubjectRef]]: ...

    def load_resource_quota(self, resource: SubjectRef) -> tuple[str, dict[str, Any] | None]: ...

    def load_tracked(self) -> tuple[str, Tracking]: ...


class _Generation:
    """The entries of one token. Replaced whole when the token moves, never edited back.

    ``view`` is the one ``View`` of it that ``Snapshot.view`` hands every plan:
    a view only ever changes by turning ``MIXED`` when a read found the store
    at another token, which means this generation is stale, so that every
    plan stamped with its token is refused by its step, as a ``MIXED`` one is;
    shared, a plan takes no view of its own.
    """

    __slots__ = ("entries", "version", "view")

    def __init__(self, snapshot: Snapshot, version: str) -> None:
        self.version = version
        self.entries: dict[Hashable, Any] = {}
        self.view = View(snapshot, self)


class Snapshot:
    """One replica's cache of one catalog (see the module's docstring)."""

    def __init__(
        self,
        reads: ConfigReads,
        *,
        ttl: float = CONFIG_TTL,
        max_entries: int = MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reads = reads
        self.ttl = ttl
        self.max_entries = max_entries
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._generation = _Generation(self, "")  # no token is "": the first view asks
        self._checked = -math.inf  # when the store last said the token was current
        self._asked = -math.inf  # when the token of the generation held was asked for
        self._invalidated = -math.inf

    def __len__(self) -> int:
        """How many entries the generation held holds (at most ``max_entries``)."""
        return len(self._generation.entries)

    def view(self) -> View:
        """The current generation's view, asking the store first if it was not asked lately."""
        if self.monotonic() - self._checked <= self.ttl:  # ``_current``'s first test
            return self._generation.view
        return self._current().view

    def at(self, version: str | None) -> View | None:
        """A view of exactly ``version`` while it is the generation held, else None."""
        generation = self._generation
        if version is None or generation.version != version:
            return None
        return View(self, generation)

    def _current(self) -> _Generation:
        asked = self.monotonic()
        if asked - self._checked <= self.ttl:
            return self._generation
        # Asked outside the lock: the lock is taken inside hot steps (confirm), which
        # may hold a connection and a database lock, so it must never wait on I/O.
        version = self.reads.config_version()
        with self._lock:
            if asked >= self._asked:  # an answer to an earlier question never wins
                self._asked = asked
                if version != self._generation.version:
                    self._generation = _Generation(self, version)
                if asked > self._invalidated:
                    self._checked = max(self._checked, asked)
            return self._generation

    def invalidate(self) -> None:
        """Ask the store on the next view: a step found the token moved, or we moved it."""
        with self._lock:
            self._invalidated = self.monotonic()
            self._checked = -math.inf

    def confirm(self, version: str | None, since: float) -> None:
        """A step found ``version`` current at ``since`` (monotonic) or later: trust it on.

        Busy replicas then never ask the store separately. An ``invalidate``
        after ``since`` wins: the step's answer may predate our own write.
        """
        if version is None:
            return
        with self._lock:
            if (
                self._generation.version == version
                and since > self._invalidated
                and since > self._checked
            ):
                self._checked = since

    def _keep(self, generation: _Generation, key: Hashable, value: Any) -> None:
        entries = generation.entries
        if len(entries) >= self.max_entries:
            entries.clear()  # the bound: a full generation starts over (see the docstring)
        entries[key] = value


def _never(_: object) -> bool:
    return False


class View:
    """Plans' reads of configuration, all from one generation (``ConfigView`` in base.py).

    ``version`` is the token a plan carries to its atomic step: the
    generation's, or ``MIXED`` once a read found the store at another token
    (then the generation is stale: see ``_Generation``).
    """

    __slots__ = ("_generation", "_mixed", "_snapshot")

    def __init__(self, snapshot: Snapshot, generation: _Generation) -> None:
        self._snapshot = snapshot
        self._generation = generation
        self._mixed = False

    @property
    def version(self) -> str:
        return MIXED if self._mixed else self._generation.version

    def cached(
        self,
        key: Hashable,
        load: Callable[[], tuple[str, T]],
        *,
        keep: Callable[[T], bool] | None = None,
    ) -> T:
        """``load``'s value, kept in this generation if it was read at its token.

        ``keep`` says which loaded values to keep (default: all): a fact a hot
        write may change without moving the token (a subject created by its
        first consume) is kept only once it can no longer change that way.
        """
        found = self._generation.entries.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[no-any-return]
        version, value = load()
        if version != self._generation.version:
            # The store moved since this generation: this plan cannot pass its
            # step, and the next view should ask for the new token.
            self._mixed = True
            self._snapshot.invalidate()
        elif keep is None or keep(value):
            self._snapshot._keep(self._generation, key, value)
        return value

    def known(self, key: Hashable) -> Any:
        """What this generation keeps under ``key``, or None: never a read."""
        found = self._generation.entries.get(key, _MISSING)
        return None if found is _MISSING else found

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """A value derived from this view's reads (a resolved chain), kept beside them."""
        found = self._generation.entries.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[no-any-return]
        value = compute()
        if not self._mixed:
            self._snapshot._keep(self._generation, key, value)
        return value

    # the reads the planner makes ------------------------------------------------
    def rule_sets(self, ref: SubjectRef, *, with_ancestors: bool, keep: bool = True) -> Chain:
        """The subject's rule layers, then each ancestor's (nearest first).

        ``keep=False`` when the caller keeps what it derives from them instead
        (the planner's resolved chain): one entry per subject, not two.
        """
        reads = self._snapshot.reads
        return self.cached(
            ("rules", ref, with_ancestors),
            lambda: reads.load_rule_sets(ref, with_ancestors=with_ancestors),
            keep=None if keep else _never,
        )

    def ancestors(self, ref: SubjectRef) -> list[SubjectRef]:
        reads = self._snapshot.reads
        return self.cached(("ancestors", ref), lambda: reads.load_ancestors(ref))

    def resource_quota(self, resource: SubjectRef) -> dict[str, Any] | None:
        """The stored quota, shared by every plan of this generation: read, never change it."""
        reads = self._snapshot.reads
        return self.cached(("quota", resource), lambda: reads.load_resource_quota(resource))

    def tracked(self) -> Tracking:
        """The (metric, window) pairs counters are kept for, per kind of series."""
        return self.cached(("tracked",), self._snapshot.reads.load_tracked)
