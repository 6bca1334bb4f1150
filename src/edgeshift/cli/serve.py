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
from edgeshift.serve.connections import ConnectionSettings
from edgeshift.serve.limits import GrpcLimits, RequestLimits
from edgeshift.serve.security import AuthSettings, TlsSettings, read_tokens

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
    ctx: typer.Context,
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
    grpc_port: str = typer.Option(
        "8001", "--grpc-port", help="gRPC port beside HTTP (Triton's 8001); 0: any free; off: none."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Refuse to start when any model fails to load (else: not ready)."
    ),
    memory_budget_mb: float | None = typer.Option(
        None, "--memory-budget-mb", help="What each model's runtime may keep between requests."
    ),
    auth_token_file: Path | None = typer.Option(
        None, "--auth-token-file", help="Bearer tokens for inference, one a line (never on argv)."
    ),
    repository_api: bool = typer.Option(
        False, "--repository-api", help="Enable the repository API (index, load, unload)."
    ),
    repository_token_file: Path | None = typer.Option(
        None, "--repository-token-file", help="Bearer tokens for the repository API, one a line."
    ),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Host name accepted besides loopback names (repeatable)."
    ),
    allowed_origin: list[str] = typer.Option(
        [], "--allowed-origin", help="Web origin allowed to call in, e.g. https://ui.example."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve TLS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM key of --tls-cert."),
    tls_client_ca: Path | None = typer.Option(
        None, "--tls-client-ca", help="PEM CA: clients must present a certificate it signed."
    ),
    max_header_kb: float = typer.Option(64.0, "--max-header-kb", help="Request line + headers."),
    header_timeout_s: float = typer.Option(10.0, "--header-timeout-s", help="Whole request head."),
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", help="Longest body stall."),
    keep_alive_s: float = typer.Option(5.0, "--keep-alive-s", help="Idle keep-alive timeout."),
    max_connections: int | None = typer.Option(
        None, "--max-connections", help="Open HTTP connections (default: from the file limit)."
    ),
    graceful_timeout_s: float = typer.Option(
        30.0, "--graceful-timeout-s", help="On SIGTERM, wait this long for in-flight requests."
    ),
    max_rows: int = typer.Option(65536, "--max-rows", help="Rows (first dim) per input."),
    max_tensor_mb: float = typer.Option(
        128.0, "--max-tensor-mb", help="Decoded inputs per request."
    ),
    max_dims: int = typer.Option(16, "--max-dims", help="Rank of one input tensor."),
    json_offload_mb: float = typer.Option(
        1.0, "--json-offload-mb", help="Larger JSON bodies decode off the event loop."
    ),
    grpc_max_streams: int = typer.Option(
        128, "--grpc-max-streams", help="gRPC calls open at once on one connection."
    ),
    grpc_max_calls: int = typer.Option(
        4096, "--grpc-max-calls", help="gRPC calls open at once on the port (more: refused)."
    ),
    grpc_idle_timeout_s: float = typer.Option(
        300.0, "--grpc-idle-timeout-s", help="Close a gRPC connection idle this long."
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Serve on a Ray cluster, HAProxy in front (as edgeshift cluster serve): --ray "
        "[ADDRESS], ADDRESS being HOST:PORT, auto or local (the default: start one here).",
    ),
    plan: Path | None = typer.Option(None, "--plan", help="With --ray: plan.json's pools."),
    replicas: int | None = typer.Option(None, "--replicas", help="With --ray: replicas."),
    min_replicas: int | None = typer.Option(None, "--min-replicas", help="With --ray."),
    max_replicas: int | None = typer.Option(None, "--max-replicas", help="With --ray."),
    replica_host: str | None = typer.Option(None, "--replica-host", help="With --ray."),
    ingress_mode: str | None = typer.Option(None, "--ingress-mode", help="With --ray."),
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
        strict=strict,
        memory_budget_bytes=None
        if memory_budget_mb is None
        else _mib("--memory-budget-mb", memory_budget_mb),
    )
    cluster = (plan, replicas, min_replicas, max_replicas, replica_host, ingress_mode)
    if ray or any(v is not None for v in cluster):
        from edgeshift.cli.cluster import serve_on_ray  # the same path as `cluster serve`

        return serve_on_ray(ctx, ray, options)
    limits = RequestLimits(
        max_body_bytes=ServerSettings.body_limit_bytes(max_body_mb),
        max_rows=_at_least_one("--max-rows", max_rows),
        max_tensor_bytes=_mib("--max-tensor-mb", max_tensor_mb),
        max_dims=_at_least_one("--max-dims", max_dims),
        json_offload_bytes=_mib("--json-offload-mb", json_offload_mb),
    )
    if not grpc_idle_timeout_s > 0:
        raise ConfigError(f"--grpc-idle-timeout-s must be > 0, not {grpc_idle_timeout_s:g}")
    grpc_limits = GrpcLimits(
        max_streams_per_connection=_at_least_one("--grpc-max-streams", grpc_max_streams),
        max_concurrent_calls=_at_least_one("--grpc-max-calls", grpc_max_calls),
        idle_timeout_s=grpc_idle_timeout_s,
    )
    if not graceful_timeout_s >= 0:
        raise ConfigError(f"--graceful-timeout-s must be >= 0, not {graceful_timeout_s:g}")
    settings = ServerSettings(
        paths=paths,
        host=host,
        port=port,
        options=options,
        access_log=access_log,
        graceful_timeout_s=graceful_timeout_s,
        grpc_port=_grpc_port(grpc_port),
        auth=AuthSettings(
            inference_tokens=_tokens(auth_token_file, "--auth-token-file"),
            repository_tokens=_tokens(repository_token_file, "--repository-token-file"),
            repository_api=repository_api,
            allowed_hosts=frozenset(h.strip().lower() for h in allowed_host),
            allowed_origins=frozenset(o.strip().rstrip("/") for o in allowed_origin),
        ),
        tls=_tls(tls_cert, tls_key, tls_client_ca),
        limits=limits,
        grpc_limits=grpc_limits,
        connections=ConnectionSettings(
            max_header_bytes=int(max_header_kb * 1024) if max_header_kb > 0 else 0,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            keep_alive_timeout_s=keep_alive_s,
            max_connections=max_connections,
        ),
    )
    if repository_token_file is not None and not repository_api:
        raise ConfigError(
            "--repository-token-file needs --repository-api — add it, or drop the file"
        )
    with _server_logging(access_log, log_level):
        run_server(settings)


def _mib(flag: str, value: float) -> int:
    if not value > 0:
        raise ConfigError(f"{flag} must be > 0, not {value:g}")
    return int(value * (1 << 20))


def _at_least_one(flag: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be >= 1, not {value}")
    return value


def _grpc_port(text: str) -> int | None:
    if text.strip().lower() in ("off", "none", "no"):
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--grpc-port {text!r}: give a port (0-65535; 0: any free) or off")
    return port


def _tokens(path: Path | None, flag: str) -> frozenset[str]:
    return frozenset() if path is None else read_tokens(path, flag)


def _tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsSettings | None:
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key — add both")
        return None
    if cert is None or key is None:
        raise ConfigError(
            "TLS needs both --tls-cert and --tls-key — give the certificate and its key"
        )
    tls = TlsSettings(cert, key, client_ca)
    tls.server_context()  # unreadable or mismatched files: one line now, not at bind time
    return tls


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
