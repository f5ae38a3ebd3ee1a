"""Prometheus metrics, one registry per app so several apps can share a process.

Label children are looked up once and kept: ``Counter.labels(...)`` takes a
lock and builds a key on every call, and the hot path counts every decision
and times every request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        # As many as the metrics' own children: one per label set ever counted.
        self._decided: dict[tuple[str, str, bool], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}

    def decided(self, operation: str, mode: str, allowed: bool) -> None:
        """Count one decision."""
        key = (operation, mode, allowed)
        child = self._decided.get(key)
        if child is None:
            outcome = "allowed" if allowed else "denied"
            child = self._decided.setdefault(key, self.decisions.labels(operation, mode, outcome))
        child.inc()

    def timed(self, route: str, method: str, seconds: float) -> None:
        """Record one request's latency."""
        key = (route, method)
        child = self._timed.get(key)
        if child is None:
            child = self._timed.setdefault(key, self.latency.labels(route, method))
        child.observe(seconds)
