"""How close is ``edgeshift estimate --target host`` to ``edgeshift bench`` on this machine?

One run: for each zoo model (MiniLM when its package is installed), each batch and each
runtime configuration, measure the latency with the bench harness on the model's eval data,
calibrate the host, and estimate. Rounds interleave calibration passes and bench runs; each
row keeps its best p50 ("measured"), each microbenchmark its best time, so a busy neighbour
on a shared machine hurts neither side more than the other. "spread" is worst / best round.
Prints the signed error per row (estimate / measured - 1) and the median absolute error; the
goal is <= 25%.

Run: ``python benchmarks/estimate_accuracy.py [--batches 1,8] [--duration 3] [--rounds 5]``
(``--cached`` reuses the cached calibration instead of measuring).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeshift import zoo
from edgeshift.bench import bench
from edgeshift.runtime.openvino import cpu_capabilities
from edgeshift.targets.estimate import estimate
from edgeshift.targets.host import (
    build_host_target,
    detect_host,
    load_calibration,
    new_calibrator,
    save_calibration,
)

# (runtime, precision the runtime runs at, precision the estimate is asked for)
CONFIGS = [("onnxruntime", "fp32"), ("openvino", "bf16")]


def run(
    batches: list[int], duration_s: float, cached: bool, configs: list[str], n_rounds: int
) -> None:
    console = Console()
    host = detect_host()
    calibrator = None if cached else new_calibrator(host)
    cached_cal = load_calibration(host) if cached else None
    if cached and cached_cal is None:
        raise SystemExit("no cached calibration: run `edgeshift targets host` first")
    use = [c for c in CONFIGS if f"{c[0]}:{c[1]}" in configs or c[1] in configs]
    if "BF16" not in cpu_capabilities():
        use = [c for c in use if c[1] != "bf16"]
    table = Table(title="estimate vs bench on this host (p50 latency per call)")
    cols = ("model", "runtime", "prec", "batch", "measured ms", "estimated ms", "error", "spread")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "runtime", "prec") else "right")
    errors: list[float] = []
    names = [e.name for e in zoo.list_models() if e.available]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        models = {n: zoo.get(n, Path(tmp) / n) for n in names}
        rows = [(n, b, p, batch) for n in names for b, p in use for batch in batches]
        p50s: dict[tuple[str, str, str, int], list[float]] = {r: [] for r in rows}
        shapes: dict[tuple[str, str, str, int], dict[str, tuple[int, ...]]] = {}
        # Rounds interleave the rows and the calibration passes: on a shared machine other
        # jobs only ever add time, and a quiet moment then helps every row and the
        # calibration alike. Each row keeps its best p50, each microbenchmark its best time.
        for _ in range(n_rounds):
            if calibrator is not None:
                calibrator.run_pass(progress=True)
            for row in rows:
                name, backend, precision, batch = row
                m = models[name]
                r = bench(
                    m.model_path, backend=backend, precision=precision, batch=batch,
                    data=m.data_path, duration_s=duration_s / n_rounds,
                )  # fmt: skip
                p50s[row].append(r.p50_ms)
                shapes[row] = r.input_shapes
        cal = calibrator.result() if calibrator is not None else cached_cal
        assert cal is not None
        if calibrator is not None:
            save_calibration(cal, host)
            calibrator.close()
        target = build_host_target(host, cal)
        console.print(
            f"host: {cal.cpu_model}, {cal.threads} threads; calibration {cal.seconds:.1f} s over "
            f"{n_rounds if calibrator else 'cached'} passes (GEMM fp32 "
            f"{cal.achieved_gops['fp32']:.0f} GFLOP/s, copy {cal.dram_copy_gbs:.0f} GB/s, "
            f"call {cal.call_overhead_us['fp32']:.1f} µs, op {cal.op_overhead_us['fp32']:.2f} µs)"
        )
        for row in rows:
            name, backend, precision, batch = row
            best = min(p50s[row])
            spread = max(p50s[row]) / best
            est = estimate(
                models[name].model_path, target, batch=batch, precision=precision,
                shapes=shapes[row],
            )  # fmt: skip
            err = est.latency_ms / best - 1
            errors.append(abs(err))
            table.add_row(
                name, backend, precision, str(batch), f"{best:.4g}", f"{est.latency_ms:.4g}",
                f"{err:+.0%}", f"{spread:.2f}",
            )  # fmt: skip
    console.print(table)
    console.print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    med = statistics.median(errors)
    verdict = "meets" if med <= 0.25 else "misses"
    console.print(
        f"median absolute error {med:.0%} over {len(errors)} rows ({verdict} the 25% goal)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of bench per row")
    parser.add_argument("--rounds", type=int, default=3, help="bench rounds per row (best p50)")
    parser.add_argument("--cached", action="store_true", help="reuse the cached calibration")
    parser.add_argument(
        "--configs", default="fp32,bf16", help="fp32 (ORT) and/or bf16 (OpenVINO), comma-separated"
    )
    args = parser.parse_args()
    run(
        [int(b) for b in args.batches.split(",")],
        args.duration,
        args.cached,
        args.configs.split(","),
        args.rounds,
    )


if __name__ == "__main__":
    main()
