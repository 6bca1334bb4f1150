"""CLI: ``edgeshift optimize`` — the fastest variant of a model within an accuracy budget."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeshift.cli.render import console, err_console, human_bytes, print_json, progress_enabled
from edgeshift.errors import BudgetError, OptimizeError
from edgeshift.optimize import OptimizeResult, optimize
from edgeshift.optimize.manifest import CandidateRecord
from edgeshift.optimize.search import check_out_dir

_VERDICT_STYLE = {
    "chosen": "bold green",
    "accepted": "green",
    "rejected": "red",
    "skipped": "dim",
    "failed": "yellow",
}


def _split_list(values: list[str]) -> list[str]:
    """Accept repeated options and comma lists alike: --backends a,b --backends c."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def optimize_command(
    model: Path = typer.Argument(..., help="The .onnx model to optimize."),
    data: Path = typer.Option(
        ..., "--data", help="EVAL.npz: one array per model input (samples first), labels optional."
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Name of the labels array in EVAL.npz (default: 'labels' if present).",
    ),
    metric: str = typer.Option(
        "auto",
        "--metric",
        help="auto, top1, sequence[:blank=N|last,cer] (CTC), cosine, rmse, max-abs, iou, or "
        "module:function (file.py:function).",
    ),
    max_drop: float | None = typer.Option(
        None,
        "--max-drop",
        help="Largest accuracy drop allowed, in the metric's unit (top1/iou: points, default 1; "
        "cosine: default 0.01; rmse/max-abs: default 1% of the target's scale).",
    ),
    objective: str = typer.Option("latency", "--objective", help="latency (p50) or throughput."),
    batch: int = typer.Option(1, "--batch", help="Items per inference call, as you will serve."),
    backends: list[str] = typer.Option(
        [], "--backends", help="Limit to these runtimes: onnxruntime, openvino (comma list)."
    ),
    recipes: list[str] = typer.Option(
        [], "--recipes", help="Limit to these recipes (comma list; see docs/optimize.md)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Artifact directory (default: ./<model>-optimized, <model> the file's stem, or "
        "its directory's name for a model.onnx). An existing one is kept unless --force.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite the --out directory when it already holds files."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration/evaluation split."),
    quick: bool = typer.Option(
        False, "--quick", help="Fewer samples and timing runs: a fast, rougher answer."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        "-t",
        help="A catalog target (rpi4, aws-c7g-2xlarge, ...): only recipes its CPU runs, and the "
        "chosen artifact verified on its architecture (arm64 under QEMU) before it is written.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Runtime threads (default: CPUs usable under cgroups/affinity)."
    ),
    no_recovery: bool = typer.Option(
        False, "--no-recovery", help="Do not keep sensitive layers in float when int8 misses."
    ),
    require: bool = typer.Option(
        False, "--require", help="Exit non-zero (3) when no candidate meets the budget."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search runtimes x precisions x quantization recipes; keep the fastest within budget."""
    if objective not in ("latency", "throughput"):
        raise OptimizeError(f"unknown --objective {objective!r} — use latency or throughput")
    out_dir = out if out is not None else default_out_dir(model)
    check_out_dir(out_dir, force)
    show_progress = progress_enabled(json_output)
    bar = Progress(
        TextColumn("[bold]optimize[/]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    with bar if show_progress else nullcontext():
        task = bar.add_task("starting", total=1) if show_progress else None

        def on_progress(message: str, done: int, total: int) -> None:
            if task is not None:
                bar.update(task, description=message, completed=done, total=total)

        result = optimize(
            model,
            data,
            labels=labels,
            metric=metric,
            max_drop=max_drop,
            objective=objective,
            batch=batch,
            backends=_split_list(backends) or None,
            recipes=_split_list(recipes) or None,
            out=out_dir,
            seed=seed,
            quick=quick,
            threads=threads,
            target=target,
            recovery=not no_recovery,
            require=False,  # the table is printed first; the exit code follows below
            progress=on_progress,
            force=force,
        )
    if json_output:
        print_json(
            {
                "message": result.message,
                "artifact": result.artifact_dir,
                **result.manifest.model_dump(mode="json"),
            }
        )
    else:
        _render(result)
    if require and not result.budget_met:
        raise BudgetError(f"{result.message} — raise --max-drop, or add calibration data")


def default_out_dir(model: Path) -> Path:
    """``./<model>-optimized``: the file's stem, or for a ``model.onnx`` (the name every
    exporter and artifact uses) or an artifact directory, the directory's name."""
    resolved = model.resolve()
    if resolved.is_dir():
        name = resolved.name
    elif resolved.stem == "model" and resolved.parent.name:
        name = resolved.parent.name
    else:
        name = resolved.stem
    return Path(f"{name}-optimized")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _row(c: CandidateRecord) -> list[str]:
    style = _VERDICT_STYLE[c.status]
    return [
        c.name,
        human_bytes(c.size_bytes) if c.size_bytes is not None else "—",
        _fmt(c.p50_ms, ".3f"),
        _fmt(c.throughput_items_s, ",.0f"),
        _fmt(c.speedup, ".2f") + ("x" if c.speedup is not None else ""),
        _fmt(c.score, ".4g"),
        _fmt(c.drop, "+.2g"),
        f"[{style}]{c.status}[/]",
    ]


def _render(result: OptimizeResult) -> None:
    m = result.manifest
    title = (
        f"{Path(m.source.path).name} · {m.metric.name}, budget {m.metric.max_drop:.3g} "
        f"({m.metric.unit}) · batch {m.performance.batch} · {m.performance.threads} threads"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("candidate", no_wrap=True)
    for header in ("size", "p50 ms", "items/s", "speed-up", m.metric.name, "drop"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for candidate in m.candidates:
        table.add_row(*_row(candidate))
    console.print(table)
    for c in m.candidates:
        floats = f" [{len(c.float_nodes)} node(s) in float]" if c.float_nodes else ""
        if c.params.get("restored_layers"):  # openvino-int8-ac: what NNCF reverted to float
            floats += f" [{len(c.params['restored_layers'])} layer(s) reverted to float by NNCF]"
        console.print(f"  {c.name}: {c.reason}{floats}", soft_wrap=True)
    console.print(f"metric: {m.metric.name} — {m.metric.reason}", soft_wrap=True)
    for note in m.repair_notes:
        console.print(f"repaired for quantizers: {note}", soft_wrap=True)
    console.print(result.message, soft_wrap=True)
    if m.outside_budget_default is not None:
        console.print(f"note: {m.outside_budget_default.line}", soft_wrap=True)
    if result.artifact_dir is not None:
        console.print(
            f"artifact: {result.artifact_dir} (run it: edgeshift bench {result.artifact_dir})",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_command)
