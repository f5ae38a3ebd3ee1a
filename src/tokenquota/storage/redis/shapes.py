"""The shapes a Redis step is built from, kept per shape of request.

An ``Op`` is one operation's steps and where its answers come back; a
``Counting`` is where one shape of usage is counted (its counters, named
once, and their buckets, placed once per span of time); a ``Frame`` is a
single Redis's whole debit step for one shape of request, built once and
copied for each request of that shape. ``ops.Runner`` builds and keeps them
(``Runner.begin``, ``Runner.add_increments``); they live apart from it so
the runner's file holds how steps are built and run, and this one what is
kept between requests (docs/performance-log.md, session 10).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokenquota.domain.grants import Grant
from tokenquota.domain.limits import EffectiveLimit
from tokenquota.domain.metrics import Metric
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.tracking import Tracking
from tokenquota.domain.windows import ALWAYS, Window
from tokenquota.storage.redis.layout import Reply, Step, Steps


@dataclass
class Op:
    """One operation's steps, and where each check's and wallet's answer comes back."""

    steps: Steps
    checks: list[tuple[Step, int, list[int], bool] | None] = field(default_factory=list)
    wallets: list[tuple[Step, int, SubjectRef, list[Grant]]] = field(default_factory=list)
    # Called with the steps run and their replies just before the ledger step runs,
    # when that is not the first: the threshold alerts of checks read before it.
    before_ledger: Callable[[list[Step], list[Reply]], None] | None = None


# (limit, key names, may refuse, a rolling window's bucket seconds or 0)
Read = tuple[EffectiveLimit, tuple[str, ...], bool, int]
# (window, counter key, metric, times the usage counts in it, lifetime label or None)
Counter = tuple[Window, str, Metric, int, str | None]
# Counting shapes kept by a runner before they are built again: one per (configuration,
# charged series, metrics), so a handful in a steady service.
SHAPES_KEPT = 10_000


class Counting:
    """Where one shape of usage (the tracked windows, the series charged, the metrics
    spent) is counted in Redis: its counters, named once, and each one's bucket.

    Every window's bucket is fixed over a span of time (a calendar period, a
    rolling window's bucket, forever for ``total``): the buckets are placed for
    the span all of them share and reused while usage falls in it, as the memory
    store's ``Counting`` does; a consume's buckets change at the next minute.
    """

    __slots__ = ("_placed", "counters", "limits")

    def __init__(self, limits: tuple[EffectiveLimit, ...], counters: list[Counter]) -> None:
        self.limits = limits  # the plan's limits (their keys are counted too)
        self.counters = counters
        # (zone, start, end, per counter: name, bucket as text, metric, times, cap label),
        # one tuple so a thread placing it never shows another a half-placed shape.
        empty = ALWAYS[0]  # an empty span: the first usage places them
        self._placed: tuple[Any, datetime, datetime, list[Placed]] = (None, empty, empty, [])

    def placed(self, at: datetime, tz: Any) -> list[Placed]:
        zone, start, end, placed = self._placed
        if zone is tz and start <= at < end:
            return placed
        start, end = ALWAYS
        placed = []
        for window, name, metric, times, cap in self.counters:
            first, after = window.bucket_span(at, tz)
            start, end = max(start, first), min(end, after)
            placed.append((name, str(window.bucket_of(at, tz)), metric, times, cap))
        self._placed = (tz, start, end, placed)
        return placed


Placed = tuple[str, str, Metric, int, str | None]


class Frame:
    """A single Redis's debit step before its effects, built once for a shape of
    request (``Runner.begin``) and copied for each request of that shape.

    It holds while the plan's placement and the store's tracked set are the
    ones it was built from, and the counters' buckets are still those of its
    span (``Counting.placed`` returns the same list within one span).

    The amounts are not part of the shape (only which metrics are spent): each
    copy fills in its request's amounts, as ``Step.count`` and
    ``Runner.add_checks`` write them, so requests of varying token counts (the
    usual traffic) share one frame. The lists filled for the last amounts are
    kept, so a run of equal amounts copies them as they are.
    """

    __slots__ = (
        "amounts",
        "checks",
        "deltas",
        "filled",
        "index",
        "keys",
        "placed",
        "placement",
        "shape",
        "spec",
        "tracked",
    )

    def __init__(
        self,
        placement: Any,
        tracked: Tracking,
        counted: tuple[Counting, list[Placed]],
        op: Op,
        step: Step,
        units: Mapping[Metric, int],
        checks: Sequence[Any],
    ) -> None:
        (only,) = op.steps.ordered()
        assert only is step
        assert not op.wallets
        assert op.before_ledger is None
        self.placement, self.tracked = placement, tracked
        # the counters' buckets the step adds to, as placed for this step's request
        self.shape, self.placed = counted
        self.keys, self.index, self.spec = list(step.keys), dict(step._index), dict(step.spec)
        self.checks = [None if e is None else e[1:] for e in op.checks]
        # Where each amount goes. Per (metric, times): the positions of its delta in
        # "incr" and in "cap", in the order Step.count appended them (one
        # str() per group a copy).
        groups: dict[tuple[Metric, int], tuple[list[int], list[int]]] = {}
        at = {"incr": 2, "cap": 2}
        for _, _, metric, times, cap in self.placed:
            kind = "incr" if cap is None else "cap"
            incr, caps = groups.setdefault((metric, times), ([], []))
            (incr if cap is None else caps).append(at[kind])
            at[kind] += 3 if cap is None else 4
        assert at["incr"] - 2 == len(self.spec.get("incr", ()))
        assert at["cap"] - 2 == len(self.spec.get("cap", ()))
        self.deltas = [(m, t, tuple(i), tuple(c)) for (m, t), (i, c) in groups.items()]
        # Per check that adds its amount (a lease check, or a windowed one the
        # request lands in: the placement's, so every copy's): its position in
        # "checks", the plan's check (in ``checks``, the plan's) it is, and where
        # the amount sits in its list (add_checks' positional layout).
        self.amounts: list[tuple[int, int, int]] = []
        for i, entry in enumerate(op.checks):
            if entry is None:
                continue
            _, pos, _, lease = entry
            if lease:
                self.amounts.append((pos, i, 2))
            elif checks[i].bucket is not None:
                self.amounts.append((pos, i, 4))
        # (the amounts, in the order of the units' metrics, and the spec's lists for
        # them), replaced whole: a thread copying never sees another's half-filled
        lists = {k: v for k, v in self.spec.items() if type(v) is list}
        self.filled: tuple[tuple[int, ...], dict[str, list[Any]]] = (tuple(units.values()), lists)

    def _fill(self, units: Mapping[Metric, int], checks: Sequence[Any]) -> dict[str, list[Any]]:
        """The spec's lists with the amounts of ``units`` and the plan's ``checks``."""
        lists = {k: v.copy() for k, v in self.spec.items() if type(v) is list}
        if self.deltas:
            incr, cap = lists.get("incr"), lists.get("cap")
            for metric, times, in_incr, in_cap in self.deltas:
                text = str(units[metric] * times)
                for i in in_incr:
                    incr[i] = text  # type: ignore[index]
                for i in in_cap:
                    cap[i] = text  # type: ignore[index]
        if self.amounts:
            listed = lists["checks"]
            for pos, i, at in self.amounts:
                entry = listed[pos] = listed[pos].copy()
                entry[at] = checks[i].amount
        return lists

    def holds(self, placement: Any, tracked: Tracking, at: datetime, tz: Any) -> bool:
        return (
            placement is self.placement
            and tracked is self.tracked
            and self.shape.placed(at, tz) is self.placed
        )

    def copy(self, units: Mapping[Metric, int], checks: Sequence[Any]) -> tuple[Op, Step]:
        """The step for a request spending ``units`` (``Amounts.units()``), whose plan's
        checks are ``checks``."""
        amounts = tuple(units.values())
        filled = self.filled
        if filled[0] != amounts:
            filled = self.filled = (amounts, self._fill(units, checks))
        # one level deep: what a request adds (its event, an idempotency record, a
        # lease) goes into lists and keys of its own copy, never the frame's
        spec = self.spec.copy()
        for name, listed in filled[1].items():
            spec[name] = listed.copy()
        step = Step(self.keys.copy(), spec, "", self.index.copy())
        steps = Steps(None)
        steps._steps[0] = step
        steps._ledger_slot = 0
        checks_at = [None if e is None else (step, *e) for e in self.checks]
        return Op(steps, checks_at), step
