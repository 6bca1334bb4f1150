"""CLI: ``edgeshift cluster serve`` (and ``edgeshift serve --ray``, which lands here) — the
models served across a Ray cluster, HAProxy in front."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from edgeshift.errors import ConfigError
from edgeshift.serve import ServeOptions

cluster_app = typer.Typer(
    help="Serve across a Ray cluster (placement from a plan, autoscaling, rolling updates).",
    no_args_is_help=True,
)


def _grpc_port(text: str) -> int | None:
    from edgeshift.cli.serve import _grpc_port as parse

    return parse(text)


def _delay_ms(text: str) -> float | None:
    from edgeshift.cli.serve import _delay_ms as parse

    return parse(text)  # ServeOptions refuses a negative one, before Ray is touched


@cluster_app.command("serve")
def cluster_serve_command(
    paths: list[Path] = typer.Argument(
        ..., help="Model files, artifact directories or repositories, visible on every node."
    ),
    address: str = typer.Option(
        "local",
        "--address",
        help="Ray cluster address (HOST:PORT of its GCS, or auto); local: start Ray here.",
    ),
    plan: Path | None = typer.Option(
        None, "--plan", help="plan.json from edgeshift plan: pools and replica counts."
    ),
    replicas: int | None = typer.Option(
        None,
        "--replicas",
        help="Replicas to start with (default: --min-replicas, or the plan's, or 1).",
    ),
    min_replicas: int | None = typer.Option(
        None, "--min-replicas", help="The autoscaler's floor (default: the starting count)."
    ),
    max_replicas: int | None = typer.Option(
        None, "--max-replicas", help="The autoscaler's ceiling (default: the starting count)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address HAProxy binds."),
    port: int = typer.Option(8000, "--port", help="HAProxy's port; 0 picks a free one."),
    grpc_port: str = typer.Option(
        "8001", "--grpc-port", help="HAProxy's gRPC port (Triton's 8001); 0: any free; off: none."
    ),
    replica_host: str = typer.Option(
        "node",
        "--replica-host",
        help="Address replicas bind: node (each node's IP), 0.0.0.0, or an IP every node has.",
    ),
    ingress_mode: str = typer.Option(
        "http",
        "--ingress-mode",
        help="http (HAProxy L7: routed by model, retried), tcp (HAProxy L4) or kernel "
        "(the kernel's NAT, no proxy on the data path; root, IPv4).",
    ),
    max_batch: int = typer.Option(32, "--max-batch", help="Rows per backend call, per replica."),
    max_delay_ms: str = typer.Option(
        "auto",
        "--max-delay-ms",
        help="Each replica's batching wait, as serve's (behind HAProxy, 2 batched fuller).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Runtime threads per model in each replica."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print where it serves and the replicas as one JSON line."
    ),
) -> None:
    """Serve models on Ray replicas that run edgeshift's own server, until SIGTERM or Ctrl-C."""
    run_cluster(
        paths,
        address=address,
        plan=plan,
        options=ServeOptions(
            max_batch=max_batch, threads=threads, max_delay_ms=_delay_ms(max_delay_ms)
        ),
        host=host,
        port=port,
        grpc_port=_grpc_port(grpc_port),
        replica_host=replica_host,
        ingress_mode=ingress_mode,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        json_output=json_output,
    )


def run_cluster(
    paths: Sequence[Path],
    *,
    address: str,
    options: ServeOptions,
    host: str,
    port: int,
    grpc_port: int | None,
    plan: Path | None = None,
    replica_host: str = "node",
    ingress_mode: str = "http",
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    json_output: bool = False,
) -> None:
    """Start the cluster, print where it serves, serve until SIGTERM or Ctrl-C, stop it."""
    from edgeshift.cluster import ClusterServer

    server = ClusterServer(
        paths,
        address=address,
        plan=plan,
        options=options,
        host=host,
        port=port,
        grpc_port=grpc_port,
        replica_host=replica_host,
        ingress_mode=ingress_mode,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
    )
    server.start()
    # After start: ray.init installs a SIGTERM handler that aborts the process.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        endpoints = server.endpoints()
        if json_output:
            status = {
                "url": f"http://{server.url}",
                "grpc": server.grpc_url,
                "metrics": server.metrics_url,
                "ingress_mode": server.ingress_mode,
                "apps": server.apps(),
                "replicas": [
                    {
                        "replica_id": e.replica_id,
                        "node_id": e.node_id,
                        "address": e.address,
                        "grpc_address": e.grpc_address,
                        "models": list(e.models),
                    }
                    for e in endpoints
                ],
            }
            sys.stdout.write(json.dumps(status) + "\n")
        else:
            grpc = f" and gRPC on {server.grpc_url}" if server.grpc_url else ""
            metrics = "" if server.ingress_mode != "kernel" else f"; metrics: {server.metrics_url}"
            sys.stdout.write(
                f"serving Open Inference Protocol v2 on http://{server.url}{grpc} "
                f"({len(endpoints)} replicas on {len({e.node_id for e in endpoints})} nodes)"
                f"{metrics}\n"
            )
        sys.stdout.flush()
        stop.wait()
    finally:
        server.stop()


# `edgeshift serve` options that mean the same on a cluster (they reach every replica through
# ServeOptions, or the ingress) and the cluster's own options that serve also takes.
_RAY_OPTIONS = frozenset(
    {
        "paths", "host", "port", "grpc_port", "max_batch", "max_delay_ms", "threads",
        "instances", "max_queue", "version_policy", "backend", "strict", "memory_budget_mb",
        "log_level", "ray", "plan", "replicas", "min_replicas", "max_replicas", "replica_host",
        "ingress_mode",
    }
)  # fmt: skip
_CLUSTER_ONLY = ("plan", "replicas", "min_replicas", "max_replicas", "replica_host", "ingress_mode")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|\[?[A-Za-z0-9_.:-]+\]?:\d+)$")


def split_ray_address(paths: Sequence[Path]) -> tuple[list[Path], str]:
    """``serve MODEL... --ray [ADDRESS]``: click has no option with an optional value, so
    ``--ray`` is a flag and its ADDRESS lands among the paths. It is the one that reads as
    an address (HOST:PORT, auto, local, ray://...) and is not a file; none: ``local``."""
    addresses = [p for p in paths if _RAY_ADDRESS.match(str(p)) and not p.exists()]
    if len(addresses) > 1:
        raise ConfigError(
            f"--ray takes one address, not {', '.join(map(str, addresses))} — give one"
        )
    models = [p for p in paths if p not in addresses]
    if not models:
        raise ConfigError("--ray with no model to serve — give model files or directories")
    return models, str(addresses[0]) if addresses else "local"


def serve_on_ray(ctx: typer.Context, ray: bool, options: ServeOptions) -> None:
    """``edgeshift serve MODEL... --ray [ADDRESS]``: ``cluster serve`` with serve's options.
    Options a cluster cannot honour (TLS, tokens, limits: replicas and HAProxy do not take
    them yet) are refused by name rather than silently dropped."""
    params: dict[str, Any] = ctx.params
    # By name: typer vendors its own click, whose ParameterSource is not click's.
    sources = {name: getattr(ctx.get_parameter_source(name), "name", None) for name in params}
    given = [name for name, source in sources.items() if source not in ("DEFAULT", None)]
    if not ray:
        cluster_only = [_flag(n) for n in _CLUSTER_ONLY if n in given]
        raise ConfigError(
            f"{', '.join(cluster_only)} only applies to a cluster — add --ray [ADDRESS], or drop it"
        )
    refused = [_flag(n) for n in given if n not in _RAY_OPTIONS]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} does not combine with --ray (replicas and HAProxy do not "
            "take it) — drop it, or serve without --ray"
        )
    paths, address = split_ray_address(params["paths"])
    run_cluster(
        paths,
        address=address,
        options=options,
        host=params["host"],
        port=params["port"],
        grpc_port=_grpc_port(params["grpc_port"]),
        plan=params.get("plan"),
        replica_host=params.get("replica_host") or "node",
        ingress_mode=params.get("ingress_mode") or "http",
        replicas=params.get("replicas"),
        min_replicas=params.get("min_replicas"),
        max_replicas=params.get("max_replicas"),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
