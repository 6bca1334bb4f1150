"""Per-model statistics as Triton reports them (``model_statistics`` in
``grpc_service.proto``): request success/fail counts and durations, queue and compute time,
inferences (rows) and executions (backend calls), and the same per batch size.

Pure counters, updated on the server's event loop only (no locks): the batcher feeds
:class:`ModelStats` of its model version, :class:`~edgeshift.serve.metrics.ServerMetrics`
feeds :class:`RequestStats` from every answered request, HTTP and gRPC alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """Triton's StatisticDuration: how many times, and their summed nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    """Executions of one batch size: each counts once, with its whole duration."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """What one model version's batcher did. Per-request durations (queue, compute_*) count
    once per request, so a request in a batch of 8 is charged the batch's compute time, as
    Triton does."""

    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows (a request without a batch axis is one)
    execution_count: int = 0  # backend calls
    last_inference_ms: int = 0  # Unix time of the last execution's end
    batch_sizes: dict[int, BatchSizeStats] = field(default_factory=dict)

    def observe_execution(
        self, queue_ns: Sequence[int], rows: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One backend call that served len(QUEUE_NS) requests of ROWS rows in all."""
        requests = len(queue_ns)
        self.queue.add(sum(queue_ns), requests)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        sized = self.batch_sizes.get(rows)
        if sized is None:
            sized = self.batch_sizes[rows] = BatchSizeStats()
        sized.compute_input.add(input_ns)
        sized.compute_infer.add(infer_ns)
        sized.compute_output.add(output_ns)


@dataclass(slots=True)
class Outcomes:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)


class RequestStats:
    """Answered inference requests per (model, version): successes and failures with their
    end-to-end durations."""

    def __init__(self) -> None:
        self._by_model: dict[tuple[str, str], Outcomes] = {}

    def observe(self, model: str, version: str, ok: bool, latency_s: float) -> None:
        key = (model, version)
        outcomes = self._by_model.get(key)
        if outcomes is None:
            outcomes = self._by_model[key] = Outcomes()
        (outcomes.success if ok else outcomes.fail).add(int(latency_s * 1e9))

    def get(self, model: str, version: str) -> Outcomes:
        return self._by_model.get((model, version)) or Outcomes()


def statistics_entry(
    name: str, version: str, model: ModelStats, outcomes: Outcomes
) -> dict[str, Any]:
    """One element of Triton's ``model_stats`` list, in its JSON form."""
    empty = Duration().as_dict()
    return {
        "name": name,
        "version": version,
        "last_inference": model.last_inference_ms,
        "inference_count": model.inference_count,
        "execution_count": model.execution_count,
        "inference_stats": {
            "success": outcomes.success.as_dict(),
            "fail": outcomes.fail.as_dict(),
            "queue": model.queue.as_dict(),
            "compute_input": model.compute_input.as_dict(),
            "compute_infer": model.compute_infer.as_dict(),
            "compute_output": model.compute_output.as_dict(),
            "cache_hit": empty,
            "cache_miss": empty,
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": sized.compute_input.as_dict(),
                "compute_infer": sized.compute_infer.as_dict(),
                "compute_output": sized.compute_output.as_dict(),
            }
            for size, sized in sorted(model.batch_sizes.items())
        ],
    }
