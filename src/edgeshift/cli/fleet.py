"""CLI: ``edgeshift fleet …`` — the control plane and the operators' commands (docs/fleet.md)."""

from __future__ import annotations

import typer

fleet_app = typer.Typer(
    help="Roll models out to edge devices: control plane, devices, groups, artifacts, rollouts.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
