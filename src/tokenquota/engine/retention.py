"""Retention: pruning what no answer needs any more, on every backend (docs/retention.md).

``Retention`` turns the horizons into one run's cutoffs (domain/retention.py)
and drives the store's pruner batch by batch; ``Pruning`` runs it on a
thread of its own every ``interval`` in the service. A run is bounded
(``max_batches`` batches of at most ``batch`` records, with ``pause`` between
them), so it never holds a lock long and gives decisions the store between
batches; what one run leaves, the next one takes. The ledger is kept (the
source of truth ``history``, ``events`` and ``rebuild`` read) unless an archive
age is set: then ``archive`` exports old usage events to a file and folds them
into carry events, so ``rebuild`` still agrees (docs/retention.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tokenquota.domain.errors import TokenQuotaError
from tokenquota.domain.ledger import Event
from tokenquota.domain.retention import (
    DEFAULT_BATCH,
    KINDS,
    MAX_BATCH,
    Cutoffs,
    Horizons,
    archive_cutoff,
    cutoffs,
)
from tokenquota.export import jsonl_chunks
from tokenquota.storage.base import Pruner, Store

if TYPE_CHECKING:
    from tokenquota.engine.quota import Quota

log = logging.getLogger("tokenquota.retention")


def pruner_for(store: Store) -> Pruner:
    """The pruner of the backend ``store`` is, over the very connections it uses."""
    from tokenquota.storage.memory.prune import MemoryPruner
    from tokenquota.storage.memory.store import MemoryStore
    from tokenquota.storage.redis.prune import RedisPruner
    from tokenquota.storage.redis.store import RedisStore
    from tokenquota.storage.sql.prune import SqlPruner
    from tokenquota.storage.sql.store import SqlStore

    if isinstance(store, RedisStore):
        return RedisPruner(store.db, store.redis, store.layout)
    if isinstance(store, SqlStore):
        return SqlPruner(store.db)
    if isinstance(store, MemoryStore):
        return MemoryPruner(store.meter._s)
    raise TypeError(f"no pruner for {type(store).__name__}")


@dataclass
class Report:
    """What one run removed, per kind, and whether it went through everything."""

    removed: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.removed.values())


class Retention:
    def __init__(
        self,
        quota: Quota,
        horizons: Horizons | None = None,
        *,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
        self.quota = quota
        self.horizons = horizons or Horizons(backdate=quota.retention)
        self.batch = batch
        self.pruner = pruner_for(quota.store)

    def cutoffs(self, kinds: Iterable[str] = KINDS) -> Cutoffs:
        """This moment's cutoffs, for every window counters are kept for."""
        tracked = self.quota.store.config().tracked().pairs()
        windows = {k.window for k in tracked if k.window is not None}
        return cutoffs(windows, self.quota.clock.now(), self.quota.tz, self.horizons, kinds)

    def batches(self, kinds: Iterable[str] = KINDS) -> Iterator[tuple[str, int]]:
        """Every batch of one full pass, as (kind, records removed): for a progress bar."""
        yield from self.pruner.prune(self.cutoffs(kinds), self.batch)

    def archive(
        self,
        age: timedelta,
        directory: Path,
        *,
        max_batches: int | None = None,
        pause: float = 0.0,
        stop: threading.Event | None = None,
        on_batch: Callable[[int], object] | None = None,
    ) -> tuple[ArchiveFile, Report]:
        """Export then delete the usage events older than ``age`` (docs/retention.md).

        The cutoff is never later than what any answer still reads
        (``archive_cutoff``); events that moved credits, and grants, stay.
        """
        now = self.quota.clock.now()
        cutoff = archive_cutoff(now, age, self.cutoffs())
        sink = ArchiveFile(directory, cutoff, now)
        report = Report()
        for moved in self.pruner.archive(cutoff, self.batch, sink):
            report.removed["ledger"] += moved
            report.batches += 1
            if on_batch is not None:
                on_batch(moved)
            if (max_batches is not None and report.batches >= max_batches) or (
                stop is not None and stop.is_set()
            ):
                report.complete = False
                break
            if pause:
                time.sleep(pause)
        return sink, report

    def run(
        self,
        *,
        kinds: Iterable[str] = KINDS,
        max_batches: int | None = None,
        pause: float = 0.0,
        stop: threading.Event | None = None,
    ) -> Report:
        """One pass, at most ``max_batches`` batches, ``pause`` seconds between them."""
        report = Report()
        for kind, removed in self.batches(kinds):
            report.removed[kind] += removed
            report.batches += 1
            if max_batches is not None and report.batches >= max_batches:
                report.complete = False
                break
            if stop is not None and stop.is_set():
                report.complete = False
                break
            if pause:
                time.sleep(pause)
        return report


class ArchiveFile:
    """Where one run's archived events go: JSON lines (the form ``events --format jsonl``
    exports), each batch written and fsync'd before its events leave the ledger."""

    def __init__(self, directory: Path, cutoff: datetime, now: datetime) -> None:
        self.path = directory / (
            f"events-before-{cutoff:%Y%m%dT%H%M%SZ}-archived-{now:%Y%m%dT%H%M%S%fZ}.jsonl"
        )
        self.directory = directory
        self.written = 0

    def __call__(self, events: Sequence[Event]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            for chunk in jsonl_chunks(events):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        self.written += len(events)


class Pruning:
    """The service's background pruning: one bounded run every ``interval`` seconds."""

    def __init__(
        self,
        retention: Retention,
        *,
        interval: float,
        max_batches: int,
        pause: float,
        archive: tuple[timedelta, Path] | None = None,
    ) -> None:
        self.retention = retention
        self.archive = archive
        self.interval = interval
        self.max_batches = max_batches
        self.pause = pause
        self.stop = threading.Event()
        self.runs = 0
        self.last: Report | None = None
        self.thread = threading.Thread(target=self._loop, name="tokenquota-prune", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        # The first run after one interval: a replica starting never competes with its warm-up.
        while not self.stop.wait(self.interval):
            try:
                report = self.retention.run(
                    max_batches=self.max_batches, pause=self.pause, stop=self.stop
                )
            except TokenQuotaError as exc:  # the store away: try again next time
                log.warning("pruning failed: %s", exc)
            except Exception:  # never let one bad run end pruning for good
                log.exception("pruning failed")
            else:
                self.last = report
                if self.archive is not None and report.complete and not self.stop.is_set():
                    self._archive(*self.archive)
                log.info(
                    "pruned %d records in %d batches (%s)%s",
                    report.total,
                    report.batches,
                    ", ".join(f"{k} {v}" for k, v in sorted(report.removed.items())) or "nothing",
                    "" if report.complete else "; the rest next time",
                )
            self.runs += 1

    def _archive(self, age: timedelta, directory: Path) -> None:
        try:
            sink, report = self.retention.archive(
                age, directory, max_batches=self.max_batches, pause=self.pause, stop=self.stop
            )
        except TokenQuotaError as exc:
            log.warning("archiving the ledger failed: %s", exc)
        except Exception:
            log.exception("archiving the ledger failed")
        else:
            if report.total:
                log.info("archived %d ledger events to %s", report.total, sink.path)


def horizons(
    quota: Quota, *, idempotency_hours: float, holds_hours: float, grace_seconds: float
) -> Horizons:
    return Horizons(
        backdate=quota.retention,
        idempotency=timedelta(hours=idempotency_hours),
        holds=timedelta(hours=holds_hours),
        grace=timedelta(seconds=grace_seconds),
    )


def start_pruning(
    quota: Quota,
    *,
    interval: float,
    idempotency_hours: float,
    holds_hours: float,
    grace_seconds: float,
    batch: int,
    max_batches: int,
    pause: float,
    archive_days: int | None = None,
    archive_dir: str = "",
) -> Pruning | None:
    """The service's background pruning, started; None when ``interval`` is 0 (off)."""
    if not interval:
        return None
    try:
        pruner_for(quota.store)
    except TypeError:  # a store of the caller's own making: it prunes itself, if at all
        log.warning("no pruner for %s: background pruning is off", type(quota.store).__name__)
        return None
    found = horizons(
        quota,
        idempotency_hours=idempotency_hours,
        holds_hours=holds_hours,
        grace_seconds=grace_seconds,
    )
    pruning = Pruning(
        Retention(quota, found, batch=batch),
        interval=interval,
        max_batches=max_batches,
        pause=pause,
        archive=(timedelta(days=archive_days), Path(archive_dir)) if archive_days else None,
    )
    pruning.start()
    return pruning
