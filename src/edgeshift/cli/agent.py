"""CLI: ``edgeshift agent`` — the edge agent that serves a device's model (docs/fleet.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import typer

from edgeshift.errors import ConfigError


def skip_unused_imports() -> None:
    """Keep out of the agent's process what its libraries import only for features it never
    runs, and which they treat as optional themselves: httpx's command-line client (click,
    pygments, rich's syntax highlighting and progress bars; ``httpx.main`` then says to
    install ``httpx[cli]``) and uvicorn's file watcher for ``--reload`` (watchfiles; uvicorn
    then falls back to polling). ~3 MB of RSS the agent would keep for days. A no-op for
    whatever is imported already."""
    for name in ("httpx._main", "watchfiles"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {pair!r}: write it as key=value")
        labels[key] = value
    return labels


def agent_command(
    server: str = typer.Option(..., "--server", help="The control plane's URL."),
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's state (keys, slots)."),
    enrol_token: str | None = typer.Option(
        None, "--enrol-token", help="First run: one-time token."
    ),
    root: Path | None = typer.Option(None, "--root", help="First run: the trusted TUF root.json."),
    name: str | None = typer.Option(None, "--name", help="First run: the device's name."),
    label: list[str] = typer.Option([], "--label", help="First run: key=value, repeatable."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the model is served on."),
    port: int = typer.Option(8000, "--port", help="Port the model is served on; 0: any."),
    threads: int | None = typer.Option(None, "--threads", help="Runtime threads per model."),
    as_json: bool = typer.Option(False, "--json", help="Print the ready line as JSON."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning."),
) -> None:
    """Run the edge agent: serve the device's model, install what the control plane wants."""
    skip_unused_imports()  # before the server and the transport import their libraries
    from edgeshift.fleet.agent.process import AgentSettings, run
    from edgeshift.serve.repository import ServeOptions

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for logger_name in ("edgeshift.agent", "edgeshift.serve"):
        logger = logging.getLogger(logger_name)
        logger.handlers[:] = [handler]
        logger.setLevel(log_level.upper())
        logger.propagate = False
    settings = AgentSettings(
        server_url=server,
        data_dir=data_dir,
        enrol_token=enrol_token,
        root=root,
        name=name,
        labels=_labels(label),
        host=host,
        port=port,
        serve_options=ServeOptions(threads=threads),
    )

    def ready(info: dict[str, object]) -> None:
        if as_json:
            print(json.dumps(info), flush=True)
        else:
            print(
                f"agent {info['device_id']} serving on {info['serving']} "
                f"(active: {info['active'] or 'none'}, phase {info['phase']})",
                flush=True,
            )

    asyncio.run(run(settings, ready))


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)
