"""Linux network namespaces for the fleet's tests: one namespace per device and one for the
control plane, each joined by a veth pair to a bridge in the lab's own "lan" namespace, with
addresses 10.77.0.x/24. Partitions: a link taken down, or iptables DROP between two nodes.

Root only. Every name carries this process's pid and a counter, so parallel test processes
never collide, and a lab whose process died is swept by the next one (``sweep_stale``). The
lab lives in namespaces only (nothing is added to the root namespace), so deleting them
deletes everything: ``NetLab.close()`` kills what it started and deletes its namespaces, and
the fixtures call it from a finalizer even after a failed test.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")
CLONE_NEWNET = 0x40000000

SUBNET = "10.77.0"
PREFIX = "esnl"  # edgeshift net lab
_COUNTER = itertools.count(1)
_NAME = re.compile(rf"^{PREFIX}(\d+)x\d+-")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install -y iproute2 iptables)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _kill_namespace(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        # Only processes inside this lab's own namespace: ones a test started there.
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _ip("netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces of labs whose process is gone (a test run killed mid-way)."""
    swept = []
    for ns in _namespaces():
        match = _NAME.match(ns)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _kill_namespace(ns)
            swept.append(ns)
    return swept


def enter_namespace(ns: str) -> None:
    """Move the calling thread into network namespace NS (setns(2); os.setns is 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Node:
    name: str  # short: it names the bridge-side interface ("v-<name>", <= 15 chars)
    ns: str
    ip: str
    lan_if: str  # the veth end on the bridge, in the lan namespace


@dataclass
class NetLab:
    """One isolated LAN: ``add(name)`` a node, ``spawn``/``run`` inside it, partition it."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{next(_COUNTER)}")
    nodes: dict[str, Node] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _next_host: int = 1
    _lan: str = ""

    def __post_init__(self) -> None:
        self._lan = f"{self.tag}-lan"
        _ip("netns", "add", self._lan)
        try:
            self._in_lan("link", "add", "br0", "type", "bridge")
            self._in_lan("link", "set", "br0", "up")
            self._in_lan("link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def _in_lan(self, *args: str) -> None:
        _ip("-n", self._lan, *args)

    def add(self, name: str) -> Node:
        """A node in its own namespace, at the next address 10.77.0.N, on the bridge."""
        if not re.fullmatch(r"[a-z0-9]{1,12}", name) or name in self.nodes:
            raise ValueError(f"node names are unique, 1-12 of [a-z0-9]: {name!r}")
        if self._next_host > 250:
            raise ValueError("a lab holds at most 250 nodes")
        node = Node(name, f"{self.tag}-{name}", f"{SUBNET}.{self._next_host}", f"v-{name}")
        self._next_host += 1
        _ip("netns", "add", node.ns)
        self.nodes[name] = node
        self._in_lan(
            "link", "add", node.lan_if, "type", "veth", "peer", "name", "eth0", "netns", node.ns
        )
        self._in_lan("link", "set", node.lan_if, "master", "br0")
        self._in_lan("link", "set", node.lan_if, "up")
        _ip("-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        _ip("-n", node.ns, "link", "set", "eth0", "up")
        _ip("-n", node.ns, "link", "set", "lo", "up")
        return node

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """ARGV wrapped to run inside NAME's namespace."""
        return ["ip", "netns", "exec", self.nodes[name].ns, *argv]

    def spawn(self, name: str, argv: Sequence[str], **popen: object) -> subprocess.Popen[bytes]:
        """Start ARGV inside NAME's namespace; the lab kills it on close."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.command(name, argv), **popen)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(
        self, name: str, argv: Sequence[str], timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside NAME's namespace to its end (stdout and stderr captured)."""
        return subprocess.run(
            self.command(name, argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def call(self, name: str, fn: Callable[..., _T], *args: Any, timeout_s: float = 60.0) -> _T:
        """FN(*ARGS) on a fresh thread that has joined NAME's network namespace: the test's
        own clients (httpx, OperatorClient) talk from inside the lab without a process.
        A network namespace is per thread, so the rest of the test process is untouched."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                enter_namespace(self.nodes[name].ns)
                box["value"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {name} ran past {timeout_s} s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    # --- faults ---
    def link_down(self, name: str) -> None:
        """Unplug NAME: its bridge-side end goes down (the device keeps its own address)."""
        self._in_lan("link", "set", self.nodes[name].lan_if, "down")

    def link_up(self, name: str) -> None:
        self._in_lan("link", "set", self.nodes[name].lan_if, "up")

    def rate_limit(self, name: str, rate: str | None) -> None:
        """Pace what the bridge sends to NAME (its downloads) to RATE, e.g. "4mbit", with a
        tbf qdisc (tc tbf works in these kernels; netem does not). None removes it."""
        lan_if = self.nodes[name].lan_if
        if rate is None:
            subprocess.run(
                ["ip", "netns", "exec", self._lan, "tc", "qdisc", "del", "dev", lan_if, "root"],
                capture_output=True,
                check=False,
            )
            return
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self._lan,
                "tc",
                "qdisc",
                "replace",
                "dev",
                lan_if,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kb",
                "latency",
                "2s",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tc tbf on {lan_if}: {proc.stderr.strip()}")

    def drop(self, name: str, peer: str) -> None:
        """iptables DROP, in NAME's namespace, of everything to and from PEER."""
        self._iptables(name, "-I", peer)

    def accept(self, name: str, peer: str) -> None:
        """Undo drop(NAME, PEER)."""
        self._iptables(name, "-D", peer)

    def _iptables(self, name: str, op: str, peer: str) -> None:
        peer_ip = self.nodes[peer].ip
        for rule in (["INPUT", "-s", peer_ip], ["OUTPUT", "-d", peer_ip]):
            proc = subprocess.run(
                self.command(name, ["iptables", "-w", op, rule[0], *rule[1:], "-j", "DROP"]),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"iptables {op} in {name}: {proc.stderr.strip()}")

    # --- teardown ---
    def close(self) -> None:
        """Kill what the lab started, then delete its namespaces (and with them every veth,
        address and iptables rule). Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()
        for node in self.nodes.values():
            _kill_namespace(node.ns)
        self.nodes.clear()
        if self._lan:
            _kill_namespace(self._lan)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespaces(self) -> list[str]:
        return [ns for ns in _namespaces() if ns.startswith(f"{self.tag}-")]
