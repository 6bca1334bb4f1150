"""The controller's probes of the world outside it: is something listening at an address,
and the replicas' ``/metrics`` texts (for the autoscaler)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from edgeshift.cluster.ingress_config import ReplicaEndpoint


def reachable(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        return port_open(host.strip("[]") or "127.0.0.1", int(port))
    except ValueError:
        return True  # not HOST:PORT: let ray.init judge it


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def scrape_texts(endpoints: Sequence[ReplicaEndpoint]) -> dict[str, str]:
    def fetch(e: ReplicaEndpoint) -> tuple[str, str]:
        try:
            with urllib.request.urlopen(f"http://{e.address}/metrics", timeout=1.0) as response:
                return e.replica_id, response.read().decode()
        except OSError:
            return e.replica_id, ""

    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(endpoints), 16)) as pool:
        return dict(pool.map(fetch, endpoints))
