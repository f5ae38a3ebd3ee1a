"""What the memory meter keeps per shape of plan (``MemoryMeter._shape``).

A ``Shape`` is kept for the plans of one charged tuple and set of metrics:
where their events count (``Counting``) and, per placement, the bucket dict
each of their limits reads, so a warm consume reads its buckets with one
``map`` in C and never looks a counter up by name (docs/performance-log.md,
sessions 9 and 10). It lives apart from the meter, which holds the
operations; the meter holds the state's lock around every use of a shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tokenquota.domain.decisions import Check
from tokenquota.domain.limits import EffectiveLimit
from tokenquota.domain.metrics import Metric
from tokenquota.domain.plans import Placement
from tokenquota.domain.subjects import SubjectRef
from tokenquota.storage.memory.state import Counters, Counting

_CONCURRENT: Final = Metric.CONCURRENT_REQUESTS
_GET: Final = dict.get  # ``Shape.placed`` maps it over the dicts a placement reads
# What a cap reads: nothing, ever. Only ever read (``placed``), never written.
_NOTHING: Final[dict[int, int]] = {}


class Shape:
    """What the meter keeps for the plans of one charged tuple and metrics (``_shape``):
    where their events count, and the bucket dict each of their checks reads."""

    __slots__ = (
        "at",
        "charged",
        "counting",
        "dicts",
        "epoch",
        "limits",
        "placement",
        "reads",
        "subject",
        "thresholds",
        "version",
        "zeros",
    )

    def __init__(self, charged: tuple[SubjectRef, ...], epoch: int, counting: Counting) -> None:
        self.charged = charged
        self.epoch = epoch
        self.counting = counting
        # The limits of the last plan read (the very tuple of a placement's, or one
        # built from a plan's checks), and per limit the series' bucket dict (None
        # for a cap); set once a plan's checks are all read in one bucket.
        self.limits: tuple[EffectiveLimit, ...] = ()
        self.reads: tuple[dict[int, int] | None, ...] = ()
        self.thresholds = False  # whether any of ``limits`` has alert thresholds
        # A plan's subject found in the state's subjects, and the configuration
        # version it was found at (``MemoryMeter._apply``).
        self.subject: SubjectRef | None = None
        self.version: str | None = None
        # The placement last read (held, so no other takes its id), and per limit of
        # it the dict and bucket it reads (an empty dict and 0 for a cap), and zeros.
        self.placement: Placement | None = None
        self.dicts: tuple[dict[int, int], ...] = ()
        self.at: tuple[int, ...] = ()
        self.zeros: tuple[int, ...] = ()

    def placed(self, placement: Placement, counters: Counters) -> list[int]:
        """``used`` of a plan measured by ``placement`` (whose every limit reads one
        bucket or none), without its checks: each limit's bucket, 0 for a cap.

        Placements of one skeleton share their limits tuple, so its dicts are
        kept by that tuple's identity (``limits`` holds it: no other tuple takes
        its id while kept) across spans, for as long as this shape is kept; the
        plans of one span share their placement, so what each limit reads is
        kept by its identity too, and read with one ``dict.get`` each in C.
        """
        if placement is not self.placement:
            self._settle(placement, counters)
        return list(map(_GET, self.dicts, self.at, self.zeros))

    def _settle(self, placement: Placement, counters: Counters) -> None:
        """Keep what each limit of ``placement`` reads: its dict and bucket."""
        limits = placement.limits
        if limits is not self.limits:
            self._keep(limits, placement.buckets, counters)
        dicts: list[dict[int, int]] = []
        at: list[int] = []
        for buckets, bucket in zip(self.reads, placement.buckets, strict=True):
            if buckets is None or bucket is None:
                dicts.append(_NOTHING)
                at.append(0)
            else:
                dicts.append(buckets)
                at.append(bucket)
        self.placement = placement
        self.dicts, self.at, self.zeros = tuple(dicts), tuple(at), (0,) * len(at)

    def _keep(
        self,
        limits: tuple[EffectiveLimit, ...],
        buckets: Sequence[int | None],
        counters: Counters,
    ) -> None:
        """Keep the dict each of ``limits`` reads (None where ``buckets`` has none: a cap)."""
        reads: list[dict[int, int] | None] = []
        thresholds = False
        for limit, bucket in zip(limits, buckets, strict=True):
            thresholds = thresholds or bool(limit.thresholds)
            window = limit.key.window
            if bucket is None or window is None:
                reads.append(None)
            else:
                subject, metric_name, _, _ = limit.names()
                reads.append(counters.setdefault((subject, metric_name, window.key), {}))
        self.limits = limits
        self.reads = tuple(reads)
        self.thresholds = thresholds

    def used(self, checks: Sequence[Check], counters: Counters) -> list[int] | None:
        """What ``admitted`` takes: each check's one bucket, 0 for a cap; None when a
        check is read otherwise (a rolling window or a range, concurrency). Under
        the lock, with no reservation held (``_reads`` would add nothing to these).

        The plans of one configuration check the same limits (the very objects),
        so the dicts read are kept with them: a check of a limit seen last time
        reads its dict's bucket, nothing else. Dicts are those of ``counters``,
        made empty if new (as ``State.shape`` does), and kept only while this
        shape is (a pruned or rebuilt series moves the epoch).
        """
        limits = self.limits
        if len(limits) == len(checks):
            out = []
            for check, limit, buckets in zip(checks, limits, self.reads, strict=True):
                if check.limit is not limit:
                    break
                if buckets is None:
                    out.append(0)
                    continue
                lo = check.lo
                if lo != check.hi:
                    return None
                out.append(buckets.get(lo, 0))
            else:
                return out
        for check in checks:
            limit = check.limit
            window = limit.key.window
            if window is None:
                if limit.key.metric is _CONCURRENT:
                    return None
            elif check.lo != check.hi or window.rolling_seconds:
                return None
        self._keep(
            tuple(check.limit for check in checks),
            [None if check.limit.key.window is None else check.lo for check in checks],
            counters,
        )
        return self.used(checks, counters)
