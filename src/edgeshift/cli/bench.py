"""CLI: ``edgeshift bench`` — how fast a model runs on this machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgeshift.bench import bench as run_bench
from edgeshift.cli.render import console, err_console, human_bytes, print_json, progress_enabled
from edgeshift.model.shapes import parse_shape_overrides


def bench_command(
    model: Path = typer.Argument(..., help="A .onnx file or an optimize artifact directory."),
    backend: str | None = typer.Option(
        None,
        "--backend",
        "-b",
        help="onnxruntime or openvino (default: the artifact's, else onnxruntime).",
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        "-p",
        help="fp32, bf16 or fp16 (OpenVINO). Default: the artifact's, else fp32.",
    ),
    batch: int = typer.Option(1, "--batch", help="Items per inference call."),
    threads: int | None = typer.Option(
        None, "--threads", help="Runtime threads (default: CPUs usable under cgroups/affinity)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", help="Seconds to measure (default 5 when --iterations is not given)."
    ),
    iterations: int | None = typer.Option(None, "--iterations", "-n", help="Timed runs to make."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs before measuring."),
    shape: list[str] = typer.Option(
        [], "--shape", help="NAME=DIMS for an input (1x3x224x224) or a symbolic dim (seq=128)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help=".npz with one array per input (keyed by input name, samples first)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for synthesized inputs."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Measure latency percentiles, throughput, peak memory and time to first result."""
    if duration is not None and iterations is not None:
        raise typer.BadParameter("give --duration or --iterations, not both")
    result = run_bench(
        model,
        backend=backend,
        precision=precision,
        threads=threads,
        batch=batch,
        shapes=parse_shape_overrides(shape),
        data=data,
        iterations=iterations,
        duration_s=duration,
        warmup=warmup,
        seed=seed,
        progress=progress_enabled(json_output),
    )
    if json_output:
        print_json(result)
        return
    for note in result.assumed:
        err_console.print(f"[yellow]assumed[/] {note}")
    table = Table(title=f"{Path(result.model).name} · {result.backend} {result.precision}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    shapes_text = ", ".join(f"{k}={list(v)}" for k, v in result.input_shapes.items())
    rows = [
        ("inputs", shapes_text + (f" (from {Path(result.data).name})" if result.data else "")),
        ("batch · threads", f"{result.batch} · {result.threads}"),
        ("runs (after warm-up)", f"{result.iterations} (+{result.warmup})"),
        ("latency p50", f"{result.p50_ms:.3f} ms"),
        ("latency p90", f"{result.p90_ms:.3f} ms"),
        ("latency p99", f"{result.p99_ms:.3f} ms"),
        ("latency mean", f"{result.mean_ms:.3f} ms"),
        ("throughput", f"{result.throughput_items_s:,.1f} items/s"),
        ("time to first result", f"{result.first_result_ms:.1f} ms (load {result.load_ms:.1f} ms)"),
        (
            "peak RSS",
            f"{human_bytes(result.peak_rss_bytes)} (model +{human_bytes(result.model_rss_bytes)})",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
