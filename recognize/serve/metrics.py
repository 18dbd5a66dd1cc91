"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recognize_requests_total", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("recognize_request_errors_total", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("recognize_request_seconds", "time from request to response", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("recognize_queue_depth", "image requests admitted and not yet answered", registry=r)
        self.rejected = Counter("recognize_rejected_total", "image requests refused with 503 (queue full)",
                                registry=r)
        self.stage_queue = Gauge("recognize_stage_queue_frames", "frames waiting for a stage", ["stage"], registry=r)
        self.batch_frames = Histogram("recognize_batch_frames", "frames per stage call (micro-batch size)", ["stage"],
                                      buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("recognize_batch_requests", "requests merged into one stage call", ["stage"],
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("recognize_stage_seconds", "seconds per stage call", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_errors = Counter("recognize_stage_errors_total", "stage calls that raised", ["stage"], registry=r)
        self.reused = Counter("recognize_stage_results_reused_total",
                              "stage results taken from the result cache instead of recomputed", ["stage"], registry=r)

    def gauge_function(self, name: str, documentation: str, function: Callable[[], float]) -> None:
        Gauge(name, documentation, registry=self.registry).set_function(function)

    def render(self) -> bytes:
        return generate_latest(self.registry)
