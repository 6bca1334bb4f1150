"""CLI: ``edgeshift export torch MODULE:FACTORY OUT.onnx --input NAME=DIMS[:dtype]``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from edgeshift.cli.render import console, err_console, print_json, progress_enabled
from edgeshift.errors import ShapeError
from edgeshift.model.load import load_model
from edgeshift.model.shapes import graph_io

export_app = typer.Typer(help="Convert models from training frameworks to verified ONNX.")


@export_app.command("torch")
def torch_command(
    factory: str = typer.Argument(
        ..., help="MODULE:FACTORY — an importable callable returning an nn.Module."
    ),
    out: Path = typer.Argument(..., help="The .onnx file to write."),
    inputs: list[str] = typer.Option(
        [],
        "--input",
        "-i",
        help="NAME=DIMS[:dtype] per forward() argument, in order (dtype default float32).",
    ),
    outputs: list[str] = typer.Option(
        [], "--output", "-o", help="Output names, in order (default: output, output_0…)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset to export at."),
    dynamic_batch: bool = typer.Option(
        True, "--dynamic-batch/--static-batch", help="Name axis 0 of every tensor 'batch'."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Export a PyTorch module to ONNX, check it, and verify onnxruntime matches PyTorch."""
    from edgeshift.model.torch_export import (
        example_arrays,
        from_torch,
        load_factory,
        parse_input_spec,
    )

    specs = [parse_input_spec(s) for s in inputs]
    if not specs:
        raise ShapeError(
            "give one --input NAME=DIMS[:dtype] per forward() argument, e.g. --input input=1x64"
        )
    # Like uvicorn: MODULE is looked up from the current directory too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if progress_enabled(json_output):
        err_console.print(f"exporting {factory} …")
    module = load_factory(factory)
    path = from_torch(
        module,
        tuple(example_arrays(specs)),
        out,
        input_names=[s.name for s in specs],
        output_names=outputs or None,
        dynamic_batch=dynamic_batch,
        opset=opset,
    )
    graph_inputs, graph_outputs = graph_io(load_model(path).proto)
    result = {
        "path": str(path),
        "opset": opset,
        "inputs": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape or [])} for t in graph_inputs
        ],
        "outputs": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape or [])} for t in graph_outputs
        ],
        "verified": True,
    }
    if json_output:
        print_json(result)
        return
    console.print(f"wrote {path} (opset {opset}); onnxruntime matches PyTorch", markup=False)
    for label, tensors in (("input ", graph_inputs), ("output", graph_outputs)):
        for t in tensors:
            console.print(f"  {label} {t.name} {t.dtype} {t.shape_text()}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
