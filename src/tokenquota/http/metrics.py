"""Prometheus metrics, one registry per app so several apps can share a process."""

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
