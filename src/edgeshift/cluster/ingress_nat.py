"""The kernel ingress's rules, as pure functions (data in, iptables text out): the nat chain
that spreads connections over the replicas, the jumps into it, and what the kernel needs
for replicas on other machines. :mod:`.ingress_kernel` applies them."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from edgeshift.errors import EdgeshiftError

CHAIN_PREFIX = "EDGESHIFT-"


class KernelIngressError(EdgeshiftError):
    """The kernel's NAT could not be set up or changed."""


def chain_name(port: int) -> str:
    return f"{CHAIN_PREFIX}{port}"


def nat_rules(chain: str, targets: Sequence[tuple[str, int]]) -> str:
    """``iptables-restore --noflush`` input that makes CHAIN send each new connection to one of
    TARGETS ((IPv4 address, port)), uniformly at random (kube-proxy's layout: rule i of n
    matches with probability 1/(n-i), the last always). Declaring the chain flushes it, so the
    whole change is one atomic commit. No targets: an empty chain."""
    lines = ["*nat", f":{chain} - [0:0]"]
    n = len(targets)
    for i, (host, port) in enumerate(targets):
        rule = f"-A {chain} -p tcp"
        if i < n - 1:
            rule += f" -m statistic --mode random --probability {1 / (n - i):.8f}"
        lines.append(f"{rule} -j DNAT --to-destination {host}:{port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def jump_rules(chain: str, bind_host: str, port: int) -> list[list[str]]:
    """The rules (``iptables -t nat`` arguments, without -A/-D) that lead connections to
    BIND_HOST:PORT into CHAIN: OUTPUT for clients on this machine, PREROUTING for clients
    elsewhere (not for a loopback address), and a MASQUERADE of connections sent on to another
    machine (their answers must come back through this one to be un-NATed)."""
    match = ["-p", "tcp", "--dport", str(port)]
    if bind_host == "0.0.0.0":
        where = ["-m", "addrtype", "--dst-type", "LOCAL"]
    else:
        where = ["-d", f"{bind_host}/32"]
    rules = [["OUTPUT", *where, *match, "-j", chain]]
    if not ipaddress.ip_address(bind_host).is_loopback:
        rules.append(["PREROUTING", *where, *match, "-j", chain])
    rules.append(
        [
            "POSTROUTING",
            "-p",
            "tcp",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "--ctorigdstport",
            str(port),
            "!",
            "-o",
            "lo",
            "-j",
            "MASQUERADE",
        ]
    )
    return rules


def check_ipv4(host: str, what: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise KernelIngressError(
            f"{what} {host!r} is not an IP address — the kernel ingress balances to IPv4 "
            "addresses; give one, or use --ingress-mode http"
        ) from None
    if address.version != 4:
        raise KernelIngressError(
            f"{what} {host} is IPv6 — the kernel ingress is IPv4 only; use --ingress-mode http"
        )
    return host


def forwarding_sysctls(bind_host: str) -> list[tuple[str, str]]:
    """The sysctls that replicas on other machines need, and who needs them."""
    needed = [("net/ipv4/conf/all/route_localnet", "a client on this machine using 127.0.0.1")]
    if not ipaddress.ip_address(bind_host).is_loopback:
        needed.append(("net/ipv4/ip_forward", "a client on another machine"))
    return needed
