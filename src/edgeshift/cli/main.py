"""The ``edgeshift`` command: one typer app; each verb registers itself from its own module."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from edgeshift.cli.render import err_console
from edgeshift.errors import EdgeshiftError

# One module per verb (or family of verbs), each with ``register(app)``.
_COMMAND_MODULES = (
    "inspect", "bench", "zoo", "optimize", "targets", "plan", "serve", "export", "compile", "verify",
    "cluster", "fleet", "agent",
)  # fmt: skip


class _Group(TyperGroup):
    """Turns every EdgeshiftError into one line on stderr and its exit code: no traceback."""

    # ctx: click's Context, which newer typer vendors privately; Any keeps both typable.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeshiftError as exc:
            # escape: messages name extras like edgeshift[torch], which rich would eat as markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    name="edgeshift",
    help="Move AI inference off accelerators: inspect, bench, optimize, estimate, plan, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from edgeshift import __version__

        typer.echo(f"edgeshift {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Move AI inference off accelerators: inspect, bench, optimize, estimate, plan, serve."""


# `edgeshift agent` runs for days beside its model on small devices: started as that verb,
# the process registers it alone rather than import every verb's libraries (onnx, the
# optimizer, the target catalog: 22 MB of the agent's RSS, measured by benchmarks/fleet.py).
for _name in ("agent",) if sys.argv[1:2] == ["agent"] else _COMMAND_MODULES:
    importlib.import_module(f"edgeshift.cli.{_name}").register(app)


def main() -> None:
    app()
