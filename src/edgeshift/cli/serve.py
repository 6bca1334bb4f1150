"""CLI: ``edgeshift serve`` — an Open Inference Protocol v2 server for the given models."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from edgeshift.errors import ConfigError
from edgeshift.serve import ServeOptions, ServerSettings, VersionPolicy, run_server

_LOGGERS = ("edgeshift.serve", "uvicorn.error", "edgeshift.serve.access")


@contextlib.contextmanager
def _server_logging(access_log: bool, level: str) -> Iterator[None]:
    """Server messages and the JSON access log on stderr while serving; the loggers are put
    back afterwards (a failed start inside a test must not leave handlers on a closed stream)."""
    loggers = {name: logging.getLogger(name) for name in _LOGGERS}
    saved = {n: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for n, lg in loggers.items()}
    server_handler = logging.StreamHandler(sys.stderr)
    server_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in _LOGGERS[:2]:
        logger = logging.getLogger(name)
        logger.handlers[:] = [server_handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    access = logging.getLogger("edgeshift.serve.access")
    access.propagate = False
    access.disabled = not access_log
    access_handler = logging.StreamHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))  # JSON lines, one per request
    access.handlers[:] = [access_handler]
    access.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, (handlers, lvl, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
            logger.setLevel(lvl)


def serve_command(
    paths: list[Path] = typer.Argument(
        ...,
        help="Model files, optimize artifact directories, or model repositories "
        "(REPO/NAME/VERSION/model.onnx).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port; 0 picks a free one."),
    max_batch: int = typer.Option(32, "--max-batch", help="Rows per backend call; 1: no batching."),
    max_delay_ms: str = typer.Option(
        "auto",
        "--max-delay-ms",
        help="Wait this long for a full batch; 0: take what is queued; auto: wait briefly "
        "for the last batch's clients to return.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Runtime threads per model (default: usable CPUs)."
    ),
    instances: int = typer.Option(
        1,
        "--instances",
        help="Backend calls per model at once, each with threads/instances runtime threads.",
    ),
    max_queue: int = typer.Option(
        512, "--max-queue", help="Queued requests per model version before answering 503."
    ),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body, MiB."),
    version_policy: str = typer.Option(
        "latest", "--version-policy", help="Versions to load: latest, all, or specific:1,3."
    ),
    backend: str | None = typer.Option(
        None, "--backend", "-b", help="onnxruntime or openvino (default: the artifact's)."
    ),
    access_log: bool = typer.Option(
        True, "--access-log/--no-access-log", help="One JSON line per request on stderr."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Serve models over the KServe Open Inference Protocol v2 (Triton clients work as is)."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"--log-level {log_level!r}: use debug, info, warning or error")
    options = ServeOptions(
        max_batch=max_batch,
        max_delay_ms=_delay_ms(max_delay_ms),
        max_queue=max_queue,
        threads=threads,
        instances=instances,
        backend=backend,
        version_policy=VersionPolicy.parse(version_policy),
    )
    settings = ServerSettings(
        paths=paths,
        host=host,
        port=port,
        options=options,
        max_body_bytes=ServerSettings.body_limit_bytes(max_body_mb),
        access_log=access_log,
    )
    with _server_logging(access_log, log_level):
        run_server(settings)


def _delay_ms(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"--max-delay-ms {text!r}: give milliseconds (e.g. 2, or 0 to never wait) or auto"
        ) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
