"""CLI: ``edgeshift inspect`` — what a model is: I/O, size, MACs, activation memory, runtimes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgeshift.cli.render import (
    console,
    err_console,
    human_bytes,
    human_count,
    print_json,
    progress_enabled,
    to_jsonable,
)
from edgeshift.errors import EdgeshiftError, ShapeError
from edgeshift.model.analysis import ModelAnalysis, analyze
from edgeshift.model.load import LoadedModel, load_model
from edgeshift.model.shapes import parse_shape_overrides
from edgeshift.runtime import BACKENDS, open_backend


@dataclass(frozen=True)
class RuntimeSupport:
    """Whether one runtime could load the model (fp32, one thread), and its error if not."""

    backend: str
    loads: bool
    error: str | None = None


def runtime_load_check(model: LoadedModel, backend: str) -> RuntimeSupport:
    """Try to open MODEL on BACKEND; a failure is a result, not an exception."""
    try:
        open_backend(model, backend, "fp32", threads=1).close()
    except EdgeshiftError as exc:
        return RuntimeSupport(backend, False, str(exc))
    except Exception as exc:  # a runtime crashing on load is still an answer about it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return RuntimeSupport(backend, False, f"{type(exc).__name__}: {first}")
    return RuntimeSupport(backend, True)


@contextmanager
def _steps(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield progress


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _header(path: str, a: ModelAnalysis) -> None:
    # Exporters import many domains they never use; name only those with nodes.
    used = {op.rsplit(".", 1)[0] for op in a.op_histogram if "." in op}
    extra = ", ".join(f"{d} {v}" for d, v in a.opsets.items() if d in used)
    console.print(Text(path, style="bold"))
    console.print(
        Text(
            f"IR {a.ir_version} · opset {a.opset}{f' ({extra})' if extra else ''} · "
            f"producer {a.producer or '?'}"
        )
    )


def _io_table(a: ModelAnalysis) -> Table:
    table = Table(title="Inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape", "analysed at"):
        table.add_column(col)
    rows = [("in", spec, a.input_shapes.get(spec.name)) for spec in a.inputs]
    rows += [("out", spec, a.output_shapes.get(spec.name)) for spec in a.outputs]
    for kind, spec, concrete in rows:
        table.add_row(
            kind, Text(spec.name), spec.dtype, Text(spec.shape_text()), Text(_shape_text(concrete))
        )
    return table


def _summary_table(a: ModelAnalysis) -> Table:
    table = Table(title="Size and compute", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("exact", justify="right")
    weights = "weight bytes"
    if a.constant_node_weight_bytes:
        weights += f" ({human_bytes(a.constant_node_weight_bytes)} in Constant nodes)"
    rows = (
        ("parameters", human_count(a.params), a.params),
        (weights, human_bytes(a.weight_bytes), a.weight_bytes),
        ("MACs", human_count(a.macs), a.macs),
        ("FLOPs", human_count(a.flops), a.flops),
        ("peak activation memory (planned)", human_bytes(a.peak_activation_bytes),
         a.peak_activation_bytes),
        ("activation memory, no reuse", human_bytes(a.naive_activation_bytes),
         a.naive_activation_bytes),
    )  # fmt: skip
    for what, value, exact in rows:
        table.add_row(what, value, f"{exact:,}")
    return table


def _op_key(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def _ops_table(a: ModelAnalysis) -> Table:
    table = Table(title="Ops", title_justify="left")
    table.add_column("op")
    for col in ("nodes", "MACs", "FLOPs", "% FLOPs"):
        table.add_column(col, justify="right")
    order = sorted(
        a.op_histogram, key=lambda op: (-a.flops_by_op.get(op, 0), -a.op_histogram[op], op)
    )
    uncounted = Counter(_op_key(n.domain, n.op_type) for n in a.nodes if not n.counted)

    def cell(value: int | None, op: str) -> str:
        # "—": op only inside subgraphs; "?": no node of it counted; "+?": some not counted.
        if value is None:
            return "—"
        if uncounted[op] == a.op_histogram[op] or (uncounted[op] and not value):
            return "?"
        return human_count(value) + ("+?" if uncounted[op] else "")

    for op in order:
        flops = a.flops_by_op.get(op)
        flops_text = cell(flops, op)
        share = "—" if flops is None or not a.flops else f"{100 * flops / a.flops:.1f}"
        table.add_row(
            Text(op),
            str(a.op_histogram[op]),
            cell(a.macs_by_op.get(op), op),
            flops_text,
            "?" if flops_text == "?" else share,
        )
    return table


def _nodes_table(a: ModelAnalysis, top: int) -> Table:
    costly = sorted(a.nodes, key=lambda n: -n.flops)[:top]
    table = Table(title=f"Top {len(costly)} nodes by FLOPs", title_justify="left")
    table.add_column("node", overflow="fold")
    table.add_column("op")
    for col in ("MACs", "FLOPs", "act. in", "act. out", "weights"):
        table.add_column(col, justify="right", no_wrap=True)
    for n in costly:
        table.add_row(
            Text(n.name), Text(n.op_type), human_count(n.macs), human_count(n.flops),
            human_bytes(n.input_bytes), human_bytes(n.output_bytes), human_bytes(n.weight_bytes),
        )  # fmt: skip
    return table


def _runtimes_table(support: list[RuntimeSupport]) -> Table:
    table = Table(title="Runtimes (fp32, load only)", title_justify="left")
    table.add_column("runtime")
    table.add_column("loads")
    table.add_column("error", overflow="fold")
    for s in support:
        table.add_row(s.backend, "yes" if s.loads else Text("no", style="red"), Text(s.error or ""))
    return table


def _render(path: str, a: ModelAnalysis, support: list[RuntimeSupport] | None, top: int) -> None:
    _header(path, a)
    console.print(_io_table(a))
    for note in a.assumed:
        console.print(Text(f"  assumed: {note}"))
    console.print(_summary_table(a))
    console.print(_ops_table(a))
    if top > 0:
        console.print(_nodes_table(a, top))
    if support is not None:
        console.print(_runtimes_table(support))
    if a.uncounted:
        console.print(Text("Not counted", style="bold"))
        for note in a.uncounted:
            console.print(Text(f"  - {note}"))


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_command(
        model: str = typer.Argument(..., help="A .onnx file or an artifact directory."),
        shape: list[str] = typer.Option(
            [],
            "--shape",
            help="NAME=DIMS for an input (1x3x224x224) or a symbolic dim (seq=128); repeatable.",
        ),
        batch: int | None = typer.Option(
            None, "--batch", help="Batch size for the first axis of dynamic inputs."
        ),
        json_output: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
        load_check: bool = typer.Option(
            True, "--load-check/--no-load-check", help="Try loading on each runtime."
        ),
        top: int = typer.Option(0, "--top", help="Also list the N costliest nodes."),
    ) -> None:
        """Ops, parameters, MACs/FLOPs, peak activation memory and runtime support."""
        if batch is not None and batch < 1:
            raise ShapeError(f"--batch must be a positive integer, not {batch}")
        overrides = parse_shape_overrides(shape)
        loaded = load_model(model)
        support: list[RuntimeSupport] | None = None
        with _steps(progress_enabled(json_output)) as progress:
            task = progress.add_task("analysing") if progress else None
            analysis = analyze(loaded, overrides, batch)
            if load_check:
                support = []
                for backend in BACKENDS:
                    if progress is not None and task is not None:
                        progress.update(task, description=f"loading on {backend}")
                    support.append(runtime_load_check(loaded, backend))
        if json_output:
            print_json(
                {
                    "model": str(loaded.path),
                    **to_jsonable(analysis),
                    "load_check": None if support is None else to_jsonable(support),
                }
            )
            return
        _render(str(loaded.path), analysis, support, top)
