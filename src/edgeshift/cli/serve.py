"""CLI: serve (not yet built)."""

import typer


def register(app: typer.Typer) -> None:
    pass
