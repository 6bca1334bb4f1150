"""The measurement harness: warm-up, timed runs, percentiles, throughput, memory, first result."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeshift.bench.inputs import index_ranges, load_npz_batches, synthesize_inputs
from edgeshift.errors import BackendError, ShapeError
from edgeshift.model.load import LoadedModel, load_model
from edgeshift.model.shapes import (
    TensorSpec,
    check_fits_memory,
    graph_io,
    input_bytes,
    resolve_input_shapes,
)
from edgeshift.runtime import open_backend
from edgeshift.runtime.base import Backend

DEFAULT_DURATION_S = 5.0
MIN_ITERATIONS = 10


@dataclass
class BenchResult:
    """One measurement of one model on one backend at one batch size."""

    model: str
    backend: str
    precision: str
    threads: int
    batch: int
    iterations: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_items_s: float  # batch / mean latency: one stream, back to back
    first_result_ms: float  # session creation + first run: what a cold start costs
    load_ms: float  # session creation alone
    peak_rss_bytes: int  # the process's peak resident set, runtime and Python included
    model_rss_bytes: int  # resident growth from before loading to the end of the runs
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)
    data: str | None = None  # the .npz the inputs came from, if any
    runtime_options: dict[str, Any] = field(default_factory=dict)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def measure(
    backend: Backend,
    feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    iterations: int | None = None,
    duration_s: float | None = None,
    warmup: int = 5,
    on_step: Callable[[float], None] | None = None,
) -> list[float]:
    """Seconds per ``backend.run`` after ``warmup`` untimed runs; feeds cycle if a list.

    Stops after ``iterations`` runs, or once ``duration_s`` has passed (at least
    MIN_ITERATIONS runs); with neither, runs for DEFAULT_DURATION_S. ``on_step`` gets each
    run's seconds (for progress bars).
    """
    if iterations is not None and duration_s is not None:
        raise BackendError("give either iterations or a duration, not both")
    if iterations is not None and iterations < 1:
        raise BackendError(f"iterations must be >= 1, not {iterations}")
    if duration_s is not None and duration_s <= 0:
        raise BackendError(f"duration must be > 0 s, not {duration_s}")
    batches = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    if not batches:
        raise BackendError("no inputs to measure with")
    if iterations is None and duration_s is None:
        duration_s = DEFAULT_DURATION_S
    for i in range(warmup):
        backend.run(batches[i % len(batches)])
    times: list[float] = []
    deadline = time.perf_counter() + duration_s if duration_s is not None else None
    i = 0
    while True:
        start = time.perf_counter()
        backend.run(batches[i % len(batches)])
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        if on_step is not None:
            on_step(elapsed)
        i += 1
        if iterations is not None and i >= iterations:
            break
        if deadline is not None and time.perf_counter() >= deadline and i >= MIN_ITERATIONS:
            break
    return times


def bench(
    model: str | Path | LoadedModel,
    *,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    batch: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    data: str | Path | None = None,
    iterations: int | None = None,
    duration_s: float | None = None,
    warmup: int = 5,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    progress: bool = False,
) -> BenchResult:
    """Load MODEL on a runtime and measure latency, throughput, memory and time to first result.

    Inputs come from ``data`` (an .npz, see :mod:`edgeshift.bench.inputs`) or are synthesized
    from the model's specs, with dynamic dims resolved by ``shapes`` / ``batch``.
    """
    if batch < 1:
        raise BackendError(f"--batch must be >= 1, not {batch}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, check=False)
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    runtime = open_backend(loaded, backend, precision, threads, options)
    load_s = time.perf_counter() - t0

    assumed: list[str] = []
    specs = _input_specs(loaded, runtime)
    if data is not None:
        batches = load_npz_batches(data, runtime.inputs, batch)
        input_shapes = {k: tuple(v.shape) for k, v in batches[0].items()}
        check_shapes_fit(loaded, specs, input_shapes)
    else:
        resolved = resolve_input_shapes(specs, shapes, batch)
        assumed = resolved.assumed
        input_shapes = resolved.shapes
        check_shapes_fit(loaded, specs, input_shapes)
        batches = [
            synthesize_inputs(runtime.inputs, input_shapes, seed, index_ranges(loaded.proto))
        ]
    t_fix = time.perf_counter()
    runtime.fix_input_shapes(input_shapes)
    load_s += time.perf_counter() - t_fix
    t1 = time.perf_counter()
    runtime.run(batches[0])
    first_s = load_s + (time.perf_counter() - t1)

    times = _measure_with_progress(
        runtime, batches, iterations, duration_s, max(0, warmup - 1), progress
    )
    arr_ms = np.asarray(times) * 1e3
    mean_ms = float(arr_ms.mean())
    p50, p90, p99 = (float(v) for v in np.percentile(arr_ms, [50, 90, 99]))
    model_rss = max(0, psutil.Process().memory_info().rss - rss_before)
    name = str(loaded.artifact_dir or loaded.path)
    return BenchResult(
        model=name,
        backend=runtime.name,
        precision=runtime.precision,
        threads=runtime.threads,
        batch=batch,
        iterations=len(times),
        warmup=warmup,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean_ms,
        min_ms=float(arr_ms.min()),
        throughput_items_s=batch * 1e3 / mean_ms,
        first_result_ms=first_s * 1e3,
        load_ms=load_s * 1e3,
        peak_rss_bytes=_peak_rss_bytes(),
        model_rss_bytes=model_rss,
        input_shapes=input_shapes,
        assumed=assumed,
        data=str(data) if data is not None else None,
        runtime_options=runtime.runtime_options(),
    )


def _input_specs(loaded: LoadedModel, runtime: Backend) -> list[TensorSpec]:
    """The model's own input specs when they name the runtime's inputs: they keep the
    symbolic dim names (``seq``) that OpenVINO drops, so ``--shape seq=17`` means the same
    on every backend."""
    declared, _ = graph_io(loaded.proto)
    if sorted(s.name for s in declared) == sorted(s.name for s in runtime.inputs):
        return declared
    return runtime.inputs


def check_shapes_fit(
    loaded: LoadedModel,
    specs: list[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]],
    available_bytes: int | None = None,
) -> None:
    """Raise ShapeError before anything is allocated when SHAPES exceed the memory available
    or a limit the model implies (a position table, a fixed Reshape)."""
    available = (
        available_bytes if available_bytes is not None else int(psutil.virtual_memory().available)
    )
    check_fits_memory(specs, shapes, input_bytes(specs, shapes), available, "the inputs alone")
    if not any(s.is_dynamic for s in specs):
        return  # the shapes are the model's own: nothing to bound
    from edgeshift.model.analysis import analyze  # ~0.1 s import, only for open dims

    try:
        analyze(loaded, shapes, available_bytes=available)
    except ShapeError:
        raise
    except Exception:  # the analysis only vets shapes; the runtime has the last word
        return


def _measure_with_progress(
    runtime: Backend,
    batches: list[dict[str, np.ndarray]],
    iterations: int | None,
    duration_s: float | None,
    warmup: int,
    progress: bool,
) -> list[float]:
    if not progress:
        return measure(
            runtime, batches, iterations=iterations, duration_s=duration_s, warmup=warmup
        )
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from edgeshift.cli.render import err_console

    total = float(iterations) if iterations is not None else (duration_s or DEFAULT_DURATION_S)
    columns = (
        TextColumn(f"[bold]{runtime.name}[/] {runtime.precision}"),
        BarColumn(),
        TextColumn("{task.fields[done]} runs"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("bench", total=total, done=0)
        count = 0

        def step(elapsed: float) -> None:
            nonlocal count
            count += 1
            bar.update(task, advance=1 if iterations is not None else elapsed, done=count)

        return measure(
            runtime,
            batches,
            iterations=iterations,
            duration_s=duration_s,
            warmup=warmup,
            on_step=step,
        )
