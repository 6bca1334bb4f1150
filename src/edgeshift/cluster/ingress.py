"""The cluster's front door: HAProxy (Debian's /usr/sbin/haproxy) in front of the replicas'
own edgeshift servers, configured and health-checked by edgeshift.

Requests go client -> HAProxy -> a replica's uvicorn fast path (or its gRPC server), never
through Ray's proxy (a single Python process that costs ~10x per request). The config's
layout (backends per model, the gRPC frontend, the L4 mode) is in :mod:`.ingress_config`.

Failures: a dead replica fails its checks and is out of rotation in ~``fall * inter``; a
request whose connection failed or whose replica closed before answering is retried once on
another replica (``retry-on``, ``redispatch``); whatever HAProxy itself answers (no replica
up, retries spent, a replica that hung) is a 503 with a one-line JSON ``error``.

:func:`haproxy_config` is pure; :class:`HaproxyIngress` runs the process and changes its
servers through the runtime API on the admin socket (no reload, no dropped request), with a
reload only when a model with no backend yet appears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeshift.cluster import ingress_config
from edgeshift.cluster.ingress_config import (
    ANY_BACKEND,
    GRPC_PREFIX,
    IngressTimeouts,
    ReplicaEndpoint,
    _server_name,
    haproxy_config,
    map_file_text,
    model_backends,
    server_names,
    server_options,
)
from edgeshift.errors import EdgeshiftError

# Read at call time (tests point it elsewhere): ingress.HAPROXY_BINARY.
HAPROXY_BINARY = ingress_config.HAPROXY_BINARY

__all__ = [
    "ANY_BACKEND",
    "HAPROXY_BINARY",
    "HaproxyIngress",
    "IngressError",
    "IngressTimeouts",
    "ReplicaEndpoint",
    "haproxy_config",
    "map_file_text",
    "model_backends",
    "server_names",
    "server_options",
]


class IngressError(EdgeshiftError):
    """HAProxy could not be started or changed."""


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HaproxyIngress:
    """HAProxy as a child process, fronting the replicas given to :meth:`start` and
    :meth:`update`. ``port=0`` picks a free port (read it back from ``.port``); so does
    ``grpc_port=0`` for the gRPC frontend (None: no gRPC). ``mode``: "http" (L7, routed by
    model, retried) or "tcp" (L4, balanced per connection)."""

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeouts: IngressTimeouts | None = None,
        metrics_address: str | None = None,
        threads: int = 1,
        binary: str = HAPROXY_BINARY,
        drain_timeout_s: float = 30.0,
        grpc_port: int | None = None,
        mode: str = "http",
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.grpc_port = grpc_port
        self.mode = mode
        self.timeouts = timeouts or IngressTimeouts()
        self.metrics_address = metrics_address
        self.threads = threads
        self.binary = binary
        self.drain_timeout_s = drain_timeout_s
        self._workdir = Path(tempfile.mkdtemp(prefix="edgeshift-haproxy-"))
        self.admin_socket = self._workdir / "admin.sock"
        self._map_file = self._workdir / "models.map"
        self._config_file = self._workdir / "haproxy.cfg"
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoints: dict[str, ReplicaEndpoint] = {}
        self._models: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host = self.bind_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def grpc_url(self) -> str | None:
        if self.grpc_port is None:
            return None
        host = self.bind_host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """The master process (``-W``): its worker serves; a reload swaps workers."""
        return None if self._proc is None else self._proc.pid

    def endpoints(self) -> list[ReplicaEndpoint]:
        return list(self._endpoints.values())

    def _write_config(self, endpoints: Sequence[ReplicaEndpoint]) -> None:
        self._models = tuple(sorted({m for e in endpoints for m in e.models} | set(self._models)))
        self._map_file.write_text(map_file_text(self._models))
        self._config_file.write_text(
            haproxy_config(
                self.bind_host,
                self.port,
                endpoints,
                admin_socket=self.admin_socket,
                map_file=self._map_file,
                timeouts=self.timeouts,
                models=self._models,
                metrics_address=self.metrics_address,
                threads=self.threads,
                grpc_port=self.grpc_port,
                mode=self.mode,
            )
        )

    def start(self, endpoints: Sequence[ReplicaEndpoint] = (), timeout_s: float = 10.0) -> None:
        if not os.access(self.binary, os.X_OK):
            raise IngressError(
                f"HAProxy is not at {self.binary} — install it (apt-get install haproxy) or "
                "pass binary= the path of an haproxy 2.6+ executable"
            )
        if self.port == 0:
            self.port = _free_port(self.bind_host)
        if self.grpc_port == 0:
            self.grpc_port = _free_port(self.bind_host)
        self._write_config(endpoints)
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self._config_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            alerts = [line for line in check.stderr.splitlines() if "ALERT" in line]
            raise IngressError(f"HAProxy refused its config: {' / '.join(alerts)[:500]}")
        self._proc = subprocess.Popen(
            [self.binary, "-W", "-db", "-f", str(self._config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the caller does not kill it first
        )
        self._endpoints = {e.replica_id: e for e in endpoints}
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise IngressError(
                    f"HAProxy exited with status {self._proc.returncode} at start — is port "
                    f"{self.port} free? (config: {self._config_file})"
                )
            with contextlib.suppress(OSError):
                self.command("show info")
                for port in (self.port, self.grpc_port):
                    if port is not None:
                        socket.create_connection((self.bind_host, port), timeout=1).close()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise IngressError(f"HAProxy did not open port {self.port} within {timeout_s} s")
            time.sleep(0.02)

    def command(self, line: str) -> str:
        """One runtime-API command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _checked(self, line: str, *expected: str) -> None:
        answer = self.command(line).strip()
        if answer and not any(e in answer for e in expected):
            raise IngressError(f"HAProxy refused {line!r}: {answer[:300]}")

    def update(self, endpoints: Sequence[ReplicaEndpoint]) -> None:
        """Make the rotation exactly ENDPOINTS. New replicas are added and enabled; removed
        ones are drained (no new requests) and deleted once their requests in flight are
        answered: when this returns the caller may stop them. A model that has no backend
        yet needs a reload (HAProxy's seamless one: the old worker finishes its requests)."""
        if self._proc is None:
            raise IngressError("the ingress is not started — call start() first")
        wanted = {e.replica_id: e for e in endpoints}
        server_names(endpoints)
        new_models = {m for e in endpoints for m in e.models} - set(self._models)
        changed = [r for r in wanted if r in self._endpoints and wanted[r] != self._endpoints[r]]
        if new_models or changed:
            self._reload(endpoints)
            return
        backends = model_backends(self._models)
        for replica_id in wanted.keys() - self._endpoints.keys():
            self._add(wanted[replica_id], backends)
        removed = [self._endpoints[r] for r in self._endpoints.keys() - wanted.keys()]
        for endpoint in removed:
            self._set_maint(endpoint, backends)
        for endpoint in removed:
            self._wait_drained(endpoint)
            self._delete(endpoint, backends)

    def _protocols(self, endpoint: ReplicaEndpoint) -> list[bool]:
        """False: its HTTP backends; True: its gRPC ones (when both sides serve gRPC)."""
        grpc = self.grpc_port is not None and endpoint.grpc_port is not None
        return [False, True] if grpc else [False]

    def _add(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        for grpc in self._protocols(endpoint):
            prefix = GRPC_PREFIX if grpc else ""
            options = server_options(endpoint, self.timeouts, grpc=grpc)
            for backend in [*(backends[m] for m in endpoint.models), ANY_BACKEND]:
                self._checked(
                    f"add server {prefix}{backend}/{name} {options}", "New server registered"
                )
                self._checked(f"enable health {prefix}{backend}/{name}")
                if backend != ANY_BACKEND:
                    self._checked(f"enable server {prefix}{backend}/{name}")
        # Last: the model backends are ready before the replica takes its first request.
        for grpc in self._protocols(endpoint):
            self._checked(f"enable server {GRPC_PREFIX if grpc else ''}{ANY_BACKEND}/{name}")
        self._endpoints[endpoint.replica_id] = endpoint

    def _replica_backends(
        self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]
    ) -> list[str]:
        """Every backend the replica is a server of, the any-backends last."""
        return [
            f"{GRPC_PREFIX if grpc else ''}{backend}"
            for backend in [*(backends[m] for m in endpoint.models), ANY_BACKEND]
            for grpc in self._protocols(endpoint)
        ]

    def _set_maint(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        for backend in self._replica_backends(endpoint, backends):
            self._checked(f"disable server {backend}/{name}")

    def _in_flight(self, name: str) -> int:
        total = 0
        for row in self.command("show stat").splitlines()[1:]:
            fields = row.split(",")
            if len(fields) > 4 and fields[1] == name:
                total += int(fields[4] or 0) + int(fields[2] or 0)  # scur + qcur
        return total

    def _wait_drained(self, endpoint: ReplicaEndpoint) -> None:
        name = _server_name(endpoint.replica_id)
        deadline = time.monotonic() + self.drain_timeout_s
        while self._in_flight(name) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.mode == "tcp" and self._in_flight(name) > 0:
            # L4: a client's keep-alive connection stays on its server until someone closes
            # it (a stopping replica does; a live one never): cut what is left.
            backends = model_backends(self._models)
            for backend in self._replica_backends(endpoint, backends):
                self._checked(f"shutdown sessions server {backend}/{name}")

    def _delete(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        for backend in self._replica_backends(endpoint, backends):
            self._delete_server(backend, name)
        del self._endpoints[endpoint.replica_id]

    def _delete_server(self, backend: str, name: str) -> None:
        # HAProxy 2.6 refuses while idle keep-alive connections to the server remain; they
        # are closed within pool-purge-delay once it is in maintenance.
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            answer = self.command(f"del server {backend}/{name}").strip()
            if "Server deleted" in answer:
                return
            if "connections attached" not in answer or time.monotonic() > deadline:
                raise IngressError(f"HAProxy refused to delete {backend}/{name}: {answer[:300]}")
            time.sleep(0.05)

    def _reload(self, endpoints: Sequence[ReplicaEndpoint]) -> None:
        assert self._proc is not None
        self._write_config(endpoints)
        self._endpoints = {e.replica_id: e for e in endpoints}
        self._proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                rows = self.command("show stat").splitlines()[1:]
                names = {row.split(",")[1] for row in rows if row.count(",") > 1}
                if {_server_name(r) for r in self._endpoints} <= names:
                    return
            time.sleep(0.02)
        raise IngressError(f"HAProxy did not reload within 10 s (config: {self._config_file})")

    def server_states(self) -> dict[str, str]:
        """replica_id -> HAProxy's status of its server: "UP", "DOWN", "MAINT", or a
        transition such as "DOWN 1/2" (one check failed of the two that take it down)."""
        by_name = {_server_name(r): r for r in self._endpoints}
        states = {}
        for row in self.command("show stat").splitlines()[1:]:
            fields = row.split(",")
            if len(fields) > 17 and fields[0] == ANY_BACKEND and fields[1] in by_name:
                states[by_name[fields[1]]] = fields[17]
        return states

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        for path in (self.admin_socket, self._map_file, self._config_file):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._workdir.rmdir()

    def __enter__(self) -> HaproxyIngress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
