"""The ingress's HAProxy configuration, as pure functions of the replicas (data in, text out).

Layout of the generated config (``mode="http"``, the default):

- backend ``any``: every replica, checked with ``GET /v2/health/ready``;
- backend ``m_<name>_<digest>`` per model: the replicas holding it, checked with
  ``GET /v2/models/NAME/ready`` (HAProxy 2.6 cannot ``track`` a server added at run time,
  and a model's own readiness is the better check anyway);
- frontend ``ingress`` routes ``/v2/models/NAME/...`` through a map (model -> backend),
  everything else to ``any``; ``/metrics`` to the aggregator when one is given.

With a gRPC port, the same again for gRPC (HTTP/2 cleartext both sides): frontend ``grpc``
and backends ``g_any`` / ``g_m_...`` whose servers are the replicas' gRPC ports, health-checked
through their HTTP ports (HTTP/1, the same checks), so a dead replica leaves both rotations
together. gRPC's path does not name the model: ``ModelInfer``, ``ModelStreamInfer``,
``ModelReady``, ``ModelMetadata``, ``ModelConfig`` and ``ModelStatistics`` all carry it as
field 1 of their message, which the frontend reads from the first bytes of the body
(``protobuf(1)`` after the 5-byte gRPC message header) and looks up in the same map. A stream
is one HTTP/2 request: it goes to one replica, picked by its first message's model.

``mode="tcp"``: the HTTP frontend is L4 (``mode tcp``): a client connection is balanced once,
to a replica of ``any``, and its bytes pass through unparsed; cheaper per request, but no
routing by model, no per-request retries, and requests in flight on a dying replica fail
with their connection (docs/scale-out.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeshift.errors import ConfigError

HAPROXY_BINARY = "/usr/sbin/haproxy"
ANY_BACKEND = "any"
GRPC_PREFIX = "g_"  # gRPC backend = this + the HTTP backend's name
INGRESS_MODES = ("http", "tcp")
# Triton's/KServe's gRPC service: methods named Model* carry the model's name as field 1.
GRPC_MODEL_METHODS = "/inference.GRPCInferenceService/Model"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ReplicaEndpoint:
    """Where one replica's edgeshift server listens (HTTP, and gRPC when it serves it), and
    what it serves."""

    replica_id: str
    node_id: str
    host: str
    port: int
    models: tuple[str, ...] = ()
    grpc_port: int | None = None

    @property
    def address(self) -> str:
        return _host_port(self.host, self.port)

    @property
    def grpc_address(self) -> str | None:
        return None if self.grpc_port is None else _host_port(self.host, self.grpc_port)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    """model -> backend name (its gRPC backend: ``GRPC_PREFIX`` + that name)."""
    return {model: _backend_name(model) for model in sorted(set(models))}


def server_options(
    endpoint: ReplicaEndpoint, timeouts: IngressTimeouts, *, grpc: bool = False
) -> str:
    """The options of a replica's server line (config and runtime API alike: HAProxy 2.6 does
    not apply ``default-server`` to servers added at run time). GRPC: the line for its gRPC
    port (HTTP/2 cleartext), health-checked over HTTP/1 on its HTTP port."""
    t = timeouts
    if grpc:
        if endpoint.grpc_address is None:
            raise ConfigError(f"replica {endpoint.replica_id} serves no gRPC port")
        head = f"{endpoint.grpc_address} proto h2 check port {endpoint.port} check-proto h1"
    else:
        head = f"{endpoint.address} check"
    return (
        f"{head} inter {t.check_interval_ms}ms "
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
# http-after-response, so clients see one status for "the cluster could not answer" (gRPC
# clients: UNAVAILABLE, which is what HTTP 503 maps to).
_ERRORS = {
    502: "the replica serving this request failed before answering — retry the request",
    503: "no replica of this model is up (starting, restarting or failed) — retry shortly",
    504: "the replica did not answer in time and was given up on — retry the request",
}


def _backends(
    endpoints: Sequence[ReplicaEndpoint],
    names: dict[str, str],
    models: Sequence[str],
    timeouts: IngressTimeouts,
    *,
    grpc: bool,
    tcp: bool = False,
) -> list[str]:
    prefix = GRPC_PREFIX if grpc else ""
    members = [e for e in endpoints if e.grpc_port is not None] if grpc else list(endpoints)
    lines = [
        f"backend {prefix}{ANY_BACKEND}",
        *(["    mode tcp"] if tcp else []),
        "    balance leastconn",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
    ]
    lines += [
        f"    server {names[e.replica_id]} {server_options(e, timeouts, grpc=grpc)}"
        for e in members
    ]
    lines.append("")
    for model, backend in model_backends(models).items():
        lines += [
            f"backend {prefix}{backend}",
            "    balance leastconn",
            f"    option httpchk GET /v2/models/{urllib.parse.quote(model, safe='')}/ready",
            "    http-check expect status 200",
        ]
        lines += [
            f"    server {names[e.replica_id]} {server_options(e, timeouts, grpc=grpc)}"
            for e in members
            if model in e.models
        ]
        lines.append("")
    return lines


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
    grpc_port: int | None = None,
    mode: str = "http",
) -> str:
    """The HAProxy configuration for ENDPOINTS: one ``any`` backend with every replica and
    one backend per model (those of ``models`` plus every endpoint's); with GRPC_PORT, the
    gRPC frontend and backends too. MAP_FILE must hold :func:`map_file_text` of the same
    models. Pure: the caller writes it and runs HAProxy."""
    t = timeouts or IngressTimeouts(check_interval_ms=check_interval_ms)
    if min(t.check_interval_ms, t.fast_check_interval_ms) <= 0 or t.fall < 1 or t.rise < 1:
        raise ConfigError(
            f"health check interval {t.check_interval_ms} ms, fall {t.fall}, rise {t.rise}: "
            "the interval must be > 0 and fall/rise >= 1"
        )
    if mode not in INGRESS_MODES:
        raise ConfigError(f"ingress mode {mode!r}: use {' or '.join(INGRESS_MODES)}")
    names = server_names(endpoints)
    all_models = sorted({*models, *(m for e in endpoints for m in e.models)})
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
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 502 503",
        # Keep server connections open across clients: a new TCP connection per request
        # costs the replica's event loop more than the request itself.
        "    http-reuse always",
        "    option http-no-delay",
        *(_json_error(status, message) for status, message in _ERRORS.items()),
        "",
    ]
    if mode == "http":
        lines += [
            "frontend ingress",
            f"    bind {_host_port(bind_host, port)}",
            # The whole request before a replica is picked: what a retry sends again.
            "    option http-buffer-request",
            "    http-after-response set-status 503 if { status 502 } || { status 504 }",
            "    acl model_route path_beg /v2/models/",
            f"    use_backend %[path,field(4,/),map_str({map_file},{ANY_BACKEND})] if model_route",
        ]
        if metrics_address is not None:
            lines.append("    use_backend cluster_metrics if { path /metrics }")
        lines += [f"    default_backend {ANY_BACKEND}", ""]
    else:
        lines += [
            "frontend ingress",
            "    mode tcp",
            f"    bind {_host_port(bind_host, port)}",
            f"    default_backend {ANY_BACKEND}",
            "",
        ]
    if grpc_port is not None:
        model_route = f"{{ path_beg {GRPC_MODEL_METHODS} }}"
        lines += [
            "frontend grpc",
            f"    bind {_host_port(bind_host, grpc_port)} proto h2",
            # Not http-buffer-request: a stream's body never ends. The first bytes hold the
            # model's name (field 1 comes first); a message still missing after 1 s (a stream
            # opened before its first message) goes to any.
            f"    http-request wait-for-body time 1s at-least 1 if {model_route}",
            "    http-after-response set-status 503 if { status 502 } || { status 504 }",
            f"    use_backend {GRPC_PREFIX}%[req.body,bytes(5),protobuf(1),"
            f"map_str({map_file},{ANY_BACKEND})] if {model_route}",
            f"    default_backend {GRPC_PREFIX}{ANY_BACKEND}",
            "",
        ]
    lines += _backends(endpoints, names, all_models, t, grpc=False, tcp=mode == "tcp")
    if grpc_port is not None:
        lines += _backends(endpoints, names, all_models, t, grpc=True)
    if metrics_address is not None:
        lines += ["backend cluster_metrics", f"    server aggregator {metrics_address}", ""]
    return "\n".join(lines)


def map_file_text(models: Sequence[str]) -> str:
    """The frontends' map: one ``model backend`` line per model."""
    return "".join(f"{model} {backend}\n" for model, backend in model_backends(models).items())
