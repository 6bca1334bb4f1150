"""CLI: ``edgeshift agent`` — the edge agent that serves a device's model (docs/fleet.md)."""

from __future__ import annotations

import typer


def agent_command() -> None:
    """Run the edge agent (being built)."""
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)
