"""CLI: ``edgeshift zoo list`` and ``edgeshift zoo get NAME DIR`` — the example models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeshift.cli.render import console, err_console, print_json, progress_enabled
from edgeshift.zoo import get, list_models

zoo_app = typer.Typer(
    help="Example models with real weights and eval data, to try every verb on.",
    no_args_is_help=True,
)


@zoo_app.command("list")
def list_command(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the zoo's models, and what an unavailable one needs."""
    entries = list_models()
    if json_output:
        print_json(entries)
        return
    table = Table(title="edgeshift zoo")
    table.add_column("name", style="bold")
    table.add_column("task")
    table.add_column("available")
    table.add_column("description")
    for e in entries:
        available = "yes" if e.available else f"no: {e.reason}"
        table.add_row(e.name, e.task, escape(available), escape(e.description))
    console.print(table)


@zoo_app.command("get")
def get_command(
    name: str = typer.Argument(..., help="Zoo model name (see `edgeshift zoo list`)."),
    dest: Path = typer.Argument(..., help="Directory to write model.onnx and eval.npz into."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Write a zoo model (model.onnx) and its eval data (eval.npz) into DIR."""
    if progress_enabled(json_output):
        with Progress(
            SpinnerColumn(),
            TextColumn(f"writing {name} to {dest}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            progress.add_task("get", total=None)
            model = get(name, dest)
    else:
        model = get(name, dest)
    if json_output:
        print_json(model)
        return
    console.print(f"[bold]{escape(model.name)}[/] ({model.task})")
    console.print(f"  model: {model.model_path}", markup=False)
    console.print(f"  data:  {model.data_path}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
