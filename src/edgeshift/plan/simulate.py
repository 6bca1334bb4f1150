"""Discrete-event simulation of one placement: Poisson arrivals, c servers, one FIFO queue.

It checks the queueing model's prediction with the assumptions the model makes explicit
(Poisson arrivals at peak rate) but with the service times inference really has: constant by
default, or exponential to reproduce M/M/c exactly.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ServiceDistribution = Literal["deterministic", "exponential"]


@dataclass(frozen=True)
class SimResult:
    """Percentiles of the simulated response and waiting times, in milliseconds."""

    requests: int  # measured requests, after the warm-up ones were dropped
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_wait_ms: float
    p99_wait_ms: float
    utilization: float  # busy server-time over (servers * simulated span)

    def quantile_ms(self, quantile: float) -> float:
        return self.p95_ms if quantile <= 0.95 else self.p99_ms


def simulate_queue(
    arrival_rps: float,
    service_ms: float,
    servers: int,
    *,
    requests: int = 20_000,
    network_ms: float = 0.0,
    service: ServiceDistribution = "deterministic",
    warmup_fraction: float = 0.1,
    seed: int = 0,
) -> SimResult:
    """Simulate ``requests`` Poisson arrivals at ``arrival_rps`` served FIFO by ``servers``.

    Response time = ``network_ms`` + wait + service. The first ``warmup_fraction`` of requests
    are dropped so the empty start does not flatter the percentiles.
    """
    finite = math.isfinite(arrival_rps) and math.isfinite(service_ms) and math.isfinite(network_ms)
    if servers < 1 or requests < 10 or arrival_rps <= 0 or service_ms <= 0 or not finite:
        raise ValueError(
            "need servers >= 1, requests >= 10 and a positive, finite rate and service time"
        )
    if seed < 0:
        raise ValueError(f"seed {seed} is negative — give a seed >= 0")
    # With at least as many servers as requests nobody ever waits: the queue needs no more,
    # and a pool sized for 10^12 servers must not allocate them.
    servers = min(servers, requests)
    rng = np.random.default_rng(seed)
    arrivals_s = np.cumsum(rng.exponential(1.0 / arrival_rps, requests))
    service_s = service_ms / 1000.0
    if service == "exponential":
        services_s = rng.exponential(service_s, requests)
    else:
        services_s = np.full(requests, service_s)
    waits_s = _fifo_waits(arrivals_s, services_s, servers)
    keep = slice(int(requests * warmup_fraction), None)
    response_ms = (waits_s[keep] + services_s[keep]) * 1000.0 + network_ms
    wait_ms = waits_s[keep] * 1000.0
    span_s = float(arrivals_s[-1] - arrivals_s[0]) or service_s
    p50, p95, p99 = np.percentile(response_ms, [50, 95, 99])
    return SimResult(
        requests=int(response_ms.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_wait_ms=float(wait_ms.mean()),
        p99_wait_ms=float(np.percentile(wait_ms, 99)),
        utilization=float(services_s.sum() / (servers * span_s)),
    )


def _fifo_waits(arrivals_s: np.ndarray, services_s: np.ndarray, servers: int) -> np.ndarray:
    waits = np.empty_like(arrivals_s)
    if servers == 1:
        # Lindley's recursion: W_{n+1} = max(0, W_n + S_n - A_{n+1} + A_n).
        free_at = 0.0
        for i, (t, s) in enumerate(zip(arrivals_s.tolist(), services_s.tolist(), strict=True)):
            start = t if t > free_at else free_at
            waits[i] = start - t
            free_at = start + s
        return waits
    # FIFO with identical servers: each arrival takes the server that frees up first.
    free_heap = [0.0] * servers
    for i, (t, s) in enumerate(zip(arrivals_s.tolist(), services_s.tolist(), strict=True)):
        earliest = free_heap[0]
        start = t if t > earliest else earliest
        waits[i] = start - t
        heapq.heapreplace(free_heap, start + s)
    return waits
