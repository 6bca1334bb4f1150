"""The kernel ingress (``--ingress-mode kernel``): Linux's own NAT spreads client connections
over the replicas, as kube-proxy's iptables mode does for a Kubernetes Service. No process is
on the data path: a client's connection to the ingress address is rewritten (DNAT) to one
replica's port when it opens, and its packets then flow to that replica as if it had dialled
it; a request costs what it costs a single edgeshift server.

What edgeshift does around it:

- **rules**: one nat chain per port (``EDGESHIFT-<port>``) holding one DNAT rule per replica
  that is UP, picked uniformly at random per new connection (rule i of n matches with
  probability 1/(n-i), the last always); jumps to it from ``OUTPUT`` (clients on this machine)
  and, when the ingress address is not loopback, ``PREROUTING``; connections sent on to
  another machine are masqueraded so the answers come back through this one. A change is one
  ``iptables-restore --noflush`` of the chain: atomic, and connections already open keep
  their replica (conntrack);
- **health**: a thread checks every replica (``GET /v2/health/ready`` on a kept-alive
  connection, every ``check_interval_s``) and wakes at once when a replica closes that
  connection (its process died); a refused connection takes it out at once, ``fall`` failed
  checks in a row otherwise;
- **no replica up**: the chain is empty and connections reach the ingress's own listener on
  the port, which answers 503 with a JSON ``error`` (the listener also holds the port, so no
  other program can take it);
- **draining**: a replica removed from the chain keeps its open connections; the replica
  closes each after its next answer (``connection: close``; :mod:`.replica`), so a rolling
  update fails no request.

What L4 gives up (docs/scale-out.md, "Ingress modes"): no routing by model (every replica
must hold every model), balance per connection, and no retry: requests in flight on a replica
that dies fail with their connection, as do new connections in the moment before the checker
sees it (milliseconds when the process dies). It needs root (CAP_NET_ADMIN) and IPv4.

:mod:`.ingress_nat` holds the rules as pure functions; :class:`KernelIngress` applies them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgeshift.cluster.ingress_config import ReplicaEndpoint
from edgeshift.cluster.ingress_nat import (
    CHAIN_PREFIX,
    KernelIngressError,
    chain_name,
    check_ipv4,
    forwarding_sysctls,
    jump_rules,
    nat_rules,
)

log = logging.getLogger("edgeshift.cluster")

__all__ = [
    "CHAIN_PREFIX",
    "IPTABLES",
    "IPTABLES_RESTORE",
    "KernelIngress",
    "KernelIngressError",
    "chain_name",
    "check_kernel_ingress",
    "jump_rules",
    "nat_rules",
]

IPTABLES = "/usr/sbin/iptables"
IPTABLES_RESTORE = "/usr/sbin/iptables-restore"
NO_REPLICA = "no replica is up (starting, restarting or failed) — retry shortly"
# Connections the 503 listener serves at once; more are closed unanswered.
_FALLBACK_MAX_CONNECTIONS = 64


def check_kernel_ingress(
    iptables: str = IPTABLES, iptables_restore: str = IPTABLES_RESTORE
) -> None:
    """The tools are there and this process may change the nat table, or one clear error."""
    for tool in (iptables, iptables_restore):
        if not os.access(tool, os.X_OK):
            raise KernelIngressError(
                f"iptables is not at {tool} — install it (apt-get install iptables), or use "
                "--ingress-mode http"
            )
    probe = subprocess.run(
        [iptables, "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise KernelIngressError(
            f"cannot read the nat table ({_first_line(probe.stderr)}) — the kernel ingress "
            "needs root (CAP_NET_ADMIN); run as root, or use --ingress-mode http"
        )


@dataclass
class _Replica:
    endpoint: ReplicaEndpoint
    up: bool = True  # registered replicas are serving; the checks take them out
    failed: int = 0
    passed: int = 0
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)


class _NoReplicaHandler(BaseHTTPRequestHandler):
    """What a client gets while no replica is in the chain: a JSON 503, then the connection
    closes."""

    protocol_version = "HTTP/1.1"
    timeout = 5
    server_version, sys_version = "edgeshift", ""  # not Python's version to every client

    def _answer(self) -> None:
        body = json.dumps({"error": NO_REPLICA}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


class _Fallback(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], max_connections: int) -> None:
        # A thread per connection, bounded: a flood while nothing is up must not make
        # threads without end; beyond the bound a connection is closed unanswered.
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _NoReplicaHandler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class KernelIngress:
    """The kernel's NAT in front of the replicas given to :meth:`start` and :meth:`update`
    (the same interface as :class:`~edgeshift.cluster.ingress.HaproxyIngress`). ``port=0``
    picks a free port; so does ``grpc_port=0`` for gRPC, balanced the same way to the replicas'
    gRPC ports (None: no gRPC)."""

    mode = "kernel"
    pid = None  # no process of its own on the data path
    fallback_max_connections = _FALLBACK_MAX_CONNECTIONS

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        *,
        grpc_port: int | None = None,
        check_interval_s: float = 0.1,
        check_timeout_s: float = 0.4,
        fall: int = 2,
        rise: int = 1,
        iptables: str = IPTABLES,
        iptables_restore: str = IPTABLES_RESTORE,
    ) -> None:
        self.bind_host = check_ipv4(bind_host, "the ingress address")
        self.port = port
        self.grpc_port = grpc_port
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.fall, self.rise = fall, rise
        self.iptables, self.iptables_restore = iptables, iptables_restore
        self._replicas: dict[str, _Replica] = {}
        self._lock = threading.Lock()
        self._applied: dict[str, tuple[tuple[str, int], ...]] = {}
        self._jumps: list[list[str]] = []
        self._listeners: list[_Fallback] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._checker: threading.Thread | None = None
        self.check_cpu_s = 0.0  # the checker thread's CPU time, for the benchmark's totals
        self._hosts_seen: set[str] = set()  # replica hosts whose forwarding needs were checked

    @property
    def url(self) -> str:
        return f"{self.bind_host}:{self.port}"

    @property
    def grpc_url(self) -> str | None:
        return None if self.grpc_port is None else f"{self.bind_host}:{self.grpc_port}"

    def endpoints(self) -> list[ReplicaEndpoint]:
        with self._lock:
            return [r.endpoint for r in self._replicas.values()]

    def server_states(self) -> dict[str, str]:
        """replica_id -> "UP" (in the chain) or "DOWN" (its checks fail)."""
        with self._lock:
            return {rid: "UP" if r.up else "DOWN" for rid, r in self._replicas.items()}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, endpoints: Sequence[ReplicaEndpoint] = ()) -> None:
        check_kernel_ingress(self.iptables, self.iptables_restore)
        for endpoint in endpoints:
            self._check_endpoint(endpoint)
        try:
            self.port = self._listen(self.port)
            if self.grpc_port is not None:
                self.grpc_port = self._listen(self.grpc_port)
            with self._lock:
                self._replicas = {e.replica_id: _Replica(e) for e in endpoints}
                self._apply_locked()
            for port in self._ports():
                self._install_jumps(chain_name(port), port)
        except BaseException:
            self.stop()
            raise
        self._checker = threading.Thread(target=self._check_loop, name="edgeshift-l4", daemon=True)
        self._checker.start()

    def update(self, endpoints: Sequence[ReplicaEndpoint]) -> None:
        """Make the chain exactly ENDPOINTS (those passing their checks). A removed replica
        takes no new connection once this returns; its open ones stay until it closes them."""
        for endpoint in endpoints:
            self._check_endpoint(endpoint)
        with self._lock:
            wanted = {e.replica_id: e for e in endpoints}
            for rid in self._replicas.keys() - wanted.keys():
                old = self._replicas.pop(rid)
                if old.conn is not None:
                    old.conn.close()
            for rid, endpoint in wanted.items():
                known = self._replicas.get(rid)
                if known is None or known.endpoint != endpoint:
                    self._replicas[rid] = _Replica(endpoint)
            self._apply_locked()
        self._wake_w.send(b"x")  # check the new ones now

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._checker is not None:
            self._checker.join(5)
            self._checker = None
        for rule in reversed(self._jumps):
            self._run([self.iptables, "-w", "-t", "nat", "-D", *rule])
        self._jumps = []
        for chain in list(self._applied):
            self._run([self.iptables, "-w", "-t", "nat", "-F", chain])
            self._run([self.iptables, "-w", "-t", "nat", "-X", chain])
        self._applied = {}
        for listener in self._listeners:
            listener.shutdown()
            listener.server_close()
        self._listeners = []
        with self._lock:
            for replica in self._replicas.values():
                if replica.conn is not None:
                    replica.conn.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> KernelIngress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules --------------------------------------------------------------------------------

    def _ports(self) -> list[int]:
        return [self.port] + ([self.grpc_port] if self.grpc_port is not None else [])

    def _check_endpoint(self, endpoint: ReplicaEndpoint) -> None:
        check_ipv4(endpoint.host, f"replica {endpoint.replica_id}'s address")
        if endpoint.host not in self._hosts_seen:  # every update() names them all again
            self._hosts_seen.add(endpoint.host)
            if not _is_local(endpoint.host):
                self._warn_forwarding(endpoint.host)
        if self.grpc_port is not None and endpoint.grpc_port is None:
            raise KernelIngressError(
                f"replica {endpoint.replica_id} serves no gRPC but the ingress has a gRPC port"
                " — start the replicas with a gRPC port, or the ingress without one"
            )

    def _warn_forwarding(self, host: str) -> None:
        """A replica on another machine: name each sysctl it needs that is off here."""
        for sysctl, why in forwarding_sysctls(self.bind_host):
            if _sysctl(sysctl) == "0":
                log.warning(
                    "replica at %s is on another machine: %s needs `sysctl -w %s=1` on this one",
                    host,
                    why,
                    sysctl.replace("/", "."),
                )

    def _apply_locked(self) -> None:
        """Write each chain from the replicas that are UP (only when it changed)."""
        up = [r.endpoint for r in self._replicas.values() if r.up]
        wanted = {chain_name(self.port): tuple((e.host, e.port) for e in up)}
        if self.grpc_port is not None:
            wanted[chain_name(self.grpc_port)] = tuple(
                (e.host, e.grpc_port) for e in up if e.grpc_port is not None
            )
        for chain, targets in wanted.items():
            if self._applied.get(chain) == targets:
                continue
            done = self._run(
                [self.iptables_restore, "-w", "--noflush"], stdin=nat_rules(chain, targets)
            )
            if done.returncode != 0:
                raise KernelIngressError(
                    f"iptables-restore refused the {chain} chain: {_first_line(done.stderr)}"
                )
            self._applied[chain] = targets
            log.info("kernel ingress %s: %d replica(s) in rotation", chain, len(targets))

    def _install_jumps(self, chain: str, port: int) -> None:
        for rule in jump_rules(chain, self.bind_host, port):
            # A previous run killed before its stop() left the same rule: never add it twice.
            while self._run([self.iptables, "-w", "-t", "nat", "-C", *rule]).returncode == 0:
                self._run([self.iptables, "-w", "-t", "nat", "-D", *rule])
            done = self._run([self.iptables, "-w", "-t", "nat", "-A", *rule])
            if done.returncode != 0:
                raise KernelIngressError(
                    f"iptables refused a rule for port {port}: {_first_line(done.stderr)}"
                )
            self._jumps.append(rule)

    @staticmethod
    def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)

    def _listen(self, port: int) -> int:
        try:
            listener = _Fallback((self.bind_host, port), self.fallback_max_connections)
        except OSError as exc:
            raise KernelIngressError(
                f"cannot listen on {self.bind_host}:{port} ({exc.strerror}) — is the port free?"
            ) from None
        threading.Thread(
            target=listener.serve_forever, name="edgeshift-l4-503", daemon=True
        ).start()
        self._listeners.append(listener)
        return int(listener.server_address[1])

    # -- health -------------------------------------------------------------------------------

    def _check_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        start_cpu = time.thread_time()
        next_round = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_round:
                next_round = now + self.check_interval_s
                for rid in self.server_states():
                    self._check(rid)
            self.check_cpu_s = time.thread_time() - start_cpu
            # Between rounds, wait on the kept-alive check connections too: a replica never
            # writes on one unasked, so a readable one was closed by it (it died or stopped).
            watched = self._watch(selector)
            timeout = max(0.0, next_round - time.monotonic())
            for key, _ in selector.select(timeout):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    next_round = 0.0  # a new replica or a stop: check now
                elif key.data in watched:
                    self._check(key.data)
            for sock in watched.values():
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
        selector.close()

    def _probe(
        self, endpoint: ReplicaEndpoint, conn: http.client.HTTPConnection | None
    ) -> tuple[str, http.client.HTTPConnection | None]:
        """One readiness check: ("ready" | "not ready" | "refused" | "stale", the connection
        to keep or None). "stale": a kept-alive connection failed, which says nothing yet."""
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPConnection(
                endpoint.host, endpoint.port, timeout=self.check_timeout_s
            )
        try:
            conn.request("GET", "/v2/health/ready")
            answer = conn.getresponse()
            answer.read()
        except ConnectionRefusedError:
            conn.close()
            return "refused", None
        except TimeoutError:
            conn.close()
            return "not ready", None
        except (OSError, http.client.HTTPException):
            conn.close()
            return ("not ready" if fresh else "stale"), None
        state = "ready" if answer.status == 200 else "not ready"
        if answer.will_close:
            conn.close()
            return state, None
        return state, conn

    def _watch(self, selector: selectors.BaseSelector) -> dict[str, socket.socket]:
        watched: dict[str, socket.socket] = {}
        with self._lock:
            for rid, replica in self._replicas.items():
                sock = replica.conn.sock if replica.conn is not None else None
                if sock is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.register(sock, selectors.EVENT_READ, rid)
                        watched[rid] = sock
        return watched

    def _check(self, replica_id: str) -> None:
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                return
            endpoint, conn = replica.endpoint, replica.conn
        state, conn = self._probe(endpoint, conn)
        if state == "stale":  # the replica had closed it (a restart, a drain): once more, fresh
            state, conn = self._probe(endpoint, None)
        ok, refused = state == "ready", state == "refused"
        with self._lock:
            if self._replicas.get(replica_id) is not replica:
                if conn is not None:
                    conn.close()
                return  # removed (or replaced) while it was checked
            replica.conn = conn
            was_up = replica.up
            if ok:
                replica.failed, replica.passed = 0, replica.passed + 1
                if not replica.up and replica.passed >= self.rise:
                    replica.up = True
            else:
                replica.passed, replica.failed = 0, replica.failed + 1
                if refused or replica.failed >= self.fall:
                    replica.up = False
            if replica.up != was_up:
                log.warning(
                    "replica %s %s", replica_id, "UP" if replica.up else "DOWN (out of rotation)"
                )
                try:
                    self._apply_locked()
                except KernelIngressError as exc:
                    log.error("%s", exc)


def _is_local(host: str) -> bool:
    """HOST is one of this machine's addresses (it can be bound)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"
