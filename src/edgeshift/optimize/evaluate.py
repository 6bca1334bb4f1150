"""Running candidates: outputs over the held-out set, and side-by-side latency measurement."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edgeshift.bench import measure
from edgeshift.errors import DataError
from edgeshift.optimize.data import EvalData
from edgeshift.runtime.base import Backend


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput_items_s: float
    iterations: int


def eval_batches(data: EvalData, batch: int, fixed: int | None) -> list[dict[str, np.ndarray]]:
    """The held-out set as feed dicts of ``batch`` samples, as they will be served.

    The batch matters for accuracy, not only speed: dynamic quantization picks one activation
    scale per batch. A model with a fixed batch axis drops the incomplete last batch.
    """
    feeds = list(data.batches(batch))
    if fixed is not None:
        feeds = [f for f in feeds if next(iter(f.values())).shape[0] == fixed]
    if not feeds:
        raise DataError(
            f"the held-out split has {data.samples} sample(s), fewer than one batch of {batch} — "
            "add samples or lower --batch"
        )
    return feeds


def run_outputs(
    backend: Backend, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], float]:
    """Every output over all FEEDS, concatenated on the sample axis, and seconds per run."""
    collected: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    for feed in feeds:
        for name, value in backend.run(feed).items():
            collected.setdefault(name, []).append(np.asarray(value))
    seconds_per_run = (time.perf_counter() - start) / len(feeds)
    outputs = {
        k: np.concatenate(v, axis=0) if v[0].ndim else np.stack(v) for k, v in collected.items()
    }
    return outputs, seconds_per_run


def measure_side_by_side(
    backends: list[Backend],
    feeds: list[dict[str, np.ndarray]],
    iterations: list[int],
    warmup: int,
    rounds: int,
) -> list[Timing]:
    """Time each backend in ROUNDS interleaved rounds, so that load from other processes on
    the host falls on every candidate alike; percentiles over all rounds together."""
    times: list[list[float]] = [[] for _ in backends]
    for round_index in range(rounds):
        for i, backend in enumerate(backends):
            per_round = max(1, math.ceil(iterations[i] / rounds))
            times[i] += measure(
                backend, feeds, iterations=per_round, warmup=warmup if round_index == 0 else 1
            )
    batch = next(iter(feeds[0].values())).shape[0]
    timings = []
    for run_times in times:
        ms = np.asarray(run_times) * 1e3
        mean_ms = float(ms.mean())
        timings.append(
            Timing(
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                mean_ms=mean_ms,
                throughput_items_s=batch * 1e3 / mean_ms,
                iterations=len(run_times),
            )
        )
    return timings
