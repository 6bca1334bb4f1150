"""The cluster's front door: HAProxy (Debian's /usr/sbin/haproxy) in front of the replicas'
own edgeshift servers, configured and health-checked by edgeshift.

Requests go client -> HAProxy -> a replica's uvicorn fast path, never through Ray's proxy
(a single Python process that costs ~10x per request). Layout of the generated config:

- backend ``any``: every replica, checked with ``GET /v2/health/ready``;
- backend ``m_<name>_<digest>`` per model: the replicas holding it, checked with
  ``GET /v2/models/NAME/ready`` (HAProxy 2.6 cannot ``track`` a server added at run time,
  and a model's own readiness is the better check anyway);
- the frontend routes ``/v2/models/NAME/...`` through a map (model -> backend), everything
  else to ``any``; ``/metrics`` to the aggregator when one is given.

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
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeshift.errors import ConfigError, EdgeshiftError

HAPROXY_BINARY = "/usr/sbin/haproxy"
ANY_BACKEND = "any"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ReplicaEndpoint:
    """Where one replica's edgeshift server listens, and what it serves."""

    replica_id: str
    node_id: str
    host: str
    port: int
    models: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class IngressTimeouts:
    """How fast HAProxy gives up on a replica. The defaults take a dead replica out of
    rotation in <= ~0.35 s idle (refused connection: a check every 250 ms, then 100 ms
    apart once one failed) and in ~0.1 s under load (a refused request counts as a failed
    check and is replayed on another replica), and a hung one in <= ~1.15 s (2 checks that
    time out after 400 ms)."""

    # Checks cost every replica a request per interval per backend (any + each model):
    # 100 ms for all of them was ~20 requests/s per replica, idle.
    check_interval_ms: int = 250
    # Once a check or a live request failed, until the replica is UP again or DOWN.
    fast_check_interval_ms: int = 100
    check_timeout_ms: int = 400
    fall: int = 2  # failed checks in a row before DOWN: one lost check is not a dead replica
    rise: int = 1
    connect_ms: int = 1000  # then the request is retried on another replica
    # A replica that answers nothing for this long is given up on (504 becomes our 503); the
    # health check takes a hung replica out much sooner, and that ends its requests then.
    server_s: int = 60
    client_s: int = 60


def _server_name(replica_id: str) -> str:
    return _NAME_UNSAFE.sub("_", replica_id)[:60] or "replica"


def _backend_name(model: str) -> str:
    # A digest keeps names that only differ in unsafe characters apart.
    import hashlib

    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"m_{_NAME_UNSAFE.sub('_', model)[:40]}_{digest}"


def server_names(endpoints: Sequence[ReplicaEndpoint]) -> dict[str, str]:
    """replica_id -> HAProxy server name (only [A-Za-z0-9_.-]); two replicas whose ids map to
    one name are an error."""
    names: dict[str, str] = {}
    for endpoint in endpoints:
        name = _server_name(endpoint.replica_id)
        if name in names.values() and names.get(endpoint.replica_id) != name:
            raise ConfigError(
                f"replica ids {endpoint.replica_id!r} and another map to the HAProxy server "
                f"name {name!r} — give replicas ids that differ in letters or digits"
            )
        names[endpoint.replica_id] = name
    return names


def model_backends(models: Sequence[str]) -> dict[str, str]:
    """model -> backend name."""
    return {model: _backend_name(model) for model in sorted(set(models))}


def server_options(endpoint: ReplicaEndpoint, timeouts: IngressTimeouts) -> str:
    """The options of a replica's server line (config and runtime API alike: HAProxy 2.6 does not apply ``default-server`` to servers added at run time)."""
    t = timeouts
    return (
        f"{endpoint.address} check inter {t.check_interval_ms}ms "
        f"fastinter {t.fast_check_interval_ms}ms downinter {t.check_interval_ms * 2}ms "
        f"fall {t.fall} rise {t.rise} on-marked-down shutdown-sessions "
        # A live request refused or reset is a sign too: one failed check (fast, 100 ms
        # later) after it takes the replica out.
        "observe layer4 error-limit 1 on-error sudden-death "
        # Idle keep-alive connections of a drained server close this soon: HAProxy will not
        # delete a server that still has some.
        "pool-purge-delay 500ms"
    )


def _json_error(status: int, message: str) -> str:
    body = json.dumps({"error": message})
    quoted = body.replace("\\", "\\\\").replace('"', '\\"')
    return f'    http-error status {status} content-type application/json string "{quoted}"'


# What HAProxy answers on its own; every one is turned into a 503 (retry later) by
# http-after-response, so clients see one status for "the cluster could not answer".
_ERRORS = {
    502: "the replica serving this request failed before answering — retry the request",
    503: "no replica of this model is up (starting, restarting or failed) — retry shortly",
    504: "the replica did not answer in time and was given up on — retry the request",
}


def haproxy_config(
    bind_host: str,
    port: int,
    endpoints: Sequence[ReplicaEndpoint],
    *,
    admin_socket: Path,
    map_file: Path,
    check_interval_ms: int = IngressTimeouts.check_interval_ms,
    timeouts: IngressTimeouts | None = None,
    models: Sequence[str] = (),
    metrics_address: str | None = None,
    threads: int = 1,
    maxconn: int = 4096,
) -> str:
    """The HAProxy configuration for ENDPOINTS: one ``any`` backend with every replica and
    one backend per model (those of ``models`` plus every endpoint's). MAP_FILE must hold
    :func:`map_file_text` of the same models. Pure: the caller writes it and runs HAProxy."""
    t = timeouts or IngressTimeouts(check_interval_ms=check_interval_ms)
    if min(t.check_interval_ms, t.fast_check_interval_ms) <= 0 or t.fall < 1 or t.rise < 1:
        raise ConfigError(
            f"health check interval {t.check_interval_ms} ms, fall {t.fall}, rise {t.rise}: "
            "the interval must be > 0 and fall/rise >= 1"
        )
    names = server_names(endpoints)
    all_models = sorted({*models, *(m for e in endpoints for m in e.models)})
    bind = f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"
    lines = [
        "global",
        f"    stats socket {admin_socket} mode 600 level admin",
        "    stats timeout 30s",
        f"    maxconn {maxconn}",
        f"    nbthread {threads}",
        "defaults",
        "    mode http",
        f"    timeout connect {t.connect_ms}ms",
        f"    timeout client {t.client_s}s",
        f"    timeout server {t.server_s}s",
        f"    timeout check {t.check_timeout_ms}ms",
        "    timeout http-keep-alive 60s",
        # Retry once elsewhere when nothing came back: inference is a pure function of its
        # inputs, so a request cut off by a dying replica is safe to send again.
        "    retries 2",
        "    option http-buffer-request",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 502 503",
        # Keep server connections open across clients: a new TCP connection per request
        # costs the replica's event loop more than the request itself.
        "    http-reuse always",
        "    option http-no-delay",
        *(_json_error(status, message) for status, message in _ERRORS.items()),
        "",
        "frontend ingress",
        f"    bind {bind}",
        "    http-after-response set-status 503 if { status 502 } || { status 504 }",
        "    acl model_route path_beg /v2/models/",
        f"    use_backend %[path,field(4,/),map_str({map_file},{ANY_BACKEND})] if model_route",
    ]
    if metrics_address is not None:
        lines += [
            "    use_backend cluster_metrics if { path /metrics }",
        ]
    lines += [f"    default_backend {ANY_BACKEND}", ""]
    lines += [
        f"backend {ANY_BACKEND}",
        "    balance leastconn",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
    ]
    lines += [f"    server {names[e.replica_id]} {server_options(e, t)}" for e in endpoints]
    lines.append("")
    for model, backend in model_backends(all_models).items():
        lines += [
            f"backend {backend}",
            "    balance leastconn",
            f"    option httpchk GET /v2/models/{urllib.parse.quote(model, safe='')}/ready",
            "    http-check expect status 200",
        ]
        lines += [
            f"    server {names[e.replica_id]} {server_options(e, t)}"
            for e in endpoints
            if model in e.models
        ]
        lines.append("")
    if metrics_address is not None:
        lines += ["backend cluster_metrics", f"    server aggregator {metrics_address}", ""]
    return "\n".join(lines)


def map_file_text(models: Sequence[str]) -> str:
    """The frontend's map: one ``model backend`` line per model."""
    return "".join(f"{model} {backend}\n" for model, backend in model_backends(models).items())


class IngressError(EdgeshiftError):
    """HAProxy could not be started or changed."""


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HaproxyIngress:
    """HAProxy as a child process, fronting the replicas given to :meth:`start` and
    :meth:`update`. ``port=0`` picks a free port (read it back from ``.port``)."""

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
    ) -> None:
        self.bind_host = bind_host
        self.port = port
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
                with socket.create_connection((self.bind_host, self.port), timeout=1):
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

    def _add(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        self._checked(
            f"add server {ANY_BACKEND}/{name} {server_options(endpoint, self.timeouts)}",
            "New server registered",
        )
        self._checked(f"enable health {ANY_BACKEND}/{name}")
        for model in endpoint.models:
            self._checked(
                f"add server {backends[model]}/{name} {server_options(endpoint, self.timeouts)}",
                "New server registered",
            )
            self._checked(f"enable health {backends[model]}/{name}")
            self._checked(f"enable server {backends[model]}/{name}")
        # Last: the model backends are ready before the replica takes its first request.
        self._checked(f"enable server {ANY_BACKEND}/{name}")
        self._endpoints[endpoint.replica_id] = endpoint

    def _set_maint(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        for model in endpoint.models:
            self._checked(f"disable server {backends[model]}/{name}")
        self._checked(f"disable server {ANY_BACKEND}/{name}")

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

    def _delete(self, endpoint: ReplicaEndpoint, backends: Mapping[str, str]) -> None:
        name = _server_name(endpoint.replica_id)
        for backend in [*(backends[m] for m in endpoint.models), ANY_BACKEND]:
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
