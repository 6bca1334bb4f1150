"""CLI: optimize (not yet built)."""

import typer


def register(app: typer.Typer) -> None:
    pass
