"""Which (metric, window) pairs are counted, per kind of series.

A counter series is a subject (``user:alice``) or a consumer's share of a
resource (``gpu:pool~user:bob``, ``subjects.consumer_series``); its **kind** is
the text before its first ':' (``user``; ``gpu`` for the share, whose rules
are the resource's quota, set on the resource). A rule names its kind where
it is stored: an override on a subject, a default of a kind, a resource's
quota (its consumers' rules and its capacity, all counted in series of the
resource's kind). A plan can be assigned to a subject of any kind, so its
pairs are counted for every kind: the **wildcard** ``*``, as every pair was
before kinds were told apart, and as the lifetime pairs (``bounds.LIFETIME``)
always are. A series is counted in the pairs of its kind and the wildcard's:
an event charging ``user:alice`` and ``company:acme`` adds to the windows the
user's limits name on one and the company's on the other, not each one's on
both (a consume in the bench's shape adds to 8 counters instead of 12).

``Tracking`` is immutable: a store replaces it whole when a pair is added,
so the hot paths key their cached shapes on its identity, as they did on the
identity of the tracked set. ``of_series`` is a dict lookup after the first
call per kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from tokenquota.domain.bounds import LIFETIME
from tokenquota.domain.limits import LimitKey

WILDCARD: Final = "*"  # never a kind: kinds match [a-z][a-z0-9_-]{0,31}
_KINDS_KEPT: Final = 1_024  # kinds' unions remembered; more start afresh


def series_kind(series: str) -> str:
    """The kind a counter series is counted by: the text before its first ':'."""
    return series.partition(":")[0]


# Per pair counted in some series of a shape, the series (of that shape) counting it.
Shape = tuple[tuple[LimitKey, tuple[str, ...]], ...]


class Counted(Protocol):
    """Which pairs a series is counted in: a ``Tracking``, or what one adds to another."""

    def of_series(self, series: str) -> frozenset[LimitKey]: ...

    def shape(self, series: tuple[str, ...]) -> Shape: ...


def shape_of(counted: Counted, series: tuple[str, ...]) -> Shape:
    """Each pair some of ``series`` counts, with the ones that count it (in order, a
    series charged twice twice): ``ledger.increments`` walks this."""
    mine = [counted.of_series(s) for s in series]
    return tuple(
        (key, tuple([s for s, pairs in zip(series, mine, strict=True) if key in pairs]))
        for key in frozenset().union(*mine)
    )


class Tracking:
    """The pairs counted per kind (``WILDCARD`` for every kind); see the module."""

    __slots__ = ("_of", "_shapes", "kinds")

    def __init__(self, kinds: Mapping[str, Iterable[LimitKey]] | None = None) -> None:
        built = {
            kind: frozenset(k for k in keys if k.window is not None)
            for kind, keys in (kinds or {}).items()
        }
        built[WILDCARD] = built.get(WILDCARD, frozenset()) | LIFETIME
        self.kinds: Mapping[str, frozenset[LimitKey]] = {k: v for k, v in built.items() if v}
        self._of: dict[str, frozenset[LimitKey]] = {}
        self._shapes: dict[tuple[str, ...], Shape] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str]]) -> Tracking:
        """From stored rows (kind, metric, window key)."""
        kinds: dict[str, set[LimitKey]] = {}
        for kind, metric, window in rows:
            kinds.setdefault(kind, set()).add(LimitKey.from_storage(metric, window))
        return cls(kinds)

    def of_kind(self, kind: str) -> frozenset[LimitKey]:
        """The pairs a series of ``kind`` is counted in: its kind's and the wildcard's."""
        found = self._of.get(kind)
        if found is None:
            found = self.kinds[WILDCARD] | self.kinds.get(kind, frozenset())
            if len(self._of) >= _KINDS_KEPT:
                self._of.clear()
            self._of[kind] = found
        return found

    def of_series(self, series: str) -> frozenset[LimitKey]:
        return self.of_kind(series.partition(":")[0])

    def shape(self, series: tuple[str, ...]) -> Shape:
        """``shape_of``, kept per series tuple (a subject's consumes share one)."""
        found = self._shapes.get(series)
        if found is None:
            if len(self._shapes) >= _KINDS_KEPT:
                self._shapes.clear()
            found = self._shapes[series] = shape_of(self, series)
        return found

    def pairs(self) -> frozenset[LimitKey]:
        """Every pair some kind counts (the windows retention must keep buckets of)."""
        return frozenset().union(*self.kinds.values())

    def rows(self) -> list[tuple[str, LimitKey]]:
        """(kind, pair) for each pair stored per kind, in a stable order."""
        return sorted(
            ((kind, key) for kind, keys in self.kinds.items() for key in keys),
            key=lambda row: (row[0], row[1].sort_key),
        )

    def adding(self, kind: str, keys: Iterable[LimitKey]) -> tuple[Tracking, set[LimitKey]]:
        """This tracking with ``keys`` counted for ``kind``, and the pairs that are new
        to it (none: ``self`` is returned). A pair the wildcard counts is never new to
        a kind; a pair some kinds count is new to the wildcard (the other kinds)."""
        have = self.kinds.get(WILDCARD, frozenset()) if kind == WILDCARD else self.of_kind(kind)
        new = {k for k in keys if k.window is not None} - have
        if not new:
            return self, new
        kinds = dict(self.kinds)
        kinds[kind] = kinds.get(kind, frozenset()) | new
        return Tracking(kinds), new

    def same(self, other: Tracking) -> bool:
        """The same pairs for the same kinds (instances compare by identity)."""
        return self.kinds == other.kinds

    def __repr__(self) -> str:
        shown = {kind: sorted(map(str, keys)) for kind, keys in sorted(self.kinds.items())}
        return f"Tracking({shown})"


class Added:
    """What ``after`` counts that ``before`` did not, among ``keys``: a backfill's pairs.

    Per series: its pairs in ``after`` less its pairs in ``before``. A pair newly
    tracked for a kind is replayed into that kind's series only, and not at all
    where the wildcard counted it already; a pair newly tracked for the
    wildcard into every series whose kind did not count it yet. So no event is
    ever counted twice in one counter.
    """

    __slots__ = ("_of", "after", "before", "keys")

    def __init__(self, before: Tracking, after: Tracking, keys: Iterable[LimitKey]) -> None:
        self.before, self.after, self.keys = before, after, frozenset(keys)
        self._of: dict[str, frozenset[LimitKey]] = {}

    def of_series(self, series: str) -> frozenset[LimitKey]:
        kind = series.partition(":")[0]
        found = self._of.get(kind)
        if found is None:
            found = self._of[kind] = (
                self.after.of_kind(kind) - self.before.of_kind(kind)
            ) & self.keys
        return found

    def shape(self, series: tuple[str, ...]) -> Shape:
        return shape_of(self, series)

    def __str__(self) -> str:
        return ", ".join(sorted(map(str, self.keys)))
