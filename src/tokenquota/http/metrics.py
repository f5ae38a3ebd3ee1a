"""Prometheus metrics, one registry per app so several apps can share a process.

Label children are looked up once and kept: ``Counter.labels(...)`` takes a
lock and builds a key on every call, and the hot path counts every decision
and times every request.

With several worker processes (``serve --workers N``) each worker counts in
its own memory, and a scrape reaches one of them: the totals went 2, 4, 2, 4.
``serve`` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start;
prometheus-client keeps every value in a file there, and a scrape adds up
every worker's files (``MultiProcessCollector``), the ones of workers that
have exited included, so a counter never goes back.

Numbers that describe the shared state rather than the traffic (the spool's
depth, the Redis ledger mover's lag, the holds in flight) are read from the
engine at scrape time by whichever worker answers, never counted: every
worker would read the same. The holds in flight are a count query on the
store, so each worker keeps the number a few seconds (engine/inflight.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tokenquota.domain.errors import StoreUnavailable
from tokenquota.engine.inflight import Cached, HoldsInFlight, holds_in_flight

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory the workers share their values in, when serve set one."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = multiprocess_dir() is not None
        self.decisions = Counter(
            "tokenquota_decisions_total",
            "Check and consume decisions by operation, mode and outcome.",
            ["operation", "mode", "outcome"],
            registry=self.registry,
        )
        self.shadow_blocks = Counter(
            "tokenquota_shadow_blocks_total",
            "Decisions a shadow limit would have blocked.",
            registry=self.registry,
        )
        self.failed_open = Counter(
            "tokenquota_failed_open_total",
            "Requests admitted without the store (on_store_error=open), by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenquota_request_seconds",
            "Time to answer a request, by route template.",
            ["route", "method"],
            registry=self.registry,
        )
        self.requests = Counter(
            "tokenquota_requests_total",
            "Requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "tokenquota_store_seconds",
            "Time a call spends on its lane's thread (the store step, with the planning "
            "and the answer around it), by lane: decisions or reads.",
            ["lane"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "tokenquota_store_errors_total",
            "Calls the store could not answer (a 503 store_unavailable), by lane.",
            ["lane"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "tokenquota_webhook_attempts_total",
            "Webhook delivery attempts by outcome: delivered, retry (failed, tried again "
            "later) or failed (the last attempt failed: dead-lettered).",
            ["outcome"],
            registry=self.registry,
        )
        # Read at scrape time: how many deliveries wait and how many are dead letters
        # (kept a few seconds, as the holds in flight: a scrape storm is one query).
        self.webhook_counts: Callable[[], Mapping[str, int]] | None = None
        self._webhook_counts: Cached[Mapping[str, int]] | None = None
        # The holds in flight of the quota last scraped, with their few seconds' cache.
        self._holds: HoldsInFlight | None = None
        self._caches_lock = threading.Lock()
        # As many as the metrics' own children: one per label set ever counted.
        self._decided: dict[tuple[str, str, bool], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}
        self._answered: dict[tuple[str, str, int], Counter] = {}

    def decided(self, operation: str, mode: str, allowed: bool) -> None:
        """Count one decision."""
        key = (operation, mode, allowed)
        child = self._decided.get(key)
        if child is None:
            outcome = "allowed" if allowed else "denied"
            child = self._decided.setdefault(key, self.decisions.labels(operation, mode, outcome))
        child.inc()

    def timed(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one request's latency and count it under its status code."""
        key = (route, method)
        child = self._timed.get(key)
        if child is None:
            child = self._timed.setdefault(key, self.latency.labels(route, method))
        child.observe(seconds)
        answered = (route, method, status)
        counter = self._answered.get(answered)
        if counter is None:
            counter = self._answered.setdefault(
                answered, self.requests.labels(route, method, str(status))
            )
        counter.inc()

    def delivered(self, outcome: str) -> None:
        """Count one webhook delivery attempt (engine/delivery.py calls it)."""
        self.webhook_deliveries.labels(outcome).inc()

    def lane(self, name: str) -> Callable[[float, BaseException | None], None]:
        """The observer of one lane's calls (``http.capacity.Threads.observe``)."""
        seconds = self.store_seconds.labels(name)
        errors = self.store_errors.labels(name)

        def observe(elapsed: float, raised: BaseException | None) -> None:
            seconds.observe(elapsed)
            if isinstance(raised, StoreUnavailable):
                errors.inc()

        return observe

    def exposition(self, quota: Any) -> bytes:
        """The text a scrape gets: every worker's counts, and the live state of ``quota``."""
        scrape = CollectorRegistry(auto_describe=False)
        if self.shared:
            scrape.register(multiprocess.MultiProcessCollector(None))  # type: ignore[no-untyped-call]
        else:
            scrape.register(self.registry)
        if quota is not None:
            scrape.register(Live(quota, self.holds_of(quota)))
        if self.webhook_counts is not None:
            scrape.register(Deliveries(self.deliveries_of(self.webhook_counts).read))
        return generate_latest(scrape)

    def holds_of(self, quota: Any) -> HoldsInFlight | None:
        """The cached hold count of ``quota`` (made on the first scrape, kept after)."""
        with self._caches_lock:
            if self._holds is None or self._holds.quota is not quota:
                self._holds = holds_in_flight(quota)
            return self._holds

    def deliveries_of(self, counts: Callable[[], Mapping[str, int]]) -> Cached[Mapping[str, int]]:
        """The cached delivery counts (made on the first scrape, kept after)."""
        with self._caches_lock:
            if self._webhook_counts is None or self._webhook_counts.source is not counts:
                self._webhook_counts = Cached(counts)
            return self._webhook_counts

    def close(self) -> None:
        """This worker is ending: its live values stop counting (counters stay)."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class Live(Collector):
    """Gauges read from the engine when scraped (see the module's docstring)."""

    def __init__(self, quota: Any, holds: HoldsInFlight | None = None) -> None:
        self.quota = quota
        self.holds = holds

    def collect(self) -> Iterable[Any]:
        yield from self._holds()
        spool = self.quota.spool
        if spool is not None:
            depth = GaugeMetricFamily(
                "tokenquota_spool_depth",
                "Usage admitted while the store was unreachable and not yet stored "
                "(on_store_error=open).",
            )
            depth.add_metric([], float(spool.depth()))
            yield depth
        try:
            lag = self.quota.ledger_lag()
        except Exception:  # Redis away: the scrape still answers, without these two
            lag = None
        if lag is not None:
            pending = GaugeMetricFamily(
                "tokenquota_ledger_pending_events",
                "Events in the Redis streams the mover has not copied to the SQL ledger yet.",
            )
            pending.add_metric([], float(lag.pending))
            yield pending
            behind = GaugeMetricFamily(
                "tokenquota_ledger_lag_seconds",
                "Age of the oldest event the mover has not copied yet (0 when none wait).",
            )
            behind.add_metric([], lag.seconds)
            yield behind

    def _holds(self) -> Iterable[Any]:
        if self.holds is None:
            return
        try:
            counts = self.holds.read()
        except Exception:  # the store away: the scrape still answers, without this one
            return
        gauge = GaugeMetricFamily(
            "tokenquota_holds_in_flight",
            "Live holds in the store: reservations still held and leases not released, "
            "before their expiry (read at most every few seconds).",
            labels=["kind"],
        )
        gauge.add_metric(["reservation"], float(counts.reservations))
        gauge.add_metric(["lease"], float(counts.leases))
        yield gauge


class Deliveries(Collector):
    """Webhook deliveries per status, read from the store when scraped (every worker
    would read the same rows, so they are not counted per worker)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Any]:
        try:
            counts = self.counts()
        except Exception:  # the store away: the scrape still answers, without these
            return
        gauge = GaugeMetricFamily(
            "tokenquota_webhook_deliveries",
            "Webhook deliveries by status: pending (waiting for an attempt), failed (dead "
            "letters, until redelivered) and delivered.",
            labels=["status"],
        )
        for status, count in sorted(counts.items()):
            gauge.add_metric([str(status)], float(count))
        yield gauge
