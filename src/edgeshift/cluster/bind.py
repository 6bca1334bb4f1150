"""Where the cluster listens: the ingress's address and the replicas' (pure checks).

The ingress binds one address of the machine it runs on (loopback by default, like
``edgeshift serve``). Replicas run on many nodes, so their address is a rule, not one IP:
``node`` (each node's own IP, the default: what HAProxy on another machine reaches),
``0.0.0.0`` / ``::`` (every address of the node; the node's IP is what gets registered), or
a literal IP, which only makes sense when every replica runs on the machine that has it
(``127.0.0.1`` for a one-machine cluster keeps the replicas off the network entirely).
"""

from __future__ import annotations

import ipaddress

from edgeshift.errors import ConfigError

NODE_IP = "node"


def check_ingress_host(host: str, flag: str = "--host") -> str:
    """HOST as HAProxy will bind it: an IP address or ``localhost``."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"{flag} {host!r} is not an IP address — give one of this machine's addresses "
            "(127.0.0.1: this machine only; 0.0.0.0: every interface)"
        ) from None


def check_replica_host(host: str | None, flag: str = "--replica-host") -> str | None:
    """The address replicas bind: None for each node's own IP, else an IP literal."""
    if host is None or host == NODE_IP:
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"{flag} {host!r}: give node (each node's own IP), 0.0.0.0 (all of a node's "
            "addresses) or an IP address every replica's node has (127.0.0.1: one machine)"
        ) from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def exposure_warning(ingress_host: str, replica_host: str | None) -> str | None:
    """The warning to log when the cluster is reachable beyond loopback, where its plain
    HTTP/gRPC (no TLS, no tokens through the ingress) lets anyone who reaches it run inference;
    None when it is not."""
    exposed = [f"the ingress on {ingress_host}"] if not is_loopback(ingress_host) else []
    if replica_host is None or not is_loopback(replica_host):
        where = "each node's IP" if replica_host is None else replica_host
        exposed.append(f"the replicas on {where}")
    if not exposed:
        return None
    return (
        f"listening beyond loopback without TLS or authentication ({' and '.join(exposed)}): "
        "anyone who can reach these addresses can run inference — keep them on a private "
        "network or firewall them, or bind 127.0.0.1 (--host, --replica-host) on one machine"
    )
