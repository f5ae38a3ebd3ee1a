"""Top consumers by walking the ledger: the memory store's answer and the reference
the SQL queries are tested against (tests/conformance/test_insights.py).

Only the ``Store`` protocol is used (events, subjects), so it needs nothing
of the memory store's internals and would answer for any backend, slowly.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.base import MAX_PAGE, Spent, Store


class LedgerInsights:
    def __init__(self, store: Store) -> None:
        self.store = store

    def top_consumers(
        self,
        metric: Metric,
        *,
        start: datetime | None,
        end: datetime | None,
        parent: SubjectRef | None,
        within: SubjectRef | None,
        hidden: frozenset[SubjectRef],
        kind: str | None,
        limit: int,
    ) -> list[Spent]:
        children = None if parent is None else self._children(parent)
        units: dict[SubjectRef, int] = defaultdict(int)
        events: dict[SubjectRef, int] = defaultdict(int)
        # Events charged to the parent are those of its subtree; iter_events filters by it.
        for event in self.store.iter_events(subject=parent or within, start=start, end=end):
            amount = event.amounts.get(metric)
            if not event.is_usage or not amount:  # absent or 0: not a use of it
                continue
            if within is not None and within not in event.charged:
                continue
            for ref in event.charged:
                if children is not None and ref not in children:
                    continue
                if ref in hidden or (kind is not None and ref.kind != kind):
                    continue
                units[ref] += amount
                events[ref] += 1
        ranked = sorted(units, key=lambda ref: (-units[ref], str(ref)))
        return [Spent(ref, units[ref], events[ref]) for ref in ranked[:limit]]

    def _children(self, parent: SubjectRef) -> set[SubjectRef]:
        found: set[SubjectRef] = set()
        offset = 0
        while True:
            page = self.store.list_subjects(kind=None, parent=parent, offset=offset, limit=MAX_PAGE)
            found.update(s.ref for s in page.items)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return found
