"""Starting and stopping the server: load the models, bind the socket, run uvicorn, and on
SIGTERM/SIGINT stop accepting, answer every queued and in-flight request, then exit.

Models are loaded and the socket is bound before uvicorn starts, so a bad model or a busy port
is an EdgeshiftError with one line, never a server that starts half-working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import uvicorn
from typing_extensions import Self

from edgeshift.errors import ConfigError
from edgeshift.serve.app import create_app
from edgeshift.serve.connections import (
    ConnectionSettings,
    connection_limit,
    raise_open_file_limit,
    sweep_timeouts,
)
from edgeshift.serve.fastpath import inference_protocol
from edgeshift.serve.limits import GrpcLimits, RequestLimits
from edgeshift.serve.memory import rss_bytes
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.repository import ModelRepository, ServeOptions, discover
from edgeshift.serve.security import AuthSettings, RequestGuard, TlsSettings, is_loopback

log = logging.getLogger("edgeshift.serve")


@dataclass
class ServerSettings:
    """Everything ``edgeshift serve`` was asked for."""

    paths: Sequence[str | Path]
    host: str = "127.0.0.1"  # loopback unless asked: an inference server is not public by default
    port: int = 8000  # 0: any free port (read it back from InferenceServer.port)
    options: ServeOptions = field(default_factory=ServeOptions)
    max_body_bytes: int | None = None  # overrides limits.max_body_bytes when given
    access_log: bool = True
    graceful_timeout_s: float = 30.0  # then in-flight requests are cancelled
    grpc_port: int | None = None  # gRPC beside HTTP (0: any free port); None: no gRPC
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings | None = None  # HTTPS and gRPC over TLS; client_ca: mTLS
    limits: RequestLimits = field(default_factory=RequestLimits)
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)  # the gRPC port's, per client
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)

    def request_limits(self) -> RequestLimits:
        if self.max_body_bytes is None:
            return self.limits
        return replace(self.limits, max_body_bytes=self.max_body_bytes)

    @staticmethod
    def body_limit_bytes(max_body_mb: float) -> int:
        if not max_body_mb > 0:
            raise ConfigError(f"--max-body-mb must be > 0, not {max_body_mb}")
        return int(max_body_mb * (1 << 20))


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) on accepted sockets whose
    # proto is IPPROTO_TCP; with proto 0 every keep-alive response waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({reason}) — pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn, with signals that only ask for a graceful exit (uvicorn re-raises them after
    shutdown, which would turn a clean drain into a death by SIGTERM), and a hook at the start
    of its shutdown so the gRPC front end drains alongside HTTP, not after it."""

    on_shutdown_started: Any = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting for in-flight requests
        log.info("%s: draining in-flight requests, then exiting", signal.Signals(sig).name)
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown_started is not None:
            self.on_shutdown_started()
        await super().shutdown(sockets)


class InferenceServer:
    """One server: ``await start()`` loads models and binds, ``await serve()`` runs to exit."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.repository: ModelRepository | None = None
        self._socket: socket.socket | None = None
        self._uvicorn: _Uvicorn | None = None
        self._grpc: Any = None  # serve.grpc.GrpcFrontend, imported only when asked for
        self._grpc_port: int | None = None
        self._grpc_stopping: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """host:port, as tritonclient wants it."""
        return _host_port(self.settings.host, self.port)

    @property
    def grpc_port(self) -> int | None:
        """The gRPC front end's bound port; None when it is off."""
        return self._grpc_port

    @property
    def grpc_url(self) -> str | None:
        return None if self._grpc_port is None else _host_port(self.settings.host, self._grpc_port)

    async def start(self) -> None:
        s = self.settings
        limits = s.request_limits()
        ssl_context = s.tls.server_context() if s.tls is not None else None  # files checked first
        open_files = raise_open_file_limit()
        self.repository = ModelRepository(discover(s.paths), s.options, self.metrics)
        try:
            await self.repository.load_all()
            self._socket = bind_socket(s.host, s.port)
            if s.grpc_port is not None:
                from edgeshift.serve.grpc import GrpcFrontend

                self._grpc = GrpcFrontend(
                    self.repository,
                    self.metrics,
                    limits=limits,
                    auth=s.auth,
                    tls=s.tls,
                    grpc_limits=s.grpc_limits,
                )
                self._grpc_port = await self._grpc.start(s.host, s.grpc_port)
        except BaseException:
            if self._socket is not None:
                self._socket.close()
            await self.repository.close()
            raise
        names = ", ".join(f"{m.name}:{m.version}" for m in self.repository.models()) or "no model"
        log.info("loaded %s; RSS %.1f MiB", names, rss_bytes() / (1 << 20))
        certified = s.tls is not None and s.tls.client_ca is not None
        if not is_loopback(s.host) and not s.auth.inference_tokens and not certified:
            log.warning(
                "listening on %s with no authentication: anyone who can reach this address can"
                " run inference — give --auth-token-file or --tls-client-ca, or bind 127.0.0.1",
                s.host,
            )
        guard = RequestGuard(s.auth, loopback_bind=is_loopback(s.host), client_certified=certified)
        app, endpoint = create_app(
            self.repository,
            self.metrics,
            limits=limits,
            guard=guard,
            options=s.options,
            access_log_enabled=s.access_log,
            on_shutdown=self._drain,
        )
        c = s.connections
        config = uvicorn.Config(
            app,
            log_config=None,
            http=inference_protocol(
                endpoint,
                access_log=s.access_log,
                guard=guard,
                connections=c,
                max_connections=connection_limit(c, open_files),
            ),
            access_log=False,  # ours is structured (AccessLogMiddleware, the fast path)
            lifespan="on",
            timeout_graceful_shutdown=int(s.graceful_timeout_s),
            timeout_keep_alive=c.keep_alive_timeout_s,  # type: ignore[arg-type]
            server_header=False,
        )
        config.load()
        config.ssl = ssl_context
        self._uvicorn = _Uvicorn(config)
        self._uvicorn.on_shutdown_started = self._stop_grpc

    def _stop_grpc(self) -> None:
        if self._grpc is not None and self._grpc_stopping is None:
            self._grpc_stopping = asyncio.create_task(
                self._grpc.stop(self.settings.graceful_timeout_s)
            )

    async def _drain(self) -> None:
        """After HTTP has answered its in-flight requests: gRPC's, then the model queues."""
        self._stop_grpc()
        if self._grpc_stopping is not None:
            await self._grpc_stopping
        if self.repository is not None:
            await self.repository.close()

    async def serve(self) -> None:
        if self._uvicorn is None or self._socket is None:
            await self.start()
        assert self._uvicorn is not None and self._socket is not None
        announce = asyncio.create_task(self._announce())
        c = self.settings.connections
        stop_sweep = asyncio.Event()
        interval_s = min(1.0, max(0.05, min(c.header_timeout_s, c.body_timeout_s) / 4))
        sweep = asyncio.create_task(
            sweep_timeouts(self._uvicorn.server_state.connections, interval_s, stop_sweep)  # type: ignore[arg-type]
        )
        try:
            await self._uvicorn.serve(sockets=[self._socket])
        finally:
            announce.cancel()
            stop_sweep.set()
            await sweep
            self._stop_grpc()  # no-op unless uvicorn failed before its shutdown
            if self._grpc_stopping is not None:
                await self._grpc_stopping
            if self.repository is not None:
                await self.repository.close()  # no-op when the lifespan already drained it
            self._socket.close()

    async def _announce(self) -> None:
        # Tests and scripts wait for this line: only write it once uvicorn accepts.
        while not self.started:
            await asyncio.sleep(0.01)
        scheme = "https" if self.settings.tls is not None else "http"
        log.info("serving Open Inference Protocol v2 on %s://%s", scheme, self.url)
        if self.grpc_url is not None:
            log.info("serving gRPC on %s", self.grpc_url)

    async def drain_connections(self, timeout_s: float) -> int:
        """Ask HTTP clients to leave before a stop (a replica leaving an L4 ingress, whose
        clients' connections stay on it): from now on each answer carries ``connection:
        close`` and its connection closes after it, so a client's next request opens a new
        connection, which the ingress sends elsewhere. Waits up to TIMEOUT_S for every
        connection to close; returns how many are left (idle clients that sent nothing;
        the stop closes those). Call on the server's own loop."""
        if self._uvicorn is None:
            return 0
        protocol = getattr(self._uvicorn.config, "http_protocol_class", None)
        if protocol is not None:
            protocol.draining = True
        connections = self._uvicorn.server_state.connections
        for connection in list(connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # the request being answered is its last
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return len(connections)

    @property
    def started(self) -> bool:
        return self._uvicorn is not None and self._uvicorn.started

    def request_exit(self) -> None:
        """Graceful exit, as on SIGTERM (call from the server's own loop)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (optional: a faster event loop), else asyncio's:
    what a server runs on, in ``edgeshift serve`` and in a cluster replica alike."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_server(settings: ServerSettings) -> None:
    """Serve until SIGTERM/SIGINT, in this thread (the ``edgeshift serve`` command)."""
    server = InferenceServer(settings)

    async def main() -> None:
        await server.start()
        await server.serve()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


class LoopServer(Protocol):
    """What OnThread runs: a server with async start/serve and a thread-safe-on-loop exit."""

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    async def serve(self) -> None: ...

    def request_exit(self) -> None: ...


ServerT = TypeVar("ServerT", bound=LoopServer)


class OnThread(Generic[ServerT]):
    """SERVER on its own thread and event loop: ``start()`` returns once it serves (or raises
    what its start raised), ``stop()`` asks it to exit and joins. A context manager."""

    name = "server"

    def __init__(self, server: ServerT, start_timeout_s: float, stop_timeout_s: float) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=self._run, name=f"edgeshift-{self.name}", daemon=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            watcher = asyncio.create_task(self._signal_ready())
            try:
                await self.server.serve()
            finally:
                watcher.cancel()
                self._ready.set()

        asyncio.run(main())

    async def _signal_ready(self) -> None:
        while not self.server.started:
            await asyncio.sleep(0.005)
        self._ready.set()

    def start(self, timeout_s: float | None = None) -> Self:
        timeout_s = self._start_timeout_s if timeout_s is None else timeout_s
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the {self.name} did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.request_exit)
        self._thread.join(self._stop_timeout_s if timeout_s is None else timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerThread(OnThread[InferenceServer]):
    """A server on its own thread and event loop, for tests, benchmarks and notebooks.

    ``with ServerThread(ServerSettings([path], port=0)) as server:`` then talk to
    ``server.url``; leaving the block drains and stops it.
    """

    name = "server"

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__(InferenceServer(settings), start_timeout_s=120.0, stop_timeout_s=60.0)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def grpc_url(self) -> str | None:
        return self.server.grpc_url
