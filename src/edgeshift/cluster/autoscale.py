"""Autoscaling policy: how many replicas a deployment wants, from the signals every replica's
``/metrics`` already has (requests in flight, which include those queued for the batcher)
and, when the rate and service time are known, the plan's queueing model (M/M/c).

Pure: :meth:`Autoscaler.step` takes the time and the samples and returns a count; the loop
that scrapes and applies it lives in the controller. Scale up at once (a load step must be
served within seconds), scale down only after the load stayed low for ``downscale_delay_s``
(one quiet second must not drop a replica that the next burst needs).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from edgeshift.errors import ConfigError
from edgeshift.plan.queueing import min_servers


@dataclass(frozen=True)
class AutoscalePolicy:
    min_replicas: int = 1
    max_replicas: int = 1
    # In-flight requests one replica should carry: the batcher fills its batches with a few
    # waiting, and beyond that a request mostly waits in the queue.
    target_in_flight: float = 4.0
    downscale_delay_s: float = 10.0
    window: int = 5  # samples averaged: one scrape of a bursty gauge is noise
    # Queueing model (optional): scale so the p99 stays within the budget at the seen rate.
    latency_budget_ms: float | None = None
    latency_quantile: float = 0.99
    max_utilization: float = 0.8

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"--min-replicas must be >= 0, not {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"--max-replicas ({self.max_replicas}) must be >= 1 and >= --min-replicas "
                f"({self.min_replicas})"
            )
        if not self.target_in_flight > 0:
            raise ConfigError(f"target in-flight must be > 0, not {self.target_in_flight}")

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class LoadSample:
    """One scrape of a deployment: totals over its replicas."""

    in_flight: float
    arrival_rps: float | None = None  # requests/s since the previous scrape
    service_ms: float | None = None  # mean latency of a request alone (batch of one)


def wanted_replicas(sample: LoadSample, policy: AutoscalePolicy) -> int:
    """Replicas for one sample, before clamping: in-flight over the per-replica target, or
    the queueing model's count when it asks for more."""
    by_load = math.ceil(sample.in_flight / policy.target_in_flight - 1e-9)
    by_model = 0
    if (
        policy.latency_budget_ms is not None
        and sample.arrival_rps
        and sample.service_ms
        and sample.arrival_rps > 0
    ):
        found = min_servers(
            sample.arrival_rps,
            sample.service_ms,
            policy.latency_quantile,
            policy.latency_budget_ms,
            policy.max_utilization,
            max_replicas=policy.max_replicas,
        )
        by_model = policy.max_replicas if found is None else found
    return max(by_load, by_model)


@dataclass
class Autoscaler:
    """Stateful wrapper around :func:`wanted_replicas`: averaging window and down-scale delay."""

    policy: AutoscalePolicy
    _samples: deque[LoadSample] = field(default_factory=deque)
    _low_since_s: float | None = None

    def step(self, now_s: float, current: int, sample: LoadSample) -> int:
        self._samples.append(sample)
        while len(self._samples) > self.policy.window:
            self._samples.popleft()
        mean = LoadSample(
            sum(s.in_flight for s in self._samples) / len(self._samples),
            sample.arrival_rps,
            sample.service_ms,
        )
        # A single sample above the whole window's mean is a load step: act on it now.
        wanted = self.policy.clamp(
            max(wanted_replicas(mean, self.policy), self._up_now(sample, current))
        )
        if wanted > current:
            self._low_since_s = None
            return wanted
        if wanted == current:
            self._low_since_s = None
            return current
        if self._low_since_s is None:
            self._low_since_s = now_s
        if now_s - self._low_since_s >= self.policy.downscale_delay_s:
            self._low_since_s = None
            return wanted
        return current

    def _up_now(self, sample: LoadSample, current: int) -> int:
        # Two samples in a row above capacity: scale up without waiting for the mean to catch
        # up (the mean of a 5-sample window lags a step by 2-3 samples).
        recent = list(self._samples)[-2:]
        capacity = current * self.policy.target_in_flight
        if len(recent) == 2 and all(s.in_flight > capacity for s in recent):
            return wanted_replicas(sample, self.policy)
        return 0


def metric_total(metrics_text: str, name: str) -> float:
    """Sum of metric NAME's samples (every label set) in one replica's ``/metrics`` text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


def in_flight_total(metrics_text: str) -> float:
    """Requests received and not yet answered (queued ones included), every model."""
    return metric_total(metrics_text, "edgeshift_inference_in_flight")


def requests_total(metrics_text: str) -> float:
    """Requests answered so far, every model and status (a counter)."""
    return metric_total(metrics_text, "edgeshift_inference_requests_total")
