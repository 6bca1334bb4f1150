"""CLI: ``edgeshift verify`` — the same artifact on x86, Arm64 (QEMU user mode) and Cortex-M."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from edgeshift.cli.render import console, err_console, print_json
from edgeshift.errors import EdgeshiftError, MismatchError
from edgeshift.verify import EMULATION_NOTE, VerifyReport, build_userland, verify


def verify_command(
    artifact: Path | None = typer.Argument(
        None, help="An optimize artifact directory or a .onnx file."
    ),
    arch: list[str] = typer.Option(
        [], "--arch", "-a", help="arm64, x86_64, cortex-m4… (repeatable; default arm64)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help=".npz with one array per input (default: 256 synthesized samples)."
    ),
    samples: int | None = typer.Option(None, "--samples", help="Use only the first N samples."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    build: bool = typer.Option(
        False,
        "--build-userland",
        help="Download and cache the arm64 userland (Debian arm64 packages + aarch64 wheels).",
    ),
    force: bool = typer.Option(False, "--force", help="With --build-userland: rebuild it."),
) -> None:
    """Run ARTIFACT on each --arch and compare every output with this host's run of it.

    Exit 3 when an architecture misses the tolerance (fp32: 1e-4 of the output's range;
    int8/bf16/fp16: the artifact's own accuracy budget), 2 when one cannot run it.
    """
    if build:
        userland = build_userland(force=force)
        err_console.print(f"arm64 userland ready at {userland.root}")
        if artifact is None:
            return
    if artifact is None:
        raise typer.BadParameter("give an ARTIFACT to verify (or --build-userland)")
    report = verify(artifact, arch or ["arm64"], data, samples=samples)
    if json_output:
        print_json(report.to_dict())
    else:
        _render(report)
    raise_for_report(report)


def raise_for_report(report: VerifyReport) -> None:
    """The first error as an EdgeshiftError (exit 2), then a failed tolerance (exit 3)."""
    if report.errors:
        raise EdgeshiftError(report.errors[0].message)
    if report.failed:
        raise MismatchError(report.failed[0].message)


def _render(report: VerifyReport) -> None:
    table = Table(
        title=f"{escape(report.artifact)} — {report.backend} {report.precision}, "
        f"{report.samples} samples vs {report.reference_arch}"
    )
    for column in ("arch", "output", "verdict", "top-1", "cosine", "seconds"):
        table.add_column(
            column, justify="left" if column in ("arch", "output", "verdict") else "right"
        )
    for r in report.results:
        if not r.outputs:
            table.add_row(r.arch, "", escape(r.message or r.status), "", "", "")
            continue
        for c in r.outputs:
            a = c.agreement
            top1 = f"{a.top1_agreement_pct:.2f}%" if a.top1_agreement_pct is not None else "-"
            verdict = ("pass" if c.passed else "FAIL") + f" ({c.criterion})"
            seconds = f"{r.seconds:.2f}" + ("*" if r.emulated else "")
            table.add_row(r.arch, a.name, verdict, top1, f"{a.cosine_mean:.6f}", seconds)
    console.print(table)
    console.print(f"tolerance: {report.tolerance}")
    if report.emulated:
        console.print(f"* emulated — {EMULATION_NOTE}")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
