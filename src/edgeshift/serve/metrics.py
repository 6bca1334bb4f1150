"""Prometheus metrics of one server, in a registry of its own (two servers in one process,
as in tests, do not share counters)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgeshift.serve.stats import RequestStats

# Latency buckets from sub-millisecond edge models to multi-second transformer batches.
_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests, errors, latency and batch-size histograms, queue depth and requests in
    flight, per model."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._in_flight: dict[str, int] = {}  # by model; requests run on the event loop only
        self.request_stats = RequestStats()  # Triton's success/fail statistics
        self.requests = Counter(
            "edgeshift_inference_requests",
            "Inference requests answered, by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "edgeshift_inference_errors",
            "Inference requests answered with an error status, by model and status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeshift_inference_latency_seconds",
            "Time from request received to response ready, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeshift_batch_size",
            "Rows per backend call formed by the dynamic batcher, by model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgeshift_queue_depth",
            "Requests waiting for the model's batcher, by model.",
            ["model"],
            registry=self.registry,
        )

        self.in_flight = Gauge(
            "edgeshift_inference_in_flight",
            "Inference requests received and not yet answered, by model.",
            ["model"],
            registry=self.registry,
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() costs microseconds per call; the label sets are few (models x statuses).
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_started(self, model: str) -> None:
        # A plain count read at scrape time: the gauge's own inc/dec take a lock per request.
        count = self._in_flight.get(model)
        if count is None:
            count = 0
            self.in_flight.labels(model).set_function(lambda: self._in_flight[model])
        self._in_flight[model] = count + 1

    def request_finished(self, model: str, version: str, status: int, latency_s: float) -> None:
        self._in_flight[model] -= 1
        self.observe_request(model, version, status, latency_s)

    def observe_request(self, model: str, version: str, status: int, latency_s: float) -> None:
        self._child(self.requests, model, version, str(status)).inc()
        if version:  # an unknown model or version has no statistics to count in
            self.request_stats.observe(model, version, status < 400, latency_s)
        if status >= 400:
            self._child(self.errors, model, str(status)).inc()
        else:
            self._child(self.latency, model).observe(latency_s)

    def observe_batch(self, model: str, rows: int) -> None:
        self._child(self.batch_size, model).observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
