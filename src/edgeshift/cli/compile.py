"""CLI: ``edgeshift compile`` — an int8 model to C for a Cortex-M, verified under QEMU on request."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeshift.cli.render import console, err_console, human_count, print_json, progress_enabled
from edgeshift.errors import MismatchError


def compile_command(
    model: Path = typer.Argument(..., help="An int8 QDQ .onnx (or a float one with --data)."),
    target: str = typer.Option(
        ..., "--target", "-t", help="cortex-m4, cortex-m7, cortex-m55, or a catalog MCU (stm32h7)."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="CALIB.npz: one array per model input (samples first). Quantizes a float model; "
        "with --verify, its samples are checked first.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: ./<model>-<core>-c)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out directory."),
    verify: bool = typer.Option(
        False, "--verify", help="Build with arm-none-eabi-gcc, run under QEMU, compare with ORT."
    ),
    samples: int = typer.Option(
        1000, "--samples", help="Inputs to verify (data samples first, then random int8)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random verification inputs."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the QEMU run may take."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Compile a model to int8 C for a Cortex-M: static arena, no malloc, no interpreter."""
    from edgeshift.mcu.compile import compile_model

    show = progress_enabled(json_output)
    spinner = Progress(
        SpinnerColumn(),
        TextColumn("[bold]compile[/] {task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    with spinner if show else nullcontext():
        task = spinner.add_task("starting") if show else None

        def on_progress(message: str) -> None:
            if task is not None:
                spinner.update(task, description=message)

        result = compile_model(
            model, target, data=data, out=out, force=force, verify=verify,
            samples=samples, seed=seed, timeout_s=timeout, progress=on_progress,
        )  # fmt: skip
    if json_output:
        print_json({"out_dir": str(result.out_dir), **result.manifest})
    else:
        _render(result.out_dir, result.manifest)
    if result.within_contract is False:
        v = result.manifest["verification"]
        raise MismatchError(
            f"{v['mismatched_samples']} of {v['samples']} outputs differ from ONNX Runtime "
            f"(max {v['max_abs_diff']} LSB, first at sample {v['first_mismatch']}) — see "
            f"{result.out_dir}/manifest.json"
        )


def _render(out_dir: Path, m: dict[str, Any]) -> None:
    plan = m["memory_plan"]
    table = Table(
        title=f"{Path(m['source']['path']).name} → {m['target']['core']} · {human_count(m['macs'])} MACs",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for header in ("step", "op", "output", "kernel", "scratch", "in place"):
        table.add_column(header, no_wrap=True)
    for op in m["ops"]:
        table.add_row(
            str(op["step"]), op["op"], "x".join(map(str, op["output_shape"])), op["kernel"],
            f"{op['scratch_bytes']:,} B" if op["scratch_bytes"] else "", "yes" if op["in_place"] else "",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"arena: {plan['arena_bytes']:,} B ({plan['method']}; liveness lower bound "
        f"{plan['lower_bound_bytes']:,} B) · weights: {m['weight_bytes']:,} B",
        soft_wrap=True,
    )
    v = m.get("verification")
    if v:
        if v["mismatched_samples"] == 0:
            exact = "bit-exact"
        elif v["within_contract"]:
            exact = (
                f"within 1 LSB ({v['mismatched_samples']} samples differ: ONNX Runtime runs "
                f"{', '.join(v['ort_float_groups'])} in float32, the C in exact integers)"
            )
        else:
            exact = "MISMATCH"
        console.print(
            f"verified on {v['qemu_machine']} ({m['target']['core']}): {exact} on "
            f"{v['samples']:,} inputs against ONNX Runtime · "
            f"{v['instructions_per_inference']:,.0f} instructions per inference "
            f"({v['instructions_per_mac']:.2f} per MAC)",
            soft_wrap=True,
        )
        console.print(
            f"RAM {v['ram_bytes']:,} B (arena {v['arena_bytes_linker']:,} B as linked) · "
            f"flash {v['flash_bytes']:,} B (.text {v['sizes']['text']:,}, .rodata "
            f"{v['sizes']['rodata']:,}, .data {v['sizes']['data']:,}, .bss {v['sizes']['bss']:,})",
            soft_wrap=True,
        )
        console.print(
            "instruction counts are exact (QEMU TCG plugin); time on a real part is counts x "
            "cycles per instruction at its clock — QEMU does not model timing",
            soft_wrap=True,
        )
    console.print(f"wrote {out_dir}/ (model.c, model.h, main.c, manifest.json)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
