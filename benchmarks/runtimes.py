"""ORT fp32 vs OpenVINO f32 vs OpenVINO bf16 on the zoo models, side by side from one run.

Each configuration is opened once; then rounds interleave the configurations (so a noisy
neighbour hurts them all alike) and the table reports the median of the per-round medians,
as a ratio to ORT fp32. Run: ``python benchmarks/runtimes.py [--rounds 7] [--batch 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeshift import zoo
from edgeshift.bench import index_ranges, load_npz_batches, measure, synthesize_inputs
from edgeshift.model import load_model, resolve_input_shapes
from edgeshift.runtime import open_backend
from edgeshift.runtime.openvino import cpu_capabilities

CONFIGS = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def feeds_for(model_path: Path, data_path: Path, batch: int) -> list[dict[str, np.ndarray]]:
    rt = open_backend(model_path, "onnxruntime", threads=1)
    try:
        return load_npz_batches(data_path, rt.inputs, batch)[:8]
    except Exception:  # eval data with fewer samples than the batch: synthesize instead
        shapes = resolve_input_shapes(rt.inputs, batch=batch).shapes
        return [synthesize_inputs(rt.inputs, shapes, 0, index_ranges(load_model(model_path).proto))]


def run(rounds: int, iterations: int, batch: int) -> None:
    console = Console()
    has_bf16 = "BF16" in cpu_capabilities()
    configs = [c for c in CONFIGS if has_bf16 or c[1] != "bf16"]
    names = [e.name for e in zoo.list_models() if e.available]
    table = Table(
        title=f"p50 latency ratio to ORT fp32 (batch {batch}, {rounds} rounds x {iterations} runs)"
    )
    table.add_column("model")
    for backend, precision in configs:
        table.add_column(f"{backend} {precision}", justify="right")
    table.add_column("ORT fp32 p50", justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            m = zoo.get(name, Path(tmp) / name)
            feeds = feeds_for(m.model_path, m.data_path, batch)
            runtimes = [open_backend(m.model_path, b, p) for b, p in configs]
            per_round: list[list[float]] = [[] for _ in configs]
            for _ in range(rounds):
                for i, rt in enumerate(runtimes):
                    times = measure(rt, feeds, iterations=iterations, warmup=3)
                    per_round[i].append(statistics.median(times) * 1e3)
            medians = [statistics.median(r) for r in per_round]
            base = medians[0]
            cells = [f"{base / m:.2f}x" for m in medians]  # speed-up: >1 is faster than ORT
            table.add_row(name, *cells, f"{base:.3f} ms")
            console.log(
                f"{name}: "
                + ", ".join(
                    f"{c[0]} {c[1]} {m:.3f} ms" for c, m in zip(configs, medians, strict=True)
                )
            )
    console.print(table)
    console.print("cells: speed-up over ORT fp32 (ORT p50 / config p50); >1 means faster.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    run(args.rounds, args.iterations, args.batch)


if __name__ == "__main__":
    main()
