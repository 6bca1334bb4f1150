"""CLI: ``edgeshift cluster serve`` — the models served across a Ray cluster, HAProxy in front."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import typer

from edgeshift.serve import ServeOptions

cluster_app = typer.Typer(
    help="Serve across a Ray cluster (placement from a plan, autoscaling, rolling updates).",
    no_args_is_help=True,
)


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
    max_batch: int = typer.Option(32, "--max-batch", help="Rows per backend call, per replica."),
    threads: int | None = typer.Option(
        None, "--threads", help="Runtime threads per model in each replica."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print where it serves and the replicas as one JSON line."
    ),
) -> None:
    """Serve models on Ray replicas that run edgeshift's own server, until SIGTERM or Ctrl-C."""
    from edgeshift.cluster import ClusterServer

    server = ClusterServer(
        paths,
        address=address,
        plan=plan,
        options=ServeOptions(max_batch=max_batch, threads=threads),
        host=host,
        port=port,
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
                "metrics": f"http://{server.url}/metrics",
                "apps": server.apps(),
                "replicas": [
                    {
                        "replica_id": e.replica_id,
                        "node_id": e.node_id,
                        "address": e.address,
                        "models": list(e.models),
                    }
                    for e in endpoints
                ],
            }
            sys.stdout.write(json.dumps(status) + "\n")
        else:
            sys.stdout.write(
                f"serving Open Inference Protocol v2 on http://{server.url} "
                f"({len(endpoints)} replicas on {len({e.node_id for e in endpoints})} nodes)\n"
            )
        sys.stdout.flush()
        stop.wait()
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
